"""Galleries of a target beside its best matches: in one band (with residuals or without), in several bands, and their
spectral-index maps.

Each takes arrays and plain values and returns the figure; none shows or saves it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..runtime import ProtolibInputError
from .style import add_beam, add_colorbar, add_orientation, add_scale_bar, display_unit, fit_title, page_fontsize

__all__ = ["plot_gallery", "plot_band_gallery", "plot_spectral_index", "CHI2_RED"]


def plot_gallery(
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
    crop_to_source: bool = False,
    beam_au: tuple[float, float, float] | None = None,
):
    """The target beside its best matches, each titled with its similarity.

    Images are shown north up, east left. With ``scale="each"`` every image has its own 0.5-99.8
    percentile range (the network, too, sees each image stretched on its own) and its own colour bar
    below it; with ``scale="target"`` all share the target's range and one colour bar, so that a match
    brighter or fainter than the target shows as such. Colour bars are in ``unit`` (the images' unit,
    shown in mJy: see :func:`~protolib.plots.style.display_unit`). The target's panel, framed in red,
    has the N and E arrows and, with ``pixel_size_au``, a scale bar in au. With ``residuals``, every
    image is on one scale (wide enough that no panel saturates, so a match brighter or fainter than the
    target shows as such) and each match's panel has below it its residual map, target minus match in
    units of the noise rms, on one diverging scale, linear within +-3 and logarithmic beyond (white:
    within the noise), labelled with its reduced chi-square and its peak against the target's.
    With ``crop_to_source``, a source of a few pixels in a wide field is shown in a central box
    :data:`SOURCE_BOX` times as wide as the target's emission (see :func:`source_half_width`), and the target's
    title says so; the chi-squares given are still those of the whole image.

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
        crop_to_source: show only the centre about the source, when it is small in the field (display only).
        beam_au: the target's beam, ``(major, minor, position angle)``: FWHM axes in au and the angle in degrees
            east of north, drawn as an ellipse in the target panel's lower left corner, whole inside it (needs
            ``pixel_size_au``).

    Returns:
        The matplotlib figure.
    """
    if crop_to_source:
        target_image, images, residuals, target_caption = _crop_to_source(
            target_image, images, residuals, target_caption, pixel_size_au
        )
    options = dict(captions=captions, target_caption=target_caption, pixel_size_au=pixel_size_au, cmap=cmap, unit=unit)
    if residuals is not None:
        fig = _gallery_with_residuals(
            target_image, images, similarities, residuals, reduced_chi2, n_columns=n_columns, **options
        )
    elif scale not in ("each", "target"):
        raise ProtolibInputError(f"A gallery's scale is 'each' or 'target', got {scale!r}.")
    else:
        fig = _plain_gallery(
            target_image, images, similarities, n_columns=min(n_columns, len(images) + 1), scale=scale, **options
        )
    if beam_au is not None and pixel_size_au is not None:
        _draw_target_beam(fig.axes[0], np.shape(target_image)[-1], pixel_size_au, beam_au)
    return fig


SOURCE_BOX = 2.0  # a cropped panel's half-width over the largest radius the target's source reaches
SMALLEST_BOX_PIXELS = 8  # a cropped panel's half-width at least, so that a beam or two fit about the source
CROP_BELOW = 2 / 3  # crop only where the box is at most this fraction of the field: a zoom of half again or more


def source_half_width(target_image: np.ndarray) -> int | None:
    """The half-width in pixels of the central box that holds the target's source with as much again about it, or
    ``None`` where that box would be most of the field.

    The source is the brightest pixel's connected region above 5 times the noise rms (from the median absolute
    difference of neighbouring pixels, which a source filling the field does not inflate) and above a tenth of the
    peak; the box reaches :data:`SOURCE_BOX` times its farthest pixel from the centre, at least
    :data:`SMALLEST_BOX_PIXELS`. The matches are cut alike: their residuals beyond it are in the chi-square."""
    from scipy import ndimage

    image = np.nan_to_num(np.asarray(target_image, dtype=np.float64))
    size = image.shape[-1]
    rows, columns = np.indices(image.shape) - 0.5 * (size - 1)
    noise = 1.4826 * np.median(np.abs(np.diff(image, axis=-1))) / np.sqrt(2.0)
    labels, _ = ndimage.label(image > max(5.0 * noise, 0.1 * image.max()))
    peak = labels.flat[np.argmax(image)]
    reach = float(np.hypot(rows, columns)[labels == peak].max()) if peak else 0.5 * size
    half = int(np.ceil(max(SOURCE_BOX * reach, SMALLEST_BOX_PIXELS)))
    return half if 2 * half <= CROP_BELOW * size else None


def _crop_to_source(target_image, images, residuals, target_caption: str, pixel_size_au: float | None):
    """The panels cut to the central box about the source (:func:`source_half_width`), and the target's title saying
    how much of the field is shown; unchanged where the source fills much of the field."""
    target_image, images = np.asarray(target_image), np.asarray(images)
    half = source_half_width(target_image)
    if half is None:
        return target_image, images, residuals, target_caption
    size = target_image.shape[-1]
    box = slice(size // 2 - half, size // 2 + half)
    cut = (Ellipsis, box, box)
    shown = (
        f"{2 * half * pixel_size_au:,.0f} au\nof {size * pixel_size_au:,.0f} au"
        if pixel_size_au
        else f"{2 * half} pixels\nof {size}"
    )
    residuals = None if residuals is None else np.asarray(residuals)[cut]
    return target_image[cut], images[cut], residuals, f"{target_caption}\n(central {shown})"


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


def _draw_target_beam(ax, image_size: int, pixel_size_au: float | None, beam_au: tuple[float, float, float] | None):
    """The target's beam ``(major, minor [au], position angle [deg])`` in its panel's lower left corner, whole inside
    it: the panel is put on axes in au (east to the left, as every panel is drawn) so that the beam is to scale.
    Nothing is drawn without a beam or a pixel size."""
    if beam_au is None or pixel_size_au is None:
        return
    half = 0.5 * image_size * pixel_size_au
    for image in ax.get_images():
        image.set_extent((half, -half, -half, half))
    ax.set_xlim(half, -half)
    ax.set_ylim(-half, half)
    add_beam(ax, half, *beam_au)


def _target_scale(target_image, factor: float) -> tuple[float, float]:
    """The colour range of a gallery's image (the target's when shared): its 0.5-99.8 percentiles, in the shown unit."""
    lo, hi = np.percentile(np.asarray(target_image, dtype=np.float64) * factor, [0.5, 99.8])
    return float(lo), float(hi if hi > lo else lo + max(abs(lo), 1e-12) * 1e-6)


def _plain_gallery(
    target_image, images, similarities, *, captions, target_caption, n_columns, pixel_size_au, cmap, unit, scale
):
    """:func:`plot_gallery` without residuals: each image on its own scale (or all on the target's), the target framed
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
    """:func:`plot_gallery` with a residual row under each row of images, all images on one scale."""
    panels = [np.asarray(target_image)] + list(np.asarray(images))
    factor, label = display_unit(unit)
    fig, axes, titles, text = _residual_gallery_layout(len(panels), similarities, captions, target_caption, n_columns)
    image_norm, stretched = _shared_norm(panels, factor)
    target_peak = float(np.nanmax(panels[0])) or 1.0
    reach, norm = _residual_norm(residuals)
    shown_image = shown_residual = None
    for k, img in enumerate(panels):
        ax_image, ax_residual = axes[2 * (k // n_columns), k % n_columns], axes[2 * (k // n_columns) + 1, k % n_columns]
        shown_image = ax_image.imshow(img * factor, origin="lower", cmap=cmap, norm=image_norm)
        if k == 0:
            ax_image.set_title(titles[0], fontsize=text, color="C3")
            _decorate_target(ax_image, np.shape(target_image)[-1], pixel_size_au, text)
            _residual_legend(ax_residual, RESIDUAL_LEGEND, text)
        else:
            ax_image.set_title(titles[k], fontsize=text)
            shown_residual = ax_residual.imshow(residuals[k - 1], origin="lower", cmap="RdBu_r", norm=norm)
            _corner_note(ax_residual, _residual_note(reduced_chi2, k - 1, img, target_peak), text)
        for ax in (ax_image, ax_residual):
            ax.set_xticks([])
            ax.set_yticks([])
    _hide_unused(axes, len(panels), n_columns)
    _residual_gallery_colorbars(
        fig, axes, shown_image, shown_residual, label + (", asinh stretch" if stretched else ""), reach, text
    )
    return fig


def _hide_unused(axes, n_panels: int, n_columns: int) -> None:
    """Hide the image and residual axes past the last panel of a residual gallery."""
    for k in range(n_panels, axes.size // 2):
        axes[2 * (k // n_columns), k % n_columns].set_visible(False)
        axes[2 * (k // n_columns) + 1, k % n_columns].set_visible(False)


STRETCH_ABOVE = 1.5  # a shared range this many times the target's own top is shown with an asinh stretch


def _shared_norm(panels: list[np.ndarray], factor: float):
    """One colour scale for every panel of a residual gallery, wide enough that none saturates; and whether it is
    stretched. Where a match is much brighter than the target (its range over :data:`STRETCH_ABOVE` times the
    target's), a linear scale leaves the target dark, so the scale is an asinh stretch, linear up to a third of the
    target's top: the target stays visible and a brighter match does not saturate (its panel's "peak xN" says by how
    much it is brighter)."""
    from matplotlib.colors import AsinhNorm, Normalize

    scales = [_target_scale(img, factor) for img in panels]  # one range that saturates no panel
    lo, hi = min(a for a, _ in scales), max(b for _, b in scales)
    target_top = scales[0][1]
    if target_top <= 0 or hi <= STRETCH_ABOVE * target_top:
        return Normalize(vmin=lo, vmax=hi), False
    return AsinhNorm(linear_width=target_top / 3.0, vmin=lo, vmax=hi), True


RESIDUAL_LEGEND = (
    "below each match:\ntarget minus match\nin noise rms; its\n"
    "reduced chi-square\n(whole image), its\npeak over the target's"
)


def _residual_gallery_layout(n_panels: int, similarities, captions, target_caption: str, n_columns: int):
    """The figure of a residual gallery, two rows of axes (images, residuals) per row of panels, tall enough for the
    longest title; returns it, its axes, every panel's title (the target's first) and the text size."""
    import matplotlib.pyplot as plt

    n_rows, width = int(np.ceil(n_panels / n_columns)), 2.2 * n_columns + 1.2
    text = page_fontsize(width, 8.5)
    titles = [fit_title(target_caption, width / n_columns, text)] + _gallery_titles(
        similarities, captions, width - 1.2, n_columns, text
    )
    lines = max(t.count("\n") + 1 for t in titles)
    pair_in = 2 * 2.05 + 1.25 * lines * text / 72  # an image with its title, and its residual
    fig, axes = plt.subplots(
        2 * n_rows, n_columns, figsize=(width, pair_in * n_rows + 0.8), squeeze=False, layout="constrained"
    )
    return fig, axes, titles, text


def _residual_norm(residuals: np.ndarray):
    """``(reach, norm)``: the residuals' one diverging scale, linear within +-3 noise rms and logarithmic beyond, out
    to their 99.5th percentile of |residual| (at least 5)."""
    from matplotlib.colors import SymLogNorm

    reach = max(5.0, float(np.percentile(np.abs(residuals), 99.5)))
    return reach, SymLogNorm(linthresh=3.0, vmin=-reach, vmax=reach)


def _residual_legend(ax, message: str, fontsize: float) -> None:
    """``message`` in the middle of an empty panel (the target has no residual): what the residual panels show."""
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=fontsize, transform=ax.transAxes)
    ax.set_axis_off()


def _residual_note(reduced_chi2, k: int, image: np.ndarray, target_peak: float) -> str:
    """Match ``k``'s residual label: its reduced chi-square (when known) and its peak over the target's."""
    said = [f"{CHI2_RED} = {_compact(reduced_chi2[k])}"] if reduced_chi2 is not None else []
    return "\n".join(said + [f"peak x{float(np.nanmax(image)) / target_peak:.2g}"])


def _corner_note(ax, note: str, fontsize: float) -> None:
    """``note`` in a white box in the upper left corner of a residual panel, outside the layout."""
    ax.text(
        0.03,
        0.97,
        note,
        transform=ax.transAxes,
        ha="left",
        va="top",
        fontsize=0.85 * fontsize,
        bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1.5},
        in_layout=False,
    )


def _residual_gallery_colorbars(fig, axes, shown_image, shown_residual, label: str, reach: float, text: float) -> None:
    """The residual gallery's two colour bars: the images' one scale beside them, the residuals' below."""
    bar = fig.colorbar(shown_image, ax=axes[0::2].ravel().tolist(), shrink=0.8)
    _spread_ticks(bar)
    bar.set_label(f"images: {label} (one scale for all)", fontsize=text)
    bar.ax.tick_params(labelsize=0.9 * text)
    if shown_residual is not None:
        _residual_colorbar(
            fig,
            shown_residual,
            axes[1::2].ravel().tolist(),
            reach,
            text,
            "residuals: (target - match) / noise rms (linear within +-3, logarithmic beyond)",
        )


CHI2_RED = r"$\chi^2_\mathrm{red}$"


def _spread_ticks(bar, min_gap: float = 0.06) -> None:
    """Keep only colour-bar ticks at least ``min_gap`` (a fraction of the bar) apart, 0 first and then from the top:
    an asinh scale puts 0 and 1 nearly together at its foot, where their labels would overlap."""
    norm = bar.mappable.norm
    ticks = [float(t) for t in bar.get_ticks() if norm.vmin <= t <= norm.vmax]
    kept: list[float] = []
    for t in sorted(ticks, key=lambda t: (t != 0.0, -t)):
        if all(abs(float(norm(t)) - float(norm(k))) >= min_gap for k in kept):
            kept.append(t)
    bar.set_ticks(sorted(kept))


def plot_band_gallery(
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
    beam_au: Sequence[tuple[float, float, float] | None] | None = None,
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
        beam_au: each band's beam ``(major, minor [au], position angle [deg])`` (or ``None``), drawn in the target's
            panel of that band (needs ``pixel_size_au``).

    Returns:
        The matplotlib figure.
    """
    factor, label = display_unit(unit)
    fig, axes, text = _band_gallery_layout(len(band_names), len(images))
    reach, norm = _residual_norm(residuals)
    titles = ["target\n(its range\nin each band)"] + [
        title + f"\njoint {CHI2_RED} {_compact(chi2)}"
        for title, chi2 in zip(
            _gallery_titles(similarities, captions, fig.get_figwidth() - 1.4, len(images) + 1, text), reduced_chi2
        )
    ]
    for b, name in enumerate(band_names):
        row_images = axes[2 * b]
        shown = _band_images(
            row_images, [target_images[b], *images[:, b]], titles if b == 0 else None, factor, cmap, text
        )
        row_images[0].set_ylabel(f"{name}{' (searched)' if b == searched else ''}", fontsize=text)
        _decorate_target(row_images[0], np.shape(target_images)[-1], pixel_size_au if b == 0 else None, text)
        _draw_target_beam(row_images[0], np.shape(target_images)[-1], pixel_size_au, (beam_au or [None] * (b + 1))[b])
        add_colorbar(row_images[-1], shown, label, fontsize=0.9 * text, size=0.07, n_ticks=3)
        residual = _band_residuals(axes[2 * b + 1], name, residuals[:, b], reduced_chi2_by_band[b], norm, text)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    _residual_colorbar(fig, residual, axes[1::2, 1:].ravel().tolist(), reach, text, BAND_RESIDUAL_LABEL)
    return fig


BAND_RESIDUAL_LABEL = "residuals: (target - match) / that band's noise rms (linear within +-3, logarithmic beyond)"


def _band_gallery_layout(n_bands: int, n: int):
    """The figure of a band gallery: two rows of axes (images, residuals) per band, a column for the target and one
    per match; returns it, its axes and the text size."""
    import matplotlib.pyplot as plt

    width = 2.0 * (n + 1) + 1.4
    fig, axes = plt.subplots(
        2 * n_bands, n + 1, figsize=(width, 4.1 * n_bands + 0.9), squeeze=False, layout="constrained"
    )
    return fig, axes, page_fontsize(width, 8.5)


def _band_images(row, panels: list, titles: list[str] | None, factor: float, cmap: str, text: float):
    """One band's row of images, the target first, all on the target's range in that band; titled when ``titles`` are
    given (the first band). Returns the last panel's image, for the row's colour bar."""
    lo, hi = _target_scale(panels[0], factor)
    for k, (ax, image) in enumerate(zip(row, panels)):
        shown = ax.imshow(np.asarray(image) * factor, origin="lower", cmap=cmap, vmin=lo, vmax=hi)
        if titles is not None:
            ax.set_title(titles[k], fontsize=text, color="C3" if k == 0 else "black")
    return shown


def _band_residuals(row, name: str, residuals: np.ndarray, reduced_chi2: np.ndarray, norm, text: float):
    """One band's row of residuals ``(n, H, W)``, each labelled with its reduced chi-square in that band, under the
    target's empty panel saying what they are. Returns the last one's image, for the colour bar."""
    for k, ax in enumerate(row[1:]):
        residual = ax.imshow(residuals[k], origin="lower", cmap="RdBu_r", norm=norm)
        _corner_note(ax, f"{CHI2_RED} {_compact(reduced_chi2[k])}", text)
    _residual_legend(row[0], f"{name}:\ntarget minus match\nin noise rms", text)
    return residual


def _residual_colorbar(fig, mappable, axes, reach: float, text: float, label: str) -> None:
    """The residuals' colour bar, below them, ticked at the noise levels shown."""
    ticks = [t for t in (-1000, -100, -10, -3, 0, 3, 10, 100, 1000) if abs(t) <= reach]
    bar = fig.colorbar(mappable, ax=axes, shrink=0.5, location="bottom", aspect=40, ticks=ticks)
    bar.ax.set_xticklabels([f"{t:g}" for t in ticks])
    bar.set_label(label, fontsize=text)
    bar.ax.tick_params(labelsize=0.9 * text)


def _compact(value: float) -> str:
    """A chi-square for a panel's corner: three figures, whole numbers from 100 on."""
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def plot_spectral_index(
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
    centre, half = _index_range(panels)
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


def _index_range(panels: list[np.ndarray]) -> tuple[float, float]:
    """``(centre, half)``: the spectral-index maps' one colour range, centred on the target's median index (else all
    the maps', else 3) and reaching 95% of the known pixels (at least +-0.75)."""
    known = np.concatenate([p[np.isfinite(p)] for p in panels] + [np.zeros(0)])
    centre = (
        float(np.nanmedian(panels[0]))
        if np.isfinite(panels[0]).any()
        else (float(np.median(known)) if len(known) else 3.0)
    )
    half = max(0.75, float(np.percentile(np.abs(known - centre), 95))) if len(known) else 1.0
    return centre, half
