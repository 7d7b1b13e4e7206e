"""The image-space verdict on what no bank image can reproduce (a companion, a clump, a ring, spiral arms, a
streamer) and on what the bank holds: the residual's structure, the absolute limits, the synthetic sets."""

from __future__ import annotations

import numpy as np
import pytest
from match_helpers import ProjectionEmbedder

from protolib.bank import Bank, simulate_bank
from protolib.goodness_of_fit import EXCESS_LIMIT, STRUCTURE_SIGMA, judge_fit, residual_peak
from protolib.instrument import Beam, beam_noise
from protolib.matching import Matcher, fit_matches
from protolib.misfits import ADDED_FRACTION, KINDS, MISFIT_KINDS, rates_table, targets_for_bank, verdict_rates
from protolib.simulator import SimulatorConfig

BEAM, PIXEL = Beam(0.25, 0.25, 0.0), 1000.0 / 64 / 140


def test_noise_leaves_no_structure_and_a_faint_clump_is_found_where_it_is():
    rng = np.random.default_rng(1)
    noise = [
        residual_peak(beam_noise((64, 64), BEAM, PIXEL, rng).numpy(), np.ones((64, 64)), 1.0, BEAM, PIXEL).significance
        for _ in range(60)
    ]
    assert np.percentile(noise, 95) < STRUCTURE_SIGMA and np.median(noise) > 2.5  # a few hundred beams: about 3.6
    rows, columns = np.mgrid[:64, :64]
    clump = 8.0 * np.exp(-((rows - 40) ** 2 + (columns - 20) ** 2) / (2 * 1.5**2))  # 8 sigma at its peak, a beam wide
    target = 100 * np.exp(-((rows - 31.5) ** 2 + (columns - 31.5) ** 2) / 8.0)
    found = residual_peak(clump + beam_noise((64, 64), BEAM, PIXEL, rng).numpy(), target, 1.0, BEAM, PIXEL)
    assert (
        found.significance > STRUCTURE_SIGMA and abs(found.position[0] - 40) <= 1 and abs(found.position[1] - 20) <= 1
    )
    assert found.offset_beams == pytest.approx(np.hypot(40 - 31.5, 20 - 31.5) / (0.25 / PIXEL), abs=0.5)


def test_the_absolute_limit_holds_however_poorly_the_bank_fits_itself():
    poor_bank = (np.full(40, 50.0), np.full(40, 0.6))  # the bank's own images are left 60% by their best matches
    verdict = judge_fit(20.0, EXCESS_LIMIT + 0.05, poor_bank)
    assert not verdict.reproduces and verdict.reasons == ["absolute"]
    assert judge_fit(20.0, EXCESS_LIMIT - 0.05, poor_bank).reproduces


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    path = tmp_path_factory.mktemp("verdict") / "bank.h5"
    simulate_bank(
        path, 40, 4, seed=3, config=SimulatorConfig(image_size=32, envelope_samples=16, disk_samples=12), progress=False
    )
    with Bank(path) as opened:
        yield opened


def test_synthetic_targets_are_reproducible_and_have_their_signal_to_noise(bank):
    plain = targets_for_bank(bank, "plain", 3, snr=(60.0, 150.0), seed=4)
    assert np.all(plain.structure_fraction == 0)
    np.testing.assert_array_equal(
        targets_for_bank(bank, "spiral", 2, seed=4).images, targets_for_bank(bank, "spiral", 2, seed=4).images
    )
    for kind in MISFIT_KINDS:
        made = targets_for_bank(bank, kind, 3, snr=(60.0, 150.0), seed=4)
        assert made.images.shape == (3, 32, 32) and np.all((made.peak_snr >= 60) & (made.peak_snr < 150))
        assert np.all((made.structure_fraction >= ADDED_FRACTION[0]) & (made.structure_fraction <= ADDED_FRACTION[1]))
        # the structure adds to the brightest pixel, or not
        added = made.images.max(axis=(1, 2)) / (made.peak_snr * made.noise_rms)
        assert np.all(added > 0.9), (kind, added)
    assert set(KINDS) == {"plain", *MISFIT_KINDS}


def test_every_misfit_kind_is_flagged_and_what_the_bank_holds_passes(bank):
    matcher = Matcher.from_embed_function(ProjectionEmbedder(32, 24), bank, progress=False)
    rows = verdict_rates(
        matcher, kinds=MISFIT_KINDS, bins=((60.0, 150.0),), n=4, top_k=20, n_reference=16, progress=False
    )
    for line in rates_table(rows):
        assert line["S/N 60-150"] >= 0.75, line
    assert {reason for r in rows for reason in r["reasons"]} >= {"structure"}
    rng = np.random.default_rng(9)
    noise = bank.instrument.noise_rms_jy_beam
    passed = []
    for system in range(0, 40, 5):  # a bank image with fresh noise: its own system is among the matches
        image = (
            bank.images[system, 2]
            + noise
            * beam_noise((32, 32), bank.instrument.beam, bank.pixel_size_au / bank.instrument.distance_pc, rng).numpy()
        )
        verdict = fit_matches(matcher, image, matcher.match(image, top_k=10)).verdict
        passed.append(verdict.reproduces)
    assert sum(passed) >= 7, passed
