"""Figures of the domain-shift comparison (:mod:`protolib.domain_shift`): coverage and error per case, how
narrowly the matches pin each nuisance parameter, and how narrowly one, two and three bands pin each parameter.
Each takes data and keyword options and returns the figure.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from ..domain_shift import nuisance_rows, shift_rows
from ..evaluation import MethodResult
from .style import parameter_words

__all__ = ["plot_domain_shift", "plot_nuisance_constraints", "plot_band_half_widths", "CASE_COLOURS"]


CASE_COLOURS = {"no shift": "0.55", "shift": "tab:red", "marginalised": "tab:blue"}


def plot_domain_shift(
    cases: dict, parameters: list[str], *, method: str = "siamese", corrected: bool = True, width: float = 7.2
) -> Figure:
    """One method in the three cases of :mod:`protolib.domain_shift`: 68% and 95% coverage and the median error, per
    parameter.

    Bars per parameter, one per case (grey: fixed physics on fixed-physics systems; red: the same bank
    on systems of drawn physics; blue: the bank with drawn physics on those systems); dashed lines
    are the nominal coverage, the band the goal's +-0.05. The error panel is the median |error| over
    the no-shift case's, so 1 is "as good as without the shift".
    """
    rows = {
        (r["case"], r["parameter"]): r
        for r in shift_rows(cases, parameters, corrected=corrected)
        if r["method"] == method
    }
    fig, axes = plt.subplots(3, 1, figsize=(width, 6.4), sharex=True, layout="constrained")
    x = np.arange(len(parameters))
    step = 0.8 / len(cases)
    panels = (
        ("coverage_68", 0.68, "68% coverage"),
        ("coverage_95", 0.95, "95% coverage"),
        ("error_ratio", 1.0, "error / no-shift error"),
    )
    for ax, (figure, nominal, title) in zip(axes, panels):
        for i, case in enumerate(cases):
            if figure == "error_ratio":
                values = [
                    rows[(case, n)]["median_abs_error"] / rows[("no shift", n)]["median_abs_error"] for n in parameters
                ]
            else:
                values = [rows[(case, n)][figure] for n in parameters]
            ax.bar(
                x + (i - (len(cases) - 1) / 2) * step, values, step, color=CASE_COLOURS.get(case, f"C{i}"), label=case
            )
        ax.axhline(nominal, color="k", ls="--", lw=1)
        band = 0.05 if figure != "error_ratio" else 0.10
        ax.axhspan(nominal - band if figure != "error_ratio" else 0, nominal + band, color="k", alpha=0.08, lw=0)
        ax.set_ylabel(title, fontsize=9)
        ax.tick_params(labelsize=8)
    axes[0].set_ylim(0, 1.05)
    axes[1].set_ylim(0, 1.05)
    # above the panels, over no bar
    fig.legend(*axes[0].get_legend_handles_labels(), fontsize=8, ncols=3, loc="outside upper center")
    axes[-1].set_xticks(x, [parameter_words(n) for n in parameters], rotation=30, ha="right", fontsize=8)
    return fig


def plot_nuisance_constraints(
    result: MethodResult, nuisance: list[str], *, corrected: bool = True, width: float = 7.2
) -> Figure:
    """How narrowly one method's matches pin each nuisance parameter: 68% half-width and RMS error over the prior's
    spread.

    An RMS error near 1, and a half-width near 1.2 (a uniform prior's central 68% spans 1.18 standard
    deviations either side of its middle), are "the images say nothing about it"; well below, they constrain it.
    """
    rows = nuisance_rows(result, nuisance, corrected=corrected)
    fig, ax = plt.subplots(figsize=(width, 2.8), layout="constrained")
    x = np.arange(len(rows))
    ax.bar(
        x - 0.2,
        [r["width_68_over_prior_spread"] for r in rows],
        0.4,
        color="tab:blue",
        label="68% half-width / prior spread",
    )
    ax.bar(
        x + 0.2,
        [r["rms_error_over_prior_spread"] for r in rows],
        0.4,
        color="tab:orange",
        label="RMS error / prior spread",
    )
    ax.axhline(1.0, color="tab:orange", ls="--", lw=1, label="RMS error of the prior alone (1)")
    ax.axhline(
        UNIFORM_HALF_WIDTH, color="tab:blue", ls=":", lw=1.5, label=f"prior's half-width ({UNIFORM_HALF_WIDTH:.2f})"
    )
    labels = [parameter_words(r["parameter"]) for r in rows]
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    ax.tick_params(labelsize=8)
    top = max(max(r["width_68_over_prior_spread"], r["rms_error_over_prior_spread"]) for r in rows)
    ax.set_ylim(0, max(1.6, top) * 1.45)  # room above the bars for the legend
    ax.legend(fontsize=7, loc="upper left", ncols=2)
    return fig


UNIFORM_HALF_WIDTH = 0.68 * np.sqrt(3.0)
"""A uniform prior's central 68% half-width in its standard deviations: the matches' when the images say nothing."""


def plot_band_half_widths(
    half_widths: dict[str, dict[str, float]],
    *,
    prior_half_width: float,
    goal: dict[str, float] | None = None,
    labels: dict[str, str] | None = None,
    title: str | None = None,
    width: float = 7.2,
) -> Figure:
    """The matches' 68% half-width over the prior's spread, per parameter, one bar per set of bands (``title``
    above it, when given).

    ``half_widths``: bands matched (``"B6"``, ``"B3+B6"``, ...) -> parameter -> half-width
    (:func:`~protolib.evaluation.book.band_half_widths`). The dashed line is the prior's own half-width
    (``prior_half_width``: what the matches give when the images say nothing); ``goal``: parameter -> a goal
    drawn as a short dotted line over its bars; ``labels``: parameter -> its name on the axis.
    """
    cases = list(half_widths)
    parameters = list(half_widths[cases[0]])
    labels = labels or {}
    fig, ax = plt.subplots(figsize=(width, 3.0), layout="constrained")
    x = np.arange(len(parameters))
    step = 0.8 / len(cases)
    for i, case in enumerate(cases):
        values = [half_widths[case][n] for n in parameters]
        ax.bar(
            x + (i - (len(cases) - 1) / 2) * step,
            values,
            step,
            color=plt.cm.viridis(i / max(1, len(cases))),
            label=case,
        )
    ax.axhline(prior_half_width, color="k", ls="--", lw=1, label="the prior's")
    for name, value in (goal or {}).items():
        at = parameters.index(name)
        ax.hlines(value, at - 0.45, at + 0.45, color="tab:red", ls=":", lw=2, label=f"goal ({labels.get(name, name)})")
    ax.set_xticks(x, [labels.get(n, parameter_words(n)) for n in parameters], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("68% half-width / prior spread", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.set_ylim(0, 1.3 * max(prior_half_width, max(max(v.values()) for v in half_widths.values())))
    ax.legend(fontsize=8, ncols=len(cases) + 2, loc="upper left")
    if title:
        ax.set_title(title, fontsize=9)
    return fig
