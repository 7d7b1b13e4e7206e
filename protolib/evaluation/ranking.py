"""Ranking every target's reference images once, so that any number of matches can then be scored.

:class:`Relevance` says what counts as a good match (the target similarity of two systems'
parameters); :func:`rank_targets` orders every reference image for every target under one method.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..bank import Bank
from ..matching import EmbeddingIndex
from ..normalise import ParameterNormaliser
from ..runtime import ProtolibInputError
from ..target_similarity import TargetDefinition, target_similarity
from .methods import Comparison, MatchingMethod

__all__ = ["Relevance", "Ranking", "image_rows", "rank_targets"]


@dataclass
class Relevance:
    """What counts as a good match: the target similarity of two systems' parameters.

    Attributes:
        definition: which parameters and how (:class:`~protolib.target_similarity.TargetDefinition`).
        normaliser: the parameter normaliser fit on training systems.
    """

    definition: TargetDefinition
    normaliser: ParameterNormaliser

    @classmethod
    def from_model(cls, model) -> Relevance:
        """The relevance a trained Siamese network was taught (its checkpoint's target and normaliser)."""
        return cls(model.target, model.normaliser)

    @classmethod
    def fit(cls, definition: TargetDefinition, bank: Bank, train_systems: np.ndarray) -> Relevance:
        """The relevance of ``definition``, its parameters normalised on the bank's ``train_systems``."""
        return cls(
            definition,
            ParameterNormaliser.fit_on_systems(definition.parameters, definition.normalisation, bank, train_systems),
        )

    def normalised(self, bank: Bank) -> np.ndarray:
        """Normalised parameters ``(n_systems, K)`` of every bank system."""
        return self.normaliser.transform(bank.parameter_table(list(self.definition.parameters)))

    def matrix(self, z_a: np.ndarray, z_b: np.ndarray) -> np.ndarray:
        """Target similarity of every row of ``z_a`` ``(A, K)`` with every row of ``z_b`` ``(B, K)``: ``(A, B)``.

        Computed a block of rows at a time, so that its working arrays stay near 32 MB whatever ``A`` and ``B``.
        """
        rows = max(1, 2**22 // max(1, len(z_b) * z_a.shape[1]))
        blocks = []
        for start in range(0, max(len(z_a), 1), rows):
            part = z_a[start : start + rows]
            a = np.broadcast_to(part[:, None, :], (len(part), len(z_b), z_a.shape[1]))
            b = np.broadcast_to(z_b[None, :, :], a.shape)
            blocks.append(
                np.asarray(target_similarity(np.ascontiguousarray(a), np.ascontiguousarray(b), self.definition))
            )
        return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)


@dataclass
class Ranking:
    """Every target's reference images, best first, under one method.

    Attributes:
        method: the method's name.
        comparison: how the method's vectors compare (:class:`~protolib.evaluation.methods.Comparison`).
        target_system, target_projection: ``(T,)`` each target image.
        reference_system, reference_projection: ``(R,)`` the images searched (training systems).
        order: ``(T, R)`` indices into the reference images, best first.
        score: ``(T, R)`` the method's similarity of each ranked image, descending.
        relevance: ``(T, R)`` target similarity of each target with each reference image (unranked).
    """

    method: str
    comparison: Comparison
    target_system: np.ndarray
    target_projection: np.ndarray
    reference_system: np.ndarray
    reference_projection: np.ndarray
    order: np.ndarray
    score: np.ndarray
    relevance: np.ndarray


def image_rows(bank: Bank, systems: np.ndarray, projection: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The images of ``systems`` in one ``projection`` (``None``: every projection of each, in turn).

    Returns:
        ``(system, projection)``, two ``(n_images,)`` integer arrays; bank row ``system * n_projections + projection``.
    """
    systems = np.asarray(systems, dtype=np.int64)
    projections = np.arange(bank.n_projections) if projection is None else np.array([int(projection)])
    if projection is not None and not 0 <= projection < bank.n_projections:
        raise ProtolibInputError(f"Bank {bank.path} has projections 0..{bank.n_projections - 1}; got {projection}.")
    return np.repeat(systems, len(projections)), np.tile(projections, len(systems))


def rank_targets(
    method: MatchingMethod,
    vectors: np.ndarray,
    bank: Bank,
    relevance: Relevance,
    target_systems: np.ndarray,
    reference_systems: np.ndarray,
    *,
    projection: int | None = None,
) -> Ranking:
    """Rank every reference image for every target image with one method's bank vectors.

    Arguments:
        method: the method (for how its vectors compare).
        vectors: ``(n_systems * n_projections, D)`` the method's vector of every bank image
            (:func:`~protolib.matching.embed_bank`).
        bank: the bank.
        relevance: the target similarity (graded relevance).
        target_systems: systems taken as targets (test or validation).
        reference_systems: systems searched (training); the targets' own systems must not be among them.
        projection: the targets' projection (``None``: all); every projection of a reference system is searched.
    """
    if np.intersect1d(target_systems, reference_systems).size:
        raise ProtolibInputError(
            "Target systems must not be among the reference systems (a system never matches itself)."
        )
    p = bank.n_projections
    t_sys, t_proj = image_rows(bank, target_systems, projection)
    r_sys, r_proj = image_rows(bank, reference_systems, None)
    queries, reference, shift = method.comparison.searchable(
        vectors[t_sys * p + t_proj].astype(np.float32), vectors[r_sys * p + r_proj].astype(np.float32)
    )
    local = np.arange(len(reference))
    index = EmbeddingIndex(reference, local, np.zeros_like(local), backend="exact")
    # filled a block of targets at a time: bounded working memory
    order = np.empty((len(queries), len(reference)), dtype=np.int64)
    score = np.empty((len(queries), len(reference)), dtype=np.float64)
    step = max(1, 2**22 // max(1, len(reference)))
    for start in range(0, len(queries), step):
        found = index.search(queries[start : start + step], top_k=len(reference))
        order[start : start + step] = np.stack([m.system for m in found])
        score[start : start + step] = (
            np.stack([m.similarity for m in found]).astype(np.float64) + shift[start : start + step, None]
        )
    z = relevance.normalised(bank)
    return Ranking(
        method.name, method.comparison, t_sys, t_proj, r_sys, r_proj, order, score, relevance.matrix(z[t_sys], z[r_sys])
    )
