"""An interactive explorer of matches for JupyterLab: choose a target, move k, pick parameters.

The gallery and the corner plot update as the controls change (ipywidgets). Where no interactive
front end is attached (the static book, a notebook run by ``nbclient``), the explorer shows a
static view of its first target instead of an empty widget.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .bank import Bank
from .distributions import corner_plot, gallery_plot, match_images, match_parameters, prior_parameters, truth_parameters
from .matching import Matcher, Matches
from .runtime import ProtolibInputError

__all__ = ["ExplorerTarget", "bank_target", "image_target", "match_explorer", "has_interactive_frontend"]


@dataclass
class ExplorerTarget:
    """A target the explorer can show: its image, its best matches (up to the largest k) and truths if known."""

    label: str
    image: np.ndarray
    matches: Matches
    truths: dict | None = None


def bank_target(matcher: Matcher, system: int, projection: int = 0, *, k_max: int = 200) -> ExplorerTarget:
    """A bank system as a target (its own system excluded, its parameters as truths)."""
    return ExplorerTarget(
        f"bank system {system} (projection {projection})",
        matcher.bank.images[system, projection],
        matcher.match_system(system, projection, top_k=k_max),
        truth_parameters(matcher.bank, system, projection),
    )


def image_target(matcher: Matcher, image: np.ndarray, label: str, *, k_max: int = 200, truths: dict | None = None) -> ExplorerTarget:
    """A prepared image (e.g. an observation on the bank's grid) as a target."""
    return ExplorerTarget(label, np.asarray(image), matcher.match(image, top_k=k_max), truths)


def has_interactive_frontend() -> bool:
    """Whether a person is likely watching: a kernel started by Jupyter Server (JupyterLab, Notebook 7).

    ``PROTOLIB_INTERACTIVE=1`` or ``0`` overrides the guess.
    """
    forced = os.environ.get("PROTOLIB_INTERACTIVE")
    if forced is not None:
        return forced.strip().lower() in ("1", "true", "yes")
    return "JPY_SESSION_NAME" in os.environ


def _figures(bank: Bank, target: ExplorerTarget, k: int, parameters: Sequence[str], n_gallery: int, prior: dict):
    matches = target.matches.head(k)
    best = matches.head(n_gallery)
    gallery = gallery_plot(target.image, match_images(bank, best), best.similarity, target_caption=target.label,
                           n_columns=min(n_gallery + 1, 6))
    corner = corner_plot(match_parameters(bank, matches), prior, parameters=list(parameters), truths=target.truths,
                         parameter_info=bank.parameter_info, label="best matches")
    return gallery, corner


def match_explorer(
    bank: Bank,
    targets: Sequence[ExplorerTarget],
    *,
    parameters: Sequence[str] = ("stellar_mass", "accretion_rate", "disk_radius", "envelope_mass"),
    k: int = 50,
    n_gallery: int = 5,
    interactive: bool | None = None,
):
    """Show the explorer: a widget in JupyterLab, a static view of the first target elsewhere.

    Arguments:
        bank: the bank the targets were matched against.
        targets: the choosable targets (:func:`bank_target`, :func:`image_target`).
        parameters: the parameters first shown in the corner plot (all of the bank's can be picked).
        k: the number of best matches first shown.
        n_gallery: matches shown beside the target.
        interactive: force the widget (``True``) or the static view (``False``); default: guessed
            by :func:`has_interactive_frontend`.

    Returns:
        The widget (interactive) or the list of figures shown (static).
    """
    import matplotlib.pyplot as plt
    from IPython.display import Markdown, display

    if not targets:
        raise ProtolibInputError("The explorer needs at least one target.")
    k_max = min(len(t.matches) for t in targets)
    k = max(1, min(k, k_max))
    prior = prior_parameters(bank)
    interactive = has_interactive_frontend() if interactive is None else interactive
    if not interactive:
        display(Markdown(f"*Static view of the explorer* (open this notebook in JupyterLab to change the target, k "
                         f"and the parameters): **{targets[0].label}**, the best {k} matches."))
        figures = _figures(bank, targets[0], k, parameters, n_gallery, prior)
        for fig in figures:
            display(fig)
            plt.close(fig)
        return list(figures)
    return _widget(bank, targets, list(parameters), k, k_max, n_gallery, prior)


def _widget(bank, targets, parameters, k, k_max, n_gallery, prior):
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    choice = widgets.Dropdown(options=[(t.label, i) for i, t in enumerate(targets)], description="target")
    k_slider = widgets.IntSlider(value=k, min=min(5, k_max), max=k_max, step=1, description="k", continuous_update=False)
    names = [*bank.parameters, "inclination"]
    picked = widgets.SelectMultiple(options=names, value=[p for p in parameters if p in names], rows=6, description="parameters")
    gallery_out, corner_out = widgets.Output(), widgets.Output()

    def redraw(_=None):
        chosen = list(picked.value) if len(picked.value) >= 2 else [*picked.value, *[n for n in names if n not in picked.value]][:2]
        figures = _figures(bank, targets[choice.value], k_slider.value, chosen, n_gallery, prior)
        for out, fig in zip((gallery_out, corner_out), figures):
            out.clear_output(wait=True)
            with out:
                display(fig)
            plt.close(fig)

    for control in (choice, k_slider, picked):
        control.observe(redraw, names="value")
    redraw()
    box = widgets.VBox([widgets.HBox([widgets.VBox([choice, k_slider]), picked]), gallery_out, corner_out])
    display(box)
    return box
