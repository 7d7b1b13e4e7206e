"""Figures for the learning stages. Each takes data and keyword options and returns the figure."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch, Rectangle
from matplotlib.ticker import MaxNLocator

from .style import page_fontsize

__all__ = [
    "plot_history",
    "plot_reconstructions",
    "plot_latent_space",
    "plot_similarity_scatter",
    "plot_pair_gallery",
    "plot_target_comparison",
    "plot_autoencoder_sketch",
    "plot_siamese_sketch",
]


def plot_history(histories: dict[str, list[dict]], *, log: bool = True, figsize=(9, 3.5)) -> Figure:
    """Training and validation loss per epoch, one panel per run (``{label: history}``)."""
    fig, axes = plt.subplots(1, len(histories), figsize=figsize, squeeze=False)
    for ax, (label, history) in zip(axes[0], histories.items()):
        epochs = [h["epoch"] for h in history]
        ax.plot(epochs, [h["train_loss"] for h in history], "o-", label="training (augmented)")
        ax.plot(epochs, [h["validation_loss"] for h in history], "s-", label="validation")
        best = int(np.nanargmin([h["validation_loss"] for h in history]))
        ax.axvline(epochs[best], color="grey", ls=":", label=f"best (epoch {epochs[best]})")
        ax.set(xlabel="epoch", ylabel="loss", title=label, yscale="log" if log else "linear")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no 2.5, 7.5 ticks
        ax.legend(fontsize=page_fontsize(fig, 7.5))  # read at page width: the figure is wider than the page
    fig.tight_layout()
    return fig


def plot_reconstructions(
    inputs: np.ndarray, reconstructions: np.ndarray, *, titles: list[str] | None = None, n: int = 8
) -> Figure:
    """Stretched inputs ``(N, H, W)`` (top row) above their reconstructions (bottom row), north up, east left."""
    n = min(n, len(inputs))
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 3.5), squeeze=False)
    for k in range(n):
        for row, image in enumerate((inputs[k], reconstructions[k])):
            # each column on its input's scale, so the bar reads in fractions of it
            peak = max(1e-6, float(inputs[k].max()))
            handle = axes[row, k].imshow(image / peak, origin="lower", cmap="inferno", vmin=0, vmax=1)
            axes[row, k].set_xticks([]), axes[row, k].set_yticks([])
        if titles:
            axes[0, k].set_title(titles[k], fontsize=page_fontsize(fig, 7))
    axes[0, 0].set_ylabel("input", fontsize=page_fontsize(fig, 8))
    axes[1, 0].set_ylabel("rebuilt", fontsize=page_fontsize(fig, 8))
    fig.tight_layout()
    _network_input_colorbar(fig, axes, handle, "fraction of each input's peak", ticks=[0, 0.25, 0.5, 0.75, 1])
    return fig


def _network_input_colorbar(fig: Figure, axes, handle, scale: str, ticks: list[float] | None = None) -> None:
    """One colour bar for panels of network inputs: stretched brightness, which has no physical unit;
    ``ticks`` when every panel shares the bar's scale, none when each panel has its own."""
    bar = fig.colorbar(handle, ax=axes.ravel().tolist(), fraction=0.02, pad=0.01, ticks=ticks or [])
    text = page_fontsize(fig, 7)  # read at page width: these figures are wider than the page and shrink
    bar.ax.tick_params(labelsize=0.9 * text)
    bar.set_label(f"stretched brightness\n(network input; {scale})", fontsize=text)


def plot_latent_space(
    points: np.ndarray, colours: dict[str, np.ndarray], *, xlabel: str = "PC 1", ylabel: str = "PC 2", ncols: int = 3
) -> Figure:
    """2D projection of latents ``(N, 2)``, one panel per colouring (``{label: values (N,)}``)."""
    nrows = int(np.ceil(len(colours) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.0 * nrows), squeeze=False)
    text = page_fontsize(fig, 8)  # the figure is shrunk to the page: its text is drawn larger in proportion
    for ax, (label, values) in zip(axes.flat, colours.items()):
        sc = ax.scatter(points[:, 0], points[:, 1], c=values, s=6, cmap="viridis")
        bar = fig.colorbar(sc, ax=ax)
        bar.set_label(label, fontsize=text)
        bar.ax.tick_params(labelsize=0.85 * text)
        ax.set_xlabel(xlabel, fontsize=text)
        ax.set_ylabel(ylabel, fontsize=text)
        ax.tick_params(labelsize=0.85 * text)
    for ax in list(axes.flat)[len(colours) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def plot_similarity_scatter(
    predicted: np.ndarray,
    target: np.ndarray,
    *,
    metrics: dict | None = None,
    title: str = "held-out systems",
    max_points: int = 20000,
    seed: int = 0,
) -> Figure:
    """Predicted against target similarity of pairs, with the metrics in the title and the 1:1 line."""
    keep = np.random.default_rng(seed).permutation(len(predicted))[:max_points]
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    cells = ax.hexbin(target[keep], predicted[keep], gridsize=40, bins="log", cmap="Blues", mincnt=1)
    fig.colorbar(cells, ax=ax, label="pairs per cell", shrink=0.8)
    ax.plot([-1, 1], [-1, 1], "k--", lw=1)
    ax.fill_between([-1, 1], [-1.1, 0.9], [-0.9, 1.1], color="orange", alpha=0.2, label="within 0.1")
    low = min(float(target.min()), float(predicted.min()), 0.0)
    ax.set(
        xlim=(low, 1.02),
        ylim=(low, 1.02),
        xlabel="target similarity (parameters)",
        ylabel="predicted similarity (images)",
    )
    if metrics:
        title += (
            f"\nSpearman {metrics['spearman']:.3f}, MSE {metrics['mse']:.4f}, within 0.1 {metrics['within_0.1']:.2f}"
        )
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def plot_pair_gallery(
    images: np.ndarray,
    first: np.ndarray,
    second: np.ndarray,
    predicted: np.ndarray,
    target: np.ndarray,
    *,
    per_group: int = 8,
    stretch=np.arcsinh,
) -> Figure:
    """The thesis's figure: the ``per_group`` most, middle and least similar pairs by prediction.

    Each column is a pair (two images one above the other) titled with predicted (p) and true (t)
    similarity; the three groups are stacked as row blocks.
    """
    order = np.argsort(-predicted)
    middle = len(order) // 2 - per_group // 2
    groups = {
        "most similar": order[:per_group],
        "middle": order[middle : middle + per_group],
        "least similar": order[-per_group:],
    }
    fig, axes = plt.subplots(6, per_group, figsize=(1.5 * per_group, 9.5), squeeze=False)
    for block, (name, pairs) in enumerate(groups.items()):
        for k, pair in enumerate(pairs):
            for row, index in enumerate((first[pair], second[pair])):
                image = images[index]
                ax = axes[2 * block + row, k]
                scaled = stretch(image / (0.02 * max(image.max(), 1e-30)))  # each image to its own peak
                handle = ax.imshow(scaled, origin="lower", cmap="inferno", vmin=0.0, vmax=float(stretch(50.0)))
                ax.set_xticks([]), ax.set_yticks([])
            axes[2 * block, k].set_title(
                f"p {predicted[pair]:.2f}\nt {target[pair]:.2f}", fontsize=page_fontsize(fig, 7)
            )
        axes[2 * block, 0].set_ylabel(name, fontsize=page_fontsize(fig, 8))
    fig.tight_layout()
    _network_input_colorbar(fig, axes, handle, "fraction of each image's peak")
    fractions = [0.0, 0.01, 0.1, 1.0]  # one scale for every panel: ticks at fractions of each image's own peak
    bar = handle.colorbar
    bar.set_ticks([float(stretch(f / 0.02)) for f in fractions], labels=[f"{f:g}" for f in fractions])
    return fig


def plot_target_comparison(
    distance: np.ndarray, cosine: np.ndarray, kernel: np.ndarray, *, max_points: int = 5000, seed: int = 0
) -> Figure:
    """Cosine and kernel targets of pairs against the distance of their normalised parameter vectors."""
    keep = np.random.default_rng(seed).permutation(len(distance))[:max_points]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.scatter(distance[keep], cosine[keep], s=3, alpha=0.4, label="cosine (thesis)")
    ax.scatter(distance[keep], kernel[keep], s=3, alpha=0.4, label="kernel exp(-d²/2σ²)")
    ax.set(xlabel="rms difference of normalised parameters", ylabel="target similarity")
    ax.legend(markerscale=4)
    fig.tight_layout()
    return fig


def _feature_map(ax, x: float, side: float, depth: float, colour: str, label: str, note: str = "") -> float:
    """A stack of feature maps drawn as a box ``depth`` wide and ``side`` tall, centred at height 0; returns its right
    edge."""
    size = page_fontsize(ax.figure, 8)  # the sketch is wider than the page: its text is drawn larger in proportion
    ax.add_patch(Rectangle((x, -side / 2), depth, side, facecolor=colour, edgecolor="k", lw=0.8))
    ax.text(x + depth / 2, -side / 2 - 0.06, label, ha="center", va="top", fontsize=size)
    if note:
        ax.text(x + depth / 2, side / 2 + 0.05, note, ha="center", va="bottom", fontsize=size, color="0.3")
    return x + depth


def _arrow(ax, start: tuple[float, float], end: tuple[float, float], text: str = "", **kwargs) -> None:
    ax.annotate("", end, start, arrowprops=dict(arrowstyle="->", color="0.25", lw=1.1, **kwargs))
    if text:
        ax.text(
            (start[0] + end[0]) / 2,
            (start[1] + end[1]) / 2 + 0.04,
            text,
            ha="center",
            va="bottom",
            fontsize=page_fontsize(ax.figure, 7.5),
            color="0.3",
        )


def plot_autoencoder_sketch(
    image_size: int, channels: list[int], latent_size: int, *, use_flux: bool = True, figsize=(10, 3.6)
) -> Figure:
    """The autoencoder's architecture to scale in image size: input, encoder levels, latent, decoder levels, output.

    Each box is a stack of feature maps, as tall as their side (relative to the image's) and as wide as
    the log of their number; the shapes are written under them as channels x height x width.
    """
    fig, ax = plt.subplots(figsize=figsize)
    sides = [image_size // 2**k for k in range(len(channels) + 1)]
    depth = lambda c: 0.08 + 0.06 * np.log2(c)  # noqa: E731 - the box width for c feature maps
    step = 0.36  # the arrow between two levels: long enough for its label at page width
    x = _feature_map(ax, 0.0, 1.0, depth(1), "#fde0c5", f"1x{image_size}x{image_size}", "input image")
    for width, side in zip(channels, sides[1:]):
        _arrow(ax, (x, 0), (x + step, 0), "conv/2")
        x = _feature_map(ax, x + step, side / image_size, depth(width), "#9ecae1", f"{width}x{side}x{side}")
    _arrow(ax, (x, 0), (x + 0.42, 0), "flatten,\nlinear")
    x = _feature_map(ax, x + 0.42, 0.6, 0.12, "#fdae6b", f"latent\n{latent_size}", "code")
    if use_flux:
        _flux_note(ax, x - 0.06)
    _arrow(ax, (x, 0), (x + 0.42, 0), "linear,\nreshape")
    for width, side in zip(reversed(channels), reversed(sides[1:])):
        x = _feature_map(
            ax,
            x + 0.42 if side == sides[-1] else x + step,
            side / image_size,
            depth(width),
            "#a1d99b",
            f"{width}x{side}x{side}",
        )
        _arrow(ax, (x, 0), (x + step, 0), "up x2" if side < sides[1] else "up x2,\nconv")
    _feature_map(ax, x + step, 1.0, depth(1), "#fde0c5", f"1x{image_size}x{image_size}", "rebuilt image")
    middle = depth(1) + step * len(channels) + sum(depth(c) for c in channels)
    title = page_fontsize(fig, 9)
    ax.text(middle / 2, 0.78, "encoder", ha="center", fontsize=title, weight="bold", color="#3182bd")
    ax.text(x - middle / 2 + step, 0.78, "decoder", ha="center", fontsize=title, weight="bold", color="#31a354")
    ax.set(xlim=(-0.1, x + step + depth(1) + 0.1), ylim=(-0.85, 0.9), aspect="equal")
    ax.axis("off")
    fig.tight_layout()
    return fig


def _flux_note(ax, x: float) -> None:
    """The note under the latent code, centred at ``x``: how the autoencoder carries the image's total flux."""
    ax.text(
        x,
        -0.62,
        "the log total flux joins the flattened maps;\na linear layer rebuilds it from the latent",
        ha="center",
        va="top",
        fontsize=page_fontsize(ax.figure, 7.5),
        color="0.3",
    )


def _step(ax, x: float, y: float, text: str, colour: str, width: float) -> tuple[float, float]:
    """A rounded box of text centred at ``(x, y)``, three lines tall; returns its left and right edges."""
    ax.add_patch(
        FancyBboxPatch(
            (x - width / 2, y - 0.3), width, 0.6, boxstyle="round,pad=0.02", facecolor=colour, edgecolor="k", lw=0.8
        )
    )
    ax.text(x, y, text, ha="center", va="center", fontsize=page_fontsize(ax.figure, 7.5))
    return x - width / 2 - 0.02, x + width / 2 + 0.02


def plot_siamese_sketch(
    image_size: int, channels: list[int], latent_size: int, hidden_size: int, embedding_size: int, *, figsize=(8.5, 3.0)
) -> Figure:
    """One training comparison of the Siamese network: two images through the same encoder and head to unit
    embeddings, whose cosine is the predicted similarity, set against the target similarity of the two
    systems' parameters by the loss.

    Drawn about page width, its boxes narrow (text in three lines), so that the text reads as drawn.
    """
    fig, ax = plt.subplots(figsize=figsize)
    levels = ", ".join(f"{c}x{image_size // 2 ** (k + 1)}²" for k, c in enumerate(channels))
    columns = [
        (0.5, f"image {{}}\n1x{image_size}x{image_size}\n(+ log flux)", "#fde0c5", 1.0),
        (2.025, f"encoder\n{levels}\n-> latent {latent_size}", "#9ecae1", 1.55),
        (3.65, f"head\n{latent_size} -> {hidden_size}\n-> {embedding_size}", "#c6dbef", 1.2),
        (5.05, f"embedding {{}}\n{embedding_size} numbers,\nunit length", "#fdae6b", 1.1),
    ]
    for y, name in ((0.6, "A"), (-0.6, "B")):
        previous = None
        for x, text, colour, width in columns:
            left, right = _step(ax, x, y, text.format(name.lower() if "embedding" in text else name), colour, width)
            if previous is not None:
                _arrow(ax, (previous, y), (left, y))
            previous = right
    for x, _, _, _ in columns[1:3]:
        ax.annotate("", (x, -0.28), (x, 0.28), arrowprops=dict(arrowstyle="<->", color="0.4", ls="--"))
        ax.text(x + 0.05, 0, "same weights", fontsize=page_fontsize(fig, 7.5), color="0.3", va="center")
    left, right = _step(ax, 6.525, 0.0, "predicted\nsimilarity\ncos(a, b) = a · b", "#fdd0a2", 1.35)
    for y in (0.6, -0.6):
        _arrow(ax, (5.62, y), (left, 0.15 if y > 0 else -0.15))
    _, target_right = _step(ax, 6.525, -1.35, "target similarity\nfrom the two\nsystems' parameters", "#e5f5e0", 1.5)
    _step(ax, 8.0, -0.675, "loss\n(e.g. squared\ndifference)", "#fcbba1", 1.0)
    _arrow(ax, (right, 0), (7.65, -0.36))
    _arrow(ax, (target_right, -1.35), (7.65, -0.99))
    ax.set(xlim=(-0.05, 8.55), ylim=(-1.7, 0.95), aspect="equal")
    ax.axis("off")
    fig.tight_layout()
    return fig
