"""The instrument: a Gaussian beam, thermal noise correlated on the beam scale, and sky units.

:func:`convolve_beam` is protolib's one convolution: with a :class:`Beam` it applies the restoring beam
as an interferometric image has it (sampled at pixel centres), with a covariance in pixels a
Fourier-space Gaussian (covariances add exactly); :func:`effective_beam_covariance` relates the two.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .runtime import ProtolibInputError

__all__ = [
    "Beam",
    "Instrument",
    "beam_kernel",
    "convolve_beam",
    "effective_beam_covariance",
    "gaussian_solid_angle_pixels",
    "beam_noise",
    "pixel_solid_angle_sr",
]

ARCSEC_RAD = math.pi / (180.0 * 3600.0)
BAND_SETTINGS = ("beam_major_arcsec", "beam_minor_arcsec", "beam_position_angle_deg", "noise_rms_jy_beam")
"""The instrument settings a band may have of its own (:attr:`Instrument.bands`)."""
FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
# [pixel^2] the least variance of a beam covariance (a sub-pixel beam sampled at pixel centres has 0)
MIN_BEAM_VARIANCE = 1e-9


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
            raise ValueError(
                f"A beam needs positive FWHM axes, got {self.major_arcsec} and {self.minor_arcsec} arcsec."
            )
        if self.minor_arcsec > self.major_arcsec:
            major, minor = self.minor_arcsec, self.major_arcsec
            object.__setattr__(self, "major_arcsec", major)
            object.__setattr__(self, "minor_arcsec", minor)
            object.__setattr__(self, "position_angle_deg", self.position_angle_deg + 90.0)

    def __str__(self) -> str:
        """The beam as an astronomer writes it, e.g. ``0.35" x 0.28", PA 25 deg`` (``repr`` keeps every digit)."""
        return f'{self.major_arcsec:.3g}" x {self.minor_arcsec:.3g}", PA {self.position_angle_deg:.0f} deg'

    def in_au(self, distance_pc: float) -> tuple[float, float, float]:
        """``(major, minor, position angle)``: the FWHM axes in au at ``distance_pc`` and the angle in degrees, as the
        galleries draw a beam."""
        return (
            float(self.major_arcsec) * distance_pc,
            float(self.minor_arcsec) * distance_pc,
            float(self.position_angle_deg),
        )

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
    def from_covariance_pixels(cls, covariance: np.ndarray, pixel_arcsec: float) -> Beam:
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
    # several bands: one mapping per simulator band of the beam and noise keys above that differ there
    bands: list[dict] | None = None

    def __post_init__(self):
        checks = [
            ("distance_pc", lambda v: v > 0, "a positive number of parsecs"),
            ("beam_major_arcsec", lambda v: v >= 0, "a number of arcsec >= 0 (0: no beam)"),
            (
                "beam_minor_arcsec",
                lambda v: v > 0 or (v == 0 and self.beam_major_arcsec == 0),
                "a positive number of arcsec (0 only with no beam, beam_major_arcsec = 0)",
            ),
            ("beam_position_angle_deg", lambda v: True, "a number of degrees east of north"),
            ("noise_rms_jy_beam", lambda v: v >= 0, "a number of Jy/beam >= 0 (0: noiseless)"),
        ]
        for name, good, expected in checks:
            value = getattr(self, name)
            if not (
                isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and good(value)
            ):
                raise ProtolibInputError(
                    f"The instrument's {name} must be {expected}, got {value!r}; set instrument.{name} to such a value."
                )
        if self.bands is not None:
            self.per_band(len(self.bands))  # each band's settings checked as the instrument's are

    def per_band(self, n_bands: int) -> list[Instrument]:
        """The instrument of each of ``n_bands`` bands (one-band instruments, in the simulator's band order).

        Each band has its own beam and noise where ``bands`` gives them (an interferometer's beam grows
        with wavelength, and each receiver has its own noise); what an entry leaves out is the
        instrument's own setting. Without ``bands``, every band is seen as the instrument's one.
        """
        if self.bands is None:
            return [self.single()] * n_bands
        if not isinstance(self.bands, (list, tuple)) or len(self.bands) != n_bands:
            raise ProtolibInputError(
                f"instrument.bands gives {len(self.bands) if isinstance(self.bands, (list, tuple)) else self.bands!r} "
                f"band(s) for a simulator of {n_bands}; give one entry per simulator.frequencies_ghz band."
            )
        allowed = set(BAND_SETTINGS)
        for entry in self.bands:
            if not isinstance(entry, dict) or set(entry) - allowed:
                raise ProtolibInputError(
                    f"instrument.bands entry {entry!r} must be a mapping of {sorted(allowed)} (the distance is "
                    "the same in every band); fix that entry."
                )
        seen = [Instrument(**{**self.single().to_dict(), **entry}) for entry in self.bands]
        if len({band.unit for band in seen}) > 1:
            raise ProtolibInputError(
                "instrument.bands gives a beam to some bands and none (beam_major_arcsec 0) to others, whose "
                "images would be in Jy/beam and Jy/pixel; give every band a beam, or none."
            )
        return seen

    def single(self) -> Instrument:
        """This instrument without per-band settings (its own beam and noise only)."""
        return (
            Instrument(**{k: v for k, v in self.to_dict().items() if k != "bands"}) if self.bands is not None else self
        )

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
        """The settings as plain data (``bands`` only where it is given: a one-band instrument's are as before several
        bands)."""
        values = asdict(self)
        if values["bands"] is None:
            del values["bands"]
        return values

    def without_noise(self) -> Instrument:
        """The same instrument with a perfect receiver (no thermal noise), in every band."""
        bands = None if self.bands is None else [{**entry, "noise_rms_jy_beam": 0.0} for entry in self.bands]
        return Instrument(**{**self.to_dict(), "noise_rms_jy_beam": 0.0, "bands": bands})

    def total_flux_jy(self, images: np.ndarray, pixel_size_au: float) -> np.ndarray:
        """Total flux [Jy] of images ``(..., H, W)`` in this instrument's unit (Jy/beam or Jy/pixel)."""
        total = np.asarray(images, dtype=np.float64).sum(axis=(-2, -1))
        beam = self.beam
        return (
            total
            if beam is None
            else total * pixel_solid_angle_sr(pixel_size_au, self.distance_pc) / beam.solid_angle_sr
        )

    def observe(
        self, clean_jy_pixel: torch.Tensor, pixel_size_au: float, rng: np.random.Generator | None
    ) -> torch.Tensor:
        """Convolve clean images ``(B, H, W)`` [Jy/pixel] with the beam and add noise; returns Jy/beam.

        Accepts a tensor or a numpy array and returns the same kind.

        Noise is drawn from ``rng`` (skipped when ``rng`` is ``None`` or the rms is zero).
        """
        if isinstance(clean_jy_pixel, np.ndarray):
            return self.observe(
                torch.from_numpy(np.ascontiguousarray(clean_jy_pixel, dtype=np.float32)), pixel_size_au, rng
            ).numpy()
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
    return _beam_kernel(beam, float(pixel_arcsec), int(oversample)).copy()


@functools.lru_cache(maxsize=64)
def _beam_kernel(beam: Beam, pixel_arcsec: float, oversample: int) -> np.ndarray:
    """:func:`beam_kernel`, computed once per beam and pixel (a bank convolves every image and its noise with one
    beam); read-only, as it is shared."""
    covariance = beam.covariance_pixels(pixel_arcsec)
    half = int(math.ceil(4.0 * math.sqrt(max(covariance[0, 0], covariance[1, 1])))) + 1
    n = 2 * half + 1
    sub = (np.arange(n * oversample) - (n * oversample - 1) / 2.0) / oversample
    x, y = np.meshgrid(sub, sub)  # x: column (west), y: row (north)
    inverse = np.linalg.inv(covariance)
    gauss = np.exp(-0.5 * (inverse[0, 0] * x**2 + 2.0 * inverse[0, 1] * x * y + inverse[1, 1] * y**2))
    kernel = gauss.reshape(n, oversample, n, oversample).sum(axis=(1, 3))
    kernel = kernel / kernel.sum()
    kernel.setflags(write=False)
    return kernel


def convolve_beam(images: torch.Tensor, beam: Beam | np.ndarray, pixel_arcsec: float | None = None) -> torch.Tensor:
    """Convolve images ``(..., H, W)`` with a beam: the one convolution of protolib.

    ``beam`` is either

    - a :class:`Beam`, with ``pixel_arcsec``: the restoring beam as an interferometric image has it,
      the pixel-sampled kernel of :func:`beam_kernel`. The images are zero padded by the kernel's
      half-width, so nothing wraps around; the kernel sums to one, so total flux is conserved and only
      what the beam spreads beyond the image edge is lost. The Gaussian it applies in effect is
      :func:`effective_beam_covariance`.
    - a covariance ``(2, 2)`` [pixels^2] in (column, row) = (west, north) pixel coordinates, as
      :meth:`Beam.covariance_pixels` gives it: a unit-integral Gaussian defined in Fourier space, so
      covariances add exactly (the difference of two beams, which may be degenerate, or the wide
      Gaussian of a maximum recoverable scale). The images are zero padded by three widths; a zero
      covariance returns them unchanged. ``pixel_arcsec`` is not used.
    """
    if isinstance(beam, Beam):
        if pixel_arcsec is None:
            raise TypeError("convolve_beam(images, beam, pixel_arcsec): a Beam needs the pixel side in arcsec.")
        pixel_arcsec = float(pixel_arcsec)
        half = _beam_kernel(beam, pixel_arcsec, 1).shape[0] // 2
        return _fft_convolve(
            images,
            half,
            lambda shape: _beam_transfer(beam, pixel_arcsec, shape, images.dtype, images.device),
            smooth_size=True,
        )
    return _convolve_covariance(images, np.asarray(beam, dtype=float))


def _fft_convolve(images: torch.Tensor, pad: int, transfer, smooth_size: bool = False) -> torch.Tensor:
    """Images ``(..., H, W)`` zero padded by ``pad`` pixels a side, multiplied in Fourier space by
    ``transfer(padded_shape)`` (the ``rfft2`` layout) and cropped back to ``(H, W)``.

    ``smooth_size``: padded further, on the far side, to the next size of factors 2, 3 and 5 only
    (:func:`_smooth_fft_size`), for a real-space kernel, whose convolution the extra zeros leave the same
    to float rounding: a 64-pixel image with a 5-pixel pad is 74 = 2 x 37 a side, and an FFT with a
    prime factor of 37 took 4 times as long as one of 75 (benchmarks/README.md, "The bank command").

    On the CPU the images are transformed one at a time: MKL's batched inverse FFT is not the same to
    the last bit as its single one for some sizes (36 x 36, for one), so an image's result would depend
    on the batch it was in, and a bank row seen alone (a shortlist) would differ from the same row seen
    with the whole bank. One at a time costs about what the batch does on a CPU.
    """
    height, width = images.shape[-2:]
    shape = (height + 2 * pad, width + 2 * pad)
    if smooth_size:
        shape = (_smooth_fft_size(shape[0]), _smooth_fft_size(shape[1]))
    padded = torch.nn.functional.pad(images, (pad, shape[1] - width - pad, pad, shape[0] - height - pad))
    response = transfer(shape)
    if padded.device.type == "cpu" and padded.dim() > 2:
        planes = [torch.fft.irfft2(torch.fft.rfft2(plane) * response, s=shape) for plane in padded.reshape(-1, *shape)]
        result = torch.stack(planes).reshape(padded.shape) if planes else padded
    else:
        result = torch.fft.irfft2(torch.fft.rfft2(padded) * response, s=shape)
    return result[..., pad : pad + height, pad : pad + width]


@functools.lru_cache(maxsize=256)
def _smooth_fft_size(n: int) -> int:
    """The smallest size of at least ``n`` with no prime factor above 5 (sizes FFTs are fast at)."""
    size = n
    while True:
        rest = size
        for factor in (2, 3, 5):
            while rest % factor == 0:
                rest //= factor
        if rest == 1:
            return size
        size += 1


@functools.lru_cache(maxsize=64)
def _beam_transfer(
    beam: Beam, pixel_arcsec: float, shape: tuple[int, int], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """The ``rfft2`` of the beam's kernel (:func:`beam_kernel`) centred on a grid of ``shape``, computed once per
    beam, pixel, grid and type (a bank convolves every image and its noise with one beam)."""
    kernel = _beam_kernel(beam, pixel_arcsec, 1)
    half = kernel.shape[0] // 2
    placed = np.zeros(shape)
    placed[: kernel.shape[0], : kernel.shape[1]] = kernel
    placed = np.roll(placed, (-half, -half), axis=(0, 1))
    return torch.fft.rfft2(torch.as_tensor(placed, dtype=dtype, device=device))


def _convolve_covariance(images: torch.Tensor, covariance: np.ndarray) -> torch.Tensor:
    """:func:`convolve_beam` for a Gaussian given as a covariance [pixels^2]: two matrix products
    when it is separable (no cross term), else one 2-D FFT."""
    if not np.any(np.abs(covariance) > 1e-12):
        return images
    pad = int(math.ceil(3.0 * math.sqrt(max(covariance[0, 0], covariance[1, 1]))))
    height, width = images.shape[-2:]
    # separable: two small matrix products
    if abs(covariance[0, 1]) <= 1e-9 * math.sqrt(covariance[0, 0] * covariance[1, 1]):
        rows = _gaussian_matrix(height, covariance[1, 1], pad).to(images.device, images.dtype)
        cols = _gaussian_matrix(width, covariance[0, 0], pad).to(images.device, images.dtype)
        return rows @ images @ cols.T

    def transfer(shape: tuple[int, int]) -> torch.Tensor:
        ky = torch.fft.fftfreq(shape[0], dtype=torch.float64)[:, None]
        kx = torch.fft.rfftfreq(shape[1], dtype=torch.float64)[None, :]
        cxx, cxy, cyy = covariance[0, 0], covariance[0, 1], covariance[1, 1]
        return torch.exp(-2.0 * math.pi**2 * (cxx * kx**2 + 2.0 * cxy * kx * ky + cyy * ky**2)).to(
            images.device, images.dtype
        )

    return _fft_convolve(images, pad, transfer)


@functools.lru_cache(maxsize=64)
def _gaussian_matrix(n: int, variance: float, pad: int) -> torch.Tensor:
    """``(n, n)`` matrix of the 1-D convolution a covariance Gaussian applies along one axis.

    Column ``j`` is the response to a unit impulse at ``j``, computed with the same zero-padded FFT and
    the same Fourier-space Gaussian, so the separable path gives what the 2-D FFT gives, in a matrix
    product that costs far less when the kernel is wide (a recoverable scale many times the image).
    """
    size = n + 2 * pad
    transfer = torch.exp(-2.0 * math.pi**2 * variance * torch.fft.rfftfreq(size, dtype=torch.float64) ** 2)
    impulses = torch.zeros((n, size), dtype=torch.float64)
    impulses[torch.arange(n), pad + torch.arange(n)] = 1.0
    # (impulse j, position i)
    responses = torch.fft.irfft(torch.fft.rfft(impulses) * transfer, n=size)[:, pad : pad + n]
    return responses.T.contiguous()


def effective_beam_covariance(beam: Beam, pixel_arcsec: float) -> np.ndarray:
    """The covariance [pixels^2] of the Gaussian that :func:`convolve_beam` really applies for ``beam``.

    Fitted to the transfer function of a convolved point source at low spatial frequencies, where a
    Gaussian of covariance ``C`` has ``-ln |T(k)| = 2 pi^2 k^T C k``. It equals the nominal beam for a
    Fourier-space Gaussian and includes the pixel (``+1/12``) for a pixel-integrated kernel, so the
    transform matches however the bank's beam was applied, even for beams of about a pixel.
    """
    nominal = beam.covariance_pixels(pixel_arcsec)
    n = max(64, 2 * int(math.ceil(8.0 * math.sqrt(max(nominal[0, 0], nominal[1, 1])))) + 1)
    point = torch.zeros((n, n), dtype=torch.float64)
    point[n // 2, n // 2] = 1.0
    kernel = convolve_beam(point, beam, pixel_arcsec).numpy()
    transfer = np.abs(np.fft.fft2(np.fft.ifftshift(kernel)))
    ky, kx = np.meshgrid(np.fft.fftfreq(n), np.fft.fftfreq(n), indexing="ij")
    use = (np.hypot(kx, ky) < 0.2) & (transfer > 0.05) & (np.hypot(kx, ky) > 0)
    design = np.stack([kx[use] ** 2, 2 * kx[use] * ky[use], ky[use] ** 2], axis=1)
    cxx, cxy, cyy = np.linalg.lstsq(design, -np.log(transfer[use]) / (2 * math.pi**2), rcond=None)[0]
    # A beam much narrower than a pixel, sampled at pixel centres, is a delta function: its covariance
    # is zero, and the fit gives +-1e-15. Eigenvalues are kept at least MIN_BEAM_VARIANCE, so that
    # the covariance stays positive definite whatever the rounding.
    values, vectors = np.linalg.eigh(np.array([[cxx, cxy], [cxy, cyy]]))
    return vectors @ np.diag(np.maximum(values, MIN_BEAM_VARIANCE)) @ vectors.T


def gaussian_solid_angle_pixels(covariance: np.ndarray) -> float:
    """Solid angle [pixels] of a Gaussian beam of ``covariance`` [pixels^2]: ``2 pi sqrt(det C)``."""
    return 2.0 * math.pi * math.sqrt(max(np.linalg.det(covariance), 0.0))


def beam_noise(
    shape: tuple[int, ...], beam: Beam, pixel_arcsec: float, rng: np.random.Generator | Sequence[np.random.Generator]
) -> torch.Tensor:
    """Unit-rms Gaussian noise correlated on the beam scale, as in an interferometric image.

    White noise is convolved with the beam and divided by the kernel's root-sum-square, so the
    expected rms per pixel is exactly one. ``rng`` is one generator for the whole ``shape``, or one
    per image (``shape[:-2]`` images of ``shape[-2:]`` each, in order), so an image's noise can be
    drawn from its own seed whatever batch it is in.
    """
    if isinstance(rng, np.random.Generator):
        white = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    else:
        generators = list(rng)
        if len(generators) != int(np.prod(shape[:-2], dtype=np.int64)):
            raise ValueError(
                f"beam_noise: {len(generators)} generators for {int(np.prod(shape[:-2]))} images of shape {shape}."
            )
        planes = [g.standard_normal(shape[-2:]).astype(np.float32) for g in generators]
        white = torch.from_numpy(np.stack(planes).reshape(shape) if planes else np.zeros(shape, dtype=np.float32))
    kernel = _beam_kernel(beam, float(pixel_arcsec), 1)
    return convolve_beam(white, beam, pixel_arcsec) / float(np.sqrt((kernel**2).sum()))
