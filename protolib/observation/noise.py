"""The noise and the compact sources of an observed image: :func:`estimate_noise_rms`, :func:`find_compact_sources`.

Both split the image into a smooth part and a residual (the image minus the smooth part), so that
extended emission counts neither as noise nor as a source, and both calibrate that split on simulated
noise correlated on the beam: the residual keeps only part of the noise, and that part is measured,
not assumed.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace

import numpy as np
import torch
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.stats import sigma_clipped_stats
from scipy import ndimage

from ..instrument import Beam, beam_noise, convolve_beam, gaussian_solid_angle_pixels
from .fits import Observation, is_spike, plain_icrs, refine_peak

__all__ = [
    "estimate_noise_rms",
    "CompactSource",
    "find_compact_sources",
    "NOISE_BEAMS",
    "DETECTION_SIGMA",
    "SOURCE_BOX",
]

NOISE_BEAMS = 300  # the noise is measured on the emission-free pixels nearest the source, this many beam areas of them
DETECTION_SIGMA = 5.0  # compact sources are reported above this many times the local noise


@dataclass(frozen=True)
class _SmoothSplit:
    """Images split into a part smoothed by the Gaussian ``smoothing`` [pixels^2] and the residual.

    Only the ``valid`` pixels count: blanks are filled with zero, and the smooth part is divided by
    ``weight``, the smoothed ``valid`` mask, so that it does not sag towards blank regions.
    """

    valid: np.ndarray
    smoothing: np.ndarray
    weight: np.ndarray

    @classmethod
    def over(cls, valid: np.ndarray, smoothing: np.ndarray) -> _SmoothSplit:
        """The split over the pixels ``valid`` ``(ny, nx)``."""
        return cls(valid, smoothing, convolve_beam(torch.as_tensor(valid.astype(np.float64)), smoothing).numpy())

    def __call__(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(smooth, residual)`` of ``values`` ``(ny, nx)``; the residual is zero at blank pixels."""
        filled = np.where(self.valid, values, 0.0)
        smooth = convolve_beam(torch.as_tensor(filled), self.smoothing).numpy() / np.maximum(self.weight, 1e-12)
        return smooth, filled - smooth

    def noise_fractions(self, beam: Beam, pixel_arcsec: float, where: np.ndarray) -> tuple[float, float]:
        """The rms of the smooth part and of the residual over the pixels ``where``, per unit rms of noise
        correlated on ``beam`` (simulated with seed 0, so the result does not vary from call to call)."""
        noise = beam_noise(self.valid.shape, beam, pixel_arcsec, np.random.default_rng(0)).numpy().astype(np.float64)
        smooth, residual = self(noise)
        return float(smooth[where].std() / noise[where].std()), float(residual[where].std() / noise[where].std())


def _distance_from(shape: tuple[int, int], col: float, row: float) -> np.ndarray:
    """Distance [pixels] of every pixel of an image ``shape`` from the point (column, row)."""
    return np.hypot(*np.meshgrid(np.arange(shape[0]) - row, np.arange(shape[1]) - col, indexing="ij"))


def estimate_noise_rms(
    image: np.ndarray, beam: Beam, pixel_arcsec: float, *, centre: tuple[float, float] | None = None
) -> float:
    """Noise rms per pixel of an interferometric image [its unit], from the emission-free pixels near the source.

    The usual hand measurement, made automatic: find the emission, leave it out, and take the rms of
    what is left, near the source.

    1. The image is split into a smooth part (smoothed to twice the beam) and a residual; the residual
       keeps most of the noise and none of the smooth emission, so faint envelopes do not count as noise.
    2. Emission is where the smooth part exceeds 3 times its own noise (positive or negative: negative
       bowls of missing flux too), widened by a beam; the noise is re-estimated without it, and the
       mask redrawn, until it settles.
    3. The rms is taken over the :data:`NOISE_BEAMS` beam areas of emission-free pixels nearest
       ``centre``: primary-beam-corrected maps grow noisier away from the phase centre, and the noise
       that matters is the source's.
    4. The residual's rms is divided by what the same steps give for simulated noise correlated on
       ``beam`` (the part of the noise the smoothing takes away), so the result is the rms of the noise.

    Arguments:
        image: ``(ny, nx)``, NaN where blanked.
        beam: the image's beam; ``pixel_arcsec``: its pixel side.
        centre: ``(column, row)`` of the source (default: the image centre).

    Returns:
        The noise rms. When emission covers nearly the whole map (fewer than 30 beam areas free of it)
        the rms of the residual over the whole map is returned with a warning: pass the rms if you know it.
    """
    valid = np.isfinite(image)
    covariance = beam.covariance_pixels(pixel_arcsec)
    beam_area = gaussian_solid_angle_pixels(covariance)
    split = _SmoothSplit.over(valid, 4.0 * covariance)  # twice the beam's FWHM
    keep = valid & (split.weight > 0.5)
    if keep.sum() < 4:
        keep = valid
    smooth_fraction, residual_fraction = split.noise_fractions(beam, pixel_arcsec, keep)
    smooth, residual = split(image)
    ny, nx = image.shape
    distance = _distance_from(image.shape, *(centre if centre is not None else ((nx - 1) / 2.0, (ny - 1) / 2.0)))
    sigma = float(sigma_clipped_stats(residual[keep], sigma=3.0, maxiters=10, stdfunc="mad_std")[2]) / residual_fraction
    for _ in range(6):
        free = keep & ~_emission(smooth, 3.0 * sigma * smooth_fraction, beam.major_arcsec / pixel_arcsec)
        if free.sum() < 30 * beam_area:
            warnings.warn(
                f"emission covers nearly the whole map (under 30 beam areas free of it); the noise estimate "
                f"({sigma:.3g}) may be high: pass the rms if you know it (--noise).",
                stacklevel=3,
            )
            return sigma
        nearest = np.flatnonzero(free.ravel())[
            np.argsort(distance.ravel()[free.ravel()], kind="stable")[: int(NOISE_BEAMS * beam_area)]
        ]
        updated = (
            float(sigma_clipped_stats(residual.ravel()[nearest], sigma=4.0, maxiters=5, stdfunc="std")[2])
            / residual_fraction
        )
        if abs(updated - sigma) < 1e-3 * sigma:
            return updated
        sigma = updated
    return sigma


def _emission(smooth: np.ndarray, threshold: float, beam_pixels: float) -> np.ndarray:
    """Where ``|smooth|`` exceeds ``threshold``, widened by about a beam (``beam_pixels``: its major axis in pixels)."""
    widen = np.hypot(*np.mgrid[-3:4, -3:4]) <= 3
    widen_by = max(1, int(round(beam_pixels / 3.0)))
    return ndimage.binary_dilation(np.abs(smooth) > threshold, structure=widen, iterations=widen_by)


@dataclass(frozen=True)
class CompactSource:
    """A compact source found in an observation (see :func:`find_compact_sources`).

    Offsets are from the centre the observation is prepared about: east and north [arcsec], on the sky.
    """

    coordinate: SkyCoord
    east_arcsec: float
    north_arcsec: float
    peak_jy_beam: float
    signal_to_noise: float

    @property
    def separation_arcsec(self) -> float:
        return float(math.hypot(self.east_arcsec, self.north_arcsec))

    def to_dict(self, distance_pc: float | None = None) -> dict:
        """Plain data for reports (offsets also in au at ``distance_pc``)."""
        row = {
            "ra_deg": float(self.coordinate.icrs.ra.deg),
            "dec_deg": float(self.coordinate.icrs.dec.deg),
            "position": self.coordinate.to_string("hmsdms", precision=2),
            "east_arcsec": self.east_arcsec,
            "north_arcsec": self.north_arcsec,
            "separation_arcsec": self.separation_arcsec,
            "peak_jy_beam": self.peak_jy_beam,
            "signal_to_noise": self.signal_to_noise,
        }
        if distance_pc:
            row["separation_au"] = self.separation_arcsec * distance_pc
        return row


def find_compact_sources(
    observation: Observation, noise_rms_jy_beam: float, centre: SkyCoord, *, threshold_sigma: float = DETECTION_SIGMA
) -> list[CompactSource]:
    """Compact sources in an observation above ``threshold_sigma`` times the local noise, brightest first.

    A source is a local maximum of the image minus its smooth part (the image smoothed to three
    beams), so the peaks of extended emission are not counted as sources, while a binary or a
    neighbour a few beams away is. The threshold is applied against the local noise (the robust rms
    of that residual in rings one beam wide about the phase centre, never below ``noise_rms_jy_beam``'s
    share of it), so the noisier edges of primary-beam-corrected maps give no false sources, and against the image
    itself
    (the peak must exceed ``threshold_sigma * noise_rms_jy_beam``). Peaks within two beams of a brighter
    one count as part of it.

    Arguments:
        observation: the image as read.
        noise_rms_jy_beam: the noise rms near the source.
        centre: offsets are measured from here.
        threshold_sigma: detection threshold in noise rms.
    """
    observation = _about_centre(observation, centre)
    image = observation.image_jy_beam
    valid = np.isfinite(image)
    pixel = observation.pixel_scale_arcsec
    split = _SmoothSplit.over(valid, 9.0 * observation.beam.covariance_pixels(pixel))  # three beams' FWHM
    filled = np.where(valid, image, 0.0)
    _, residual = split(image)
    inside = valid & (split.weight > 0.5)
    if inside.sum() < 4:
        return []
    floor = noise_rms_jy_beam * split.noise_fractions(observation.beam, pixel, inside)[1]
    local = _local_noise(observation, residual, inside, floor)
    peaks = (residual > threshold_sigma * local) & (filled > threshold_sigma * noise_rms_jy_beam)
    sources = []
    for r, c in _separate_peaks(residual, filled, inside, peaks, observation.beam.major_arcsec, pixel):
        if is_spike(image, r, c, observation.beam_fwhm_pixels):  # a hot pixel is no source
            continue
        coordinate = observation.wcs.pixel_to_world(*refine_peak(np.where(valid, image, -np.inf), r, c))
        east, north = plain_icrs(centre).spherical_offsets_to(plain_icrs(coordinate))
        sources.append(
            CompactSource(
                coordinate,
                float(east.to_value(u.arcsec)),
                float(north.to_value(u.arcsec)),
                float(image[r, c]),
                float(image[r, c] / noise_rms_jy_beam),
            )
        )
    return sources


SOURCE_BOX = 2048  # compact sources are looked for within this many pixels (per side) about the centre


def _about_centre(observation: Observation, centre: SkyCoord) -> Observation:
    """The observation cut to :data:`SOURCE_BOX` x :data:`SOURCE_BOX` pixels about ``centre`` (itself when smaller), its
    WCS cut alike, so that a huge map costs no more than a large one."""
    ny, nx = observation.image_jy_beam.shape
    if max(ny, nx) <= SOURCE_BOX:
        return observation
    x, y = observation.wcs.world_to_pixel(centre)
    row0 = int(np.clip(round(float(y)) - SOURCE_BOX // 2, 0, max(0, ny - SOURCE_BOX)))
    col0 = int(np.clip(round(float(x)) - SOURCE_BOX // 2, 0, max(0, nx - SOURCE_BOX)))
    rows, cols = slice(row0, row0 + SOURCE_BOX), slice(col0, col0 + SOURCE_BOX)
    return replace(
        observation, image_jy_beam=observation.image_jy_beam[rows, cols], wcs=observation.wcs.slice((rows, cols))
    )


def _local_noise(observation: Observation, residual: np.ndarray, inside: np.ndarray, floor: float) -> np.ndarray:
    """The noise at each pixel: the robust rms of ``residual`` in rings one beam wide about the phase centre
    (the reference pixel), since primary-beam correction makes the noise grow with the distance from it,
    never below ``floor``; inner rings, mostly source, keep the floor."""
    pixel = observation.pixel_scale_arcsec
    ref_col, ref_row = (float(v) - 1.0 for v in observation.wcs.wcs.crpix)
    radius = _distance_from(residual.shape, ref_col, ref_row)
    ring = np.floor(radius / (observation.beam.major_arcsec / pixel)).astype(np.int64)
    least = 20 * gaussian_solid_angle_pixels(observation.beam.covariance_pixels(pixel))  # pixels a ring needs
    local = np.full(residual.shape, floor)
    for k in np.unique(ring[inside]):
        members = inside & (ring == k)
        if members.sum() >= least:
            rms = float(sigma_clipped_stats(residual[members], sigma=3.0, maxiters=5, stdfunc="mad_std")[2])
            local[ring == k] = max(floor, rms)
    return local


def _separate_peaks(
    residual: np.ndarray,
    filled: np.ndarray,
    inside: np.ndarray,
    above: np.ndarray,
    beam_major_arcsec: float,
    pixel_arcsec: float,
) -> list[tuple[int, int]]:
    """(row, column) of the local maxima of ``residual`` that are ``above`` the thresholds, brightest in
    ``filled`` first, leaving out those within two beams of a brighter one."""
    size = max(3, int(round(beam_major_arcsec / pixel_arcsec)) | 1)
    peaks = (residual == ndimage.maximum_filter(np.where(inside, residual, -np.inf), size=size)) & inside
    rows, cols = np.nonzero(peaks & above)
    order = np.argsort(-filled[rows, cols])
    kept: list[tuple[int, int]] = []
    separation = 2.0 * beam_major_arcsec / pixel_arcsec
    for k in order:
        if all(math.hypot(rows[k] - r, cols[k] - c) > separation for r, c in kept):
            kept.append((int(rows[k]), int(cols[k])))
    return kept
