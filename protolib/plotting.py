"""Figures of images and banks: galleries, the prior, the instrument's effect, the split.

Every function takes data and keyword-only options and returns the :class:`matplotlib.figure.Figure`;
none calls ``show()`` or ``savefig()``. Images are drawn north up, east left, with offsets in au.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Ellipse

from .bank import Bank
from .instrument import Beam
from .normalise import scale_parameters
from .parameters import PARAMETERS

__all__ = ["image_extent_au", "draw_image", "plot_image_grid", "plot_parameter_gallery", "plot_prior_corner",
           "plot_instrument_effects", "plot_split"]


def image_extent_au(image_size: int, pixel_size_au: float) -> tuple[float, float, float, float]:
    """``imshow`` extent for an image with rows north and columns west: east offset runs right to left."""
    half = image_size * pixel_size_au / 2.0
    return (half, -half, -half, half)


def draw_image(ax, image: np.ndarray, *, pixel_size_au: float, stretch: str = "asinh", beam: Beam | None = None,
               distance_pc: float | None = None, title: str | None = None, cmap: str = "inferno", colorbar_label: str | None = None):
    """Draw one image on ``ax``: north up, east left, axes in au, optional beam ellipse.

    ``stretch`` is ``"linear"``, ``"asinh"`` (shows faint envelopes next to bright disks) or ``"log"``.
    Returns the ``AxesImage``.
    """
    from matplotlib.colors import AsinhNorm, LogNorm, Normalize

    peak = float(np.nanmax(image)) if np.isfinite(image).any() else 1.0
    if stretch == "asinh":
        norm = AsinhNorm(linear_width=max(peak, 1e-30) * 0.02, vmin=min(0.0, float(np.nanmin(image))), vmax=peak)
    elif stretch == "log":
        norm = LogNorm(vmin=max(peak, 1e-30) * 1e-3, vmax=max(peak, 1e-30))
    else:
        norm = Normalize(vmin=float(np.nanmin(image)), vmax=peak)
    handle = ax.imshow(image, origin="lower", extent=image_extent_au(image.shape[-1], pixel_size_au), cmap=cmap, norm=norm)
    if beam is not None and distance_pc is not None:
        half = image.shape[-1] * pixel_size_au / 2.0
        ax.add_patch(Ellipse((0.8 * half, -0.8 * half), beam.minor_arcsec * distance_pc, beam.major_arcsec * distance_pc,
                             angle=beam.position_angle_deg, facecolor="none", edgecolor="white", lw=1.0))
    if title:
        ax.set_title(title, fontsize=8)
    if colorbar_label:
        ax.figure.colorbar(handle, ax=ax, label=colorbar_label, fraction=0.046, pad=0.04)
    return handle


def plot_image_grid(images: np.ndarray, *, pixel_size_au: float, titles=None, row_labels=None, stretch: str = "asinh",
                    panel_size: float = 1.8, suptitle: str | None = None):
    """A grid of images ``(rows, columns, H, W)`` with per-panel titles and per-row labels."""
    images = np.asarray(images)
    n_rows, n_cols = images.shape[:2]
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(panel_size * n_cols, panel_size * n_rows), squeeze=False,
                             sharex=True, sharey=True, constrained_layout=True)
    for r in range(n_rows):
        for c in range(n_cols):
            draw_image(axes[r, c], images[r, c], pixel_size_au=pixel_size_au, stretch=stretch,
                       title=None if titles is None else titles[r][c])
            axes[r, c].tick_params(labelsize=6)
        if row_labels is not None:
            axes[r, 0].set_ylabel(row_labels[r], fontsize=7)
    for c in range(n_cols):
        axes[-1, c].set_xlabel("east offset [au]", fontsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return fig


def plot_parameter_gallery(bank: Bank, parameter: str, *, n_systems: int = 5, n_projections: int = 4, stretch: str = "asinh"):
    """Systems spanning ``parameter`` (rows, low to high) seen at their projections (columns, by inclination)."""
    values = bank.parameters[parameter]
    order = np.argsort(values)
    picks = order[np.linspace(0, len(order) - 1, min(n_systems, len(order))).round().astype(int)]
    images, titles, labels = [], [], []
    info = bank.parameter_info[parameter]
    for system in picks:
        incl = bank.inclination[system]
        cols = np.argsort(incl)[np.linspace(0, bank.n_projections - 1, min(n_projections, bank.n_projections)).round().astype(int)]
        images.append(bank.load_images([system])[0][cols])
        titles.append([f"i = {incl[c]:.0f} deg" for c in cols])
        labels.append(f"{info.label or parameter} = {values[system]:.3g} {info.unit}\nnorth offset [au]")
    return plot_image_grid(np.stack(images), pixel_size_au=bank.pixel_size_au, titles=titles, row_labels=labels,
                           stretch=stretch, suptitle=f"Bank images ordered by {parameter} [{info.unit}] ({bank.unit}, asinh stretch)")


def plot_prior_corner(bank: Bank, names: list[str] | None = None, *, systems=None, color: str = "k", fig=None, bins: int = 20):
    """Corner plot of the bank's parameters (log10 for log-scaled ones): the prior of the matching stage."""
    import corner

    names = names or [n for n in PARAMETERS if n in bank.parameters and n not in ("disk_scale_height", "cavity_angle")]
    table = bank.parameter_table(names)
    if systems is not None:
        table = table[np.asarray(systems)]
    logged = scale_parameters(table, [bank.parameter_info[n].log_scale for n in names], names)
    labels = [bank.parameter_info[n].axis_label if n in bank.parameter_info else n for n in names]
    return corner.corner(logged, labels=labels, bins=bins, color=color, fig=fig, plot_datapoints=True, plot_density=False,
                         plot_contours=False, label_kwargs={"fontsize": 8}, max_n_ticks=3)


def plot_instrument_effects(clean: np.ndarray, convolved: np.ndarray, observed: np.ndarray, *, pixel_size_au: float,
                            beam: Beam, distance_pc: float, titles=("clean model [Jy/pixel]", "with beam [Jy/beam]", "beam + noise [Jy/beam]")):
    """The same system as a clean model, through the beam, and with thermal noise, one row per view ``(rows, H, W)``."""
    rows = np.asarray(clean).shape[0]
    fig, axes = plt.subplots(rows, 3, figsize=(8.4, 2.6 * rows), squeeze=False, constrained_layout=True)
    for r in range(rows):
        for c, (stack, title) in enumerate(zip((clean, convolved, observed), titles)):
            draw_image(axes[r, c], stack[r], pixel_size_au=pixel_size_au, stretch="asinh",
                       beam=beam if c > 0 else None, distance_pc=distance_pc, title=title if r == 0 else None)
            axes[r, c].tick_params(labelsize=6)
        axes[r, 0].set_ylabel("north offset [au]", fontsize=7)
    for c in range(3):
        axes[-1, c].set_xlabel("east offset [au]", fontsize=7)
    return fig


def plot_split(bank: Bank, split, *, x: str = "stellar_mass", y: str = "disk_radius"):
    """Where the train, validation and test systems lie in two parameters: the split is by system."""
    fig, ax = plt.subplots(figsize=(5, 4), constrained_layout=True)
    for part, colour in (("train", "tab:blue"), ("validation", "tab:orange"), ("test", "tab:green")):
        idx = getattr(split, part)
        ax.scatter(bank.parameters[x][idx], bank.parameters[y][idx], s=12, color=colour, label=f"{part} ({len(idx)} systems)")
    ax.set_xscale("log" if bank.parameter_info[x].log_scale else "linear")
    ax.set_yscale("log" if bank.parameter_info[y].log_scale else "linear")
    ax.set_xlabel(f"{x} [{bank.parameter_info[x].unit}]")
    ax.set_ylabel(f"{y} [{bank.parameter_info[y].unit}]")
    ax.legend(fontsize=8)
    ax.set_title(f"Split by system ({bank.n_projections} projections each stay together)", fontsize=9)
    return fig
