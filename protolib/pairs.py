"""Which pairs of images a Siamese step compares: every pair in a batch, or the thesis's fixed pairs."""

from __future__ import annotations

import numpy as np
import torch

from .runtime import ProtolibInputError

__all__ = ["all_pairs", "sample_fixed_pairs"]


def all_pairs(batch_size: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(i, j)``, each ``(B (B - 1) / 2,)``, of every unordered pair with ``i < j``.

    ``B`` images embedded once give ``B (B - 1) / 2`` pairs; projections of one system in the batch
    are natural positives (target similarity 1).

    Example:
        >>> i, j = all_pairs(3)
        >>> list(zip(i.tolist(), j.tolist()))
        [(0, 1), (0, 2), (1, 2)]
    """
    i, j = torch.triu_indices(batch_size, batch_size, offset=1, device=device)
    return i, j


def sample_fixed_pairs(n_images: int, fraction: float, seed: int) -> np.ndarray:
    """The thesis's mode: a fixed random ``fraction`` of all pairs of ``n_images`` images, drawn once.

    Returns:
        ``(M, 2)`` int64 image indices with first < second, no pair twice, ``M >= 1``.
    """
    if not 0 < fraction <= 1:
        raise ProtolibInputError(f"The fraction of fixed pairs must be in (0, 1], got {fraction}.")
    if n_images < 2:
        raise ProtolibInputError(f"Pairs need at least two images, got {n_images}.")
    total = n_images * (n_images - 1) // 2
    count = max(1, int(round(fraction * total)))
    rng = np.random.default_rng([int(seed), 11])
    flat = rng.choice(total, size=count, replace=False)
    # Unrank pair k of the upper triangle (row-major) into (i, j).
    i = (n_images - 2 - np.floor(np.sqrt(-8 * flat + 4 * n_images * (n_images - 1) - 7) / 2.0 - 0.5)).astype(np.int64)
    j = (flat + i + 1 - n_images * (n_images - 1) // 2 + (n_images - i) * ((n_images - i) - 1) // 2).astype(np.int64)
    return np.stack([i, j], 1)
