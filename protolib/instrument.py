"""The instrument: a Gaussian beam, thermal noise correlated on the beam scale, and sky units."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

__all__ = ["Beam", "Instrument", "beam_kernel", "convolve_beam", "beam_noise", "pixel_solid_angle_sr"]

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

    def without_noise(self) -> "Instrument":
        """The same instrument with a perfect receiver (no thermal noise)."""
        return Instrument(**{**self.to_dict(), "noise_rms_jy_beam": 0.0})

    def total_flux_jy(self, images: np.ndarray, pixel_size_au: float) -> np.ndarray:
        """Total flux [Jy] of images ``(..., H, W)`` in this instrument's unit (Jy/beam or Jy/pixel)."""
        total = np.asarray(images, dtype=np.float64).sum(axis=(-2, -1))
        beam = self.beam
        return total if beam is None else total * pixel_solid_angle_sr(pixel_size_au, self.distance_pc) / beam.solid_angle_sr

    def observe(self, clean_jy_pixel: torch.Tensor, pixel_size_au: float, rng: np.random.Generator | None) -> torch.Tensor:
        """Convolve clean images ``(B, H, W)`` [Jy/pixel] with the beam and add noise; returns Jy/beam.

        Accepts a tensor or a numpy array and returns the same kind.

        Noise is drawn from ``rng`` (skipped when ``rng`` is ``None`` or the rms is zero).
        """
        if isinstance(clean_jy_pixel, np.ndarray):
            return self.observe(torch.from_numpy(np.ascontiguousarray(clean_jy_pixel, dtype=np.float32)), pixel_size_au, rng).numpy()
        beam = self.beam
        if beam is None:
            return clean_jy_pixel
        pixel_arcsec = pixel_size_au / self.distance_pc
        image = convolve_beam(clean_jy_pixel, beam, pixel_arcsec)
        image = image * (beam.solid_angle_sr / pixel_solid_angle_sr(pixel_size_au, self.distance_pc))
        if rng is not None and self.noise_rms_jy_beam > 0:
            image = image + self.noise_rms_jy_beam * beam_noise(image.shape, beam, pixel_arcsec, rng).to(image)
        return image


def beam_kernel(beam: Beam, pixel_arcsec: float, oversample: int = 1) -> np.ndarray:
    """The beam as a unit-sum image in real space, ``(n, n)``, rows north and columns west.

    By default the Gaussian is sampled at pixel centres, as a restoring beam is in interferometric
    imaging, so a point source at a pixel centre peaks at its flux in Jy/beam. Being positive, the
    kernel does not ring, unlike a Gaussian sampled in Fourier space when the beam spans about a
    pixel. ``oversample > 1`` integrates the Gaussian over each pixel instead.
    """
    covariance = beam.covariance_pixels(pixel_arcsec)
    half = int(math.ceil(4.0 * math.sqrt(max(covariance[0, 0], covariance[1, 1])))) + 1
    n = 2 * half + 1
    sub = (np.arange(n * oversample) - (n * oversample - 1) / 2.0) / oversample
    x, y = np.meshgrid(sub, sub)  # x: column (west), y: row (north)
    inverse = np.linalg.inv(covariance)
    gauss = np.exp(-0.5 * (inverse[0, 0] * x**2 + 2.0 * inverse[0, 1] * x * y + inverse[1, 1] * y**2))
    kernel = gauss.reshape(n, oversample, n, oversample).sum(axis=(1, 3))
    return kernel / kernel.sum()


def convolve_beam(images: torch.Tensor, beam: Beam, pixel_arcsec: float) -> torch.Tensor:
    """Convolve images ``(..., H, W)`` with the pixel-integrated beam (:func:`beam_kernel`).

    Total flux is conserved: the kernel sums to one, and the images are zero-padded by the kernel's
    half-width before the FFT, so nothing wraps around; only what the beam spreads beyond the image
    edge is lost.
    """
    kernel = beam_kernel(beam, pixel_arcsec)
    half = kernel.shape[0] // 2
    height, width = images.shape[-2:]
    shape = (height + 2 * half, width + 2 * half)
    padded = torch.nn.functional.pad(images, (half, half, half, half))
    placed = np.zeros(shape)
    placed[: kernel.shape[0], : kernel.shape[1]] = kernel
    placed = np.roll(placed, (-half, -half), axis=(0, 1))
    transfer = torch.fft.rfft2(torch.as_tensor(placed, dtype=images.dtype, device=images.device))
    result = torch.fft.irfft2(torch.fft.rfft2(padded) * transfer, s=shape)
    return result[..., half : half + height, half : half + width]


def beam_noise(shape: tuple[int, ...], beam: Beam, pixel_arcsec: float, rng: np.random.Generator) -> torch.Tensor:
    """Unit-rms Gaussian noise correlated on the beam scale, as in an interferometric image.

    White noise is convolved with the beam and divided by the kernel's root-sum-square, so the
    expected rms per pixel is exactly one.
    """
    white = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    kernel = beam_kernel(beam, pixel_arcsec)
    return convolve_beam(white, beam, pixel_arcsec) / float(np.sqrt((kernel**2).sum()))
