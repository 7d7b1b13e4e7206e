"""The maximum recoverable scale, estimated from a map's negative bowl.

An interferometer without short spacings measures no flux on scales larger than its maximum
recoverable scale: the map holds the sky minus its smooth part, and the smooth part of a bright
compact source shows as a negative bowl around it whose integral cancels the source's. protolib's
model of this (:class:`~protolib.observation.resolution.ResolutionMatch`) subtracts the map smoothed
by a Gaussian whose full width at half maximum is the recoverable scale, so the bowl is, away from the
source, that Gaussian: ``-A exp(-r^2 / 2 sigma^2)`` with ``sigma = scale x`` :data:`~protolib.instrument.FWHM_TO_SIGMA`.

:func:`estimate_max_scale` fits that shape to the map's azimuthally averaged profile about the source,
where the profile is negative, and returns the scale when the bowl is significant and fits inside the
map. It is written here rather than taken from a library because it inverts this project's own
filter model; radio packages estimate the recoverable scale from the uv coverage, which a CLEAN map's
FITS file does not carry. Measured on synthetic maps in ``benchmarks/recoverable_scale.py``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import curve_fit

from ..instrument import FWHM_TO_SIGMA

__all__ = ["ScaleEstimate", "estimate_max_scale", "BOWL_SIGNIFICANCE", "BOWL_OVER_TRUTH"]

BOWL_SIGNIFICANCE = 5.0  # the deepest annulus of the profile must lie this many of its standard errors below zero
BOWL_OVER_TRUTH = (0.5, 1.4, 2.2)
"""The fitted filter's width over the true recoverable scale: a low ratio, the median and a high one, read from 40
synthetic NOEMA-like maps at three scales (``benchmarks/recoverable_scale.py --seed 11``: 36 maps with a bowl, median
1.4,
all but one between 0.55 and 2.0), widened a little so that the range holds the truth in about 95% of maps; other maps
(``--seed 23``) are the check (benchmarks/README.md). The fit reads wide because the smoothed source is wider than the
filter (its envelope extends beyond what the map shows); the estimate is the fit over the median, and its range runs
from
the fit over the high ratio to the fit over the low one."""


@dataclass
class ScaleEstimate:
    """What the map's negative bowl says about the recoverable scale.

    Attributes:
        max_scale_arcsec: the estimate (``None`` when the bowl is not significant, or wider than the map can show).
        significance: the deepest annulus's mean over its standard error (negative: a bowl).
        reason: in words, what was found.
        range_arcsec: the range the true scale lies in (:data:`BOWL_OVER_TRUTH`), ``None`` without an estimate.
    """

    max_scale_arcsec: float | None
    significance: float
    reason: str
    range_arcsec: tuple[float, float] | None = None

    def to_dict(self) -> dict:
        """Plain data for the report."""
        return asdict(self)


def _profile(image: np.ndarray, centre_xy: tuple[float, float], width_px: float, noise_rms: float, beam_area_px: float):
    """Radii [px], mean and standard error of ``image`` in annuli ``width_px`` wide about ``centre_xy`` (column, row),
    out to the largest circle inside the map; NaN pixels are left out."""
    rows, cols = np.indices(image.shape)
    r = np.hypot(cols - centre_xy[0], rows - centre_xy[1])
    edge = min(centre_xy[0], centre_xy[1], image.shape[1] - 1 - centre_xy[0], image.shape[0] - 1 - centre_xy[1])
    edges = np.arange(0.0, edge + 1e-9, width_px)
    radii, means, errors = [], [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        values = image[(r >= lo) & (r < hi)]
        values = values[np.isfinite(values)]
        if len(values):
            radii.append(0.5 * (lo + hi))
            means.append(values.mean())
            errors.append(noise_rms / math.sqrt(max(1.0, len(values) / beam_area_px)))
    return np.array(radii), np.array(means), np.array(errors)


def estimate_max_scale(
    image: np.ndarray,
    centre_xy: tuple[float, float],
    *,
    noise_rms: float,
    beam_major_px: float,
    beam_minor_px: float,
    pixel_arcsec: float,
) -> ScaleEstimate:
    """The maximum recoverable scale [arcsec] that the negative bowl about ``centre_xy`` (column, row) of ``image``
    shows.

    The profile is averaged in annuli half a beam wide, out to the largest circle inside the map. The
    bowl must reach :data:`BOWL_SIGNIFICANCE` standard errors below zero; the Gaussian is then fitted
    (least squares, weighted by the errors) to the annuli from the first negative one outward. An
    estimate whose Gaussian is wider than the map's radius is not trusted: the map cannot show where
    the bowl ends.
    """
    beam_area_px = 2.0 * math.pi * (beam_major_px * FWHM_TO_SIGMA) * (beam_minor_px * FWHM_TO_SIGMA)
    radii, means, errors = _profile(image, centre_xy, max(1.0, 0.5 * beam_major_px), noise_rms, beam_area_px)
    if len(radii) < 4:
        return ScaleEstimate(None, 0.0, "the map is too small about the source to show a bowl")
    significance = float(np.min(means / errors))
    negative = np.nonzero(means < 0)[0]
    if significance > -BOWL_SIGNIFICANCE or not len(negative):
        return ScaleEstimate(
            None, significance, f"no significant negative bowl (deepest annulus {significance:.1f} sigma)"
        )
    use = slice(int(negative[0]), None)
    if len(radii[use]) < 3:
        return ScaleEstimate(None, significance, "the bowl lies at the map's edge")
    sigma = _fit_bowl(radii[use], means[use], errors[use], beam_major_px, radii[-1])
    if sigma is None:
        return ScaleEstimate(None, significance, "the bowl's shape could not be fitted")
    # The bowl is the source smoothed by the filter: its width adds the source's own extent (its positive
    # emission's second moment per axis) to the filter's, in quadrature.
    sigma = math.sqrt(max(sigma**2 - _source_extent2(image, centre_xy, noise_rms), (0.5 * beam_major_px) ** 2))
    if sigma > radii[-1]:
        return ScaleEstimate(
            None, significance, f'a bowl wider than the map ({sigma / FWHM_TO_SIGMA * pixel_arcsec:.3g}" at least)'
        )
    return _estimate_from_width(sigma, significance, beam_major_px, pixel_arcsec)


def _fit_bowl(r: np.ndarray, m: np.ndarray, e: np.ndarray, beam_major_px: float, outer_px: float) -> float | None:
    """The width [px] (standard deviation) of the Gaussian bowl ``-A exp(-r^2 / 2 sigma^2)`` fitted to the annuli
    ``r`` of means ``m`` (least squares, weighted by their errors ``e``); ``None`` when it cannot be fitted."""
    try:
        (depth, sigma), _ = curve_fit(
            lambda x, a, s: -a * np.exp(-0.5 * (x / s) ** 2),
            r,
            m,
            p0=(-m.min() * 2, r[np.argmin(m)] + r[0]),
            sigma=e,
            bounds=([0.0, 0.5 * beam_major_px], [np.inf, 10.0 * outer_px]),
        )
    except (RuntimeError, ValueError):
        return None
    return sigma


def _source_extent2(image: np.ndarray, centre_xy: tuple[float, float], noise_rms: float) -> float:
    """The source's own extent squared [px^2]: the second moment per axis of its emission above 3 sigma about
    ``centre_xy`` (0 without any)."""
    rows, cols = np.indices(image.shape)
    positive = np.where(np.isfinite(image) & (image > 3.0 * noise_rms), image, 0.0)
    return (
        float((positive * ((cols - centre_xy[0]) ** 2 + (rows - centre_xy[1]) ** 2)).sum() / (2.0 * positive.sum()))
        if positive.sum() > 0
        else 0.0
    )


def _estimate_from_width(sigma: float, significance: float, beam_major_px: float, pixel_arcsec: float) -> ScaleEstimate:
    """The recoverable scale and its range from the filter's width ``sigma`` [px] (:data:`BOWL_OVER_TRUTH`), none
    below the beam."""
    fitted, beam = float(sigma / FWHM_TO_SIGMA * pixel_arcsec), beam_major_px * pixel_arcsec
    low, median, high = BOWL_OVER_TRUTH
    # no scale below the beam: nothing would be left
    scale, least, most = (max(fitted / ratio, beam) for ratio in (median, high, low))
    return ScaleEstimate(
        scale,
        significance,
        f"a negative bowl {-significance:.0f} sigma deep about the source: a recoverable scale "
        f'of about {scale:.3g}" ({least:.3g}-{most:.3g}")',
        (least, most),
    )
