"""Figures for the evaluation: coverage, recovery, rank histograms, TARP and learning curves.

Each takes data and keyword options and returns the figure.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from ..evaluation import CURVE_LEVELS, MethodEvaluation, MethodResult
from ..evaluation.book import rising_learning_curves
from ..parameters import PARAMETERS, VIEWING_PARAMETERS
from .style import page_fontsize, parameter_words

__all__ = [
    "plot_coverage",
    "plot_recovery",
    "plot_rank_histograms",
    "plot_tarp",
    "plot_learning_curves",
    "METHOD_COLOURS",
]


def _label(name: str, log_scale: bool | None = None) -> str:
    info = PARAMETERS.get(name) or VIEWING_PARAMETERS.get(name)
    if info is None:
        return name
    return f"log10 {info.label or name}" if info.log_scale else (info.label or name)


def _evaluation(result: MethodEvaluation | MethodResult, corrected: bool) -> MethodEvaluation:
    return result if isinstance(result, MethodEvaluation) else result.figures(corrected)


def plot_coverage(
    results: dict,
    *,
    corrected: bool = False,
    parameters: list[str] | None = None,
    panel_size: float = 2.6,
    columns: int = 4,
) -> Figure:
    """Coverage of central intervals against their nominal level, one panel per method, ``columns`` panels a row.

    Arguments:
        results: method name -> :class:`~protolib.evaluation.MethodEvaluation`, or the
            :class:`~protolib.evaluation.MethodResult` of :func:`~protolib.evaluation.evaluate_methods`.
        corrected: show each method's corrected (chosen-``k``) figures.
        parameters: lines drawn (default: every evaluated parameter); their mean is the thick line. Each
            parameter keeps its colour in every panel (up to 20 distinct ones), named in one legend below.
    """
    rows = math.ceil(len(results) / columns)
    width = min(columns, len(results))
    fig, axes = plt.subplots(
        rows,
        width,
        figsize=(panel_size * width, panel_size * rows + 0.9),
        squeeze=False,
        sharey=True,
        layout="constrained",
    )
    levels, colours = np.asarray(CURVE_LEVELS), plt.get_cmap("tab20").colors
    text, tick = page_fontsize(fig, 8), page_fontsize(fig, 7)  # the figure is shrunk to the page
    for ax, (name, result) in zip(axes.flat, results.items()):
        evaluation = _evaluation(result, corrected)
        names = parameters or evaluation.parameters
        curves = np.array([evaluation.coverage_curve[n] for n in names])
        for i, (n, curve) in enumerate(zip(names, curves)):
            ax.plot(levels, curve, lw=0.9, alpha=0.8, color=colours[i % len(colours)], label=parameter_words(n))
        ax.plot(levels, curves.mean(0), color="k", lw=2.2, label="mean")
        ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1)
        ax.fill_between([0, 1], [-0.05, 0.95], [0.05, 1.05], color="grey", alpha=0.15, lw=0)
        draws = "samples" if name in ("npe", "npe_end_to_end") else "k"
        ax.set(xlim=(0, 1), ylim=(0, 1), xticks=[0, 0.5, 1])  # no "1.00" against the next panel's "0.00"
        ax.set_xlabel("nominal level", fontsize=text)
        ax.tick_params(labelsize=tick)
        ax.set_title(f"{name}\n({draws}={evaluation.top_k})", fontsize=text)  # two lines: no title wider than its panel
    for ax in axes.flat[len(results) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("fraction of truths covered", fontsize=text)
    fig.legend(*axes.flat[0].get_legend_handles_labels(), fontsize=tick, ncols=4, loc="outside lower center")
    return fig


def plot_recovery(
    evaluation: MethodEvaluation, *, parameters: list[str] | None = None, columns: int = 4, panel_size: float = 2.5
) -> Figure:
    """Recovered (matches' median, with 16-84% range) against true value, one panel per parameter."""
    names = parameters or evaluation.parameters
    rows = math.ceil(len(names) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(panel_size * columns, panel_size * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        truth, median, interval = evaluation.truth[name], evaluation.median[name], evaluation.interval_68[name]
        ax.errorbar(
            truth,
            median,
            yerr=[median - interval[:, 0], interval[:, 1] - median],
            fmt="o",
            ms=2.5,
            lw=0.6,
            alpha=0.6,
            color="C0",
        )
        low, high = float(min(truth.min(), interval.min())), float(max(truth.max(), interval.max()))
        ax.plot([low, high], [low, high], color="grey", ls="--", lw=1)
        r2 = evaluation.metrics["parameters"][name]["r2_knn"]
        ax.set_title(f"{_label(name)}  R²={r2:.2f}", fontsize=page_fontsize(fig, 7.5))
        ax.tick_params(labelsize=page_fontsize(fig, 6.5))
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    fig.supxlabel("true value", fontsize=page_fontsize(fig, 8))
    fig.supylabel(
        f"recovered: median of {evaluation.top_k} matches ({evaluation.method})", fontsize=page_fontsize(fig, 8)
    )
    fig.tight_layout()
    return fig


def plot_rank_histograms(
    evaluation: MethodEvaluation,
    *,
    parameters: list[str] | None = None,
    bins: int = 10,
    columns: int = 4,
    panel_size: float = 2.4,
) -> Figure:
    """Rank of each truth among its matches (SBC): flat for calibrated distributions, with the 99% band of a flat one.

    A U shape means overconfident (too narrow), a hump underconfident (too wide), a slope biased.
    """
    names = parameters or evaluation.parameters
    rows = math.ceil(len(names) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(panel_size * columns, 0.8 * panel_size * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        ranks = evaluation.ranks[name]
        n = len(ranks)
        ax.hist(ranks, bins=bins, range=(0, 1), color="C0", alpha=0.8)
        expected = n / bins
        band = 2.58 * math.sqrt(expected * (1 - 1 / bins))
        ax.axhspan(max(0.0, expected - band), expected + band, color="grey", alpha=0.2, lw=0)
        ax.axhline(expected, color="grey", lw=1)
        ax.set_title(_label(name), fontsize=page_fontsize(fig, 7.5))
        ax.tick_params(labelsize=page_fontsize(fig, 6.5))
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    fig.supxlabel(f"rank of the truth among the {evaluation.top_k} matches (fraction)", fontsize=page_fontsize(fig, 8))
    fig.tight_layout()
    return fig


def plot_tarp(results: dict, *, corrected: bool = False, size: float = 3.4) -> Figure:
    """TARP expected coverage against credibility level, one line per method (the diagonal is calibrated), and beside
    it each curve's deviation from the diagonal, so that how far a method is from calibrated reads off an axis.

    The legend gives each method's largest deviation (the figure the evaluation reports as TARP's); the grey band
    is +-0.05 about the diagonal, as in the coverage panels. Text is sized to read at page width.
    """
    fig, (ax, ax_deviation) = plt.subplots(1, 2, figsize=(2 * size + 0.8, size + 1.3), layout="constrained")
    text, tick = page_fontsize(fig, 9), page_fontsize(fig, 8)
    for name, result in results.items():
        evaluation = _evaluation(result, corrected)
        alpha, ecp = (np.asarray(v, dtype=float) for v in evaluation.tarp)
        draws = "samples" if name in ("npe", "npe_end_to_end") else "k"  # as the coverage panels say it
        largest = float(np.max(np.abs(ecp - alpha)))
        label = f"{name} ({draws}={evaluation.top_k}): {largest:.3f}"
        ax.plot(alpha, ecp, lw=1.8, color=METHOD_COLOURS.get(name), label=label)
        ax_deviation.plot(alpha, ecp - alpha, lw=1.8, color=METHOD_COLOURS.get(name))
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1)
    ax.fill_between([0, 1], [-0.05, 0.95], [0.05, 1.05], color="grey", alpha=0.15, lw=0)
    ax.set(xlim=(0, 1), ylim=(0, 1), aspect="equal")
    ax.set_ylabel("expected coverage (TARP)", fontsize=text)
    ax_deviation.axhline(0.0, color="grey", ls="--", lw=1)
    ax_deviation.axhspan(-0.05, 0.05, color="grey", alpha=0.15, lw=0)
    ax_deviation.set_xlim(0, 1)
    ax_deviation.set_ylabel("coverage minus credibility level", fontsize=text)
    for panel in (ax, ax_deviation):
        panel.set_xlabel("credibility level", fontsize=text)
        panel.tick_params(labelsize=tick)
    if corrected:
        fig.suptitle("TARP at the corrected k and widenings", fontsize=text)
    fig.legend(
        *ax.get_legend_handles_labels(),
        fontsize=tick,
        ncols=2,
        loc="outside lower center",
        title="method (matches per target): largest deviation from the diagonal",
        title_fontsize=tick,
    )
    return fig


METHOD_COLOURS = {
    "pixel": "tab:grey",
    "pca": "tab:brown",
    "autoencoder": "tab:green",
    "siamese": "tab:blue",
    "npe": "tab:orange",
    "npe_end_to_end": "tab:red",
    "random": "k",
}


def plot_learning_curves(
    curves: dict, *, methods: list[str] | None = None, columns: int = 4, panel_size: float = 2.5
) -> Figure:
    """Each method's error against its training systems (the JSON of ``benchmarks/learning_curves.py``), one panel per
    parameter.

    Panels: every parameter of the target similarity (``curves["target_parameters"]``), then their mean.
    Points joined by solid lines are measured (corrected RMS error of the median over the prior's
    spread, on the same test systems at every size); the dashed line is the fitted curve
    (``curves["fits"]``), carried from the largest measured size to ``curves["extrapolation"]`` — an
    extrapolation, not a measurement, drawn with an open marker; the grey dotted line is the largest size measured, the
    light grey line at 1 the prior (no information). A curve whose error rises with the training set has no
    extrapolation (a falling power law cannot follow it), and its panel says so.

    Arguments:
        curves: the JSON's contents (``train_systems``, ``methods``, ``fits``, ``extrapolation``,
    ``target_parameters``).
        methods: lines drawn (default: every method in ``curves["methods"]``).
    """
    names = [*curves["target_parameters"], "mean_target"]
    methods = methods or list(curves["methods"])
    rows = math.ceil(len(names) / columns)
    fig, axes = plt.subplots(
        rows,
        columns,
        figsize=(panel_size * columns, panel_size * rows),
        squeeze=False,
        sharex=True,
        layout="constrained",
    )
    sizes = np.asarray(curves["train_systems"], dtype=float)
    far = float(curves.get("extrapolation", {}).get("train_systems", sizes.max()))
    fits = curves.get("fits", {}).get("by_method", {})
    rising = set(rising_learning_curves(curves))
    text, tick = page_fontsize(fig, 8), page_fontsize(fig, 7)  # the figure is shrunk to the page
    for ax, name in zip(axes.flat, names):
        for i, method in enumerate(methods):
            values = [_curve_value(curves["methods"][method]["sizes"][str(int(n))], name) for n in sizes]
            fit = None if (method, name) in rising else fits.get(method, {}).get(name)
            _method_curve(ax, method, METHOD_COLOURS.get(method, f"C{i}"), sizes, values, fit, far)
        _rising_note(ax, [m for m in methods if (m, name) in rising], fontsize=0.9 * tick)
        ax.axvline(sizes.max(), color="0.6", ls=":", lw=1)
        ax.axhline(1.0, color="0.8", lw=0.8)  # no information: the prior
        ax.set_xscale("log")
        ax.set_title("mean of the target parameters" if name == "mean_target" else parameter_words(name), fontsize=text)
        ax.tick_params(labelsize=tick)
    for ax in axes.flat[len(names) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("RMS error / prior spread", fontsize=tick)
    for ax in axes[-1]:
        ax.set_xlabel("training systems", fontsize=tick)
    fig.legend(*axes.flat[0].get_legend_handles_labels(), fontsize=tick, ncols=len(methods), loc="outside upper center")
    return fig


def _method_curve(ax, method: str, colour, sizes: np.ndarray, values: list[float], fit: dict | None, far: float):
    """One method's learning curve in a panel: the measured points joined, then (when fitted) the fitted curve dashed
    from the largest measured size out to ``far`` training systems, its end an open marker."""
    ax.plot(sizes, values, "o-", color=colour, lw=1.5, ms=3.5, label=method)
    if fit is not None and far > sizes.max():
        n = np.geomspace(sizes.max(), far, 30)
        ax.plot(n, _fitted(fit, n), "--", color=colour, lw=1.2)
        ax.plot([far], [fit["extrapolation"]["value"]], "o", mfc="none", color=colour, ms=5)


def _rising_note(ax, methods: list[str], fontsize: float = 7.0) -> None:
    """Say in a panel which methods' errors rise with the training set, and so have no extrapolation drawn
    (:func:`~protolib.evaluation.book.rising_learning_curves`)."""
    if methods:
        ax.text(
            0.97,
            0.96,
            f"{', '.join(methods)}: error rises,\nnot extrapolated",
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=fontsize,
            color="0.3",
        )


def _curve_value(row: dict, name: str) -> float:
    """One size's corrected RMS error over the prior's spread of parameter ``name`` (``"mean_target"``: the target
    parameters' mean)."""
    return (
        row["mean_target_rms_error_over_prior_spread"]
        if name == "mean_target"
        else row["parameters"][name]["rms_error_over_prior_spread"]
    )


def _fitted(fit: dict, n: np.ndarray) -> np.ndarray:
    """A fitted learning curve at ``n`` training systems: ``a + b n^-c``, or the log-linear fallback ``alpha + beta
    log10 n``."""
    if "c" in fit:
        return fit["a"] + fit["b"] * np.power(n, -fit["c"])
    return fit["alpha"] + fit["beta"] * np.log10(n)
