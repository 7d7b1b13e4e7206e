"""``protolib bank-for``: a bank made for the map, at both ends of what telescopes deliver (maps built with astropy).

What a user relies on: a long-baseline ALMA map (a 500 au field, a 5 au beam) and a wide NOEMA map
(20,000 au) each get a bank at their own field, pixel, beam, noise and band; the command builds the
bank and both networks, a second map of the same setup reuses them, and `protolib match` runs with
them, while a bank that does not fit a map is named as such, with the command that would build one.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits

from protolib.bank import Bank
from protolib.cli import main
from protolib.config import load_config
from protolib.instrument import FWHM_TO_SIGMA, Beam, beam_noise
from protolib.observation import BankGrid, prepare_observation
from protolib.observation.setup import MAX_FIELD_AU, PIXELS_PER_BEAM, common_setup, map_setup
from protolib.runtime import run_lock

CENTRE = SkyCoord(67.8923 * u.deg, 18.1347 * u.deg)


def write_map(
    path: Path,
    *,
    distance_pc: float,
    field_au: float,
    beam_au: tuple[float, float],
    pixels_per_beam: float = 4.0,
    noise: float = 1e-4,
    snr: float = 100.0,
    frequency_ghz: float = 230.0,
    seed: int = 0,
    beam_card: bool = True,
    centre: SkyCoord = CENTRE,
) -> Path:
    """A continuum map of a Gaussian source plus beam-correlated noise: RA---SIN, DEC--SIN and a frequency plane."""
    beam = Beam(beam_au[0] / distance_pc, beam_au[1] / distance_pc, 30.0)
    pixel = beam.minor_arcsec / pixels_per_beam
    size = int(round(field_au / distance_pc / pixel))
    offsets = (np.arange(size) - (size - 1) / 2) * pixel
    sigma = 3.0 * beam.major_arcsec * FWHM_TO_SIGMA
    source = snr * noise * np.exp(-0.5 * (offsets[:, None] ** 2 + (offsets[None, :] / 0.6) ** 2) / sigma**2)
    image = source + noise * beam_noise((size, size), beam, pixel, np.random.default_rng(seed)).numpy()
    header = fits.Header()
    for k, (ctype, crval, cdelt) in enumerate(
        [
            ("RA---SIN", centre.ra.deg, -pixel / 3600),
            ("DEC--SIN", centre.dec.deg, pixel / 3600),
            ("FREQ", frequency_ghz * 1e9, 1e9),
        ],
        start=1,
    ):
        header[f"CTYPE{k}"], header[f"CRVAL{k}"], header[f"CDELT{k}"], header[f"CRPIX{k}"] = (
            ctype,
            crval,
            cdelt,
            (size + 1) / 2 if k < 3 else 1.0,
        )
    header["BUNIT"], header["RADESYS"] = "Jy/beam", "ICRS"
    if beam_card:
        header["BMAJ"], header["BMIN"], header["BPA"] = (
            beam.major_arcsec / 3600,
            beam.minor_arcsec / 3600,
            beam.position_angle_deg,
        )
    fits.PrimaryHDU(image[None].astype(np.float32), header=header).writeto(path, overwrite=True)
    return path


def test_a_long_baseline_map_gets_a_small_sharp_bank_and_is_matched_with_it(tmp_path, capsys):
    """ALMA long baselines at 140 pc: a 500 au field and a 5 au beam. The bank samples the beam, so at the
    largest image size it holds the central part of the field, and says so; bank-for and match run on it
    (the book's bank refuses such a map: its 1000 au field is twice the map's)."""
    path = write_map(tmp_path / "long_baseline.fits", distance_pc=140.0, field_au=500.0, beam_au=(5.0, 4.0))
    setup = map_setup(path, 140.0)
    assert setup.image_size == 128
    assert setup.pixel_au <= 4.0 / PIXELS_PER_BEAM * 1.001
    assert 150.0 < setup.field_au < 500.0 and "sampling the beam" in setup.limited_by
    assert setup.beam.major_arcsec == pytest.approx(5.0 / 140.0, rel=1e-4) and setup.frequency_ghz == pytest.approx(
        230.0
    )
    assert setup.noise_rms_jy_beam == pytest.approx(1e-4, rel=0.25)
    out = tmp_path / "fitted"
    small = [
        "--config",
        "tiny",
        "--set",
        "bank.n_systems=10",
        "--set",
        "autoencoder.training.epochs=1",
        "--set",
        "siamese.training.epochs=1",
        "--quiet",
    ]
    assert main(["bank-for", str(path), "--distance", "140", "--out", str(out), *small]) == 0
    assert "128x128 px" in capsys.readouterr().out
    code = main(
        [
            "match",
            "--model",
            str(out / "siamese.pt"),
            "--bank",
            str(out / "bank.h5"),
            "--target",
            str(path),
            "--distance",
            "140",
            "--out",
            str(tmp_path / "matches"),
            "--config",
            "tiny",
        ]
    )
    assert code == 0 and "not made for this map" not in capsys.readouterr().err


def test_a_wide_noema_map_gets_a_wide_bank(tmp_path):
    """NOEMA at 300 pc: a 20,000 au map with a 1" beam gets a bank ten times the teaching bank's field."""
    path = write_map(
        tmp_path / "noema.fits",
        distance_pc=300.0,
        field_au=21_000.0,
        beam_au=(300.0, 240.0),
        pixels_per_beam=3.0,
        frequency_ghz=220.0,
    )
    setup = map_setup(path, 300.0)
    assert setup.image_size == 128 and 10_000.0 < setup.field_au <= MAX_FIELD_AU
    assert setup.pixel_au <= 240.0 / PIXELS_PER_BEAM * 1.001
    assert setup.frequency_ghz == pytest.approx(220.0)


def test_a_bank_that_does_not_fit_the_map_is_named_with_the_command_that_would(tmp_path):
    path = write_map(
        tmp_path / "noema.fits", distance_pc=300.0, field_au=12_000.0, beam_au=(300.0, 240.0), pixels_per_beam=3.0
    )
    teaching = BankGrid(
        image_size=32, pixel_size_au=31.25, distance_pc=140.0, beam=Beam(0.25, 0.25, 0.0), frequency_ghz=230.0
    )
    with pytest.warns(
        UserWarning, match=r"holds only 3\.3 of the map's 300 au beams.*protolib bank-for .*noema.fits --distance 300"
    ):
        prepare_observation(path, teaching, 300.0)
    fitted = BankGrid(
        image_size=64, pixel_size_au=187.5, distance_pc=300.0, beam=Beam(1.0, 0.8, 30.0), frequency_ghz=230.0
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepare_observation(path, fitted, 300.0)
    assert not [w for w in caught if "not made for this map" in str(w.message)]


def test_bank_for_builds_the_bank_and_networks_a_second_map_reuses_them_and_match_uses_them(tmp_path, capsys):
    first = write_map(tmp_path / "source_a.fits", distance_pc=140.0, field_au=1500.0, beam_au=(100.0, 80.0), seed=1)
    second = write_map(
        tmp_path / "source_b.fits", distance_pc=140.0, field_au=1500.0, beam_au=(100.0, 80.0), seed=2, snr=60.0
    )
    out = tmp_path / "fitted"
    small = [
        "--config",
        "tiny",
        "--set",
        "bank.n_systems=12",
        "--set",
        "autoencoder.training.epochs=1",
        "--set",
        "siamese.training.epochs=1",
        "--quiet",
    ]
    assert main(["bank-for", str(first), "--distance", "140", "--out", str(out), *small]) == 0
    said = capsys.readouterr().out
    assert "A bank for 1 map(s)" in said and "min from scratch" in said and "Built bank, autoencoder, siamese" in said
    config = load_config(out / "config.yaml")
    assert config.simulator.image_size == 64 and config.instrument.distance_pc == 140.0 and config.bank.n_systems == 12
    assert config.instrument.beam_major_arcsec == pytest.approx(100.0 / 140.0, rel=1e-5)
    written = {name: (out / name).stat().st_mtime_ns for name in ("bank.h5", "autoencoder.pt", "siamese.pt")}

    assert main(["bank-for", str(second), "--distance", "140", "--out", str(out), *small]) == 0
    assert "Reused everything" in capsys.readouterr().out
    assert {name: (out / name).stat().st_mtime_ns for name in written} == written
    assert [Path(m).name for m in yaml.safe_load((out / "setup.json").read_text())["maps"]] == [
        "source_a.fits",
        "source_b.fits",
    ]

    matches = tmp_path / "matches"
    code = main(
        [
            "match",
            "--model",
            str(out / "siamese.pt"),
            "--bank",
            str(out / "bank.h5"),
            "--target",
            str(second),
            "--distance",
            "140",
            "--out",
            str(matches),
            "--config",
            "tiny",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0 and (matches / "summary.csv").exists()
    assert "not made for this map" not in captured.err


def test_bad_input_gets_one_line_and_leaves_nothing_built(tmp_path, capsys):
    good = write_map(tmp_path / "good.fits", distance_pc=140.0, field_au=1500.0, beam_au=(100.0, 80.0))
    elsewhere = write_map(
        tmp_path / "elsewhere.fits",
        distance_pc=140.0,
        field_au=1500.0,
        beam_au=(100.0, 80.0),
        frequency_ghz=100.0,
        centre=CENTRE.spherical_offsets_by(0 * u.arcsec, 3 * u.arcsec),
    )
    same_band = write_map(
        tmp_path / "same_band.fits", distance_pc=140.0, field_au=1500.0, beam_au=(100.0, 80.0), frequency_ghz=233.0
    )
    other = write_map(
        tmp_path / "other.fits", distance_pc=140.0, field_au=1500.0, beam_au=(100.0, 80.0), frequency_ghz=100.0
    )
    no_beam = write_map(
        tmp_path / "no_beam.fits", distance_pc=140.0, field_au=1500.0, beam_au=(100.0, 80.0), beam_card=False
    )
    cases = [
        ([str(no_beam), "--distance", "140"], "beam"),
        ([str(good), "--distance", "0.01"], "is the distance in pc"),
        ([str(good), str(elsewhere), "--distance", "140"], "more than a beam"),
        ([str(good), str(same_band), str(other), "--distance", "140"], "two maps in one band"),
    ]
    for arguments, message in cases:
        out = tmp_path / f"out_{message.split()[0]}"
        assert main(["bank-for", *arguments, "--out", str(out)]) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and message in error and not out.exists()

    held = tmp_path / "held"
    held.mkdir()
    (held / "setup.json").write_text(yaml.safe_dump({}))
    (held / "bank.h5").write_bytes(b"somebody's bank")
    assert main(["bank-for", str(good), "--distance", "140", "--out", str(held)]) == 2
    assert "cannot be read" in capsys.readouterr().err and (held / "bank.h5").read_bytes() == b"somebody's bank"


def test_maps_of_one_source_in_three_bands_make_one_bank_in_those_bands_at_each_maps_beam_and_noise(tmp_path, capsys):
    """ALMA bands 3, 6 and 7 of one source: one bank, rendered at the three frequencies read from the files, each
    band seen through its map's beam and noise, on the pixel grid of the sharpest beam; the B6 map alone is then
    served by it (its networks are the 230 GHz band's until they embed several bands)."""
    maps = {
        f: write_map(
            tmp_path / f"band_{f:.0f}.fits",
            distance_pc=140.0,
            field_au=field,
            beam_au=beam,
            noise=noise,
            frequency_ghz=f,
            seed=seed,
        )
        for seed, (f, field, beam, noise) in enumerate(
            [
                (97.5, 4000.0, (220.0, 180.0), 3e-5),
                (230.0, 1500.0, (100.0, 80.0), 1e-4),
                (343.5, 1500.0, (80.0, 64.0), 2e-4),
            ]
        )
    }
    measured = [map_setup(path, 140.0).noise_rms_jy_beam for path in maps.values()]
    out = tmp_path / "bands"
    small = [
        "--config",
        "tiny",
        "--set",
        "bank.n_systems=10",
        "--set",
        "autoencoder.training.epochs=1",
        "--set",
        "siamese.training.epochs=1",
        "--quiet",
    ]
    assert main(["bank-for", *map(str, maps.values()), "--distance", "140", "--out", str(out), *small]) == 0
    said = capsys.readouterr().out
    assert "3 bands: 97.5 GHz" in said and "the bank holds 3 bands (97.5, 230, 343.5 GHz)" in said
    config = load_config(out / "config.yaml")
    assert config.simulator.bands_ghz == (97.5, 230.0, 343.5) and config.simulator.frequency_ghz == 230.0
    with Bank(out / "bank.h5") as bank:
        assert bank.images.shape[2] == 3 and bank.frequencies_ghz == (97.5, 230.0, 343.5)
        beams = [i.beam_major_arcsec * 140.0 for i in bank.band_instruments]
        noise = [i.noise_rms_jy_beam for i in bank.band_instruments]
        assert beams == pytest.approx([220.0, 100.0, 80.0], rel=1e-3) and noise == pytest.approx(measured, rel=1e-4)
        assert measured == pytest.approx([3e-5, 1e-4, 2e-4], rel=0.3)
        assert bank.pixel_size_au <= 64.0 / PIXELS_PER_BEAM * 1.001  # the sharpest band's beam is sampled
    assert main(["bank-for", str(maps[230.0]), "--distance", "140", "--out", str(out), *small]) == 0
    assert "Reused everything" in capsys.readouterr().out
    assert (
        main(
            [
                "bank-for",
                str(maps[230.0]),
                str(maps[343.5]),
                "--distance",
                "140",
                "--out",
                str(tmp_path / "b6b7"),
                "--set",
                "bank.n_systems=10",
                "--quiet",
                "--config",
                "tiny",
                "--set",
                "autoencoder.training.epochs=1",
                "--set",
                "siamese.training.epochs=1",
            ]
        )
        == 0
    )


def test_a_survey_shares_one_bank_that_serves_each_map(tmp_path):
    """Maps of one band with different beams and noise get one bank with the sharpest beam, the lowest noise
    and the smallest field; a bank does not serve a map sharper or much cleaner than itself."""
    sharp = map_setup(
        write_map(tmp_path / "sharp.fits", distance_pc=300.0, field_au=6000.0, beam_au=(200.0, 150.0), noise=2e-4),
        300.0,
    )
    coarse = map_setup(
        write_map(tmp_path / "coarse.fits", distance_pc=300.0, field_au=4000.0, beam_au=(300.0, 250.0), noise=1e-4),
        300.0,
    )
    survey = common_setup([sharp, coarse])
    assert survey.beam == sharp.beam and survey.field_au <= coarse.field_au * 1.0001
    assert survey.noise_rms_jy_beam == pytest.approx(min(sharp.noise_rms_jy_beam, coarse.noise_rms_jy_beam))
    assert survey.shortfalls(sharp) == [] and survey.shortfalls(coarse) == []
    assert any("sharper than the bank's" in s for s in coarse.shortfalls(sharp))


def test_a_second_run_into_a_folder_in_use_is_refused_and_leaves_it_alone(tmp_path, capsys):
    good = write_map(tmp_path / "good.fits", distance_pc=140.0, field_au=1500.0, beam_au=(100.0, 80.0))
    out = tmp_path / "fitted"
    with run_lock(out, folder=True):  # another bank-for at work in the folder
        assert main(["bank-for", str(good), "--distance", "140", "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "another protolib run" in error and "this folder" in error
    assert {p.name for p in out.iterdir()} == {".protolib.lock"}
