"""Where computations run, how random seeds are derived, and how artifacts are written safely."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

__all__ = ["default_device", "system_rng", "atomic_path", "write_figure", "write_json", "ProtolibInputError"]


class ProtolibInputError(ValueError):
    """A problem with the user's input (a file, a value): the message says what and how to fix it."""


def default_device(device: str | torch.device | None = None) -> torch.device:
    """The device to compute on: the one asked for, else CUDA when present, else the CPU.

    The environment variable ``PROTOLIB_DEVICE`` (``cpu``, ``cuda``, ``cuda:1``) overrides the
    automatic choice.
    """
    if device is not None:
        return torch.device(device)
    if os.environ.get("PROTOLIB_DEVICE"):
        return torch.device(os.environ["PROTOLIB_DEVICE"])
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def system_rng(seed: int, system_index: int, stream: int = 0) -> np.random.Generator:
    """A random generator for one system, derived from the bank seed and the system's index.

    Deriving per system (rather than drawing from one stream in order) makes a system's noise the
    same however the bank is split into batches or workers.
    """
    return np.random.default_rng([int(seed), int(system_index), int(stream)])


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, else delete it.

    An interrupted or failed write therefore leaves the previous good file in place.

    Example:
        >>> with atomic_path("bank.h5") as tmp:   # doctest: +SKIP
        ...     write_everything(tmp)
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_figure(fig, path: str | os.PathLike, *, dpi: int = 120) -> Path:
    """Save a matplotlib figure atomically (format from the suffix, PNG without one) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def write_json(data: dict, path: str | os.PathLike) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
    return Path(path)
