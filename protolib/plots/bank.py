"""Figures of a bank: its images ordered by a parameter, its prior, and its split into train, validation and test.

Every function takes the :class:`~protolib.bank.Bank` and keyword-only options and returns the
figure; none calls ``show()`` or ``savefig()``.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from ..bank import Bank
from ..goodness_of_fit import DETECTION_SIGMA
from ..normalise import scale_parameters
from .images import plot_image_grid
from .style import corner_figure, make_corner_legible, parameter_words

__all__ = ["plot_parameter_gallery", "plot_prior_corner", "plot_split", "detected_systems"]


def plot_parameter_gallery(
    bank: Bank, parameter: str, *, n_systems: int = 5, n_projections: int = 4, stretch: str = "asinh"
):
    """Systems spanning ``parameter`` (rows, low to high) seen at their projections (columns, by inclination).

    The rows are drawn from the systems whose every shown projection holds a source (:func:`detected_systems`), so
    that the trend with the parameter shows rather than the noise of systems too faint to see; the title says how
    many systems that leaves out. Each row's first panel draws the bank's beam.
    """
    values, info = bank.parameters[parameter], bank.parameter_info[parameter]
    seen = detected_systems(bank)
    shown = seen if len(seen) >= n_systems else np.arange(bank.n_systems)
    order = shown[np.argsort(values[shown], kind="stable")]
    picks = order[np.linspace(0, len(order) - 1, min(n_systems, len(order))).round().astype(int)]
    images, titles, labels = [], [], []
    for system in picks:
        incl = bank.inclination[system]
        cols = np.argsort(incl)[
            np.linspace(0, bank.n_projections - 1, min(n_projections, bank.n_projections)).round().astype(int)
        ]
        images.append(bank.load_images([system])[0][cols])
        titles.append([f"i = {incl[c]:.0f} deg" for c in cols])
        labels.append(f"{info.label or parameter} = {values[system]:.3g} {info.unit}\nnorth offset [au]")
    left_out = bank.n_systems - len(shown)
    beam, distance = bank.instrument.beam, bank.instrument.distance_pc
    return plot_image_grid(
        np.stack(images),
        pixel_size_au=bank.pixel_size_au,
        titles=titles,
        row_labels=labels,
        stretch=stretch,
        unit=bank.unit,
        suptitle=f"Bank images ordered by {parameter_words(parameter, info.unit)} ({stretch} stretch, one scale per "
        f"row)" + (f"; {left_out} systems too faint to see left out" if left_out else ""),
        beam_au=None if beam is None else beam.in_au(distance),
    )


def detected_systems(bank: Bank, threshold: float | None = None) -> np.ndarray:
    """The systems whose every projection holds a source: a brightest pixel at least ``threshold`` (default
    :data:`~protolib.goodness_of_fit.DETECTION_SIGMA`) times the bank's noise rms. All of them in a noiseless bank."""
    noise = bank.instrument.noise_rms_jy_beam
    if noise <= 0:
        return np.arange(bank.n_systems)
    chunks = range(0, bank.n_systems, 1000)  # a large bank is read a thousand systems at a time
    peaks = np.concatenate(
        [bank.load_images(np.arange(i, min(i + 1000, bank.n_systems))).max(axis=(-2, -1)) for i in chunks]
    )
    return np.flatnonzero((peaks.reshape(len(peaks), -1) >= (threshold or DETECTION_SIGMA) * noise).all(axis=1))


def plot_prior_corner(
    bank: Bank, names: list[str] | None = None, *, systems=None, color: str = "k", fig=None, bins: int = 20
):
    """Corner plot of the bank's parameters (log10 for log-scaled ones): the prior of the matching stage.

    The figure is about page width whatever the number of parameters, its labels readable there.
    """
    import corner

    names = names or [n for n in bank.physical_parameters if n not in ("disk_scale_height", "cavity_angle")]
    table = bank.parameter_table(names)
    if systems is not None:
        table = table[np.asarray(systems)]
    logged = scale_parameters(table, [bank.parameter_info[n].log_scale for n in names], names)
    labels = [bank.parameter_info[n].axis_label if n in bank.parameter_info else n for n in names]
    fig = corner.corner(
        logged,
        labels=labels,
        bins=bins,
        color=color,
        fig=fig if fig is not None else corner_figure(len(names)),
        plot_datapoints=True,
        plot_density=False,
        plot_contours=False,
        max_n_ticks=3,
        data_kwargs={"ms": 2.5, "alpha": 0.4},
    )
    make_corner_legible(fig, len(names))
    return fig


def plot_split(bank: Bank, split, *, x: str = "stellar_mass", y: str = "disk_radius"):
    """Where the train, validation and test systems lie in two parameters: the split is by system."""
    fig, ax = plt.subplots(figsize=(5, 4), constrained_layout=True)
    for part, colour in (("train", "tab:blue"), ("validation", "tab:orange"), ("test", "tab:green")):
        idx = getattr(split, part)
        ax.scatter(
            bank.parameters[x][idx], bank.parameters[y][idx], s=12, color=colour, label=f"{part} ({len(idx)} systems)"
        )
    ax.set_xscale("log" if bank.parameter_info[x].log_scale else "linear")
    ax.set_yscale("log" if bank.parameter_info[y].log_scale else "linear")
    ax.set_xlabel(parameter_words(x, bank.parameter_info[x].unit))
    ax.set_ylabel(parameter_words(y, bank.parameter_info[y].unit))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # outside: the points fill the panel
    ax.set_title(f"Split by system ({bank.n_projections} projections each stay together)", fontsize=9)
    return fig
