"""The figure of a prepared observation: :func:`plot_prepared_observation`, the original beside the prepared image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.wcs.utils import proj_plane_pixel_scales

from ..observation.fits import DEG_ARCSEC
from ..observation.prepared import PreparedObservation
from .style import add_beam, add_colorbar, add_orientation, add_scale_bar, page_fontsize

__all__ = ["plot_prepared_observation"]


def plot_prepared_observation(prepared: PreparedObservation, *, cmap: str = "inferno"):
    """The original observation beside the prepared image, north up, east left; returns the figure.

    Both panels have axes in au from the centre (the original at the observed distance, the prepared
    image at the bank's), a colour bar in mJy/beam, a scale bar in au, the N and E arrows and the beam
    drawn in the lower left.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), layout="constrained")
    text, tick = page_fontsize(fig, 8.5), page_fontsize(fig, 7.5)
    field_au = prepared.grid.field_of_view_au
    original = prepared.original
    if original is not None:
        extent = _original_extent_au(prepared)
        im = axes[0].imshow(
            original.image_jy_beam * 1e3,
            origin="lower",
            extent=extent,
            cmap=cmap,
            interpolation="nearest",
            norm=_shown_range(original.image_jy_beam * 1e3, extent, 0.75 * field_au),
        )
        title = f"{Path(prepared.source_path).name} at {prepared.distance_pc:g} pc"
        # the original is shown over 1.5 bank fields
        _decorate(
            axes[0], im, original.beam, prepared.distance_pc, 0.75 * field_au, title, "mJy/beam (observed)", text, tick
        )
    else:
        axes[0].set_axis_off()
    half_bank = field_au / 2
    extent = [half_bank, -half_bank, -half_bank, half_bank]
    im = axes[1].imshow(prepared.image_jy_beam * 1e3, origin="lower", extent=extent, cmap=cmap, interpolation="nearest")
    grid = prepared.grid
    title = (
        f"prepared: {grid.image_size}x{grid.image_size} px, {grid.pixel_size_au:.3g} au/px,\nat {grid.distance_pc:g} pc"
    )
    _decorate(axes[1], im, prepared.beam, grid.distance_pc, half_bank, title, "mJy/beam (at bank distance)", text, tick)
    return fig


def _shown_range(image: np.ndarray, extent: list[float], half_width: float):
    """The colour range of the pixels within ``half_width`` [au] of the centre, the part of the map shown, so that a
    brighter source elsewhere in the map (IRS3B beside IRS3A) does not set the scale of this one."""
    from matplotlib.colors import Normalize

    ny, nx = image.shape
    columns = np.linspace(extent[0], extent[1], 2 * nx + 1)[1::2]  # pixel centres [au]
    rows = np.linspace(extent[2], extent[3], 2 * ny + 1)[1::2]
    inside = (np.abs(rows)[:, None] <= half_width) & (np.abs(columns)[None, :] <= half_width)
    shown = image[inside & np.isfinite(image)]
    return Normalize(float(shown.min()), float(shown.max())) if shown.size else None


def _original_extent_au(prepared: PreparedObservation) -> list[float]:
    """The ``imshow`` extent [au] of the original map about the source's centre, at the observed distance, east to the
    left whichever way the map's columns run."""
    original = prepared.original
    x, y = original.wcs.world_to_pixel(prepared.centre)
    scales = proj_plane_pixel_scales(original.wcs) * DEG_ARCSEC * prepared.distance_pc  # au per pixel
    ny, nx = original.image_jy_beam.shape
    cols_au = (np.arange(nx) - float(x)) * scales[0]
    rows_au = (np.arange(ny) - float(y)) * scales[1]
    east_sign = -1.0 if original.wcs.wcs.get_pc()[0, 0] * original.wcs.wcs.cdelt[0] < 0 else 1.0
    return [
        east_sign * (cols_au[0] - scales[0] / 2),
        east_sign * (cols_au[-1] + scales[0] / 2),
        rows_au[0] - scales[1] / 2,
        rows_au[-1] + scales[1] / 2,
    ]


def _decorate(ax, image, beam, distance_pc: float, half_width: float, title: str, label: str, text: float, tick: float):
    """One panel of :func:`plot_prepared_observation`: colour bar, scale bar, N and E arrows, the beam (at
    ``distance_pc``), a field ``2 half_width`` [au] across, axis labels and title."""
    add_colorbar(ax, image, label, fontsize=text, size=0.05)
    add_scale_bar(ax, 2 * half_width, fontsize=text)
    add_orientation(ax, fontsize=text)
    # the beam, lower left, whole inside the panel
    add_beam(ax, half_width, beam.major_arcsec * distance_pc, beam.minor_arcsec * distance_pc, beam.position_angle_deg)
    ax.set_xlim(half_width, -half_width)
    ax.set_ylim(-half_width, half_width)
    ax.set_xlabel("offset east [au]", fontsize=text)
    ax.set_ylabel("offset north [au]", fontsize=text)
    ax.tick_params(labelsize=tick)
    ax.set_title(title, fontsize=text)
