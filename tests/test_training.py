"""The training engine, the data pipeline, checkpoints and the command line, on a very small bank."""

import json

import numpy as np
import pytest
import torch
from conftest import open_small_bank

from protolib.autoencoder import AutoencoderConfig, load_autoencoder, train_autoencoder
from protolib.cli import main
from protolib.siamese import LossConfig, PairConfig, SiameseConfig, load_siamese, train_siamese
from protolib.splits import split_systems
from protolib.training import ImageSource, TrainingConfig, system_batches, why_training_stopped

SMALL = AutoencoderConfig(channels=[4, 8], latent_size=8)


def quick(**changes) -> TrainingConfig:
    return TrainingConfig(
        **{"epochs": 3, "batch_systems": 3, "learning_rate": 3e-3, "patience": 10, "num_threads": 1, **changes}
    )


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    with open_small_bank(tmp_path_factory, 10, seed=1) as opened:
        yield opened


@pytest.fixture(scope="module")
def split(bank):
    return split_systems(bank.n_systems, (0.6, 0.2, 0.2), seed=0)


@pytest.fixture(scope="module")
def autoencoder(bank, split, tmp_path_factory):
    return train_autoencoder(
        bank,
        tmp_path_factory.mktemp("ae") / "autoencoder.pt",
        split=split,
        model=SMALL,
        training=quick(),
        progress=False,
    )


def test_batches_visit_every_training_system_once_by_system_from_memory_or_file(bank, split):
    in_memory, from_file = ImageSource(bank), ImageSource(bank, memory_limit_mb=0)
    assert in_memory.in_memory and not from_file.in_memory
    options = dict(batch_systems=2, projections_per_system=None, chunk_systems=4, seed=5, epoch=1)
    a = list(system_batches(in_memory, split.train, **options))
    b = list(system_batches(from_file, split.train, **options))
    assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    seen = np.concatenate([systems for _, systems in a])
    assert sorted(set(seen.tolist())) == split.train.tolist() and len(seen) == 2 * len(split.train)
    assert np.array_equal(a[0][0][0], bank.load_images([a[0][1][0]])[0][0])


def test_same_seed_gives_the_same_weights_and_the_best_checkpoint_reloads_alone(bank, split, tmp_path, autoencoder):
    again = train_autoencoder(bank, tmp_path / "again.pt", split=split, model=SMALL, training=quick(), progress=False)
    first, second = load_autoencoder(autoencoder, "cpu"), load_autoencoder(again, "cpu")
    for name, tensor in first.network.state_dict().items():
        assert torch.equal(tensor, second.network.state_dict()[name]), name
    assert [h["train_loss"] for h in first.history] == [h["train_loss"] for h in second.history]
    assert first.checkpoint["best_validation_loss"] == min(h["validation_loss"] for h in first.history)
    latents = first.encode_images(bank.load_images([0]).reshape(-1, 16, 16))
    assert latents.shape == (2, 8) and np.all(np.isfinite(latents))
    assert json.loads((autoencoder.parent / "autoencoder_history.json").read_text())["history"] == first.history
    assert not list(tmp_path.glob("*.tmp"))


def test_early_stopping_ends_training_when_validation_stops_improving(bank, split, tmp_path):
    path = train_autoencoder(
        bank,
        tmp_path / "stuck.pt",
        split=split,
        model=SMALL,
        progress=False,
        training=quick(epochs=20, learning_rate=0.0, patience=2, schedule="constant"),
    )
    stuck = load_autoencoder(path, "cpu")
    assert len(stuck.history) == 3  # one epoch sets the best, two more without improvement
    stopped = why_training_stopped(stuck.checkpoint)
    assert stopped["stopped_early"] and (stopped["epochs_run"], stopped["epoch_cap"], stopped["best_epoch"]) == (
        3,
        20,
        1,
    )
    assert "not improved at all for 2 epochs" in stopped["reason"]


def test_a_small_gain_counts_as_flat_and_a_run_at_its_cap_says_so(bank, split, tmp_path, autoencoder):
    """With min_delta, gains smaller than it do not reset the patience; a run that used every epoch is described as
    capped."""
    history = [{"validation_loss": loss} for loss in (1.0, 0.5, 0.49, 0.485, 0.48)]
    flat = why_training_stopped(
        {"training": {"epochs": 10, "patience": 3, "min_delta": 0.05}, "history": history, "best_epoch": 2}
    )
    assert flat["stopped_early"] and "by more than 0.05 for 3 epochs" in flat["reason"]
    capped = why_training_stopped(load_autoencoder(autoencoder, "cpu").checkpoint)
    assert (
        not capped["stopped_early"]
        and capped["epochs_run"] == capped["epoch_cap"] == 3
        and "cap of 3 epochs" in capped["reason"]
    )


class Interrupt(Exception):
    pass


def test_resume_after_an_interruption_continues_the_same_history(bank, split, tmp_path, autoencoder, monkeypatch):
    import protolib.autoencoder as module

    original = module._AutoencoderTask.training_batches

    def interrupted(self, epoch):
        if epoch == 2:
            raise Interrupt
        return original(self, epoch)

    monkeypatch.setattr(module._AutoencoderTask, "training_batches", interrupted)
    with pytest.raises(Interrupt):
        train_autoencoder(bank, tmp_path / "resumed.pt", split=split, model=SMALL, training=quick(), progress=False)
    from protolib.training import load_checkpoint, partial_checkpoint_path

    assert not (tmp_path / "resumed.pt").exists()  # only a finished training writes the model
    assert len(load_checkpoint(partial_checkpoint_path(tmp_path / "resumed.pt"))["history"]) == 2
    monkeypatch.setattr(module._AutoencoderTask, "training_batches", original)
    train_autoencoder(
        bank, tmp_path / "resumed.pt", split=split, model=SMALL, training=quick(), progress=False, resume=True
    )
    resumed, straight = load_autoencoder(tmp_path / "resumed.pt", "cpu"), load_autoencoder(autoencoder, "cpu")
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert np.allclose([h["train_loss"] for h in resumed.history], [h["train_loss"] for h in straight.history])
    for name, tensor in straight.network.state_dict().items():
        assert torch.allclose(tensor, resumed.network.state_dict()[name]), name


def test_a_loss_that_is_not_finite_stops_training_and_writes_nothing(bank, split, tmp_path, monkeypatch):
    import protolib.autoencoder as module
    from protolib.runtime import ProtolibInputError
    from protolib.training import partial_checkpoint_path

    original = module._AutoencoderTask.loss

    def diverging(self, batch, generator):
        return original(self, batch, generator) * float("nan")

    previous = tmp_path / "autoencoder.pt"
    train_autoencoder(bank, previous, split=split, model=SMALL, training=quick(), progress=False)
    before = previous.read_bytes()
    monkeypatch.setattr(module._AutoencoderTask, "loss", diverging)
    with pytest.raises(
        ProtolibInputError,
        match=r"autoencoder\.pt stopped in epoch 1: the loss became nan .*not finite; nothing was written",
    ):
        train_autoencoder(bank, previous, split=split, model=SMALL, training=quick(), progress=False)
    assert previous.read_bytes() == before and not partial_checkpoint_path(previous).exists()


@pytest.mark.parametrize("loss, pairs", [("mse", "all"), ("log_ratio", "all"), ("contrastive", "fixed")])
def test_siamese_checkpoint_keeps_the_matching_contract(bank, split, tmp_path, autoencoder, loss, pairs):
    path = train_siamese(
        bank,
        autoencoder,
        tmp_path / "siamese.pt",
        model=SiameseConfig(embedding_size=6, hidden_size=16),
        loss=LossConfig(kind=loss),
        pairs=PairConfig(mode=pairs, fixed_fraction=0.5),
        training=quick(epochs=2, projections_per_system=2),
        progress=False,
    )
    model = load_siamese(path, "cpu")
    for key in ("config", "normaliser", "parameter_names", "target", "bank", "image_size", "split"):
        assert key in model.checkpoint
    assert model.checkpoint["split"] == split.to_dict() and model.checkpoint["bank"]["shape"] == [10, 2, 16, 16]
    images = bank.load_images(split.test).reshape(-1, 16, 16)
    embeddings = model.embed_images(images, batch_size=3)
    assert embeddings.shape == (len(images), 6) and embeddings.dtype == np.float32
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    similarity = model.similarity(images, images[::-1])
    assert similarity.shape == (len(images),) and np.all(np.abs(similarity) <= 1 + 1e-5)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"spearman", "mse", "within_0.1"} <= set(metrics) and metrics["systems"] == len(split.test)


def test_command_line_trains_both_networks_and_reports_held_out_metrics(bank, tmp_path, capsys):
    common = [
        "--bank",
        str(bank.path),
        "--out",
        str(tmp_path),
        "--config",
        "tiny",
        "--epochs",
        "1",
        "--quiet",
        "--threads",
        "1",
    ]
    assert (
        main(
            [
                "train-autoencoder",
                *common,
                "--channels",
                "4,8",
                "--latent-size",
                "8",
                "--set",
                "split.fractions=[0.6,0.2,0.2]",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "train-siamese",
                *common,
                "--autoencoder",
                str(tmp_path / "autoencoder.pt"),
                "--target",
                "cosine",
                "--set",
                "siamese.model.hidden_size=16",
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["target"] == "cosine" and -1 <= metrics["spearman"] <= 1
    assert load_siamese(tmp_path / "siamese.pt", "cpu").checkpoint["config"]["model"]["hidden_size"] == 16
    assert "held-out spearman" in capsys.readouterr().out
    assert main(["train-siamese", *common, "--autoencoder", str(tmp_path / "missing.pt")]) == 2


def test_a_checkpoint_carrying_code_is_refused_and_its_code_never_runs(tmp_path):
    import os
    import pickle

    from protolib.runtime import ProtolibInputError
    from protolib.training import load_checkpoint

    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "siamese.pt"
    with open(path, "wb") as handle:
        pickle.dump({"model_state": {}, "kind": "siamese", "extra": Payload()}, handle)
    with pytest.raises(ProtolibInputError, match=r"siamese\.pt was refused: it holds Python objects.*could run code"):
        load_checkpoint(path, "siamese")
    assert not marker.exists()


def test_the_printed_network_summary_counts_every_parameter_and_shape():
    from protolib.autoencoder import Autoencoder, describe_network

    network = Autoencoder(AutoencoderConfig(image_size=32, channels=[8, 16], latent_size=16))
    table = describe_network(network, 32)
    total = int(table.splitlines()[-1].split()[-1].replace(",", ""))
    assert total == sum(p.numel() for p in network.parameters())
    assert "16x8x8" in table and "1x32x32" in table  # the encoder's last level and the reconstruction, for one image
