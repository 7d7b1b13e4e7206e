"""Banks in several bands: the file's layout, one band read as a one-band bank, and banks made before bands."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from protolib.bank import Bank, simulate_bank
from protolib.instrument import Instrument
from protolib.parameters import Prior
from protolib.runtime import ProtolibInputError
from protolib.simulator import SimulatorConfig

OLD_BANK = Path(__file__).parent / "data" / "one_band_bank_before_bands.h5"
"""A bank of 3 systems x 2 projections written by protolib before several bands (commit b12f2b4): simulate_bank(path,
3, 2,
seed=7, config=SimulatorConfig(image_size=16, envelope_samples=8, disk_samples=8), prior=Prior(nuisance="drawn"))."""

SAMPLING = dict(image_size=16, envelope_samples=8, disk_samples=8)
BAND_INSTRUMENT = Instrument(
    bands=[
        {"beam_major_arcsec": 0.6, "beam_minor_arcsec": 0.5, "noise_rms_jy_beam": 3e-5},
        {},
        {"beam_major_arcsec": 0.2, "beam_minor_arcsec": 0.2, "noise_rms_jy_beam": 3e-4},
    ]
)


@pytest.fixture(scope="module")
def banks(tmp_path_factory) -> dict[str, Path]:
    """The same systems in three bands (each with its beam and noise) and in one band (230 GHz, the instrument's
    own)."""
    folder = tmp_path_factory.mktemp("bands")
    paths = {"three": folder / "three.h5", "one": folder / "one.h5"}
    simulate_bank(
        paths["three"],
        5,
        2,
        seed=2,
        config=SimulatorConfig(**SAMPLING, frequencies_ghz=[100, 230, 345]),
        instrument=BAND_INSTRUMENT,
        prior=Prior(nuisance="drawn"),
        progress=False,
    )
    simulate_bank(
        paths["one"], 5, 2, seed=2, config=SimulatorConfig(**SAMPLING), prior=Prior(nuisance="drawn"), progress=False
    )
    return paths


def test_a_three_band_bank_round_trips_through_h5py_with_its_frequencies_beams_and_noise(banks):
    with h5py.File(banks["three"], "r") as f:
        assert f["images"].shape == (5, 2, 3, 16, 16)
        assert f["images"].attrs["axes"] == "system, projection, band, north, west"
        assert f["bands/frequency_ghz"][()].tolist() == [100.0, 230.0, 345.0]
        assert f["bands/beam_major_arcsec"][()].tolist() == [0.6, 0.25, 0.2]
        assert f["bands/noise_rms_jy_beam"][()].tolist() == [3e-5, 1e-4, 3e-4]
        # the root: the reference band's
        assert f.attrs["frequency_ghz"] == 230.0 and f.attrs["beam_major_arcsec"] == 0.25
    with Bank(banks["three"]) as bank:
        assert bank.frequencies_ghz == (100.0, 230.0, 345.0) and bank.n_bands == 3
        assert bank.load_images([4, 0]).shape == (2, 2, 3, 16, 16)
        assert [i.beam_major_arcsec for i in bank.band_instruments] == [0.6, 0.25, 0.2]
        assert bank.setup["frequencies_ghz"] == [100.0, 230.0, 345.0]
        assert "3 bands (100, 230, 345 GHz)" in repr(bank)


def test_one_band_of_a_three_band_bank_is_the_one_band_bank_of_the_same_seed(banks):
    """Every band is rendered from one geometry; the reference band's noise is a one-band bank's, so it is that bank."""
    with Bank(banks["three"]) as three, Bank(banks["one"]) as one, three.band(230) as b6, three.band(101) as b3:
        assert b6.images.shape == one.images.shape == (5, 2, 16, 16)
        np.testing.assert_array_equal(b6.load_images(), one.load_images())
        np.testing.assert_array_equal(b6.images[3, 1], one.images[3, 1])
        assert b6.setup == one.setup and b6.frequencies_ghz == (230.0,)
        assert b3.instrument.beam_major_arcsec == 0.6 and b3.setup["frequency_ghz"] == 100.0
        np.testing.assert_array_equal(b3.load_images([1, 3]), three.load_images([1, 3])[:, :, 0])
        # re-rendered as a one-band bank
        assert b3.render_clean(0).shape == (2, 16, 16) and b3.simulator_config.bands_ghz == (100.0,)
        assert b3.identity["band_ghz"] == 100.0


def test_each_band_is_seen_through_its_own_beam_and_noise(banks):
    with Bank(banks["three"]) as three:
        for frequency, rms in zip(three.frequencies_ghz, (3e-5, 1e-4, 3e-4)):
            with three.band(frequency) as band:
                clean = band.instrument.without_noise().observe(band.render_clean(2), band.pixel_size_au, rng=None)
                noise = band.load_images([2])[0] - clean
                assert noise.std() == pytest.approx(rms, rel=0.35)


def test_a_bank_made_before_several_bands_still_opens_and_is_made_alike_today(tmp_path):
    with Bank(OLD_BANK) as old:
        assert old.n_bands == 1 and old.frequencies_ghz == (230.0,) and old.images.shape == (3, 2, 16, 16)
        assert "bands" not in old.setup and "frequencies_ghz" not in old.setup
        stored = json.loads(old.attrs["simulator_config"])
        # recorded as today's one-band settings are: not rebuilt as stale
        assert stored == old.simulator_config.to_dict()
        with old.band(230) as band:
            np.testing.assert_array_equal(band.load_images(), old.load_images())
        images = old.load_images()
    simulate_bank(
        tmp_path / "today.h5",
        3,
        2,
        seed=7,
        config=SimulatorConfig(**SAMPLING),
        prior=Prior(nuisance="drawn"),
        progress=False,
    )
    with Bank(tmp_path / "today.h5") as today, h5py.File(tmp_path / "today.h5", "r") as f:
        # the same images to float rounding: since issue 29 the beam's FFT is taken on a size of small prime factors
        np.testing.assert_allclose(today.load_images(), images, rtol=0, atol=1e-6 * np.abs(images).max())
        assert "bands" not in f and "frequencies_ghz" not in json.loads(f.attrs["simulator_config"])


def test_one_band_asked_as_a_list_is_the_one_band_setting():
    assert SimulatorConfig(frequencies_ghz=[345]).to_dict() == SimulatorConfig(frequency_ghz=345).to_dict()
    several = SimulatorConfig(frequencies_ghz=[100, 230, 345])
    assert several.bands_ghz == (100.0, 230.0, 345.0) and several.frequency_ghz == 230.0 and several.reference_band == 1
    assert SimulatorConfig(frequencies_ghz=[90, 140]).frequency_ghz == 140.0  # the band nearest 230 GHz


@pytest.mark.parametrize(
    "settings, words",
    [
        (dict(frequencies_ghz=[345, 230]), "must increase"),
        (dict(frequencies_ghz=[230, 230]), "must increase"),
        (dict(frequencies_ghz=[100, -5]), "positive frequencies"),
        (dict(frequencies_ghz=[]), "positive frequencies"),
    ],
)
def test_a_band_list_that_cannot_be_rendered_is_refused_in_one_line(settings, words):
    with pytest.raises(ProtolibInputError, match=words) as caught:
        SimulatorConfig(**settings)
    assert "\n" not in str(caught.value)


def test_band_settings_that_do_not_fit_are_refused_in_one_line(tmp_path, banks):
    with pytest.raises(ProtolibInputError, match="one entry per simulator.frequencies_ghz band"):
        simulate_bank(
            tmp_path / "b.h5",
            2,
            1,
            config=SimulatorConfig(**SAMPLING, frequencies_ghz=[100, 230]),
            instrument=BAND_INSTRUMENT,
            progress=False,
        )
    with pytest.raises(ProtolibInputError, match="distance is the same in every band"):
        Instrument(bands=[{"distance_pc": 100.0}])
    with pytest.raises(ProtolibInputError, match="no band within 5% of 150 GHz.*100, 230, 345 GHz"):
        Bank(banks["three"], frequency_ghz=150.0)
    assert not (tmp_path / "b.h5").exists()
