"""The out-of-distribution check: is a target like the bank, judged by its best similarity?

A target's best similarity is compared with what bank images get from their nearest neighbour of
another system (:func:`nearest_neighbour_similarities`, computed once with the bank's embeddings).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .index import EmbeddingIndex
from .matches import Matches

__all__ = ["OutOfDistributionCheck", "check_out_of_distribution", "nearest_neighbour_similarities"]


@dataclass
class OutOfDistributionCheck:
    """Is the target like the bank? Its best similarity against bank images' own nearest neighbours.

    Attributes:
        best_similarity: the target's best similarity to any bank image it may match.
        reference_percentiles: percentiles (keys 1, 5, 16, 50) of the bank images' best similarity
            to another system.
        fraction_of_bank_below: the fraction of bank images whose own best similarity is below the
            target's (small: the target is unusual).
        limit_percentile: below this percentile of the reference, the target is out of distribution.
        is_out_of_distribution: the verdict.
        message: the verdict in words, with the numbers.
    """

    best_similarity: float
    reference_percentiles: dict
    fraction_of_bank_below: float
    limit_percentile: float
    is_out_of_distribution: bool
    message: str

    def to_dict(self) -> dict:
        return {
            "best_similarity": self.best_similarity,
            "reference_percentiles": {str(k): v for k, v in self.reference_percentiles.items()},
            "fraction_of_bank_below": self.fraction_of_bank_below,
            "limit_percentile": self.limit_percentile,
            "is_out_of_distribution": self.is_out_of_distribution,
            "message": self.message,
        }


def check_out_of_distribution(
    matches: Matches, reference: np.ndarray, *, limit_percentile: float = 5.0
) -> OutOfDistributionCheck:
    """Compare a target's best similarity with bank images' own nearest-neighbour similarities.

    Arguments:
        matches: the target's matches (its best similarity is the first).
        reference: ``(n,)`` bank images' best similarities to other systems
            (:attr:`BankEmbeddings.nearest_neighbour_similarity`).
        limit_percentile: the target is out of distribution when its best similarity is below this
            percentile of ``reference``.
    """
    reference = np.asarray(reference, dtype=np.float64)
    if len(matches) == 0 or len(reference) == 0:
        message = "No matches to judge: the distributions are empty."
        return OutOfDistributionCheck(float("nan"), {}, float("nan"), limit_percentile, True, message)
    best = float(matches.similarity[0])
    percentiles = {q: float(np.percentile(reference, q)) for q in (1, 5, 16, 50)}
    limit = float(np.percentile(reference, limit_percentile))
    fraction = float(np.mean(reference < best))
    outside = best < limit
    if outside:
        message = (
            f"WARNING: out of distribution. The target's best similarity {best:.3f} is below what "
            f"{100 - limit_percentile:g}% of bank images get from their nearest neighbour "
            f"({limit_percentile:g}th percentile {limit:.3f}, median {percentiles[50]:.3f}; only "
            f"{100 * fraction:.1f}% of bank images do worse). The target looks unlike the bank: "
            "the parameter distributions are not to be trusted."
        )
    else:
        message = (
            f"In distribution: the target's best similarity {best:.3f} is typical of bank images' nearest "
            f"neighbours ({limit_percentile:g}th percentile {limit:.3f}, median {percentiles[50]:.3f}; "
            f"{100 * fraction:.1f}% of bank images do worse)."
        )
    return OutOfDistributionCheck(best, percentiles, fraction, limit_percentile, outside, message)


def nearest_neighbour_similarities(
    vectors: np.ndarray,
    system: np.ndarray,
    projection: np.ndarray,
    *,
    n_reference: int = 2000,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """For a random sample of bank images, the best similarity to an image of another system.

    This is what a target like the bank typically gets, and the reference of
    :func:`check_out_of_distribution`.

    Returns:
        ``(min(n_reference, N),)`` float32 similarities.
    """
    if len(np.unique(system)) < 2:
        return np.zeros(0, dtype=np.float32)
    rows = np.random.default_rng(seed).permutation(len(vectors))[:n_reference]
    index = EmbeddingIndex(vectors, system, projection, backend="exact", device=device)
    found = index.search(vectors[rows], top_k=1, exclude_systems=system[rows].tolist())
    return np.array([m.similarity[0] for m in found], dtype=np.float32)
