"""The spectral index of a source seen in two bands: ``alpha = ln(S_high / S_low) / ln(nu_high / nu_low)``, pixel by
pixel.

Two maps of one source rarely share a beam, and a ratio of maps at different resolutions is not a
spectral index: each map is first smoothed to the smallest beam that contains both (the coarser one, for
beams of one shape; :func:`~protolib.observation.common_beam_covariance`) and put in Jy per that beam.
Noise correlated over a Gaussian beam and smoothed to a larger one falls, in Jy per the larger beam, to
``sqrt(Omega_common / Omega)`` times its rms. The index is kept only where both maps are above
``sigma`` times their smoothed noise (3 by default): elsewhere one band's noise makes it meaningless.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..instrument import Beam, convolve_beam, gaussian_solid_angle_pixels
from .resolution import common_beam_covariance

__all__ = ["SpectralIndexMap", "spectral_index_map", "SPECTRAL_INDEX_SIGMA"]

SPECTRAL_INDEX_SIGMA = 3.0  # the index is shown only where both bands are above this many times their noise


@dataclass
class SpectralIndexMap:
    """Spectral-index maps at a common resolution (:func:`spectral_index_map`).

    Attributes:
        alpha: ``(..., H, W)`` the index, NaN where either band is below the threshold.
        low_ghz, high_ghz: the two bands' frequencies.
        beam: the common beam both maps were smoothed to.
        noise_jy_beam: ``(low, high)`` each band's noise rms at the common beam [Jy/beam].
        sigma: the threshold, in noise rms.
    """

    alpha: np.ndarray
    low_ghz: float
    high_ghz: float
    beam: Beam
    noise_jy_beam: tuple[float, float]
    sigma: float = SPECTRAL_INDEX_SIGMA

    def median(self) -> np.ndarray:
        """``(...)`` the median index of each map over the pixels where it is known (NaN where none is)."""
        flat = self.alpha.reshape(*self.alpha.shape[:-2], -1)
        known = np.isfinite(flat).any(axis=-1)
        out = np.full(flat.shape[:-1], np.nan)
        out[known] = np.nanmedian(flat[known], axis=-1)
        return out


def spectral_index_map(
    low: np.ndarray,
    high: np.ndarray,
    *,
    low_ghz: float,
    high_ghz: float,
    low_beam: Beam,
    high_beam: Beam,
    pixel_arcsec: float,
    low_noise_jy_beam: float,
    high_noise_jy_beam: float,
    sigma: float = SPECTRAL_INDEX_SIGMA,
) -> SpectralIndexMap:
    """The spectral index of maps ``low`` and ``high`` (``(..., H, W)`` in Jy/beam for their own beams, on one pixel
    grid).

    Arguments:
        low, high: the maps at ``low_ghz`` and ``high_ghz``, with beams ``low_beam`` and ``high_beam`` [arcsec on the
            grid].
        pixel_arcsec: the grid's pixel side.
        low_noise_jy_beam, high_noise_jy_beam: each map's noise rms at its own beam: the threshold is ``sigma``
            times it, smoothed alike (give a target's noise for noise-free models, so that they are cut as the target
            is).
        sigma: the threshold in noise rms.

    Returns:
        The :class:`SpectralIndexMap` (the coarser beam, and NaN where either band is below ``sigma`` times its noise).
    """
    covariances = [low_beam.covariance_pixels(pixel_arcsec), high_beam.covariance_pixels(pixel_arcsec)]
    common = common_beam_covariance(*covariances)
    smoothed, noise = [], []
    for image, covariance, rms in zip((low, high), covariances, (low_noise_jy_beam, high_noise_jy_beam)):
        values, vectors = np.linalg.eigh(common - covariance)
        kernel = vectors @ np.diag(np.clip(values, 0.0, None)) @ vectors.T
        ratio = gaussian_solid_angle_pixels(common) / gaussian_solid_angle_pixels(covariance)
        tensor = torch.as_tensor(np.asarray(image, dtype=np.float64))
        smoothed.append(
            (convolve_beam(tensor, kernel) * ratio).numpy() if np.trace(kernel) > 1e-9 else tensor.numpy() * ratio
        )
        noise.append(float(rms) * math.sqrt(ratio))
    above = (smoothed[0] > sigma * noise[0]) & (smoothed[1] > sigma * noise[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = np.where(above, np.log(smoothed[1] / smoothed[0]) / math.log(high_ghz / low_ghz), np.nan)
    return SpectralIndexMap(
        alpha,
        float(low_ghz),
        float(high_ghz),
        Beam.from_covariance_pixels(common, pixel_arcsec),
        (noise[0], noise[1]),
        float(sigma),
    )
