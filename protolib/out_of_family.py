"""Physics outside the bank's family: how honest the intervals stay, and a misspecification term that keeps them so.

The interval calibration (:mod:`protolib.matching.calibration`) widens the matches' intervals until
they hold the truth of the bank's own held-out systems as often as they claim. Those systems share the
bank's physics, so the calibration cannot see what a real sky holds and no bank system does. Here the
same held-out systems are rendered with physics from outside the bank's family
(:data:`FAMILIES`: a static power-law envelope instead of the rotating collapse, or a dust temperature
with external heating added to the bank's law), matched by the bank's network, and scored.

A **misspecification term** is a further widening per parameter, on top of the calibration: the
smallest factor at which the intervals reach their nominal coverage on one family
(:func:`misspecification_terms`). Learnt on one family and scored on another it says whether it
carries to physics it was not learnt on; on the bank's own systems it says what it costs in width.
The rule is the calibration's own (the smallest widening that reaches nominal at every level), so the
two terms mean the same thing and multiply. The run is :func:`protolib.pipelines.out_of_family.run_out_of_family`.
"""

from __future__ import annotations

import json

import numpy as np

from .evaluation import COVERAGE_LEVELS, MethodEvaluation
from .plots.style import parameter_words, word_list
from .runtime import ProtolibInputError

__all__ = [
    "FAMILIES",
    "IN_FAMILY",
    "TERM_CANDIDATES",
    "misspecification_terms",
    "family_rows",
    "family_table",
    "family_words",
    "read_terms",
    "with_terms",
    "out_of_family_figures",
]

FAMILIES = {
    "power_law_envelope": (
        "a static envelope, rho ~ r^-2 (the singular isothermal sphere), with the collapse's mass within the "
        "aperture, instead of the rotating collapse",
        {"envelope_law": "power_law", "envelope_power_index": 2.0},
    ),
    "external_heating": (
        "the bank's temperature law with 15 K of external heating added, T = (T_law^4 + (15 K)^4)^(1/4)",
        {"external_temperature_k": 15.0},
    ),
}
"""Each out-of-family test set: name -> (what differs from the bank's physics, the simulator settings that make it)."""

FAMILY_WORDS = {"power_law_envelope": "power-law envelope", "external_heating": "external heating"}
"""Each test set's name as the book writes it."""

IN_FAMILY = "bank's own physics"
TERM_CANDIDATES = tuple(np.round(np.arange(1.0, 4.01, 0.05), 2))
"""The misspecification terms tried, smallest first: 1 (none) to 4 in steps of 0.05."""


def _coverage(evaluation: MethodEvaluation, name: str, widening: float) -> np.ndarray:
    """``(len(COVERAGE_LEVELS),)`` the coverage of parameter ``name``'s intervals widened by ``widening`` (calibration
    included)."""
    return (evaluation.needed_widening[name] <= widening).mean(0)


def misspecification_terms(
    evaluation: MethodEvaluation, parameters: list[str], calibration: dict[str, float], candidates=TERM_CANDIDATES
) -> dict[str, float]:
    """Per parameter, the smallest further widening at which ``evaluation``'s intervals reach nominal coverage at every
    level.

    Arguments:
        evaluation: the network's figures on an out-of-family test set (with ``needed_widening``).
        parameters: the parameters to learn a term for.
        calibration: the calibration's widening per parameter, already in ``evaluation``'s intervals.
        candidates: the terms tried; the largest is taken where none reaches nominal.
    """
    terms = {}
    for name in parameters:
        factor = float(calibration.get(name, 1.0))
        reached = [
            c for c in candidates if np.all(_coverage(evaluation, name, factor * c) >= np.asarray(COVERAGE_LEVELS))
        ]
        terms[name] = float(reached[0] if reached else candidates[-1])
    return terms


def family_rows(
    evaluations: dict[str, MethodEvaluation],
    parameters: list[str],
    calibration: dict[str, float],
    terms: dict[str, float],
    prior_spread: dict[str, float],
) -> list[dict]:
    """One row per test set and parameter: 68%/95% coverage and the 68% half-width over the prior's spread, before and
    after the term."""
    rows = []
    for family, evaluation in evaluations.items():
        for name in parameters:
            factor, term = float(calibration.get(name, 1.0)), float(terms.get(name, 1.0))
            before, after = _coverage(evaluation, name, factor), _coverage(evaluation, name, factor * term)
            half = (
                0.5
                * np.median(evaluation.interval_68[name][:, 1] - evaluation.interval_68[name][:, 0])
                / prior_spread[name]
            )
            error = np.median(np.abs(evaluation.median[name] - evaluation.truth[name])) / prior_spread[name]
            rows.append(
                {
                    "family": family,
                    "parameter": name,
                    "term": term,
                    "median_abs_error_over_prior_spread": float(error),
                    **{f"coverage_{round(100 * c)}_before": float(v) for c, v in zip(COVERAGE_LEVELS, before)},
                    **{f"coverage_{round(100 * c)}_after": float(v) for c, v in zip(COVERAGE_LEVELS, after)},
                    "half_width_68_before": float(half),
                    "half_width_68_after": float(half * term),
                }
            )
    return rows


def family_words(family: str) -> str:
    """A test set's name in words (``"power-law envelope"``, not ``power_law_envelope``), for headings and prose."""
    return FAMILY_WORDS.get(family, family.replace("_", " "))


def family_table(rows: list[dict], family: str) -> str:
    """Markdown: one test set's coverage (68% / 95%) and half-width over the prior's spread, before and after the
    term."""
    lines = [
        "| parameter | term | coverage before | coverage after | half-width before | after | error |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in (r for r in rows if r["family"] == family):
        lines.append(
            f"| {parameter_words(row['parameter'])} | {row['term']:.2f} | {row['coverage_68_before']:.2f} / "
            f"{row['coverage_95_before']:.2f} | "
            f"{row['coverage_68_after']:.2f} / {row['coverage_95_after']:.2f} | {row['half_width_68_before']:.2f} | "
            f"{row['half_width_68_after']:.2f} | {row['median_abs_error_over_prior_spread']:.2f} |"
        )
    return "\n".join(lines)


def read_terms(path) -> dict[str, float]:
    """The misspecification terms in ``path``: an ``out_of_family.json`` (its ``terms``) or a JSON object of parameter
    -> term.

    Plain JSON only (nothing in it runs). Each term must be a number from 1 (no widening) to 10; the file is named in
    the one-line error otherwise.
    """
    from pathlib import Path

    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ProtolibInputError(
            f"{path}: cannot read misspecification terms ({error}); give the out_of_family.json that "
            "`protolib out-of-family` wrote."
        ) from None
    terms = data.get("terms", data) if isinstance(data, dict) else None
    if not isinstance(terms, dict) or not terms:
        raise ProtolibInputError(
            f"{path}: no misspecification terms (expected an object of parameter -> term, or out_of_family.json)."
        )
    bad = {
        k: v for k, v in terms.items() if isinstance(v, bool) or not isinstance(v, (int, float)) or not 1.0 <= v <= 10.0
    }
    if bad:
        raise ProtolibInputError(f"{path}: misspecification terms must be numbers from 1 to 10, got {bad}.")
    return {str(k): float(v) for k, v in terms.items()}


def with_terms(calibration: dict | None, terms: dict[str, float] | None) -> dict | None:
    """A match's calibration (parameter -> ``{"widening", ...}``) with each parameter's widening multiplied by its term.

    Each entry keeps the calibration's own widening as ``calibration_widening`` and records ``misspecification_term``;
    parameters without a term, and a match without terms, are left as they are.
    """
    if not calibration or not terms:
        return calibration
    out = dict(calibration)
    for name, entry in calibration.items():
        if name in terms:
            term = float(terms[name])
            out[name] = {
                **entry,
                "widening": entry["widening"] * term,
                "calibration_widening": entry["widening"],
                "misspecification_term": term,
            }
    return out


def _family_figures(rows: list[dict], key: str) -> dict:
    """One test set's figures for :func:`out_of_family_figures`: its mean and lowest coverage, before and after the
    term, with the parameters at the lowest, and its mean error."""
    figures = {}
    for when in ("before", "after"):
        for level in (68, 95):
            values = [r[f"coverage_{level}_{when}"] for r in rows]
            figures[f"oof_{key}_cov{level}_{when}"] = float(np.mean(values))
            figures[f"oof_{key}_min{level}_{when}"] = float(min(values))
            # every parameter at the lowest as the tables print it (two decimals): a tie is not named as one
            figures[f"oof_{key}_min{level}_{when}_parameter"] = word_list(
                [parameter_words(r["parameter"]) for r, v in zip(rows, values) if round(v, 2) == round(min(values), 2)]
            )
    figures[f"oof_{key}_error"] = float(np.mean([r["median_abs_error_over_prior_spread"] for r in rows]))
    return figures


def out_of_family_figures(results: dict) -> dict:
    """The figures chapter 06b quotes from an ``out_of_family.json``
    (:func:`~protolib.pipelines.out_of_family.run_out_of_family`):
    per test set the mean and the lowest coverage before and after the term, and the terms' ranges."""
    figures = {}
    for key, family in (("own", IN_FAMILY), *((name, name) for name in FAMILIES)):
        figures.update(_family_figures([r for r in results["rows"] if r["family"] == family], key))
    terms, own = results["terms"], results.get("terms_own_physics", {})
    figures.update(
        {
            "oof_learnt_on": family_words(results["learnt_on"]),
            "oof_term_min": min(terms.values()),
            "oof_term_max": max(terms.values()),
            # every parameter at the largest term, so that a tie is not named as one
            "oof_term_max_parameter": word_list(
                [parameter_words(n) for n, t in terms.items() if t == max(terms.values())]
            ),
            "oof_term_mean": float(np.mean(list(terms.values()))),
            "oof_n_systems": int(results.get("test_systems", 0)),
        }
    )
    if own:
        figures.update(
            {
                "oof_own_term_min": min(own.values()),
                "oof_own_term_max": max(own.values()),
                "oof_beyond_own_max": max(terms[n] / own[n] for n in terms if n in own),
            }
        )
    return figures
