"""The figures of a hyperparameter search (:mod:`protolib.tuning`): score against each hyperparameter, score per epoch.

``protolib tune`` writes them to its run folder as ``scores.png`` and ``learning_curves.png``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..tuning import load_study, trials_table

__all__ = ["plot_tuning_scores", "plot_tuning_curves", "plot_tuning"]


def plot_tuning_scores(rows: list[dict], space: dict, *, reference: float | None = None):
    """Recovery error against each hyperparameter: complete trials coloured by order, pruned ones grey at their last
    score."""
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    names = [n for n in space if any(r[n] != "" for r in rows)]
    ncols = min(4, len(names))
    nrows = -(-len(names) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.9 * nrows), squeeze=False, constrained_layout=True)
    numbers = [r["trial"] for r in rows if r["state"] == "complete"] or [0]
    norm = Normalize(min(numbers), max(max(numbers), min(numbers) + 1))  # one colour scale for every panel
    for ax, name in zip(axes.ravel(), names):
        spec = space[name]
        for state, style in (
            ("pruned", dict(color="0.6", marker="x", s=22, label="pruned (last score)")),
            ("complete", dict(c=None, marker="o", s=28, label="complete", norm=norm, cmap="viridis")),
        ):
            chosen = [r for r in rows if r["state"] == state and r[name] != "" and np.isfinite(r["recovery_error"])]
            if chosen:
                _scatter_trials(ax, chosen, name, spec, state, style)
        _hyperparameter_axis(ax, spec)
        if reference is not None:
            ax.axhline(reference, color="C3", ls="--", lw=1, label="configuration's own")
        ax.set_xlabel(name.replace("_", " "))
        ax.set_ylabel("validation recovery error")
    for ax in axes.ravel()[len(names) :]:
        ax.set_visible(False)
    axes.ravel()[0].legend(fontsize=7, loc="best")
    fig.colorbar(ScalarMappable(norm, "viridis"), ax=axes, label="trial number (complete trials)", shrink=0.8)
    fig.suptitle("Validation recovery error (RMS error / prior spread, lower is better) against each hyperparameter")
    return fig


def _scatter_trials(ax, chosen: list[dict], name: str, spec: dict, state: str, style: dict) -> None:
    """The trials ``chosen`` (of one ``state``) at their value of hyperparameter ``name``: a choice's trials jittered
    about its position (seeded by the trial, so the figure is the same every time), complete ones coloured by
    number."""
    if "choices" in spec:
        labels = [str(c) for c in spec["choices"]]
        x = [labels.index(str(r[name])) + np.random.default_rng(r["trial"]).uniform(-0.15, 0.15) for r in chosen]
    else:
        x = [float(r[name]) for r in chosen]
    y = [r["recovery_error"] for r in chosen]
    if state == "complete":
        style["c"] = [r["trial"] for r in chosen]
    ax.scatter(x, y, **style)


def _hyperparameter_axis(ax, spec: dict) -> None:
    """A hyperparameter's x axis: its choices by name, or a log axis ticked at 1 and 3 per decade for a log-uniform
    range."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    if "choices" in spec:
        ax.set_xticks(range(len(spec["choices"])), [str(c) for c in spec["choices"]])
    elif spec.get("log"):
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 3.0), numticks=6))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())


def plot_tuning_curves(study):
    """Recovery error after each epoch of every trial: pruned trials (grey) stop at a rung, complete ones run on."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6.5, 4), constrained_layout=True)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for t in study.trials:
        curve = t.user_attrs.get("curve", [])
        if not curve:
            continue
        complete = t.state.name == "COMPLETE"
        ax.plot(
            np.arange(1, len(curve) + 1),
            curve,
            color=None if complete else "0.65",
            lw=1.5 if complete else 0.8,
            marker="o" if len(curve) < 3 else None,
            ms=3,
            label=f"trial {t.number}" if complete else None,
            zorder=3 if complete else 2,
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation recovery error")
    ax.set_title("Score per epoch (grey: stopped early by the pruner)")
    if len(ax.get_legend_handles_labels()[0]) <= 12:
        ax.legend(fontsize=7, ncols=2)
    return fig


def plot_tuning(run_dir: str | Path):
    """The two figures of a run folder, drawn afresh: score against each hyperparameter, and score per epoch."""
    study = load_study(run_dir)
    rows = trials_table(study)
    own = next((r["recovery_error"] for r in rows if r["trial"] == 0 and r["state"] == "complete"), None)
    return plot_tuning_scores(rows, json.loads(study.user_attrs["space"]), reference=own), plot_tuning_curves(study)
