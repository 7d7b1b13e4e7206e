"""Evaluation: does matching recover physical parameters, and are its distributions calibrated?

Every held-out (test) system of the bank is taken in turn as the target, in one or all of its
projections, and matched against the *training* systems only. Every matching method (random
matches, pixels with a chi-square on the noise, PCA, the autoencoder's latent space, the Siamese
network) is a :class:`MatchingMethod`: an embedding function and how embeddings compare, searched
with the same :class:`~protolib.matching.EmbeddingIndex`. The same targets give, per method:

- **similarity**: Spearman correlation and mean-squared error of predicted against target similarity;
- **retrieval**: nDCG@k with the target similarity as graded relevance, and the mean normalised
  parameter distance of the top k;
- **parameter recovery**, per parameter: error of the matches' median against the truth (dex for
  log-scaled parameters, and in units of the prior's spread), and R^2 of the k-nearest-neighbour mean;
- **calibration**: coverage of central intervals (50/68/95% and a curve), rank histograms
  (simulation-based calibration, Talts et al. 2018) and TARP (Lemos et al. 2023).

Matches are neighbours, not posterior draws, so their intervals need not be calibrated at a given k:
:func:`choose_correction` picks k (and, per parameter, a widening of the intervals about the median)
on the *validation* systems, and the test figures are reported before and after. A neural posterior estimate
on the same frozen embedding (:mod:`protolib.npe`, optional ``sbi``) is the reference, and
:func:`~protolib.pipelines.evaluate.compare_variants` scores Siamese networks trained with other
target similarities and losses.

Each method's figures come back as a :class:`MethodResult`. ``protolib evaluate``, which writes
``metrics.json`` and the figures, is :func:`protolib.pipelines.evaluate.run_evaluation`.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from scipy.stats import chisquare, rankdata

from .bank import Bank
from .comparison import paired_difference
from .distributions import central_coverage, central_intervals, similarity_weights
from .matching import EmbeddingIndex, EmbedFunction, embed_bank
from .matching.calibration import required_widening
from .normalise import ParameterNormaliser, scaled_image_parameters
from .runtime import ProtolibInputError, interruptible
from .siamese import similarity_metrics
from .target_similarity import TargetDefinition, target_similarity

__all__ = [
    "EvaluationSettings",
    "evaluation_cost",
    "MatchingMethod",
    "Relevance",
    "Ranking",
    "MethodEvaluation",
    "MethodResult",
    "constrains",
    "distribution_metrics",
    "image_rows",
    "random_method",
    "pixel_method",
    "pca_method",
    "autoencoder_method",
    "siamese_method",
    "baseline_methods",
    "rank_targets",
    "score_ranking",
    "evaluate_methods",
    "choose_correction",
    "choose_widening",
    "coverage_standard_error",
    "widening_label",
    "ndcg_at_k",
    "r_squared",
    "central_intervals",
    "central_coverage",
    "truth_ranks",
    "tarp_coverage",
    "headline_table",
    "summary_table",
    "parameter_table",
    "mean_target_error",
    "parameter_verdicts",
    "verdicts",
    "evaluation_figures",
    "variant_figures",
    "METHOD_LABELS",
    "VARIANTS",
    "COVERAGE_LEVELS",
    "METHOD_NAMES",
    "NPE_METHODS",
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
    three ``(T, R)`` arrays (order, similarity, target similarity: 24 bytes a pair, 32 with a block at work), the test
    ranking
    is held while the validation one is scored, and scoring makes about 96 bytes a pair of temporary
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


# ---------------------------------------------------------------------------------------------
# Methods: one interface, an embedding function plus how embeddings compare


@dataclass
class MatchingMethod:
    """One way of ranking bank images for a target.

    Attributes:
        name: short name (``"siamese"``, ``"pixel"`` ...).
        embed: images ``(N, H, W)`` to vectors ``(N, D)``.
        metric: ``"cosine"`` (vectors are L2-normalised; similarity is their cosine) or
            ``"euclidean"`` (similarity is ``-|a - b|^2 / 2``; for pixels scaled by the noise, ``-chi^2 / 2``), or
            ``"posterior"`` for a neural posterior estimate (:mod:`protolib.npe`), which draws samples and ranks nothing
            (its ``embed`` is ``None``).
        description: one line for tables and reports.
    """

    name: str
    embed: EmbedFunction
    metric: str = "cosine"
    description: str = ""

    def __post_init__(self):
        if self.metric not in ("cosine", "euclidean", "posterior"):
            raise ProtolibInputError(
                f"Method metric must be 'cosine', 'euclidean' or 'posterior', got {self.metric!r}."
            )


def random_method(seed: int = 0) -> MatchingMethod:
    """Random matches (the prior): every image gets a random unit vector, so rankings are random."""
    rng = np.random.default_rng(seed)

    def embed(images: np.ndarray) -> np.ndarray:
        vectors = rng.normal(size=(len(images), 8))
        return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)

    return MatchingMethod("random", embed, "cosine", "random bank images (the prior)")


def pixel_method(noise_rms: float) -> MatchingMethod:
    """Nearest neighbours in pixel space by chi-square: ``sum (a - b)^2 / (2 sigma^2)`` (both images noisy)."""
    if not noise_rms > 0:
        raise ProtolibInputError(f"The pixel chi-square needs a positive noise rms, got {noise_rms}.")
    scale = 1.0 / (math.sqrt(2.0) * noise_rms)
    return MatchingMethod(
        "pixel",
        lambda images: images.reshape(len(images), -1).astype(np.float32) * scale,
        "euclidean",
        "pixel chi-square on the noise",
    )


def pca_method(train_images: np.ndarray, preprocessing, n_components: int = 32) -> MatchingMethod:
    """Nearest neighbours in the first ``n_components`` principal components of the stretched training images.

    Arguments:
        train_images: ``(N, H, W)`` training images in the bank's unit (the PCA is fit on them only).
        preprocessing: the networks' :class:`~protolib.images.ImagePreprocessing` (the same stretch).
        n_components: dimensions kept.
    """

    def stretched(images: np.ndarray) -> np.ndarray:
        pixels, _ = preprocessing(torch.as_tensor(np.ascontiguousarray(images), dtype=torch.float32))
        return pixels.reshape(len(images), -1).numpy().astype(np.float64)

    flat = stretched(train_images)
    mean = flat.mean(0)
    # (H*W, n); tens of seconds on a large bank: stoppable
    basis = interruptible(_principal_axes, flat - mean, n_components)
    return MatchingMethod(
        "pca",
        lambda images: ((stretched(images) - mean) @ basis).astype(np.float32),
        "euclidean",
        f"PCA of the stretched images ({basis.shape[1]} components)",
    )


def _principal_axes(centred: np.ndarray, n_components: int) -> np.ndarray:
    """The first ``n_components`` principal axes ``(D, n)`` of the rows of ``centred`` ``(N, D)`` (numpy's SVD)."""
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return np.ascontiguousarray(vt[:n_components].T)


def autoencoder_method(autoencoder, train_images: np.ndarray) -> MatchingMethod:
    """Nearest neighbours in the autoencoder's latent space, each dimension scaled to unit spread on training images."""
    latents = autoencoder.encode_images(train_images)
    mean, spread = latents.mean(0), latents.std(0) + 1e-8
    return MatchingMethod(
        "autoencoder",
        lambda images: ((autoencoder.encode_images(images) - mean) / spread).astype(np.float32),
        "euclidean",
        "autoencoder latent (standardised)",
    )


def siamese_method(model) -> MatchingMethod:
    """The Siamese network: cosine of its unit embeddings."""
    return MatchingMethod("siamese", lambda images: model.embed_images(images), "cosine", "Siamese network (WSML)")


def baseline_methods(
    model, bank: Bank, train_systems: np.ndarray, settings: EvaluationSettings
) -> list[MatchingMethod]:
    """The methods named in ``settings.methods``, built for a trained Siamese ``model`` and its bank.

    The autoencoder baseline uses the autoencoder the network was trained from; it is left out,
    with a warning, when that file is gone.
    """
    from .autoencoder import load_autoencoder

    train_images = bank.load_images(train_systems).reshape(-1, bank.image_size, bank.image_size)
    methods = []
    for name in settings.methods:
        if name == "random":
            methods.append(random_method(settings.seed))
        elif name == "pixel":
            methods.append(pixel_method(bank.instrument.noise_rms_jy_beam or float(np.std(train_images))))
        elif name == "pca":
            methods.append(pca_method(train_images, model.preprocessing, settings.pca_components))
        elif name in NPE_METHODS:
            continue  # not a matching method: see protolib.npe.npe_evaluation
        elif name == "autoencoder":
            path = Path(model.checkpoint.get("autoencoder", ""))
            if not path.is_file():
                warnings.warn(
                    f"The autoencoder {path} the network was trained from is gone; its baseline is left out.",
                    stacklevel=2,
                )
                continue
            methods.append(autoencoder_method(load_autoencoder(path, model.device), train_images))
        else:
            methods.append(siamese_method(model))
    return methods


# ---------------------------------------------------------------------------------------------
# Ranking every target's reference images once, then scoring any k


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
        metric: ``"cosine"`` or ``"euclidean"`` (see :class:`MatchingMethod`).
        target_system, target_projection: ``(T,)`` each target image.
        reference_system, reference_projection: ``(R,)`` the images searched (training systems).
        order: ``(T, R)`` indices into the reference images, best first.
        score: ``(T, R)`` the method's similarity of each ranked image, descending.
        relevance: ``(T, R)`` target similarity of each target with each reference image (unranked).
    """

    method: str
    metric: str
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
        method: the method (for its metric).
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
    queries, reference = vectors[t_sys * p + t_proj].astype(np.float32), vectors[r_sys * p + r_proj].astype(np.float32)
    shift = np.zeros(len(queries), dtype=np.float32)
    # -|q - b|^2 / 2 = q.b - |b|^2 / 2 - |q|^2 / 2: an inner product on augmented vectors
    if method.metric == "euclidean":
        centre = reference.mean(0)  # distances do not change; float32 products lose less
        queries, reference = queries - centre, reference - centre
        reference = np.c_[reference, -0.5 * (reference**2).sum(1)]
        queries, shift = np.c_[queries, np.ones(len(queries), dtype=np.float32)], -0.5 * (queries**2).sum(1)
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
        method.name, method.metric, t_sys, t_proj, r_sys, r_proj, order, score, relevance.matrix(z[t_sys], z[r_sys])
    )


# ---------------------------------------------------------------------------------------------
# Metrics with known answers


def ndcg_at_k(ranked_relevance: np.ndarray, relevance: np.ndarray, k: int) -> np.ndarray:
    """Normalised discounted cumulative gain of the top ``k``, per target.

    Arguments:
        ranked_relevance: ``(T, >= k)`` relevance of each target's matches, in the method's order.
        relevance: ``(T, R)`` relevance of every reference image (the ideal order sorts it).
        k: matches counted.

    Returns:
        ``(T,)`` in [0, 1]; 1 when the top ``k`` are the ``k`` most relevant images in order.
    """
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (np.asarray(ranked_relevance)[:, :k] * discount).sum(1)
    ideal = (-np.sort(-np.asarray(relevance), axis=1)[:, :k] * discount).sum(1)
    return dcg / np.where(ideal > 0, ideal, np.nan)


def r_squared(estimate: np.ndarray, truth: np.ndarray) -> float:
    """Coefficient of determination of ``estimate`` for ``truth`` (1: perfect, 0: no better than their mean)."""
    estimate, truth = np.asarray(estimate, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    total = ((truth - truth.mean()) ** 2).sum()
    return float(1.0 - ((truth - estimate) ** 2).sum() / total) if total > 0 else float("nan")


def truth_ranks(samples: np.ndarray, truths: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """Rank of each truth among its target's samples (simulation-based calibration, Talts et al. 2018).

    Ties are broken at random. For a calibrated method the ranks are uniform on ``0 .. n``.

    Returns:
        ``(T,)`` integers in ``0 .. n``.
    """
    samples, truths = np.asarray(samples), np.asarray(truths)
    below = (samples < truths[:, None]).sum(1)
    ties = (samples == truths[:, None]).sum(1)
    return below + np.random.default_rng(seed).integers(0, ties + 1)


def tarp_coverage(
    samples: np.ndarray, truths: np.ndarray, *, weights: np.ndarray | None = None, n_alpha: int = 21, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Expected coverage of random-point-centred regions: TARP (Lemos et al. 2023).

    For each target a reference point is drawn uniformly in the box spanned by the truths; the
    credibility of the truth is the (weighted) fraction of samples closer to that point than the truth.
    A calibrated method's expected coverage equals the credibility level at every level.

    Arguments:
        samples: ``(T, n, D)`` each target's samples (parameters in comparable, e.g. normalised, units).
        truths: ``(T, D)`` the true values.
        weights: ``(T, n)`` optional weight per sample.
        n_alpha: credibility levels evaluated, evenly in [0, 1].
        seed: the reference points' random generator.

    Returns:
        ``alpha (n_alpha,)`` and the expected coverage ``ecp (n_alpha,)``.
    """
    samples, truths = np.asarray(samples, dtype=np.float64), np.asarray(truths, dtype=np.float64)
    low, high = truths.min(0), truths.max(0)
    span = np.where(high > low, high - low, 1.0)
    samples, truths = (samples - low) / span, (truths - low) / span
    reference = np.random.default_rng(seed).uniform(0.0, 1.0, size=truths.shape)  # (T, D)
    sample_distance = np.linalg.norm(samples - reference[:, None, :], axis=-1)  # (T, n)
    truth_distance = np.linalg.norm(truths - reference, axis=-1)  # (T,)
    closer = sample_distance < truth_distance[:, None]
    weights = (
        np.full(closer.shape, 1.0 / closer.shape[1]) if weights is None else weights / weights.sum(1, keepdims=True)
    )
    credibility = (closer * weights).sum(1)
    alpha = np.linspace(0.0, 1.0, n_alpha)
    return alpha, (credibility[:, None] < alpha[None, :] + 1e-12).mean(0) * (alpha > 0)


# ---------------------------------------------------------------------------------------------
# One method evaluated at one k


@dataclass
class MethodEvaluation:
    """One method's figures on one set of targets at one ``k``.

    Attributes:
        method: the method's name.
        top_k: matches per target.
        metrics: the scalar figures (``similarity``, ``retrieval``, ``parameters``, ``calibration``), JSON-ready.
        parameters: evaluated parameters, in order.
        truth: name -> ``(T,)`` true values (log10 where log-scaled).
        median: name -> ``(T,)`` the matches' median.
        interval_68: name -> ``(T, 2)`` the matches' 16th and 84th percentiles.
        ranks: name -> ``(T,)`` SBC rank of the truth among the ``top_k`` matches, as a fraction: ``(rank + u) / (top_k
    + 1)``
            with ``u`` uniform in [0, 1), so that it is uniform on [0, 1] for a calibrated method whatever the bins.
        coverage_curve: name -> ``(len(CURVE_LEVELS),)`` coverage at :data:`CURVE_LEVELS`.
        tarp: ``(alpha, ecp)``.
        covered: name -> ``(T, len(COVERAGE_LEVELS))`` whether each target's (widened) central interval holds its truth.
        needed_widening: name -> ``(T, len(COVERAGE_LEVELS))`` the widening of the matches' own intervals at which each
            target would be covered (:func:`~protolib.matching.calibration.required_widening`): ``covered`` is it at
    most the
            widening applied; a further term (:mod:`protolib.out_of_family`) is scored from it.
        target_system: ``(T,)`` each target's system (set by :func:`score_ranking`; ``None``: every target its own),
            which :func:`coverage_standard_error` resamples.
    """

    method: str
    top_k: int
    metrics: dict
    parameters: list[str]
    truth: dict
    median: dict
    interval_68: dict
    ranks: dict
    coverage_curve: dict
    tarp: tuple[np.ndarray, np.ndarray]
    covered: dict = field(default_factory=dict)
    target_system: np.ndarray | None = None
    needed_widening: dict = field(default_factory=dict)


def coverage_standard_error(
    evaluation: MethodEvaluation, name: str, *, n_resamples: int = 2000, seed: int = 0
) -> np.ndarray:
    """The standard error of each coverage in :data:`COVERAGE_LEVELS` of one parameter, by a bootstrap over the target
    systems.

    The projections of one system are not independent targets (one disk seen from eight sides), so
    the systems are resampled with replacement, each with all its targets (a cluster bootstrap;
    ``scipy.stats.bootstrap`` resamples single observations, hence this function). With a few dozen
    test systems a 68% coverage is known to a few hundredths only: a coverage that far from nominal
    says nothing about the method.

    Returns:
        ``(len(COVERAGE_LEVELS),)`` the standard deviation of the coverage over ``n_resamples`` resamples.
    """
    covered = np.asarray(evaluation.covered[name], dtype=np.float64)
    groups = np.arange(len(covered)) if evaluation.target_system is None else np.asarray(evaluation.target_system)
    _, group = np.unique(groups, return_inverse=True)
    hits, counts = np.zeros((group.max() + 1, covered.shape[1])), np.bincount(group).astype(np.float64)
    np.add.at(hits, group, covered)
    draws = np.random.default_rng(seed).integers(0, len(counts), size=(n_resamples, len(counts)))
    return (hits[draws].sum(1) / counts[draws].sum(1)[:, None]).std(0)


@dataclass
class MethodResult:
    """One method evaluated on the test targets: at the configured ``k``, and corrected on validation systems.

    Attributes:
        method: the :class:`MatchingMethod` (its name, metric and description).
        evaluation: its figures at the configured ``top_k``.
        corrected: its figures at the ``k`` and interval widening chosen on the validation systems
            (:func:`choose_correction`); ``None`` without a correction.
        chosen_k, chosen_widening: that choice, the widening per parameter (``None`` without one).
        k_scores: the validation score of every candidate ``k``, ``{"k=..": score}``.
        path: the checkpoint of the network evaluated (set by
            :func:`~protolib.pipelines.evaluate.compare_variants`; else ``None``).

    ``result["evaluation"]`` reads ``result.evaluation``, as for the dicts earlier versions returned.
    """

    method: MatchingMethod
    evaluation: MethodEvaluation
    corrected: MethodEvaluation | None = None
    chosen_k: int | None = None
    chosen_widening: dict[str, float] | None = None
    k_scores: dict = field(default_factory=dict)
    path: Path | None = None

    def __getitem__(self, key: str):
        """The attribute ``key`` (``result["chosen_k"]`` is ``result.chosen_k``)."""
        if key not in {f.name for f in fields(self)}:
            raise KeyError(key)
        return getattr(self, key)

    def figures(self, corrected: bool = False) -> MethodEvaluation:
        """The corrected figures when ``corrected`` and there are some, else those at the configured ``k``."""
        return self.corrected if corrected and self.corrected is not None else self.evaluation

    def to_json(self) -> dict:
        """This result as its ``metrics.json`` entry: description, metric, ``at_top_k`` and, when corrected, the
        correction."""
        entry = {
            "description": self.method.description,
            "metric": self.method.metric,
            "at_top_k": {**self.evaluation.metrics, "top_k": self.evaluation.top_k},
        }
        if self.corrected is not None:
            entry["corrected"] = {**self.corrected.metrics, "top_k": self.corrected.top_k}
            entry["chosen_k"], entry["chosen_widening"] = self.chosen_k, self.chosen_widening
            entry["correction_scores_on_validation"] = self.k_scores
        return entry


def score_ranking(
    ranking: Ranking,
    bank: Bank,
    relevance: Relevance,
    *,
    top_k: int,
    parameters: Sequence[str] | None = None,
    weight_temperature: float | None = None,
    rank_bins: int = 10,
    seed: int = 0,
    widening: float | Mapping[str, float] = 1.0,
) -> MethodEvaluation:
    """Every figure of one method's ranking at ``top_k`` matches per target.

    Arguments:
        ranking: from :func:`rank_targets`.
        bank: the bank.
        relevance: the target similarity (for the normalised parameter distance and TARP).
        top_k: matches per target.
        parameters: parameters evaluated (default: every bank parameter and the inclination).
        weight_temperature: weight matches by :func:`~protolib.distributions.similarity_weights` (``None``: equal).
        rank_bins: bins of the rank histograms (for the uniformity test).
        seed: tie-breaking of ranks and TARP's reference points.
        widening: intervals (coverage, 68% ranges) widened about the median by this factor, or by
            ``widening[name]`` per parameter (the correction; 1 for a parameter it does not name).
    """
    names = [*bank.physical_parameters, "inclination"] if parameters is None else list(parameters)
    top_k = min(top_k, ranking.order.shape[1])
    p = bank.n_projections
    top = ranking.order[:, :top_k]  # (T, k)
    target_rows = ranking.target_system * p + ranking.target_projection
    match_rows = (ranking.reference_system * p + ranking.reference_projection)[top]  # (T, k)
    weights = None
    if weight_temperature is not None:
        weights = np.stack([similarity_weights(s, weight_temperature) for s in ranking.score[:, :top_k]])
    z_images = np.repeat(relevance.normalised(bank), p, axis=0)
    distance = np.sqrt(((z_images[match_rows] - z_images[target_rows][:, None, :]) ** 2).mean(-1))  # (T, k)
    values, logs = scaled_image_parameters(bank, names)
    prior_spread = values[np.unique(ranking.reference_system * p + ranking.reference_projection)].std(0)
    evaluation = distribution_metrics(
        values[match_rows],
        values[target_rows],
        names,
        logs,
        prior_spread,
        bank,
        relevance,
        z_images[match_rows],
        z_images[target_rows],
        method=ranking.method,
        weights=weights,
        widening=widening,
        rank_bins=rank_bins,
        seed=seed,
    )
    # similarity and retrieval first
    evaluation.metrics = {
        **_similarity_and_retrieval(ranking, top_k, distance),
        **evaluation.metrics,
    }
    evaluation.target_system = np.asarray(ranking.target_system)
    return evaluation


def _row_spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's correlation of each row of ``a`` with the same row of ``b`` (rows constant in either left out).

    ``scipy.stats.spearmanr`` correlates one pair of vectors per call; this ranks every row at once
    (average ranks for ties, as it does) and takes each row's Pearson correlation of the ranks.
    """
    keep = (np.ptp(a, axis=1) > 0) & (np.ptp(b, axis=1) > 0)
    ranks_a, ranks_b = (rankdata(x[keep], axis=1) for x in (a, b))
    ranks_a -= ranks_a.mean(1, keepdims=True)
    ranks_b -= ranks_b.mean(1, keepdims=True)
    return (ranks_a * ranks_b).sum(1) / np.sqrt((ranks_a**2).sum(1) * (ranks_b**2).sum(1))


def _similarity_and_retrieval(ranking: Ranking, top_k: int, distance: np.ndarray) -> dict:
    """The ``similarity`` and ``retrieval`` figures of a ranking at ``top_k``; ``distance (T, k)``: each match's
    normalised parameter distance."""
    ranked_relevance = np.take_along_axis(ranking.relevance, ranking.order, axis=1)
    pooled = similarity_metrics(ranking.score.ravel(), ranked_relevance.ravel())
    per_target = _row_spearman(ranking.score, ranked_relevance)
    ndcg = ndcg_at_k(ranked_relevance, ranking.relevance, top_k)
    chance = (
        ranking.relevance.mean(1)
        * (1.0 / np.log2(np.arange(2, top_k + 2))).sum()
        / (-np.sort(-ranking.relevance, axis=1)[:, :top_k] * (1.0 / np.log2(np.arange(2, top_k + 2)))).sum(1)
    )
    return {
        "similarity": {
            "spearman": pooled["spearman"],
            "spearman_per_target": float(np.nanmean(per_target)) if len(per_target) else float("nan"),
            "mse": pooled["mse"] if ranking.metric == "cosine" else float("nan"),
            "within_0.1": pooled["within_0.1"] if ranking.metric == "cosine" else float("nan"),
        },
        "retrieval": {
            f"ndcg_at_{top_k}": float(np.nanmean(ndcg)),
            "ndcg": float(np.nanmean(ndcg)),
            "ndcg_chance": float(np.nanmean(chance)),
            "mean_normalised_parameter_distance": float(distance.mean()),
            "best_match_normalised_parameter_distance": float(distance[:, 0].mean()),
        },
    }


def distribution_metrics(
    samples: np.ndarray,
    truths: np.ndarray,
    names: list[str],
    logs: list[bool],
    prior_spread: np.ndarray,
    bank: Bank,
    relevance: Relevance,
    z_samples: np.ndarray,
    z_truths: np.ndarray,
    *,
    method: str,
    weights: np.ndarray | None,
    widening: float | Mapping[str, float],
    rank_bins: int,
    seed: int,
) -> MethodEvaluation:
    """Recovery and calibration figures of any method's samples against the truths.

    Arguments:
        samples: ``(T, n, K)`` each target's samples (matches, or posterior draws), scaled as
            :func:`~protolib.normalise.scaled_image_parameters` (log10 where ``logs``).
        truths: ``(T, K)`` the true values, scaled the same way.
        names, logs: the ``K`` parameters and whether each is log-scaled.
        prior_spread: ``(K,)`` the prior's standard deviation of each scaled parameter (errors are divided by it).
        bank: the bank (for the parameters' units).
        relevance: the target similarity (which parameters it constrains; TARP's parameters).
        z_samples, z_truths: ``(T, n, K')`` and ``(T, K')`` the same in the relevance's normalised parameters (for
    TARP).
        method: the method's name.
        weights: ``(T, n)`` weight per sample, or ``None`` for equal weights.
        widening: intervals widened about the median by this factor, or ``widening[name]`` per parameter (default 1).
        rank_bins, seed: as in :func:`score_ranking`.

    Returns:
        The method's :class:`MethodEvaluation` at ``top_k = n``, its ``metrics`` the ``parameters`` and ``calibration``
    figures only.
    """
    table, truth, median, interval, ranks, curves, covered, needed = {}, {}, {}, {}, {}, {}, {}, {}
    constrained = set(relevance.definition.parameters)
    factors = {name: _widening_of(widening, name) for name in names}
    for j, name in enumerate(names):
        values, truths_j, factor = samples[..., j], truths[:, j], factors[name]
        median_j, low_j, high_j = central_intervals(values, [0.68], weights)
        estimate = values.mean(1) if weights is None else (values * weights).sum(1)
        error = median_j - truths_j
        _, low_c, high_c = central_intervals(values, COVERAGE_LEVELS, weights, widening=factor)
        covered[name] = (low_c <= truths_j[:, None]) & (truths_j[:, None] <= high_c)  # (T, levels)
        needed[name] = required_widening(values, truths_j, COVERAGE_LEVELS, weights)
        coverage = covered[name].mean(0)
        curve = central_coverage(values, truths_j, CURVE_LEVELS, weights, widening=factor)
        # 0 .. n; spread within each integer rank: uniform on [0, 1] when calibrated
        rank = truth_ranks(values, truths_j, seed=seed + j)
        rank = (rank + np.random.default_rng([seed, j]).uniform(size=len(rank))) / (values.shape[1] + 1)
        counts = np.histogram(rank, bins=rank_bins, range=(0.0, 1.0))[0]
        spread = prior_spread[j] if prior_spread[j] > 0 else float("nan")
        half_width = 0.5 * factor * (high_j[:, 0] - low_j[:, 0])
        table[name] = {
            "log_scale": logs[j],
            "unit": "dex" if logs[j] else ("deg" if name == "inclination" else bank.parameter_info[name].unit),
            "in_target_similarity": name in constrained,
            "median_abs_error": float(np.median(np.abs(error))),
            "rms_error": float(np.sqrt(np.mean(error**2))),
            "rms_error_over_prior_spread": float(np.sqrt(np.mean(error**2)) / spread),
            "r2_knn": r_squared(estimate, truths_j),
            "r2_median": r_squared(median_j, truths_j),
            "width_68_over_prior_spread": float(np.median(half_width) / spread),
            **{f"coverage_{round(100 * c)}": float(v) for c, v in zip(COVERAGE_LEVELS, coverage)},
            "rank_histogram": counts.tolist(),
            "rank_uniformity_p": float(chisquare(counts).pvalue) if counts.sum() else float("nan"),
        }
        widened = median_j[:, None] + factor * (np.c_[low_j[:, 0], high_j[:, 0]] - median_j[:, None])
        truth[name], median[name], interval[name], ranks[name], curves[name] = truths_j, median_j, widened, rank, curve
    alpha, ecp = tarp_coverage(z_samples, z_truths, weights=weights, seed=seed)
    calibration = _calibration(table, curves, names, factors, alpha, ecp, relevance)
    return MethodEvaluation(
        method,
        samples.shape[1],
        {"parameters": table, "calibration": calibration},
        list(names),
        truth,
        median,
        interval,
        ranks,
        curves,
        (alpha, ecp),
        covered,
        needed_widening=needed,
    )


def _widening_of(widening: float | Mapping[str, float], name: str) -> float:
    """The widening factor of parameter ``name``: ``widening`` itself, or its entry (1 where it has none)."""
    return float(widening.get(name, 1.0)) if isinstance(widening, Mapping) else float(widening)


def widening_label(widening: float | Mapping[str, float] | None) -> str:
    """A widening for a table or a sentence: ``"1"``, ``"1.25"``, or the range of the per-parameter factors,
    ``"1–2"``."""
    factors = (
        [1.0] if widening is None else list(widening.values()) if isinstance(widening, Mapping) else [float(widening)]
    )
    low, high = min(factors, default=1.0), max(factors, default=1.0)
    return f"{low:g}" if low == high else f"{low:g}–{high:g}"


def _calibration(
    table: dict,
    curves: dict,
    names: list[str],
    widening: dict[str, float],
    alpha: np.ndarray,
    ecp: np.ndarray,
    relevance: Relevance,
) -> dict:
    """The ``calibration`` figures over all parameters: the widening per parameter, mean coverage, the coverage curves
    and TARP's ``(alpha, ecp)``."""
    return {
        "interval_widening": {name: float(widening[name]) for name in names},
        **{
            f"coverage_{round(100 * c)}": float(np.mean([table[n][f"coverage_{round(100 * c)}"] for n in names]))
            for c in COVERAGE_LEVELS
        },
        "coverage_curve": {"levels": list(CURVE_LEVELS), **{n: curves[n].tolist() for n in names}},
        "tarp": {
            "alpha": alpha.tolist(),
            "ecp": ecp.tolist(),
            "max_deviation": float(np.max(np.abs(ecp - alpha))),
            "mean_abs_deviation": float(np.mean(np.abs(ecp - alpha))),
            "parameters": list(relevance.definition.parameters),
        },
    }


def choose_correction(
    ranking: Ranking,
    bank: Bank,
    k_candidates: Sequence[int],
    widening_candidates: Sequence[float] = (1.0,),
    *,
    parameters: Sequence[str] | None = None,
    extra_parameters: Sequence[str] = (),
    weight_temperature: float | None = None,
) -> tuple[int, dict[str, float], dict]:
    """The ``k``, and per parameter the interval widening, whose 68% and 95% coverage is closest to nominal on
    ``ranking``'s targets.

    Run it on validation systems, never the test ones. Few matches give narrow, overconfident
    distributions; many tend to the prior and over-cover; widening the intervals about the median
    (a scale factor, as in conformal calibration) fixes what no ``k`` does. A parameter's miss is
    ``|c68 - 0.68| + |c95 - 0.95|``; at each ``k`` every parameter takes the least widening whose miss is
    within 0.01 of its smallest, and the ``k`` with the smallest mean miss over ``parameters`` wins
    (among near-ties, within 0.01, the one with the least mean widening). ``extra_parameters`` (e.g.
    the nuisance physics) get their own widening at that ``k`` without taking part in its choice.

    The widening is chosen per parameter because one factor for all cannot make each honest: a
    parameter whose matches' spread falls short of their error by more than the rest (a mass seen
    through an unknown opacity, say) stays under-covered at the factor that suits the others. The
    observation pipeline calibrates per parameter too (:func:`~protolib.matching.calibration.calibrate_widening`).

    Returns:
        The chosen ``k``, the widening per parameter (``parameters`` and ``extra_parameters``), and
        ``{"k=..": score}`` for every candidate ``k``.
    """
    names = [*bank.physical_parameters, "inclination"] if parameters is None else list(parameters)
    extra = [n for n in extra_parameters if n not in names]
    values, _ = scaled_image_parameters(bank, [*names, *extra])
    p = bank.n_projections
    target_rows = ranking.target_system * p + ranking.target_projection
    candidates = sorted({float(w) for w in widening_candidates})
    scores, chosen = {}, {}
    for k in sorted({min(int(c), ranking.order.shape[1]) for c in k_candidates}):
        match_rows = (ranking.reference_system * p + ranking.reference_projection)[ranking.order[:, :k]]
        weights = (
            None
            if weight_temperature is None
            else np.stack([similarity_weights(s, weight_temperature) for s in ranking.score[:, :k]])
        )
        misses, widenings = {}, {}
        for j, name in enumerate([*names, *extra]):
            widenings[name], misses[name] = choose_widening(
                values[match_rows, j], values[target_rows, j], candidates, weights
            )
        scores[k] = float(np.mean([misses[n] for n in names]))
        chosen[k] = widenings
    best = min(scores.values())
    k = min(
        (k for k, score in scores.items() if score <= best + 0.01),
        key=lambda k: (np.mean([chosen[k][n] for n in names]), scores[k]),
    )
    return k, chosen[k], {f"k={key}": score for key, score in scores.items()}


def choose_widening(
    samples: np.ndarray, truths: np.ndarray, candidates: Sequence[float], weights: np.ndarray | None = None
) -> tuple[float, float]:
    """The least interval widening whose 68% and 95% coverage is within 0.01 of the closest to nominal.

    Arguments:
        samples: ``(T, n)`` each validation target's samples of one parameter (matches or posterior draws).
        truths: ``(T,)`` their true values.
        candidates: widening factors tried (intervals scaled about the median).
        weights: ``(T, n)`` optional weight per sample.

    Returns:
        The chosen widening and its miss, ``|c68 - 0.68| + |c95 - 0.95|``.
    """
    median, low, high = central_intervals(samples, (0.68, 0.95), weights)
    truths = np.asarray(truths)[:, None]
    candidates = sorted(float(c) for c in candidates)
    miss = []
    for widening in candidates:
        covered = (
            (median[:, None] + widening * (low - median[:, None]) <= truths)
            & (truths <= median[:, None] + widening * (high - median[:, None]))
        ).mean(0)
        miss.append(abs(covered[0] - 0.68) + abs(covered[1] - 0.95))
    best = min(miss)
    i = next(i for i, m in enumerate(miss) if m <= best + 0.01)  # the least widening among near-ties
    return candidates[i], float(miss[i])


def evaluate_methods(
    methods: Sequence[MatchingMethod],
    bank: Bank,
    relevance: Relevance,
    split,
    settings: EvaluationSettings | None = None,
    *,
    parameters: Sequence[str] | None = None,
    extra_parameters: Sequence[str] = (),
) -> dict[str, MethodResult]:
    """Evaluate every method on the same test targets, against the training systems.

    With ``settings.correction`` other than ``"none"``, ``k`` (and with ``"choose_k_and_widening"`` an
    interval widening per parameter) is also chosen per method on the validation systems
    (:func:`choose_correction`), and the test figures with that choice are reported as ``corrected``.
    ``parameters`` (default: the bank's physical ones and the inclination) are evaluated and calibrated;
    ``extra_parameters`` (e.g. the nuisance physics) are evaluated too, at the ``k`` chosen on
    ``parameters``, each with its own widening.

    Returns:
        method name -> its :class:`MethodResult`.
    """
    settings = settings or EvaluationSettings()
    scored = (
        None
        if parameters is None and not extra_parameters
        else [*(parameters or [*bank.physical_parameters, "inclination"]), *extra_parameters]
    )
    options = dict(
        parameters=scored,
        weight_temperature=settings.weight_temperature,
        rank_bins=settings.rank_bins,
        seed=settings.seed,
    )
    results = {}
    for method in methods:
        vectors, _, _ = embed_bank(method.embed, bank, progress=False, unit_norm=method.metric == "cosine")
        ranking = rank_targets(
            method, vectors, bank, relevance, split.test, split.train, projection=settings.projection
        )
        result = MethodResult(method, score_ranking(ranking, bank, relevance, top_k=settings.top_k, **options))
        if settings.correction != "none" and len(split.validation):
            validation = rank_targets(
                method, vectors, bank, relevance, split.validation, split.train, projection=settings.projection
            )
            widenings = settings.widening_candidates if settings.correction == "choose_k_and_widening" else [1.0]
            k, widening, scores = choose_correction(
                validation,
                bank,
                settings.k_candidates,
                widenings,
                parameters=parameters,
                extra_parameters=extra_parameters,
                weight_temperature=settings.weight_temperature,
            )
            result.chosen_k, result.chosen_widening, result.k_scores = k, widening, scores
            result.corrected = score_ranking(ranking, bank, relevance, top_k=k, widening=widening, **options)
        results[method.name] = result
    return results


# ---------------------------------------------------------------------------------------------
# Which target similarity and loss? Settled by the same evaluation

VARIANTS = {
    "kernel + mse": ("siamese.pt", {}),
    "cosine + mse": ("siamese_cosine.pt", {"target": {"kind": "cosine"}}),
    "kernel + contrastive": ("siamese_contrastive.pt", {"loss": {"kind": "contrastive"}}),
    "kernel + log_ratio": ("siamese_log_ratio.pt", {"loss": {"kind": "log_ratio"}}),
}
"""Variants compared by :func:`~protolib.pipelines.evaluate.compare_variants`: name -> (checkpoint file, overrides of
the ``siamese:`` section).

The first two are the networks notebook 03 trains, so a book build reuses them."""


# ---------------------------------------------------------------------------------------------
# Reports: tables narrow enough for a page, and the figures a page's prose quotes (glued, never typed)

METHOD_LABELS = {
    "random": "random matches",
    "pixel": "the pixel chi-square",
    "pca": "PCA",
    "autoencoder": "the autoencoder latent",
    "siamese": "the Siamese network",
    "npe": "the neural posterior estimate on the Siamese embedding",
    "npe_end_to_end": "the end-to-end neural posterior estimate",
}
"""How prose names each method (:func:`evaluation_figures`); other names (variants) are used as they are."""


def headline_table(
    results: dict[str, MethodResult | dict], parameters: Sequence[str] | None = None, *, corrected: bool = False
) -> str:
    """A markdown table: per method, nDCG, Spearman, RMS error / prior spread per parameter, and coverage.

    Wide (a column per parameter): ``headline.md`` keeps it; a page shows :func:`summary_table` and
    :func:`parameter_table`.

    Arguments:
        results: from :func:`evaluate_methods` (or the ``methods`` entry of ``metrics.json`` in the same shape).
        parameters: the columns (default: the parameters in the target similarity).
        corrected: use each method's corrected (chosen-``k``) figures for coverage.
    """
    rows = []
    for name, result in results.items():
        metrics = _metrics_of(result, corrected)
        names = (
            list(parameters)
            if parameters is not None
            else [n for n, r in metrics["parameters"].items() if r["in_target_similarity"]]
        )
        retrieval, similarity = metrics.get("retrieval", {}), metrics.get("similarity", {})
        cells = [_cell(retrieval.get("ndcg"), ".3f"), _cell(similarity.get("spearman_per_target"), ".3f")]
        cells += [f"{metrics['parameters'][n]['rms_error_over_prior_spread']:.2f}" for n in names]
        cells += [f"{metrics['calibration']['coverage_68']:.2f}", f"{metrics['calibration']['coverage_95']:.2f}"]
        widening = widening_label(metrics["calibration"].get("interval_widening"))
        k = f"{metrics.get('top_k', '')}" + (f", x{widening}" if widening != "1" else "")
        rows.append(f"| {name} | {k} | " + " | ".join(cells) + " |")
    header = (
        "| method | k (, widening) | nDCG@k | Spearman | "
        + " | ".join(f"{n} RMS/prior" for n in names)
        + " | cov68 | cov95 |"
    )
    return "\n".join([header, "|" + " --- |" * (len(names) + 6), *rows])


def summary_table(results: dict[str, MethodResult | dict], *, corrected: bool = False, label: str = "method") -> str:
    """A markdown table narrow enough for a page: per method (or variant, headed ``label``), eight columns.

    k, the interval widening (the range of the per-parameter factors), nDCG@k, the per-target Spearman correlation, the
    RMS error of the median
    over the prior's spread averaged over the target similarity's parameters (:func:`parameter_table`
    gives them one by one), and the mean coverage of the 68% and 95% ranges over all parameters.
    """
    rows = []
    for name, result in results.items():
        metrics = _metrics_of(result, corrected)
        calibration = metrics["calibration"]
        cells = [
            str(metrics.get("top_k", "")),
            widening_label(calibration.get("interval_widening")),
            _cell(metrics.get("retrieval", {}).get("ndcg"), ".3f"),
            _cell(metrics.get("similarity", {}).get("spearman_per_target"), ".3f"),
            f"{mean_target_error(metrics):.2f}",
            f"{calibration['coverage_68']:.2f}",
            f"{calibration['coverage_95']:.2f}",
        ]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    notes = ["", "RMS/prior: mean over the target similarity's parameters of the median's RMS error, in prior spreads"]
    if any(name in NPE_METHODS for name in results):
        notes.append(
            "; for a posterior estimate, k is its samples per target, and — marks a ranking figure it has none of"
        )
    return "\n".join(
        [
            f"| {label} | k | widening | nDCG@k | Spearman | RMS/prior | cov68 | cov95 |",
            "|" + " --- |" * 8,
            *rows,
            *notes[:2],
        ]
    ) + "".join(notes[2:])


def _cell(value: float | None, spec: str) -> str:
    """A table cell: the number formatted, or an em dash where there is none (a posterior estimate ranks nothing)."""
    return "—" if value is None or not np.isfinite(value) else format(value, spec)


def parameter_table(
    results: dict[str, MethodResult | dict],
    figure: str = "rms_error_over_prior_spread",
    *,
    corrected: bool = False,
    title: str | None = None,
) -> str:
    """A markdown table of one per-parameter figure (e.g. ``"r2_knn"``, ``"coverage_68"``): a row per parameter, a
    column per method.

    ``title`` heads the first column (default: ``figure``).
    """
    tables = {name: _metrics_of(result, corrected)["parameters"] for name, result in results.items()}
    names = list(next(iter(tables.values())))
    rows = [
        f"| {n}{' *' if tables[next(iter(tables))][n]['in_target_similarity'] else ''} | "
        + " | ".join(f"{tables[m][n][figure]:.2f}" for m in tables)
        + " |"
        for n in names
    ]
    return "\n".join(
        [
            f"| {title or figure} | " + " | ".join(tables) + " |",
            "|" + " --- |" * (len(tables) + 1),
            *rows,
            "",
            "\\* in the network's target similarity",
        ]
    )


def mean_target_error(metrics: dict) -> float:
    """The RMS error over the prior's spread, averaged over the target similarity's parameters, of one method's
    figures."""
    errors = [
        row["rms_error_over_prior_spread"] for row in metrics["parameters"].values() if row["in_target_similarity"]
    ]
    return float(np.mean(errors)) if errors else float("nan")


def parameter_verdicts(
    results: dict[str, MethodResult | dict],
    reference: str = "siamese",
    *,
    corrected: bool = False,
    margin: float = 0.05,
) -> dict[str, dict]:
    """Per parameter: how ``reference`` compares with the best other matching method, and whether it constrains the
    parameter.

    The neural posterior estimates are not matching methods and are left out of the comparison
    (:mod:`protolib.comparison` sets the reference against them, with intervals).

    A parameter counts as constrained when both its RMS error and the half-width of the matches' 68%
    range are below ``1 - margin`` prior spreads. ``reference`` is better (worse) than the best other
    method when the 95% paired bootstrap interval of the difference of their RMS errors, over the test
    systems (:func:`~protolib.comparison.paired_difference`), lies wholly below (above) zero, else
    level. Results read back from JSON hold no per-target errors; for them the rule is a difference of
    more than ``margin`` prior spreads.

    Returns:
        name -> ``{"error", "r2", "coverage_68", "in_target_similarity", "constrained", "best", "best_error",
    "comparison"}``:
        ``best`` the other method with the lowest RMS error, ``comparison`` ``"better"``, ``"level"`` or
        ``"worse"`` (both ``None`` when ``reference`` is alone).
    """
    tables = {name: _metrics_of(result, corrected)["parameters"] for name, result in results.items()}
    found = {}
    for name, row in tables[reference].items():
        others = {
            m: t[name]["rms_error_over_prior_spread"]
            for m, t in tables.items()
            if m != reference and m not in NPE_METHODS
        }
        best = min(others, key=others.get) if others else None
        error = row["rms_error_over_prior_spread"]
        comparison = None if best is None else _compare(results, reference, best, name, corrected, margin)
        found[name] = {
            "error": error,
            "r2": row["r2_knn"],
            "coverage_68": row["coverage_68"],
            "in_target_similarity": row["in_target_similarity"],
            "constrained": constrains(row, margin),
            "best": best,
            "best_error": others.get(best, float("nan")),
            "comparison": comparison,
        }
    return found


def _compare(results: dict, reference: str, other: str, name: str, corrected: bool, margin: float) -> str:
    """``"better"``, ``"level"`` or ``"worse"``: ``reference`` against ``other`` on parameter ``name`` (see
    :func:`parameter_verdicts`)."""
    mine, theirs = (results[m] for m in (reference, other))
    if (
        isinstance(mine, MethodResult)
        and isinstance(theirs, MethodResult)
        and mine.figures(corrected).target_system is not None
    ):
        return paired_difference(mine.figures(corrected), theirs.figures(corrected), name).verdict
    error, best = (_metrics_of(r, corrected)["parameters"][name]["rms_error_over_prior_spread"] for r in (mine, theirs))
    return "better" if error < best - margin else "worse" if error > best + margin else "level"


def verdicts(
    results: dict[str, MethodResult | dict],
    reference: str = "siamese",
    *,
    corrected: bool = False,
    margin: float = 0.05,
) -> list[str]:
    """One plain sentence per parameter: does ``reference`` recover it better than every baseline, and does it
    constrain it?

    The judgement is :func:`parameter_verdicts`'s.
    """
    lines = []
    for name, v in parameter_verdicts(results, reference, corrected=corrected, margin=margin).items():
        comparison = {
            None: "",
            "better": f"better than every baseline (best: {v['best']}, {v['best_error']:.2f})",
            "worse": f"WORSE than {v['best']} ({v['best_error']:.2f})",
            "level": f"no better than {v['best']} ({v['best_error']:.2f})",
        }[v["comparison"]]
        lines.append(
            f"{name}: RMS error {v['error']:.2f} prior spreads, R^2 {v['r2']:.2f}, 68% coverage "
            f"{v['coverage_68']:.2f}; "
            f"{'constrained' if v['constrained'] else 'NOT constrained by the images'}; {comparison}"
        )
    return lines


def evaluation_figures(
    results: dict[str, MethodResult | dict], reference: str = "siamese", *, margin: float = 0.05
) -> dict:
    """The figures the evaluation's prose quotes, by plain identifier (for MyST-NB ``glue``): numbers, names and
    phrases.

    Per method ``m``: ``ndcg_m``, ``spearman_m``, ``cov68_m``, ``cov95_m``, ``tarp_m`` (TARP's largest
    deviation), ``rms_m`` (:func:`mean_target_error`), ``r2_inclination_m`` and, for ``reference`` when
    corrected, the same with ``_corrected`` and ``k_{reference}_corrected``, ``widening_{reference}_corrected``
    (:func:`widening_label`). Then who ranks best
    (``best_ndcg_method``, ``best_spearman_method``), how ``reference`` compares per parameter
    (:func:`parameter_verdicts` at the configured k: ``{reference}_better``, ``_level``, ``_worse`` as
    phrases), the calibration in brief, and what the correction changes for ``reference``.
    """
    figures = {}
    for name, result in results.items():
        corrected = [("_corrected", _metrics_of(result, True))] if name == reference and _corrected(result) else []
        for suffix, metrics in [("", _metrics_of(result, False))] + corrected:
            calibration, parameters = metrics["calibration"], metrics["parameters"]
            figures.update(
                {
                    f"ndcg_{name}{suffix}": metrics.get("retrieval", {}).get("ndcg", float("nan")),
                    f"spearman_{name}{suffix}": metrics.get("similarity", {}).get("spearman_per_target", float("nan")),
                    f"cov68_{name}{suffix}": calibration["coverage_68"],
                    f"cov95_{name}{suffix}": calibration["coverage_95"],
                    f"tarp_{name}{suffix}": calibration["tarp"]["max_deviation"],
                    f"rms_{name}{suffix}": mean_target_error(metrics),
                }
            )
            if "inclination" in parameters:
                figures[f"r2_inclination_{name}{suffix}"] = parameters["inclination"]["r2_knn"]
            if suffix:
                figures.update(
                    {
                        f"k_{name}_corrected": int(metrics["top_k"]),
                        f"widening_{name}_corrected": widening_label(calibration["interval_widening"]),
                    }
                )
        if "retrieval" in _metrics_of(result, False):
            figures["ndcg_chance"] = _metrics_of(result, False)["retrieval"]["ndcg_chance"]
    figures["best_ndcg_method"] = _label(_best({m: figures[f"ndcg_{m}"] for m in results}))
    figures["best_spearman_method"] = _label(_best({m: figures[f"spearman_{m}"] for m in results}))
    figures.update(_recovery_figures(results, reference, margin))
    figures.update(_calibration_figures(results, reference))
    return {name: _plain(value) for name, value in figures.items()}


def _recovery_figures(results: dict, reference: str, margin: float) -> dict:
    """How ``reference`` recovers each parameter against the best other method, and what no method constrains."""
    judged = parameter_verdicts(results, reference, margin=margin)
    target = {name: v for name, v in judged.items() if v["in_target_similarity"]}
    figures = {"n_target_parameters": len(target)}
    for group in ("better", "level", "worse"):
        members = [name for name, v in target.items() if v["comparison"] == group]
        figures[f"{reference}_n_{group}"] = len(members)
        figures[f"{reference}_{group}"] = _phrase(
            [
                f"{_label(n)} ({target[n]['error']:.2f} against {target[n]['best_error']:.2f}, "
                f"{_label(target[n]['best'])})"
                for n in members
            ]
        )
    figures[f"{reference}_constrained"] = _phrase([_label(n) for n, v in judged.items() if v["constrained"]])
    tables = {name: _metrics_of(result, False)["parameters"] for name, result in results.items()}
    nobody = [n for n in judged if not any(constrains(t[n], margin) for t in tables.values())]
    errors = [t[n]["rms_error_over_prior_spread"] for n in nobody for t in tables.values()]
    figures["unconstrained_everywhere"] = _phrase([_label(n) for n in nobody]) + (
        f" (RMS errors {min(errors):.2f} to {max(errors):.2f} prior spreads)" if errors else ""
    )
    if target:
        best = min(target, key=lambda n: target[n]["error"])
        own, rival = tables[reference][best], target[best]["best"]
        figures.update(
            {
                f"{reference}_best_parameter": _label(best),
                f"{reference}_best_error": own["rms_error_over_prior_spread"],
                f"{reference}_best_error_unit": own["rms_error"],
                f"{reference}_best_unit": own["unit"],
                f"{reference}_best_r2": own["r2_knn"],
                f"{reference}_best_rival": _label(rival),
                f"{reference}_best_rival_error": target[best]["best_error"],
                f"{reference}_best_rival_r2": tables[rival][best]["r2_knn"] if rival else float("nan"),
            }
        )
    return figures


def _calibration_figures(results: dict, reference: str, rejection_p: float = 0.01) -> dict:
    """Coverage of the matching methods in brief, and what the correction changes for ``reference``."""
    matching = {
        m: _metrics_of(r, False)["calibration"] for m, r in results.items() if m != "random" and m not in NPE_METHODS
    }
    c68, c95 = [c["coverage_68"] for c in matching.values()], [c["coverage_95"] for c in matching.values()]
    figures = {
        "n_matching": len(matching),
        "cov68_min": min(c68),
        "cov68_max": max(c68),
        "cov95_min": min(c95),
        "cov95_max": max(c95),
        "n_overconfident": sum(a < 0.68 and b < 0.95 for a, b in zip(c68, c95)),
    }
    result = results[reference]
    if not _corrected(result):
        return figures
    before, after = _metrics_of(result, False)["parameters"], _metrics_of(result, True)["parameters"]
    target = [n for n, row in before.items() if row["in_target_similarity"]]
    change = {n: after[n]["rms_error_over_prior_spread"] - before[n]["rms_error_over_prior_spread"] for n in target}
    for key, name in (("most_improved", min(change, key=change.get)), ("most_worsened", max(change, key=change.get))):
        figures[f"{reference}_{key}"] = (
            f"{_label(name)} ({before[name]['rms_error_over_prior_spread']:.2f} to "
            f"{after[name]['rms_error_over_prior_spread']:.2f})"
        )
    worst = max(after, key=lambda n: abs(after[n]["coverage_68"] - 0.68))
    figures.update(
        {
            f"{reference}_worst_coverage_parameter": _label(worst),
            f"{reference}_worst_coverage": after[worst]["coverage_68"],
            f"{reference}_n_rank_rejected": sum(row["rank_uniformity_p"] < rejection_p for row in after.values()),
            "n_parameters": len(after),
        }
    )
    return figures


def variant_figures(
    variants: dict[str, MethodResult | dict], reference: str = "kernel + mse", *, margin: float = 0.05
) -> dict:
    """The figures the comparison of target similarities and losses quotes, by plain identifier (for ``glue``).

    Per variant ``v`` (its name as an identifier: ``kernel_mse`` ...): ``ndcg_v``, ``spearman_v``,
    ``rms_v`` (:func:`mean_target_error`), and ``rms_v_corrected``, ``cov68_v_corrected``,
    ``cov95_v_corrected``; ``best_ndcg_variant``, ``best_spearman_variant``, ``best_rms_variant``,
    ``best_rms_corrected_variant``; and per variant other than ``reference``, ``better_v`` and
    ``worse_v``: the target similarity's parameters on which its error is lower (higher) than
    ``reference``'s by more than ``margin`` prior spreads, as phrases.
    """
    slug = {name: re.sub(r"\W+", "_", name).strip("_") for name in variants}
    figures = {}
    for name, result in variants.items():
        at_k, corrected = _metrics_of(result, False), _metrics_of(result, True)
        figures.update(
            {
                f"ndcg_{slug[name]}": at_k["retrieval"]["ndcg"],
                f"spearman_{slug[name]}": at_k["similarity"]["spearman_per_target"],
                f"rms_{slug[name]}": mean_target_error(at_k),
                f"rms_{slug[name]}_corrected": mean_target_error(corrected),
                f"cov68_{slug[name]}_corrected": corrected["calibration"]["coverage_68"],
                f"cov95_{slug[name]}_corrected": corrected["calibration"]["coverage_95"],
            }
        )
    for figure, template in (
        ("ndcg", "ndcg_{}"),
        ("spearman", "spearman_{}"),
        ("rms", "rms_{}"),
        ("rms_corrected", "rms_{}_corrected"),
    ):
        values = {name: figures[template.format(slug[name])] for name in variants}
        figures[f"best_{figure}_variant"] = _best(values, lowest=figure.startswith("rms"))
    own = _metrics_of(variants[reference], False)["parameters"]
    for name, result in variants.items():
        if name != reference:
            table = _metrics_of(result, False)["parameters"]
            change = {
                n: table[n]["rms_error_over_prior_spread"] - own[n]["rms_error_over_prior_spread"]
                for n in own
                if own[n]["in_target_similarity"]
            }
            for word, sign in (("better", -1), ("worse", 1)):
                figures[f"{word}_{slug[name]}"] = _phrase(
                    [
                        f"{_label(n)} ({table[n]['rms_error_over_prior_spread']:.2f} against "
                        f"{own[n]['rms_error_over_prior_spread']:.2f})"
                        for n, d in change.items()
                        if sign * d > margin
                    ]
                )
    return {name: _plain(value) for name, value in figures.items()}


def constrains(row: dict, margin: float = 0.05) -> bool:
    """Whether one method's row of a parameter has both RMS error and 68% half-width below ``1 - margin`` prior
    spreads."""
    return bool(row["rms_error_over_prior_spread"] < 1 - margin and row["width_68_over_prior_spread"] < 1 - margin)


def _corrected(result: MethodResult | dict) -> bool:
    return (result.corrected if isinstance(result, MethodResult) else result.get("corrected")) is not None


def _best(values: dict[str, float], *, lowest: bool = False) -> str | None:
    """The key of the highest (``lowest``: lowest) value, NaN ignored; ``None`` when every value is NaN."""
    finite = {k: v for k, v in values.items() if v == v}
    return (min if lowest else max)(finite, key=finite.get) if finite else None


def _label(name: str | None) -> str:
    """How prose names a method (:data:`METHOD_LABELS`) or a parameter (underscores as spaces)."""
    return "none" if name is None else METHOD_LABELS.get(name, name.replace("_", " "))


def _phrase(items: list[str]) -> str:
    """``"a, b and c"``; ``"none"`` for no items."""
    return "none" if not items else items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _plain(value):
    """A glue-able plain Python value (numpy scalars to int or float), so that MyST-NB formats it."""
    return value.item() if isinstance(value, np.generic) else value


def _metrics_of(result: MethodResult | dict, corrected: bool) -> dict:
    """The figures of a :class:`MethodResult`, or of its ``metrics.json`` entry (:meth:`MethodResult.to_json`), with
    ``top_k``."""
    if isinstance(result, MethodResult):
        chosen = result.figures(corrected)
        return {**chosen.metrics, "top_k": chosen.top_k}
    return result["corrected"] if corrected and result.get("corrected") else result["at_top_k"]
