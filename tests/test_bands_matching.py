"""Maps of one source in several bands matched jointly (`protolib match --target b6.fits --target b3.fits`).

What a user relies on: each map goes to the bank's band nearest its frequency, the networks' band is
searched, the image-space chi-square and verdict use every band (each in its own noise), matches.csv and
report.json say each band's chi-square, the gallery shows every band and spectral_index.png the spectral
index; maps that cannot be matched jointly are refused in one line each; one map is matched as before.
"""

from __future__ import annotations

import csv
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from astropy import units as u
from astropy.coordinates import SkyCoord
from match_helpers import fake_siamese_module, write_fake_model

from protolib.bank import Bank, simulate_bank
from protolib.cli import main
from protolib.goodness_of_fit import BandsFit, ImageFit
from protolib.instrument import Beam, Instrument, convolve_beam, gaussian_solid_angle_pixels
from protolib.matching import MatchingSettings, prepare_band_targets
from protolib.observation import spectral_index_map, write_observation_fits
from protolib.parameters import Prior
from protolib.simulator import SimulatorConfig

pytestmark = pytest.mark.filterwarnings("ignore:.*records no observing setup", "ignore:.*too few negative pixels")

BANDS = {100.0: (Beam(1.0, 0.9, 0.0), 3e-5), 230.0: (Beam(0.6, 0.5, 0.0), 1e-4), 345.0: (Beam(0.5, 0.45, 0.0), 2e-4)}
SAMPLING = dict(envelope_samples=8, disk_samples=8)
PHASE_CENTRE = SkyCoord("04h39m53.9s", "+26d03m09.8s", frame="icrs")


def write_map(
    path: Path,
    system: dict,
    frequency_ghz: float,
    *,
    beam: Beam | None = None,
    noise: float | None = None,
    phase_centre: SkyCoord = PHASE_CENTRE,
) -> Path:
    """One system seen at 140 pc in one band (its beam and noise from BANDS unless given), as ALMA writes it."""
    band_beam, band_noise = BANDS[min(BANDS, key=lambda f: abs(math.log(f / frequency_ghz)))]
    return write_observation_fits(
        path,
        system,
        inclination_deg=50.0,
        position_angle_deg=30.0,
        distance_pc=140.0,
        pixel_arcsec=0.1,
        image_size=96,
        beam=beam or band_beam,
        noise_rms_jy_beam=noise or band_noise,
        seed=int(frequency_ghz),
        frequency_ghz=frequency_ghz,
        config=SimulatorConfig(**SAMPLING),
        phase_centre=phase_centre,
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """A bank of 40 systems x 2 projections in three bands, each with its beam and noise; one system's maps in each
    band."""
    folder = tmp_path_factory.mktemp("bands_matching")
    bank = folder / "bank.h5"
    instrument = Instrument(
        beam_major_arcsec=0.6,
        beam_minor_arcsec=0.5,
        noise_rms_jy_beam=1e-4,
        bands=[
            {"beam_major_arcsec": b.major_arcsec, "beam_minor_arcsec": b.minor_arcsec, "noise_rms_jy_beam": n}
            for b, n in BANDS.values()
        ],
    )
    simulate_bank(
        bank,
        40,
        2,
        seed=3,
        config=SimulatorConfig(image_size=32, **SAMPLING, frequencies_ghz=list(BANDS)),
        instrument=instrument,
        prior=Prior(nuisance="drawn"),
        progress=False,
    )
    with Bank(bank) as opened:
        system = {name: float(values[5]) for name, values in opened.parameters.items()}
    maps = {f: write_map(folder / f"b{f:.0f}.fits", system, f) for f in BANDS}
    return {"folder": folder, "bank": bank, "maps": maps, "system": system}


def match(setup: dict, out: Path, *targets: Path, extra=()) -> int:
    model = setup["folder"] / "siamese.pt"
    if not model.exists():
        write_fake_model(model, image_size=32)
    return main(
        [
            "match",
            "--model",
            str(model),
            "--bank",
            str(setup["bank"]),
            *[a for t in targets for a in ("--target", str(t))],
            "--distance",
            "140",
            "--top-k",
            "20",
            "--observing-draws",
            "0",
            *extra,
            "--out",
            str(out),
        ]
    )


def test_two_bands_matched_jointly_report_each_bands_chi_square_gallery_and_spectral_index(
    setup, tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "protolib.siamese", fake_siamese_module(32))
    out = tmp_path / "joint"
    assert match(setup, out, setup["maps"][230.0], setup["maps"][100.0]) == 0
    said = capsys.readouterr().out
    assert "2 bands matched jointly, searched in 230 GHz" in said and "spectral_index.png" in said
    assert {"gallery.png", "spectral_index.png", "matches.csv", "report.json"} <= {p.name for p in out.iterdir()}
    rows = list(csv.DictReader((out / "matches.csv").open()))
    joint, b3, b6 = (
        np.array([float(r[k]) for r in rows]) for k in ("reduced_chi2", "reduced_chi2_100GHz", "reduced_chi2_230GHz")
    )
    # both maps cover the whole field: the pixel-weighted mean
    np.testing.assert_allclose(joint, (b3 + b6) / 2, rtol=1e-5)
    report = json.loads((out / "report.json").read_text())
    bands = report["bands"]
    assert (
        bands["frequencies_ghz"] == [100.0, 230.0]
        and bands["searched_band_ghz"] == 230.0 == bands["reference_band_ghz"]
    )
    assert [m["searched"] for m in bands["maps"]] == [False, True] and "spectral_index.png" in report["files"]
    # a one-band network searches its own band alone, and the report and the console say so
    assert bands["search"] == "one band" and bands["searched_bands_ghz"] == [230.0] and "alone (a one-band" in said
    assert "embedded_bands_ghz" not in report["settings"]
    best = bands["best_match_rank"] - 1
    assert report["goodness_of_fit"]["best_reduced_chi2"] == pytest.approx(joint[best], rel=1e-5) == min(joint)
    assert [m["best_match_reduced_chi2"] for m in bands["maps"]] == pytest.approx([b3[best], b6[best]], rel=1e-5)
    # thin dust: 2 + beta, a little less where the Planck function bends or the disk is thick
    beta = setup["system"]["opacity_beta"]
    assert 2.0 + beta - 0.8 < bands["spectral_index"]["target_median"] < 2.0 + beta + 0.1
    assert bands["spectral_index"]["common_beam_arcsec"][0] == pytest.approx(
        bands["maps"][0]["beam_arcsec"][0], rel=1e-3
    )


def test_without_the_networks_band_the_band_nearest_it_is_searched(setup):
    with Bank(setup["bank"]) as bank:
        both = prepare_band_targets([setup["maps"][345.0], setup["maps"][100.0]], bank, 140.0)
        try:
            assert both.frequencies_ghz == [100.0, 345.0] and both.reference_ghz == 230.0 and both.search == 1
            assert [b.frequencies_ghz for b in both.banks] == [(100.0,), (345.0,)]
            assert both.images().shape == (2, 32, 32) and both.load_images([0, 3], [1, 0]).shape == (2, 2, 32, 32)
        finally:
            both.close()


@pytest.mark.parametrize(
    "case, words",
    [
        ("other source", 'are centred 3" apart, more than a beam'),
        ("one band twice", "are two maps for the bank's 230 GHz band"),
        ("no band near", "150 GHz, and bank .* has no band within 5% of it \\(its bands: 100, 230, 345 GHz\\)"),
        ("one beam for all", "--beam describes one map"),
    ],
)
def test_maps_that_cannot_be_matched_jointly_are_refused_in_one_line(setup, tmp_path, monkeypatch, capsys, case, words):
    monkeypatch.setitem(sys.modules, "protolib.siamese", fake_siamese_module(32))
    system, b6 = setup["system"], setup["maps"][230.0]
    others = {
        "other source": lambda: write_map(
            tmp_path / "elsewhere.fits",
            system,
            100.0,
            phase_centre=PHASE_CENTRE.spherical_offsets_by(0 * u.arcsec, 3 * u.arcsec),
        ),
        "one band twice": lambda: write_map(tmp_path / "b6_again.fits", system, 235.0),
        "no band near": lambda: write_map(tmp_path / "b4.fits", system, 150.0),
        "one beam for all": lambda: setup["maps"][100.0],
    }
    out = tmp_path / "out"
    assert (
        match(setup, out, b6, others[case](), extra=["--beam", "1", "1", "0"] if case == "one beam for all" else [])
        == 2
    )
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert re.search(words, error), error
    assert not out.exists()


def test_one_map_is_matched_as_alone_and_in_its_own_band_of_the_bank(setup, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "protolib.siamese", fake_siamese_module(32))
    from protolib.pipelines.match import run_match

    model = write_fake_model(tmp_path / "siamese.pt", image_size=32)
    common = dict(distance_pc=140.0, matching=MatchingSettings(top_k=20), observing_draws=0, progress=False)
    alone = run_match(model, setup["bank"], tmp_path / "alone", target=setup["maps"][100.0], **common)
    listed = run_match(model, setup["bank"], tmp_path / "listed", target=[setup["maps"][100.0]], **common)
    for name in ("matches.csv", "summary.csv", "report.json", "gallery.png", "corner.png"):
        assert (tmp_path / "alone" / name).read_bytes() == (tmp_path / "listed" / name).read_bytes()
    assert alone == listed and "bands" not in alone and not (tmp_path / "alone" / "spectral_index.png").exists()
    assert alone["bank"]["band_ghz"] == 100.0  # the B3 map is matched in the bank's 100 GHz band, at its beam and noise
    assert "reduced_chi2_100GHz" not in (tmp_path / "alone" / "matches.csv").read_text().splitlines()[0]


def test_the_joint_fit_of_one_band_is_the_fit_of_that_band():
    rng = np.random.default_rng(0)
    target, images = rng.normal(size=(16, 16)), rng.normal(size=(5, 16, 16))
    one = ImageFit(None, 0.7, 0.2, flux_tolerance=0.1)
    joint = BandsFit([one])
    np.testing.assert_allclose(
        joint.reduced_chi2(target[None], images[:, None]), one.reduced_chi2(target, images), rtol=1e-6
    )
    np.testing.assert_allclose(joint.excess(target[None], 3.0), one.excess(target, 3.0), rtol=1e-6)
    coverage = np.ones((16, 16))
    coverage[:, :8] = 0.0  # the second band sees half the field: it weighs half as much
    two = BandsFit([one, ImageFit(None, 0.5, 0.0, coverage=coverage)])
    by_band = two.reduced_chi2_by_band(np.stack([target, target]), np.stack([images, images], axis=1))
    np.testing.assert_allclose(
        two.reduced_chi2(np.stack([target, target]), np.stack([images, images], axis=1)),
        (2 * by_band[0] + by_band[1]) / 3,
        rtol=1e-6,
    )


def test_the_spectral_index_is_taken_at_the_coarser_beam_where_both_bands_are_detected():
    """A resolved source with alpha = 2.7 between 100 and 345 GHz, seen with a 3x sharper beam at 345 GHz: the index
    comes
    back where both are above 3 sigma; the maps' ratio without the common beam would not give it."""
    pixel = 0.1
    y, x = np.mgrid[:64, :64] - 31.5
    model = np.exp(-0.5 * (x**2 + (y / 0.7) ** 2) / 4.0**2)  # Jy/pixel at 100 GHz
    beams = {100.0: Beam(1.2, 1.0, 20.0), 345.0: Beam(0.4, 0.35, 0.0)}

    def observed(frequency):
        beam = beams[frequency]
        area = gaussian_solid_angle_pixels(beam.covariance_pixels(pixel))
        return convolve_beam(torch.as_tensor(model * (frequency / 100.0) ** 2.7), beam, pixel).numpy() * area

    low, high = observed(100.0), observed(345.0)
    index = spectral_index_map(
        low,
        high,
        low_ghz=100.0,
        high_ghz=345.0,
        low_beam=beams[100.0],
        high_beam=beams[345.0],
        pixel_arcsec=pixel,
        low_noise_jy_beam=0.01 * low.max(),
        high_noise_jy_beam=0.01 * high.max(),
    )
    known = np.isfinite(index.alpha)
    assert 100 < known.sum() < 64 * 64 and not known[0, 0]  # the faint edge is cut
    np.testing.assert_allclose(index.alpha[known], 2.7, atol=0.02)
    assert index.beam.major_arcsec == pytest.approx(1.2, rel=0.02) and index.median() == pytest.approx(2.7, abs=0.01)
    naive = np.log(high[32, 32] / low[32, 32]) / np.log(345.0 / 100.0)
    assert abs(naive - 2.7) > 0.3
