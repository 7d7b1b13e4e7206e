"""Statistics of samples against truths, on plain arrays: percentiles, central intervals, coverage, calibration.

Every function here takes numpy arrays (``samples (T, n)``: each target's samples of one parameter,
matches or posterior draws; ``truths (T,)``) and knows nothing of banks, matches or methods, in the
manner of ``sbi``'s diagnostics and ``lampe``'s coverage functions. The match reports
(:mod:`protolib.matching.calibration`), the summaries (:mod:`protolib.distributions`) and the
evaluation (:mod:`protolib.evaluation`) all read their intervals, coverage and calibration here, so
that each is computed one way:

- :func:`weighted_percentile`, :func:`central_intervals`, :func:`central_coverage`,
  :func:`required_widening`: central intervals about the median and how often they hold the truth;
- :func:`calibrate_widening`: the one rule that widens intervals until they are honest;
- :func:`coverage_standard_error`: how well a coverage is known, by a bootstrap over systems;
- :func:`ndcg_at_k`, :func:`r_squared`, :func:`truth_ranks` (simulation-based calibration),
  :func:`tarp_coverage` (TARP): the evaluation's metrics with known answers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .runtime import ProtolibInputError

__all__ = [
    "WIDENING_CANDIDATES",
    "weighted_percentile",
    "central_intervals",
    "central_coverage",
    "required_widening",
    "calibrate_widening",
    "coverage_standard_error",
    "ndcg_at_k",
    "r_squared",
    "truth_ranks",
    "tarp_coverage",
]

WIDENING_CANDIDATES = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0)
"""The widenings :func:`calibrate_widening` tries by default (the match reports' candidates)."""


def weighted_percentile(
    values: np.ndarray, percentiles: Sequence[float], weights: np.ndarray | None = None
) -> np.ndarray:
    """Percentiles of ``values`` (in 0..100), each value counting with its weight.

    Without weights this is ``numpy.percentile`` (linear interpolation). With weights, the
    percentile is read off the weighted cumulative distribution at the mid-points of each value's
    weight, which gives back ``numpy.percentile`` for equal weights.
    """
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return np.full(len(percentiles), np.nan)
    if weights is None:
        return np.percentile(values, percentiles)
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != values.shape or np.any(weights < 0) or not np.any(weights > 0):
        raise ProtolibInputError("Weights must be non-negative, not all zero, one per value.")
    order = np.argsort(values)
    values, weights = values[order], weights[order]
    cumulative = np.cumsum(weights) - 0.5 * weights
    cumulative = (cumulative - cumulative[0]) / max(cumulative[-1] - cumulative[0], np.finfo(float).tiny)
    return np.interp(np.asarray(percentiles) / 100.0, cumulative, values)


def central_intervals(
    samples: np.ndarray, levels: Sequence[float], weights: np.ndarray | None = None, *, widening: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Median and central intervals of each target's samples, optionally widened about the median.

    Arguments:
        samples: ``(T, n)`` each target's match values (one parameter, scaled).
        levels: interval probabilities, e.g. 0.68 for the 16-84 percentile range.
        weights: ``(T, n)`` optional weight per match.
        widening: each interval's distance from the median is multiplied by this (1: the percentiles).

    Returns:
        ``median (T,)``, ``low (T, L)`` and ``high (T, L)``.
    """
    levels = np.asarray(levels, dtype=np.float64)
    percentiles = np.r_[50.0, 50 - 50 * levels, 50 + 50 * levels]
    samples = np.asarray(samples, dtype=np.float64)
    # one call for every target: the same numbers as row by row, many times faster
    if weights is None and samples.shape[1] > 0:
        bounds = np.percentile(samples, percentiles, axis=1).T
    else:
        bounds = np.stack(
            [
                weighted_percentile(values, percentiles, None if weights is None else weights[t])
                for t, values in enumerate(samples)
            ]
        )
    median, low, high = bounds[:, 0], bounds[:, 1 : 1 + len(levels)], bounds[:, 1 + len(levels) :]
    return (
        median,
        median[:, None] + widening * (low - median[:, None]),
        median[:, None] + widening * (high - median[:, None]),
    )


def required_widening(
    samples: np.ndarray, truths: np.ndarray, levels: Sequence[float], weights: np.ndarray | None = None
) -> np.ndarray:
    """The smallest widening about the median at which each target's central interval holds its truth.

    A target is covered at widening ``w`` (:func:`central_intervals`) exactly when its entry here is at
    most ``w``: the truth's distance from the median over the interval's half on the truth's side (0
    at the median; infinite when that half is empty and the truth lies beyond it). Kept per target so
    that a further widening, such as a misspecification term, can be scored without the samples.

    Returns:
        ``(T, len(levels))``.
    """
    median, low, high = central_intervals(samples, levels, weights)
    truths = np.asarray(truths, dtype=np.float64)[:, None]
    offset = truths - median[:, None]
    half = np.where(offset >= 0, high - median[:, None], median[:, None] - low)
    with np.errstate(divide="ignore", invalid="ignore"):
        need = np.abs(offset) / half
    return np.where(offset == 0, 0.0, np.where(half > 0, need, np.inf))


def central_coverage(
    samples: np.ndarray,
    truths: np.ndarray,
    levels: Sequence[float] = (0.5, 0.68, 0.95),
    weights: np.ndarray | None = None,
    *,
    widening: float = 1.0,
) -> np.ndarray:
    """How often the truth lies within the samples' central interval at each level.

    Arguments:
        samples: ``(T, n)`` each target's match values (one parameter, scaled).
        truths: ``(T,)`` the true values.
        levels: interval probabilities, e.g. 0.68 for the 16-84 percentile range.
        weights: ``(T, n)`` optional weight per match.
        widening: intervals widened about the median by this factor (:func:`central_intervals`).

    Returns:
        ``(len(levels),)`` the fraction of targets covered; a calibrated method gives ``levels``.
    """
    _, low, high = central_intervals(samples, levels, weights, widening=widening)
    truths = np.asarray(truths)[:, None]
    return ((low <= truths) & (truths <= high)).mean(0)


def calibrate_widening(
    samples: np.ndarray,
    truths: np.ndarray,
    candidates: Sequence[float] = WIDENING_CANDIDATES,
    weights: np.ndarray | None = None,
) -> dict:
    """The least widening of the central intervals about the median that makes them honest on reference targets.

    The reference targets are targets whose true parameters are known and that are seen like the
    targets the widening is for: bank images seen like an observation (the match reports,
    :func:`protolib.matching.fit_matches`), or the validation systems (the evaluation's correction).
    The least candidate whose 68% and 95% coverage both reach nominal, within one binomial standard
    error of the number of references, is chosen (the largest candidate when none does).

    Why this rule, and not the widening whose coverage is closest to nominal: the rule is one-sided
    on purpose. Closest to nominal counts a coverage a little short as good as one a little over,
    and the least widening among near-ties then lands short as often as not. Measured on 40
    NOEMA-like synthetic observations, the closest choice reached a mean 68% / 95% coverage of
    0.61 / 0.88 against 0.67 / 0.92 for this rule, and the evaluation's correction, which chose the
    closest until issue 28, left intervals that the bank's own systems already asked to widen by up
    to 1.2 (benchmarks/README.md). Reaching nominal within the references' own noise (one binomial
    standard error, so that a few dozen references do not force a needless widening) errs towards
    honest intervals, at the price of some too wide. Widening never narrows: candidates below 1
    are the caller's choice.

    Arguments:
        samples: ``(T, n)`` each reference target's samples of one parameter (matches or posterior draws),
            scaled (log10 where the parameter is log-scaled).
        truths: ``(T,)`` their true values, scaled the same way.
        candidates: widenings tried.
        weights: ``(T, n)`` optional weight per sample.

    Returns:
        ``{"widening", "coverage_68", "coverage_95", "raw_coverage_68", "raw_coverage_95", "n_reference"}``: the
        widening chosen, the coverage at it and unwidened (at the candidate 1, else the first), and ``T``.
    """
    median, low, high = central_intervals(samples, (0.68, 0.95), weights)
    truths = np.asarray(truths, dtype=np.float64)[:, None]
    scored = []
    for widening in candidates:
        covered = (median[:, None] + widening * (low - median[:, None]) <= truths) & (
            truths <= median[:, None] + widening * (high - median[:, None])
        )
        c68, c95 = covered.mean(0)
        scored.append((float(widening), float(c68), float(c95)))
    n = max(len(truths), 1)
    enough = [
        s for s in scored if s[1] >= 0.68 - math.sqrt(0.68 * 0.32 / n) and s[2] >= 0.95 - math.sqrt(0.95 * 0.05 / n)
    ]
    widening, c68, c95 = min(enough, key=lambda s: s[0]) if enough else max(scored, key=lambda s: s[0])
    raw = next((s for s in scored if s[0] == 1.0), scored[0])
    return {
        "widening": widening,
        "coverage_68": c68,
        "coverage_95": c95,
        "raw_coverage_68": raw[1],
        "raw_coverage_95": raw[2],
        "n_reference": int(len(truths)),
    }


def coverage_standard_error(
    covered: np.ndarray, systems: np.ndarray | None = None, *, n_resamples: int = 2000, seed: int = 0
) -> np.ndarray:
    """The standard error of the coverage at each level, by a bootstrap over the target systems.

    The projections of one system are not independent targets (one disk seen from eight sides), so
    the systems are resampled with replacement, each with all its targets (a cluster bootstrap;
    ``scipy.stats.bootstrap`` resamples single observations, hence this function). With a few dozen
    test systems a 68% coverage is known to a few hundredths only: a coverage that far from nominal
    says nothing about the method.

    Arguments:
        covered: ``(T, L)`` whether each target's interval at each level holds its truth.
        systems: ``(T,)`` each target's system (``None``: every target its own).
        n_resamples: bootstrap resamples.
        seed: their random generator.

    Returns:
        ``(L,)`` the standard deviation of the coverage over ``n_resamples`` resamples.
    """
    covered = np.asarray(covered, dtype=np.float64)
    groups = np.arange(len(covered)) if systems is None else np.asarray(systems)
    _, group = np.unique(groups, return_inverse=True)
    hits, counts = np.zeros((group.max() + 1, covered.shape[1])), np.bincount(group).astype(np.float64)
    np.add.at(hits, group, covered)
    draws = np.random.default_rng(seed).integers(0, len(counts), size=(n_resamples, len(counts)))
    return (hits[draws].sum(1) / counts[draws].sum(1)[:, None]).std(0)


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
