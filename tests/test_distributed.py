"""Training under torchrun: two CPU processes (gloo) with the same global batch train like one process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import protolib
from protolib.bank import Bank, simulate_bank
from protolib.cli import main
from protolib.simulator import SimulatorConfig
from protolib.training import ImageSource, system_batches

TOLERANCE = 1e-4  # relative: only the order of floating-point sums differs between 1 and 2 processes


def options(stage: str) -> list[str]:
    """Tiny networks, 13 systems split 7/3/3 (so the last batch of 3 systems leaves one process idle), no
    augmentation."""
    no_augmentation = [
        f"{stage}.augmentation.{key}={value}"
        for key, value in (("rotate", "false"), ("flip", "false"), ("beam_jitter", 0), ("noise_jitter", 0))
    ]
    settings = [
        "split.fractions=[0.6,0.2,0.2]",
        "autoencoder.model.channels=[4,8]",
        "autoencoder.model.latent_size=8",
        "siamese.model.hidden_size=16",
        *no_augmentation,
    ]
    return [
        "--config",
        "tiny",
        "--epochs",
        "2",
        "--batch-systems",
        "3",
        "--quiet",
        "--threads",
        "1",
        *[part for setting in settings for part in ("--set", setting)],
    ]


def torchrun(*arguments: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(protolib.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "PROTOLIB_DEVICE": "cpu",
    }
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "protolib",
        *arguments,
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def losses(run: Path, name: str) -> np.ndarray:
    history = json.loads((run / f"{name}_history.json").read_text())["history"]
    return np.array([[h["train_loss"], h["validation_loss"]] for h in history])


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    path = tmp_path_factory.mktemp("bank") / "bank.h5"
    simulate_bank(
        path, 13, 2, seed=3, config=SimulatorConfig(image_size=16, envelope_samples=8, disk_samples=8), progress=False
    )
    return path


@pytest.fixture(scope="module")
def alone(bank, tmp_path_factory):
    run = tmp_path_factory.mktemp("alone")
    common = ["--bank", str(bank), "--out", str(run)]
    assert main(["train-autoencoder", *common, *options("autoencoder")]) == 0
    assert main(["train-siamese", *common, "--autoencoder", str(run / "autoencoder.pt"), *options("siamese")]) == 0
    return run


def test_two_processes_share_each_batch_by_system_and_together_see_what_one_process_sees(bank, monkeypatch):
    import protolib.training as training

    with Bank(bank) as opened:
        source, systems = ImageSource(opened), np.arange(13)
        whole = list(system_batches(source, systems, batch_systems=3, projections_per_system=1, seed=4))
        shares = []
        for rank in (0, 1):
            monkeypatch.setattr(training, "shard", lambda n, rank=rank: np.array_split(np.arange(n), 2)[rank])
            shares.append(list(system_batches(source, systems, batch_systems=3, projections_per_system=1, seed=4)))
    for (images, system), (images_0, system_0), (images_1, system_1) in zip(whole, *shares):
        assert not set(system_0) & set(system_1)
        assert np.array_equal(np.r_[system_0, system_1], system) and np.array_equal(
            np.concatenate([images_0, images_1]), images
        )


def test_torchrun_with_two_processes_gives_the_loss_history_of_one_process(bank, alone, tmp_path):
    common = ["--bank", str(bank), "--out", str(tmp_path)]
    torchrun("train-autoencoder", *common, *options("autoencoder"))
    result = torchrun("train-siamese", *common, "--autoencoder", str(alone / "autoencoder.pt"), *options("siamese"))
    for name in ("autoencoder", "siamese"):
        one, two = losses(alone, name), losses(tmp_path, name)
        assert one.shape == two.shape == (2, 2)
        np.testing.assert_allclose(two, one, rtol=TOLERANCE)
    images = [
        json.loads((run / "siamese_history.json").read_text())["history"][0]["images"] for run in (alone, tmp_path)
    ]
    assert images[0] == images[1] == 7 * 2
    assert result.stdout.count("held-out spearman") == 1 and (tmp_path / "metrics.json").exists()
    assert not list(tmp_path.glob("*.tmp"))
    assert (
        torch.load(tmp_path / "siamese.pt", weights_only=False)["history"]
        == json.loads((tmp_path / "siamese_history.json").read_text())["history"]
    )
