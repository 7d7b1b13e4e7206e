"""Hyperparameter search (``protolib tune``): trials scored by validation parameter recovery, poor ones stopped
early."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import yaml
from conftest import open_small_bank

from protolib.cli import main
from protolib.config import load_config
from protolib.pipelines.train import siamese_settings
from protolib.pipelines.tune import tune
from protolib.runtime import ProtolibInputError
from protolib.tuning import TuneSettings, paired_difference, trial_overrides


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    with open_small_bank(tmp_path_factory, 30, seed=5) as opened:
        yield opened


# one autoencoder to train: seconds, not a minute
ONE_ENCODER = {
    "encoder_width": {"choices": [8]},
    "encoder_depth": {"choices": [2]},
}


@pytest.fixture(scope="module")
def run(bank, tmp_path_factory):
    """Five trials of at most three epochs on the tiny configuration, sequentially."""
    folder = tmp_path_factory.mktemp("tune")
    config = load_config("tiny")
    summary = tune(
        bank.path,
        folder / "run",
        config,
        TuneSettings(trials=5, epochs=3, seed=0, space=ONE_ENCODER),
        configs_dir=folder / "configs",
        progress=False,
    )
    return folder, config, summary


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_tune_stops_poor_trials_early_and_keeps_the_others(run):
    folder, config, summary = run
    rows = _rows(folder / "run" / "trials.csv")
    assert len(rows) == 5 and summary["trials"] == 5
    pruned = [r for r in rows if r["state"] == "pruned"]
    complete = [r for r in rows if r["state"] == "complete"]
    assert pruned, "successive halving should stop at least one of five trials at the first rung"
    assert all(int(r["epochs"]) < 3 for r in pruned)
    assert all(int(r["epochs"]) == 3 for r in complete)
    # the first trial is the configuration's own hyperparameters, the reference the search must beat
    own = siamese_settings(config)
    assert rows[0]["origin"] == "configuration tiny"
    assert int(rows[0]["embedding_size"]) == own["model"].embedding_size and rows[0]["loss"] == own["loss"].kind
    assert float(rows[0]["learning_rate"]) == pytest.approx(own["training"].learning_rate)
    scores = [float(r["recovery_error"]) for r in complete]
    assert summary["best_score"] == pytest.approx(min(scores))
    assert 0 < summary["best_score"] < 1.5  # in prior spreads: random matches give about 1.4
    for name in ("scores.png", "learning_curves.png", "trials.md", "best.json"):
        assert (folder / "run" / name).stat().st_size > 0
    assert (folder / "run" / "trials" / f"trial_{summary['best_trial']:04d}.pt").exists()
    assert not list((folder / "run" / "trials").glob("*metrics.json"))  # the test systems are never evaluated


def test_best_configuration_is_written_to_configs_and_loads(run, bank):
    folder, config, summary = run
    path = folder / "configs" / "tuned.yaml"
    tuned = load_config(path)
    assert tuned.name == "tuned"
    assert (tuned.bank.n_systems, tuned.bank.n_projections) == (bank.n_systems, bank.n_projections)
    assert tuned.simulator.image_size == bank.image_size
    best = summary["best_hyperparameters"]
    settings = siamese_settings(tuned)
    assert settings["model"].embedding_size == best["embedding_size"]
    assert settings["loss"].kind == best["loss"]
    assert settings["target"].sigma == pytest.approx(best["kernel_width"])
    assert settings["training"].learning_rate == pytest.approx(best["learning_rate"])
    assert tuned.section("autoencoder")["model"]["channels"][0] == best["encoder_width"]
    assert "validation recovery error" in path.read_text().splitlines()[1]


def test_rerun_with_more_trials_continues_the_study(run, bank):
    folder, config, _ = run
    before = _rows(folder / "run" / "trials.csv")
    summary = tune(
        bank.path,
        folder / "run",
        config,
        TuneSettings(trials=6, epochs=3, seed=0, space=ONE_ENCODER),
        configs_dir=folder / "configs",
        progress=False,
    )
    after = _rows(folder / "run" / "trials.csv")
    assert summary["trials"] == 6 and len(after) == 6
    assert [(r["trial"], r["recovery_error"]) for r in after[:5]] == [(r["trial"], r["recovery_error"]) for r in before]
    names = ("embedding_size", "kernel_width", "loss", "learning_rate", "batch_systems")
    assert tuple(after[5][n] for n in names) not in {tuple(r[n] for n in names) for r in before}  # the rerun draws anew
    with pytest.raises(ProtolibInputError, match="other settings"):
        tune(
            bank.path,
            folder / "run",
            config,
            TuneSettings(trials=7, epochs=3, seed=0, space=ONE_ENCODER, top_k=3),
            configs_dir=folder / "configs",
            progress=False,
        )


def test_parallel_workers_of_a_dask_cluster_draw_different_trials(bank, tmp_path):
    from dask.distributed import Client, LocalCluster

    # a running cluster, as `--scheduler ADDR` connects to (`--workers N` starts the same locally)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        summary = tune(
            bank.path,
            tmp_path / "run",
            load_config("tiny"),
            TuneSettings(trials=3, epochs=2, seed=1, pruner="none", space=ONE_ENCODER),
            client=client,
            configs_dir=tmp_path,
            progress=False,
        )
    rows = _rows(tmp_path / "run" / "trials.csv")
    assert summary["complete"] == 3
    drawn = [tuple(r[k] for k in ("embedding_size", "kernel_width", "learning_rate", "batch_systems")) for r in rows]
    assert len(set(drawn)) == 3


def test_trial_overrides_map_hyperparameters_onto_the_configuration():
    autoencoder, siamese = trial_overrides(
        {
            "encoder_width": 4,
            "encoder_depth": 3,
            "embedding_size": 16,
            "kernel_width": 0.5,
            "loss": "contrastive",
            "margin": 0.3,
            "learning_rate": 1e-3,
            "batch_systems": 8,
        },
        epochs=7,
    )
    assert autoencoder == {"model": {"channels": [4, 8, 16]}}
    assert siamese["loss"] == {"kind": "contrastive", "margin": 0.3}
    assert siamese["training"] == {"learning_rate": 1e-3, "batch_systems": 8, "epochs": 7}
    assert siamese["target"] == {"sigma": 0.5} and siamese["model"] == {"embedding_size": 16}


def test_bad_tuning_input_is_explained(tmp_path, capsys):
    with pytest.raises(ProtolibInputError, match="unknown_knob"):
        TuneSettings(space={"unknown_knob": {"choices": [1]}})
    with pytest.raises(ProtolibInputError, match="pruner"):
        TuneSettings(pruner="median")
    with pytest.raises(ProtolibInputError, match="learning_rate"):
        TuneSettings(space={"learning_rate": {"low": 1e-3}})
    assert main(["tune", "--bank", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "run"), "--trials", "2"]) == 2
    assert "missing.h5 does not exist" in capsys.readouterr().err
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"name": "bad", "tuning": {"trails": 3}}))
    with pytest.raises(ProtolibInputError, match="trails"):
        load_config(config)


def test_a_run_folder_of_another_bank_is_refused_or_moved_aside(run, tmp_path_factory):
    folder, config, _ = run
    with open_small_bank(tmp_path_factory, 12, seed=6) as other:
        with pytest.raises(ProtolibInputError, match="another bank"):
            tune(
                other.path,
                folder / "run",
                config,
                TuneSettings(trials=1, epochs=1),
                configs_dir=folder / "configs",
                progress=False,
            )
        assert (folder / "run" / "trials.csv").exists()  # nothing lost
        summary = tune(
            other.path,
            folder / "run",
            config,
            TuneSettings(trials=1, epochs=1, space=ONE_ENCODER),
            configs_dir=folder / "other-configs",
            progress=False,
            restart_if_changed=True,
        )
    assert summary["trials"] == 1
    assert [
        p.name.startswith("run.previous-") for p in folder.iterdir() if (p / "trials.csv").exists() and p.name != "run"
    ] == [True]


def test_paired_bootstrap_tells_a_real_improvement_from_noise():
    rng = np.random.default_rng(0)
    systems = np.repeat(np.arange(40), 4)
    base = rng.normal(size=(160, 3))
    same = paired_difference(base, base, systems)
    assert same["difference"] == 0 and same["interval_95"] == [0.0, 0.0]
    better = paired_difference(0.7 * base, base, systems)
    assert better["difference"] < 0 and better["interval_95"][1] < 0
    noisy = paired_difference(base + rng.normal(scale=0.3, size=base.shape), base, systems)
    assert noisy["interval_95"][0] < noisy["difference"] < noisy["interval_95"][1]


def test_the_best_trial_is_compared_with_the_configuration_on_the_same_validation_systems(run):
    _, _, summary = run
    if summary["best_trial"] == 0:
        pytest.skip("the configuration's own trial was the best; nothing to compare")
    comparison = summary["best_minus_configuration"]
    # recomputed from the two checkpoints: the same scores the search recorded
    assert comparison["difference"] == pytest.approx(summary["best_score"] - summary["configuration_score"], abs=1e-9)
    low, high = comparison["interval_95"]
    assert low <= comparison["difference"] <= high
    assert comparison["beyond_validation_noise"] == (high < 0)


def test_a_configs_folder_of_your_own_does_not_hide_the_repository_configs(run, tmp_path, monkeypatch):
    folder, _, _ = run
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "tuned.yaml").write_text((folder / "configs" / "tuned.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    assert load_config("tuned").path == tmp_path / "configs" / "tuned.yaml"
    assert load_config("tiny").name == "tiny"  # not in ./configs: found in the repository's
    with pytest.raises(ProtolibInputError, match="does not exist"):
        load_config("no-such-config")


def test_the_first_trial_says_where_it_cannot_be_the_configuration_itself():
    import json as _json

    from protolib.pipelines.tune import first_trial_differences, first_trial_hyperparameters
    from protolib.tuning import SEARCH_SPACE

    space = _json.loads(_json.dumps(SEARCH_SPACE))
    assert first_trial_differences(load_config("tiny"), first_trial_hyperparameters(load_config("tiny"), space)) == []
    odd = load_config(
        "tiny", {"autoencoder": {"model": {"channels": [8, 12]}}, "siamese": {"training": {"learning_rate": 0.5}}}
    )
    differences = first_trial_differences(odd, first_trial_hyperparameters(odd, space))
    assert any("channels [8, 16] instead of [8, 12]" in d for d in differences)
    assert any("learning_rate 0.01 instead of 0.5" in d for d in differences)


def test_the_trials_table_prints_every_score_with_the_same_decimals():
    from protolib.tuning import trials_markdown

    rows = [
        {"trial": 0, "state": "complete", "recovery_error": 0.9, "epochs": 3, "seconds": 1.5, "encoder_width": 16},
        {"trial": 1, "state": "complete", "recovery_error": 0.8771, "epochs": 3, "seconds": 1.2, "encoder_width": 8},
    ]
    table = trials_markdown(rows, ["encoder_width"])
    assert "| 1 | complete | 0.877 |" in table and "| 0 | complete | 0.900 |" in table  # best first
