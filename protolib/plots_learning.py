"""Figures for the learning stages. Each takes data and keyword options and returns the figure."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

__all__ = ["plot_history", "plot_reconstructions", "plot_latent_space", "plot_similarity_scatter", "plot_pair_gallery", "plot_target_comparison"]


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
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_reconstructions(inputs: np.ndarray, reconstructions: np.ndarray, *, titles: list[str] | None = None, n: int = 8) -> Figure:
    """Stretched inputs ``(N, H, W)`` (top row) above their reconstructions (bottom row), north up, east left."""
    n = min(n, len(inputs))
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 3.5), squeeze=False)
    for k in range(n):
        for row, image in enumerate((inputs[k], reconstructions[k])):
            axes[row, k].imshow(image, origin="lower", cmap="inferno", vmin=0, vmax=max(1e-6, float(inputs[k].max())))
            axes[row, k].set_xticks([]), axes[row, k].set_yticks([])
        if titles:
            axes[0, k].set_title(titles[k], fontsize=7)
    axes[0, 0].set_ylabel("input")
    axes[1, 0].set_ylabel("rebuilt")
    fig.tight_layout()
    return fig


def plot_latent_space(points: np.ndarray, colours: dict[str, np.ndarray], *, xlabel: str = "PC 1", ylabel: str = "PC 2", ncols: int = 3) -> Figure:
    """2D projection of latents ``(N, 2)``, one panel per colouring (``{label: values (N,)}``)."""
    nrows = int(np.ceil(len(colours) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.0 * nrows), squeeze=False)
    for ax, (label, values) in zip(axes.flat, colours.items()):
        sc = ax.scatter(points[:, 0], points[:, 1], c=values, s=6, cmap="viridis")
        fig.colorbar(sc, ax=ax, label=label)
        ax.set(xlabel=xlabel, ylabel=ylabel)
    for ax in list(axes.flat)[len(colours):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def plot_similarity_scatter(predicted: np.ndarray, target: np.ndarray, *, metrics: dict | None = None, title: str = "held-out systems", max_points: int = 20000, seed: int = 0) -> Figure:
    """Predicted against target similarity of pairs, with the metrics in the title and the 1:1 line."""
    keep = np.random.default_rng(seed).permutation(len(predicted))[:max_points]
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ax.hexbin(target[keep], predicted[keep], gridsize=40, bins="log", cmap="Blues", mincnt=1)
    ax.plot([-1, 1], [-1, 1], "k--", lw=1)
    ax.fill_between([-1, 1], [-1.1, 0.9], [-0.9, 1.1], color="orange", alpha=0.2, label="within 0.1")
    low = min(float(target.min()), float(predicted.min()), 0.0)
    ax.set(xlim=(low, 1.02), ylim=(low, 1.02), xlabel="target similarity (parameters)", ylabel="predicted similarity (images)")
    if metrics:
        title += f"\nSpearman {metrics['spearman']:.3f}, MSE {metrics['mse']:.4f}, within 0.1 {metrics['within_0.1']:.2f}"
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def plot_pair_gallery(images: np.ndarray, first: np.ndarray, second: np.ndarray, predicted: np.ndarray, target: np.ndarray, *, per_group: int = 8, stretch=np.arcsinh) -> Figure:
    """The thesis's figure: the ``per_group`` most, middle and least similar pairs by prediction.

    Each column is a pair (two images one above the other) titled with predicted (p) and true (t)
    similarity; the three groups are stacked as row blocks.
    """
    order = np.argsort(-predicted)
    middle = len(order) // 2 - per_group // 2
    groups = {"most similar": order[:per_group], "middle": order[middle : middle + per_group], "least similar": order[-per_group:]}
    fig, axes = plt.subplots(6, per_group, figsize=(1.5 * per_group, 9.5), squeeze=False)
    for block, (name, pairs) in enumerate(groups.items()):
        for k, pair in enumerate(pairs):
            for row, index in enumerate((first[pair], second[pair])):
                image = images[index]
                ax = axes[2 * block + row, k]
                ax.imshow(stretch(image / (0.02 * max(image.max(), 1e-30))), origin="lower", cmap="inferno")
                ax.set_xticks([]), ax.set_yticks([])
            axes[2 * block, k].set_title(f"p {predicted[pair]:.2f}\nt {target[pair]:.2f}", fontsize=8)
        axes[2 * block, 0].set_ylabel(name, fontsize=9)
    fig.tight_layout()
    return fig


def plot_target_comparison(distance: np.ndarray, cosine: np.ndarray, kernel: np.ndarray, *, max_points: int = 5000, seed: int = 0) -> Figure:
    """Cosine and kernel targets of pairs against the distance of their normalised parameter vectors."""
    keep = np.random.default_rng(seed).permutation(len(distance))[:max_points]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.scatter(distance[keep], cosine[keep], s=3, alpha=0.4, label="cosine (thesis)")
    ax.scatter(distance[keep], kernel[keep], s=3, alpha=0.4, label="kernel exp(-d²/2σ²)")
    ax.set(xlabel="rms difference of normalised parameters", ylabel="target similarity")
    ax.legend(markerscale=4)
    fig.tight_layout()
    return fig
