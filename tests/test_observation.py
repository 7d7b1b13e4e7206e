"""Observed FITS images: reading every common layout, preparing onto the bank grid, matching the bank to them."""

from __future__ import annotations

import math
import warnings

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS

from protolib.bank import Bank, simulate_bank
from protolib.cli import main
from protolib.instrument import Beam, Instrument, beam_noise, convolve_beam, effective_beam_covariance
from protolib.observation import (
    BankGrid,
    ResolutionMatch,
    prepare_observation,
    read_observation,
    read_prepared_observation,
    resample_to_grid,
    sky_grid_wcs,
    write_observation_fits,
)
from protolib.observation.fits import is_spike, parse_brightness_unit, source_peak
from protolib.plots.observation import plot_prepared_observation
from protolib.runtime import ProtolibInputError
from protolib.simulator import SimulatorConfig, render

torch.set_num_threads(2)
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*zero padding:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*no spectral axis:UserWarning"),
]

PHASE_CENTRE = SkyCoord(69.97458 * u.deg, 26.05261 * u.deg)
SOURCE = PHASE_CENTRE.spherical_offsets_by(0.7 * u.arcsec, -0.4 * u.arcsec)  # not at the reference pixel
OBS_BEAM = Beam(0.3, 0.3, 0.0)
# A bank grid like the tiny configuration's: 32 px of 31.25 au at 140 pc, 0.25" beam.
GRID = BankGrid(
    image_size=32, pixel_size_au=31.25, distance_pc=140.0, beam=Beam(0.25, 0.25, 0.0), noise_rms_jy_beam=0.0
)
TINY = SimulatorConfig(image_size=32, envelope_samples=24, disk_samples=16)

SOURCE_FLUX_JY = 0.05
SOURCE_FWHM_ARCSEC = (1.0, 0.5)  # an elongated source (as observed, beam included)
SOURCE_PA_DEG = 30.0


def gaussian_jy_beam(
    world: SkyCoord,
    centre: SkyCoord = SOURCE,
    flux_jy: float = SOURCE_FLUX_JY,
    fwhm_arcsec=SOURCE_FWHM_ARCSEC,
    pa_deg: float = SOURCE_PA_DEG,
    beam: Beam = OBS_BEAM,
) -> np.ndarray:
    """An elliptical Gaussian source evaluated at sky positions, in Jy/beam."""
    east, north = centre.spherical_offsets_to(world)
    east, north = east.to_value(u.arcsec), north.to_value(u.arcsec)
    pa = math.radians(pa_deg)
    along = east * math.sin(pa) + north * math.cos(pa)
    across = east * math.cos(pa) - north * math.sin(pa)
    s_major, s_minor = (f / (2 * math.sqrt(2 * math.log(2))) for f in fwhm_arcsec)
    per_arcsec2 = (
        flux_jy / (2 * math.pi * s_major * s_minor) * np.exp(-0.5 * ((along / s_major) ** 2 + (across / s_minor) ** 2))
    )
    beam_arcsec2 = beam.solid_angle_sr / (math.pi / 180 / 3600) ** 2
    return per_arcsec2 * beam_arcsec2


def write_fits(
    path,
    *,
    shape=(200, 200),
    pixel_arcsec=0.05,
    projection="SIN",
    axes="2",
    matrix="cdelt",
    rotation_deg=0.0,
    flip_ra=False,
    bunit="Jy/beam",
    beam: Beam | None = OBS_BEAM,
    blank_border=0,
    data_fn=gaussian_jy_beam,
):
    """Write a FITS image of the test source in one of the layouts real files come in."""
    ny, nx = shape
    header = fits.Header()
    header["CTYPE1"], header["CTYPE2"] = f"RA---{projection}", f"DEC--{projection}"
    header["CRVAL1"], header["CRVAL2"] = PHASE_CENTRE.ra.deg, PHASE_CENTRE.dec.deg
    header["CRPIX1"], header["CRPIX2"] = nx / 2 + 1, ny / 2 + 1
    header["CUNIT1"], header["CUNIT2"] = "deg", "deg"
    header["RADESYS"] = "ICRS"
    scale = pixel_arcsec / 3600
    sign = 1.0 if flip_ra else -1.0
    c, s = math.cos(math.radians(rotation_deg)), math.sin(math.radians(rotation_deg))
    rot = np.array([[c, -s], [s, c]])
    if matrix == "cd":
        cd = rot @ np.diag([sign * scale, scale])
        header["CD1_1"], header["CD1_2"], header["CD2_1"], header["CD2_2"] = cd[0, 0], cd[0, 1], cd[1, 0], cd[1, 1]
    else:
        header["CDELT1"], header["CDELT2"] = sign * scale, scale
        if matrix == "pc":
            header["PC1_1"], header["PC1_2"], header["PC2_1"], header["PC2_2"] = (
                rot[0, 0],
                rot[0, 1],
                rot[1, 0],
                rot[1, 1],
            )
    celestial = WCS(header)
    rows, cols = np.mgrid[0:ny, 0:nx]
    data = data_fn(celestial.pixel_to_world(cols, rows))
    if bunit.lower() == "mjy/beam":
        data = data * 1e3
    if bunit.lower() == "jy/pixel":
        data = data * (scale * 3600) ** 2 / (OBS_BEAM.solid_angle_sr / (math.pi / 180 / 3600) ** 2)
    if blank_border:
        data[:blank_border] = np.nan
        data[:, -blank_border:] = np.nan
    extra = {
        "3": [("VELO-LSR", 0.0, 1000.0, "m/s")],
        "4": [("FREQ", 2.3e11, 2e9, "Hz"), ("STOKES", 1.0, 1.0, "")],
        "4swapped": [("STOKES", 1.0, 1.0, ""), ("FREQ", 2.3e11, 2e9, "Hz")],
        "2": [],
    }[axes]
    for k, (ctype, crval, cdelt, cunit) in enumerate(extra, start=3):
        header[f"CTYPE{k}"], header[f"CRVAL{k}"], header[f"CDELT{k}"], header[f"CRPIX{k}"], header[f"CUNIT{k}"] = (
            ctype,
            crval,
            cdelt,
            1.0,
            cunit,
        )
        data = data[None]
    header["BUNIT"] = bunit
    if beam is not None:
        header["BMAJ"], header["BMIN"], header["BPA"] = (
            beam.major_arcsec / 3600,
            beam.minor_arcsec / 3600,
            beam.position_angle_deg,
        )
    header["OBJECT"] = "test source"
    fits.PrimaryHDU(data.astype(np.float32), header=header).writeto(path, overwrite=True)
    return path


def moments(image: np.ndarray):
    """Centroid (west, north) [pixels from the centre] and PA [deg east of north] of an image's second moments."""
    n_rows, n_cols = image.shape
    north = (np.arange(n_rows) - (n_rows - 1) / 2)[:, None] + 0 * image
    east = -(np.arange(n_cols) - (n_cols - 1) / 2)[None, :] + 0 * image
    w = np.clip(image, 0, None) / np.clip(image, 0, None).sum()
    me, mn = (w * east).sum(), (w * north).sum()
    cov = np.array(
        [
            [(w * (east - me) ** 2).sum(), (w * (east - me) * (north - mn)).sum()],
            [(w * (east - me) * (north - mn)).sum(), (w * (north - mn) ** 2).sum()],
        ]
    )
    values, vectors = np.linalg.eigh(cov)
    e, n = vectors[:, 1]
    return -me, mn, math.degrees(math.atan2(e, n)) % 180.0


@pytest.fixture(scope="module")
def tiny_bank(tmp_path_factory):
    path = tmp_path_factory.mktemp("bank") / "b.h5"
    simulate_bank(path, n_systems=3, n_projections=2, config=TINY, progress=False)
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The plain layout (2 axes, SIN, CDELT, Jy/beam) prepared onto the grid."""
    path = write_fits(tmp_path_factory.mktemp("ref") / "plain.fits")
    return prepare_observation(path, GRID, 140.0, noise_rms_jy_beam=1e-4)


# ---------------------------------------------------------------------------------------------
# Every layout real files come in gives the same prepared image.

LAYOUTS = {
    "casa-4-axes": dict(axes="4"),
    "stokes-before-freq": dict(axes="4swapped"),
    "gildas-3-axes": dict(axes="3"),
    "tan-cd-matrix": dict(projection="TAN", matrix="cd"),
    "arc-pc-matrix": dict(projection="ARC", matrix="pc"),
    "rotated-cd-25deg": dict(matrix="cd", rotation_deg=25.0),
    "ra-increasing-right": dict(flip_ra=True),
    "mjy-per-beam": dict(bunit="mJy/beam"),
    "jy-per-pixel": dict(bunit="Jy/pixel"),
    "not-square-nan-border": dict(shape=(150, 190), blank_border=12),
    "coarser-pixels": dict(shape=(40, 40), pixel_arcsec=0.2),
    "finer-pixels": dict(shape=(500, 500), pixel_arcsec=0.015),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_layout_gives_the_same_prepared_image(layout, tmp_path, reference):
    path = write_fits(tmp_path / f"{layout}.fits", **LAYOUTS[layout])
    prepared = prepare_observation(path, GRID, 140.0, noise_rms_jy_beam=1e-4)
    assert prepared.image_jy_beam.shape == (32, 32)
    # Same flux (resampling conserves it, coarser or finer pixels), same place, same orientation.
    assert prepared.total_flux_jy == pytest.approx(SOURCE_FLUX_JY, rel=0.01)
    west, north, pa = moments(prepared.image_jy_beam)
    assert abs(west) < 0.02 and abs(north) < 0.02  # centred on the peak, whatever the grid
    assert pa == pytest.approx(SOURCE_PA_DEG, abs=0.5)
    peak = reference.image_jy_beam.max()
    if layout not in ("coarser-pixels", "finer-pixels"):  # these differ by the smoothing of the pixels themselves
        assert np.abs(prepared.image_jy_beam - reference.image_jy_beam).max() < 0.01 * peak


def test_resampling_conserves_flux_exactly_for_coarser_and_finer_pixels():
    rng = np.random.default_rng(1)
    target = sky_grid_wcs(SOURCE, 48, 0.2)  # 9.6" across
    for pixel_arcsec, n in ((0.05, 60), (0.9, 6)):  # 4x finer and 4.5x coarser than the target's 0.2"
        source = sky_grid_wcs(SOURCE, n, pixel_arcsec)
        source.wcs.crpix = [n / 2 - 0.37, n / 2 + 0.21]  # not aligned with the target's pixel edges
        image = rng.uniform(0, 1, (n, n))
        out, coverage = resample_to_grid(image, source, target, (48, 48))
        assert (out * 0.2**2).sum() == pytest.approx((image * pixel_arcsec**2).sum(), rel=1e-6)
        assert (coverage * 0.2**2).sum() == pytest.approx(n**2 * pixel_arcsec**2, rel=1e-6)


def test_distance_scales_flux_by_distance_squared(tmp_path):
    path = write_fits(tmp_path / "far.fits", shape=(200, 200), pixel_arcsec=0.04)
    near = prepare_observation(path, GRID, 140.0, noise_rms_jy_beam=1e-4)
    far = prepare_observation(path, GRID, 280.0, noise_rms_jy_beam=1e-4)
    assert far.total_flux_jy == pytest.approx(4.0 * near.total_flux_jy, rel=0.01)
    assert far.noise_rms_jy_beam > near.noise_rms_jy_beam
    # At twice the distance the same arcsec source spans twice the au: second moments grow by four.
    assert (far.image_jy_beam > far.image_jy_beam.max() / 2).sum() > 2.5 * (
        near.image_jy_beam > near.image_jy_beam.max() / 2
    ).sum()


def test_centre_on_the_peak_by_default_or_on_a_given_coordinate(tmp_path):
    other = PHASE_CENTRE.spherical_offsets_by(-1.5 * u.arcsec, 1.0 * u.arcsec)

    def two_sources(world):
        return gaussian_jy_beam(world) + 0.5 * gaussian_jy_beam(world, centre=other, fwhm_arcsec=(0.4, 0.4))

    path = write_fits(tmp_path / "two.fits", data_fn=two_sources)
    with pytest.warns(UserWarning, match=r"2 compact sources .* 2\.6\" .*inside the bank's field"):
        # the compact source has the brighter peak
        bright = prepare_observation(path, GRID, 140.0, noise_rms_jy_beam=1e-4)
    with pytest.warns(UserWarning, match="2 compact sources"):
        faint = prepare_observation(path, GRID, 140.0, centre=SOURCE.to_string("hmsdms"), noise_rms_jy_beam=1e-4)
    assert bright.centre.separation(other).arcsec < 0.01
    assert faint.centre.separation(SOURCE).arcsec < 1e-3
    for prepared in (bright, faint):  # the chosen source sits at the middle of the prepared image
        middle = prepared.image_jy_beam[15:17, 15:17].max()
        assert middle == prepared.image_jy_beam[11:21, 11:21].max()


def test_the_map_as_read_takes_its_colour_scale_from_the_part_shown_not_a_brighter_source_beyond(tmp_path):
    beyond = PHASE_CENTRE.spherical_offsets_by(-4.8 * u.arcsec, 0.0 * u.arcsec)  # 5.5" (770 au) east of the source

    def two_sources(world):
        return gaussian_jy_beam(world) + 0.5 * gaussian_jy_beam(world, centre=beyond, fwhm_arcsec=(0.4, 0.4))

    path = write_fits(tmp_path / "two.fits", data_fn=two_sources)
    with pytest.warns(UserWarning, match="2 compact sources"):
        prepared = prepare_observation(path, GRID, 140.0, centre=SOURCE.to_string("hmsdms"), noise_rms_jy_beam=1e-4)
    fig = plot_prepared_observation(prepared)
    shown_max_mjy = fig.axes[0].images[0].norm.vmax
    map_max_mjy = 1e3 * np.nanmax(prepared.original.image_jy_beam)  # the source beyond, out of the panel
    assert shown_max_mjy < 0.8 * map_max_mjy
    assert shown_max_mjy == pytest.approx(1e3 * float(two_sources(SOURCE)), rel=0.1)  # the source's own peak
    matplotlib.pyplot.close(fig)


@pytest.mark.parametrize(
    "bunit, kind, to_jy",
    [
        ("Jy/beam", "beam", 1.0),
        ("JY/BEAM", "beam", 1.0),
        ("mJy/beam", "beam", 1e-3),
        ("MJy/beam", "beam", 1e6),
        ("Jy beam-1", "beam", 1.0),
        ("uJy/beam", "beam", 1e-6),
        ("Jy/pixel", "pixel", 1.0),
        ("JY/PIXEL", "pixel", 1.0),
    ],
)
def test_brightness_units_are_read_case_sensitively(bunit, kind, to_jy):
    """MJy/beam is mega-jansky (it was read as milli); CASA's capitals are read where they are not ambiguous."""
    assert parse_brightness_unit(bunit, "map.fits") == (kind, pytest.approx(to_jy))


@pytest.mark.parametrize("bunit", ["MJY/BEAM", "mjy/beam", "K", "Jy", "MJy/sr", "Jy/beam/beam"])
def test_brightness_units_that_are_not_flux_per_beam_or_pixel_or_are_ambiguous_are_refused(bunit):
    with pytest.raises(ProtolibInputError, match=r"map\.fits: BUNIT = .* (is ambiguous|is not a unit protolib reads)"):
        parse_brightness_unit(bunit, "map.fits")


def test_a_single_hot_pixel_is_passed_over_when_centring_but_an_extended_peak_is_not(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.normal(0.0, 1.0, (64, 64))
    rows, cols = np.mgrid[0:64, 0:64]
    image += 50.0 * np.exp(-4 * math.log(2) * ((rows - 40) ** 2 + (cols - 30) ** 2) / 3.0**2)  # a source, 3 pixels FWHM
    image[5, 50] = 5000.0
    row, col, spikes = source_peak(image, 3.0)
    assert (row, col) == (40, 30) and spikes == [(5, 50)]
    assert not is_spike(image, 40, 30, 3.0) and is_spike(image, 5, 50, 3.0)
    assert not is_spike(image, 5, 50, 1.2)  # an undersampled beam cannot tell a point source from a spike


def test_sharper_observation_is_smoothed_to_a_beam_the_bank_can_match(tmp_path):
    sharp = Beam(0.12, 0.08, 60.0)
    path = write_fits(tmp_path / "sharp.fits", beam=sharp, data_fn=lambda w: gaussian_jy_beam(w, beam=sharp))
    prepared = prepare_observation(path, GRID, 140.0, noise_rms_jy_beam=1e-5)
    assert prepared.smoothed
    # Contains the beam the bank's images really have (pixel sampling included).
    pixel_arcsec = GRID.pixel_size_au / GRID.distance_pc
    bank_beam = Beam.from_covariance_pixels(effective_beam_covariance(GRID.beam, pixel_arcsec), pixel_arcsec)
    assert prepared.beam.minor_arcsec >= bank_beam.minor_arcsec - 1e-6
    assert prepared.total_flux_jy == pytest.approx(SOURCE_FLUX_JY, rel=0.01)
    transform = prepared.transform()  # would raise if the bank had to be sharpened
    assert np.all(np.linalg.eigvalsh(transform.kernel_covariance) >= -1e-12)


# ---------------------------------------------------------------------------------------------
# Noise and the bank-to-observation transform.


def test_noise_estimate_and_matched_bank_noise_agree_with_the_prepared_image(tmp_path):
    rng = np.random.default_rng(3)
    rms = 2e-4
    noise = rms * beam_noise((300, 300), OBS_BEAM, 0.04, rng).numpy()
    path = write_fits(
        tmp_path / "noise.fits", shape=(300, 300), pixel_arcsec=0.04, data_fn=lambda w: gaussian_jy_beam(w) + noise
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_observation(path, GRID, 180.0)
    assert prepared.observed_noise_rms_jy_beam == pytest.approx(rms, rel=0.1)
    # The noise in the prepared image, measured away from the source, is what the header says ...
    ring = np.hypot(*np.mgrid[-15.5:16.5, -15.5:16.5]) > 12
    assert prepared.image_jy_beam[ring].std() == pytest.approx(prepared.noise_rms_jy_beam, rel=0.2)
    # ... and blank bank images matched to it get the same noise.
    matched = prepared.transform()(np.zeros((16, 32, 32), np.float32), np.random.default_rng(0))
    assert matched.std() == pytest.approx(prepared.noise_rms_jy_beam, rel=0.1)


def test_transform_turns_bank_beam_into_the_target_beam():
    pixel_arcsec, pixel_au = 0.05, 7.0  # well-sampled beams
    bank = Instrument(distance_pc=140, beam_major_arcsec=0.25, beam_minor_arcsec=0.25, noise_rms_jy_beam=0)
    target = Instrument(
        distance_pc=140, beam_major_arcsec=0.45, beam_minor_arcsec=0.3, beam_position_angle_deg=30, noise_rms_jy_beam=0
    )
    point = torch.zeros((1, 64, 64))
    point[0, 32, 30] = 1.0  # 1 Jy
    matched = ResolutionMatch(target.beam, pixel_arcsec, bank_beam=bank.beam)(bank.observe(point, pixel_au, None))
    direct = target.observe(point, pixel_au, None)
    assert torch.allclose(matched, direct, atol=0.005 * float(direct.max()))  # same beam, same Jy/beam
    assert moments(matched[0].numpy())[2] == pytest.approx(30.0, abs=0.5)
    # A bank without a beam (images in Jy/pixel, e.g. imported thesis snapshots) gets the whole target beam.
    from_clean = ResolutionMatch(target.beam, pixel_arcsec, bank_beam=None)(point)
    assert torch.allclose(from_clean, direct, atol=0.005 * float(direct.max()))
    with pytest.raises(ProtolibInputError, match="cannot be sharpened"):
        ResolutionMatch(Beam(0.2, 0.1, 0.0), pixel_arcsec, bank_beam=bank.beam)


def test_one_convolution_takes_a_beam_or_a_covariance():
    images = torch.as_tensor(np.random.default_rng(0).standard_normal((2, 40, 36)))
    # A covariance is a Fourier-space Gaussian: its separable path (two matrix products) is the 2-D FFT's.
    separable = convolve_beam(images, np.diag([2.0, 5.0]))
    rotated = convolve_beam(images, np.array([[2.0, 1e-7], [1e-7, 5.0]]))
    assert torch.allclose(separable, rotated, atol=1e-6)
    # Covariances add exactly (for a source away from the edges), and a zero one changes nothing.
    point = torch.zeros((64, 64), dtype=torch.float64)
    point[30, 33] = 1.0
    twice = convolve_beam(
        convolve_beam(point, np.array([[3.0, 1.0], [1.0, 2.0]])), np.array([[1.0, -0.5], [-0.5, 2.0]])
    )
    assert torch.allclose(twice, convolve_beam(point, np.array([[4.0, 0.5], [0.5, 4.0]])), atol=1e-6)  # peak 0.04
    assert convolve_beam(images, np.zeros((2, 2))) is images
    # A beam is the pixel-sampled restoring beam, whose effective Gaussian is a well-sampled beam's covariance.
    beam = Beam(0.4, 0.25, 30.0)
    assert np.allclose(effective_beam_covariance(beam, 0.05), beam.covariance_pixels(0.05), rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# Round trip through a synthetic ALMA-style observation.

SYSTEM = dict(
    stellar_mass=0.5,
    accretion_rate=3e-6,
    disk_radius=80.0,
    disk_mass=0.03,
    luminosity=3.0,
    disk_scale_height=6.0,
    cavity_angle=20.0,
)


# The default configuration's bank grid (64 px of 15.6 au): the tiny bank's 31 au pixels barely sample
# the beam, so pixel-level comparisons there measure pixelisation rather than the preparation.
DEFAULT_GRID = BankGrid(
    image_size=64, pixel_size_au=15.625, distance_pc=140.0, beam=Beam(0.25, 0.25, 0.0), noise_rms_jy_beam=1e-4
)


def test_synthetic_observation_round_trip_recovers_the_clean_model(tmp_path):
    distance_pc, noise = 180.0, 1e-4
    path = write_observation_fits(
        tmp_path / "synthetic.fits",
        SYSTEM,
        inclination_deg=70.0,
        position_angle_deg=30.0,
        distance_pc=distance_pc,
        pixel_arcsec=0.05,
        image_size=140,
        beam=Beam(0.35, 0.3, 20.0),
        noise_rms_jy_beam=noise,
        seed=2,
        source_offset_arcsec=(0.6, -0.4),
        config=TINY,
    )
    header = fits.getheader(path)
    assert header["NAXIS"] == 4 and header["CTYPE1"] == "RA---SIN" and header["CTYPE3"] == "FREQ"
    assert header["CTYPE4"] == "STOKES" and header["BUNIT"] == "Jy/beam" and header["RESTFRQ"] == 230e9
    observation = read_observation(path)
    assert observation.true_parameters["disk_radius"] == pytest.approx(80.0)
    assert observation.true_parameters["position_angle"] == 30.0

    prepared = prepare_observation(observation, DEFAULT_GRID, distance_pc)
    assert prepared.observed_noise_rms_jy_beam == pytest.approx(noise, rel=0.15)
    true_centre = SkyCoord(
        observation.true_parameters["source_ra"] * u.deg, observation.true_parameters["source_dec"] * u.deg
    )
    assert prepared.centre.separation(true_centre).arcsec < 0.01

    # The clean model stored in the file, put on the bank grid, moved to the bank's distance, seen
    # through the observed beam, in Jy per prepared beam: the prepared image must be it plus noise.
    grid = prepared.grid
    model_jy_pixel = fits.getdata(path, "MODEL").astype(np.float64)
    on_grid, _ = resample_to_grid(
        model_jy_pixel,
        WCS(fits.getheader(path, "MODEL")),
        sky_grid_wcs(true_centre, grid.image_size, grid.pixel_size_au / distance_pc),
        (64, 64),
    )
    on_grid *= (grid.pixel_size_au / distance_pc / 0.05) ** 2 * prepared.flux_scale  # Jy/pixel at the bank's distance
    beam_pixels = prepared.beam.solid_angle_sr / (grid.pixel_arcsec * math.pi / 180 / 3600) ** 2
    observed_beam = prepared.observed_beam.covariance_pixels(grid.pixel_size_au / distance_pc)
    model = convolve_beam(torch.as_tensor(on_grid), observed_beam).numpy() * beam_pixels
    residual = (prepared.image_jy_beam - model)[prepared.coverage == 1]
    assert model.max() > 300 * prepared.noise_rms_jy_beam
    assert residual.std() < 1.3 * prepared.noise_rms_jy_beam
    assert np.abs(residual).max() < 0.015 * model.max()  # the unresolved disk peak: pixelisation, ~1%

    # The bank's own rendering of the system agrees to the simulator's accuracy (a few per cent).
    fine = SimulatorConfig(**{**TINY.to_dict(), "image_size": 64, "oversample": 4})
    tensors = {k: torch.tensor([v]) for k, v in SYSTEM.items()}
    clean = render(tensors, torch.tensor([70.0]), torch.tensor([30.0]), fine, grid.distance_pc)[0].double()
    bank_model = (
        convolve_beam(clean, observed_beam + np.eye(2) * (0.05 / (grid.pixel_size_au / distance_pc)) ** 2 / 12).numpy()
        * beam_pixels
    )
    assert np.abs(prepared.image_jy_beam - bank_model).max() < 0.05 * bank_model.max()
    assert prepared.total_flux_jy == pytest.approx(bank_model.sum() / beam_pixels, rel=0.02)


def test_a_second_image_is_warned_about_but_not_the_synthetic_files_own_model(tmp_path):
    path = write_observation_fits(
        tmp_path / "synthetic.fits",
        SYSTEM,
        inclination_deg=40.0,
        position_angle_deg=0.0,
        distance_pc=140.0,
        pixel_arcsec=0.05,
        image_size=64,
        beam=Beam(0.3, 0.3, 0.0),
        noise_rms_jy_beam=1e-4,
        seed=0,
        config=TINY,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the MODEL extension protolib writes beside the image is not a second image
        read_observation(path)
    with fits.open(path) as hdul:
        hdul.append(fits.ImageHDU(hdul[0].data[0, 0], name="RESIDUAL"))
        hdul.writeto(tmp_path / "two.fits")
    with pytest.warns(UserWarning, match="holds 2 images; using the first"):
        read_observation(tmp_path / "two.fits")


# ---------------------------------------------------------------------------------------------
# Small fields, missing beams, bad input.


def test_small_field_is_padded_with_a_warning_and_too_small_refused(tmp_path):
    path = write_fits(tmp_path / "small.fits", shape=(110, 110), pixel_arcsec=0.05)  # 5.5" = 770 au of 1000
    with pytest.warns(UserWarning, match=r"covers 5\d\.\d% .*4\d\.\d% of the prepared image is zero padding"):
        prepared = prepare_observation(path, GRID, 140.0, noise_rms_jy_beam=1e-4)
    assert prepared.padded_fraction == pytest.approx(1 - (770 / 1000) ** 2, abs=0.03)
    assert prepared.coverage[16, 16] == 1.0 and prepared.coverage[0, 0] == 0.0
    with pytest.raises(ProtolibInputError, match=r"small.fits: the observation covers only 3\d% .*at least 50%"):
        prepare_observation(path, GRID, 110.0, noise_rms_jy_beam=1e-4)


def test_missing_beam_is_an_error_unless_given_then_a_warning(tmp_path):
    path = write_fits(tmp_path / "nobeam.fits", beam=None)
    with pytest.raises(ProtolibInputError, match=r"nobeam.fits: the header has no beam .*--beam"):
        read_observation(path)
    with pytest.warns(UserWarning, match="no beam"):
        observation = read_observation(path, beam=OBS_BEAM)
    assert observation.beam == OBS_BEAM


def _bad_files(tmp_path):
    text = tmp_path / "notes.fits"
    text.write_text("this is not a FITS file\n")
    table = tmp_path / "table.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns([fits.Column("x", "E", array=np.ones(3))])]).writeto(
        table
    )
    linear = tmp_path / "linear.fits"
    header = fits.Header({"CTYPE1": "LINEAR", "CTYPE2": "LINEAR", "BUNIT": "Jy/beam", "BMAJ": 1e-4, "BMIN": 1e-4})
    fits.PrimaryHDU(np.ones((8, 8), np.float32), header=header).writeto(linear)
    blank = write_fits(tmp_path / "blank.fits", data_fn=lambda w: np.full(w.shape, np.nan))
    cube = tmp_path / "cube.fits"
    with fits.open(write_fits(tmp_path / "plane.fits", axes="3")) as hdul:
        fits.PrimaryHDU(np.repeat(hdul[0].data, 5, axis=0), header=hdul[0].header).writeto(cube)
    kelvin = write_fits(tmp_path / "kelvin.fits", bunit="K")
    return {
        "notes.fits: not a FITS file": (text, 140.0),
        "table.fits: no image data": (table, 140.0),
        "linear.fits: no celestial WCS": (linear, 140.0),
        "blank.fits: every pixel is NaN": (blank, 140.0),
        "cube.fits: the image has 5 planes": (cube, 140.0),
        "kelvin.fits: BUNIT = 'K'": (kelvin, 140.0),
        "plane.fits: the distance to the source is missing": (tmp_path / "plane.fits", None),
        "plane.fits: the distance must be a positive": (tmp_path / "plane.fits", 0.0),
        "plane.fits: the beam .* is larger than the bank's field": (tmp_path / "plane.fits", 4000.0),
        "missing.fits: no such file": (tmp_path / "missing.fits", 140.0),
    }


def test_every_bad_input_gets_one_clear_error_naming_the_file(tmp_path):
    for message, (path, distance) in _bad_files(tmp_path).items():
        with pytest.raises(ProtolibInputError, match=message):
            prepare_observation(path, GRID, distance)
    with pytest.raises(ProtolibInputError, match="plane.fits: the centre .* lies outside the image"):
        prepare_observation(tmp_path / "plane.fits", GRID, 140.0, centre="05:00:00 +20:00:00")
    with pytest.raises(ProtolibInputError, match="plane.fits: cannot read the centre"):
        prepare_observation(tmp_path / "plane.fits", GRID, 140.0, centre="north of the star")


# ---------------------------------------------------------------------------------------------
# Files and the command line.


def test_prepared_file_keeps_what_the_transform_needs(tmp_path, reference):
    reference.write_fits(tmp_path / "prepared.fits")
    header = fits.getheader(tmp_path / "prepared.fits")
    assert header["BUNIT"] == "Jy/beam" and header["CDELT1"] < 0 and header["PROTOLIB DIST_OBS"] == 140.0
    again = read_prepared_observation(tmp_path / "prepared.fits")
    np.testing.assert_array_equal(again.image_jy_beam, reference.image_jy_beam)
    images = np.random.default_rng(0).uniform(0, 1e-3, (2, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(again.transform()(images), reference.transform()(images), rtol=1e-5, atol=1e-9)
    fig = plot_prepared_observation(reference)
    assert len(fig.axes) >= 2 and any("au" in t.get_text() for t in fig.axes[1].texts)


def test_cli_observe_writes_the_prepared_image_and_figure(tmp_path, tiny_bank, capsys):
    obs = tmp_path / "obs.fits"
    assert (
        main(
            [
                "simulate-observation",
                "--out",
                str(obs),
                "--size",
                "96",
                "--pixel",
                "0.08",
                "--distance",
                "146",
                "--from-bank",
                str(tiny_bank),
                "--system",
                "1",
                "--offset",
                "0.5",
                "0.5",
            ]
        )
        == 0
    )
    with Bank(tiny_bank) as bank:
        assert read_observation(obs).true_parameters["disk_radius"] == pytest.approx(bank.parameters["disk_radius"][1])
    out = tmp_path / "prepared.fits"
    assert (
        main(
            [
                "observe",
                str(obs),
                "--distance",
                "146",
                "--bank",
                str(tiny_bank),
                "--out",
                str(out),
                "--plot",
                str(tmp_path / "prepared.png"),
            ]
        )
        == 0
    )
    assert fits.getdata(out).shape == (32, 32) and (tmp_path / "prepared.png").stat().st_size > 10_000
    assert "Wrote" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["observe", "{tmp}/nothing.fits", "--distance", "140", "--bank", "{bank}", "--out", "{tmp}/p.fits"],
            "nothing.fits: no such file",
        ),
        (
            ["observe", "{tmp}/notes.fits", "--distance", "140", "--bank", "{bank}", "--out", "{tmp}/p.fits"],
            "notes.fits: not a FITS file",
        ),
        (
            ["observe", "{tmp}/good.fits", "--bank", "{bank}", "--out", "{tmp}/p.fits"],
            "good.fits: the distance to the source is missing",
        ),
        (
            ["observe", "{tmp}/good.fits", "--distance", "-3", "--bank", "{bank}", "--out", "{tmp}/p.fits"],
            "must be a positive",
        ),
        (
            ["observe", "{tmp}/good.fits", "--distance", "140", "--bank", "{tmp}/nobank.h5", "--out", "{tmp}/p.fits"],
            "nobank.h5 does not exist",
        ),
    ],
)
def test_cli_user_mistakes_exit_2_with_one_line(args, message, tmp_path, tiny_bank, capsys):
    (tmp_path / "notes.fits").write_text("not FITS")
    write_fits(tmp_path / "good.fits")
    argv = [a.format(tmp=tmp_path, bank=tiny_bank) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "p.fits").exists()
