"""Goodness of fit in image space: does any bank image reproduce the target, at its noise?

Similarity in embedding space ranks the bank, but a network can learn to ignore what makes a target
unlike every bank image (a companion, a ring, a disk larger than the bank's). The residual of the
target against each match, after the transform that sees the bank as the target was seen, does not
ignore anything. Its reduced chi-square,

    chi2_red = mean over observed pixels of (target - T(match))^2 / (sigma_target^2 + sigma_match^2),

is about 1 when a match differs from the target by noise alone. Pixels are correlated over the beam,
so the mean is still unbiased but scatters more than for independent pixels; and a bank of finite
size rarely holds an image equal to the target within the noise when the signal-to-noise ratio is
high. The verdict therefore also measures the **excess residual**: the residual beyond the noise as
a fraction of the target's signal,

    excess = sqrt(max(chi2_red - 1, 0)) * sigma / rms(signal),

which does not grow with the signal-to-noise ratio the way the chi-square does, and compares it
with a **reference**: what held-out bank images, seen through the same transform and given the same
noise, get from their own best matches (:func:`reference_chi2`). A target fits when its best match
is within the noise (chi2_red <= 1.5) or leaves no more excess than the bank's own images do from
theirs (up to the 95th percentile); one far beyond that does not, whatever the embedding similarity says.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch

from .instrument import Beam, beam_kernel, convolve_beam

__all__ = ["ResidualPeak", "residual_peak", "RESIDUAL_SCALES", "ImageFit", "FitVerdict", "reference_chi2", "judge_fit", "Detection", "detection", "non_detection_fraction", "DETECTION_SIGMA"]


class ImageFit:
    """Residuals and reduced chi-square of bank images against one target.

    Arguments:
        model_transform: bank images ``(N, H, W)`` to the target's resolution and units, *without*
            noise (``None``: the identity, for a bank target).
        noise_rms_jy_beam: the noise rms of the target image.
        match_noise_rms_jy_beam: the noise left in a transformed bank image (the bank's own, smoothed).
        coverage: ``(H, W)`` fraction of each pixel with observed data; pixels under half covered are
            left out of the chi-square.
    """

    def __init__(
        self,
        model_transform: Callable[[np.ndarray], np.ndarray] | None,
        noise_rms_jy_beam: float,
        match_noise_rms_jy_beam: float = 0.0,
        coverage: np.ndarray | None = None,
    ):
        self.model_transform = model_transform
        self.noise_rms_jy_beam = float(noise_rms_jy_beam)
        self.match_noise_rms_jy_beam = float(match_noise_rms_jy_beam)
        self.sigma = float(np.sqrt(self.noise_rms_jy_beam**2 + self.match_noise_rms_jy_beam**2))
        if not self.sigma > 0:
            raise ValueError("A goodness of fit needs a positive noise rms.")
        self.coverage = None if coverage is None else np.asarray(coverage, dtype=np.float32)

    def used(self, shape: tuple[int, ...]) -> np.ndarray:
        """``(H, W)`` the pixels the chi-square is taken over: those at least half observed."""
        return np.ones(shape, dtype=bool) if self.coverage is None else self.coverage >= 0.5

    def signal_rms(self, image: np.ndarray) -> float:
        """The rms of ``image``'s signal over the used pixels, its noise taken out."""
        values = np.asarray(image, dtype=np.float64)[self.used(np.shape(image))]
        return math.sqrt(max(float(np.mean(np.square(values))) - self.noise_rms_jy_beam**2, 1e-30))

    def models(self, bank_images: np.ndarray) -> np.ndarray:
        """Bank images ``(N, H, W)`` as the target sees them (noise-free transform)."""
        images = np.asarray(bank_images, dtype=np.float32)
        return images if self.model_transform is None else np.asarray(self.model_transform(images), dtype=np.float32)

    def residuals(self, target: np.ndarray, bank_images: np.ndarray) -> np.ndarray:
        """``(target - T(image)) / sigma`` for each bank image, ``(N, H, W)``; zero where not observed."""
        residual = (np.asarray(target, dtype=np.float32)[None] - self.models(bank_images)) / self.sigma
        if self.coverage is not None:
            residual = residual * (self.coverage >= 0.5)
        return residual

    def reduced_chi2(self, target: np.ndarray, bank_images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Reduced chi-square ``(N,)`` of each bank image against ``target`` (mean over observed pixels)."""
        n_used = max(int(self.used(np.shape(target)).sum()), 1)
        out = [np.square(self.residuals(target, bank_images[i : i + batch_size])).sum(axis=(1, 2)) / n_used
               for i in range(0, len(bank_images), batch_size)]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float64)

    def excess(self, target: np.ndarray, reduced_chi2: np.ndarray | float) -> np.ndarray:
        """The residual beyond the noise as a fraction of the target's signal rms (see the module)."""
        return np.sqrt(np.clip(np.asarray(reduced_chi2, dtype=np.float64) - 1.0, 0.0, None)) * self.sigma / self.signal_rms(target)


def reference_chi2(
    fit: ImageFit,
    observe: Callable[[np.ndarray], np.ndarray],
    embed: Callable[[np.ndarray], np.ndarray],
    search: Callable[[np.ndarray, list[int]], list],
    load_images: Callable[[np.ndarray, np.ndarray], np.ndarray],
    reference_rows: np.ndarray,
    n_projections: int,
) -> tuple[np.ndarray, np.ndarray, list]:
    """Best reduced chi-square of held-out bank images against their own best matches, seen like the target.

    Each reference bank image is turned into a target (``observe``: the transform *with* noise), embedded,
    matched to the bank without its own system (``search``), and its matches' chi-squares computed
    with ``fit``. The result is what a target like the bank gets: the yardstick of :func:`judge_fit`.

    Arguments:
        fit: the target's :class:`ImageFit` (its noise, coverage and transform).
        observe: bank images to target-like images, noise included.
        embed: images to embeddings (the matcher's).
        search: ``(embeddings, excluded systems)`` to one :class:`~protolib.matching.Matches` per row.
        load_images: ``(systems, projections)`` to bank images ``(n, H, W)``.
        reference_rows: bank image rows (``system * n_projections + projection``) to use.
        n_projections: projections per system in the bank.

    Returns:
        ``(best reduced chi-square, its excess residual, the matches)``: two arrays ``(len(reference_rows),)``
        and each reference image's :class:`~protolib.matching.Matches` (for calibrating intervals).
    """
    systems, projections = reference_rows // n_projections, reference_rows % n_projections
    targets = np.asarray(observe(load_images(systems, projections)), dtype=np.float32)
    if fit.coverage is not None:
        targets = targets * fit.coverage
    found = search(embed(targets), systems.tolist())
    best, excess = np.empty(len(reference_rows)), np.empty(len(reference_rows))
    for i, matches in enumerate(found):
        best[i] = fit.reduced_chi2(targets[i], load_images(matches.system, matches.projection)).min()
        excess[i] = fit.excess(targets[i], best[i])
    return best, excess, found


@dataclass
class FitVerdict:
    """Does any match reproduce the target? Its best chi-square and excess residual against the bank's own.

    Attributes:
        best_reduced_chi2: the best (lowest) reduced chi-square among the target's matches.
        best_excess: that match's residual beyond the noise, as a fraction of the target's signal rms.
        residual_rms_in_noise: the best match's residual rms in units of the noise (``sqrt`` of the chi-square).
        reference_chi2: percentiles (keys 5, 50, 95) of held-out bank images' best reduced chi-square,
            seen through the same transform with the same noise.
        reference_excess: the same percentiles of their excess residual.
        limit_percentile: beyond this percentile of the reference excess, the target is not reproduced.
        limit: that percentile's value.
        fraction_of_reference_worse: the fraction of reference images with a larger excess.
        reproduces: the verdict.
        message: the verdict in words, with the numbers.
    """

    best_reduced_chi2: float
    best_excess: float
    residual_rms_in_noise: float
    reference_chi2: dict
    reference_excess: dict
    limit_percentile: float
    limit: float
    fraction_of_reference_worse: float
    reproduces: bool
    message: str

    def to_dict(self) -> dict:
        data = asdict(self)
        for key in ("reference_chi2", "reference_excess"):
            data[key] = {str(k): v for k, v in data[key].items()}
        return data


NOISE_LEVEL_CHI2 = 1.5  # a best match below this reduced chi-square differs from the target by noise alone


def judge_fit(best_reduced_chi2: float, best_excess: float, reference: tuple[np.ndarray, np.ndarray], *,
              limit_percentile: float = 95.0) -> FitVerdict:
    """The image-space verdict: is the target's best match as good as bank images get from theirs?

    Arguments:
        best_reduced_chi2: the target's best reduced chi-square; ``best_excess``: its excess residual.
        reference: ``(best chi-squares, excess residuals)`` of held-out bank images (:func:`reference_chi2`).
        limit_percentile: the target is not reproduced when its excess is beyond this percentile of the
            reference's (and its chi-square above :data:`NOISE_LEVEL_CHI2`).
    """
    chi2_ref, excess_ref = (np.asarray(r, dtype=np.float64) for r in reference)
    best, excess = float(best_reduced_chi2), float(best_excess)
    rms = float(np.sqrt(max(best, 0.0)))
    if len(excess_ref) == 0:
        return FitVerdict(best, excess, rms, {}, {}, limit_percentile, float("nan"), float("nan"), best <= NOISE_LEVEL_CHI2,
                          f"Best match reduced chi-square {best:.3g} (no reference to compare with).")
    qs = (5, 50, 95)
    chi2_pct = {q: float(np.percentile(chi2_ref, q)) for q in qs}
    excess_pct = {q: float(np.percentile(excess_ref, q)) for q in qs}
    limit = float(np.percentile(excess_ref, limit_percentile))
    worse = float(np.mean(excess_ref > excess))
    reproduces = best <= NOISE_LEVEL_CHI2 or excess <= limit
    yardstick = (f"held-out bank images seen the same way are left {100 * excess_pct[50]:.0f}% by their best match "
                 f"({100 * excess_pct[5]:.0f}-{100 * excess_pct[95]:.0f}%, 5th-95th percentile; reduced chi-square median "
                 f"{chi2_pct[50]:.3g})")
    if best <= NOISE_LEVEL_CHI2:
        message = f"Fits in image space: the best match leaves a reduced chi-square of {best:.3g}, residuals at the noise level."
    elif reproduces:
        message = (f"Fits in image space as well as the bank fits itself: the best match leaves a reduced chi-square of {best:.3g} "
                   f"(residuals {rms:.2g} times the noise rms), an excess of {100 * excess:.0f}% of the signal, while {yardstick}.")
    else:
        message = (f"WARNING: no bank image reproduces the target. The best match leaves a reduced chi-square of {best:.3g} "
                   f"(residuals {rms:.2g} times the noise rms), an excess of {100 * excess:.0f}% of the signal, while {yardstick}; "
                   f"only {100 * worse:.1f}% of them do worse. The parameter distributions describe the nearest bank images, not this target.")
    return FitVerdict(best, excess, rms, chi2_pct, excess_pct, limit_percentile, limit, worse, reproduces, message)


DETECTION_SIGMA = 5.0  # a target is detected when its brightest pixel is at least this many times the noise rms


@dataclass
class Detection:
    """Is there a source to match at all? The target's brightest pixel against its noise.

    A map of noise, or a source below the noise, gets matches and a verdict from the embedding like any
    other target (a network finds the nearest bank images of anything), and an image-space fit at the
    noise level: both checks pass. Only the signal-to-noise ratio says that there is nothing to match.

    Attributes:
        peak_snr: the brightest pixel over the noise rms.
        threshold: the detection limit in noise rms (:data:`DETECTION_SIGMA`).
        detected: ``peak_snr >= threshold``.
        message: the finding in words, with the numbers.
    """

    peak_snr: float
    threshold: float
    detected: bool
    message: str

    def to_dict(self) -> dict:
        return asdict(self)


def detection(image: np.ndarray, noise_rms: float, threshold: float = DETECTION_SIGMA) -> Detection:
    """Whether ``image`` (``(H, W)``, NaN where unobserved) holds a source above ``threshold`` times ``noise_rms``."""
    peak = float(np.nanmax(image)) if np.isfinite(image).any() else float("nan")
    snr = peak / noise_rms if noise_rms > 0 and math.isfinite(peak) else float("nan")
    detected = bool(snr >= threshold)
    message = (f"Detected: the brightest pixel is {snr:.3g} times the noise rms." if detected else
               f"No source detected: the brightest pixel is {snr:.3g} times the noise rms, under the {threshold:g} a detection needs; "
               "the matches describe noise, and the parameter distributions are not the target's.")
    return Detection(snr, threshold, detected, message)


def non_detection_fraction(images: np.ndarray, noise_rms: float, threshold: float = DETECTION_SIGMA) -> float:
    """The fraction of ``images`` (``(N, H, W)``) whose brightest pixel is under ``threshold`` times ``noise_rms``."""
    peaks = np.nanmax(images.reshape(len(images), -1), axis=1)
    return float(np.mean(peaks < threshold * noise_rms)) if len(images) else float("nan")


RESIDUAL_SCALES = (1.0, 2.0)  # the residual map is smoothed to these multiples of the beam before its peak is taken


@dataclass
class ResidualPeak:
    """The most significant structure in a residual map: its peak after smoothing, in the smoothed noise's rms.

    A companion, a clump or an arc left in the residual is compact or narrow; averaged over the whole map
    (the reduced chi-square) it is diluted by every pixel that fits, while smoothed to its own scale
    it stands far above the noise. Pure noise gives about 4 on a 64 x 64 map (the largest of a few
    hundred independent beams).

    Attributes:
        significance: the largest ``|smoothed residual|`` over the smoothed noise rms, over the scales.
        scale_beams: the smoothing (in beams) that gave it.
        fraction_of_peak: that residual over the target's brightest pixel, both smoothed alike (how much
            of the signal the structure is).
        position: ``(row, column)`` of the peak.
    """

    significance: float
    scale_beams: float
    fraction_of_peak: float
    position: tuple[int, int]

    def to_dict(self) -> dict:
        return asdict(self)


def residual_peak(residual: np.ndarray, target: np.ndarray, sigma: float, beam: Beam, pixel_arcsec: float,
                  used: np.ndarray | None = None, scales=RESIDUAL_SCALES) -> ResidualPeak:
    """The residual's most significant structure (:class:`ResidualPeak`).

    Arguments:
        residual: ``(H, W)`` target minus match, in units of the combined noise rms ``sigma``.
        target: ``(H, W)`` the target image (for :attr:`ResidualPeak.fraction_of_peak`).
        sigma: the combined noise rms of target and match.
        beam: the resolution of both (the noise is correlated over it); ``pixel_arcsec``: the pixel side.
        used: ``(H, W)`` the pixels judged (default all).
        scales: the circular Gaussians to smooth with, as multiples of the beam's geometric-mean FWHM.

    The smoothed noise's rms is exact for noise correlated over ``beam`` (as in :func:`~protolib.instrument.beam_noise`):
    ``||b * g|| / ||b||`` for the beam kernel ``b`` and the smoothing kernel ``g``, both of unit sum.
    """
    used = np.ones(np.shape(residual), dtype=bool) if used is None else np.asarray(used, dtype=bool)
    maps = torch.from_numpy(np.stack([np.asarray(residual, dtype=np.float32) * used, np.asarray(target, dtype=np.float32) * used]))
    kernel = beam_kernel(beam, pixel_arcsec)
    width = math.sqrt(beam.major_arcsec * beam.minor_arcsec)
    best = ResidualPeak(0.0, float("nan"), float("nan"), (0, 0))
    for scale in scales:
        smoothing = Beam(scale * width, scale * width, 0.0)
        smoothed = convolve_beam(maps, smoothing, pixel_arcsec).numpy()
        both = convolve_beam(torch.from_numpy(np.pad(kernel, 4 * len(kernel))[None].astype(np.float32)), smoothing, pixel_arcsec)
        noise = float(np.sqrt(np.square(both.numpy()).sum() / np.square(kernel).sum()))
        values = np.where(used, np.abs(smoothed[0]), 0.0) / noise
        row, column = np.unravel_index(int(np.argmax(values)), values.shape)
        if values[row, column] > best.significance:
            peak = float(np.max(smoothed[1][used])) if used.any() else float("nan")
            best = ResidualPeak(float(values[row, column]), float(scale), float(abs(smoothed[0][row, column]) * sigma / peak), (int(row), int(column)))
    return best
