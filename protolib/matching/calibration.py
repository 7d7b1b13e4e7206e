"""Interval calibration of a match report: how much the matches' central intervals must be widened to hold the
truth as often as they claim, measured on reference targets.

The reference targets are bank images seen like the target (its beam and noise, see
:func:`~protolib.matching.fit_matches`), whose true parameters are known: :func:`reference_calibration`
turns their matches into a widening per parameter, by the one rule of
:func:`protolib.statistics.calibrate_widening` (the evaluation's correction uses it too), and
:func:`choose_k_and_widening` also chooses the number of matches. The statistics themselves live in
:mod:`protolib.statistics`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..bank import Bank
from ..statistics import calibrate_widening, central_intervals
from .fit import distribution_order, distribution_weights
from .matches import Matches, describe_parameter, match_parameters, scaled_for_summary, truth_parameters

__all__ = [
    "reference_calibration",
    "choose_k_and_widening",
    "in_distribution_order",
    "K_CANDIDATES",
]


def _calibrate_each(
    samples: Mapping[str, np.ndarray], truths: Mapping[str, np.ndarray], weights: np.ndarray | None = None
) -> dict[str, dict]:
    """:func:`~protolib.statistics.calibrate_widening` per parameter, at its default candidates.

    Arguments:
        samples: name -> ``(T, n)`` each reference target's match values, scaled (log10 where the
            parameter is log-scaled).
        truths: name -> ``(T,)`` their true values, scaled the same way.
        weights: ``(T, n)`` each match's weight in its reference's distribution (``None``: equal).

    Returns:
        name -> ``{"widening", "coverage_68", "coverage_95", "raw_coverage_68", "raw_coverage_95", "n_reference"}``.
    """
    return {name: calibrate_widening(values, truths[name], weights=weights) for name, values in samples.items()}


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
    """:func:`_calibrate_each` over reference bank images and their matches, for every bank parameter and the
    inclination.

    Arguments:
        bank: the bank.
        reference_rows: ``(T,)`` the reference images' rows (``system * n_projections + projection``).
        reference_matches: each reference image's matches (as many as the target's), best first.
    """
    k = min(len(m) for m in reference_matches)
    return _calibrate_each(*_reference_samples(bank, reference_rows, reference_matches, k))


def in_distribution_order(
    reference_matches: Sequence[Matches],
    reference_chi2: Sequence[np.ndarray] | None,
    rule: str = "similarity",
    beams: float = 1.0,
) -> tuple[list[Matches], np.ndarray | None]:
    """Each reference's matches chosen as the target's are (:func:`~protolib.matching.fit.distribution_order` and
    :func:`~protolib.matching.fit.distribution_weights`), so that the calibration measures the intervals the target
    gets: a rule applied to the target and not to its references would leave the widening measured on other
    intervals.

    Returns:
        ``(matches, weights)``: each reference's matches in the rule's order, and ``(T, n)`` their weights (``None``:
        the first ``k``, equal weights).
    """
    if rule == "similarity":
        return list(reference_matches), None
    if reference_chi2 is None:
        raise ValueError(f"The rule {rule!r} chooses by the fit: the references' reduced chi-squares are needed.")
    most = min(len(m) for m in reference_matches)
    orders = [distribution_order(np.asarray(c)[:most], rule) for c in reference_chi2]
    ordered = [m.head(most).take(o) for m, o in zip(reference_matches, orders)]
    weights = [distribution_weights(np.asarray(c)[o], rule, beams) for c, o in zip(reference_chi2, orders)]
    return ordered, None if weights[0] is None else np.stack(weights)


def choose_k_and_widening(
    bank: Bank,
    reference_rows: np.ndarray,
    reference_matches: Sequence[Matches],
    k_candidates: Sequence[int] = K_CANDIDATES,
    *,
    reference_chi2: Sequence[np.ndarray] | None = None,
    rule: str = "similarity",
    beams: float = 1.0,
) -> tuple[int, dict[str, dict], dict[str, float]]:
    """The number of matches, and the widening per parameter, that give the narrowest honest intervals on the
    references, whose matches are chosen by the target's ``rule`` (:func:`in_distribution_order`, with each one's
    ``reference_chi2`` and the fit's independent ``beams``).

    For each ``k`` (of ``k_candidates``, at most the matches each reference has) the references' first ``k``
    matches are calibrated (:func:`_calibrate_each`), and the calibrated 68% half-width of every physical
    parameter is measured in units of its spread over the bank. The ``k`` whose mean half-width is smallest
    wins, if it is clearly narrower (:data:`K_MARGIN`) than the largest ``k``. A fixed ``k`` large against the bank
    (200 of a few thousand images) draws the distribution from
    a wide neighbourhood, and a small one from too few matches to have percentiles; which one serves a
    target best depends on the bank's density near it and on the observation's beam and noise, so it is
    measured there, on reference images seen like the target, as the evaluation does on validation
    systems (:func:`protolib.evaluation.choose_correction`, by the same rule). A rule that weights the matches
    (``fit_cut``, ``fit_weight``) takes every match searched, weighted: only that ``k`` is tried.

    Returns:
        ``(k, calibration, scores)``: the ``k`` chosen, :func:`_calibrate_each`' result at it, and every ``k``
        tried -> its mean calibrated half-width in bank spreads.
    """
    ordered, weights = in_distribution_order(reference_matches, reference_chi2, rule, beams)
    most = min(len(m) for m in ordered)
    tried = sorted({int(k) for k in k_candidates if 2 <= k <= most and weights is None} | {most})
    every, truths = _reference_samples(bank, reference_rows, ordered, most)  # read once; each k is a prefix
    found, scores = {}, {}
    for k in tried:
        samples = {name: values[:, :k] for name, values in every.items()}
        found[k] = _calibrate_each(samples, truths, None if weights is None else weights[:, :k])
        scores[k] = _mean_half_width(bank, samples, found[k], None if weights is None else weights[:, :k])
    best = min(tried, key=lambda k: (scores[k], -k))
    # not clearly narrower: the most matches, whose percentiles are steadiest
    if scores[best] > K_MARGIN * scores[most]:
        best = most
    return best, found[best], {str(k): scores[k] for k in tried}


def _mean_half_width(bank: Bank, samples: dict, calibration: dict, weights: np.ndarray | None) -> float:
    """The references' median calibrated 68% half-width, in units of the parameter's spread over the bank, averaged
    over the physical parameters."""
    widths = []
    for name in bank.physical_parameters:
        spread = np.std(
            scaled_for_summary(bank.parameters[name], describe_parameter(name, bank.parameter_info).log_scale, name)
        )
        if spread > 0:
            _, low, high = central_intervals(samples[name], (0.68,), weights)
            widths.append(calibration[name]["widening"] * np.median(high[:, 0] - low[:, 0]) / 2 / spread)
    return float(np.mean(widths))
