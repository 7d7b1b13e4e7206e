"""The bank-to-observation transform: :class:`ResolutionMatch`, and the common beam of two resolutions.

Beams are Gaussian covariances in pixels (:meth:`~protolib.instrument.Beam.covariance_pixels`), so
resolutions add and subtract exactly; every convolution is :func:`protolib.instrument.convolve_beam`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..instrument import (
    FWHM_TO_SIGMA,
    Beam,
    beam_noise,
    convolve_beam,
    effective_beam_covariance,
    gaussian_solid_angle_pixels,
)
from ..runtime import ProtolibInputError

__all__ = ["ResolutionMatch", "common_beam_covariance"]


def common_beam_covariance(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The smallest Gaussian covariance containing both ``first`` and ``second`` (equal to ``first``
    when it already contains ``second``): ``second`` is whitened, eigenvalues below one are raised to one.
    """
    lower = np.linalg.cholesky(second)
    inverse = np.linalg.inv(lower)
    values, vectors = np.linalg.eigh(inverse @ first @ inverse.T)
    raised = vectors @ np.diag(np.maximum(values, 1.0)) @ vectors.T
    common = lower @ raised @ lower.T
    return 0.5 * (common + common.T)


def _smoothing_kernel(target: np.ndarray, bank: np.ndarray, target_beam: Beam, bank_beam: Beam | None) -> np.ndarray:
    """The covariance [px^2] of the Gaussian that smooths the bank's beam (covariance ``bank``) to the target's
    (``target``); refused when the target beam is the smaller along some direction (a bank cannot be sharpened)."""
    kernel = target - bank
    smallest = float(np.linalg.eigvalsh(kernel)[0])
    if smallest < -1e-6 * float(np.trace(target)):
        raise ProtolibInputError(
            f"The target beam {target_beam} is smaller than the bank's beam {bank_beam} along some direction; a "
            "bank "
            "cannot be sharpened. Prepare the observation with prepare_observation(), which smooths it to a common "
            "beam."
        )
    values, vectors = np.linalg.eigh(kernel)
    return vectors @ np.diag(np.clip(values, 0.0, None)) @ vectors.T


class ResolutionMatch:
    """Bring bank images to an observation's resolution, units and noise: the transform used for matching.

    Images ``(..., H, W)`` in the bank's unit (Jy/beam for the bank's beam, or Jy/pixel) are convolved
    with the Gaussian that turns the bank's beam into ``target_beam`` (the covariance difference),
    converted to Jy per ``target_beam``, given extra noise correlated on the target beam so that the
    total noise rms is ``noise_rms_jy_beam`` (the bank's own noise, smoothed, counts towards it), and
    multiplied by ``coverage`` (zero where the observation was padded).

    ``target_beam`` must contain the bank's beam (the bank cannot be sharpened);
    :func:`~protolib.observation.prepare_observation` guarantees it by smoothing the observation where needed.

    With ``max_scale_arcsec`` the transform also removes what an interferometer does not recover:
    emission on scales larger than its maximum recoverable scale. The filter is a Gaussian high-pass
    taper in the uv plane, ``1 - exp(-pi^2 theta^2 q^2 / (4 ln 2))`` for a maximum recoverable scale
    ``theta`` and a spatial frequency ``q``: the image minus itself smoothed by a circular Gaussian of
    FWHM ``theta``. A Gaussian source of FWHM ``theta_s`` keeps the fraction
    ``theta^2 / (theta^2 + theta_s^2)`` of its peak, so a compact disk keeps nearly all of it and an
    envelope as large as ``theta`` half. It stands for the missing short baselines of a real array
    without knowing them; the zero-spacing flux is removed entirely, as in an interferometer.

    Arguments:
        target_beam: the observation's resolution, at the bank's distance.
        pixel_arcsec: the bank's pixel side at the bank's distance.
        bank_beam: the bank images' beam (``None`` for images in Jy/pixel).
        noise_rms_jy_beam: total noise rms wanted [Jy/target beam].
        bank_noise_rms_jy_beam: noise rms already in the bank images [Jy/bank beam].
        coverage: ``(H, W)`` fraction of each pixel with observed data, or ``None``.
        max_scale_arcsec: the maximum recoverable scale at the bank's distance (``None``: no filtering).

    Attributes:
        bank_noise_rms_jy_beam: the bank's own noise after the transform [Jy/target beam]; it
            counts towards the noise of a residual between the observation and a transformed bank image.

    Example:
        >>> prepared = prepare_observation("obs.fits", "bank.h5", distance_pc=146)  # doctest: +SKIP
        >>> transform = prepared.transform()                                      # doctest: +SKIP
        >>> images = torch.as_tensor(bank.load_images([0, 1])[:, 0])                  # doctest: +SKIP
        >>> matched = transform(images, np.random.default_rng(0))                    # doctest: +SKIP
        >>> matched.shape                      # (2, H, W), Jy/beam at the observation's resolution  # doctest: +SKIP
    """

    def __init__(
        self,
        target_beam: Beam,
        pixel_arcsec: float,
        *,
        bank_beam: Beam | None,
        noise_rms_jy_beam: float = 0.0,
        bank_noise_rms_jy_beam: float = 0.0,
        coverage: np.ndarray | None = None,
        max_scale_arcsec: float | None = None,
    ):
        self.target_beam = target_beam
        self.max_scale_arcsec = float(max_scale_arcsec) if max_scale_arcsec else None
        fwhm_pixels = self.max_scale_arcsec / float(pixel_arcsec) if self.max_scale_arcsec else 0.0
        self.max_scale_covariance = (fwhm_pixels * FWHM_TO_SIGMA) ** 2 * np.eye(2) if fwhm_pixels else None
        self.bank_beam = bank_beam
        self.pixel_arcsec = float(pixel_arcsec)
        target = target_beam.covariance_pixels(pixel_arcsec)
        bank = effective_beam_covariance(bank_beam, pixel_arcsec) if bank_beam is not None else np.zeros((2, 2))
        self.kernel_covariance = _smoothing_kernel(target, bank, target_beam, bank_beam)
        nominal = bank_beam.covariance_pixels(pixel_arcsec) if bank_beam is not None else None
        self.unit_factor = gaussian_solid_angle_pixels(target) / (
            gaussian_solid_angle_pixels(nominal) if bank_beam is not None else 1.0
        )
        smoothed_bank_noise = 0.0
        if bank_beam is not None:  # noise correlated on the bank's beam, smoothed to the target's, in Jy/target beam
            smoothed_bank_noise = (
                bank_noise_rms_jy_beam * self.unit_factor * (np.linalg.det(bank) / np.linalg.det(target)) ** 0.25
            )
        self.noise_rms_jy_beam = float(noise_rms_jy_beam)
        self.bank_noise_rms_jy_beam = float(smoothed_bank_noise)
        self.added_noise_rms_jy_beam = math.sqrt(max(0.0, noise_rms_jy_beam**2 - smoothed_bank_noise**2))
        self.coverage = None if coverage is None else torch.as_tensor(np.asarray(coverage, dtype=np.float32))

    def __call__(self, images, rng: np.random.Generator | None = None):
        """Matched images, same shape and type (tensor or numpy) as ``images``; no noise when ``rng`` is ``None``."""
        as_numpy = isinstance(images, np.ndarray)
        x = torch.as_tensor(np.asarray(images, dtype=np.float32)) if as_numpy else images
        x = convolve_beam(x, self.kernel_covariance) * self.unit_factor  # (..., H, W)
        if self.max_scale_covariance is not None:
            x = x - convolve_beam(x, self.max_scale_covariance)
        if rng is not None and self.added_noise_rms_jy_beam > 0:
            noise = beam_noise(tuple(x.shape), self.target_beam, self.pixel_arcsec, rng).to(x)
            x = x + self.added_noise_rms_jy_beam * noise
        if self.coverage is not None:
            x = x * self.coverage.to(x)
        return x.numpy() if as_numpy else x

    def __repr__(self) -> str:
        scale = f', scales above {self.max_scale_arcsec:.3g}" removed' if self.max_scale_arcsec else ""
        return (
            f"ResolutionMatch(bank beam {self.bank_beam} -> {self.target_beam}, "
            f'noise {self.noise_rms_jy_beam:.3g} Jy/beam, {self.pixel_arcsec:.4g}"/px{scale})'
        )
