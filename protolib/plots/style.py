"""The page style every figure shares: text sizes at page width, units, colour scales and bars, sky decorations.

Figures are read in the book at about page width (:data:`PAGE_WIDTH_IN`, some 700 px); wider ones
are shrunk to it. :func:`page_fontsize` sizes text in proportion, so that it reads at the same size
whatever the figure's width. Images are drawn north up, east left (``origin="lower"`` with the east
offset growing to the left), with offsets in au, a colour bar in the image's unit (:func:`add_colorbar`)
and, on galleries, a scale bar in au (:func:`add_scale_bar`) and the N and E arrows once
(:func:`add_orientation`). Corner plots are sized and made legible by :func:`corner_figure` and
:func:`make_corner_legible`.

This module imports only matplotlib and numpy, so that every layer, the lowest included, can draw
in the book's style.
"""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Ellipse
from matplotlib.ticker import MaxNLocator

if TYPE_CHECKING:
    from ..instrument import Beam

__all__ = [
    "PAGE_WIDTH_IN",
    "InnerTicks",
    "page_fontsize",
    "display_unit",
    "image_norm",
    "add_colorbar",
    "scale_bar_length_au",
    "add_scale_bar",
    "add_beam",
    "add_orientation",
    "fit_title",
    "corner_figure",
    "make_corner_legible",
    "image_extent_au",
    "draw_image",
    "PARAMETER_WORDS",
    "parameter_words",
    "word_list",
]


PARAMETER_WORDS = {
    "stellar_mass": "stellar mass",
    "accretion_rate": "infall rate",
    "disk_radius": "disk radius",
    "disk_mass": "disk mass",
    "envelope_mass": "envelope mass",
    "luminosity": "luminosity",
    "temperature": "dust temperature at 100 au",
    "age": "age",
    "disk_scale_height": "disk scale height at 100 au",
    "cavity_angle": "cavity half-opening angle",
    "inclination": "inclination",
    "position_angle": "position angle",
    "opacity_beta": "dust opacity index β",
    "opacity_230ghz": "dust opacity at 230 GHz",
    "temperature_1lsun": "temperature at 100 au for 1 Lsun",
    "temperature_index": "temperature-law index",
    "midplane_temperature_ratio": "disk midplane over surface temperature",
    "disk_gamma": "disk surface-density index",
    "disk_taper": "disk outer-taper exponent",
    "cavity_wall_exponent": "cavity wall exponent",
    "cavity_contrast": "cavity density contrast",
    "envelope_outer_radius": "envelope outer radius",
}
"""How figures name a parameter: the astronomer's words for its identifier (``accretion_rate`` is the envelope's
infall rate)."""


def parameter_words(name: str, unit: str | None = None, *, logged: bool = False) -> str:
    """A parameter's name in words for a figure (:data:`PARAMETER_WORDS`; else the identifier with spaces), with its
    ``unit`` in brackets (none for a dimensionless ``"1"``) and ``log10`` before it when ``logged``."""
    words = PARAMETER_WORDS.get(name, name.replace("_", " "))
    text = f"{words} [{unit}]" if unit and unit != "1" else words
    return f"log10 {text}" if logged else text


def word_list(items: list[str]) -> str:
    """Items as prose lists them, ``"a, b and c"``; ``"none"`` for no items."""
    return "none" if not items else items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


PAGE_WIDTH_IN = 7.0  # the book's text column: about 700 px at the 100 dpi figures are drawn with


def page_fontsize(fig_or_width, points: float = 9.0) -> float:
    """The font size [pt] that reads as ``points`` pt once the figure is shown at page width.

    ``fig_or_width`` is a figure or its width [in]. A figure wider than :data:`PAGE_WIDTH_IN` is
    shrunk to the page, so its text is made larger in proportion; a narrower one is shown as drawn.
    """
    width = fig_or_width.get_figwidth() if hasattr(fig_or_width, "get_figwidth") else float(fig_or_width)
    return float(points) * max(1.0, width / PAGE_WIDTH_IN)


def display_unit(unit: str | None) -> tuple[float, str]:
    """``(factor, label)``: images in ``unit`` are shown multiplied by ``factor``, their colour bar labelled ``label``.

    Jy/beam and Jy/pixel are shown in mJy (protostellar continuum peaks at a few mJy/beam);
    ``"stretched"`` marks a network input (the per-image brightness stretch, no physical unit).
    """
    unit = (unit or "").strip()
    if unit in ("Jy/beam", "Jy/pixel"):
        return 1e3, "m" + unit
    if unit == "stretched":
        return 1.0, "stretched brightness (network input)"
    return 1.0, unit or "bank unit"


def image_norm(images: np.ndarray, stretch: str = "asinh", *, low: float | None = None, high: float | None = None):
    """The colour normalisation of ``images`` (one image or a stack sharing a scale).

    ``stretch`` is ``"linear"``, ``"asinh"`` (shows faint envelopes next to bright disks) or ``"log"``;
    ``low`` and ``high`` override the range (default: the minimum, or 0 when lower, and the peak).
    """
    from matplotlib.colors import AsinhNorm, LogNorm, Normalize

    images = np.asarray(images, dtype=np.float64)
    finite = images[np.isfinite(images)]
    peak = float(finite.max()) if high is None and finite.size else (1.0 if high is None else float(high))
    floor = (float(finite.min()) if finite.size else 0.0) if low is None else float(low)
    if not peak > floor:
        peak = floor + max(abs(floor), 1e-30) * 1e-6
    if stretch == "asinh":
        return AsinhNorm(linear_width=max(abs(peak), 1e-30) * 0.02, vmin=min(0.0, floor), vmax=peak)
    if stretch == "log":
        return LogNorm(vmin=max(peak, 1e-30) * 1e-3, vmax=max(peak, 1e-30))
    return Normalize(vmin=floor, vmax=peak)


def add_colorbar(
    ax,
    mappable,
    label: str,
    *,
    fontsize: float | None = None,
    location: str = "right",
    size: float = 0.06,
    pad: float = 0.03,
    n_ticks: int = 4,
):
    """A colour bar beside ``ax`` labelled ``label`` (its unit), with few ticks at reading size; returns the colour bar.

    It is drawn in a child axes of ``ax``, so ``fig.axes`` keeps only the panels and a constrained
    layout makes room for it. ``location`` is ``"right"`` or ``"bottom"``; ``size`` and ``pad`` are
    fractions of the panel.
    """
    from matplotlib.colors import AsinhNorm, LogNorm

    fontsize = page_fontsize(ax.figure, 8) if fontsize is None else fontsize
    vertical = location == "right"
    cax = ax.inset_axes([1 + pad, 0, size, 1] if vertical else [0, -pad - size, 1, size])
    bar = ax.figure.colorbar(mappable, cax=cax, orientation="vertical" if vertical else "horizontal")
    if isinstance(mappable.norm, (AsinhNorm, LogNorm)):
        bar.set_ticks(
            _decade_ticks(mappable.norm, n_ticks), labels=[f"{t:g}" for t in _decade_ticks(mappable.norm, n_ticks)]
        )
    else:
        bar.locator = MaxNLocator(n_ticks)
        bar.update_ticks()
    bar.ax.tick_params(labelsize=0.9 * fontsize, length=2)
    bar.set_label(label, fontsize=fontsize)
    return bar


def _decade_ticks(norm, n_ticks: int) -> list[float]:
    """Ticks of an asinh or log colour scale: 0 (asinh) and whole decades up to its top, at most ``n_ticks``."""
    from matplotlib.colors import AsinhNorm

    top = float(norm.vmax)
    bottom = 2.0 * norm.linear_width if isinstance(norm, AsinhNorm) else float(norm.vmin)
    decades = [
        10.0**e for e in range(int(np.ceil(np.log10(max(bottom, 1e-30)))), int(np.floor(np.log10(max(top, 1e-30)))) + 1)
    ]
    keep = max(1, n_ticks - isinstance(norm, AsinhNorm))
    decades = decades[::-1][:: int(np.ceil(len(decades) / keep)) or 1][::-1]
    return ([0.0] if isinstance(norm, AsinhNorm) and norm.vmin <= 0 else []) + decades


def scale_bar_length_au(field_au: float) -> float:
    """A round length [au] near a quarter of ``field_au``, for a scale bar."""
    target = field_au / 4.0
    candidates = [m * 10.0**e for e in range(-1, 6) for m in (1, 2, 5)]
    return float(min(candidates, key=lambda b: abs(np.log(b / target))))


def add_scale_bar(ax, field_au: float, *, fontsize: float | None = None, color: str = "white"):
    """A scale bar of a round length in au in the lower right of ``ax`` (whose x axis spans ``field_au``); returns its
    text."""
    length = scale_bar_length_au(field_au)
    fraction = length / field_au
    fontsize = page_fontsize(ax.figure, 8) if fontsize is None else fontsize
    ax.plot([0.94 - fraction, 0.94], [0.08, 0.08], color=color, lw=2, transform=ax.transAxes, solid_capstyle="butt")
    return ax.text(
        0.95, 0.11, f"{length:g} au", color=color, ha="right", va="bottom", fontsize=fontsize, transform=ax.transAxes
    )


def add_orientation(ax, *, fontsize: float | None = None, color: str = "white"):
    """The sky orientation arrows in the upper right of ``ax``: N up, E to the left."""
    fontsize = page_fontsize(ax.figure, 8) if fontsize is None else fontsize
    corner, reach = (0.9, 0.66), 0.22
    style = dict(arrowstyle="-|>", color=color, lw=1.2, shrinkA=0, shrinkB=0, mutation_scale=0.9 * fontsize)
    for label, tip, align in (
        ("N", (corner[0], corner[1] + reach), dict(ha="center", va="bottom")),
        ("E", (corner[0] - reach, corner[1]), dict(ha="right", va="center")),
    ):
        ax.annotate("", xy=tip, xytext=corner, xycoords="axes fraction", arrowprops=style)
        ax.text(*tip, label, color=color, fontsize=fontsize, transform=ax.transAxes, **align)


def fit_title(text: str, panel_width_in: float, fontsize: float) -> str:
    """``text`` with every line longer than a panel of ``panel_width_in`` allows (at ``fontsize`` pt) wrapped.

    A line is broken at its commas first (``"system 3, i = 45 deg"``), then at spaces.
    """
    width = max(8, int(panel_width_in * 72 / (0.56 * fontsize)))

    def wrap(line: str) -> list[str]:
        if len(line) <= width:
            return [line]
        if ", " in line:
            return [piece for part in line.split(", ") for piece in wrap(part)]
        return textwrap.wrap(line, width, break_long_words=False) or [line]

    return "\n".join(piece for line in text.split("\n") for piece in wrap(line))


class InnerTicks(MaxNLocator):
    """At most ``n_ticks`` round ticks, none within ``margin`` (a fraction of the axis) of either end.

    In a corner plot the panels touch: a tick label at the right end of one panel and one at the left
    end of the next would run together ("3.04.0"). Keeping ticks off the ends keeps them apart.
    """

    def __init__(self, n_ticks: int = 3, margin: float = 0.12):
        super().__init__(n_ticks)
        self.n_ticks, self.margin = n_ticks, margin

    def tick_values(self, vmin: float, vmax: float) -> np.ndarray:
        low, high = sorted((float(vmin), float(vmax)))
        inner = (low + self.margin * (high - low), high - self.margin * (high - low))
        for bins in (self.n_ticks, self.n_ticks + 1, 2 * self.n_ticks):  # finer steps when too few ticks stay inside
            self.set_params(nbins=bins)
            ticks = super().tick_values(vmin, vmax)
            ticks = ticks[(ticks >= inner[0]) & (ticks <= inner[1])]
            if len(ticks) >= 2:
                break
        self.set_params(nbins=self.n_ticks)
        return ticks[: self.n_ticks]


def corner_figure(n_parameters: int):
    """An empty figure for a corner plot of ``n_parameters``, about page width whatever their number."""
    side = float(np.clip(1.0 * n_parameters + 1.2, 4.5, 9.0))
    return plt.figure(figsize=(side, side))


def make_corner_legible(
    fig, n_parameters: int, *, label_points: float = 9.0, tick_points: float = 8.0, n_ticks: int = 3
) -> None:
    """Resize a corner plot's labels and ticks so that they read at ``label_points`` and ``tick_points`` at page width.

    Axis labels too long for a panel are wrapped at spaces (the unit on its own line); each axis
    keeps at most ``n_ticks`` ticks, away from the panel's ends (:class:`InnerTicks`, so that
    neighbouring panels' tick labels never meet), and the margins make room for the tick labels and the labels.
    Beyond eight parameters the panels are too small at page width for that: the text shrinks with
    them (such figures are meant to be opened at full size, like ``protolib match``'s ``corner.png``).
    """
    axes = np.array(fig.axes[: n_parameters**2]).reshape(n_parameters, n_parameters)
    crowding = min(1.0, 8.0 / n_parameters)
    label_size, tick_size = page_fontsize(fig, label_points * crowding), page_fontsize(fig, tick_points * crowding)
    lines = 1
    for ax in axes.ravel():
        ax.tick_params(labelsize=tick_size, length=3)
        for axis, text in ((ax.xaxis, ax.get_xlabel()), (ax.yaxis, ax.get_ylabel())):
            if any(t.get_visible() for t in axis.get_ticklabels()):
                axis.set_major_locator(InnerTicks(n_ticks))
            if text:
                axis.label.set_text(fit_title(text, 0.85 * fig.get_figwidth() / n_parameters, label_size))
                axis.label.set_fontsize(label_size)
                lines = max(lines, axis.label.get_text().count("\n") + 1)
    offset_in = (2.6 * tick_size + 6.0) / 72  # rotated tick labels of a few characters, and their ticks
    margin = min(0.35, (offset_in + lines * 1.3 * label_size / 72 + 0.05) / fig.get_figheight())
    top = 1.0 - min(0.05, 0.15 / fig.get_figheight())
    fig.subplots_adjust(left=margin, bottom=margin, right=top, top=top, wspace=0.06, hspace=0.06)
    panel_in = fig.get_figheight() * (top - margin) / (n_parameters + 0.06 * (n_parameters - 1))
    for i in range(n_parameters):
        axes[-1, i].xaxis.set_label_coords(0.5, -offset_in / panel_in)
        axes[i, 0].yaxis.set_label_coords(-offset_in / panel_in, 0.5)


def image_extent_au(image_size: int, pixel_size_au: float) -> tuple[float, float, float, float]:
    """``imshow`` extent for an image with rows north and columns west: east offset runs right to left."""
    half = image_size * pixel_size_au / 2.0
    return (half, -half, -half, half)


def add_beam(ax, half_width: float, major: float, minor: float, position_angle_deg: float, lw: float = 1.5) -> None:
    """The beam (FWHM axes ``major`` and ``minor``, position angle east of north) as a white ellipse in the lower
    left (east) corner of a panel ``2 half_width`` across, in the panel's units (au), whole inside the panel whenever
    the beam is narrower than the panel (its centre is kept more than half its major axis from both edges)."""
    inset = min(max(0.6 * major, 0.08 * half_width), half_width)
    ax.add_patch(
        Ellipse(
            (half_width - inset, -half_width + inset),
            minor,
            major,
            angle=-position_angle_deg,
            facecolor="none",
            edgecolor="white",
            lw=lw,
        )
    )


def draw_image(
    ax,
    image: np.ndarray,
    *,
    pixel_size_au: float,
    stretch: str = "asinh",
    beam: Beam | None = None,
    distance_pc: float | None = None,
    title: str | None = None,
    cmap: str = "inferno",
    colorbar_label: str | None = None,
    unit: str | None = None,
    norm=None,
):
    """Draw one image on ``ax``: north up, east left, axes in au, optional beam ellipse and colour bar.

    ``stretch`` is ``"linear"``, ``"asinh"`` (shows faint envelopes next to bright disks) or ``"log"``;
    ``norm`` (in the shown unit) replaces it, e.g. to share one scale between panels. With ``unit``
    (the image's, e.g. ``"Jy/beam"``) the image is shown in :func:`display_unit` and given a colour bar
    labelled with it (``colorbar_label`` replaces the label). Returns the ``AxesImage``.
    """
    factor, label = display_unit(unit) if unit is not None else (1.0, None)
    shown = np.asarray(image, dtype=np.float64) * factor
    handle = ax.imshow(
        shown,
        origin="lower",
        extent=image_extent_au(shown.shape[-1], pixel_size_au),
        cmap=cmap,
        norm=norm if norm is not None else image_norm(shown, stretch),
    )
    if beam is not None and distance_pc is not None:
        add_beam(
            ax,
            shown.shape[-1] * pixel_size_au / 2.0,
            beam.major_arcsec * distance_pc,
            beam.minor_arcsec * distance_pc,
            beam.position_angle_deg,
            lw=1.0,
        )
    if title:
        ax.set_title(title, fontsize=page_fontsize(ax.figure, 8))
    if colorbar_label or label:
        add_colorbar(ax, handle, colorbar_label or label)
    return handle
