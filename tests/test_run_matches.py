"""Several matches side by side (:func:`protolib.pipelines.match.run_matches`), as chapter 05b runs its sources.

What a user relies on: each report is the one the match gives alone, the reports come back in the jobs' order
whichever process ran them, and a job that cannot be matched is refused in the caller with its own message.
"""

from __future__ import annotations

import pytest
import torch
from conftest import open_small_bank

from protolib.autoencoder import AutoencoderConfig, train_autoencoder
from protolib.matching import MatchingSettings
from protolib.pipelines.match import run_match, run_matches
from protolib.runtime import ProtolibInputError
from protolib.siamese import train_siamese
from protolib.splits import split_systems
from protolib.training import TrainingConfig

PRODUCTS = ("matches.csv", "summary.csv")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple:
    """A 16-system bank and a Siamese network trained on it for one epoch (seconds)."""
    folder = tmp_path_factory.mktemp("run_matches")
    quick = TrainingConfig(epochs=1, batch_systems=4, learning_rate=3e-3, num_threads=1)
    with open_small_bank(tmp_path_factory, 16, seed=2) as bank:
        split = split_systems(bank.n_systems, (0.5, 0.25, 0.25), seed=0)
        autoencoder = train_autoencoder(
            bank,
            folder / "autoencoder.pt",
            split=split,
            model=AutoencoderConfig(channels=[4, 8], latent_size=8),
            training=quick,
            progress=False,
        )
        return bank.path, train_siamese(bank, autoencoder, folder / "siamese.pt", training=quick, progress=False)


def job(trained, out, system: int) -> dict:
    bank, model = trained
    return dict(
        model_path=model,
        bank_path=bank,
        out_dir=out,
        target_system=system,
        matching=MatchingSettings(top_k=8),
        progress=False,
    )


def test_matches_side_by_side_are_each_match_alone_in_the_jobs_order(trained, tmp_path):
    systems = (3, 9, 12)
    side = run_matches([job(trained, tmp_path / f"side-{s}", s) for s in systems], workers=2)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # as every process of run_matches runs, so that the bits can be compared
    try:
        alone = [run_match(**job(trained, tmp_path / f"alone-{s}", s)) for s in systems]
    finally:
        torch.set_num_threads(previous)
    assert [r["inputs"]["target"]["system"] for r in side] == list(systems)
    for system, a, b in zip(systems, side, alone):
        assert a["summary"] == b["summary"]
        for name in PRODUCTS:
            assert (tmp_path / f"side-{system}" / name).read_bytes() == (
                tmp_path / f"alone-{system}" / name
            ).read_bytes()
    assert torch.get_num_threads() == previous  # the caller's threads are given back


def test_no_jobs_give_no_reports_and_no_workers_is_refused(trained, tmp_path):
    assert run_matches([]) == []
    with pytest.raises(ProtolibInputError, match="workers=0"):
        run_matches([job(trained, tmp_path / "one", 3)], workers=0)


def test_a_job_that_cannot_be_matched_is_refused_in_the_caller(trained, tmp_path):
    jobs = [job(trained, tmp_path / "fine", 3), job(trained, tmp_path / "no-such-system", 99)]
    with pytest.raises(ProtolibInputError, match="systems 0..15"):
        run_matches(jobs, workers=2)
