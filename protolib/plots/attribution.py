"""The figure of a pair's attribution maps (:mod:`protolib.attribution`): each image beside its map."""

from __future__ import annotations

import numpy as np
from matplotlib.colors import TwoSlopeNorm

from .style import add_beam, add_colorbar, add_orientation, add_scale_bar, draw_image, image_extent_au, page_fontsize

__all__ = ["plot_pair_attributions"]


def plot_pair_attributions(
    image_a: np.ndarray,
    image_b: np.ndarray,
    map_a: np.ndarray,
    map_b: np.ndarray,
    *,
    pixel_size_au: float,
    titles: tuple[str, str] = ("image A", "image B"),
    suptitle: str | None = None,
    unit: str | None = "Jy/beam",
    beam_au: tuple[float, float, float] | None = None,
):
    """Each image beside its attribution map (one row per image), north up and east left, axes in au.

    The images have colour bars in ``unit`` (their unit, shown in mJy); the maps share one diverging
    colour scale centred on zero, in similarity per stretched pixel: red pixels raise the similarity,
    blue ones lower it. The first image has a scale bar in au and the N and E arrows; with ``beam_au`` (major and
    minor FWHM [au], position angle [deg] east of north, the beam both images are seen at) each image draws it.

    Returns:
        The figure.
    """
    import matplotlib.pyplot as plt

    fig, grid = plt.subplots(2, 2, figsize=(7.4, 6.4), constrained_layout=True)
    axes = grid.ravel()  # image A, map A, image B, map B
    text, tick = page_fontsize(fig, 8.5), page_fontsize(fig, 7.5)
    limit = max(float(np.abs(map_a).max()), float(np.abs(map_b).max()), 1e-12)
    norm = TwoSlopeNorm(0.0, -limit, limit)
    for ax_image, ax_map, image, attribution, title in (
        (axes[0], axes[1], image_a, map_a, titles[0]),
        (axes[2], axes[3], image_b, map_b, titles[1]),
    ):
        draw_image(ax_image, image, pixel_size_au=pixel_size_au, title=title, unit=unit)
        _draw_attribution(ax_map, attribution, norm, pixel_size_au=pixel_size_au, title=title, fontsize=text)
    for ax in axes:
        ax.tick_params(labelsize=tick)
        ax.title.set_fontsize(text)
    for ax in grid[-1]:
        ax.set_xlabel("east offset [au]", fontsize=text)
    for ax in grid[:, 0]:
        ax.set_ylabel("north offset [au]", fontsize=text)
    if beam_au is not None:
        for ax in (axes[0], axes[2]):
            add_beam(ax, np.shape(image_a)[-1] * pixel_size_au / 2.0, *beam_au, lw=1.0)
    add_scale_bar(axes[0], np.shape(image_a)[-1] * pixel_size_au, fontsize=text)
    add_orientation(axes[0], fontsize=text)
    if suptitle:
        fig.suptitle(suptitle, fontsize=page_fontsize(fig, 10))
    return fig


def _draw_attribution(ax, attribution: np.ndarray, norm, *, pixel_size_au: float, title: str, fontsize: float) -> None:
    """One attribution map on ``ax``, north up and east left on the diverging ``norm``, with its colour bar."""
    handle = ax.imshow(
        attribution,
        origin="lower",
        extent=image_extent_au(attribution.shape[-1], pixel_size_au),
        cmap="RdBu_r",
        norm=norm,
    )
    ax.set_title(f"attribution, {title}", fontsize=fontsize)
    add_colorbar(ax, handle, "similarity per pixel", fontsize=fontsize)
