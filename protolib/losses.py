"""Losses for weakly supervised metric learning, each a separate module taking what it needs.

All of them compare a predicted similarity (the cosine of two embeddings, in ``[-1, 1]``) with a
target similarity from physical parameters (:mod:`protolib.target_similarity`).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ContrastiveLoss", "SimilarityMSELoss", "LogRatioLoss", "make_loss", "LOSSES"]


class ContrastiveLoss(nn.Module):
    r"""The thesis's contrastive loss with a margin (Hadsell, Chopra & LeCun 2006), for continuous targets.

    With distance :math:`d = (1 - \cos) / 2` and target :math:`t = (1 + s) / 2`, both in ``[0, 1]``:

    .. math:: \ell = t\, d^2 + (1 - t) \max(0, m - d)^2,

    averaged over pairs: similar pairs are pulled together, dissimilar ones pushed beyond the margin.

    Arguments:
        margin: distance beyond which dissimilar pairs cost nothing.
    """

    takes_matrices = False

    def __init__(self, margin: float = 0.5):
        super().__init__()
        self.margin = margin

    def forward(self, similarity: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean loss over pairs; ``similarity`` and ``target`` are ``(M,)``."""
        distance = 0.5 * (1.0 - similarity)
        t = 0.5 * (1.0 + target)
        return (t * distance**2 + (1.0 - t) * torch.clamp(self.margin - distance, min=0.0) ** 2).mean()


class SimilarityMSELoss(nn.Module):
    """Mean-squared error between predicted and target similarity of each pair."""

    takes_matrices = False

    def forward(self, similarity: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean of ``(similarity - target)^2`` over pairs ``(M,)``."""
        return ((similarity - target) ** 2).mean()


class LogRatioLoss(nn.Module):
    r"""The log-ratio loss for continuous labels (Kim et al. 2019, CVPR).

    For every anchor ``a`` and two other images ``i``, ``j`` of the batch, the ratio of embedding
    distances should equal the ratio of label distances:

    .. math:: \ell(a, i, j) = \left(\log \frac{D_{ai} + \epsilon}{D_{aj} + \epsilon}
              - \log \frac{L_{ai} + \epsilon}{L_{aj} + \epsilon}\right)^2

    with :math:`D = 1 - \cos` (half the squared distance of unit embeddings) and :math:`L = 1 - s`.
    Averaged over all triplets with ``a``, ``i``, ``j`` distinct and ``i < j``. It only constrains
    ratios, i.e. the ranking and relative spacing of similarities, not their values.

    Arguments:
        epsilon: keeps the logarithms finite for identical images or identical parameters.

    References:
        Kim, Kim, Cho & Kwak (2019), Deep Metric Learning Beyond Binary Supervision, CVPR.
    """

    takes_matrices = True

    def __init__(self, epsilon: float = 1e-3):
        super().__init__()
        self.epsilon = epsilon

    def forward(self, similarity: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean loss over triplets; ``similarity`` and ``target`` are matrices ``(B, B)``."""
        b = len(similarity)
        log_d = torch.log(1.0 - similarity + self.epsilon)  # (B, B)
        log_l = torch.log(1.0 - target + self.epsilon)
        ratio = (log_d[:, :, None] - log_d[:, None, :]) - (log_l[:, :, None] - log_l[:, None, :])  # (a, i, j)
        eye = torch.eye(b, dtype=torch.bool, device=similarity.device)
        upper = torch.triu(torch.ones(b, b, dtype=torch.bool, device=similarity.device), 1)
        valid = upper[None] & ~eye[:, :, None] & ~eye[:, None, :]
        if not bool(valid.any()):
            return similarity.sum() * 0.0
        return (ratio**2)[valid].mean()


LOSSES = {"contrastive": ContrastiveLoss, "mse": SimilarityMSELoss, "log_ratio": LogRatioLoss}


def make_loss(kind: str, **options) -> nn.Module:
    """The loss called ``kind`` (``contrastive``, ``mse``, ``log_ratio``) built with its ``options``."""
    from .runtime import ProtolibInputError

    if kind not in LOSSES:
        raise ProtolibInputError(f"Loss must be one of {sorted(LOSSES)}, got {kind!r}.")
    accepted = {"contrastive": {"margin"}, "mse": set(), "log_ratio": {"epsilon"}}[kind]
    return LOSSES[kind](**{k: v for k, v in options.items() if k in accepted})
