"""Target similarity of two systems from their normalised physical parameters (weak supervision).

There are no class labels in a bank: the network learns to reproduce a similarity computed from the
two systems' parameters, normalised by a :class:`~protolib.normalise.ParameterNormaliser` (log10 then
z-score), over a chosen subset of parameters with optional weights.

- ``cosine`` (the thesis): the cosine of the two parameter vectors. It ignores their lengths, so
  systems at (1, 1) and (2, 2) are "identical" although every parameter differs by one spread.
- ``kernel``: ``exp(-d^2 / (2 sigma^2))`` with ``d^2`` the weighted mean squared difference of the
  normalised parameters; 1 only for identical parameters, falling smoothly with distance.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .runtime import ProtolibInputError

__all__ = ["TargetDefinition", "target_similarity", "pairwise_target_similarity", "THESIS_PARAMETERS"]

KINDS = ("cosine", "kernel")
THESIS_PARAMETERS = ["stellar_mass", "accretion_rate", "disk_radius", "disk_mass", "envelope_mass", "luminosity", "age"]


@dataclass
class TargetDefinition:
    """Which parameters define similarity and how; stored in the Siamese checkpoint."""

    kind: str = "kernel"  # "kernel" (distance-based, default) or "cosine" (the thesis)
    parameters: list[str] = field(default_factory=lambda: list(THESIS_PARAMETERS))  # subset defining similarity
    weights: list[float] | None = None  # relative weight per parameter (None: equal)
    sigma: float = 1.0  # kernel width in normalised units (a spread of the training systems)
    normalisation: str = "zscore"  # how parameters are normalised before comparison

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ProtolibInputError(f"Target similarity kind must be one of {KINDS}, got {self.kind!r}.")
        if self.weights is not None and len(self.weights) != len(self.parameters):
            raise ProtolibInputError(
                f"{len(self.weights)} weights given for {len(self.parameters)} parameters {self.parameters}."
            )
        if not self.parameters:
            raise ProtolibInputError("A target similarity needs at least one parameter.")

    def weight_vector(self) -> torch.Tensor:
        """Weights ``(K,)`` summing to one."""
        w = (
            torch.ones(len(self.parameters), dtype=torch.float64)
            if self.weights is None
            else torch.as_tensor(self.weights, dtype=torch.float64)
        )
        if torch.any(w < 0) or w.sum() <= 0:
            raise ProtolibInputError(f"Parameter weights must be non-negative and not all zero, got {w.tolist()}.")
        return w / w.sum()

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TargetDefinition:
        return cls(**data)


def target_similarity(a, b, definition: TargetDefinition):
    """Similarity of systems with normalised parameters ``a`` and ``b`` ``(N, K)``, row by row: ``(N,)``.

    Works on numpy arrays (returns numpy) and tensors (returns a tensor).

    Example:
        >>> cos = TargetDefinition(kind="cosine", parameters=["stellar_mass", "disk_radius"])
        >>> float(target_similarity(np.array([[1.0, 1.0]]), np.array([[2.0, 2.0]]), cos)[0])
        1.0
    """
    is_numpy = not isinstance(a, torch.Tensor)
    ta, tb = torch.as_tensor(np.asarray(a) if is_numpy else a), torch.as_tensor(np.asarray(b) if is_numpy else b)
    w = definition.weight_vector().to(ta)
    if definition.kind == "cosine":
        dot = (w * ta * tb).sum(-1)
        norm = torch.sqrt((w * ta * ta).sum(-1) * (w * tb * tb).sum(-1)).clamp_min(1e-12)
        result = dot / norm
    else:
        result = torch.exp(-(w * (ta - tb) ** 2).sum(-1) / (2 * definition.sigma**2))
    return result.numpy() if is_numpy else result


def pairwise_target_similarity(z: torch.Tensor, definition: TargetDefinition) -> torch.Tensor:
    """Target similarity of every pair of rows of ``z`` ``(B, K)``: a symmetric matrix ``(B, B)``."""
    b = len(z)
    return target_similarity(z[:, None, :].expand(b, b, -1), z[None, :, :].expand(b, b, -1), definition)
