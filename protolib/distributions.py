"""Posterior-like distributions: the physical parameters of a target's best matches, summarised.

The parameters of the best matches form a posterior-like distribution for the target; the whole
bank is its prior. Quantities spanning decades (``log_scale``) are summarised in log10 and reported
in physical units. Their figures (corner plot, marginals, galleries) are in :mod:`protolib.plots.corner`
and :mod:`protolib.plots.gallery`.

The parameters of matches live in :mod:`protolib.matching.matches` (re-exported here), the interval
statistics in :mod:`protolib.statistics` and their calibration on reference targets in
:mod:`protolib.matching.calibration`. A match run's report is written
by :func:`protolib.pipelines.match.write_match_report`.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .bank import Bank
from .matching import (
    Matches,
    describe_parameter,
    match_parameters,
    scaled_for_summary,
    truth_parameters,
)
from .parameters import Parameter
from .plots.style import parameter_words
from .runtime import ProtolibInputError, atomic_path
from .statistics import weighted_percentile

__all__ = [
    "PERCENTILES",
    "ParameterSummary",
    "match_parameters",
    "prior_parameters",
    "truth_parameters",
    "similarity_weights",
    "summarise",
    "format_summary",
    "write_csv",
    "truth_coverage",
    "match_rows",
    "match_images",
]

PERCENTILES = (2.5, 16.0, 50.0, 84.0, 97.5)


def prior_parameters(bank: Bank, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """The prior: one entry per bank image (each system's parameters once per projection), viewing angles included."""
    names = list(bank.parameters) if names is None else list(names)
    table = {name: np.repeat(bank.parameters[name], bank.n_projections) for name in names if name in bank.parameters}
    table["inclination"] = bank.inclination.reshape(-1)
    table["position_angle"] = bank.position_angle.reshape(-1)
    return table


def similarity_weights(similarity: np.ndarray, temperature: float = 0.02) -> np.ndarray:
    """Weights ``exp((s - s_max) / temperature)`` for matches of similarity ``s``, summing to 1.

    Cosine similarities of good matches crowd near 1, so weighting by ``s`` itself changes nearly
    nothing; the temperature sets how fast a match's weight falls with its similarity (a match
    ``temperature`` below the best counts ``1/e`` as much).
    """
    if temperature <= 0:
        raise ProtolibInputError(f"The weighting temperature must be positive, got {temperature}.")
    similarity = np.asarray(similarity, dtype=np.float64)
    weights = np.exp((similarity - similarity.max()) / temperature)
    return weights / weights.sum()


@dataclass
class ParameterSummary:
    """One parameter's distribution over the best matches, in physical units.

    ``width_68`` is half the 16-84 range, in dex for log-scaled parameters; ``prior_width_ratio``
    compares it with the prior's (near 1: the matches do not constrain the parameter). When
    ``widening`` is not 1, the ranges are the matches' percentiles widened about the median by that
    factor, as calibrated on reference targets (:func:`~protolib.statistics.calibrate_widening`).
    """

    parameter: str
    unit: str
    log_scale: bool
    median: float
    p16: float
    p84: float
    p2_5: float
    p97_5: float
    width_68: float
    prior_width_ratio: float
    n_matches: int
    # the intervals' scaling about the median (calibration on reference targets; 1: the raw percentiles)
    widening: float = 1.0
    truth: float = float("nan")


def summarise(
    samples: Mapping[str, np.ndarray],
    *,
    parameters: Sequence[str] | None = None,
    weights: np.ndarray | None = None,
    prior: Mapping[str, np.ndarray] | None = None,
    truths: Mapping[str, float] | None = None,
    parameter_info: Mapping[str, Parameter] | None = None,
    widening: Mapping[str, float] | None = None,
) -> list[ParameterSummary]:
    """Median, 16/84 and 2.5/97.5 percentiles of each parameter over the matches.

    Log-scaled parameters are summarised in log10 and reported in physical units (so a log-normal
    sample's median is its geometric median).

    Arguments:
        samples: name -> ``(n,)`` values of each match, physical units (:func:`match_parameters`).
        parameters: which parameters (default: all in ``samples``).
        weights: ``(n,)`` optional weight per match (:func:`similarity_weights`).
        prior: name -> values over the whole bank, for ``prior_width_ratio``.
        truths: name -> true value, when the target is simulated.
        parameter_info: units and log scaling (default: :data:`~protolib.parameters.PARAMETERS`).
        widening: name -> factor by which each range is widened about the median (default 1), e.g.
            from :func:`~protolib.statistics.calibrate_widening`.

    Returns:
        One :class:`ParameterSummary` per parameter.
    """
    parameters = list(samples) if parameters is None else list(parameters)
    summaries = []
    for name in parameters:
        if name not in samples:
            raise ProtolibInputError(f"No parameter {name!r} among the matches' parameters {list(samples)}.")
        info = describe_parameter(name, parameter_info)
        scaled = scaled_for_summary(samples[name], info.log_scale, name)
        bank = scaled_for_summary(prior[name], info.log_scale, name) if prior is not None and name in prior else None
        factor = float((widening or {}).get(name, 1.0))
        p2_5, p16, p50, p84, p97_5 = _widened_percentiles(scaled, weights, factor, bank)
        width = 0.5 * (p84 - p16)
        back = (lambda v: float(10**v)) if info.log_scale else float
        truth = float(truths[name]) if truths and name in truths else float("nan")
        percentiles = [back(p) for p in (p50, p16, p84, p2_5, p97_5)]  # physical units, in the summary's order
        summaries.append(
            ParameterSummary(
                name,
                info.unit,
                info.log_scale,
                *percentiles,
                float(width),
                _prior_width_ratio(width, bank),
                len(scaled),
                widening=factor,
                truth=truth,
            )
        )
    return summaries


def _widened_percentiles(scaled: np.ndarray, weights, factor: float, bank: np.ndarray | None):
    """The :data:`PERCENTILES` of the matches' ``scaled`` values, the ranges widened about the median by ``factor``
    and, when widened, kept within the bank's own range (``bank``: its scaled values, when known)."""
    p2_5, p16, p50, p84, p97_5 = weighted_percentile(scaled, PERCENTILES, weights)
    p2_5, p16, p84, p97_5 = (p50 + factor * (p - p50) for p in (p2_5, p16, p84, p97_5))
    if factor != 1.0 and bank is not None:  # a widened range stops at the bank's own range
        p2_5, p16, p84, p97_5 = np.clip([p2_5, p16, p84, p97_5], bank.min(), bank.max())
    return p2_5, p16, p50, p84, p97_5


def _prior_width_ratio(width: float, bank: np.ndarray | None) -> float:
    """A 68% half-width over the prior's (the bank's scaled values); NaN without a bank or when its range is 0."""
    if bank is None:
        return float("nan")
    q16, q84 = np.percentile(bank, [16, 84])
    return float(width / (0.5 * (q84 - q16))) if q84 > q16 else float("nan")


def truth_coverage(
    bank: Bank,
    matches_by_system: Mapping[int, Matches],
    *,
    projection: int = 0,
    parameters: Sequence[str] | None = None,
) -> list[dict]:
    """How often the true value lies within the matches' 68% and 95% ranges, over many bank targets.

    For a well-calibrated posterior-like distribution these fractions are about 0.68 and 0.95;
    ``median_width_ratio`` near 1 means the matches constrain the parameter no better than the prior.

    Arguments:
        bank: the bank the targets come from.
        matches_by_system: target system -> its matches (e.g. the test systems').
        projection: the targets' projection (for their viewing angles).
        parameters: which parameters (default: every bank parameter and the inclination).

    Returns:
        One dict per parameter: ``parameter``, ``within_68``, ``within_95``, ``median_width_ratio``, ``n_targets``.
    """
    prior = prior_parameters(bank)
    parameters = [*bank.physical_parameters, "inclination"] if parameters is None else list(parameters)
    rows = {name: [] for name in parameters}
    for system, matches in matches_by_system.items():
        truths = truth_parameters(bank, system, projection)
        for s in summarise(
            match_parameters(bank, matches),
            parameters=parameters,
            prior=prior,
            truths=truths,
            parameter_info=bank.parameter_info,
        ):
            rows[s.parameter].append(
                (_within(s.p16, s.truth, s.p84), _within(s.p2_5, s.truth, s.p97_5), s.prior_width_ratio)
            )
    return [
        {
            "parameter": name,
            "within_68": float(np.mean([r[0] for r in hits])),
            "within_95": float(np.mean([r[1] for r in hits])),
            "median_width_ratio": float(np.nanmedian([r[2] for r in hits])),
            "n_targets": len(hits),
        }
        for name, hits in rows.items()
    ]


def _within(low: float, value: float, high: float, rtol: float = 1e-9) -> bool:
    """``low <= value <= high`` up to rounding (percentiles go through log10 and back)."""
    return low - rtol * abs(low) <= value <= high + rtol * abs(high)


def format_summary(summaries: Sequence[ParameterSummary]) -> str:
    """A plain-text table of summaries: each parameter in words (as the figures name it), median with 68% and 95%
    ranges, units, and truth when known (with a ``widened`` column when any range was calibrated)."""
    calibrated = any(s.widening != 1.0 for s in summaries)
    words = [parameter_words(s.parameter) for s in summaries]
    name = max([18, *(len(w) for w in words)])  # the longest name keeps the columns in line
    lines = [
        f"{'parameter':<{name}} {'median':>10} {'16%':>10} {'84%':>10} {'2.5%':>10} {'97.5%':>10}  {'unit':<8} "
        f"{'width/prior':>11} {'truth':>10}" + (f" {'widened':>8}" if calibrated else "")
    ]
    for s, word in zip(summaries, words):
        lines.append(
            f"{word:<{name}} {s.median:>10.3g} {s.p16:>10.3g} {s.p84:>10.3g} {s.p2_5:>10.3g} {s.p97_5:>10.3g}  "
            f"{s.unit:<8} {s.prior_width_ratio:>11.2f} {s.truth:>10.3g}"
            + (f" {s.widening:>8.3g}" if calibrated else "")
        )
    return "\n".join(lines)


def write_csv(rows: Sequence[Mapping] | Sequence[ParameterSummary], path: str | Path) -> Path:
    """Write rows (dicts or summaries) to a CSV file atomically; the columns are the first row's keys."""
    rows = [asdict(r) if isinstance(r, ParameterSummary) else dict(r) for r in rows]
    if not rows:
        raise ProtolibInputError(f"Nothing to write to {path}: no rows.")
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


def match_rows(bank: Bank, matches: Matches) -> list[dict]:
    """One row per match: rank, similarity, system, system id, projection, viewing angles, every parameter."""
    table = match_parameters(bank, matches)
    rows = []
    for i in range(len(matches)):
        row = {
            "rank": i + 1,
            "similarity": float(matches.similarity[i]),
            "system": int(matches.system[i]),
            "system_id": int(bank.system_id[matches.system[i]]),
            "projection": int(matches.projection[i]),
        }
        row.update({name: float(values[i]) for name, values in table.items()})
        rows.append(row)
    return rows


def match_images(bank: Bank, matches: Matches) -> np.ndarray:
    """The images ``(n, H, W)`` of the matches, best first (read one by one: meant for a gallery's few)."""
    return bank.images_at(matches.system, matches.projection)
