"""One training engine for every network: batches from the bank, epochs, validation, checkpoints.

:func:`fit` runs a :class:`TrainingTask` (the autoencoder's or the Siamese network's) epoch by epoch:
training with augmentation, validation without, a learning-rate schedule, early stopping, the best
weights saved atomically after every improving epoch, and everything needed to resume saved after
every epoch. Same seed, same weights. On a CUDA GPU it uses mixed precision (``torch.autocast``); on
the CPU plain float32, without code changes.

Images are read from the bank by system, in chunks (:class:`ImageSource`); small banks are loaded
into memory once.

Under ``torchrun`` (several processes, :mod:`protolib.distributed`) the model is wrapped in
``DistributedDataParallel``: every process draws the same global batches of systems and trains on its
own contiguous share of each (:func:`system_batches`), gradients are averaged, the losses reported
are those of the global batch, and only rank 0 writes the checkpoint and history. With augmentation
off, two processes give the loss history of one to floating-point rounding; augmentation draws from
``seed + rank``, so with it the random changes differ from a one-process run.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from .distributed import barrier, is_main, ranks, reduce_sum, shard
from .runtime import ProtolibInputError, atomic_path

__all__ = [
    "TrainingConfig",
    "TrainingTask",
    "ImageSource",
    "system_batches",
    "fit",
    "evaluate_loss",
    "load_checkpoint",
    "save_checkpoint",
    "autocast_for",
    "why_training_stopped",
    "checkpoint_part",
    "CHECKPOINT_KEYS",
]

SCHEDULES = ("cosine", "plateau", "constant")


@dataclass
class TrainingConfig:
    """How a network is trained; stored in its checkpoint."""

    epochs: int = 30  # most epochs to run (early stopping may end sooner)
    batch_systems: int = 8  # systems per batch
    projections_per_system: int | None = None  # projections of each system per batch (None: all)
    learning_rate: float = 2e-3  # AdamW step size at the start
    weight_decay: float = 1e-4  # AdamW weight decay
    schedule: str = "cosine"  # "cosine" (to 5% of the start), "plateau" (halve when stuck) or "constant"
    patience: int = 6  # stop after this many epochs without a better validation loss
    min_delta: float = 0.0  # an improvement must beat the best validation loss by more than this
    seed: int = 0  # model initialisation, batch order and augmentation all derive from it
    mixed_precision: bool = True  # autocast on CUDA (bfloat16 where supported); ignored on the CPU
    num_threads: int | None = None  # CPU threads for torch (None: torch's default)
    chunk_systems: int = 64  # systems read from the bank at once when it is not held in memory
    memory_limit_mb: float = 1024.0  # banks smaller than this are loaded into memory once

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ProtolibInputError(f"Learning-rate schedule must be one of {SCHEDULES}, got {self.schedule!r}.")
        if self.epochs < 1 or self.batch_systems < 1:
            raise ProtolibInputError(
                f"Training needs epochs >= 1 and batch_systems >= 1 (got {self.epochs}, {self.batch_systems})."
            )
        if not (math.isfinite(self.learning_rate) and self.learning_rate >= 0):
            raise ProtolibInputError(f"The learning rate must be a number >= 0, got {self.learning_rate}.")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0) or self.patience < 1 or self.min_delta < 0:
            raise ProtolibInputError(
                f"Training needs weight_decay >= 0, patience >= 1 and min_delta >= 0 (got {self.weight_decay}, "
                f"{self.patience}, {self.min_delta})."
            )
        if self.num_threads is not None and not (isinstance(self.num_threads, int) and self.num_threads >= 1):
            raise ProtolibInputError(
                "num_threads (--threads) must be a whole number >= 1 (or null: torch's default), got "
                f"{self.num_threads}."
            )
        if self.projections_per_system is not None and self.projections_per_system < 1:
            raise ProtolibInputError(
                f"projections_per_system must be at least 1 (or null: all), got {self.projections_per_system}."
            )

    def to_dict(self) -> dict:
        return asdict(self)


class ImageSource:
    """The images of a bank by system: from memory when the bank is small, else read from the file.

    Example:
        >>> source = ImageSource(bank)                 # doctest: +SKIP
        >>> source.systems([3, 1]).shape               # (2, P, H, W)
    """

    def __init__(self, bank, memory_limit_mb: float = 1024.0):
        self.bank = bank
        nbytes = int(np.prod(bank.images.shape)) * bank.images.dtype.itemsize
        self.in_memory = nbytes <= memory_limit_mb * 2**20
        self._images = bank.load_images() if self.in_memory else None
        self.rows_per_chunk = int((bank.images.chunks or (1,))[0])

    @property
    def n_projections(self) -> int:
        """Projections per system ``P``."""
        return int(self.bank.images.shape[1])

    def systems(self, indices) -> np.ndarray:
        """Images ``(n, P, H, W)`` of the systems ``indices``."""
        indices = np.asarray(indices, dtype=np.int64)
        if self._images is not None:
            return self._images[indices]
        if len(indices) == 0:
            return np.zeros((0, *self.bank.images.shape[1:]), dtype=self.bank.images.dtype)
        unique, inverse = np.unique(indices, return_inverse=True)
        runs = np.split(unique, np.flatnonzero(np.diff(unique) != 1) + 1)  # contiguous runs: one slice read each
        block = np.concatenate([self.bank.images[run[0] : run[-1] + 1] for run in runs])
        return block[inverse]


def system_batches(
    source: ImageSource,
    systems: np.ndarray,
    *,
    batch_systems: int,
    projections_per_system: int | None = None,
    chunk_systems: int = 64,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool = True,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Batches of images grouped by system, read chunk by chunk.

    Systems are shuffled (from ``seed`` and ``epoch``) by the bank file's chunks (so that a read
    touches whole HDF5 chunks), cut into chunks of ``chunk_systems`` read together and shuffled
    again within, and each chunk into batches of ``batch_systems`` systems with ``projections_per_system``
    random projections each (all when ``None``).

    Under ``torchrun`` (:mod:`protolib.distributed`) every rank draws the same global batches and
    keeps, and reads, only its contiguous share of each batch's systems; alone, the share is the whole batch.

    Yields:
        ``(images, system_index)``: ``(B, H, W)`` float32 and ``(B,)`` int64, ``B`` = systems x projections.
    """
    rng = np.random.default_rng([int(seed), int(epoch), 3])
    systems = np.asarray(systems, dtype=np.int64)
    order = _file_chunk_order(systems, source.rows_per_chunk, rng) if shuffle else systems
    chunk = max(batch_systems, chunk_systems // batch_systems * batch_systems)
    n_proj = source.n_projections
    k = n_proj if projections_per_system is None else min(projections_per_system, n_proj)
    for start in range(0, len(order), chunk):
        members = rng.permutation(order[start : start + chunk]) if shuffle else order[start : start + chunk]
        shares = []
        for first in range(0, len(members), batch_systems):
            rows = np.arange(first, min(first + batch_systems, len(members)))
            picks = np.stack([rng.permutation(n_proj)[:k] if k < n_proj else np.arange(n_proj) for _ in rows])
            mine = shard(len(rows))
            shares.append((rows[mine], picks[mine]))
        needed = np.concatenate([rows for rows, _ in shares])
        block = source.systems(members[needed])  # (c, P, H, W): this rank's systems of the chunk
        offset = 0
        for rows, picks in shares:
            local = np.arange(offset, offset + len(rows))
            offset += len(rows)
            images = block[local[:, None], picks].reshape(-1, *block.shape[2:])
            yield images, np.repeat(members[rows], k)


def _file_chunk_order(systems: np.ndarray, rows_per_chunk: int, rng: np.random.Generator) -> np.ndarray:
    """``systems`` in random order of the bank file's chunks (each chunk's systems together)."""
    keys = systems // max(1, rows_per_chunk)
    return np.concatenate([systems[keys == key] for key in rng.permutation(np.unique(keys))])


class TrainingTask(Protocol):
    """What :func:`fit` needs from a model: its module, its batches, its loss and what to store."""

    model: torch.nn.Module
    device: torch.device

    def training_batches(self, epoch: int) -> Iterable: ...

    def validation_batches(self) -> Iterable: ...

    def loss(self, batch, generator: torch.Generator | None) -> torch.Tensor:
        """The batch's loss; augment with ``generator`` when it is not ``None`` (training)."""
        ...

    def metadata(self) -> dict:
        """Everything a checkpoint needs besides the weights to rebuild and use the model."""
        ...


def autocast_for(device: torch.device, enabled: bool = True):
    """``torch.autocast`` in bfloat16 (float16 where unsupported) on CUDA; a no-op context on the CPU."""
    use = enabled and device.type == "cuda"
    dtype = torch.bfloat16 if use and torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=use)


def save_checkpoint(data: dict, path: str | Path) -> None:
    """Write a checkpoint atomically (a crash never leaves a half-written file)."""
    with atomic_path(path) as tmp:
        torch.save(data, tmp)


# what a checkpoint of each kind must hold to be rebuilt
CHECKPOINT_KEYS = {
    "autoencoder": ("model_state", "config", "image_size", "preprocessing", "split", "history"),
    "siamese": (
        "model_state",
        "config",
        "image_size",
        "preprocessing",
        "split",
        "history",
        "normaliser",
        "target",
        "parameter_names",
    ),
}


def load_checkpoint(path: str | Path, kind: str | None = None) -> dict:
    """Read a checkpoint written by :func:`fit`, checking it is one (and of ``kind`` when given, with every
    part that kind needs, :data:`CHECKPOINT_KEYS`).

    The file is read with ``torch.load(weights_only=True)``: tensors and plain data only, so a crafted
    file cannot run code when it is loaded. protolib's checkpoints hold nothing else. A file that is
    not a checkpoint at all (an HDF5 bank, a FITS image, text) is named as what it is.
    """
    path = Path(path)
    if not path.exists():
        raise ProtolibInputError(f"Checkpoint {path} does not exist.")
    if path.is_dir():
        raise ProtolibInputError(
            f"Checkpoint {path} is a folder; give the .pt file in it (e.g. {path / 'siamese.pt'})."
        )
    other = _other_file_kind(path)
    if other:
        raise ProtolibInputError(
            f"{path} is {other}, not a protolib checkpoint (a .pt file written by `protolib train-autoencoder` "
            "or `protolib train-siamese`); check which file --model (or --autoencoder) names."
        )
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise ProtolibInputError(
            f"Checkpoint {path} was refused: it holds Python objects, not only weights and plain data ({first[:160]}), "
            "and loading it could run code. protolib's own checkpoints never do; retrain, or ask whoever sent it for "
            "one "
            "written by protolib."
        ) from None
    except Exception as error:  # noqa: BLE001 - any unreadable file is the user's input problem
        raise ProtolibInputError(f"Checkpoint {path} could not be read ({error}).") from None
    if not isinstance(data, dict) or "model_state" not in data:
        raise ProtolibInputError(f"{path} is not a protolib checkpoint (no model weights).")
    if kind is not None and data.get("kind") != kind:
        raise ProtolibInputError(f"{path} holds a {data.get('kind')!r} model, not a {kind!r} one.")
    missing = [key for key in CHECKPOINT_KEYS.get(kind or data.get("kind"), ()) if key not in data]
    if missing:
        raise ProtolibInputError(
            f"Checkpoint {path} lacks {', '.join(missing)}; it is damaged or was not written by this protolib. "
            "Train the model again."
        )
    return data


def _other_file_kind(path: Path) -> str:
    """What a file that is plainly not a checkpoint is, from its first bytes (``""`` when it may be one)."""
    with open(path, "rb") as handle:
        head = handle.read(512)
    if not head:
        return "an empty file"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "an HDF5 file (a bank?)"
    if head.startswith(b"SIMPLE  ="):
        return "a FITS file"
    if head.startswith(b"\x89PNG") or head.startswith(b"%PDF"):
        return "an image or document"
    if head.startswith(b"PK") or head.startswith(b"\x80"):
        return ""  # a zip archive (torch's format) or a pickle: torch.load decides
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return ""
    return "a text file" if text.isprintable() or all(c.isprintable() or c in "\r\n\t" for c in text) else ""


def checkpoint_part(path: str | Path, what: str, build: Callable[[], object]):
    """``build()``, a part of a model rebuilt from the checkpoint ``path`` (its preprocessing, normaliser,
    target definition); a part that is missing or fails its checks is refused in one line naming the file."""
    try:
        return build()
    except (KeyError, TypeError, ValueError, IndexError) as error:
        reason = str(error) if isinstance(error, ProtolibInputError) else f"{type(error).__name__}: {error}"
        raise ProtolibInputError(
            f"Checkpoint {path}: its {what} is not usable ({reason}); train the model again."
        ) from None


def network_from_checkpoint(
    build: Callable[[], torch.nn.Module], checkpoint: dict, path: str | Path
) -> torch.nn.Module:
    """The network ``build()`` makes, with the checkpoint's weights, checked before anything is allocated.

    The architecture is first built on PyTorch's ``meta`` device (no memory), and its tensors' names
    and shapes compared with the weights in the file: a checkpoint whose configuration asks for a
    network other than its weights (or one of absurd size) is refused in one line, and NaN or
    infinite weights too.
    """
    state = checkpoint["model_state"]
    try:
        with torch.device("meta"):
            skeleton = build()
    except (TypeError, ValueError, RuntimeError, KeyError, ProtolibInputError) as error:
        raise ProtolibInputError(
            f"Checkpoint {path}: its configuration does not describe a protolib network ({error})."
        ) from None
    expected = {name: tuple(t.shape) for name, t in skeleton.state_dict().items()}
    stored = {name: tuple(t.shape) for name, t in state.items() if isinstance(t, torch.Tensor)}
    if expected != stored or len(stored) != len(state):
        different = sorted(set(expected) ^ set(stored)) or [n for n in expected if expected[n] != stored.get(n)]
        raise ProtolibInputError(
            f"Checkpoint {path}: its weights do not fit the network its configuration describes "
            f"(first difference: {different[0] if different else 'non-tensor entries'}); the file is damaged "
            "or was edited."
        )
    if not all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point()):
        raise ProtolibInputError(f"Checkpoint {path} holds NaN or infinite weights; retrain the network.")
    network = build()
    network.load_state_dict(state)
    return network


def _learning_rate(config: TrainingConfig, epoch: int, plateau_factor: float) -> float:
    if config.schedule == "cosine":
        progress = epoch / max(1, config.epochs - 1)
        return config.learning_rate * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress)))
    return config.learning_rate * plateau_factor


def why_training_stopped(checkpoint: dict) -> dict:
    """Why a finished training ended, from its checkpoint: early stopping on a flat validation loss, or its epoch cap.

    Returns:
        ``epochs_run``, ``epoch_cap``, ``best_epoch``, ``patience``, ``min_delta``, ``stopped_early``
        (``True`` when ``patience`` epochs in a row did not beat the best validation loss by more than
        ``min_delta``) and ``reason``, a sentence saying so.
    """
    training, history = checkpoint.get("training") or {}, checkpoint["history"]
    cap, patience, min_delta = (
        int(training.get("epochs", len(history))),
        int(training.get("patience", 0)),
        float(training.get("min_delta", 0.0)),
    )
    run, best = len(history), int(checkpoint["best_epoch"])
    stopped_early = run < cap and run - best >= patience
    if stopped_early:
        margin = f"by more than {min_delta:.2g}" if min_delta > 0 else "at all"
        reason = f"its validation loss had not improved {margin} for {patience} epochs (the best was epoch {best})"
    else:
        reason = f"it reached its cap of {cap} epochs (the best was epoch {best}{', the last' if best == run else ''})"
    return {
        "epochs_run": run,
        "epoch_cap": cap,
        "best_epoch": best,
        "patience": patience,
        "min_delta": min_delta,
        "stopped_early": stopped_early,
        "reason": reason,
    }


def partial_checkpoint_path(checkpoint_path: str | Path) -> Path:
    """Where a training in progress keeps its checkpoint: ``siamese.pt`` -> ``siamese.partial.pt``."""
    path = Path(checkpoint_path)
    return path.with_name(f"{path.stem}.partial{path.suffix}")


def fit(
    task: TrainingTask,
    config: TrainingConfig,
    checkpoint_path: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    on_epoch: Callable[[dict], None] | None = None,
    before_finish: Callable[[Path], None] | None = None,
) -> list[dict]:
    """Train ``task.model``, keeping the best weights (by validation loss) in ``checkpoint_path``.

    While training runs, its checkpoint is :func:`partial_checkpoint_path` (``siamese.partial.pt``),
    rewritten atomically after every epoch: ``model_state`` holds the best weights, ``training_state``
    the latest weights, optimiser and schedule. Only a finished training replaces ``checkpoint_path``,
    so an interrupted retraining leaves the previous model in place, and ``resume=True`` continues
    the interrupted run from its partial checkpoint exactly where it stopped (same batches, same
    augmentation). The loss history is stored in the checkpoint and beside it as ``<name>_history.json``.
    A loss that is not finite stops training with a :class:`ProtolibInputError` and writes nothing.

    Arguments:
        task: the model, its batches and loss.
        config: epochs, schedule, early stopping, seed.
        checkpoint_path: where the checkpoint goes.
        resume: continue from ``checkpoint_path`` when it holds an unfinished run.
        progress: show a progress bar per epoch.
        on_epoch: called with each epoch's history record after the checkpoint is written, the model in
            eval mode with that epoch's weights (e.g. to score it, as ``protolib tune`` does). An
            exception it raises ends training there; ``checkpoint_path`` then holds the epochs done.
        before_finish: called with the partial checkpoint of a finished training just before it
            replaces ``checkpoint_path`` (e.g. to write metrics that describe it).

    Under ``torchrun`` every process calls :func:`fit` alike; the history (on every rank) holds the
    losses and image counts of the global batches.

    Returns:
        The history: one dict per epoch with ``epoch``, ``train_loss``, ``validation_loss``,
        ``learning_rate``, ``seconds`` (with validation), ``train_seconds`` (training steps only),
        ``data_seconds`` (of which waiting for batches), ``images`` (training images seen).
    """
    checkpoint_path = Path(checkpoint_path)
    _set_up_compute(task, config)
    step, optimiser, scaler = _training_parts(task, config)
    partial = partial_checkpoint_path(checkpoint_path)
    run = _start_or_resume(task.model, optimiser, checkpoint_path, partial, resume)
    bar = _epoch_bar(run, config, checkpoint_path, progress)
    for epoch in bar:
        if run.state["stopped"]:
            break
        record = _epoch(
            task, step, optimiser, scaler, config, epoch, run.state["plateau_factor"], checkpoint_path, partial
        )
        _keep_best(task, config, run, record, optimiser, partial)
        bar.set_postfix(
            train=f"{record['train_loss']:.4g}", val=f"{record['validation_loss']:.4g}", best=run.state["best_epoch"]
        )
        if on_epoch is not None:
            _report_epoch(task, on_epoch, record, run, partial, checkpoint_path)
    bar.close()
    if is_main():
        _publish_run(task, config, run, optimiser, partial, checkpoint_path, before_finish)
    barrier()
    task.model.load_state_dict(run.best_weights)
    return run.history


def _set_up_compute(task: TrainingTask, config: TrainingConfig) -> None:
    """Torch's CPU threads (``config.num_threads``, when set) and the model's memory layout for training."""
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    # convolutions 1.7x faster on the CPU (oneDNN); the weights' values unchanged
    task.model.to(memory_format=torch.channels_last)


def _epoch_bar(run: _Run, config: TrainingConfig, checkpoint_path: Path, progress: bool):
    """The remaining epochs under a progress bar, shown by the main process of a run not yet stopped."""
    return tqdm(
        range(run.state["epoch"] + 1, config.epochs),
        desc=f"Training {checkpoint_path.stem}",
        unit="epoch",
        disable=not progress or run.state["stopped"] or not is_main(),
    )


@dataclass
class _Run:
    """What one training carries from epoch to epoch: early-stopping state, history and the best weights."""

    state: dict
    history: list
    best_weights: dict


def _report_epoch(
    task: TrainingTask, on_epoch: Callable[[dict], None], record: dict, run: _Run, partial: Path, checkpoint_path: Path
) -> None:
    """Call ``on_epoch`` with the model in eval mode; if it raises, training ends with the epochs done kept."""
    task.model.eval()
    try:
        on_epoch(record)
    except Exception:
        if is_main():
            _finish_run(partial, checkpoint_path, run.history, run.state)
        raise


def _publish_run(
    task: TrainingTask,
    config: TrainingConfig,
    run: _Run,
    optimiser,
    partial: Path,
    checkpoint_path: Path,
    before_finish: Callable[[Path], None] | None,
) -> None:
    """A finished training's partial checkpoint (written now if no epoch ran) promoted to ``checkpoint_path``."""
    if not partial.exists() and not checkpoint_path.exists():
        _write_run(task, config, partial, run.best_weights, optimiser, run.state, run.history)
    if partial.exists() and before_finish is not None:
        before_finish(partial)
    _finish_run(partial, checkpoint_path, run.history, run.state)


def _training_parts(task: TrainingTask, config: TrainingConfig):
    """The step (wrapped for DistributedDataParallel under torchrun), the AdamW optimiser and the gradient scaler."""
    model, device = task.model, task.device
    step = _TaskStep(task)
    if ranks().world_size > 1:
        step = torch.nn.parallel.DistributedDataParallel(
            step, device_ids=[device.index] if device.type == "cuda" else None
        )
    optimiser = _adamw([p for p in model.parameters() if p.requires_grad], config)
    use_scaler = config.mixed_precision and device.type == "cuda" and not torch.cuda.is_bf16_supported()
    return step, optimiser, torch.amp.GradScaler("cuda", enabled=use_scaler)


def _adamw(parameters: list, config: TrainingConfig) -> torch.optim.AdamW:
    """AdamW, its update fused into one kernel where this torch and device allow it (3x faster a step on the CPU), else
    the plain one."""
    try:
        return torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)


def _start_or_resume(model, optimiser, checkpoint_path: Path, partial: Path, resume: bool) -> _Run:
    """A fresh run, or with ``resume`` the interrupted one in ``partial`` (else ``checkpoint_path``), weights loaded."""
    state = {
        "epoch": -1,
        "best_loss": math.inf,
        "best_epoch": -1,
        "bad_epochs": 0,
        "plateau_factor": 1.0,
        "stopped": False,
    }
    run = _Run(state, [], {k: v.detach().clone() for k, v in model.state_dict().items()})
    resume_from = partial if partial.exists() else checkpoint_path
    if resume and resume_from.exists():
        saved = load_checkpoint(resume_from)
        training = saved["training_state"]
        try:
            model.load_state_dict(training["model_state"])
            optimiser.load_state_dict(training["optimiser"])
        except (RuntimeError, ValueError) as error:
            raise ProtolibInputError(
                f"Cannot resume from {checkpoint_path}: it was made with another model configuration ({error})."
            ) from None
        run.state.update(training["state"])
        run.history, run.best_weights = list(saved["history"]), saved["model_state"]
    return run


def _epoch(
    task: TrainingTask,
    step,
    optimiser,
    scaler,
    config: TrainingConfig,
    epoch: int,
    plateau_factor: float,
    checkpoint_path: Path,
    partial: Path,
) -> dict:
    """One epoch of training steps, then the validation loss; returns the epoch's history record."""
    rank = ranks()
    learning_rate = _learning_rate(config, epoch, plateau_factor)
    for group in optimiser.param_groups:
        group["lr"] = learning_rate
    generator = torch.Generator().manual_seed(int(config.seed + rank.rank) * 1_000_003 + epoch)
    start = time.perf_counter()
    total, n_batches, n_images, data_seconds = _training_steps(task, step, optimiser, scaler, config, generator, epoch)
    total, n_images = reduce_sum([total, n_images], task.device)
    total /= rank.world_size
    train_seconds = time.perf_counter() - start
    validation, n_validation = _validation_loss(task, config)
    _check_finite(total / max(1, n_batches), validation, n_validation, epoch, checkpoint_path, partial)
    return {
        "epoch": epoch + 1,
        "train_loss": total / max(1, n_batches),
        "validation_loss": validation,
        "learning_rate": learning_rate,
        "seconds": time.perf_counter() - start,
        "train_seconds": train_seconds,
        "data_seconds": data_seconds,
        "images": int(n_images),
    }


def _training_steps(task: TrainingTask, step, optimiser, scaler, config: TrainingConfig, generator, epoch: int):
    """The optimiser steps of one epoch: ``(summed loss, batches, images, seconds spent waiting for batches)``."""
    data_seconds, total, n_batches, n_images = 0.0, torch.zeros((), dtype=torch.float64, device=task.device), 0, 0
    task.model.train()
    batches = iter(task.training_batches(epoch))
    while True:
        tick = time.perf_counter()
        batch = next(batches, None)
        data_seconds += time.perf_counter() - tick
        if batch is None:
            break
        with autocast_for(task.device, config.mixed_precision):
            loss = step(batch, generator)
        optimiser.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimiser)
        scaler.update()
        total += loss.detach().double()  # summed on the device: no wait for the GPU at every step
        n_batches += 1
        # (images, systems) or (images_a, systems_a, images_b, systems_b)
        n_images += sum(len(images) for images in batch[::2])
    return float(total), n_batches, n_images, data_seconds


def _keep_best(task: TrainingTask, config: TrainingConfig, run: _Run, record: dict, optimiser, partial: Path) -> None:
    """Record an epoch: the best weights, early stopping and the plateau schedule; the partial checkpoint rewritten."""
    state, validation, epoch = run.state, record["validation_loss"], record["epoch"] - 1
    run.history.append(record)
    if validation < state["best_loss"] - config.min_delta:
        state.update(best_loss=validation, best_epoch=epoch + 1, bad_epochs=0)
        run.best_weights = {k: v.detach().cpu().clone() for k, v in task.model.state_dict().items()}
    else:
        state["bad_epochs"] += 1
        if config.schedule == "plateau" and state["bad_epochs"] % max(1, config.patience // 2) == 0:
            state["plateau_factor"] *= 0.5
    state["epoch"] = epoch
    state["stopped"] = state["bad_epochs"] >= config.patience
    if is_main():
        _write_run(task, config, partial, run.best_weights, optimiser, state, run.history)


def _check_finite(
    train_loss: float, validation_loss: float, n_validation: int, epoch: int, checkpoint_path: Path, partial: Path
) -> None:
    """Stop a training whose loss is NaN or infinite, writing nothing (its partial checkpoint is removed).

    A NaN validation loss is accepted only when there are no validation batches at all.
    """
    if math.isfinite(train_loss) and (math.isfinite(validation_loss) or n_validation == 0):
        return
    if is_main():
        partial.unlink(missing_ok=True)
    raise ProtolibInputError(
        f"Training {checkpoint_path.name} stopped in epoch {epoch + 1}: the loss became {train_loss:.4g} (training) "
        "and "
        f"{validation_loss:.4g} (validation), not finite; nothing was written. Check the bank for NaN or extreme "
        "pixels, "
        "or lower the learning rate."
    )


def _finish_run(partial: Path, checkpoint_path: Path, history: list[dict], state: dict) -> None:
    """Replace the previous model by the finished training's checkpoint, and write its history beside it."""
    if partial.exists():
        os.replace(partial, checkpoint_path)
    with atomic_path(checkpoint_path.with_name(f"{checkpoint_path.stem}_history.json")) as tmp:
        tmp.write_text(json.dumps({"best_epoch": state["best_epoch"], "history": history}, indent=1))


class _TaskStep(torch.nn.Module):
    """A task's training loss as a module's ``forward``, so that ``DistributedDataParallel`` can wrap it."""

    def __init__(self, task: TrainingTask):
        super().__init__()
        self.model, self.task = task.model, task

    def forward(self, batch, generator: torch.Generator | None) -> torch.Tensor:
        return self.task.loss(batch, generator)


def evaluate_loss(task: TrainingTask, config: TrainingConfig) -> float:
    """Mean loss of ``task.model`` over the validation batches (eval mode, no augmentation; over all ranks' shares)."""
    return _validation_loss(task, config)[0]


def _validation_loss(task: TrainingTask, config: TrainingConfig) -> tuple[float, int]:
    """The mean validation loss (NaN when there are no batches) and the number of batches on this rank."""
    task.model.eval()
    total, count = 0.0, 0
    with torch.no_grad(), autocast_for(task.device, config.mixed_precision):
        for batch in task.validation_batches():
            total += float(task.loss(batch, None))
            count += 1
    total = reduce_sum([total], task.device)[0] / ranks().world_size
    return (total / count if count else math.nan), count


def _write_run(
    task, config: TrainingConfig, path: Path, best_weights: dict, optimiser, state: dict, history: list[dict]
) -> None:
    from . import __version__

    data = {
        **task.metadata(),
        "protolib_version": __version__,
        "training": config.to_dict(),
        "model_state": best_weights,
        "history": history,
        "best_epoch": state["best_epoch"],
        "best_validation_loss": state["best_loss"],
        "training_state": {
            "model_state": {k: v.detach().cpu().clone() for k, v in task.model.state_dict().items()},
            "optimiser": optimiser.state_dict(),
            "state": dict(state),
        },
    }
    save_checkpoint(data, path)
