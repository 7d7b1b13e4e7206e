"""The figures of a hyperparameter search (:mod:`protolib.tuning`): score against each hyperparameter, score per epoch.

``protolib tune`` writes them to its run folder as ``scores.png`` and ``learning_curves.png``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..tuning import load_study, trials_table

__all__ = ["plot_tuning_scores", "plot_tuning_curves", "plot_tuning", "trial_colours", "FEW_TRIALS"]


FEW_TRIALS = 10  # up to this many complete trials get a colour each, named in the legend; more share a colour bar


def trial_colours(numbers: list[int]) -> dict[int, str] | None:
    """A colour per complete trial (``C0``, ``C1``, ... in trial order) when there are at most :data:`FEW_TRIALS`, so
    that both figures of a search show a trial in the same colour; ``None`` when there are more (a colour bar)."""
    ordered = sorted(set(numbers))
    return {n: f"C{i}" for i, n in enumerate(ordered)} if len(ordered) <= FEW_TRIALS else None


def plot_tuning_scores(rows: list[dict], space: dict, *, reference: float | None = None):
    """Recovery error against each hyperparameter: pruned trials grey at their last score; complete ones each in its
    colour, named in the legend (a few trials) or coloured by number on a colour bar (many)."""
    import matplotlib.pyplot as plt

    names = [n for n in space if any(r[n] != "" for r in rows)]
    ncols = min(2, len(names))  # two panels a row: the figure is about page width, so its text reads as drawn
    nrows = -(-len(names) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.9 * nrows), squeeze=False, constrained_layout=True)
    numbers = [r["trial"] for r in rows if r["state"] == "complete"] or [0]
    colours = trial_colours(numbers)
    for ax, name in zip(axes.ravel(), names):
        spec = space[name]
        for state in ("pruned", "complete"):
            chosen = [r for r in rows if r["state"] == state and r[name] != "" and np.isfinite(r["recovery_error"])]
            if chosen:
                _scatter_trials(ax, chosen, name, spec, state, colours, numbers)
        _hyperparameter_axis(ax, spec)
        if reference is not None:
            ax.axhline(reference, color="C3", ls="--", lw=1, label="configuration's own (trial 0)")
        ax.set_xlabel(HYPERPARAMETER_WORDS.get(name, name.replace("_", " ")))
        ax.set_ylabel("validation recovery error")
    for ax in axes.ravel()[len(names) :]:
        ax.set_visible(False)
    _scores_key(fig, axes, colours, numbers)
    fig.suptitle("Validation recovery error (RMS error / prior spread, lower is better)\nagainst each hyperparameter")
    return fig


HYPERPARAMETER_WORDS = {
    "encoder_width": "encoder width (feature maps, first level)",
    "encoder_depth": "encoder depth (levels)",
    "embedding_size": "embedding length (numbers per image)",
    "kernel_width": "target kernel width σ (training-set spreads)",
    "loss": "loss",
    "margin": "contrastive loss margin",
    "learning_rate": "learning rate (AdamW's starting step)",
    "batch_systems": "batch size (systems)",
}
"""How the figure names a hyperparameter of the search space where its key alone does not say it (others: the key
with spaces)."""


def _scores_key(fig, axes, colours: dict | None, numbers: list[int]) -> None:
    """The key of the scores figure: with a few trials one legend naming each trial's colour; with many, the legend of
    the first panel and a colour bar of trial numbers."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    if colours is not None:
        handles, labels = axes.ravel()[0].get_legend_handles_labels()
        fig.legend(handles, labels, fontsize=8, loc="outside lower center", ncols=min(3, len(labels)))
        return
    axes.ravel()[0].legend(fontsize=7, loc="best")
    norm = Normalize(min(numbers), max(max(numbers), min(numbers) + 1))
    fig.colorbar(ScalarMappable(norm, "viridis"), ax=axes, label="trial number (complete trials)", shrink=0.8)


def _scatter_trials(
    ax, chosen: list[dict], name: str, spec: dict, state: str, colours: dict | None, numbers: list[int]
) -> None:
    """The trials ``chosen`` (of one ``state``) at their value of hyperparameter ``name``: a choice's trials jittered
    about its position (seeded by the trial, so the figure is the same every time); pruned ones grey crosses, complete
    ones in their colour (``colours``) or, with many, coloured by number on one scale."""
    from matplotlib.colors import Normalize

    if "choices" in spec:
        labels = [str(c) for c in spec["choices"]]
        x = [labels.index(str(r[name])) + np.random.default_rng(r["trial"]).uniform(-0.15, 0.15) for r in chosen]
    else:
        x = [float(r[name]) for r in chosen]
    y = [r["recovery_error"] for r in chosen]
    if state == "pruned":
        ax.scatter(x, y, color="0.6", marker="x", s=22, label="stopped early (last score)")
    elif colours is not None:
        for xi, yi, r in zip(x, y, chosen):
            ax.scatter([xi], [yi], color=colours[r["trial"]], marker="o", s=28, label=f"trial {r['trial']}")
    else:
        norm = Normalize(min(numbers), max(max(numbers), min(numbers) + 1))  # one colour scale for every panel
        ax.scatter(x, y, c=[r["trial"] for r in chosen], marker="o", s=28, label="complete", norm=norm, cmap="viridis")


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
    colours = trial_colours([t.number for t in study.trials if t.state.name == "COMPLETE"]) or {}
    for t in study.trials:
        curve = t.user_attrs.get("curve", [])
        if not curve:
            continue
        complete = t.state.name == "COMPLETE"
        ax.plot(
            np.arange(1, len(curve) + 1),
            curve,
            color=colours.get(t.number) if complete else "0.65",
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
