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
    STRUCTURE_FRACTION,
    STRUCTURE_SIGMA,
    BandsFit,
    ImageFit,
    judge_fit,
    reference_chi2,
    residual_peak,
)
from .bands import BandTargets
from .matcher import Matcher
from .matches import Matches
from .observation_targets import ObservationTarget

__all__ = ["MatchFit", "fit_matches"]


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
    """

    reduced_chi2: np.ndarray
    verdict: Any
    residuals: np.ndarray
    reference_rows: np.ndarray
    reference_matches: list[Matches]
    reduced_chi2_by_band: np.ndarray | None = None


@dataclass
class _FitView:
    """How a target is compared with bank images: its fit, the bank seen like it (with noise), the bank's images,
    the embedding of target-like images, and the residual structure of a target against a match."""

    fit: Any
    observe: Callable
    load: Callable
    embed: Callable
    structure: Callable


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
    while the references are searched as the target was (in the searched band, or in every band jointly).

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
    best_chi2, best_excess, found, peaks = _references(matcher, view, rows, reference_top_k or len(matches))
    k = int(np.argmin(chi2))
    best = float(chi2[k])
    verdict = judge_fit(
        best,
        float(view.fit.excess(image, best)),
        (best_chi2, best_excess),
        peak=view.structure(image, match_images[k]),
        reference_peaks=peaks,
    )
    residuals = view.fit.residuals(image, match_images[: len(matches.head(n_gallery))])
    by_band = view.fit.reduced_chi2_by_band(image, match_images) if bands is not None else None
    return MatchFit(chi2, verdict, residuals, rows, found, by_band)


def _references(matcher: Matcher, view: _FitView, rows: np.ndarray, top_k: int):
    """The reference targets ``rows`` seen like the target and searched as it was (never in their own system):
    :func:`~protolib.goodness_of_fit.reference_chi2`'s best chi-squares, excesses, matches and residual peaks."""

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
        fit = ImageFit(
            resolution,
            observation.noise_rms_jy_beam,
            resolution.bank_noise_rms_jy_beam,
            observation.coverage,
            flux_tolerance,
        )
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

    return _FitView(fit, observe, bank.images_at, matcher.embed, structure)


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

    return _FitView(BandsFit(fits), observe, bands.load_images, embed, structure)
