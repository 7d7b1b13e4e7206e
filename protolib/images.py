"""Images as the networks see them: a brightness stretch, a log total flux, and physical augmentation.

A per-image stretch (min-max as in the thesis, or asinh, which keeps faint envelopes visible) makes
images comparable in shape but throws away their brightness. The total flux is what constrains disk
and envelope masses in real data, so it is kept beside the pixels as one extra number per image:
``log10`` of the total flux density scaled to a reference distance, standardised on training images.

Augmentation respects what a real observation can change about a system: position angle on the sky
(rotations by any angle, 90-degree turns and mirror flips), a slightly different beam and a different
noise level. All of it works on batches of images in the bank's unit (Jy/beam) with a
:class:`torch.Generator`, so it runs on the training device and is reproducible under a seed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .instrument import FWHM_TO_SIGMA, Beam, beam_kernel, convolve_beam, pixel_solid_angle_sr
from .runtime import ProtolibInputError

__all__ = ["ImagePreprocessing", "AugmentationConfig", "augment_images", "stretch_images", "convolve_small_beam"]

STRETCHES = ("minmax", "asinh")
SMALL_KERNEL = 31  # beam kernels up to this many pixels a side are convolved in real space by augmentation
FLUX_FLOOR_JY = 1e-6


def stretch_images(images: torch.Tensor, stretch: str = "minmax", asinh_softening: float = 0.02) -> torch.Tensor:
    """Per-image brightness stretch of images ``(N, H, W)`` to roughly ``[0, 1]``.

    Arguments:
        images: images ``(N, H, W)`` in any linear unit.
        stretch: ``"minmax"`` maps each image's minimum to 0 and maximum to 1 (the thesis);
            ``"asinh"`` maps ``x`` to ``asinh(x / (b * peak)) / asinh(1 / b)``, linear below
            ``b * peak`` and logarithmic above, so envelopes a hundred times fainter than the disk
            stay visible.
        asinh_softening: ``b`` above, as a fraction of each image's peak.

    Returns:
        Stretched images ``(N, 1, H, W)``.
    """
    if stretch not in STRETCHES:
        raise ProtolibInputError(f"Image stretch must be one of {STRETCHES}, got {stretch!r}.")
    flat = images.reshape(len(images), -1)
    peak = flat.amax(1).clamp_min(1e-30)[:, None, None]
    if stretch == "minmax":
        low = flat.amin(1)[:, None, None]
        out = (images - low) / (peak - low).clamp_min(1e-30)
    else:
        out = torch.asinh(images / (asinh_softening * peak)) / math.asinh(1.0 / asinh_softening)
    return out[:, None]


@dataclass
class ImagePreprocessing:
    """How bank images become network inputs; stored in every checkpoint and reused for observations.

    Build it with :meth:`from_bank` and fit the flux scaling on training images with :meth:`fit`.

    Example:
        >>> prep = ImagePreprocessing.from_bank(bank, stretch="asinh").fit(train_images)  # doctest: +SKIP
        >>> pixels, log_flux = prep(torch.as_tensor(images))   # (N, 1, H, W), (N, 1)
    """

    stretch: str = "minmax"  # per-image stretch: "minmax" (thesis) or "asinh" (keeps faint envelopes)
    asinh_softening: float = 0.02  # asinh: linear below this fraction of the peak
    reference_distance_pc: float = 140.0  # total fluxes are scaled to this distance before the log
    distance_pc: float = 140.0  # distance of the bank's systems (set from the bank)
    pixels_per_beam: float = 1.0  # beam solid angle / pixel solid angle: Jy/beam -> Jy (1 for Jy/pixel)
    flux_centre: float = 0.0  # mean log10 flux of training images (set by fit)
    flux_spread: float = 1.0  # spread of log10 flux of training images (set by fit)

    def __post_init__(self):
        """One check of every setting, whether it comes from a configuration (``images:``) or a checkpoint."""
        if self.stretch not in STRETCHES:
            raise ProtolibInputError(f"Image stretch must be one of {STRETCHES}, got {self.stretch!r}.")
        checks = {
            "asinh_softening": ("a positive fraction of the peak", lambda v: v > 0),
            "reference_distance_pc": ("a positive number of pc", lambda v: v > 0),
            "distance_pc": ("a positive number of pc (the bank's distance)", lambda v: v > 0),
            "pixels_per_beam": ("a positive number (beam solid angle over pixel solid angle)", lambda v: v > 0),
            "flux_centre": ("a finite number", lambda v: True),
            "flux_spread": ("a positive number (the spread of training log fluxes)", lambda v: v > 0),
        }
        for name, (expected, good) in checks.items():
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or not good(value)
            ):
                raise ProtolibInputError(f"The image preprocessing's {name} must be {expected}, got {value!r}.")

    @classmethod
    def from_bank(cls, bank, **settings) -> ImagePreprocessing:
        """Preprocessing for ``bank``'s images (its distance, beam and pixel size), with ``settings``."""
        instrument = bank.instrument
        beam = instrument.beam
        ratio = 1.0
        if beam is not None and bank.unit == "Jy/beam":
            ratio = beam.solid_angle_sr / pixel_solid_angle_sr(bank.pixel_size_au, instrument.distance_pc)
        return cls(**settings, distance_pc=float(instrument.distance_pc), pixels_per_beam=float(ratio))

    def log_flux(self, images: torch.Tensor) -> torch.Tensor:
        """``log10`` total flux density [Jy] of images ``(N, H, W)`` scaled to the reference distance, ``(N,)``."""
        total = images.sum((-2, -1)) / self.pixels_per_beam * (self.distance_pc / self.reference_distance_pc) ** 2
        return torch.log10(total.clamp_min(FLUX_FLOOR_JY))

    def fit(self, images: np.ndarray | torch.Tensor) -> ImagePreprocessing:
        """Learn the log-flux centre and spread from training images ``(N, H, W)``."""
        log_flux = self.log_flux(torch.as_tensor(np.asarray(images), dtype=torch.float64))
        self.flux_centre = float(log_flux.mean())
        self.flux_spread = float(log_flux.std()) if len(log_flux) > 1 and float(log_flux.std()) > 0 else 1.0
        return self

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Network inputs from images ``(N, H, W)``: stretched pixels ``(N, 1, H, W)``, standardised log flux ``(N,
        1)``."""
        images = images.float()
        pixels = stretch_images(images, self.stretch, self.asinh_softening)
        flux = (self.log_flux(images) - self.flux_centre) / self.flux_spread
        return pixels, flux[:, None]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ImagePreprocessing:
        return cls(**data)


@dataclass
class AugmentationConfig:
    """Random changes an observation could make to a system's image, applied to training batches."""

    rotate: bool = True  # rotate by any angle: the position angle on the sky is arbitrary
    flip: bool = True  # 90-degree turns and mirror flips: exact, no interpolation
    beam_jitter: float = 0.3  # smooth to a beam up to this fraction wider (imperfect beam matching; total flux kept)
    noise_jitter: float = 1.0  # add beam-correlated noise of up to this many times the bank's rms

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def enabled(self) -> bool:
        return self.rotate or self.flip or self.beam_jitter > 0 or self.noise_jitter > 0


def augment_images(
    images: torch.Tensor,
    config: AugmentationConfig,
    generator: torch.Generator,
    *,
    beam: Beam | None = None,
    pixel_arcsec: float = 1.0,
    noise_rms: float = 0.0,
) -> torch.Tensor:
    """Randomly rotate, flip, re-beam and re-noise images ``(N, H, W)`` in Jy/beam.

    Arguments:
        images: images ``(N, H, W)`` (any device); not modified.
        config: what to change and by how much.
        generator: a CPU generator; the same state gives the same augmentation.
        beam: the bank's beam (``None``: no beam or noise jitter).
        pixel_arcsec: pixel size [arcsec].
        noise_rms: the bank's noise rms [Jy/beam].

    Returns:
        Augmented images ``(N, H, W)``.
    """
    n = len(images)
    out = images
    if config.flip:
        turns = torch.randint(0, 4, (n,), generator=generator)
        mirror = torch.rand(n, generator=generator) < 0.5
        quarter_turns = torch.stack([torch.rot90(out, k, (-2, -1)) for k in range(4)])  # (4, N, H, W)
        out = quarter_turns[turns.to(out.device), torch.arange(n, device=out.device)]
        out = torch.where(mirror.to(out.device)[:, None, None], out.flip(-1), out)
    if config.rotate:
        out = _rotate(out, torch.rand(n, generator=generator) * 2 * math.pi)
    if beam is not None and config.beam_jitter > 0:
        out = _widen_beam(out, beam, pixel_arcsec, torch.rand(1, generator=generator).item() * config.beam_jitter)
    if beam is not None and config.noise_jitter > 0 and noise_rms > 0:
        white = torch.randn(out.shape, generator=generator).to(out)
        scale = (torch.rand(n, generator=generator) * config.noise_jitter * noise_rms).to(out)[:, None, None]
        sigma_product = math.sqrt(np.linalg.det(beam.covariance_pixels(pixel_arcsec)))
        out = out + scale * convolve_small_beam(white, beam, pixel_arcsec) * math.sqrt(4 * math.pi * sigma_product)
    return out


def convolve_small_beam(images: torch.Tensor, beam: Beam, pixel_arcsec: float) -> torch.Tensor:
    """:func:`~protolib.instrument.convolve_beam` of images ``(N, H, W)`` with a beam, in real space when its kernel is
    small.

    The same pixel-sampled kernel (:func:`~protolib.instrument.beam_kernel`) and zero padding, so the
    result equals ``convolve_beam``'s to float rounding (about 1e-6 of the peak): a separable kernel
    (a beam without a cross term, e.g. circular) as two products with banded ``(H, H)`` and ``(W, W)``
    matrices, another kernel of at most ``SMALL_KERNEL`` pixels a side as one 2-D convolution, and a
    larger one through ``convolve_beam``'s FFT. On 64 x 64 images and a beam of a few pixels the matrix
    products are 40 times faster than the FFT, whose padded size (74 px here) is awkward for it;
    augmentation convolves twice per training batch.
    """
    kernel = beam_kernel(beam, pixel_arcsec)
    side = kernel.shape[0]
    if side > SMALL_KERNEL or images.dim() != 3:
        return convolve_beam(images, beam, pixel_arcsec)
    u, s, vt = np.linalg.svd(kernel)
    if s[1] <= 1e-7 * s[0]:  # kernel = outer(along_rows, along_columns)
        along_rows, along_columns = u[:, 0] * math.sqrt(s[0]), vt[0] * math.sqrt(s[0])
        rows, columns = (
            _band_matrix(n, taps).to(images.device, images.dtype)
            for n, taps in zip(images.shape[-2:], (along_rows, along_columns))
        )
        return rows @ images @ columns.T  # (N, H, W)
    # flipped: conv2d correlates
    weights = torch.as_tensor(kernel[::-1, ::-1].copy(), dtype=images.dtype, device=images.device)[None, None]
    return F.conv2d(images[:, None], weights, padding=side // 2)[:, 0]


def _band_matrix(n: int, taps: np.ndarray) -> torch.Tensor:
    """``(n, n)`` matrix of the 1-D convolution with centred ``taps`` (odd length), zero outside the image."""
    offset = np.arange(n)[:, None] - np.arange(n)[None, :] + len(taps) // 2
    inside = (offset >= 0) & (offset < len(taps))
    return torch.as_tensor(np.where(inside, taps[np.clip(offset, 0, len(taps) - 1)], 0.0))


def _rotate(images: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate images ``(N, H, W)`` about their centre by ``angles`` ``(N,)`` [rad], bilinear, zero outside."""
    cos, sin = torch.cos(angles), torch.sin(angles)
    theta = torch.stack(
        [torch.stack([cos, -sin, torch.zeros_like(cos)], 1), torch.stack([sin, cos, torch.zeros_like(cos)], 1)], 1
    )
    grid = F.affine_grid(theta.to(images), (len(images), 1, *images.shape[-2:]), align_corners=False)
    return F.grid_sample(images[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]


def _widen_beam(images: torch.Tensor, beam: Beam, pixel_arcsec: float, fraction: float) -> torch.Tensor:
    """Smooth images to a beam ``1 + fraction`` times wider, as from an imperfect match to the bank's beam.

    Values stay in Jy per *bank* beam, as an observation put on the bank's grid is, so the total flux
    (the pixel sum over the bank's pixels per beam) is unchanged.
    """
    if fraction <= 0:
        return images
    scale = 1.0 + fraction
    extra_major = beam.major_arcsec * math.sqrt(scale**2 - 1.0)
    extra_minor = beam.minor_arcsec * math.sqrt(scale**2 - 1.0)
    if extra_minor * FWHM_TO_SIGMA / pixel_arcsec < 1e-3:
        return images
    kernel = Beam(extra_major, extra_minor, beam.position_angle_deg)
    return convolve_small_beam(images, kernel, pixel_arcsec)
