"""Domain shift: a bank of one physics matched against systems of another, and what marginalising buys.

Three cases, the same test systems (same parameters, same viewing angles), every method:

- ``"no shift"``: the bank with the nuisance physics held fixed, its own networks, its own test systems;
- ``"shift"``: the same networks and bank, the test systems rendered with their nuisance physics
  drawn from its prior (real systems differ in opacity, temperature law, disk profile, cavities);
- ``"marginalised"``: the bank whose nuisance physics is drawn per system, its own networks, the
  same drawn test systems.

:func:`shift_rows` gives one row per case, method and parameter (error, coverage, interval width, in
the parameter's own scaled units: dex for log-scaled ones); :func:`shift_figures` the figures the
book's prose quotes (glued), among them whether the issue's goal is met: under the shift, 68% and 95%
coverage of the image-constrained parameters within 0.05 of nominal, with errors no more than 10%
above those without the shift. :func:`nuisance_rows` says how well the images constrain each nuisance
parameter itself. The cases are made by :func:`protolib.pipelines.shift.run_domain_shift`.
"""

from __future__ import annotations

import numpy as np

from .evaluation import COVERAGE_LEVELS, MethodResult, constrains
from .plots.style import parameter_words
from .statistics import coverage_standard_error

__all__ = [
    "CASES",
    "SHIFT_FIGURES",
    "shift_rows",
    "shift_table",
    "nuisance_table",
    "method_table",
    "constrained_parameters",
    "nuisance_rows",
    "shift_figures",
    "GOAL_COVERAGE",
    "GOAL_ERROR",
]

CASES = ("no shift", "shift", "marginalised")
GOAL_COVERAGE = 0.05  # coverage within this of nominal (0.68, 0.95) under the shift
GOAL_ERROR = 0.10  # recovery error at most this fraction above the error without the shift


def _row(result: MethodResult, name: str, corrected: bool) -> dict:
    """One method's figures for one parameter: median |error|, 68%/95% coverage and their standard errors (a bootstrap
    over the test systems, :func:`~protolib.statistics.coverage_standard_error`), median 68% half-width, all in scaled
    units."""
    evaluation = result.figures(corrected)
    table = evaluation.metrics["parameters"][name]
    interval = evaluation.interval_68[name]
    se = {}
    if name in evaluation.covered:
        se = dict(zip(COVERAGE_LEVELS, coverage_standard_error(evaluation.covered[name], evaluation.target_system)))
    return {
        "median_abs_error": table["median_abs_error"],
        "coverage_68": table["coverage_68"],
        "coverage_95": table["coverage_95"],
        "coverage_68_se": float(se.get(0.68, np.nan)),
        "coverage_95_se": float(se.get(0.95, np.nan)),
        "half_width_68": float(np.median(0.5 * (interval[:, 1] - interval[:, 0]))),
        "unit": table["unit"],
        "rms_error_over_prior_spread": table["rms_error_over_prior_spread"],
        "width_68_over_prior_spread": table["width_68_over_prior_spread"],
    }


def _spreads(results: dict[str, MethodResult], parameters: list[str], corrected: bool) -> dict[str, float]:
    """Each parameter's prior spread (standard deviation over the reference systems, scaled units) in ``results``'
    bank."""
    table = next(iter(results.values())).figures(corrected).metrics["parameters"]
    return {n: table[n]["rms_error"] / table[n]["rms_error_over_prior_spread"] for n in parameters}


def shift_rows(
    cases: dict[str, dict[str, MethodResult]], parameters: list[str], *, corrected: bool = True
) -> list[dict]:
    """One row per case, method and parameter: ``case``, ``method``, ``parameter`` and :func:`_row`'s figures."""
    return [
        {"case": case, "method": method, "parameter": name, **_row(result, name, corrected)}
        for case, results in cases.items()
        for method, result in results.items()
        for name in parameters
    ]


SHIFT_FIGURES = {
    "coverage": (("68% coverage", "coverage_68"), ("95% coverage", "coverage_95")),
    "error": (("median abs. error", "median_abs_error"), ("68% half-width", "half_width_68")),
}
"""The column groups of :func:`shift_table`: its ``figures`` argument picks one."""


def shift_table(
    cases: dict[str, dict[str, MethodResult]],
    parameters: list[str],
    *,
    figures: str = "coverage",
    method: str = "siamese",
    corrected: bool = True,
) -> str:
    """A Markdown table for one method: a row per parameter, a column per figure of ``SHIFT_FIGURES[figures]``, each
    cell the cases' values side by side ("0.76 / 0.70 / 0.68"), so that the table fits a page's width."""
    rows = {
        (r["parameter"], r["case"]): r
        for r in shift_rows(cases, parameters, corrected=corrected)
        if r["method"] == method
    }
    chosen = SHIFT_FIGURES[figures]
    head = "| parameter | " + " | ".join(f"{title}: {' / '.join(cases)}" for title, _ in chosen) + " |"
    lines = [head, "| --- |" + " ---: |" * len(chosen)]
    for name in parameters:
        unit = rows[(name, next(iter(cases)))]["unit"]
        cells = [" / ".join(f"{rows[(name, c)][key]:.2f}" for c in cases) for _, key in chosen]
        lines.append(f"| {parameter_words(name, unit)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def nuisance_table(result: MethodResult, nuisance: list[str], *, corrected: bool = True) -> str:
    """A Markdown table of :func:`nuisance_rows`: 68% half-width and RMS error over the prior's spread, coverage,
    constrained or not."""
    lines = [
        "| nuisance parameter | 68% half-width / prior spread | RMS error / prior spread | 68% coverage | constrained "
        "|",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for row in nuisance_rows(result, nuisance, corrected=corrected):
        lines.append(
            f"| {parameter_words(row['parameter'])} | {row['width_68_over_prior_spread']:.2f} | "
            f"{row['rms_error_over_prior_spread']:.2f} | {row['coverage_68']:.2f} | "
            f"{'yes' if row['constrained'] else 'no'} |"
        )
    return "\n".join(lines)


def method_table(figures: dict, methods: list[str], cases=CASES) -> str:
    """A Markdown table of :func:`shift_figures`: per method and case, the mean 68% and 95% coverage and the error over
    the prior spread."""
    slug = {case: case.replace(" ", "_") for case in cases}
    head = "| method | " + " | ".join(f"{case}: 68% / 95% / error" for case in cases) + " |"
    lines = [head, "| --- | " + " | ".join("---" for _ in cases) + " |"]
    for method in methods:
        cells = [
            f"{figures[f'cov68_{method}_{slug[c]}']:.2f} / {figures[f'cov95_{method}_{slug[c]}']:.2f} / "
            f"{figures[f'error_{method}_{slug[c]}']:.2f}"
            for c in cases
        ]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def constrained_parameters(
    results: dict[str, MethodResult],
    parameters: list[str],
    *,
    reference: str = "siamese",
    margin: float = 0.05,
    corrected: bool = True,
) -> list[str]:
    """The parameters ``reference`` constrains (:func:`~protolib.evaluation.constrains`: RMS error and 68% half-width
    both below
    ``1 - margin`` prior spreads) in ``results``: the image-constrained parameters the goal is judged on."""
    table = results[reference].figures(corrected).metrics["parameters"]
    return [name for name in parameters if constrains(table[name], margin)]


def nuisance_rows(
    result: MethodResult, nuisance: list[str], *, corrected: bool = True, margin: float = 0.05
) -> list[dict]:
    """How well one method's matches constrain each nuisance parameter: :func:`_row`'s figures and ``constrained``."""
    table = result.figures(corrected).metrics["parameters"]
    return [
        {"parameter": name, **_row(result, name, corrected), "constrained": constrains(table[name], margin)}
        for name in nuisance
    ]


def _mean(rows: list[dict], figure: str) -> float:
    return float(np.mean([r[figure] for r in rows])) if rows else float("nan")


def shift_figures(
    cases: dict[str, dict[str, MethodResult]],
    parameters: list[str],
    *,
    reference: str = "siamese",
    nuisance: list[str] | None = None,
    corrected: bool = True,
) -> dict:
    """The figures the domain-shift chapter quotes, by plain identifier (for MyST-NB ``glue``).

    Per case ``c`` (``no_shift``, ``shift``, ``marginalised``) and method ``m``: ``cov68_m_c``,
    ``cov95_m_c`` and ``error_m_c`` (means over the image-constrained parameters; the error is the
    median |error| over the drawn bank's prior spread, one yardstick for all cases), ``width_m_c``
    (mean median 68% half-width, scaled units). For ``reference``:

    - ``constrained``, ``n_constrained``: the image-constrained parameters (when there are none,
      every parameter is judged);
    - ``worst_offset_c`` and ``worst_offset_parameter_c``: the largest distance of a 68% or 95%
      coverage from nominal, under the shift with and without marginalising, and which interval;
      ``worst_offset_se_c`` that coverage's standard error (a bootstrap over the test systems);
    - ``n_intervals``, ``n_beyond_goal_c`` and ``n_significantly_beyond_goal_c``: the intervals judged,
      those further from nominal than the goal, and those further than the goal by more than twice
      their standard error (a miss the test set can tell from chance); ``coverage_se_68_c`` and
      ``coverage_se_95_c``: the mean standard errors; ``n_test_systems``;
    - ``error_ratio_c``: the mean over parameters of each one's median |error| over its no-shift
      median |error| (``worst_error_ratio_c``, ``worst_error_parameter_c``: the largest);
    - ``width_ratio_marginalised``: the mean of the same ratio for the 68% half-widths;
    - ``goal_met``: ``"met"`` or ``"not met"``;
    - ``nuisance_constrained``, ``n_nuisance_constrained``, ``nuisance_verdict`` (a phrase) and the
      narrowest nuisance parameter (``best_nuisance``, ``best_nuisance_width``, ``best_nuisance_error``).
    """
    constrained = constrained_parameters(cases["marginalised"], parameters, reference=reference, corrected=corrected)
    # a network that constrains nothing (a test-sized one) is judged on every parameter
    judged = constrained or list(parameters)
    rows = shift_rows(cases, judged, corrected=corrected)
    # one yardstick for every case: the drawn bank's prior spread
    spread = _spreads(cases["marginalised"], judged, corrected)
    for r in rows:
        r["error_over_spread"] = r["median_abs_error"] / spread[r["parameter"]]
    figures: dict = {
        "constrained": ", ".join(parameter_words(n) for n in constrained)
        or "none (the goal is judged on every parameter)",
        "n_constrained": len(constrained),
        **_method_means(cases, rows),
    }
    ref = {case: {r["parameter"]: r for r in rows if r["case"] == case and r["method"] == reference} for case in cases}
    for case in ("shift", "marginalised"):
        figures.update(_case_figures(ref, case, judged))
    figures["n_intervals"] = 2 * len(judged)
    target_system = cases["marginalised"][reference].figures(corrected).target_system
    figures["n_test_systems"] = len(np.unique(target_system)) if target_system is not None else 0
    figures["width_ratio_marginalised"] = float(
        np.mean([ref["marginalised"][n]["half_width_68"] / ref["no shift"][n]["half_width_68"] for n in judged])
    )
    figures["goal_met"] = "met" if _goal_met(figures) else "not met"
    if nuisance:
        figures.update(_nuisance_figures(cases["marginalised"][reference], nuisance, corrected))
    return {k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in figures.items()}


def _method_means(cases: dict[str, dict[str, MethodResult]], rows: list[dict]) -> dict:
    """:func:`shift_figures`' means over the judged parameters of every case and method: ``cov68_m_c``,
    ``cov95_m_c``, ``error_m_c`` and ``width_m_c``."""
    figures = {}
    for case in cases:
        for method in cases[case]:
            own = [r for r in rows if r["case"] == case and r["method"] == method]
            for figure, key in (
                ("coverage_68", "cov68"),
                ("coverage_95", "cov95"),
                ("error_over_spread", "error"),
                ("half_width_68", "width"),
            ):
                figures[f"{key}_{method}_{case.replace(' ', '_')}"] = _mean(own, figure)
    return figures


def _goal_met(figures: dict) -> bool:
    """Whether the issue's goal is met with marginalising: every judged coverage within :data:`GOAL_COVERAGE` of
    nominal, and the errors on average at most :data:`GOAL_ERROR` above those without the shift."""
    return (
        figures["worst_offset_marginalised"] <= GOAL_COVERAGE
        and figures["error_ratio_marginalised"] <= 1.0 + GOAL_ERROR
    )


def _case_figures(ref: dict[str, dict[str, dict]], case: str, judged: list[str]) -> dict:
    """:func:`shift_figures`' figures of one shifted case for the reference method: the worst interval, the misses, the
    error ratios.

    ``ref``: case -> parameter -> :func:`shift_rows` row of the reference method.
    """
    slug = {case: case.replace(" ", "_")}
    figures: dict = {}
    offsets = {
        (n, level): abs(r[f"coverage_{level}"] - nominal)
        for n, r in ref[case].items()
        for level, nominal in ((68, 0.68), (95, 0.95))
    }
    worst_offset = max(offsets, key=offsets.get) if offsets else None
    figures[f"worst_offset_parameter_{slug[case]}"] = (
        f"{parameter_words(worst_offset[0])}'s {worst_offset[1]}% interval, which holds "
        f"the truth {ref[case][worst_offset[0]][f'coverage_{worst_offset[1]}']:.2f} of the time"
        if worst_offset
        else "none"
    )
    ratios = {n: ref[case][n]["median_abs_error"] / ref["no shift"][n]["median_abs_error"] for n in judged}
    figures[f"worst_offset_{slug[case]}"] = offsets[worst_offset] if offsets else float("nan")
    figures[f"worst_offset_se_{slug[case]}"] = (
        ref[case][worst_offset[0]][f"coverage_{worst_offset[1]}_se"] if offsets else float("nan")
    )
    se = {(n, level): ref[case][n][f"coverage_{level}_se"] for n, level in offsets}
    figures[f"n_beyond_goal_{slug[case]}"] = sum(offset > GOAL_COVERAGE for offset in offsets.values())
    figures[f"n_significantly_beyond_goal_{slug[case]}"] = sum(
        offsets[key] - GOAL_COVERAGE > 2 * se[key] for key in offsets
    )
    for level in (68, 95):
        figures[f"coverage_se_{level}_{slug[case]}"] = _mean(list(ref[case].values()), f"coverage_{level}_se")
    figures[f"error_ratio_{slug[case]}"] = float(np.mean(list(ratios.values())))
    worst = max(ratios, key=ratios.get) if ratios else None
    figures[f"worst_error_ratio_{slug[case]}"] = ratios[worst] if worst else float("nan")
    figures[f"worst_error_parameter_{slug[case]}"] = parameter_words(worst) if worst else "none"
    return figures


def _nuisance_figures(result: MethodResult, nuisance: list[str], corrected: bool) -> dict:
    """:func:`shift_figures`' figures of the nuisance parameters: which the matches constrain, and the narrowest."""
    figures: dict = {}
    judged = nuisance_rows(result, nuisance, corrected=corrected)
    figures["nuisance_constrained"] = (
        ", ".join(parameter_words(r["parameter"]) for r in judged if r["constrained"]) or "none"
    )
    figures["n_nuisance_constrained"] = n = sum(r["constrained"] for r in judged)
    figures["nuisance_verdict"] = (
        f"none of the {len(judged)} nuisance parameters"
        if n == 0
        else f"{n} of the {len(judged)} nuisance parameters ({figures['nuisance_constrained']})"
    )
    best = min(judged, key=lambda r: r["width_68_over_prior_spread"])
    figures.update(
        {
            "best_nuisance": parameter_words(best["parameter"]),
            "best_nuisance_width": best["width_68_over_prior_spread"],
            "best_nuisance_error": best["rms_error_over_prior_spread"],
        }
    )
    return figures
