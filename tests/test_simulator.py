"""Physics checks a referee would make on the simulator."""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import image_moments, render_one

from protolib import physics, simulator
from protolib.instrument import Beam, Instrument, convolve_beam, pixel_solid_angle_sr
from protolib.parameters import Prior
from protolib.runtime import ProtolibInputError
from protolib.simulator import COMPILE_FROM_IMAGES, SimulatorConfig, envelope_mass, render, settle_compile


def test_face_on_disk_is_round(fine_config):
    image = render_one(0.0, 37.0, fine_config)
    axis_ratio, _ = image_moments(image)
    assert axis_ratio > 0.97


@pytest.mark.parametrize("position_angle", [0.0, 30.0, 90.0, 135.0])
def test_edge_on_disk_is_elongated_along_its_position_angle(fine_config, position_angle):
    image = render_one(85.0, position_angle, fine_config)
    axis_ratio, measured_pa = image_moments(image)
    assert axis_ratio < 0.35
    difference = abs((measured_pa - position_angle + 90.0) % 180.0 - 90.0)
    assert difference < 2.0


def test_east_is_to_the_left():
    """A disk at PA = 45 deg runs from north-east (upper left) to south-west (lower right)."""
    config = SimulatorConfig(image_size=32, field_of_view_au=600.0, envelope_samples=24, disk_samples=24)
    image = render_one(85.0, 45.0, config)
    upper_left = image[24, 8]  # north (high row), east (low column)
    upper_right = image[24, 24]
    assert upper_left > 10 * upper_right


def test_flux_rises_with_disk_mass_and_falls_with_distance_squared(fine_config):
    fluxes = [render_one(30.0, 0.0, fine_config, disk_mass=m).sum() for m in (1e-4, 1e-3, 1e-2, 1e-1)]
    assert np.all(np.diff(fluxes) > 0)
    # Optically thin at low mass: flux proportional to mass.
    assert fluxes[1] / fluxes[0] == pytest.approx(10.0, rel=0.05)
    near = render_one(30.0, 0.0, fine_config, distance_pc=140.0).sum()
    far = render_one(30.0, 0.0, fine_config, distance_pc=280.0).sum()
    assert near / far == pytest.approx(4.0, rel=1e-5)


def test_beam_convolution_conserves_total_flux(fine_config):
    image = torch.tensor(render_one(60.0, 20.0, fine_config, disk_radius=30.0))
    beam = Beam(0.4, 0.25, 30.0)
    pixel_arcsec = fine_config.pixel_size_au / 140.0
    smoothed = convolve_beam(image, beam, pixel_arcsec)
    assert smoothed.sum().item() == pytest.approx(image.sum().item(), rel=1e-4)
    assert smoothed.max() < image.max()
    # In Jy/beam, the sum times (pixel / beam solid angle) is the flux again.
    instrument = Instrument(
        distance_pc=140.0,
        beam_major_arcsec=0.4,
        beam_minor_arcsec=0.25,
        beam_position_angle_deg=30.0,
        noise_rms_jy_beam=0.0,
    )
    jy_beam = instrument.observe(image[None], fine_config.pixel_size_au, rng=None)[0]
    ratio = pixel_solid_angle_sr(fine_config.pixel_size_au, 140.0) / beam.solid_angle_sr
    assert (jy_beam.sum() * ratio).item() == pytest.approx(image.sum().item(), rel=1e-4)


def test_beam_is_elongated_along_its_position_angle():
    point = torch.zeros(65, 65)
    point[32, 32] = 1.0
    blurred = convolve_beam(point, Beam(1.0, 0.3, 60.0), pixel_arcsec=0.05).numpy()
    axis_ratio, pa = image_moments(blurred)
    assert axis_ratio == pytest.approx(0.3, rel=0.05)
    assert pa == pytest.approx(60.0, abs=1.0)


def test_noise_has_the_requested_rms():
    instrument = Instrument(noise_rms_jy_beam=2e-3, beam_major_arcsec=0.25, beam_minor_arcsec=0.25)
    blank = torch.zeros(16, 64, 64)
    noisy = instrument.observe(blank, pixel_size_au=5.0, rng=np.random.default_rng(1))
    assert noisy.std().item() == pytest.approx(2e-3, rel=0.1)


def test_optically_thick_edge_on_disk_shows_a_dark_lane():
    config = SimulatorConfig(image_size=128, field_of_view_au=200.0, envelope_samples=32, disk_samples=96)
    thick = render_one(90.0, 0.0, config, disk_mass=0.3, disk_radius=30.0, disk_scale_height=8.0, luminosity=10.0)
    thin = render_one(90.0, 0.0, config, disk_mass=1e-4, disk_radius=30.0, disk_scale_height=8.0, luminosity=10.0)
    # PA = 0: the disk runs north-south, its midplane along the central columns.
    for image, label in [(thick, "thick"), (thin, "thin")]:
        profile = image[60:68].mean(0)[44:84]  # across the midplane, near the star
        midplane = profile[19:21].mean()
        if label == "thick":
            assert midplane < 0.98 * profile.max()
        else:
            assert midplane == pytest.approx(profile.max(), rel=1e-6)


def _relative_l1(a, b):
    return np.abs(a - b).sum() / np.abs(b).sum()


@pytest.mark.parametrize(
    "inclination, overrides",
    [
        (0.0, dict(disk_scale_height=1.0, disk_mass=0.05)),  # a face-on disk ~0.3 au thick at 20 au
        (88.0, dict(disk_scale_height=1.0, disk_mass=0.05)),  # the same disk nearly edge-on
        (60.0, dict(accretion_rate=3e-5, disk_mass=0.02, disk_radius=30.0)),  # envelope + cavities
    ],
)
def test_image_converges_with_line_of_sight_sampling(inclination, overrides):
    def at(n_env, n_disk):
        config = SimulatorConfig(image_size=48, field_of_view_au=600.0, envelope_samples=n_env, disk_samples=n_disk)
        return render_one(inclination, 20.0, config, **overrides)

    reference = at(512, 512)
    errors = [_relative_l1(at(n, n), reference) for n in (16, 32, 64, 128)]
    assert errors[-1] < 0.01
    assert errors[-1] < errors[0]
    assert at(32, 24).sum() == pytest.approx(reference.sum(), rel=0.03)


def test_image_converges_with_pixel_refinement():
    """Pixel-averaged images (more rays per pixel) converge; flux is then independent of the grid."""

    def at(oversample):
        config = SimulatorConfig(
            image_size=32, field_of_view_au=600.0, envelope_samples=32, disk_samples=32, oversample=oversample
        )
        image = torch.tensor(render_one(70.0, 10.0, config, accretion_rate=1e-5, disk_radius=20.0))
        return convolve_beam(image, Beam(0.3, 0.3), config.pixel_size_au / 140.0).numpy()

    reference = at(8)
    errors = [_relative_l1(at(o), reference) for o in (1, 2, 4)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.01


def test_ulrich_streamline_solves_the_cubic():
    x = torch.logspace(-3, 3, 200, dtype=torch.float64)[:, None]
    mu = torch.linspace(-1, 1, 101, dtype=torch.float64)[None, :]
    mu0 = physics.ulrich_mu0(x, mu)
    residual = mu0**3 + mu0 * (x - 1.0) - mu.clamp(-1, 1).abs().clamp(min=1e-6).copysign(mu) * x
    assert residual.abs().max() < 1e-6 * x.max()
    assert torch.all(mu0.abs() >= mu.abs() - 1e-9)  # streamlines fall towards the midplane
    assert torch.all(torch.sign(mu0[:, 51:]) > 0) and torch.all(torch.sign(mu0[:, :50]) < 0)


def test_envelope_density_falls_as_r_to_minus_three_halves_far_out():
    kwargs = dict(
        infall_rate_msun_yr=torch.tensor(1e-5),
        stellar_mass_msun=torch.tensor(0.5),
        centrifugal_radius_au=torch.tensor(10.0),
        cavity_half_angle_deg=torch.tensor(0.0),
        outer_radius_au=1e5,
    )
    r = torch.tensor([2000.0, 4000.0], dtype=torch.float64)
    rho = physics.envelope_density(r, torch.tensor(0.5, dtype=torch.float64), **kwargs)
    assert (rho[1] / rho[0]).item() == pytest.approx(2**-1.5, rel=0.01)


def test_envelope_mass_matches_free_fall_integral():
    """With a tiny centrifugal radius and no cavity, M_env = Mdot / sqrt(2GM) * (2/3) (R_out^1.5 - R_in^1.5)."""
    config = SimulatorConfig(cavity_contrast=1.0)
    systems = {
        k: torch.tensor([v], dtype=torch.float64)
        for k, v in dict(stellar_mass=0.5, accretion_rate=1e-5, disk_radius=1e-3, cavity_angle=20.0).items()
    }
    numeric = envelope_mass(systems, config).item()
    mdot = 1e-5 * physics.MSUN_G / physics.YEAR_S
    r_out, r_in = config.envelope_outer_radius_au * physics.AU_CM, config.inner_radius_au * physics.AU_CM
    analytic = (
        mdot / math.sqrt(2 * physics.G_CGS * 0.5 * physics.MSUN_G) * (2 / 3) * (r_out**1.5 - r_in**1.5) / physics.MSUN_G
    )
    assert numeric == pytest.approx(analytic, rel=0.02)


def test_disk_density_integrates_to_the_disk_mass():
    radius = torch.logspace(-1, 4, 3000, dtype=torch.float64)
    scale_height = physics.disk_scale_height(radius, torch.tensor(5.0, dtype=torch.float64))
    height = torch.linspace(-8, 8, 801, dtype=torch.float64)[None, :] * scale_height[:, None]  # resolve H at every R
    rho = physics.disk_density(
        radius[:, None],
        height,
        disk_mass_msun=torch.tensor(0.05),
        disk_radius_au=torch.tensor(50.0),
        scale_height_100au=torch.tensor(5.0),
        inner_radius_au=0.0,
    )
    column = torch.trapezoid(rho, height * physics.AU_CM, dim=1)
    mass = torch.trapezoid(2 * math.pi * radius * physics.AU_CM * column, radius * physics.AU_CM) / physics.MSUN_G
    assert mass.item() == pytest.approx(0.05, rel=0.01)


def test_reference_values_of_temperature_opacity_and_accretion_luminosity():
    assert physics.dust_temperature(torch.tensor(100.0), torch.tensor(1.0)).item() == pytest.approx(38.0)
    assert physics.dust_opacity(230.0) == pytest.approx(0.023)
    assert physics.accretion_luminosity(1.0, 1e-5, 3.0) == pytest.approx(100.0, rel=0.1)
    # h nu / k = 11.04 K at 230 GHz: B_nu(11.04 K) = 2 h nu^3 / c^2 / (e - 1)
    b = physics.planck_intensity(torch.tensor(11.04, dtype=torch.float64), 230.0).item()
    assert b == pytest.approx(2 * physics.H_CGS * 230e9**3 / physics.C_CGS**2 / (math.e - 1), rel=1e-3)


def test_prior_couples_parameters_physically():
    draws = Prior().sample(4000, np.random.default_rng(0))
    assert draws["stellar_mass"].min() >= 0.05 and draws["stellar_mass"].max() <= 3.0
    assert draws["accretion_rate"].min() >= 1e-7 and draws["accretion_rate"].max() <= 1e-4
    assert np.all((draws["age"] >= 1e4) & (draws["age"] <= 1e6))
    log = {k: np.log10(v) for k, v in draws.items() if k != "cavity_angle"}
    # Luminosity grows with mass x accretion rate; age with mass / accretion rate.
    assert np.corrcoef(log["luminosity"], log["stellar_mass"] + log["accretion_rate"])[0, 1] > 0.8
    assert np.corrcoef(log["age"], log["stellar_mass"] - log["accretion_rate"])[0, 1] > 0.8
    assert np.allclose(draws["temperature"], draws["temperature_1lsun"] * draws["luminosity"] ** 0.2)


REFERENCE = Path(__file__).parent / "data" / "renderer_reference.npz"


COMPILED = pytest.param(
    "true",
    marks=pytest.mark.skipif(
        os.environ.get("PROTOLIB_TEST_COMPILE") != "1",
        reason=("compiling the renderer's kernels takes a minute cold: PROTOLIB_TEST_COMPILE=1 runs it"),
    ),
)


@pytest.mark.parametrize("size, field_of_view_au", [(64, 1000.0), (33, 400.0)])
@pytest.mark.parametrize("batch_elements", [250_000, 3_000])
@pytest.mark.parametrize("compile", ["false", COMPILED])
def test_renderer_agrees_with_the_renderer_before_issue_29(size, field_of_view_au, batch_elements, compile):
    """The faster renderer (each ray's physics serving its mirror image through the star, the disk sampled
    only where rays meet it) draws what the renderer of commit ae2c637 drew, for 20 systems with drawn
    physics (face-on, edge-on and 89.5 deg among them), an odd image size (its centre ray is its own
    mirror image) and batches that split an image's rays: total flux within 1e-4, the azimuthally
    averaged radial profile and every pixel within 1e-4 of the image's peak; with the eager kernels and
    with the compiled ones (``simulator.compile``)."""
    with np.load(REFERENCE, allow_pickle=False) as reference:
        params = {
            k.removeprefix("param_"): torch.as_tensor(reference[k]) for k in reference.files if k.startswith("param_")
        }
        angles = torch.as_tensor(reference["inclination"]), torch.as_tensor(reference["position_angle"])
        expected = reference[f"images_{size}"].astype(np.float64)
    config = SimulatorConfig(
        image_size=size, field_of_view_au=field_of_view_au, batch_elements=batch_elements, compile=compile
    )
    with torch.no_grad():
        images = render(params, *angles, config, 140.0).numpy().astype(np.float64)
    peak = expected.max(axis=(1, 2))
    np.testing.assert_allclose(images.sum(axis=(1, 2)), expected.sum(axis=(1, 2)), rtol=1e-4)
    y, x = np.indices((size, size)) - (size - 1) / 2.0
    ring = np.hypot(x, y).astype(int).ravel()

    def profile(image):
        return np.bincount(ring, weights=image.ravel()) / np.bincount(ring)

    for image, reference_image, image_peak in zip(images, expected, peak):
        assert np.abs(profile(image) - profile(reference_image)).max() < 1e-4 * image_peak
        assert np.abs(image - reference_image).max() < 1e-4 * image_peak


def test_the_compile_setting_is_settled_once_per_bank_and_never_stored():
    """``simulator.compile``: "auto" compiles from COMPILE_FROM_IMAGES images on a CPU only; "true" never on a GPU;
    the setting is how images are computed, not what they are, so a bank's stored settings leave it out."""
    auto = SimulatorConfig()
    assert settle_compile(auto, 64).compile == "false"
    assert settle_compile(auto, COMPILE_FROM_IMAGES).compile == "true"
    assert settle_compile(auto, COMPILE_FROM_IMAGES, "meta").compile == "false"
    assert settle_compile(SimulatorConfig(compile="true"), 8).compile == "true"
    assert settle_compile(SimulatorConfig(compile="false"), 10**7).compile == "false"
    assert "compile" not in SimulatorConfig(compile="true").to_dict()
    # YAML's booleans
    assert SimulatorConfig(compile=True).compile == "true" and SimulatorConfig(compile=False).compile == "false"
    with pytest.raises(ProtolibInputError, match="compile"):
        SimulatorConfig(compile="yes")


def test_the_renderer_falls_back_to_the_eager_kernels_where_compiling_fails(monkeypatch):
    """No compiler (or a platform torch.compile does not support): a warning, and the eager kernels' image."""

    def broken(function, **options):
        def fails(*args, **kwargs):
            raise RuntimeError("no C++ compiler")

        return fails

    params = {
        "stellar_mass": torch.tensor([0.5]),
        "accretion_rate": torch.tensor([1e-5]),
        "disk_radius": torch.tensor([50.0]),
        "disk_mass": torch.tensor([0.05]),
        "luminosity": torch.tensor([2.0]),
        "disk_scale_height": torch.tensor([5.0]),
        "cavity_angle": torch.tensor([20.0]),
    }
    angles = torch.tensor([60.0]), torch.tensor([30.0])
    config = SimulatorConfig(image_size=16)
    with torch.no_grad():
        eager = render(params, *angles, config, 140.0)
        monkeypatch.setattr(torch, "compile", broken)
        monkeypatch.setitem(simulator._KERNELS, "available", True)
        monkeypatch.setitem(simulator._KERNELS, "compiled", {})
        with pytest.warns(RuntimeWarning, match="eager kernels"):
            fallen_back = render(params, *angles, replace(config, compile="true"), 140.0)
        again = render(params, *angles, replace(config, compile="true"), 140.0)  # no second try, no second warning
    assert torch.equal(fallen_back, eager) and torch.equal(again, eager)


@pytest.mark.parametrize("size", [16, 26, 64])
def test_an_image_is_convolved_the_same_alone_as_in_a_batch(size):
    """Bit for bit, for both kinds of beam: a bank row transformed alone (a shortlist) must be the row
    transformed with the whole bank (MKL's batched inverse FFT differs in the last bit for some sizes)."""
    images = torch.from_numpy(np.random.default_rng(0).standard_normal((20, size, size)).astype(np.float32))
    for beam in (np.array([[6.03, -3.21], [-3.21, 9.74]]), Beam(0.5, 0.3, 30.0)):
        together = convolve_beam(images, beam, 0.1)
        alone = torch.stack([convolve_beam(images[i : i + 1], beam, 0.1)[0] for i in range(len(images))])
        assert torch.equal(together, alone)
