"""Posterior-like distributions: the physical parameters of a target's best matches, summarised and plotted.

The parameters of the best matches form a posterior-like distribution for the target; the whole
bank is its prior. Quantities spanning decades (``log_scale``) are summarised and plotted in
log10 and reported in physical units. Plot functions take data and keyword options and return
the figure; they never show or save it.

The parameters of matches live in :mod:`protolib.matching.matches` (re-exported here), the interval
statistics in :mod:`protolib.statistics` and their calibration on reference targets in
:mod:`protolib.matching.calibration`. A match run's report is written
by :func:`protolib.pipelines.match.write_match_report`.
"""

from __future__ import annotations

import contextlib
import csv
import logging
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
from .plotting import (
    add_colorbar,
    add_orientation,
    add_scale_bar,
    corner_figure,
    display_unit,
    fit_title,
    make_corner_legible,
    page_fontsize,
)
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
    "corner_plot",
    "marginals_plot",
    "band_gallery_plot",
    "spectral_index_plot",
    "gallery_plot",
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
        p2_5, p16, p50, p84, p97_5 = weighted_percentile(scaled, PERCENTILES, weights)
        factor = float((widening or {}).get(name, 1.0))
        p2_5, p16, p84, p97_5 = (p50 + factor * (p - p50) for p in (p2_5, p16, p84, p97_5))
        if factor != 1.0 and prior is not None and name in prior:  # a widened range stops at the bank's own range
            bounds = scaled_for_summary(prior[name], info.log_scale, name)
            p2_5, p16, p84, p97_5 = np.clip([p2_5, p16, p84, p97_5], bounds.min(), bounds.max())
        width = 0.5 * (p84 - p16)
        ratio = float("nan")
        if prior is not None and name in prior:
            q16, q84 = np.percentile(scaled_for_summary(prior[name], info.log_scale, name), [16, 84])
            ratio = float(width / (0.5 * (q84 - q16))) if q84 > q16 else float("nan")
        back = (lambda v: float(10**v)) if info.log_scale else float
        truth = float(truths[name]) if truths and name in truths else float("nan")
        summaries.append(
            ParameterSummary(
                name,
                info.unit,
                info.log_scale,
                back(p50),
                back(p16),
                back(p84),
                back(p2_5),
                back(p97_5),
                float(width),
                ratio,
                len(scaled),
                widening=factor,
                truth=truth,
            )
        )
    return summaries


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
    """A plain-text table of summaries: median with 68% and 95% ranges, units, and truth when known
    (with a ``widened`` column when any range was calibrated)."""
    calibrated = any(s.widening != 1.0 for s in summaries)
    lines = [
        f"{'parameter':<18} {'median':>10} {'16%':>10} {'84%':>10} {'2.5%':>10} {'97.5%':>10}  {'unit':<8} "
        f"{'width/prior':>11} {'truth':>10}" + (f" {'widened':>8}" if calibrated else "")
    ]
    for s in summaries:
        lines.append(
            f"{s.parameter:<18} {s.median:>10.3g} {s.p16:>10.3g} {s.p84:>10.3g} {s.p2_5:>10.3g} {s.p97_5:>10.3g}  "
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


def _matrix(samples: Mapping[str, np.ndarray], parameters: Sequence[str], parameter_info) -> np.ndarray:
    return np.stack(
        [scaled_for_summary(samples[n], describe_parameter(n, parameter_info).log_scale, n) for n in parameters], axis=1
    )


def corner_plot(
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
    parameters = [p for p in samples if p != "position_angle"] if parameters is None else list(parameters)
    # an imported bank's inclination is unknown (NaN)
    parameters = [p for p in parameters if _known(prior, samples, p, parameter_info)]
    if len(parameters) < 2:
        raise ProtolibInputError(
            f"A corner plot needs at least two parameters with known values; got {list(parameters)}."
        )
    matches = _matrix(samples, parameters, parameter_info)
    bank = _matrix(prior, parameters, parameter_info)
    lo, hi = np.minimum(bank.min(0), matches.min(0)), np.maximum(bank.max(0), matches.max(0))
    pad = 0.02 * np.where(hi > lo, hi - lo, 1.0)
    ranges = list(zip(lo - pad, hi + pad))
    labels = [describe_parameter(n, parameter_info).axis_label for n in parameters]
    common = dict(
        range=ranges,
        bins=bins,
        labels=labels,
        plot_datapoints=False,
        plot_density=False,
        levels=(0.393, 0.865),
        max_n_ticks=3,
    )
    fig = _corner_prior(bank, common, corner_figure(len(parameters)))
    truth_values = None
    if truths:
        truth_values = [
            float(scaled_for_summary([truths[n]], describe_parameter(n, parameter_info).log_scale, n)[0])
            if n in truths
            else None
            for n in parameters
        ]
    _overplot_matches(fig, matches, weights, truth_values, common, color)
    _fit_diagonal(fig, len(parameters))
    make_corner_legible(fig, len(parameters))
    _corner_legend(fig, f"{label} ({len(matches)})", color, len(bank), bool(truth_values))
    return fig


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


def marginals_plot(
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
        info = describe_parameter(name, parameter_info)
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
    for ax in axes.flat[len(parameters) :]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    return fig


def gallery_plot(
    target_image: np.ndarray,
    images: np.ndarray,
    similarities: np.ndarray,
    *,
    captions: Sequence[str] | None = None,
    target_caption: str = "target",
    n_columns: int = 6,
    pixel_size_au: float | None = None,
    cmap: str = "inferno",
    residuals: np.ndarray | None = None,
    reduced_chi2: np.ndarray | None = None,
    unit: str | None = "Jy/beam",
    scale: str = "each",
):
    """The target beside its best matches, each titled with its similarity.

    Images are shown north up, east left. With ``scale="each"`` every image has its own 0.5-99.8
    percentile range (the network, too, sees each image stretched on its own) and its own colour bar
    below it; with ``scale="target"`` all share the target's range and one colour bar, so that a match
    brighter or fainter than the target shows as such. Colour bars are in ``unit`` (the images' unit,
    shown in mJy: see :func:`~protolib.plotting.display_unit`). The target's panel, framed in red,
    has the N and E arrows and, with ``pixel_size_au``, a scale bar in au. With ``residuals``, every
    image is on one scale (wide enough that no panel saturates, so a match brighter or fainter than the
    target shows as such) and each match's panel has below it its residual map, target minus match in
    units of the noise rms, on one diverging scale, linear within +-3 and logarithmic beyond (white:
    within the noise), labelled with its reduced chi-square and its peak against the target's.

    Arguments:
        target_image: ``(H, W)``.
        images: ``(n, H, W)`` the matches' images, best first, in the target's unit (match an
            observation's through its transform, so that they are shown as the network saw them).
        similarities: ``(n,)`` similarity of each match.
        captions: optional extra line per match (e.g. its system and inclination).
        target_caption: the target's title.
        n_columns: panels per row at most (the target takes the first).
        pixel_size_au: when given, a scale bar in au.
        residuals: ``(n, H, W)`` (target - match) / noise rms, one per match.
        reduced_chi2: ``(n,)`` each match's reduced chi-square, for the residual panels' titles.
        unit: the images' unit, for the colour bars (``"Jy/beam"``, ``"Jy/pixel"``, ``"stretched"``).
        scale: ``"each"`` (every image on its own range) or ``"target"`` (all on the target's); residual
            galleries always share one range.

    Returns:
        The matplotlib figure.
    """
    options = dict(captions=captions, target_caption=target_caption, pixel_size_au=pixel_size_au, cmap=cmap, unit=unit)
    if residuals is not None:
        return _gallery_with_residuals(
            target_image, images, similarities, residuals, reduced_chi2, n_columns=n_columns, **options
        )
    if scale not in ("each", "target"):
        raise ProtolibInputError(f"A gallery's scale is 'each' or 'target', got {scale!r}.")
    return _plain_gallery(
        target_image, images, similarities, n_columns=min(n_columns, len(images) + 1), scale=scale, **options
    )


def _gallery_titles(similarities, captions, width_in: float, n_columns: int, fontsize: float) -> list[str]:
    """Each match's panel title: its rank and similarity, and its caption, wrapped to the panel's width."""
    panel_in = width_in / n_columns
    return [
        fit_title(f"#{i + 1}  s = {s:.3f}" + (f"\n{captions[i]}" if captions is not None else ""), panel_in, fontsize)
        for i, s in enumerate(similarities)
    ]


def _decorate_target(ax, image_size: int, pixel_size_au: float | None, fontsize: float) -> None:
    """The target's panel: a red frame, the N and E arrows and, with a pixel size, a scale bar in au."""
    for spine in ax.spines.values():
        spine.set_edgecolor("C3")
        spine.set_linewidth(2)
    add_orientation(ax, fontsize=fontsize)
    if pixel_size_au is not None:
        add_scale_bar(ax, image_size * pixel_size_au, fontsize=fontsize)


def _target_scale(target_image, factor: float) -> tuple[float, float]:
    """The colour range of a gallery's image (the target's when shared): its 0.5-99.8 percentiles, in the shown unit."""
    lo, hi = np.percentile(np.asarray(target_image, dtype=np.float64) * factor, [0.5, 99.8])
    return float(lo), float(hi if hi > lo else lo + max(abs(lo), 1e-12) * 1e-6)


def _plain_gallery(
    target_image, images, similarities, *, captions, target_caption, n_columns, pixel_size_au, cmap, unit, scale
):
    """:func:`gallery_plot` without residuals: each image on its own scale (or all on the target's), the target framed
    in red."""
    import matplotlib.pyplot as plt

    target_image, images = np.asarray(target_image), np.asarray(images)
    factor, label = display_unit(unit)
    n_rows, width = int(np.ceil((len(images) + 1) / n_columns)), 2.2 * n_columns + 0.6
    text = page_fontsize(width, 8.5)
    titles = [fit_title(target_caption, width / n_columns, text)] + _gallery_titles(
        similarities, captions, width, n_columns, text
    )
    lines = max(t.count("\n") + 1 for t in titles)
    row_in = 2.05 + (1.25 * lines * text + (3.6 * text if scale == "each" else 0.0)) / 72  # image, title, colour bar
    fig, axes = plt.subplots(n_rows, n_columns, figsize=(width, row_in * n_rows), squeeze=False, layout="constrained")
    extent = None if pixel_size_au is None else 0.5 * pixel_size_au * target_image.shape[-1] * np.array([1, -1, -1, 1])
    for i, (ax, img, title) in enumerate(zip(axes.flat, [target_image, *images], titles)):
        lo, hi = _target_scale(target_image if scale == "target" else img, factor)
        shown = ax.imshow(np.asarray(img) * factor, origin="lower", cmap=cmap, vmin=lo, vmax=hi, extent=extent)
        ax.set_title(title, fontsize=text, color="C3" if i == 0 else "black")
        ax.set_xticks([])
        ax.set_yticks([])
        if i == 0:
            _decorate_target(ax, target_image.shape[-1], pixel_size_au, text)
        if scale == "each":
            add_colorbar(ax, shown, label, fontsize=0.9 * text, location="bottom", size=0.06, pad=0.03, n_ticks=3)
    for ax in axes.flat[len(images) + 1 :]:
        ax.set_visible(False)
    if scale == "target":  # the first row is always full: its last panel carries the colour bar of all
        add_colorbar(axes[0, -1], shown, f"{label} (all panels)", fontsize=text, size=0.07)
    return fig


def _gallery_with_residuals(
    target_image,
    images,
    similarities,
    residuals,
    reduced_chi2,
    *,
    captions,
    target_caption,
    n_columns,
    pixel_size_au,
    cmap,
    unit,
):
    """:func:`gallery_plot` with a residual row under each row of images, all images on one scale."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import SymLogNorm

    panels = [np.asarray(target_image)] + list(np.asarray(images))
    factor, label = display_unit(unit)
    n_rows, width = int(np.ceil(len(panels) / n_columns)), 2.2 * n_columns + 1.2
    text = page_fontsize(width, 8.5)
    titles = _gallery_titles(similarities, captions, width - 1.2, n_columns, text)
    lines = max(
        [t.count("\n") + 1 for t in titles] + [fit_title(target_caption, width / n_columns, text).count("\n") + 1]
    )
    pair_in = 2 * 2.05 + 1.25 * lines * text / 72  # an image with its title, and its residual
    fig, axes = plt.subplots(
        2 * n_rows, n_columns, figsize=(width, pair_in * n_rows + 0.8), squeeze=False, layout="constrained"
    )
    scales = [_target_scale(img, factor) for img in panels]  # one range that saturates no panel
    lo, hi = min(a for a, _ in scales), max(b for _, b in scales)
    target_peak = float(np.nanmax(panels[0])) or 1.0
    reach = max(5.0, float(np.percentile(np.abs(residuals), 99.5)))
    norm = SymLogNorm(linthresh=3.0, vmin=-reach, vmax=reach)
    shown_image = shown_residual = None
    for k, img in enumerate(panels):
        ax_image, ax_residual = axes[2 * (k // n_columns), k % n_columns], axes[2 * (k // n_columns) + 1, k % n_columns]
        shown_image = ax_image.imshow(img * factor, origin="lower", cmap=cmap, vmin=lo, vmax=hi)
        if k == 0:
            ax_image.set_title(fit_title(target_caption, width / n_columns, text), fontsize=text, color="C3")
            _decorate_target(ax_image, np.shape(target_image)[-1], pixel_size_au, text)
            ax_residual.text(
                0.5,
                0.5,
                "below each match:\ntarget minus match\nin noise rms; its\nreduced chi-square,\nits peak over\nthe "
                "target's",
                ha="center",
                va="center",
                fontsize=text,
                transform=ax_residual.transAxes,
            )
            ax_residual.set_axis_off()
        else:
            ax_image.set_title(titles[k - 1], fontsize=text)
            shown_residual = ax_residual.imshow(residuals[k - 1], origin="lower", cmap="RdBu_r", norm=norm)
            said = ([rf"$\chi^2_\mathrm{{red}}$ = {reduced_chi2[k - 1]:.3g}"] if reduced_chi2 is not None else []) + [
                f"peak x{float(np.nanmax(img)) / target_peak:.2g}"
            ]
            ax_residual.text(
                0.03,
                0.97,
                "\n".join(said),
                transform=ax_residual.transAxes,
                ha="left",
                va="top",
                fontsize=0.85 * text,
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1.5},
                in_layout=False,
            )
        for ax in (ax_image, ax_residual):
            ax.set_xticks([])
            ax.set_yticks([])
    for k in range(len(panels), n_rows * n_columns):
        axes[2 * (k // n_columns), k % n_columns].set_visible(False)
        axes[2 * (k // n_columns) + 1, k % n_columns].set_visible(False)
    bar = fig.colorbar(shown_image, ax=axes[0::2].ravel().tolist(), shrink=0.8)
    bar.set_label(f"images: {label} (one scale for all)", fontsize=text)
    bar.ax.tick_params(labelsize=0.9 * text)
    if shown_residual is not None:
        ticks = [t for t in (-1000, -100, -10, -3, 0, 3, 10, 100, 1000) if abs(t) <= reach]
        bar = fig.colorbar(
            shown_residual, ax=axes[1::2].ravel().tolist(), shrink=0.5, location="bottom", aspect=40, ticks=ticks
        )
        bar.ax.set_xticklabels([f"{t:g}" for t in ticks])
        bar.set_label("residuals: (target - match) / noise rms (linear within +-3, logarithmic beyond)", fontsize=text)
        bar.ax.tick_params(labelsize=0.9 * text)
    return fig


CHI2_RED = r"$\chi^2_\mathrm{red}$"


def band_gallery_plot(
    target_images: np.ndarray,
    images: np.ndarray,
    similarities: np.ndarray,
    *,
    band_names: Sequence[str],
    residuals: np.ndarray,
    reduced_chi2: np.ndarray,
    reduced_chi2_by_band: np.ndarray,
    searched: int = 0,
    captions: Sequence[str] | None = None,
    pixel_size_au: float | None = None,
    unit: str = "Jy/beam",
    cmap: str = "inferno",
):
    """The target in several bands beside its best matches: one column per match, two rows per band (the images,
    then target minus match in that band's noise rms).

    Each band's images share the target's range in that band (bands differ in flux by the spectral index; a
    match brighter than the target saturates, and its residual says by how much); every residual shares
    one diverging scale, linear within +-3 and logarithmic beyond. A match's title gives its joint reduced
    chi-square (:class:`~protolib.goodness_of_fit.BandsFit`); each residual panel, that band's.

    Arguments:
        target_images: ``(bands, H, W)``; ``images``: ``(n, bands, H, W)`` the matches as the target sees them.
        similarities: ``(n,)``; ``band_names``: one per band (e.g. ``"230 GHz"``); ``searched``: the band the network
    searched.
        residuals: ``(n, bands, H, W)``; ``reduced_chi2``: ``(n,)`` joint; ``reduced_chi2_by_band``: ``(bands, n)``.
        captions: an extra line per match; ``pixel_size_au``: a scale bar on the target's first panel.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import SymLogNorm

    n_bands, n = len(band_names), len(images)
    factor, label = display_unit(unit)
    width = 2.0 * (n + 1) + 1.4
    text = page_fontsize(width, 8.5)
    fig, axes = plt.subplots(
        2 * n_bands, n + 1, figsize=(width, 4.1 * n_bands + 0.9), squeeze=False, layout="constrained"
    )
    reach = max(5.0, float(np.percentile(np.abs(residuals), 99.5)))
    norm = SymLogNorm(linthresh=3.0, vmin=-reach, vmax=reach)
    titles = _gallery_titles(similarities, captions, width - 1.4, n + 1, text)
    for b, name in enumerate(band_names):
        row_images, row_residuals = axes[2 * b], axes[2 * b + 1]
        panels = [target_images[b], *images[:, b]]
        lo, hi = _target_scale(target_images[b], factor)
        for k, (ax, image) in enumerate(zip(row_images, panels)):
            shown = ax.imshow(np.asarray(image) * factor, origin="lower", cmap=cmap, vmin=lo, vmax=hi)
            if b == 0:
                ax.set_title(
                    "target\n(its range\nin each band)"
                    if k == 0
                    else titles[k - 1] + f"\njoint {CHI2_RED} {_compact(reduced_chi2[k - 1])}",
                    fontsize=text,
                    color="C3" if k == 0 else "black",
                )
        row_images[0].set_ylabel(f"{name}{' (searched)' if b == searched else ''}", fontsize=text)
        _decorate_target(row_images[0], np.shape(target_images)[-1], pixel_size_au if b == 0 else None, text)
        add_colorbar(row_images[-1], shown, label, fontsize=0.9 * text, size=0.07, n_ticks=3)
        for k, ax in enumerate(row_residuals[1:]):
            residual = ax.imshow(residuals[k, b], origin="lower", cmap="RdBu_r", norm=norm)
            ax.text(
                0.03,
                0.97,
                f"{CHI2_RED} {_compact(reduced_chi2_by_band[b, k])}",
                transform=ax.transAxes,
                ha="left",
                va="top",
                fontsize=0.85 * text,
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1.5},
                in_layout=False,
            )
        row_residuals[0].text(
            0.5,
            0.5,
            f"{name}:\ntarget minus match\nin noise rms",
            ha="center",
            va="center",
            fontsize=text,
            transform=row_residuals[0].transAxes,
        )
        row_residuals[0].set_axis_off()
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    _residual_colorbar(fig, residual, axes[1::2, 1:].ravel().tolist(), reach, text)
    return fig


def _residual_colorbar(fig, mappable, axes, reach: float, text: float) -> None:
    """The residuals' colour bar of :func:`band_gallery_plot`, below them, ticked at the noise levels shown."""
    ticks = [t for t in (-1000, -100, -10, -3, 0, 3, 10, 100, 1000) if abs(t) <= reach]
    bar = fig.colorbar(mappable, ax=axes, shrink=0.5, location="bottom", aspect=40, ticks=ticks)
    bar.ax.set_xticklabels([f"{t:g}" for t in ticks])
    bar.set_label(
        "residuals: (target - match) / that band's noise rms (linear within +-3, logarithmic beyond)", fontsize=text
    )
    bar.ax.tick_params(labelsize=0.9 * text)


def _compact(value: float) -> str:
    """A chi-square for a panel's corner: three figures, whole numbers from 100 on."""
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def spectral_index_plot(
    target_alpha: np.ndarray,
    match_alphas: np.ndarray,
    *,
    low_ghz: float,
    high_ghz: float,
    beam_arcsec: float,
    captions: Sequence[str] | None = None,
    sigma: float = 3.0,
    cmap: str = "RdYlBu_r",
):
    """The target's spectral-index map beside its best matches', on one colour scale.

    Arguments:
        target_alpha: ``(H, W)`` the target's index, NaN where either band is below ``sigma`` times its noise
            (:func:`~protolib.observation.spectral_index_map`); ``match_alphas``: ``(n, H, W)`` the matches', cut alike.
        low_ghz, high_ghz: the two bands; ``beam_arcsec``: the common beam's FWHM (geometric mean).
        captions: one title per match.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    panels = [np.asarray(target_alpha), *np.asarray(match_alphas)]
    known = np.concatenate([p[np.isfinite(p)] for p in panels] + [np.zeros(0)])
    centre = (
        float(np.nanmedian(panels[0]))
        if np.isfinite(panels[0]).any()
        else (float(np.median(known)) if len(known) else 3.0)
    )
    half = max(0.75, float(np.percentile(np.abs(known - centre), 95))) if len(known) else 1.0
    width = 2.2 * len(panels) + 1.0
    text = page_fontsize(width, 8.5)
    fig, axes = plt.subplots(1, len(panels), figsize=(width, 3.2), squeeze=False, layout="constrained")
    colours = plt.get_cmap(cmap).copy()
    colours.set_bad("0.85")
    titles = ["target"] + [
        fit_title(c, width / len(panels), text) for c in (captions or [f"#{i + 1}" for i in range(len(panels) - 1)])
    ]
    for k, (ax, alpha, title) in enumerate(zip(axes[0], panels, titles)):
        shown = ax.imshow(alpha, origin="lower", cmap=colours, vmin=centre - half, vmax=centre + half)
        median = f"median {np.nanmedian(alpha):.2f}" if np.isfinite(alpha).any() else "no pixel above the noise in both"
        ax.set_title(f"{title}\n{median}", fontsize=text, color="C3" if k == 0 else "black")
        ax.set_xticks([])
        ax.set_yticks([])
    bar = fig.colorbar(shown, ax=axes[0].tolist(), shrink=0.9)
    bar.set_label(rf"$\alpha$ ({low_ghz:g}-{high_ghz:g} GHz)", fontsize=text)
    bar.ax.tick_params(labelsize=0.9 * text)
    fig.suptitle(
        rf"Spectral index $\alpha$ ($S \propto \nu^\alpha$) where both bands are above {sigma:g} sigma, at the coarser "
        r"beam "
        f'({beam_arcsec:.2g}"); grey: below it',
        fontsize=text,
    )
    return fig


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
