"""Network inputs: brightness stretches, the log total flux, and augmentation that respects the physics."""

import math

import pytest
import torch

from protolib.images import AugmentationConfig, ImagePreprocessing, augment_images, stretch_images
from protolib.instrument import Beam


def disk_image(size=32, peak=1.0):
    y, x = torch.meshgrid(torch.arange(size) - size / 2 + 0.5, torch.arange(size) - size / 2 + 0.5, indexing="ij")
    return (peak * torch.exp(-(x**2 + (2 * y) ** 2) / 20.0) + 0.01 * peak * torch.exp(-(x**2 + y**2) / 200.0))[None]


def test_minmax_stretch_spans_zero_to_one_and_asinh_lifts_faint_envelopes():
    image = disk_image(peak=3e-3)
    minmax = stretch_images(image, "minmax")
    asinh = stretch_images(image, "asinh", 0.02)
    assert minmax.shape == (1, 1, 32, 32)
    assert minmax.min().item() == pytest.approx(0.0) and minmax.max().item() == pytest.approx(1.0)
    corner = (0, 0, 2, 16)  # faint envelope, far from the disk
    assert asinh[corner].item() > 3 * minmax[corner].item()


def test_log_flux_keeps_brightness_and_scales_to_the_reference_distance():
    prep = ImagePreprocessing(pixels_per_beam=1.0, distance_pc=140.0, reference_distance_pc=140.0)
    image = disk_image()
    assert (prep.log_flux(4 * image) - prep.log_flux(image)).item() == pytest.approx(math.log10(4), abs=1e-5)
    far = ImagePreprocessing(pixels_per_beam=1.0, distance_pc=280.0, reference_distance_pc=140.0)
    assert (far.log_flux(image) - prep.log_flux(image)).item() == pytest.approx(math.log10(4), abs=1e-5)
    pixels, flux = prep.fit(torch.cat([image, 10 * image]).numpy())(torch.cat([image, 10 * image]))
    assert torch.allclose(pixels[0], pixels[1], atol=1e-6)  # same shape after stretching...
    assert flux[1, 0] > flux[0, 0]  # ...but the brighter one says so


def test_augmentation_keeps_total_flux_and_is_reproducible():
    images = torch.cat([disk_image(peak=1.0), disk_image(peak=2.0)])
    beam = Beam(0.25, 0.25)
    config = AugmentationConfig(rotate=True, flip=True, beam_jitter=0.3, noise_jitter=0.0)
    a = augment_images(images, config, torch.Generator().manual_seed(1), beam=beam, pixel_arcsec=0.05)
    b = augment_images(images, config, torch.Generator().manual_seed(1), beam=beam, pixel_arcsec=0.05)
    assert torch.equal(a, b)
    assert torch.allclose(a.sum((-2, -1)), images.sum((-2, -1)), rtol=0.03)
    assert not torch.allclose(a, images)


def test_flips_and_quarter_turns_are_exact_and_noise_jitter_adds_noise():
    image = disk_image()
    turned = augment_images(
        image,
        AugmentationConfig(rotate=False, flip=True, beam_jitter=0, noise_jitter=0),
        torch.Generator().manual_seed(0),
    )
    assert sorted(turned.flatten().tolist()) == pytest.approx(sorted(image.flatten().tolist()))
    noisy = augment_images(
        image,
        AugmentationConfig(rotate=False, flip=False, beam_jitter=0, noise_jitter=1.0),
        torch.Generator().manual_seed(0),
        beam=Beam(0.25, 0.25),
        pixel_arcsec=0.05,
        noise_rms=0.1,
    )
    assert 0 < (noisy - image).std().item() < 0.2


@pytest.mark.parametrize("beam", [Beam(0.25, 0.25), Beam(0.4, 0.2, 0.0), Beam(0.4, 0.2, 30.0), Beam(3.0, 2.0, 10.0)])
def test_augmentation_convolves_as_the_instrument_does(beam):
    """The fast real-space beam of augmentation (separable, 2-D or FFT by size) gives the instrument's convolution."""
    from protolib.images import convolve_small_beam
    from protolib.instrument import convolve_beam

    images = torch.randn(5, 40, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = convolve_beam(images, beam, 0.11)
    assert torch.allclose(convolve_small_beam(images, beam, 0.11), expected, atol=1e-12 * expected.abs().max().item())
