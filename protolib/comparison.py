"""Differences between methods, with their noise: a paired bootstrap over the test systems.

Two methods scored on the same test targets (:class:`~protolib.evaluation.MethodEvaluation`) differ
by a few hundredths of a prior spread on a few dozen systems. Whether that is a difference or noise
is what a reader needs to know before "better" is written. Each resample draws the test *systems*
with replacement, with all of their projections (one disk seen from eight sides is not eight
independent targets), and recomputes both methods' figures on the same draw, so that what the two
methods share (a hard system, an easy one) cancels in the difference. ``scipy.stats.bootstrap``
resamples single observations, and its paired mode cannot keep a system's targets together, hence
this module.

A claim of "better" holds only when the interval excludes zero; otherwise the two are "level".
"""

from __future__ import annotations

# Method results are taken by what they hold (``truth``, ``median``, ``metrics``, ``target_system``;
# ``figures(corrected)``), not by
# type, so that protolib.evaluation can judge its own verdicts with this module without an import cycle.
from dataclasses import dataclass

import numpy as np

from .plots.style import parameter_words, word_list
from .runtime import ProtolibInputError

__all__ = [
    "NPE_GOAL_RATIO",
    "Difference",
    "paired_difference",
    "paired_differences",
    "best_rival_differences",
    "difference_table",
    "difference_numbers",
    "learning_curve_numbers",
]


NPE_GOAL_RATIO = 1.1
"""The goal for a matching method against the better neural posterior estimate: an error at most this many times its
error."""


@dataclass(frozen=True)
class Difference:
    """How much method ``a``'s RMS error of the median exceeds method ``b``'s on one parameter, with its bootstrap
    interval.

    Attributes:
        parameter: the parameter.
        a, b: the two methods' names.
        difference: ``rms_a - rms_b`` in prior spreads (negative: ``a`` is better).
        low, high: its central interval at ``level`` over the resamples.
        ratio: ``rms_a / rms_b``; ``ratio_low``, ``ratio_high`` its interval.
        level: the interval's probability (0.95).
        n_systems: the test systems resampled.
    """

    parameter: str
    a: str
    b: str
    difference: float
    low: float
    high: float
    ratio: float
    ratio_low: float
    ratio_high: float
    level: float
    n_systems: int

    @property
    def verdict(self) -> str:
        """``"better"`` when ``a``'s error is lower and the interval excludes zero, ``"worse"`` when higher, else
        ``"level"``."""
        return "better" if self.high < 0 else "worse" if self.low > 0 else "level"


def paired_difference(
    a, b, parameter: str, *, n_resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> Difference:
    """The difference of two methods' RMS error of the median on ``parameter``, with a cluster bootstrap interval.

    Both must have been scored on the same targets in the same order (their truths and target
    systems agree). Errors are in prior spreads, as in the evaluation's tables.
    """
    truth_a, truth_b = np.asarray(a.truth[parameter]), np.asarray(b.truth[parameter])
    if truth_a.shape != truth_b.shape or not np.allclose(truth_a, truth_b):
        raise ProtolibInputError(
            f"{a.method} and {b.method} were not scored on the same targets; a paired comparison needs the same ones."
        )
    row = a.metrics["parameters"][parameter]
    spread = (
        row["rms_error"] / row["rms_error_over_prior_spread"] if row["rms_error_over_prior_spread"] else float("nan")
    )
    squared = np.stack([(np.asarray(e.median[parameter]) - truth_a) ** 2 for e in (a, b)], 1) / spread**2  # (T, 2)
    systems = np.arange(len(truth_a)) if a.target_system is None else np.asarray(a.target_system)
    _, group = np.unique(systems, return_inverse=True)
    n_groups = group.max() + 1
    sums, counts = np.zeros((n_groups, 2)), np.bincount(group, minlength=n_groups).astype(np.float64)
    np.add.at(sums, group, squared)
    draws = np.random.default_rng(seed).integers(0, n_groups, size=(n_resamples, n_groups))
    rms = np.sqrt(sums[draws].sum(1) / counts[draws].sum(1)[:, None])  # (R, 2)
    point = np.sqrt(sums.sum(0) / counts.sum())
    tails = 100 * np.array([(1 - level) / 2, (1 + level) / 2])
    low, high = np.percentile(rms[:, 0] - rms[:, 1], tails)
    ratio_low, ratio_high = np.percentile(rms[:, 0] / rms[:, 1], tails)
    return Difference(
        parameter,
        a.method,
        b.method,
        float(point[0] - point[1]),
        float(low),
        float(high),
        float(point[0] / point[1]),
        float(ratio_low),
        float(ratio_high),
        level,
        int(n_groups),
    )


def paired_differences(
    results: dict,
    reference: str,
    rivals: list[str] | None = None,
    *,
    corrected: bool = True,
    parameters: list[str] | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
) -> list[Difference]:
    """:func:`paired_difference` of ``reference`` against each rival (default: every other method) on each parameter.

    ``parameters`` defaults to those in the target similarity. ``corrected`` compares the figures after
    each method's own correction (its k and widening chosen on validation systems); the widening does
    not move a median, so it changes the errors only through k.
    """
    first = results[reference].figures(corrected)
    names = parameters or [n for n, row in first.metrics["parameters"].items() if row["in_target_similarity"]]
    rivals = [name for name in results if name != reference] if rivals is None else rivals
    return [
        paired_difference(first, results[rival].figures(corrected), name, n_resamples=n_resamples, seed=seed)
        for rival in rivals
        for name in names
    ]


def difference_table(differences: list[Difference]) -> str:
    """A markdown table of differences, each with its interval and verdict.

    With one difference per parameter (:func:`best_rival_differences`): a row per parameter, naming the
    method it is against, with the error ratio. Otherwise (:func:`paired_differences`): a row per
    parameter and a column per other method.
    """
    if not differences:
        return "(no differences to show)"
    reference, parameters = differences[0].a, list(dict.fromkeys(d.parameter for d in differences))
    level, n_systems = round(100 * differences[0].level), differences[0].n_systems
    note = (
        f"RMS error of the median, in prior spreads: {reference}'s minus the other's, with its {level}% paired "
        "bootstrap interval over "
        f"{n_systems} test systems; better or worse only where it excludes zero"
    )

    def text(d: Difference) -> str:
        return f"{_signed(d.difference)} [{_signed(d.low)}, {_signed(d.high)}] {d.verdict}"

    if len(parameters) == len(differences):
        rows = [
            f"| {_name(d.parameter)} | {d.b} | {text(d)} | {d.ratio:.2f} [{d.ratio_low:.2f}, {d.ratio_high:.2f}] |"
            for d in differences
        ]
        return "\n".join(
            [
                f"| parameter | against | {reference} minus it | error ratio |",
                "| --- | --- | --- | --- |",
                *rows,
                "",
                note,
            ]
        )
    rivals = list(dict.fromkeys(d.b for d in differences))
    cell = {(d.parameter, d.b): text(d) for d in differences}
    rows = [f"| {_name(p)} | " + " | ".join(cell.get((p, r), "") for r in rivals) + " |" for p in parameters]
    return "\n".join(
        [f"| {reference} minus | " + " | ".join(rivals) + " |", "|" + " --- |" * (len(rivals) + 1), *rows, "", note]
    )


def _signed(value: float) -> str:
    """A signed difference at two decimals, with more where two would print a nonzero value as +-0.00: an interval's
    end that excludes zero must not read as zero."""
    decimals = 2
    while decimals < 6 and value != 0 and round(abs(value), decimals) == 0:
        decimals += 1
    return f"{value:+.{decimals}f}"


def best_rival_differences(
    results: dict,
    reference: str,
    rivals: list[str],
    *,
    corrected: bool = True,
    parameters: list[str] | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
) -> list[Difference]:
    """Per parameter, :func:`paired_difference` of ``reference`` against whichever of ``rivals`` has the lowest error
    on it."""
    first = results[reference].figures(corrected)
    names = parameters or [n for n, row in first.metrics["parameters"].items() if row["in_target_similarity"]]
    rivals = [r for r in rivals if r in results and r != reference]
    if not rivals:
        return []
    tables = {r: results[r].figures(corrected).metrics["parameters"] for r in rivals}
    best = {n: min(rivals, key=lambda r: tables[r][n]["rms_error_over_prior_spread"]) for n in names}
    return [
        paired_difference(first, results[best[n]].figures(corrected), n, n_resamples=n_resamples, seed=seed)
        for n in names
    ]


def difference_numbers(
    differences: list[Difference],
    prefix: str,
    *,
    goal_ratio: float = NPE_GOAL_RATIO,
    labels: dict[str, str] | None = None,
) -> dict:
    """Numbers a page's prose quotes about a set of differences, as ``{prefix}_...``.

    ``_better``, ``_level``, ``_worse``: phrases naming the parameters, each with its difference and
    interval and the method it is against; ``_n_better`` ...: their counts; ``_worst_parameter``,
    ``_worst_ratio`` (``_low``, ``_high``): the largest error ratio and its interval; ``_n_within_goal``:
    the parameters whose ratio is at most ``goal_ratio``, of ``_n_parameters``; ``_beyond_goal``: a
    phrase naming the others with their ratios (three decimals: a ratio just above the goal must not print as the
    goal itself, 1.10 for 1.103). ``labels`` names methods in prose (e.g.
    :data:`~protolib.evaluation.METHOD_LABELS`; default: their names).
    """
    labels = labels or {}
    by = {verdict: [d for d in differences if d.verdict == verdict] for verdict in ("better", "level", "worse")}
    figures = {}
    for verdict, members in by.items():
        figures[f"{prefix}_n_{verdict}"] = len(members)
        figures[f"{prefix}_{verdict}"] = word_list(
            [
                f"{_name(d.parameter)} ({_signed(d.difference)} [{_signed(d.low)}, {_signed(d.high)}] against "
                f"{labels.get(d.b, d.b)})"
                for d in members
            ]
        )
    worst = max(differences, key=lambda d: d.ratio) if differences else None
    beyond = [d for d in differences if d.ratio > goal_ratio]
    figures.update(
        {
            f"{prefix}_worst_parameter": _name(worst.parameter) if worst else "none",
            f"{prefix}_worst_ratio": worst.ratio if worst else float("nan"),
            f"{prefix}_worst_ratio_low": worst.ratio_low if worst else float("nan"),
            f"{prefix}_worst_ratio_high": worst.ratio_high if worst else float("nan"),
            f"{prefix}_n_within_goal": len(differences) - len(beyond),
            f"{prefix}_n_parameters": len(differences),
            f"{prefix}_beyond_goal": word_list(
                [
                    f"{_name(d.parameter)} ({d.ratio:.3f} [{d.ratio_low:.2f}, {d.ratio_high:.2f}] times "
                    f"{labels.get(d.b, d.b)}'s)"
                    for d in beyond
                ]
            ),
            f"{prefix}_n_systems": differences[0].n_systems if differences else 0,
        }
    )
    return figures


def _name(parameter: str) -> str:
    """A parameter in the words its figures use (``accretion_rate`` is the infall rate)."""
    return parameter_words(parameter)


def learning_curve_numbers(curves: dict, *, flat_margin: float = 0.02) -> dict:
    """What a page says about ``benchmarks/learning_curves.py``'s results: the first and last sizes' errors, what still
    improves.

    Numbers, by plain identifier (for MyST-NB ``glue``): ``lc_first_size``, ``lc_last_size``,
    ``lc_n_test``; the mean target error at the first and last size of the Siamese matches
    (``lc_siamese_*``), the pixel chi-square (``lc_pixel_*``) and the better of the two neural posterior
    estimates at each size (``lc_npe_*``), and the Siamese one over the latter (``lc_ratio_*``);
    ``lc_improving`` and ``lc_flat``: the target parameters whose Siamese error fell by more than
    ``flat_margin`` prior spreads over the last step, and the others, each with that fall; ``lc_far_size``,
    ``lc_siamese_far`` and ``lc_npe_far``: the fitted curves' extrapolation.
    """
    sizes = [str(n) for n in curves["train_systems"]]
    methods = curves["methods"]

    def mean(method: str, size: str) -> float:
        return (
            methods[method]["sizes"][size]["mean_target_rms_error_over_prior_spread"]
            if method in methods
            else float("nan")
        )

    npes = [m for m in ("npe", "npe_end_to_end") if m in methods]
    better_npe = {n: min((mean(m, n) for m in npes), default=float("nan")) for n in sizes}
    numbers = {
        "lc_first_size": int(sizes[0]),
        "lc_last_size": int(sizes[-1]),
        "lc_n_test": len(curves.get("systems", {}).get("test", [])),
        "lc_flat_margin": flat_margin,
        "lc_far_size": int(curves.get("extrapolation", {}).get("train_systems", 0)),
    }
    for key, n in (("first", sizes[0]), ("last", sizes[-1])):
        numbers.update(
            {
                f"lc_siamese_{key}": mean("siamese", n),
                f"lc_pixel_{key}": mean("pixel", n),
                f"lc_npe_{key}": better_npe[n],
                f"lc_ratio_{key}": mean("siamese", n) / better_npe[n],
            }
        )
    return {**numbers, **_last_step(curves, sizes, flat_margin), **_extrapolated(curves, npes)}


def _last_step(curves: dict, sizes: list[str], flat_margin: float) -> dict:
    """``lc_improving`` and ``lc_flat``: the target parameters whose Siamese error fell by more than ``flat_margin``
    prior spreads over the last step of the learning curve, and the others, each with that change in brackets."""
    last, before = (curves["methods"]["siamese"]["sizes"][n]["parameters"] for n in (sizes[-1], sizes[-2]))
    fall = {
        p: before[p]["rms_error_over_prior_spread"] - last[p]["rms_error_over_prior_spread"]
        for p in curves["target_parameters"]
    }
    return {
        "lc_improving": word_list([f"{_name(p)} ({-d:+.3f})" for p, d in fall.items() if d > flat_margin]),
        "lc_flat": word_list([f"{_name(p)} ({-d:+.3f})" for p, d in fall.items() if d <= flat_margin]),
    }


def _extrapolated(curves: dict, npes: list[str]) -> dict:
    """``lc_siamese_far`` and ``lc_npe_far``: the fitted curves' mean target error extrapolated to ``lc_far_size``."""
    fits = curves.get("fits", {}).get("by_method", {})
    extrapolated = {
        m: fits.get(m, {}).get("mean_target", {}).get("extrapolation", {}).get("value", float("nan"))
        for m in curves["methods"]
    }
    return {
        "lc_siamese_far": extrapolated.get("siamese", float("nan")),
        "lc_npe_far": min((extrapolated[m] for m in npes), default=float("nan")),
    }
