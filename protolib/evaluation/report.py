"""The evaluation as a reader sees it: Markdown tables narrow enough for a page, and verdicts in plain sentences.

Every function takes the results of :func:`~protolib.evaluation.scoring.evaluate_methods` (or the
``methods`` entry of ``metrics.json``, in the same shape). The numbers a page's prose quotes are
:mod:`protolib.evaluation.book`'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..comparison import paired_difference
from ..plots.style import parameter_words
from .scoring import MethodResult, result_metrics
from .settings import NPE_METHODS

__all__ = [
    "headline_table",
    "summary_table",
    "parameter_table",
    "mean_target_error",
    "constrains",
    "parameter_verdicts",
    "verdicts",
    "widening_label",
    "variant_label",
]


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
        metrics = result_metrics(result, corrected)
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
        metrics = result_metrics(result, corrected)
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
        rows.append(f"| {variant_label(name)} | " + " | ".join(cells) + " |")
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
    if value is None or not np.isfinite(value):
        return "—"
    text = format(value, spec)
    return text.lstrip("-") if float(text) == 0 else text  # a correlation of -0.0001 reads 0.000, not -0.000


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
    tables = {name: result_metrics(result, corrected)["parameters"] for name, result in results.items()}
    names = list(next(iter(tables.values())))
    rows = [
        f"| {parameter_words(n)}{' *' if tables[next(iter(tables))][n]['in_target_similarity'] else ''} | "
        + " | ".join(f"{tables[m][n][figure]:.2f}" for m in tables)
        + " |"
        for n in names
    ]
    return "\n".join(
        [
            f"| {title or figure} | " + " | ".join(map(variant_label, tables)) + " |",
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
        "comparison"}``: ``best`` the other method with the lowest RMS error, ``comparison`` ``"better"``,
        ``"level"`` or ``"worse"`` (both ``None`` when ``reference`` is alone).
    """
    tables = {name: result_metrics(result, corrected)["parameters"] for name, result in results.items()}
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
    error, best = (
        result_metrics(r, corrected)["parameters"][name]["rms_error_over_prior_spread"] for r in (mine, theirs)
    )
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
            "level": f"level with {v['best']} ({v['best_error']:.2f}; the difference is within its noise)",
        }[v["comparison"]]
        lines.append(
            f"{parameter_words(name)}: RMS error {v['error']:.2f} prior spreads, R² {v['r2']:.2f}, 68% coverage "
            f"{v['coverage_68']:.2f}; "
            f"{'constrained' if v['constrained'] else 'NOT constrained by the images'}; {comparison}"
        )
    return lines


def constrains(row: dict, margin: float = 0.05) -> bool:
    """Whether one method's row of a parameter has both RMS error and 68% half-width below ``1 - margin`` prior
    spreads."""
    return bool(row["rms_error_over_prior_spread"] < 1 - margin and row["width_68_over_prior_spread"] < 1 - margin)


def widening_label(widening: float | Mapping[str, float] | None) -> str:
    """A widening for a table or a sentence: ``"1"``, ``"1.25"``, or the range of the per-parameter factors,
    ``"1–2"``."""
    factors = (
        [1.0] if widening is None else list(widening.values()) if isinstance(widening, Mapping) else [float(widening)]
    )
    low, high = min(factors, default=1.0), max(factors, default=1.0)
    return f"{low:g}" if low == high else f"{low:g}–{high:g}"


def variant_label(name: str) -> str:
    """How a table or prose names a variant: ``kernel + mse`` as ``kernel + MSE``, ``log_ratio`` as ``log-ratio``
    (a method's name, which has no such part, is left as it is)."""
    words = {"mse": "MSE", "log_ratio": "log-ratio"}
    return " + ".join(words.get(part, part) for part in name.split(" + "))
