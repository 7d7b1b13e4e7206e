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
noise, get from their own best matches (:func:`reference_chi2`).

That yardstick is only as strong as the bank is dense: a coarse bank fits its own images poorly and
would pass anything as poorly fit. So :func:`judge_fit` also holds two absolute limits, chosen on
synthetic plain and misfit targets (:mod:`protolib.misfits`, ``benchmarks/verdict_rates.py``): the
excess may not pass :data:`EXCESS_LIMIT` of the signal, and the residual map may hold no structure
(:func:`residual_peak`: the residual smoothed to one and two beams) of :data:`STRUCTURE_SIGMA` times the
noise and :data:`STRUCTURE_FRACTION` of the target's peak, which is what a companion, a clump, a ring,
a spiral arm or a streamer leaves, diluted in the chi-square's mean over the whole map. A target is
reproduced when it passes all three; a best match within the noise (chi2_red <= 1.5) passes the first two.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

from .instrument import Beam, beam_kernel

__all__ = [
    "ResidualPeak",
    "residual_peak",
    "RESIDUAL_SCALES",
    "EXCESS_LIMIT",
    "STRUCTURE_SIGMA",
    "STRUCTURE_FRACTION",
    "ImageFit",
    "BandsFit",
    "FitVerdict",
    "reference_chi2",
    "judge_fit",
    "Detection",
    "detection",
    "non_detection_fraction",
    "DETECTION_SIGMA",
]


class ImageFit:
    """Residuals and reduced chi-square of bank images against one target.

    Arguments:
        model_transform: bank images ``(N, H, W)`` to the target's resolution and units, *without*
            noise (``None``: the identity, for a bank target).
        noise_rms_jy_beam: the noise rms of the target image.
        match_noise_rms_jy_beam: the noise left in a transformed bank image (the bank's own, smoothed).
        coverage: ``(H, W)`` fraction of each pixel with observed data; pixels under half covered are
            left out of the chi-square.
        flux_tolerance: each model's fluxes may be scaled by a factor from ``1 / (1 + t)`` to ``1 + t``, the one
            that fits the target best (least squares, clipped): the target's flux-calibration uncertainty
            (twice its 1-sigma error covers 95%). 0: the model as it is.
    """

    def __init__(
        self,
        model_transform: Callable[[np.ndarray], np.ndarray] | None,
        noise_rms_jy_beam: float,
        match_noise_rms_jy_beam: float = 0.0,
        coverage: np.ndarray | None = None,
        flux_tolerance: float = 0.0,
    ):
        self.flux_tolerance = float(flux_tolerance)
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

    def flux_factors(self, target: np.ndarray, models: np.ndarray) -> np.ndarray:
        """``(N,)`` the factor each model's fluxes are scaled by to fit ``target`` best, within
        :attr:`flux_tolerance`."""
        if not self.flux_tolerance > 0:
            return np.ones(len(models), dtype=np.float32)
        used = self.used(np.shape(target))
        x, m = np.asarray(target, dtype=np.float64)[used], np.asarray(models, dtype=np.float64)[:, used]
        best = (m @ x) / np.maximum(np.einsum("ij,ij->i", m, m), 1e-300)
        return np.clip(best, 1.0 / (1.0 + self.flux_tolerance), 1.0 + self.flux_tolerance).astype(np.float32)

    def residuals(self, target: np.ndarray, bank_images: np.ndarray) -> np.ndarray:
        """``(target - a T(image)) / sigma`` for each bank image, ``(N, H, W)``, with ``a`` its :meth:`flux_factors`;
        zero where not observed."""
        models = self.models(bank_images)
        models = models * self.flux_factors(target, models)[:, None, None]
        residual = (np.asarray(target, dtype=np.float32)[None] - models) / self.sigma
        if self.coverage is not None:
            residual = residual * (self.coverage >= 0.5)
        return residual

    def reduced_chi2(self, target: np.ndarray, bank_images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Reduced chi-square ``(N,)`` of each bank image against ``target`` (mean over observed pixels)."""
        n_used = max(int(self.used(np.shape(target)).sum()), 1)
        out = [
            np.square(self.residuals(target, bank_images[i : i + batch_size])).sum(axis=(1, 2)) / n_used
            for i in range(0, len(bank_images), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float64)

    def excess(self, target: np.ndarray, reduced_chi2: np.ndarray | float) -> np.ndarray:
        """The residual beyond the noise as a fraction of the target's signal rms (see the module)."""
        return (
            np.sqrt(np.clip(np.asarray(reduced_chi2, dtype=np.float64) - 1.0, 0.0, None))
            * self.sigma
            / self.signal_rms(target)
        )


class BandsFit:
    """Residuals and reduced chi-square of bank images against one target seen in several bands, each band in its own
    noise.

    The target is ``(bands, H, W)`` and bank images ``(N, bands, H, W)``; band ``b`` is compared through
    ``fits[b]`` (an :class:`ImageFit`: its transform, noise, coverage and flux tolerance, so that each band's
    flux scale is free within its own calibration). The joint reduced chi-square is the chi-square summed over
    every band's used pixels divided by their number, about 1 when every band differs by noise alone; the
    excess residual is taken against the signal-to-noise ratio of all bands together. With one band both are
    :class:`ImageFit`'s. The methods take and return what :class:`ImageFit`'s do, with the band axis added.
    """

    def __init__(self, fits):
        self.fits = list(fits)
        coverages = [f.coverage for f in self.fits]
        self.coverage = (
            None
            if all(c is None for c in coverages)
            else np.stack(
                [np.ones_like(next(c for c in coverages if c is not None)) if c is None else c for c in coverages]
            )
        )

    def used(self, shape: tuple[int, ...]) -> np.ndarray:
        """``(bands, H, W)`` the pixels each band's chi-square is taken over."""
        return np.stack([f.used(tuple(shape[1:])) for f in self.fits])

    def _pixels(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.array([max(int(f.used(tuple(shape[1:])).sum()), 1) for f in self.fits], dtype=np.float64)

    def signal_rms(self, image: np.ndarray) -> float:
        """The rms of the target's signal over every band's used pixels, its noise taken out."""
        values = np.asarray(image, dtype=np.float64)[self.used(np.shape(image))]
        pixels = self._pixels(np.shape(image))
        noise = sum(n * f.noise_rms_jy_beam**2 for n, f in zip(pixels, self.fits)) / pixels.sum()
        return math.sqrt(max(float(np.mean(np.square(values))) - noise, 1e-30))

    def models(self, bank_images: np.ndarray) -> np.ndarray:
        """``(N, bands, H, W)`` bank images as the target sees them in each band (noise-free)."""
        return np.stack([f.models(bank_images[:, b]) for b, f in enumerate(self.fits)], axis=1)

    def residuals(self, target: np.ndarray, bank_images: np.ndarray) -> np.ndarray:
        """``(N, bands, H, W)`` each band's residual in its own noise rms (:meth:`ImageFit.residuals`)."""
        return np.stack([f.residuals(target[b], bank_images[:, b]) for b, f in enumerate(self.fits)], axis=1)

    def reduced_chi2_by_band(self, target: np.ndarray, bank_images: np.ndarray) -> np.ndarray:
        """``(bands, N)`` each band's reduced chi-square."""
        return np.stack([f.reduced_chi2(target[b], bank_images[:, b]) for b, f in enumerate(self.fits)])

    def joint(self, by_band: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """``(N,)`` the joint reduced chi-square from each band's (``(bands, N)``): weighted by the bands' used
        pixels."""
        pixels = self._pixels(shape)
        return (pixels @ np.asarray(by_band, dtype=np.float64)) / pixels.sum()

    def reduced_chi2(self, target: np.ndarray, bank_images: np.ndarray) -> np.ndarray:
        """``(N,)`` the joint reduced chi-square of each bank image against ``target``."""
        return self.joint(self.reduced_chi2_by_band(target, bank_images), np.shape(target))

    def excess(self, target: np.ndarray, reduced_chi2: np.ndarray | float) -> np.ndarray:
        """The residual beyond the noise as a fraction of the signal, the signal-to-noise ratio pooled over the
        bands."""
        pixels = self._pixels(np.shape(target))
        snr2 = (
            sum(n * (f.signal_rms(target[b]) / f.sigma) ** 2 for b, (n, f) in enumerate(zip(pixels, self.fits)))
            / pixels.sum()
        )
        return np.sqrt(np.clip(np.asarray(reduced_chi2, dtype=np.float64) - 1.0, 0.0, None) / snr2)


def reference_chi2(
    fit: ImageFit,
    observe: Callable[[np.ndarray], np.ndarray],
    embed: Callable[[np.ndarray], np.ndarray],
    search: Callable[[np.ndarray, list[int]], list],
    load_images: Callable[[np.ndarray, np.ndarray], np.ndarray],
    reference_rows: np.ndarray,
    n_projections: int,
    structure: Callable[[np.ndarray, np.ndarray], ResidualPeak] | None = None,
) -> tuple[np.ndarray, np.ndarray, list, np.ndarray, list]:
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

        structure: ``(target, its best match)`` to the best match's :class:`ResidualPeak` (``None``: not measured).

    Returns:
        ``(best reduced chi-square, its excess residual, the matches, the residual peaks' fractions of the peak,
        every match's reduced chi-square)``: arrays ``(len(reference_rows),)`` (the fourth NaN without
        ``structure``), and per reference image its :class:`~protolib.matching.Matches` and their ``(n,)`` reduced
        chi-squares (for calibrating intervals, with the matches chosen as the target's are).
    """
    systems, projections = reference_rows // n_projections, reference_rows % n_projections
    targets = np.asarray(observe(load_images(systems, projections)), dtype=np.float32)
    if fit.coverage is not None:
        targets = targets * fit.coverage
    found = search(embed(targets), systems.tolist())
    best, excess, peaks = (np.full(len(reference_rows), np.nan) for _ in range(3))
    every = []
    for i, matches in enumerate(found):
        images = load_images(matches.system, matches.projection)
        chi2 = fit.reduced_chi2(targets[i], images)
        every.append(chi2)
        best[i] = chi2.min()
        excess[i] = fit.excess(targets[i], best[i])
        if structure is not None:
            peaks[i] = structure(targets[i], images[int(np.argmin(chi2))]).fraction_of_peak
    return best, excess, found, peaks, every


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
        residual_peak: the best match's :class:`ResidualPeak` (as a dict), or ``None``.
        reference_residual_peak: percentiles (5, 50, 95) of the reference images' residual-peak fractions.
        absolute_limits: the limits no reproduced target exceeds (:data:`EXCESS_LIMIT`, :data:`STRUCTURE_SIGMA`,
            :data:`STRUCTURE_FRACTION`).
        reasons: which tests failed: ``"bank"``, ``"absolute"``, ``"structure"`` (empty when reproduced).
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
    residual_peak: dict | None = None
    reference_residual_peak: dict = field(default_factory=dict)
    absolute_limits: dict = field(default_factory=dict)
    reasons: list = field(default_factory=list)

    def to_dict(self) -> dict:
        data = asdict(self)
        for key in ("reference_chi2", "reference_excess", "reference_residual_peak"):
            data[key] = {str(k): v for k, v in data[key].items()}
        return data


NOISE_LEVEL_CHI2 = 1.5  # a best match below this reduced chi-square differs from the target by noise alone


EXCESS_LIMIT = 0.30
"""No target whose best match leaves an excess residual beyond this fraction of its signal is called reproduced,
however poorly the bank fits its own images (chosen from the synthetic sets: ``benchmarks/verdict_rates.py``)."""
STRUCTURE_SIGMA = 5.0  # a residual structure counts only when it stands this far above the smoothed noise ...
# ... and holds at least this fraction of the target's (smoothed) peak: chosen as EXCESS_LIMIT
STRUCTURE_FRACTION = 0.20


def judge_fit(
    best_reduced_chi2: float,
    best_excess: float,
    reference: tuple[np.ndarray, np.ndarray],
    *,
    limit_percentile: float = 95.0,
    peak: ResidualPeak | None = None,
    reference_peaks=None,
) -> FitVerdict:
    """The image-space verdict: does the target's best match reproduce it, by three tests?

    1. **Against the bank** (relative): the best match leaves no more excess residual than held-out bank
       images get from their own best matches (up to ``limit_percentile`` of theirs).
    2. **Absolutely**: its excess residual is at most :data:`EXCESS_LIMIT` of the signal.
    3. **No structure left**: the residual holds no structure (:func:`residual_peak`) of at least
       :data:`STRUCTURE_SIGMA` times the smoothed noise and :data:`STRUCTURE_FRACTION` of the target's peak:
       a companion, a clump or an arc that the chi-square, a mean over the whole map, dilutes.

    A best match within the noise (reduced chi-square at most :data:`NOISE_LEVEL_CHI2`) passes 1 and 2.

    Arguments:
        best_reduced_chi2: the target's best reduced chi-square; ``best_excess``: its excess residual.
        reference: ``(best chi-squares, excess residuals)`` of held-out bank images (:func:`reference_chi2`).
        limit_percentile: the percentile of the reference's excess that test 1 allows.
        peak: the best match's :class:`ResidualPeak` (``None``: test 3 is not made).
        reference_peaks: the reference images' residual-peak fractions of their peak (reported only).
    """
    chi2_ref, excess_ref = (np.asarray(r, dtype=np.float64) for r in reference)
    best, excess = float(best_reduced_chi2), float(best_excess)
    qs = (5, 50, 95)
    pct = {
        name: ({q: float(np.percentile(values, q)) for q in qs} if len(values) else {})
        for name, values in (
            ("chi2", chi2_ref),
            ("excess", excess_ref),
            ("peaks", np.asarray(reference_peaks if reference_peaks is not None else [])),
        )
    }
    limit = float(np.percentile(excess_ref, limit_percentile)) if len(excess_ref) else float("nan")
    worse = float(np.mean(excess_ref > excess)) if len(excess_ref) else float("nan")
    reasons = _misfit_reasons(best, excess, limit, peak)
    message = _verdict_message(best, excess, pct, worse, peak, reasons, has_reference=len(excess_ref) > 0)
    return FitVerdict(
        best,
        excess,
        float(np.sqrt(max(best, 0.0))),
        pct["chi2"],
        pct["excess"],
        limit_percentile,
        limit,
        worse,
        not reasons,
        message,
        None if peak is None else peak.to_dict(),
        pct["peaks"],
        {"excess": EXCESS_LIMIT, "structure_sigma": STRUCTURE_SIGMA, "structure_fraction": STRUCTURE_FRACTION},
        [key for key, _ in reasons],
    )


def _misfit_reasons(best: float, excess: float, limit: float, peak: ResidualPeak | None) -> list[tuple[str, str]]:
    """``(key, sentence)`` for each test of :func:`judge_fit` that the target fails."""
    reasons = []
    if best > NOISE_LEVEL_CHI2 and excess > limit:
        reasons.append(("bank", "it leaves more than the bank's own images are left by theirs"))
    if best > NOISE_LEVEL_CHI2 and excess > EXCESS_LIMIT:
        reasons.append(
            (
                "absolute",
                f"its excess is above the {100 * EXCESS_LIMIT:.0f}% of the signal that no reproduced target leaves",
            )
        )
    if peak is not None and peak.significance >= STRUCTURE_SIGMA and peak.fraction_of_peak >= STRUCTURE_FRACTION:
        reasons.append(
            (
                "structure",
                f"the residual holds a structure {peak.significance:.3g} times the noise, "
                f"{100 * peak.fraction_of_peak:.0f}% "
                f"of the target's peak (smoothed to {peak.scale_beams:g} beam), {peak.offset_beams:.1f} beams from the "
                "centre "
                f"(pixel row, column {tuple(peak.position)}): a companion, clump or arc that no bank image has",
            )
        )
    return reasons


def _structure_sentence(peak: ResidualPeak | None) -> str:
    """The largest residual structure in words (``""`` without one), for the end of the verdict."""
    if peak is None:
        return ""
    return (
        f" Its largest residual structure is {peak.significance:.3g} times the noise, "
        f"{100 * peak.fraction_of_peak:.0f}% of the target's peak."
    )


def _yardstick_clause(pct: dict) -> str:
    """How well held-out bank images seen like the target are fit by their best match: the verdict's yardstick."""
    return (
        f"; held-out bank images seen the same way are left {100 * pct['excess'][50]:.0f}% by their best match "
        f"({100 * pct['excess'][5]:.0f}-{100 * pct['excess'][95]:.0f}%, 5th-95th percentile; reduced chi-square "
        f"median {pct['chi2'][50]:.3g})"
    )


def _verdict_message(
    best: float,
    excess: float,
    pct: dict,
    worse: float,
    peak: ResidualPeak | None,
    reasons: list,
    *,
    has_reference: bool,
) -> str:
    """The verdict of :func:`judge_fit` in words, with the numbers."""
    rms = float(np.sqrt(max(best, 0.0)))
    left = (
        f"the best match leaves a reduced chi-square of {best:.3g} (residuals {rms:.2g} times the noise rms), an "
        f"excess of {100 * excess:.0f}% of the signal"
    )
    structure = _structure_sentence(peak)
    yardstick = _yardstick_clause(pct) if has_reference else ""
    if reasons:
        why = "; ".join(sentence for _, sentence in reasons)
        share = f" (only {100 * worse:.1f}% of them do worse)" if has_reference and "bank" in dict(reasons) else ""
        return (
            f"WARNING: no bank image reproduces the target: {why}. In numbers, {left}{yardstick}{share}. "
            "The parameter distributions describe the nearest bank images, not this target."
        )
    if best <= NOISE_LEVEL_CHI2:
        return (
            f"Fits in image space: the best match leaves a reduced chi-square of {best:.3g}, residuals at the "
            f"noise level.{structure}"
        )
    if not has_reference:
        return f"Fits in image space: {left} (no reference to compare with).{structure}"
    return f"Fits in image space as well as the bank fits itself: {left}{yardstick}.{structure}"


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
    message = (
        f"Detected: the brightest pixel is {snr:.3g} times the noise rms."
        if detected
        else f"No source detected: the brightest pixel is {snr:.3g} times the noise rms, under the {threshold:g} a "
        "detection needs; "
        "the matches describe noise, and the parameter distributions are not the target's."
    )
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
        offset_beams: its distance from the image's centre, in beams (geometric-mean FWHM).
    """

    significance: float
    scale_beams: float
    fraction_of_peak: float
    position: tuple[int, int]
    offset_beams: float = float("nan")

    def to_dict(self) -> dict:
        return asdict(self)


def residual_peak(
    residual: np.ndarray,
    target: np.ndarray,
    sigma: float,
    beam: Beam,
    pixel_arcsec: float,
    used: np.ndarray | None = None,
    scales=RESIDUAL_SCALES,
) -> ResidualPeak:
    """The residual's most significant structure (:class:`ResidualPeak`).

    Arguments:
        residual: ``(H, W)`` target minus match, in units of the combined noise rms ``sigma``.
        target: ``(H, W)`` the target image (for :attr:`ResidualPeak.fraction_of_peak`).
        sigma: the combined noise rms of target and match.
        beam: the resolution of both (the noise is correlated over it); ``pixel_arcsec``: the pixel side.
        used: ``(H, W)`` the pixels judged (default all).
        scales: the circular Gaussians to smooth with, as multiples of the beam's geometric-mean FWHM
            (``scipy.ndimage.gaussian_filter``, zero beyond the map).

    The smoothed noise's rms is exact for noise correlated over ``beam`` (as in
    :func:`~protolib.instrument.beam_noise`):
    ``||b * g|| / ||b||`` for the beam kernel ``b`` and the smoothing kernel ``g``, both of unit sum.
    """
    used = np.ones(np.shape(residual), dtype=bool) if used is None else np.asarray(used, dtype=bool)
    maps = np.stack([np.asarray(residual, dtype=np.float64) * used, np.asarray(target, dtype=np.float64) * used])
    width_pixels = math.sqrt(beam.major_arcsec * beam.minor_arcsec) / pixel_arcsec
    best = ResidualPeak(0.0, float("nan"), float("nan"), (0, 0))
    for scale in scales:
        sigma_pixels = scale * width_pixels / FWHM_PER_SIGMA
        smoothed = ndimage.gaussian_filter(maps, (0, sigma_pixels, sigma_pixels), mode="constant", truncate=4.0)
        values = np.where(used, np.abs(smoothed[0]), 0.0) / _smoothed_noise_rms(beam, pixel_arcsec, sigma_pixels)
        row, column = np.unravel_index(int(np.argmax(values)), values.shape)
        if values[row, column] > best.significance:
            peak = float(np.max(smoothed[1][used])) if used.any() else float("nan")
            offset = math.hypot(row - (values.shape[0] - 1) / 2, column - (values.shape[1] - 1) / 2) / width_pixels
            best = ResidualPeak(
                float(values[row, column]),
                float(scale),
                float(abs(smoothed[0][row, column]) * sigma / peak),
                (int(row), int(column)),
                float(offset),
            )
    return best


FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


@functools.lru_cache(maxsize=64)
def _smoothed_noise_rms(beam: Beam, pixel_arcsec: float, sigma_pixels: float) -> float:
    """The rms of unit-rms noise correlated over ``beam`` after a Gaussian smoothing of ``sigma_pixels``: ``||b * g|| /
    ||b||``."""
    kernel = beam_kernel(beam, pixel_arcsec)
    both = ndimage.gaussian_filter(
        np.pad(kernel, int(4 * sigma_pixels) + 2), sigma_pixels, mode="constant", truncate=4.0
    )
    return float(np.sqrt(np.square(both).sum() / np.square(kernel).sum()))
