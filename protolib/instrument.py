"""The instrument: a Gaussian beam, thermal noise correlated on the beam scale, and sky units."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

__all__ = ["Beam", "Instrument", "convolve_beam", "beam_noise", "pixel_solid_angle_sr"]

ARCSEC_RAD = math.pi / (180.0 * 3600.0)
FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


def pixel_solid_angle_sr(pixel_size_au: float, distance_pc: float) -> float:
    """Solid angle of a square pixel of ``pixel_size_au`` seen from ``distance_pc`` [sr]."""
    return (pixel_size_au / distance_pc * ARCSEC_RAD) ** 2


@dataclass(frozen=True)
class Beam:
    """An elliptical Gaussian beam: FWHM along its major and minor axes [arcsec], PA east of north [deg]."""

    major_arcsec: float
    minor_arcsec: float
    position_angle_deg: float = 0.0

    def __post_init__(self):
        if not (self.major_arcsec > 0 and self.minor_arcsec > 0):
            raise ValueError(f"A beam needs positive FWHM axes, got {self.major_arcsec} and {self.minor_arcsec} arcsec.")
        if self.minor_arcsec > self.major_arcsec:
            major, minor = self.minor_arcsec, self.major_arcsec
            object.__setattr__(self, "major_arcsec", major)
            object.__setattr__(self, "minor_arcsec", minor)
            object.__setattr__(self, "position_angle_deg", self.position_angle_deg + 90.0)

    @property
    def solid_angle_sr(self) -> float:
        r"""Beam solid angle :math:`\pi \theta_\mathrm{maj} \theta_\mathrm{min} / (4 \ln 2)` [sr]."""
        return math.pi * self.major_arcsec * self.minor_arcsec * ARCSEC_RAD**2 / (4.0 * math.log(2.0))

    def covariance_pixels(self, pixel_arcsec: float) -> np.ndarray:
        """The beam's covariance in (column, row) pixel coordinates, columns running west, rows north."""
        sigma_major = self.major_arcsec * FWHM_TO_SIGMA / pixel_arcsec
        sigma_minor = self.minor_arcsec * FWHM_TO_SIGMA / pixel_arcsec
        pa = math.radians(self.position_angle_deg)
        major_axis = np.array([-math.sin(pa), math.cos(pa)])  # east of north -> (west column, north row)
        minor_axis = np.array([math.cos(pa), math.sin(pa)])
        return sigma_major**2 * np.outer(major_axis, major_axis) + sigma_minor**2 * np.outer(minor_axis, minor_axis)

    @classmethod
    def from_covariance_pixels(cls, covariance: np.ndarray, pixel_arcsec: float) -> "Beam":
        """The beam whose :meth:`covariance_pixels` at ``pixel_arcsec`` is ``covariance`` (the inverse)."""
        values, vectors = np.linalg.eigh(np.asarray(covariance, dtype=float))
        minor_var, major_var = np.clip(values, 0.0, None)
        west, north = vectors[:, 1]
        pa = math.degrees(math.atan2(-west, north)) % 180.0
        to_fwhm = pixel_arcsec / FWHM_TO_SIGMA
        return cls(math.sqrt(major_var) * to_fwhm, math.sqrt(minor_var) * to_fwhm, pa)


@dataclass
class Instrument:
    """What turns a clean model into an observation-like image.

    A beam of zero size means no convolution (images stay in Jy/pixel); with a beam, images are in
    Jy/beam. ``noise_rms_jy_beam`` is the thermal noise after convolution.
    """

    distance_pc: float = 140.0  # distance of the bank's systems
    beam_major_arcsec: float = 0.25  # beam FWHM along its major axis (0: no beam)
    beam_minor_arcsec: float = 0.25  # beam FWHM along its minor axis
    beam_position_angle_deg: float = 0.0  # beam major axis, east of north
    noise_rms_jy_beam: float = 1e-4  # thermal noise (0: noiseless)

    @property
    def beam(self) -> Beam | None:
        """The beam, or ``None`` when the instrument has none."""
        if self.beam_major_arcsec <= 0:
            return None
        return Beam(self.beam_major_arcsec, self.beam_minor_arcsec, self.beam_position_angle_deg)

    @property
    def unit(self) -> str:
        """Unit of images seen through this instrument."""
        return "Jy/beam" if self.beam is not None else "Jy/pixel"

    def to_dict(self) -> dict:
        """The settings as plain data."""
        return asdict(self)

    def observe(self, clean_jy_pixel: torch.Tensor, pixel_size_au: float, rng: np.random.Generator | None) -> torch.Tensor:
        """Convolve clean images ``(B, H, W)`` [Jy/pixel] with the beam and add noise; returns Jy/beam.

        Noise is drawn from ``rng`` (skipped when ``rng`` is ``None`` or the rms is zero).
        """
        beam = self.beam
        if beam is None:
            return clean_jy_pixel
        pixel_arcsec = pixel_size_au / self.distance_pc
        image = convolve_beam(clean_jy_pixel, beam, pixel_arcsec)
        image = image * (beam.solid_angle_sr / pixel_solid_angle_sr(pixel_size_au, self.distance_pc))
        if rng is not None and self.noise_rms_jy_beam > 0:
            image = image + self.noise_rms_jy_beam * beam_noise(image.shape, beam, pixel_arcsec, rng).to(image)
        return image


def _gaussian_transfer(shape: tuple[int, int], covariance: np.ndarray, device, dtype) -> torch.Tensor:
    """Fourier transform of a unit-integral Gaussian with ``covariance`` [pixels^2] on an rfft grid."""
    ky = torch.fft.fftfreq(shape[0], device=device, dtype=dtype)[:, None]
    kx = torch.fft.rfftfreq(shape[1], device=device, dtype=dtype)[None, :]
    cxx, cxy, cyy = covariance[0, 0], covariance[0, 1], covariance[1, 1]
    return torch.exp(-2.0 * math.pi**2 * (cxx * kx**2 + 2.0 * cxy * kx * ky + cyy * ky**2))


def convolve_beam(images: torch.Tensor, beam: Beam, pixel_arcsec: float) -> torch.Tensor:
    """Convolve images ``(..., H, W)`` with a unit-integral Gaussian beam (total flux conserved).

    The convolution is done with FFTs on a grid padded by three beam widths on each side, so flux
    is neither wrapped around nor lost except what the beam spreads beyond the image edge.
    """
    covariance = beam.covariance_pixels(pixel_arcsec)
    pad = int(math.ceil(3.0 * math.sqrt(max(covariance[0, 0], covariance[1, 1]))))
    height, width = images.shape[-2:]
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    shape = (height + 2 * pad, width + 2 * pad)
    transfer = _gaussian_transfer(shape, covariance, images.device, images.dtype)
    result = torch.fft.irfft2(torch.fft.rfft2(padded) * transfer, s=shape)
    return result[..., pad : pad + height, pad : pad + width]


def beam_noise(shape: tuple[int, ...], beam: Beam, pixel_arcsec: float, rng: np.random.Generator) -> torch.Tensor:
    """Unit-rms Gaussian noise correlated on the beam scale, as in an interferometric image.

    White noise is convolved with the beam and rescaled by the analytic factor
    ``sqrt(4 pi sigma_maj sigma_min)`` (in pixels), so the expected rms per pixel is one.
    """
    white = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    covariance = beam.covariance_pixels(pixel_arcsec)
    sigma_product = math.sqrt(np.linalg.det(covariance))
    return convolve_beam(white, beam, pixel_arcsec) * math.sqrt(4.0 * math.pi * sigma_product)
