"""An interactive explorer of matches for JupyterLab: choose a target, move k, pick parameters.

The gallery and the corner plot update as the controls change (ipywidgets). Above them stands the
target's out-of-distribution verdict (:meth:`protolib.matching.Matcher.check`), with a warning when
the target looks unlike the bank: its distributions then describe the bank, not the target. The
gallery shows the matches as the network saw them: through the transform the bank was embedded
with for that target (an observation's beam and noise), as chapter 04 does.

Where no interactive front end is attached (the static book, a notebook run by ``nbclient``), the
explorer shows a static view of its first target instead of an empty widget.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .bank import Bank
from .distributions import match_images, match_parameters, prior_parameters, truth_parameters
from .matching import ImageTransform, Matcher, Matches, OutOfDistributionCheck
from .plots.corner import plot_corner
from .plots.gallery import plot_gallery
from .runtime import ProtolibInputError

__all__ = [
    "ExplorerTarget",
    "bank_target",
    "image_target",
    "match_explorer",
    "has_interactive_frontend",
    "verdict_line",
    "shown_beam_au",
]


@dataclass
class ExplorerTarget:
    """A target the explorer can show: its image, its best matches (up to the largest k) and truths if known.

    Attributes:
        label: the target's name, shown in the menu and over its panel.
        image: ``(H, W)`` the target as the network saw it.
        matches: its best matches, best first.
        truths: its true parameters, when it is simulated.
        check: its out-of-distribution verdict (``None``: not judged).
        transform: bank images ``(N, H, W)`` as the network saw them for this target (``None``: as stored).
        unit: the unit of ``image`` and of the transformed matches, for the colour bars.
    """

    label: str
    image: np.ndarray
    matches: Matches
    truths: dict | None = None
    check: OutOfDistributionCheck | None = None
    transform: ImageTransform | None = None
    unit: str = "Jy/beam"


def bank_target(
    matcher: Matcher, system: int, projection: int = 0, *, k_max: int = 200, limit_percentile: float = 5.0
) -> ExplorerTarget:
    """A bank system as a target (its own system excluded, its parameters as truths), judged by ``matcher.check``.

    When the matcher embedded the bank through a transform, the target and its matches are shown
    through it too (with a fresh noise draw).
    """
    matches = matcher.match_system(system, projection, top_k=k_max)
    image = matcher.bank.images[system, projection]
    if matcher.transform is not None:
        image = matcher.transform(np.asarray(image)[None])[0]
    return ExplorerTarget(
        f"bank system {system} (projection {projection})",
        image,
        matches,
        truth_parameters(matcher.bank, system, projection),
        matcher.check(matches, limit_percentile=limit_percentile),
        matcher.transform,
        matcher.bank.unit if matcher.transform is None else "Jy/beam",
    )


def image_target(
    matcher: Matcher,
    image: np.ndarray,
    label: str,
    *,
    k_max: int = 200,
    truths: dict | None = None,
    transform: ImageTransform | None = None,
    limit_percentile: float = 5.0,
    unit: str = "Jy/beam",
) -> ExplorerTarget:
    """A prepared image (e.g. an observation on the bank's grid) as a target, judged by ``matcher.check``.

    Arguments:
        matcher: the matcher for this image (for an observation, one that embedded the bank through
            the observation's transform: ``Matcher.from_model(..., transform=target.transform, ...)``).
        image: ``(H, W)`` on the bank's grid, in ``unit``.
        label: the target's name.
        k_max: the most matches kept (the largest k).
        truths: the true parameters, when the image is simulated.
        transform: how the matches are shown (default: the matcher's, the transform the bank was
            embedded through, so that the gallery shows what the network compared).
        limit_percentile: the out-of-distribution limit (see :meth:`~protolib.matching.Matcher.check`).
        unit: the image's unit, for the colour bars.
    """
    matches = matcher.match(image, top_k=k_max)
    return ExplorerTarget(
        label,
        np.asarray(image),
        matches,
        truths,
        matcher.check(matches, limit_percentile=limit_percentile),
        transform if transform is not None else matcher.transform,
        unit,
    )


def verdict_line(target: ExplorerTarget) -> tuple[bool | None, str]:
    """``(out_of_distribution, line)``: the target's verdict in one line, a warning first when it is out of
    distribution."""
    check = target.check
    if check is None:
        return None, f"{target.label}: not judged (no out-of-distribution check was made for this target)."
    if check.is_out_of_distribution:
        warning = "" if check.message.startswith("WARNING") else "WARNING: out of distribution. "
        return True, f"{target.label}: {warning}{check.message} Its distributions describe the bank, not this target."
    return False, f"{target.label}: {check.message}"


def has_interactive_frontend() -> bool:
    """Whether a person is likely watching: a kernel started by Jupyter Server (JupyterLab, Notebook 7).

    ``PROTOLIB_INTERACTIVE=1`` or ``0`` overrides the guess.
    """
    forced = os.environ.get("PROTOLIB_INTERACTIVE")
    if forced is not None:
        return forced.strip().lower() in ("1", "true", "yes")
    return "JPY_SESSION_NAME" in os.environ


def shown_beam_au(bank: Bank, transform: ImageTransform | None) -> tuple[float, float, float] | None:
    """The beam a target is shown at, for its gallery panel: ``(major, minor)`` FWHM in au at the bank's distance and
    the position angle [deg]; the observation's when the images go through its transform (one with a
    ``resolution.target_beam``), else the bank's own (``None`` for a bank without a beam)."""
    resolution = getattr(transform, "resolution", None)
    if transform is not None:
        beam = getattr(resolution, "target_beam", None)
    else:
        beam = bank.instrument.beam if bank.instrument.beam_major_arcsec > 0 else None
    if beam is None:
        return None
    return beam.in_au(bank.instrument.distance_pc)


def _figures(bank: Bank, target: ExplorerTarget, k: int, parameters: Sequence[str], n_gallery: int, prior: dict):
    """The gallery (the matches as the network saw them, the verdict over it) and the corner plot of ``target``'s best
    ``k``."""
    matches = target.matches.head(k)
    best = matches.head(n_gallery)
    images = match_images(bank, best)
    if target.transform is not None:
        images = target.transform(images)
    inclination = bank.inclination[best.system, best.projection]
    gallery = plot_gallery(
        target.image,
        images,
        best.similarity,
        target_caption=target.label,
        n_columns=min(n_gallery + 1, 3),
        captions=[f"system {s}, i = {i:.0f} deg" for s, i in zip(best.system, inclination)],
        pixel_size_au=bank.pixel_size_au if np.isfinite(bank.pixel_size_au) else None,
        unit=target.unit,
        beam_au=shown_beam_au(bank, target.transform),
    )
    outside, _ = verdict_line(target)
    if outside is not None:
        verdict = "OUT OF DISTRIBUTION: do not trust these matches" if outside else "in distribution"
        shown = "through the target's transform" if target.transform is not None else "as stored in the bank"
        gallery.suptitle(
            f"{verdict} (best similarity {target.check.best_similarity:.3f}); matches {shown}",
            color="C3" if outside else "black",
            fontsize=gallery.axes[0].title.get_fontsize(),
        )
    corner = plot_corner(
        match_parameters(bank, matches),
        prior,
        parameters=list(parameters),
        truths=target.truths,
        parameter_info=bank.parameter_info,
        label="best matches",
    )
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

    Both show the chosen target's out-of-distribution verdict above its gallery, a warning when it
    is out of distribution.

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
        outside, line = verdict_line(targets[0])
        display(
            Markdown(
                f"*Static view of the explorer* (open this notebook in JupyterLab to change the target, k "
                f"and the parameters): **{targets[0].label}**, the best {k} matches.\n\n"
                + (f"**{line}**" if outside else line)
            )
        )
        figures = _figures(bank, targets[0], k, parameters, n_gallery, prior)
        for fig in figures:
            display(fig)
            plt.close(fig)
        return list(figures)
    return _widget(bank, targets, list(parameters), k, k_max, n_gallery, prior)


def _verdict_html(target: ExplorerTarget) -> str:
    """The verdict line as HTML: a red warning box when out of distribution, a plain line otherwise."""
    outside, line = verdict_line(target)
    style = (
        "background:#fde2e1;border-left:6px solid #c0392b;color:#7b1d1d;font-weight:bold"
        if outside
        else "background:#e8f4ea;border-left:6px solid #2e7d32;color:#1b4d20"
    )
    return (
        f'<div class="protolib-verdict" style="{style};padding:6px 10px;margin:4px '
        f'0;white-space:normal">{html.escape(line)}</div>'
    )


def _widget(bank, targets, parameters, k, k_max, n_gallery, prior):
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    choice = widgets.Dropdown(options=[(t.label, i) for i, t in enumerate(targets)], description="target")
    k_slider = widgets.IntSlider(
        value=k, min=min(5, k_max), max=k_max, step=1, description="k", continuous_update=False
    )
    names = [*bank.physical_parameters, "inclination"]
    picked = widgets.SelectMultiple(
        options=names, value=[p for p in parameters if p in names], rows=6, description="parameters"
    )
    verdict = widgets.HTML(layout=widgets.Layout(width="100%"))
    gallery_out, corner_out = widgets.Output(), widgets.Output()

    def redraw(_=None):
        chosen = (
            list(picked.value)
            if len(picked.value) >= 2
            else [*picked.value, *[n for n in names if n not in picked.value]][:2]
        )
        verdict.value = _verdict_html(targets[choice.value])
        figures = _figures(bank, targets[choice.value], k_slider.value, chosen, n_gallery, prior)
        for out, fig in zip((gallery_out, corner_out), figures):
            out.clear_output(wait=True)
            with out:
                display(fig)
            plt.close(fig)

    for control in (choice, k_slider, picked):
        control.observe(redraw, names="value")
    redraw()
    box = widgets.VBox([widgets.HBox([widgets.VBox([choice, k_slider]), picked]), verdict, gallery_out, corner_out])
    display(box)
    return box
