"""The matches compared with the target in image space.

:func:`fit_matches` gives every match's reduced chi-square against the target and the image-space
verdict (:mod:`protolib.goodness_of_fit`), measured on reference targets: bank images as bright as
the target, seen like it. The references and their matches are kept in the :class:`MatchFit`: the
calibration of the target's intervals (:func:`~protolib.matching.calibration.choose_k_and_widening`,
a step of its own in ``protolib match``) is measured on the same references.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..bank import Bank
from ..goodness_of_fit import (
    EXCESS_LIMIT,
    NOISE_LEVEL_CHI2,
    STRUCTURE_FRACTION,
    STRUCTURE_SIGMA,
    BandsFit,
    ImageFit,
    judge_fit,
    reference_chi2,
    residual_peak,
)
from ..runtime import ProtolibInputError
from .bands import BandTargets
from .matcher import Matcher
from .matches import Matches
from .observation_targets import ObservationTarget

__all__ = [
    "MatchFit",
    "fit_matches",
    "DISTRIBUTION_RULES",
    "FIT_CUT_FACTOR",
    "distribution_order",
    "distribution_weights",
    "choose_matches",
    "independent_beams",
    "reduced_chi2_of_matches",
]


@dataclass
class MatchFit:
    """What the image-space comparison of a target with its matches gives (:func:`fit_matches`).

    Attributes:
        reduced_chi2: ``(n_matches,)`` each match's reduced chi-square against the target.
        verdict: the :class:`~protolib.goodness_of_fit.FitVerdict`.
        residuals: ``(n_gallery, H, W)`` the first matches' residual maps, in noise rms.
        reference_rows: ``(n_reference,)`` the bank rows of the reference targets (bank images as bright as the
            target, seen like it); ``reference_matches``: each one's matches, searched as the target was. Their
            true parameters are known, so they calibrate the target's intervals
            (:func:`~protolib.matching.calibration.choose_k_and_widening`).
        reduced_chi2_by_band: ``(bands, n_matches)`` each band's reduced chi-square, for a target in several bands
            (``reduced_chi2`` is then the joint one, :class:`~protolib.goodness_of_fit.BandsFit`; ``residuals``
            ``(n_gallery, bands, H, W)``); ``None`` for one band.
        reference_reduced_chi2: each reference's ``(n,)`` matches' reduced chi-squares against it, so that the
            calibration chooses the references' matches by the rule the target's are chosen by
            (:func:`distribution_order`).
        independent_beams: the beams in the fitted field (pixels within a beam are correlated): the degrees of
            freedom a reduced chi-square difference is counted in (:func:`distribution_weights`).
        excess: ``(n_matches,)`` each match's residual beyond the noise, as a fraction of the target's signal.
    """

    reduced_chi2: np.ndarray
    verdict: Any
    residuals: np.ndarray
    reference_rows: np.ndarray
    reference_matches: list[Matches]
    reduced_chi2_by_band: np.ndarray | None = None
    reference_reduced_chi2: list[np.ndarray] | None = None
    independent_beams: float = 1.0
    excess: np.ndarray | None = None

    def reproducing(self) -> np.ndarray:
        """``(n_matches,)`` whether each match reproduces the target by the verdict's two tests of the residual's size
        (:func:`~protolib.goodness_of_fit.judge_fit`: within the noise, or an excess no larger than the bank's own
        images are left with and than the absolute limit; the structure test is made on the best match only)."""
        chi2 = np.asarray(self.reduced_chi2)
        excess = np.full(len(chi2), np.inf) if self.excess is None else np.asarray(self.excess)
        within = (excess <= self.verdict.limit) & (excess <= EXCESS_LIMIT)
        return (chi2 <= NOISE_LEVEL_CHI2) | within


@dataclass
class _FitView:
    """How a target is compared with bank images: its fit, the bank seen like it (with noise), the bank's images,
    the embedding of target-like images, and the residual structure of a target against a match."""

    fit: Any
    observe: Callable
    load: Callable
    embed: Callable
    structure: Callable
    beam_pixels: float = 1.0  # pixels per beam (the searched band's), to count a chi-square's independent beams


def _reference_rows(
    bank: Bank, view: _FitView, image: np.ndarray, n_reference: int, rng: np.random.Generator
) -> np.ndarray:
    """Bank image rows as bright as the target: from ``8 n_reference`` drawn at random, the ``n_reference``
    whose signal rms after the transform is nearest the target's (the excess residual of faint images
    is dominated by noise, of bright ones by the bank's coarseness: the yardstick must be like the target)."""
    fit = view.fit
    n_rows = bank.n_systems * bank.n_projections
    candidates = np.sort(rng.choice(n_rows, size=min(8 * n_reference, n_rows), replace=False))
    models = fit.models(view.load(candidates // bank.n_projections, candidates % bank.n_projections))
    brightness = np.sqrt(np.mean(np.square(models[:, fit.used(np.shape(image))]), axis=1)) + 1e-30
    return candidates[np.argsort(np.abs(np.log(brightness / fit.signal_rms(image))), kind="stable")[:n_reference]]


def fit_matches(
    matcher: Matcher,
    image: np.ndarray,
    matches: Matches,
    *,
    observation: ObservationTarget | None = None,
    n_reference: int = 48,
    reference_top_k: int | None = None,
    n_gallery: int = 11,
    seed: int = 0,
    flux_tolerance=0.0,
    bands: BandTargets | None = None,
    rule: str = "similarity",
) -> MatchFit | None:
    """Every match's reduced chi-square against the target, the image-space verdict, the gallery's
    residuals, and the reference targets that calibrate the intervals at the target's resolution and noise.

    See :mod:`protolib.goodness_of_fit`. The reference is ``n_reference`` bank images as bright as the
    target (:func:`_reference_rows`, drawn with ``seed``), turned into targets like this one (the
    observation's transform and noise, or the bank's own for a bank target) and matched with their
    ``reference_top_k`` best matches (default: as many as the target has). Their true parameters are
    known, so they also calibrate the target's intervals (kept in the :class:`MatchFit` for
    :func:`~protolib.matching.calibration.choose_k_and_widening`: how much the central intervals of that many
    matches must be widened about the median to hold the truth as often as they claim, at this
    observation's beam and noise). ``flux_tolerance``: each match's fluxes may be scaled within it to fit
    (:class:`~protolib.goodness_of_fit.ImageFit`; the target's flux-calibration uncertainty), the references' alike.
    ``bands``: the target is the maps of one source in several bands (``image`` ``(bands, H, W)``,
    :func:`~protolib.matching.prepare_band_targets`; ``flux_tolerance`` one per band): every match and every
    reference is compared in each band, in that band's noise (:class:`~protolib.goodness_of_fit.BandsFit`),
    while the references are searched as the target was (in the searched band, or in every band jointly). ``rule``:
    how the distribution's matches are chosen (:func:`distribution_order`); the gallery's residuals are those of its
    first matches.

    Returns:
        The :class:`MatchFit`, or ``None`` for a noiseless bank target (no noise to judge a residual by).
    """
    rng = np.random.default_rng(seed)
    view = (
        _bands_view(matcher, bands, flux_tolerance, rng)
        if bands is not None
        else _one_band_view(matcher, observation, flux_tolerance, rng)
    )
    if view is None:
        return None
    match_images = view.load(matches.system, matches.projection)
    chi2 = view.fit.reduced_chi2(image, match_images)
    rows = _reference_rows(matcher.bank, view, image, n_reference, rng)
    best_chi2, best_excess, found, peaks, every = _references(matcher, view, rows, reference_top_k or len(matches))
    k = int(np.argmin(chi2))
    best = float(chi2[k])
    verdict = judge_fit(
        best,
        float(view.fit.excess(image, best)),
        (best_chi2, best_excess),
        peak=view.structure(image, match_images[k]),
        reference_peaks=peaks,
    )
    shown = distribution_order(chi2, rule)[:n_gallery]
    residuals = view.fit.residuals(image, match_images[shown])
    by_band = view.fit.reduced_chi2_by_band(image, match_images) if bands is not None else None
    beams = independent_beams(int(np.count_nonzero(view.fit.used(np.shape(image)))), view.beam_pixels)
    return MatchFit(chi2, verdict, residuals, rows, found, by_band, every, beams, view.fit.excess(image, chi2))


def _references(matcher: Matcher, view: _FitView, rows: np.ndarray, top_k: int):
    """The reference targets ``rows`` seen like the target and searched as it was (never in their own system):
    :func:`~protolib.goodness_of_fit.reference_chi2`'s best chi-squares, excesses, matches, residual peaks and every
    match's chi-square."""

    def search(vectors, excluded):
        return matcher.search(vectors, top_k=top_k, exclude_systems=excluded)

    return reference_chi2(
        view.fit, view.observe, view.embed, search, view.load, rows, matcher.bank.n_projections, view.structure
    )


def _one_band_view(
    matcher: Matcher, observation: ObservationTarget | None, flux_tolerance: float, rng
) -> _FitView | None:
    """The comparison of one image: an observation's (its transform and noise) or a bank target's (``None`` when
    noiseless)."""
    bank = matcher.bank
    if observation is not None:
        resolution = observation.resolution
        fit = _observation_fit(observation, flux_tolerance)
        beam, pixel_arcsec = resolution.target_beam, resolution.pixel_arcsec

        def observe(images):
            return resolution(images, rng)
    else:
        noise = bank.instrument.noise_rms_jy_beam if bank.unit == "Jy/beam" else 0.0
        if not noise > 0:
            return None
        fit = ImageFit(None, noise, noise, flux_tolerance=flux_tolerance)
        beam, pixel_arcsec = bank.instrument.beam, bank.pixel_size_au / bank.instrument.distance_pc

        def observe(images):
            return images

    def structure(target, match):
        return residual_peak(
            fit.residuals(target, match[None])[0], target, fit.sigma, beam, pixel_arcsec, fit.used(np.shape(target))
        )

    return _FitView(fit, observe, bank.images_at, matcher.embed, structure, beam_pixels(beam, pixel_arcsec))


def _bands_view(matcher: Matcher, bands: BandTargets, flux_tolerance, rng) -> _FitView:
    """The comparison of one source's maps in several bands: each band through its map's transform and noise; the
    searched band (or every band, jointly) embedded; the residual structure the most significant of any band's (one
    that fails the test first)."""
    tolerances = np.broadcast_to(np.asarray(flux_tolerance, dtype=np.float64), (len(bands.targets),))
    fits = [
        ImageFit(t.resolution, t.noise_rms_jy_beam, t.resolution.bank_noise_rms_jy_beam, t.coverage, float(tol))
        for t, tol in zip(bands.targets, tolerances)
    ]

    def observe(images):
        return np.stack([t.resolution(images[:, b], rng) for b, t in enumerate(bands.targets)], axis=1)

    def embed(images):
        return matcher.embed(bands.searched(images))

    def structure(target, match):
        peaks = [
            residual_peak(
                f.residuals(target[b], match[b][None])[0],
                target[b],
                f.sigma,
                t.resolution.target_beam,
                t.resolution.pixel_arcsec,
                f.used(np.shape(target[b])),
            )
            for b, (f, t) in enumerate(zip(fits, bands.targets))
        ]
        return max(
            peaks,
            key=lambda p: (
                p.significance >= STRUCTURE_SIGMA and p.fraction_of_peak >= STRUCTURE_FRACTION,
                p.significance,
            ),
        )

    searched = bands.targets[bands.search].resolution
    return _FitView(BandsFit(fits), observe, bands.load_images, embed, structure, _pixels_per_beam(searched))


def _pixels_per_beam(resolution) -> float:
    """The pixels in one beam of a target's resolution (its beam, on the bank's grid)."""
    return beam_pixels(resolution.target_beam, resolution.pixel_arcsec)


# ---------------------------------------------------------------------------------------------
# Which matches form the distribution


DISTRIBUTION_RULES = ("similarity", "fit_rank", "fit_cut", "fit_weight")
"""How the distribution's matches are chosen from those searched (:func:`choose_matches`; ``similarity`` by default,
as measured there)."""
FIT_CUT_FACTOR = 2.0
"""``fit_cut`` keeps the matches whose reduced chi-square is at most this times the best's (or than 1, when the best is
within the noise)."""
FIT_CUT_LEAST = 10
"""``fit_cut`` keeps at least this many of the best-fitting matches (percentiles of fewer are not percentiles)."""


def beam_pixels(beam, pixel_arcsec: float) -> float:
    """The pixels in one beam's area, pi major minor / (4 ln 2) over the pixel's."""
    return float(np.pi * beam.major_arcsec * beam.minor_arcsec / (4.0 * np.log(2.0)) / pixel_arcsec**2)


def independent_beams(n_pixels: int, pixels_per_beam: float) -> float:
    """How many independent measurements ``n_pixels`` pixels fitted at this beam hold (at least one): pixels within a
    beam are correlated, so a reduced chi-square difference counts beams, not pixels."""
    return float(max(n_pixels / max(pixels_per_beam, 1.0), 1.0))


def distribution_order(reduced_chi2: np.ndarray, rule: str) -> np.ndarray:
    """The order in which the matches searched (best similarity first) enter the distribution: as searched for
    ``"similarity"``, by reduced chi-square (lowest first, ties by similarity) for the fit rules.

    Raises:
        ProtolibInputError: ``rule`` is none of :data:`DISTRIBUTION_RULES`.
    """
    if rule not in DISTRIBUTION_RULES:
        raise ProtolibInputError(f"matching.distribution must be one of {', '.join(DISTRIBUTION_RULES)}; got {rule!r}.")
    chi2 = np.asarray(reduced_chi2, dtype=np.float64)
    return np.arange(len(chi2)) if rule == "similarity" else np.argsort(chi2, kind="stable")


def distribution_weights(ordered_chi2: np.ndarray, rule: str, beams: float) -> np.ndarray | None:
    """Each match's weight in the distribution, for matches in :func:`distribution_order` (``None``: the first ``k``,
    equal weights, ``k`` calibrated on the references).

    ``"fit_cut"``: 1 within :data:`FIT_CUT_FACTOR` of the best reduced chi-square (at least the :data:`FIT_CUT_LEAST`
    best), else 0. ``"fit_weight"``: ``exp(-dchi2 / 2)``, with the tempered difference
    ``dchi2 = n_beams (chi2_red - chi2_red_best) / max(chi2_red_best, 1)``. Why tempered: the total chi-square
    difference ``n_pixels (chi2_red - chi2_red_best)`` takes the noise as the only error and the pixels as independent;
    on real maps the best match leaves tens of times the noise (the bank is coarse, a model error) and a beam covers
    tens of pixels, so it would weight one match alone. The noise is inflated until the best match fits (divided by its
    reduced chi-square, a Birge ratio) and the difference counted in beams.
    """
    chi2 = np.asarray(ordered_chi2, dtype=np.float64)
    if rule in ("similarity", "fit_rank") or not len(chi2):
        return None
    best = max(float(np.min(chi2)), 1.0)  # a best match within the noise: the noise needs no inflating
    if rule == "fit_cut":
        kept = chi2 <= FIT_CUT_FACTOR * best
        kept[np.argsort(chi2, kind="stable")[:FIT_CUT_LEAST]] = True
        return kept.astype(np.float64)
    return np.exp(-0.5 * beams * (chi2 - np.min(chi2)) / best)


def choose_matches(
    reduced_chi2: np.ndarray, rule: str, k: int | None, beams: float
) -> tuple[np.ndarray, np.ndarray | None]:
    """The matches ``rule`` puts in the distribution: their indices into the matches searched, in the rule's order
    (:func:`distribution_order`; the first ``k`` for a rule of equal weights, ``None``: all), and their weights
    (:func:`distribution_weights`; ``None``: equal; matches of no weight are left out).

    Why ``similarity`` is the default (``matching.distribution``), measured with ``benchmarks/fit_ranking.py`` on 40
    synthetic NOEMA-like maps and the three shipped maps, default bank, each rule applied to the target and to the 48
    references that calibrate ``k`` and the widening alike. The 68% / 95% coverage (mean over ten parameters), the
    68% width over the prior's, and the median reduced chi-square of the matches kept:

    - ``similarity`` (``k`` calibrated, 200 for every map): 0.76 / 0.96, width 0.88, chi-square 45; 17 of 18
      published values inside the real maps' 95% intervals;
    - ``fit_rank`` with ``k`` at most 50: 0.73 / 0.93, width 0.84, chi-square 4.8; 16 of 18 (up to 200 it calibrates
      to ``k`` = 200, the same matches as ``similarity``, in 36 of the 40 maps);
    - ``fit_cut``: 0.75 / 0.92, width 0.92, chi-square 1.4; 15 of 18;
    - ``fit_weight``: 0.54 / 0.75, width 0.77, chi-square 0.9; 15 of 18 (with a quarter of the beams 0.70 / 0.89).

    The matches that fit the map are as spread in parameters as the most similar ones (widths within 5%), and their
    intervals cover less even when the references are chosen the same way: similarity stays the default, and the
    report says how many of its matches reproduce the map (:meth:`MatchFit.reproducing`).
    """
    order = distribution_order(reduced_chi2, rule)
    weights = distribution_weights(np.asarray(reduced_chi2)[order], rule, beams)
    if weights is None:
        return order[: k or len(order)], None
    return order[weights > 0], weights[weights > 0]


def reduced_chi2_of_matches(
    bank: Bank, observation: ObservationTarget, matches: Matches, flux_tolerance: float = 0.0
) -> np.ndarray:
    """``(n,)`` each match's reduced chi-square against an observation, as :func:`fit_matches` computes the target's:
    for an observing draw's matches against the map prepared as that draw sees it."""
    fit = _observation_fit(observation, flux_tolerance)
    return fit.reduced_chi2(observation.image, bank.images_at(matches.system, matches.projection))


def _observation_fit(observation: ObservationTarget, flux_tolerance: float) -> ImageFit:
    """The image-space comparison an observation asks: its transform's resolution, its noise beside the bank's, its
    coverage, and the flux scale free within ``flux_tolerance``."""
    resolution = observation.resolution
    return ImageFit(
        resolution,
        observation.noise_rms_jy_beam,
        resolution.bank_noise_rms_jy_beam,
        observation.coverage,
        flux_tolerance,
    )
