"""Training on several processes (``torchrun``): ranks, the process group, and collective helpers.

Under ``torchrun`` every process runs the same command; :func:`start` reads ``RANK``, ``WORLD_SIZE``
and ``LOCAL_RANK`` from the environment, joins the process group (``nccl`` on CUDA, ``gloo`` on the
CPU) and gives each process its device. Without ``torchrun`` nothing changes: one process of rank 0.

Each global batch of systems is cut into contiguous shares, one per rank (:func:`shard`), so a system
is seen by one rank only; :func:`gather_rows` puts the shares back together in rank order, with
gradients, so a loss over all pairs of a batch sees the same pairs as in one process.

Example:
    >>> device = start(torch.device("cpu"))      # doctest: +SKIP
    >>> if is_main(): save(...)                  # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "Ranks",
    "ranks",
    "start",
    "stop",
    "is_main",
    "barrier",
    "shard",
    "gather_rows",
    "reduce_sum",
    "global_mean_weight",
    "idle_output",
]


@dataclass(frozen=True)
class Ranks:
    """Where this process stands among the training processes."""

    rank: int = 0  # this process among all (0 writes checkpoints and metrics)
    world_size: int = 1  # number of processes
    local_rank: int = 0  # this process on its node (its GPU index)


def ranks() -> Ranks:
    """This process's rank, the number of processes and its local rank (``Ranks()`` when alone)."""
    if not (dist.is_available() and dist.is_initialized()):
        return Ranks()
    return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def start(device: torch.device) -> torch.device:
    """Join the process group when run by ``torchrun`` (``WORLD_SIZE`` > 1); return this process's device.

    Arguments:
        device: the device asked for; ``cuda`` becomes ``cuda:LOCAL_RANK`` under ``torchrun``.

    Returns:
        The device this process trains on.
    """
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size <= 1 or not dist.is_available():
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=30))
    return device


def stop(wait: bool = True) -> None:
    """Leave the process group, first waiting for every rank when ``wait``; nothing when there is none."""
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def is_main() -> bool:
    """Whether this process writes files and prints (rank 0, or the only process)."""
    return ranks().rank == 0


def barrier() -> None:
    """Wait for every process (nothing when alone)."""
    if ranks().world_size > 1:
        dist.barrier()


def shard(n: int) -> np.ndarray:
    """Positions ``0..n-1`` of this rank's contiguous share of ``n`` rows (all of them when alone)."""
    r = ranks()
    return np.array_split(np.arange(n), r.world_size)[r.rank]


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's rows ``(n_r, ...)`` concatenated in rank order ``(sum n_r, ...)``; gradients flow back.

    Shares may differ in length (even be empty). Alone, ``tensor`` itself is returned.
    """
    r = ranks()
    if r.world_size == 1:
        return tensor
    sizes = torch.zeros(r.world_size, dtype=torch.int64, device=tensor.device)
    sizes[r.rank] = len(tensor)
    dist.all_reduce(sizes)
    longest = int(sizes.max())
    padded = torch.cat([tensor, tensor.new_zeros((longest - len(tensor), *tensor.shape[1:]))])
    if tensor.requires_grad:
        from torch.distributed.nn.functional import all_gather

        parts = all_gather(padded)
    else:
        parts = [torch.empty_like(padded) for _ in range(r.world_size)]
        dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[: int(size)] for part, size in zip(parts, sizes)])


def reduce_sum(values: list[float], device: torch.device | None = None) -> list[float]:
    """Sums over all ranks of each of ``values`` (the values themselves when alone)."""
    if ranks().world_size == 1:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def global_mean_weight(n_local: int, device: torch.device | None = None) -> float:
    """Factor turning a mean over this rank's ``n_local`` items into its part of the mean over all ranks' items.

    Gradients are averaged over ranks, so scaling each rank's local mean by ``n_local * world / n_total``
    gives exactly the gradient of the mean over the whole global batch, even for unequal shares.
    """
    r = ranks()
    if r.world_size == 1:
        return 1.0
    total = reduce_sum([float(n_local)], device)[0]
    return n_local * r.world_size / max(total, 1.0)


def idle_output(module: torch.nn.Module, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Zeros of ``shape`` joined to every trainable weight of ``module``: what a rank with an empty share outputs.

    A global batch with fewer systems than ranks leaves some ranks nothing to compute; they still take
    part in the step (collectives, gradient averaging) with zero gradients.
    """
    anchor = sum((p.sum() for p in module.parameters() if p.requires_grad), torch.zeros((), device=device))
    return torch.zeros(shape, device=device) + 0.0 * anchor
