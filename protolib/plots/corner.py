"""The matches' parameters over the prior: a corner plot, and one panel of marginals per parameter.

Log-scaled parameters are shown in log10. Each takes the parameters' values (name -> array) and
keyword options and returns the figure; none shows or saves it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.ticker import MaxNLocator

from ..matching import describe_parameter, scaled_for_summary
from ..parameters import Parameter
from ..runtime import ProtolibInputError
from .style import corner_figure, make_corner_legible, page_fontsize

__all__ = ["plot_corner", "plot_marginals"]


def _matrix(samples: Mapping[str, np.ndarray], parameters: Sequence[str], parameter_info) -> np.ndarray:
    return np.stack(
        [scaled_for_summary(samples[n], describe_parameter(n, parameter_info).log_scale, n) for n in parameters], axis=1
    )


def plot_corner(
    samples: Mapping[str, np.ndarray],
    prior: Mapping[str, np.ndarray],
    *,
    parameters: Sequence[str] | None = None,
    weights: np.ndarray | None = None,
    truths: Mapping[str, float] | None = None,
    parameter_info: Mapping[str, Parameter] | None = None,
    label: str = "best matches",
    color: str = "C0",
    bins: int = 20,
):
    """Corner plot of the matches' parameters over the prior (the whole bank), with truths when known.

    Histograms are densities, so the matches and the prior compare by shape. Log-scaled parameters
    are shown in log10.

    Arguments:
        samples: name -> ``(n,)`` values of each match (physical units).
        prior: name -> values over the whole bank.
        parameters: which parameters (default: every one in ``samples`` except the position angle).
        weights: optional ``(n,)`` weight per match.
        truths: name -> true value (drawn as lines).
        parameter_info: units and log scaling.
        label, color, bins: appearance.

    Returns:
        The matplotlib figure.
    """
    parameters = _corner_parameters(samples, prior, parameters, parameter_info)
    matches = _matrix(samples, parameters, parameter_info)
    bank = _matrix(prior, parameters, parameter_info)
    common = dict(
        range=_corner_ranges(bank, matches),
        bins=bins,
        labels=[describe_parameter(n, parameter_info).axis_label for n in parameters],
        plot_datapoints=False,
        plot_density=False,
        levels=(0.393, 0.865),
        max_n_ticks=3,
    )
    fig = _corner_prior(bank, common, corner_figure(len(parameters)))
    truth_values = _scaled_truths(truths, parameters, parameter_info) if truths else None
    _overplot_matches(fig, matches, weights, truth_values, common, color)
    _fit_diagonal(fig, len(parameters))
    make_corner_legible(fig, len(parameters))
    _corner_legend(fig, f"{label} ({len(matches)})", color, len(bank), bool(truth_values))
    return fig


def _corner_parameters(samples, prior, parameters, parameter_info) -> list[str]:
    """The parameters a corner plot shows: those asked for (default: the matches', less the position angle) whose
    values are known over the bank and the matches; at least two."""
    parameters = [p for p in samples if p != "position_angle"] if parameters is None else list(parameters)
    # an imported bank's inclination is unknown (NaN)
    parameters = [p for p in parameters if _known(prior, samples, p, parameter_info)]
    if len(parameters) < 2:
        raise ProtolibInputError(
            f"A corner plot needs at least two parameters with known values; got {list(parameters)}."
        )
    return parameters


def _corner_ranges(bank: np.ndarray, matches: np.ndarray) -> list[tuple[float, float]]:
    """Each parameter's axis range: the bank's and the matches' values ``(n, K)`` (scaled), with 2% to spare."""
    lo, hi = np.minimum(bank.min(0), matches.min(0)), np.maximum(bank.max(0), matches.max(0))
    pad = 0.02 * np.where(hi > lo, hi - lo, 1.0)
    return list(zip(lo - pad, hi + pad))


def _scaled_truths(truths: Mapping[str, float], parameters: Sequence[str], parameter_info) -> list[float | None]:
    """The true values as plotted (log10 where log-scaled), ``None`` where a parameter's truth is unknown."""
    return [
        float(scaled_for_summary([truths[n]], describe_parameter(n, parameter_info).log_scale, n)[0])
        if n in truths
        else None
        for n in parameters
    ]


def _known(prior: Mapping[str, np.ndarray], samples: Mapping[str, np.ndarray], name: str, parameter_info) -> bool:
    """Whether parameter ``name`` has finite values (as plotted: log10 where log-scaled) over the bank and the
    matches."""
    if name not in prior or name not in samples:
        return True  # _matrix names what is missing
    return bool(
        np.isfinite(_matrix(prior, [name], parameter_info)).all()
        and np.isfinite(_matrix(samples, [name], parameter_info)).all()
    )


def _corner_prior(bank: np.ndarray, common: dict, fig):
    """The corner figure of the prior ``(n, K)`` (scaled) drawn on ``fig``: dashed contours, or its points when it has
    fewer than 500."""
    import corner

    dense_prior = len(bank) >= 500  # fewer: contours of the prior are noise, show its points
    with _quiet_corner():
        return corner.corner(
            bank,
            fig=fig,
            color="0.55",
            hist_kwargs={"density": True, "color": "0.55"},
            no_fill_contours=True,
            contour_kwargs={"linestyles": "--"},
            **{
                **common,
                "plot_contours": dense_prior,
                "plot_datapoints": not dense_prior,
                "data_kwargs": {"alpha": 0.35, "ms": 2},
                "smooth": 1.0,
            },
        )


def _overplot_matches(fig, matches: np.ndarray, weights, truth_values, common: dict, color: str) -> None:
    """The matches ``(n, K)`` (scaled) over the prior's corner figure: filled contours from 50 matches, points below."""
    import corner

    bins = common["bins"]
    if len(matches) >= 50:
        with _quiet_corner():
            corner.corner(
                matches,
                fig=fig,
                weights=weights,
                color=color,
                truths=truth_values,
                truth_color="C3",
                hist_kwargs={"density": True, "color": color},
                fill_contours=True,
                smooth=1.0,
                **{**common, "bins": max(8, min(bins, int(np.sqrt(len(matches)))))},
            )
    else:  # too few for contours (or for corner itself): the matches as points
        _overplot_few(fig, matches, weights, common["range"], max(5, min(bins, len(matches) // 3)), color)
        if truth_values:
            corner.overplot_lines(fig, truth_values, color="C3")
            corner.overplot_points(fig, [truth_values], marker="s", color="C3", ms=4)


def _corner_legend(fig, label: str, color: str, n_prior: int, with_truth: bool) -> None:
    """The corner figure's legend: the matches (``label``), the prior and, when drawn, the truth."""
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color=color, label=label),
        Line2D([], [], color="0.55", ls="--", label=f"prior: whole bank ({n_prior})"),
    ]
    if with_truth:
        handles.append(Line2D([], [], color="C3", label="truth"))
    fig.legend(handles=handles, loc="upper right", frameon=False, fontsize=page_fontsize(fig, 9.5))


def _fit_diagonal(fig, n: int) -> None:
    """Let each diagonal panel's height fit the tallest of its histograms (corner sets it from the first)."""
    axes = np.array(fig.axes).reshape(n, n)
    for i in range(n):
        heights = [line.get_ydata() for line in axes[i, i].lines if len(line.get_ydata()) > 2]
        heights += [patch.get_path().vertices[:, 1] for patch in axes[i, i].patches]
        top = max((float(np.max(h)) for h in heights if len(h)), default=0.0)
        if top > 0:
            axes[i, i].set_ylim(0, 1.1 * top)


@contextlib.contextmanager
def _quiet_corner():
    """Silence corner's "Too few points to create valid contours" (sparse panels simply show no contour)."""

    def sparse(record: logging.LogRecord) -> bool:
        return "Too few points" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(sparse)
    try:
        yield
    finally:
        root.removeFilter(sparse)


def _overplot_few(fig, matches: np.ndarray, weights, ranges, bins: int, color: str) -> None:
    import corner

    n = matches.shape[1]
    axes = np.array(fig.axes).reshape(n, n)
    for i in range(n):
        axes[i, i].hist(
            matches[:, i],
            bins=np.linspace(*ranges[i], bins + 1),
            weights=weights,
            density=True,
            histtype="step",
            color=color,
            lw=1.5,
        )
    corner.overplot_points(fig, matches, marker="o", ms=3, alpha=0.7, color=color)


def plot_marginals(
    distributions: Mapping[str, Mapping[str, np.ndarray]],
    prior: Mapping[str, np.ndarray],
    *,
    parameters: Sequence[str] | None = None,
    truths: Mapping[str, float] | None = None,
    parameter_info: Mapping[str, Parameter] | None = None,
    n_columns: int = 4,
    bins: int = 20,
):
    """One panel per parameter: the prior and each named distribution (e.g. best and random matches).

    Arguments:
        distributions: label -> (name -> values), e.g. ``{"best 200": ..., "random 200": ...}``.
        prior: name -> values over the whole bank.
        parameters: which parameters (default: those of the first distribution, position angle excluded).
        truths: name -> true value.
        parameter_info: units and log scaling.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    first = next(iter(distributions.values()))
    parameters = [p for p in first if p != "position_angle"] if parameters is None else list(parameters)
    n_rows = int(np.ceil(len(parameters) / n_columns))
    fig, axes = plt.subplots(n_rows, n_columns, figsize=(3.2 * n_columns, 2.6 * n_rows), squeeze=False)
    for ax, name in zip(axes.flat, parameters):
        _marginal(ax, name, distributions, prior, truths, describe_parameter(name, parameter_info), bins)
    for ax in axes.flat[len(parameters) :]:
        ax.set_visible(False)
    text = page_fontsize(fig, 8)  # the figure is shrunk to the page: its text is drawn larger in proportion
    for ax in axes.flat[: len(parameters)]:
        ax.xaxis.label.set_size(text)
        ax.tick_params(labelsize=0.85 * text)
        ax.xaxis.set_major_locator(MaxNLocator(5))
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), frameon=False, fontsize=text)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    return fig


def _marginal(ax, name: str, distributions, prior, truths, info: Parameter, bins: int) -> None:
    """One parameter's panel of :func:`plot_marginals`: the prior filled, each distribution as a line (values beyond
    the prior's range in its end bins), the truth when known."""
    bank = scaled_for_summary(prior[name], info.log_scale, name)
    edges = np.linspace(bank.min(), bank.max(), bins + 1)
    ax.hist(bank, edges, density=True, color="0.8", label="prior (bank)")
    for i, (label, samples) in enumerate(distributions.items()):
        ax.hist(
            np.clip(scaled_for_summary(samples[name], info.log_scale, name), edges[0], edges[-1]),
            edges,
            density=True,
            histtype="step",
            lw=1.6,
            color=f"C{i}",
            label=label,
        )
    if truths and name in truths:
        ax.axvline(scaled_for_summary([truths[name]], info.log_scale, name)[0], color="C3", lw=1.5, label="truth")
    ax.set_xlabel(info.axis_label, fontsize=9)
    ax.set_yticks([])
