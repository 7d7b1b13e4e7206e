"""The figure of an embedding map (:mod:`protolib.embedding_maps`): one panel per quantity, points coloured by it."""

from __future__ import annotations

import numpy as np

from ..parameters import PARAMETERS, VIEWING_PARAMETERS
from .style import page_fontsize, parameter_words

__all__ = ["plot_embedding_maps"]


def plot_embedding_maps(
    coordinates: np.ndarray,
    colours: dict[str, np.ndarray],
    *,
    observation: np.ndarray | None = None,
    smoothness: dict[str, float] | None = None,
    columns: int = 3,
    axis_name: str = "PC",
):
    """One panel per quantity: the map ``(N, 2)`` with points coloured by it, an observation optionally marked.

    Arguments:
        coordinates: map coordinates ``(N, 2)`` of the bank's images (e.g. from :class:`PcaMap`).
        colours: ``{name: values (N,)}``; parameters with a log-scale prior are coloured by ``log10``.
        observation: map coordinates ``(2,)`` of an observation, drawn as a star.
        smoothness: ``{name: value}`` from :func:`map_smoothness`, written in the panel titles.
        columns: panels per row.
        axis_name: the map's axes are labelled ``"{axis_name} 1"`` and ``"{axis_name} 2"`` (a map's ``axis_name``).

    Returns:
        The figure.
    """
    import matplotlib.pyplot as plt

    rows = -(-len(colours) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.9 * rows), constrained_layout=True, squeeze=False)
    text, tick = page_fontsize(fig, 8.5), page_fontsize(fig, 7.5)
    for ax, (name, values) in zip(axes.flat, colours.items()):
        logged = name in PARAMETERS and PARAMETERS[name].log_scale and np.all(np.asarray(values) > 0)
        shown = np.log10(values) if logged else values
        handle = ax.scatter(coordinates[:, 0], coordinates[:, 1], c=shown, s=8 * text / 8.5, cmap="viridis")
        info = PARAMETERS.get(name) or VIEWING_PARAMETERS.get(name)
        bar = fig.colorbar(handle, ax=ax)
        bar.set_label(parameter_words(name, info.unit if info else None, logged=logged), fontsize=text)
        bar.ax.tick_params(labelsize=tick)
        if observation is not None:
            ax.scatter(
                *observation, marker="*", s=200 * text / 8.5, color="red", edgecolor="black", label="observation"
            )
        suffix = f" (smoothness {smoothness[name]:.2f})" if smoothness and name in smoothness else ""
        ax.set_title(parameter_words(name) + suffix, fontsize=text)
        ax.set_xlabel(f"{axis_name} 1", fontsize=text)
        ax.set_ylabel(f"{axis_name} 2", fontsize=text)
        ax.tick_params(labelsize=tick)
    for ax in axes.flat[len(colours) :]:
        ax.set_visible(False)
    return fig
