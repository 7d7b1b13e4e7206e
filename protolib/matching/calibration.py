"""Interval calibration: central intervals of the matches' parameters, how often they hold the truth,
and how much they must be widened to hold it as often as they claim.

The reference targets are bank images seen like the target (its beam and noise, see
:func:`~protolib.matching.fit_matches`), whose true parameters are known: :func:`reference_calibration`
turns their matches into a widening per parameter (:func:`calibrate_widening`). The statistics
(:func:`weighted_percentile`, :func:`central_intervals`, :func:`central_coverage`) are also those of
the summaries in :mod:`protolib.distributions` and of :mod:`protolib.evaluation`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from ..bank import Bank
from ..runtime import ProtolibInputError
from .matches import Matches, describe_parameter, match_parameters, scaled_for_summary, truth_parameters

__all__ = [
    "WIDENING_CANDIDATES",
    "weighted_percentile",
    "central_intervals",
    "central_coverage",
    "required_widening",
    "calibrate_widening",
    "reference_calibration",
    "choose_k_and_widening",
    "K_CANDIDATES",
]


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


WIDENING_CANDIDATES = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0)


def calibrate_widening(
    samples: Mapping[str, np.ndarray],
    truths: Mapping[str, np.ndarray],
    candidates: Sequence[float] = WIDENING_CANDIDATES,
) -> dict[str, dict]:
    """Per parameter, the widening of the central intervals about the median that makes them honest on reference
    targets.

    The reference targets are bank images seen like the target (see
    :func:`protolib.matching.fit_matches`), whose true parameters are known. For each parameter the
    least widening whose 68% and 95% coverage both reach nominal on the references, within one
    binomial standard error of their number, is chosen (the largest candidate when none does). This is
    one-sided on purpose: measured on NOEMA-like synthetic observations, choosing the widening whose
    coverage is closest to nominal instead left the intervals short (benchmarks/README.md). Widening
    never narrows.

    Arguments:
        samples: name -> ``(T, n)`` each reference target's match values, scaled (log10 where the
            parameter is log-scaled).
        truths: name -> ``(T,)`` their true values, scaled the same way.
        candidates: widenings tried.

    Returns:
        name -> ``{"widening", "coverage_68", "coverage_95", "raw_coverage_68", "raw_coverage_95", "n_reference"}``.
    """
    out = {}
    for name, values in samples.items():
        scored = []
        for widening in candidates:
            c68, c95 = central_coverage(values, truths[name], (0.68, 0.95), widening=widening)
            scored.append((abs(c68 - 0.68) + abs(c95 - 0.95), float(widening), float(c68), float(c95)))
        n = max(len(values), 1)
        enough = [
            s for s in scored if s[2] >= 0.68 - math.sqrt(0.68 * 0.32 / n) and s[3] >= 0.95 - math.sqrt(0.95 * 0.05 / n)
        ]
        _, widening, c68, c95 = min(enough, key=lambda s: s[1]) if enough else max(scored, key=lambda s: s[1])
        raw = next(s for s in scored if s[1] == 1.0) if 1.0 in candidates else scored[0]
        out[name] = {
            "widening": widening,
            "coverage_68": c68,
            "coverage_95": c95,
            "raw_coverage_68": raw[2],
            "raw_coverage_95": raw[3],
            "n_reference": int(len(values)),
        }
    return out


K_CANDIDATES = (10, 20, 50, 100, 200)
"""The numbers of matches :func:`choose_k_and_widening` tries for a target's distribution."""
K_MARGIN = 0.9
"""A smaller number of matches is chosen only when its calibrated intervals are at most this fraction of the largest's:
choosing among five on 48 references is itself noisy (on 30 NOEMA-like maps, taking the narrowest outright narrowed
the intervals by 6-7% but let the teaching bank's 95% coverage of disk mass fall to 0.83; benchmarks/README.md)."""


def _reference_samples(
    bank: Bank, reference_rows: np.ndarray, reference_matches: Sequence[Matches], k: int
) -> tuple[dict, dict]:
    """Each reference image's first ``k`` matches' values and its truth, scaled, for every bank parameter and the
    inclination."""
    names = [*bank.parameters, "inclination"]  # the nuisance physics too: its summaries are widened like the rest
    samples = {name: [] for name in names}
    truths = {name: [] for name in names}
    for row, matches in zip(np.asarray(reference_rows), reference_matches):
        values = match_parameters(bank, matches.head(k), names)
        truth = truth_parameters(bank, int(row) // bank.n_projections, int(row) % bank.n_projections)
        for name in names:
            info = describe_parameter(name, bank.parameter_info)
            samples[name].append(scaled_for_summary(values[name], info.log_scale, name))
            truths[name].append(scaled_for_summary(np.array([truth[name]]), info.log_scale, name)[0])
    return {n: np.stack(v) for n, v in samples.items()}, {n: np.array(v) for n, v in truths.items()}


def reference_calibration(
    bank: Bank, reference_rows: np.ndarray, reference_matches: Sequence[Matches]
) -> dict[str, dict]:
    """:func:`calibrate_widening` over reference bank images and their matches, for every bank parameter and the
    inclination.

    Arguments:
        bank: the bank.
        reference_rows: ``(T,)`` the reference images' rows (``system * n_projections + projection``).
        reference_matches: each reference image's matches (as many as the target's), best first.
    """
    k = min(len(m) for m in reference_matches)
    return calibrate_widening(*_reference_samples(bank, reference_rows, reference_matches, k))


def choose_k_and_widening(
    bank: Bank,
    reference_rows: np.ndarray,
    reference_matches: Sequence[Matches],
    k_candidates: Sequence[int] = K_CANDIDATES,
) -> tuple[int, dict[str, dict], dict[str, float]]:
    """The number of matches, and the widening per parameter, that give the narrowest honest intervals on the
    references.

    For each ``k`` (of ``k_candidates``, at most the matches each reference has) the references' first ``k``
    matches are calibrated (:func:`calibrate_widening`), and the calibrated 68% half-width of every physical
    parameter is measured in units of its spread over the bank. The ``k`` whose mean half-width is smallest
    wins, if it is clearly narrower (:data:`K_MARGIN`) than the largest ``k``. A fixed ``k`` large against the bank
    (200 of a few thousand images) draws the distribution from
    a wide neighbourhood, and a small one from too few matches to have percentiles; which one serves a
    target best depends on the bank's density near it and on the observation's beam and noise, so it is
    measured there, on reference images seen like the target, as the evaluation does on validation
    systems (:func:`protolib.evaluation.choose_correction`).

    Returns:
        ``(k, calibration, scores)``: the ``k`` chosen, :func:`calibrate_widening`'s result at it, and every ``k``
        tried -> its mean calibrated half-width in bank spreads.
    """
    most = min(len(m) for m in reference_matches)
    tried = sorted({int(k) for k in k_candidates if 2 <= k <= most} | {most})
    physical, scores, found = list(bank.physical_parameters), {}, {}
    spread = {
        n: float(
            np.std(scaled_for_summary(bank.parameters[n], describe_parameter(n, bank.parameter_info).log_scale, n))
        )
        for n in physical
    }
    every, truths = _reference_samples(bank, reference_rows, reference_matches, most)  # read once; each k is a prefix
    for k in tried:
        samples = {name: values[:, :k] for name, values in every.items()}
        found[k] = calibrate_widening(samples, truths)
        widths = [
            found[k][n]["widening"]
            * np.median(np.diff(np.percentile(samples[n], [16, 84], axis=1), axis=0))
            / 2
            / spread[n]
            for n in physical
            if spread[n] > 0
        ]
        scores[k] = float(np.mean(widths))
    best = min(tried, key=lambda k: (scores[k], -k))
    # not clearly narrower: the most matches, whose percentiles are steadiest
    if scores[best] > K_MARGIN * scores[most]:
        best = most
    return best, found[best], {str(k): scores[k] for k in tried}
