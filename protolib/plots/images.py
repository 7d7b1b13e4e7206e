"""Figures of image stacks: a grid of images, and one system through the instrument (clean, with beam, with noise).

Both take arrays and plain values and return the figure, drawn in the page style of :mod:`.style`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np

from .style import (
    add_beam,
    add_colorbar,
    add_orientation,
    add_scale_bar,
    display_unit,
    draw_image,
    image_norm,
    page_fontsize,
)

if TYPE_CHECKING:
    from ..instrument import Beam

__all__ = ["plot_image_grid", "plot_instrument_effects"]


def plot_image_grid(
    images: np.ndarray,
    *,
    pixel_size_au: float,
    titles=None,
    row_labels=None,
    stretch: str = "asinh",
    panel_size: float = 1.8,
    suptitle: str | None = None,
    unit: str | None = None,
    beam_au: tuple[float, float, float] | None = None,
):
    """A grid of images ``(rows, columns, H, W)`` with per-panel titles and per-row labels.

    Each row shares one colour scale, shown by a colour bar at its end in ``unit`` (the images' unit,
    e.g. ``"Jy/beam"``; see :func:`display_unit`). The first panel has a scale bar in au and the N and
    E arrows. With ``beam_au``, the images' beam ``(major, minor [au], position angle [deg])``, the first panel
    of every row draws it in its lower left.
    """
    images = np.asarray(images)
    n_rows, n_cols = images.shape[:2]
    fig, axes = plt.subplots(
        n_rows,
        n_cols,
        figsize=(panel_size * n_cols + 0.9, panel_size * n_rows),
        squeeze=False,
        sharex=True,
        sharey=True,
        layout="constrained",
    )
    factor, label = display_unit(unit)
    tick, text = page_fontsize(fig, 7.5), page_fontsize(fig, 8.5)
    for r in range(n_rows):
        row_titles = titles[r] if titles is not None else None
        handle = _image_row(axes[r], images[r] * factor, row_titles, pixel_size_au, stretch, text, tick)
        add_colorbar(axes[r, -1], handle, label, fontsize=text)
        if row_labels is not None:
            axes[r, 0].set_ylabel(row_labels[r], fontsize=text)
        if beam_au is not None:
            add_beam(axes[r, 0], images.shape[-1] * pixel_size_au / 2.0, *beam_au, lw=1.0)
    for c in range(n_cols):
        axes[-1, c].set_xlabel("east offset [au]", fontsize=text)
    add_scale_bar(axes[0, 0], images.shape[-1] * pixel_size_au, fontsize=text)
    add_orientation(axes[0, 0], fontsize=text)
    if suptitle:
        fig.suptitle(suptitle, fontsize=page_fontsize(fig, 10))
    return fig


def _image_row(axes, images: np.ndarray, titles, pixel_size_au: float, stretch: str, text: float, tick: float):
    """One row of :func:`plot_image_grid`: its images (already in the shown unit) on one shared colour scale, each
    titled when ``titles`` are given; returns the last image, for the row's colour bar."""
    norm = image_norm(images, stretch)
    for ax, image, title in zip(axes, images, titles if titles is not None else [None] * len(images)):
        handle = draw_image(ax, image, pixel_size_au=pixel_size_au, norm=norm)
        if title is not None:
            ax.set_title(title, fontsize=text)
        ax.tick_params(labelsize=tick)
    return handle


def plot_instrument_effects(
    clean: np.ndarray,
    convolved: np.ndarray,
    observed: np.ndarray,
    *,
    pixel_size_au: float,
    beam: Beam,
    distance_pc: float,
    titles=("clean model", "with beam", "beam + noise"),
    units=("Jy/pixel", "Jy/beam", "Jy/beam"),
):
    """The same system as a clean model, through the beam, and with thermal noise, one row per view ``(rows, H, W)``.

    Every panel has its own asinh scale and colour bar in its unit (``units``, shown in mJy); the
    beam panels show the beam (lower left), the first panel a scale bar and the N and E arrows.
    """
    rows = np.asarray(clean).shape[0]
    fig, axes = plt.subplots(rows, 3, figsize=(9.0, 2.6 * rows), squeeze=False, layout="constrained")
    tick, text = page_fontsize(fig, 7.5), page_fontsize(fig, 8.5)
    for r in range(rows):
        for c, (stack, title, unit) in enumerate(zip((clean, convolved, observed), titles, units)):
            draw_image(
                axes[r, c],
                stack[r],
                pixel_size_au=pixel_size_au,
                stretch="asinh",
                unit=unit,
                beam=beam if c > 0 else None,
                distance_pc=distance_pc,
            )
            if r == 0:
                axes[r, c].set_title(title, fontsize=text)
            axes[r, c].tick_params(labelsize=tick)
        axes[r, 0].set_ylabel("north offset [au]", fontsize=text)
    for c in range(3):
        axes[-1, c].set_xlabel("east offset [au]", fontsize=text)
    add_scale_bar(axes[0, 0], np.shape(clean)[-1] * pixel_size_au, fontsize=text)
    add_orientation(axes[0, 0], fontsize=text)
    return fig
