"""The figure of a prepared observation: :func:`plot_prepared_observation`, the original beside the prepared image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.wcs.utils import proj_plane_pixel_scales

from .fits import DEG_ARCSEC
from .prepared import PreparedObservation

__all__ = ["plot_prepared_observation"]


def plot_prepared_observation(prepared: PreparedObservation, *, cmap: str = "inferno"):
    """The original observation beside the prepared image, north up, east left; returns the figure.

    Both panels have axes in au from the centre (the original at the observed distance, the prepared
    image at the bank's), a scale bar in au and the beam drawn in the lower left.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Ellipse

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), layout="constrained")
    field_au = prepared.grid.field_of_view_au
    half = 0.75 * field_au  # the original is shown over 1.5 bank fields

    def decorate(ax, beam_au_major, beam_au_minor, pa, half_width, title):
        bar = _scale_bar_au(2 * half_width)
        x0, y0 = half_width * 0.9, -half_width * 0.85
        ax.plot([x0 - bar, x0], [y0, y0], color="white", lw=2)  # x axis runs east to the left: bar drawn leftwards
        ax.text(x0 - bar / 2, y0 + half_width * 0.04, f"{bar:g} au", color="white", ha="center", va="bottom", fontsize=9)
        ax.add_patch(Ellipse((-half_width * 0.8, -half_width * 0.8), beam_au_minor, beam_au_major, angle=-pa,
                             facecolor="none", edgecolor="white", lw=1.5))
        ax.set_xlim(half_width, -half_width)
        ax.set_ylim(-half_width, half_width)
        ax.set_xlabel("offset east [au]")
        ax.set_ylabel("offset north [au]")
        ax.set_title(title, fontsize=10)

    original = prepared.original
    if original is not None:
        x, y = original.wcs.world_to_pixel(prepared.centre)
        scales = proj_plane_pixel_scales(original.wcs) * DEG_ARCSEC * prepared.distance_pc  # au per pixel
        ny, nx = original.image_jy_beam.shape
        cols_au = (np.arange(nx) - float(x)) * scales[0]
        rows_au = (np.arange(ny) - float(y)) * scales[1]
        east_sign = -1.0 if original.wcs.wcs.get_pc()[0, 0] * original.wcs.wcs.cdelt[0] < 0 else 1.0
        extent = [east_sign * (cols_au[0] - scales[0] / 2), east_sign * (cols_au[-1] + scales[0] / 2),
                  rows_au[0] - scales[1] / 2, rows_au[-1] + scales[1] / 2]
        im = axes[0].imshow(original.image_jy_beam * 1e3, origin="lower", extent=extent, cmap=cmap, interpolation="nearest")
        fig.colorbar(im, ax=axes[0], label="mJy/beam (observed)", shrink=0.85)
        ob = original.beam
        decorate(axes[0], ob.major_arcsec * prepared.distance_pc, ob.minor_arcsec * prepared.distance_pc, ob.position_angle_deg,
                 half, f"{Path(prepared.source_path).name} at {prepared.distance_pc:g} pc")
    else:
        axes[0].set_axis_off()
    half_bank = field_au / 2
    extent = [half_bank, -half_bank, -half_bank, half_bank]
    im = axes[1].imshow(prepared.image_jy_beam * 1e3, origin="lower", extent=extent, cmap=cmap, interpolation="nearest")
    fig.colorbar(im, ax=axes[1], label="mJy/beam (at bank distance)", shrink=0.85)
    b = prepared.beam
    d_bank = prepared.grid.distance_pc
    decorate(axes[1], b.major_arcsec * d_bank, b.minor_arcsec * d_bank, b.position_angle_deg, half_bank,
             f"prepared: {prepared.grid.image_size}x{prepared.grid.image_size} px, {prepared.grid.pixel_size_au:.3g} au/px, "
             f"at {d_bank:g} pc")
    return fig


def _scale_bar_au(field_au: float) -> float:
    """A round length [au] near a quarter of ``field_au``, for the scale bar."""
    target = field_au / 4.0
    return float(min((b for b in (10, 20, 50, 100, 200, 500, 1000, 2000, 5000)), key=lambda b: abs(b - target)))
