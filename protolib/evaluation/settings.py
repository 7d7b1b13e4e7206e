"""The evaluation's settings (the ``evaluation:`` section of a run configuration), what it names, and its cost.

The levels of the coverage figures and the names of the methods live here, the lowest module of
:mod:`protolib.evaluation`, so that every other module of the package reads them from one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..bank import Bank
from ..runtime import ProtolibInputError

__all__ = [
    "EvaluationSettings",
    "evaluation_cost",
    "COVERAGE_LEVELS",
    "CURVE_LEVELS",
    "METHOD_NAMES",
    "NPE_METHODS",
    "CORRECTIONS",
]

COVERAGE_LEVELS = (0.5, 0.68, 0.95)
CURVE_LEVELS = tuple(np.round(np.linspace(0.05, 0.95, 19), 2).tolist())
METHOD_NAMES = ("random", "pixel", "pca", "autoencoder", "siamese", "npe", "npe_end_to_end")
NPE_METHODS = ("npe", "npe_end_to_end")
CORRECTIONS = ("choose_k", "choose_k_and_widening", "none")


@dataclass
class EvaluationSettings:
    """The ``evaluation:`` section of a run configuration."""

    top_k: int = 20  # matches per target that form its distribution
    projection: int | None = None  # targets' projection; None: every projection of every test system
    # methods compared on the same targets (NPE_METHODS: need sbi)
    methods: list[str] = field(default_factory=lambda: list(METHOD_NAMES[:5]))
    npe_samples: int = 200  # posterior samples per target of the neural posterior estimate
    npe_max_epochs: int = 200  # its flow's training epochs at most
    pca_components: int = 32  # dimensions kept by the PCA baseline
    weight_temperature: float | None = None  # weight matches by exp((s - s_best) / T); None: equal weights
    correction: str = "choose_k_and_widening"  # on validation systems: "choose_k", "choose_k_and_widening" or "none"
    k_candidates: list[int] = field(default_factory=lambda: [5, 10, 20, 50, 100, 200])  # k tried by the correction
    # interval scalings tried, per parameter
    widening_candidates: list[float] = field(default_factory=lambda: [1.0, 1.1, 1.25, 1.4, 1.6, 1.8, 2.0, 2.5, 3.0])
    rank_bins: int = 10  # bins of the rank histograms
    seed: int = 0  # random matches and TARP reference points
    variant_epochs: int | None = None  # epochs per network in the target/loss comparison (None: the config's)
    shift_test_systems: int = 0  # systems added to the held-out test ones in the domain-shift comparison (chapter 06b)

    def __post_init__(self):
        unknown = set(self.methods) - set(METHOD_NAMES)
        if unknown:
            raise ProtolibInputError(
                f"Unknown evaluation method(s) {sorted(unknown)}; known ones are {list(METHOD_NAMES)}."
            )
        if self.correction not in CORRECTIONS:
            raise ProtolibInputError(f"Evaluation correction must be one of {CORRECTIONS}, got {self.correction!r}.")
        if self.top_k < 1:
            raise ProtolibInputError(f"Evaluation top_k must be at least 1, got {self.top_k}.")


def evaluation_cost(bank: Bank, split, settings: EvaluationSettings, n_parameters: int) -> tuple[float, float]:
    """The peak memory [bytes] and a rough time [s] of :func:`evaluate_methods` with ``settings``, before any work.

    Every method ranks every reference image (training systems, every projection: ``R``) for every
    target image (test, and with a correction validation systems: ``T`` and ``V``). A ranking holds
    three ``(T, R)`` arrays (order, similarity, target similarity: 24 bytes a pair, 32 with a block at work),
    the test ranking is held while the validation one is scored, and scoring makes about 96 bytes a pair of temporary
    arrays (ranks, sorted copies), so the memory grows with ``(T + V) x R``, the square of the bank.
    Then the bank's images as pixel vectors (4 bytes a pixel), the training images with the PCA's
    float64 copies and SVD (about 36 bytes a training pixel), and ``n_parameters`` per image. Time:
    10 s to start, about 2,000 images embedded a second per method (at 64 x 64 px) and 1.5e6 ranked pairs a second;
    the neural posterior estimates' training is not counted.
    """
    per_system = bank.n_projections if settings.projection is None else 1
    targets = len(split.test) * per_system
    validation = len(split.validation) * per_system if settings.correction != "none" else 0
    references = len(split.train) * bank.n_projections
    pairs = (targets + validation) * references
    pixels = bank.image_size**2
    n_images = bank.n_systems * bank.n_projections
    matching = [m for m in settings.methods if m not in NPE_METHODS]
    memory = (
        4e8
        + 32.0 * pairs
        + 96.0 * max(targets, validation) * references
        + 4.0 * n_images * pixels * ("pixel" in matching)
        + 36.0 * references * pixels * ("pca" in matching)
        + 8.0 * n_images * max(1, n_parameters)
    )
    seconds = 10.0 + len(matching) * (n_images * pixels / 64**2 / 2000.0 + pairs / 1.5e6)
    return memory, seconds
