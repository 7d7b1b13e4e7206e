"""The thesis's ways of matching, kept as references: the network run on every pair, and random bank images.

:func:`pairwise_matches` is the reference :class:`~protolib.matching.Matcher` is checked and
benchmarked against; :func:`random_matches` is the baseline of the distributions.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from tqdm.auto import tqdm

from ..bank import Bank
from .embeddings import ImageTransform
from .matches import Matches

__all__ = ["pairwise_matches", "random_matches"]


def pairwise_matches(
    similarity: Callable[[np.ndarray, np.ndarray], np.ndarray],
    target_image: np.ndarray,
    bank: Bank,
    *,
    top_k: int = 200,
    exclude_system: int | None = None,
    transform: ImageTransform | None = None,
    batch_size: int = 256,
    progress: bool = False,
) -> Matches:
    """The thesis's way: run the Siamese network on every (target, bank image) pair.

    Kept as the reference that :class:`Matcher` is checked and benchmarked against; it costs one
    full network evaluation per bank image per query.

    Arguments:
        similarity: ``(images_a (N, H, W), images_b (N, H, W)) -> (N,)``, e.g. ``SiameseModel.similarity``.
        target_image: ``(H, W)``.
        bank: the bank.
        top_k: matches to return.
        exclude_system: a bank system never to return.
        transform: applied to bank images first (as in :func:`embed_bank`).
    """
    n, p = bank.n_systems, bank.n_projections
    systems = np.array([s for s in range(n) if s != exclude_system])
    sims, rows = [], []
    bar = tqdm(total=len(systems) * p, unit="pair", desc="Pairwise similarities", disable=not progress)
    for chunk, images in bank.iter_batches(systems, max(1, batch_size // p)):
        flat = images.reshape(-1, *images.shape[2:])
        flat = flat if transform is None else transform(flat)
        sims.append(np.asarray(similarity(np.repeat(target_image[None], len(flat), axis=0), flat), dtype=np.float32))
        rows.append((chunk[:, None] * p + np.arange(p)[None, :]).reshape(-1))
        bar.update(len(flat))
    bar.close()
    sims, rows = np.concatenate(sims), np.concatenate(rows)
    order = np.argsort(-sims, kind="stable")[:top_k]
    return Matches(sims[order], rows[order] // p, rows[order] % p, exclude_system)


def random_matches(bank: Bank, n: int, *, exclude_system: int | None = None, seed: int = 0) -> Matches:
    """``n`` bank images drawn at random (without replacement): the thesis's baseline for the distributions.

    Their similarity is reported as NaN (they were not ranked).
    """
    rows = np.arange(bank.n_systems * bank.n_projections)
    if exclude_system is not None:
        rows = rows[rows // bank.n_projections != exclude_system]
    rows = np.random.default_rng(seed).choice(rows, size=min(n, len(rows)), replace=False)
    return Matches(
        np.full(len(rows), np.nan, dtype=np.float32),
        rows // bank.n_projections,
        rows % bank.n_projections,
        exclude_system,
    )
