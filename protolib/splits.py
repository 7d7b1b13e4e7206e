"""Train / validation / test splits by system, reproducible from a seed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .runtime import ProtolibInputError

__all__ = ["Split", "split_systems"]


@dataclass(frozen=True)
class Split:
    """System indices of each part. Every projection of a system belongs to the same part."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    seed: int

    def to_dict(self) -> dict:
        """Plain data for checkpoints and JSON."""
        return {
            "train": self.train.tolist(),
            "validation": self.validation.tolist(),
            "test": self.test.tolist(),
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Split:
        return cls(
            *(np.asarray(data[k], dtype=np.int64) for k in ("train", "validation", "test")), seed=int(data["seed"])
        )

    def part_of(self, n_systems: int) -> np.ndarray:
        """A label per system: ``"train"``, ``"validation"`` or ``"test"``."""
        labels = np.empty(n_systems, dtype=object)
        for name in ("train", "validation", "test"):
            labels[getattr(self, name)] = name
        return labels


def split_systems(n_systems: int, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), seed: int = 0) -> Split:
    """Shuffle systems with ``seed`` and cut them into train, validation and test parts.

    Each part gets at least one system when there are three or more. Indices within a part are
    sorted (chunk-friendly reads).

    Example:
        >>> s = split_systems(10, seed=0)
        >>> len(s.train), len(s.validation), len(s.test)
        (7, 1, 2)
    """
    fractions = np.asarray(fractions, dtype=float)
    if fractions.shape != (3,) or np.any(fractions < 0) or not np.isclose(fractions.sum(), 1.0):
        raise ProtolibInputError(
            f"Split fractions must be three non-negative numbers summing to 1, got {fractions.tolist()}."
        )
    if n_systems < 3:
        raise ProtolibInputError(
            f"A bank needs at least 3 systems to be split into train, validation and test; it has {n_systems}."
        )
    order = np.random.default_rng([int(seed), 7]).permutation(n_systems)
    n_val = max(1, int(round(fractions[1] * n_systems)))
    n_test = max(1, int(round(fractions[2] * n_systems)))
    n_train = n_systems - n_val - n_test
    if n_train < 1:
        raise ProtolibInputError(f"Fractions {fractions.tolist()} leave no training systems out of {n_systems}.")
    parts = np.split(order, [n_train, n_train + n_val])
    return Split(*(np.sort(p) for p in parts), seed=int(seed))
