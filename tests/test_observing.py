"""The observation's own uncertainties (distance, flux calibration, recoverable scale) carried into the intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from protolib.matching import Matches
from protolib.matching.observing import (
    MAX_SCALE_RANGE_BEAMS,
    NO_FILTER_SHARE,
    default_flux_calibration,
    observing_uncertainty,
    pooled_matches,
    widening_by_source,
)
from protolib.runtime import ProtolibInputError


def test_draws_cover_each_setting_evenly_and_repeat_with_their_seed():
    uncertainty = observing_uncertainty(
        300.0,
        distance_error_pc=30.0,
        flux_calibration=0.1,
        beam_major_arcsec=1.0,
        max_scale_known=False,
        n_draws=20,
        seed=4,
    )
    draws = uncertainty.draws()
    assert draws == uncertainty.draws() and len(draws) == 20
    assert uncertainty.sources == ["distance", "flux_calibration", "recoverable_scale"]
    distance = np.array([d.distance_pc for d in draws])
    assert distance.mean() == pytest.approx(300, abs=3) and distance.std() == pytest.approx(30, rel=0.15)
    assert np.std(np.log([d.flux_factor for d in draws])) == pytest.approx(math.log(1.1), rel=0.15)
    scales = np.array([d.max_scale_arcsec for d in draws])
    assert np.sum(scales == 0) == NO_FILTER_SHARE * 20  # unfiltered draws (a model, single-dish data)
    low, high = np.log(MAX_SCALE_RANGE_BEAMS)
    kept = int(20 * (1 - NO_FILTER_SHARE))
    # Latin hypercube: one in each stratum
    strata = np.floor((np.log(scales[scales > 0]) - low) / (high - low) * kept).astype(int)
    assert sorted(strata) == list(range(kept))
    z = uncertainty.standardised(draws)[:, 2]
    assert z.min() >= -1 and z.max() <= 1 and np.all(z[scales == 0] > z[scales > 0].max())
    assert (
        draws != observing_uncertainty(300.0, distance_error_pc=30.0, flux_calibration=0.1, n_draws=20, seed=5).draws()
    )


def test_a_known_recoverable_scale_and_exact_settings_are_not_drawn():
    known = observing_uncertainty(
        140.0, distance_error_pc=10.0, flux_calibration=0.0, beam_major_arcsec=0.3, max_scale_known=True
    )
    assert known.sources == ["distance"] and all(
        d.max_scale_arcsec is None and d.flux_factor == 1.0 for d in known.draws()
    )
    assert observing_uncertainty(140.0, flux_calibration=0.0).sources == []
    assert observing_uncertainty(140.0, distance_error_pc=10.0, n_draws=0).draws() == []


@pytest.mark.parametrize("frequency, error", [(100.0, 0.05), (230.0, 0.10), (345.0, 0.10), (690.0, 0.20), (None, 0.10)])
def test_the_flux_calibration_error_defaults_to_the_bands_nominal_accuracy(frequency, error):
    assert default_flux_calibration(frequency) == error
    uncertainty = observing_uncertainty(140.0, frequency_ghz=frequency)
    assert uncertainty.flux_calibration == error and uncertainty.flux_calibration_source.startswith("nominal")


@pytest.mark.parametrize(
    "options, said",
    [
        ({"distance_error_pc": -1.0}, "distance error"),
        ({"distance_error_pc": 80.0}, "half the distance"),
        ({"distance_error_pc": float("nan")}, "distance error"),
        ({"flux_calibration": 0.8}, "flux-calibration"),
        ({"n_draws": -2}, "observing draws"),
    ],
)
def test_absurd_uncertainties_are_refused_in_one_line(options, said):
    with pytest.raises(ProtolibInputError, match=said) as refused:
        observing_uncertainty(140.0, source="map.fits", **options)
    assert "map.fits" in str(refused.value) and "\n" not in str(refused.value)


def test_pooled_matches_give_every_draw_the_same_weight():
    draws = [Matches(np.linspace(1, 0.9, n), np.arange(n), np.zeros(n, int)) for n in (10, 4, 6)]
    pooled, weights = pooled_matches(draws)
    assert len(pooled) == 20 and weights.sum() == pytest.approx(1.0)
    assert [weights[:10].sum(), weights[10:14].sum(), weights[14:].sum()] == pytest.approx([1 / 3] * 3)


def test_the_widening_says_which_setting_moved_a_parameter_and_by_how_much():
    uncertainty = observing_uncertainty(300.0, distance_error_pc=30.0, flux_calibration=0.1, n_draws=16, seed=1)
    draws = uncertainty.draws()
    rng = np.random.default_rng(0)
    # the disk mass's median moves by 0.2 dex per sigma of distance, and by nothing with the flux scale
    samples = [{"disk_mass": 10 ** (-2 + 0.2 * (d.distance_pc - 300) / 30 + 0.1 * rng.normal(size=200))} for d in draws]
    nominal = {"disk_mass": 10 ** (-2 + 0.1 * rng.normal(size=200))}
    pooled = {"disk_mass": np.concatenate([s["disk_mass"] for s in samples])}
    result = widening_by_source(
        uncertainty, draws, samples, nominal, pooled, np.full(len(pooled["disk_mass"]), 1.0), ["disk_mass"]
    )["disk_mass"]
    assert result["unit"] == "dex"
    assert result["by_source"]["distance"]["shift"] == pytest.approx(0.4, abs=0.03)
    assert abs(result["by_source"]["flux_calibration"]["shift"]) < 0.03
    assert (
        result["by_source"]["distance"]["widening"] > 1.5 > 1.05 > result["by_source"]["flux_calibration"]["widening"]
    )
    assert result["widening"] > 1.5  # the pooled 68% width against the nominal one, measured


def test_the_fit_rescales_a_match_within_the_flux_calibration_and_no_further():
    from protolib.goodness_of_fit import ImageFit

    rng = np.random.default_rng(0)
    y, x = np.mgrid[:32, :32] - 15.5
    model = np.exp(-0.5 * (x**2 + y**2) / 16.0)[None].astype(np.float32)
    target = 1.15 * model[0] + 0.01 * rng.normal(size=(32, 32))  # the map's flux scale off by 15%
    exact, tolerant = ImageFit(None, 0.01), ImageFit(None, 0.01, flux_tolerance=0.2)
    assert exact.reduced_chi2(target, model)[0] > 5
    assert tolerant.flux_factors(target, model)[0] == pytest.approx(1.15, abs=0.01)
    assert tolerant.reduced_chi2(target, model)[0] == pytest.approx(1.0, abs=0.15)
    far = 2.0 * model[0] + 0.01 * rng.normal(size=(32, 32))  # twice as bright: beyond any calibration error
    assert tolerant.flux_factors(far, model)[0] == pytest.approx(1.2) and tolerant.reduced_chi2(far, model)[0] > 20


def _filtered_map(tmp_path, scale_arcsec: float | None):
    """A bright NOEMA-like synthetic map with its MAX_SCALE card removed, filtered at ``scale_arcsec`` (``None``:
    not)."""
    import torch
    from astropy.io import fits

    from protolib.instrument import FWHM_TO_SIGMA, Beam, convolve_beam
    from protolib.observation import write_observation_fits

    system = dict(
        stellar_mass=0.5,
        accretion_rate=3e-5,
        disk_radius=60.0,
        disk_mass=0.05,
        luminosity=3.0,
        disk_scale_height=6.0,
        cavity_angle=20.0,
    )
    path = write_observation_fits(
        tmp_path / f"map_{scale_arcsec}.fits",
        system,
        inclination_deg=50.0,
        position_angle_deg=30.0,
        distance_pc=300.0,
        pixel_arcsec=0.2,
        image_size=128,
        beam=Beam(0.86, 0.69, 18.0),
        noise_rms_jy_beam=1.6e-4,
        seed=3,
        frequency_ghz=220.0,
        include_model=False,
    )
    with fits.open(path) as hdus:
        header, data = hdus[0].header, hdus[0].data.astype(np.float64)
    del header["HIERARCH PROTOLIB MAX_SCALE"]
    if scale_arcsec:
        image = data[0, 0]
        covariance = (scale_arcsec / 0.2 * FWHM_TO_SIGMA) ** 2 * np.eye(2)
        data[0, 0] = image - convolve_beam(torch.as_tensor(image), covariance).numpy()
    fits.PrimaryHDU(data.astype(np.float32), header).writeto(path, overwrite=True)
    return path


def test_the_maps_negative_bowl_gives_its_recoverable_scale_and_every_draw_is_filtered(tmp_path):
    from protolib.instrument import Beam
    from protolib.observation import prepare_observation
    from protolib.observation.regrid import BankGrid

    grid = BankGrid(
        image_size=64, pixel_size_au=120.0, distance_pc=300.0, beam=Beam(0.86, 0.69, 18.0), frequency_ghz=220.0
    )
    filtered = prepare_observation(_filtered_map(tmp_path, 6.0), grid, 300.0)
    assert filtered.max_scale_source.startswith("estimated: a negative bowl")
    low, high = filtered.max_scale_estimate["range_arcsec"]
    # narrower than the default's
    assert low <= 6.0 <= high and high / low < 0.5 * MAX_SCALE_RANGE_BEAMS[1] / MAX_SCALE_RANGE_BEAMS[0]
    uncertainty = observing_uncertainty(
        300.0,
        frequency_ghz=220.0,
        beam_major_arcsec=0.86,
        max_scale_known=False,
        estimated_scale=filtered.max_scale_estimate,
    )
    assert uncertainty.no_filter_share == 0.0 and all(low <= d.max_scale_arcsec <= high for d in uncertainty.draws())
    # no bowl: the default assumption, and its wide draws
    plain = prepare_observation(_filtered_map(tmp_path, None), grid, 300.0)
    assert plain.max_scale_source.startswith("assumed") and plain.max_scale_estimate["range_arcsec"] is None
    assert "no significant negative bowl" in plain.max_scale_estimate["reason"]


def test_the_command_lines_on_widened_intervals_name_parameters_in_words():
    from protolib.cli.observations import calibration_note, observing_note

    calibration = {
        "accretion_rate": {"widening": 1.25, "raw_coverage_95": 0.81, "coverage_95": 0.95, "n_reference": 40},
        "disk_radius": {"widening": 1.0, "raw_coverage_95": 0.95, "coverage_95": 0.95, "n_reference": 40},
    }
    said = calibration_note(calibration)
    assert "infall rate x1.25 (95% coverage 0.81 -> 0.95)" in said and "_" not in said.replace("summary.csv", "")
    observing = {
        "sources": ["distance"],
        "distance_pc": 140.0,
        "distance_error_pc": 10.0,
        "flux_calibration": 0.1,
        "flux_calibration_source": "band 6's nominal accuracy",
        "max_scale_range_arcsec": [4.0, 6.0],
        "max_scale_range_source": "the map's negative bowl",
        "draws": [0, 1, 2],
        "parameters": {"opacity_beta": {"widening": 1.4, "by_source": {"distance": {"widening": 1.4}}}},
    }
    said = observing_note(observing)
    assert "dust opacity index β x1.40 (most from the distance)" in said
    assert "opacity_beta" not in said
