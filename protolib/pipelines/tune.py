"""``protolib tune``: a hyperparameter search on a configuration, and the run folder it writes.

:func:`tune` (with the configuration's ``tuning:`` section, ``config.tuning``) makes (or
continues) a run folder, runs the trials, here or on Dask workers (each worker is
:func:`run_trials`), and writes the table, the figures, ``best.json`` and the best configuration
(:func:`write_tuned_config`). What a trial is and how it is scored, the study and the figures are in
:mod:`protolib.tuning`.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import yaml

from ..autoencoder import train_autoencoder
from ..bank import Bank
from ..config import apply_overrides, find_configs_dir, load_config
from ..evaluation import Relevance
from ..plots.tuning import plot_tuning_curves, plot_tuning_scores
from ..runtime import ProtolibInputError, atomic_path, available_cores, plain_name, write_figure, write_json
from ..siamese import load_siamese, train_siamese
from ..tuning import (
    STALE_AFTER_S,
    TuneSettings,
    open_study,
    paired_difference,
    recovery_error,
    recovery_errors,
    require_optuna,
    suggest_hyperparameters,
    trial_overrides,
    trials_markdown,
    trials_table,
)
from .train import autoencoder_settings, run_split, siamese_settings

__all__ = [
    "tune",
    "run_trials",
    "write_tuned_config",
    "config_as_dict",
    "first_trial_hyperparameters",
    "first_trial_differences",
]


# ---------------------------------------------------------------------------------------------
# The first trial: the configuration's own hyperparameters


def first_trial_hyperparameters(config, space: dict) -> dict:
    """The configuration's own values of the searched hyperparameters (the first trial), added to ``choices`` when
    outside them.

    ``space`` (a copy of the search space) is changed in place: a configuration value outside a
    parameter's ``choices`` is added to them; one outside a ``low``/``high`` range is moved to its nearest end.
    """
    ae, si = autoencoder_settings(config), siamese_settings(config)
    values = {
        "encoder_width": ae["model"].channels[0],
        "encoder_depth": len(ae["model"].channels),
        "embedding_size": si["model"].embedding_size,
        "kernel_width": si["target"].sigma,
        "loss": si["loss"].kind,
        "margin": si["loss"].margin,
        "learning_rate": si["training"].learning_rate,
        "batch_systems": si["training"].batch_systems,
    }
    if values["loss"] != "contrastive":
        values.pop("margin")
    base = {}
    for name, value in values.items():
        spec = space.get(name)
        if spec is None:
            continue
        if "choices" in spec:
            if value not in spec["choices"]:
                spec["choices"] = [*spec["choices"], value]
        else:
            value = min(max(float(value), float(spec["low"])), float(spec["high"]))
        base[name] = value
    return base


def first_trial_differences(config, base: dict) -> list[str]:
    """How the first trial ``base`` differs from the configuration (an encoder whose levels do not double, a value
    outside a range)."""
    ae_overrides, si_overrides = trial_overrides(base)
    differences = []
    channels = autoencoder_settings(config)["model"].channels
    if "model" in ae_overrides and ae_overrides["model"]["channels"] != channels:
        differences.append(f"encoder channels {ae_overrides['model']['channels']} instead of {channels}")
    section = config.section("siamese")
    for part, values in si_overrides.items():
        for key, value in values.items():
            own = (section.get(part) or {}).get(key)
            if (
                own is not None
                and own != value
                and not (isinstance(own, (int, float)) and abs(float(own) - float(value)) < 1e-12)
            ):
                differences.append(f"{part}.{key} {value} instead of {own}")
    return differences


# ---------------------------------------------------------------------------------------------
# Running trials


def _ensure_trial_autoencoder(config, bank: Bank, run_dir: Path, overrides: dict, split, device=None) -> Path:
    """The autoencoder of one encoder architecture, trained once per run folder (atomically: parallel workers never see
    half of one)."""
    settings = autoencoder_settings(config, overrides)
    channels = "-".join(str(c) for c in settings["model"].channels)
    path = run_dir / "autoencoders" / f"autoencoder_{channels}.pt"
    if not path.exists():  # two workers may both train it (same seed, same result); each in a folder of its own
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".training-", dir=path.parent))
        try:
            train_autoencoder(bank, scratch / path.name, split=split, progress=False, device=device, **settings)
            history = f"{path.stem}_history.json"
            if (scratch / history).exists():
                os.replace(scratch / history, path.parent / history)
            os.replace(scratch / path.name, path)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return path


def _objective(
    config, bank: Bank, run_dir: Path, settings: TuneSettings, space: dict, relevance, split, top_k: int, device
):
    """The study's objective: train one trial's network, scored (and perhaps pruned) after every epoch; its final
    score."""
    optuna = require_optuna()
    images = bank.load_images(np.concatenate([split.train, split.validation]))  # scored every epoch: read once

    def objective(trial) -> float:
        trial.set_user_attr("heartbeat", time.time())
        params = suggest_hyperparameters(trial, space)
        ae_overrides, si_overrides = trial_overrides(params, settings.epochs)
        siamese = siamese_settings(config, si_overrides)
        trial.set_user_attr("epochs_budget", siamese["training"].epochs)
        autoencoder = _ensure_trial_autoencoder(config, bank, run_dir, ae_overrides, split, device)
        checkpoint = run_dir / "trials" / f"trial_{trial.number:04d}.pt"
        trial.set_user_attr("checkpoint", str(checkpoint))
        curve = []

        def on_epoch(record, model):
            score = recovery_error(model, bank, split, relevance, top_k=top_k, images=images)
            curve.append(score)
            trial.set_user_attr("curve", curve)
            trial.set_user_attr("heartbeat", time.time())
            trial.report(score, step=record["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned(f"recovery error {score:.3f} after epoch {record['epoch']}")

        _train_trial(bank, autoencoder, checkpoint, split, device, on_epoch, siamese)
        return recovery_error(load_siamese(checkpoint, device), bank, split, relevance, top_k=top_k, images=images)

    return objective


def _train_trial(bank: Bank, autoencoder, checkpoint: Path, split, device, on_epoch, siamese: dict) -> None:
    """Train one trial's Siamese network quietly, scored after every epoch by ``on_epoch``; the test systems are never
    looked at."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_siamese(
            bank,
            autoencoder,
            checkpoint,
            split=split,
            progress=False,
            device=device,
            on_epoch=on_epoch,
            test_metrics=False,
            **siamese,
        )


def _scoring(config, bank: Bank, settings: TuneSettings):
    """What every trial is scored with: the configuration's split, its own target similarity (whatever kernel width a
    trial trains with, as :func:`~protolib.pipelines.evaluate.compare_variants` does) and the number of matches."""
    split = run_split(config, bank)
    return (
        split,
        Relevance.fit(siamese_settings(config)["target"], bank, split.train),
        settings.top_k or config.evaluation.top_k,
    )


def _max_epochs(config, settings: TuneSettings) -> int:
    return settings.epochs or siamese_settings(config)["training"].epochs


def config_as_dict(config) -> dict:
    """A :class:`~protolib.config.RunConfig` as the plain dict of its YAML file (``load_config`` of it gives it
    back)."""
    return {
        "name": config.name,
        "bank": asdict(config.bank),
        "simulator": config.simulator.to_dict(),
        "instrument": config.instrument.to_dict(),
        "split": {"fractions": list(config.split.fractions), "seed": config.split.seed},
        **json.loads(json.dumps(config.sections)),
    }


def _fingerprint(config_data: dict, settings: TuneSettings) -> str:
    """What must not change between runs on one folder: every setting except the tuning budget."""
    fixed = {k: v for k, v in config_data.items() if k not in ("name", "tuning")}
    scoring = {"top_k": settings.top_k, "space": settings.search_space}
    return hashlib.sha256(json.dumps([fixed, scoring], sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_trials(
    config_path: str,
    bank_path: str,
    run_dir: str,
    settings: dict,
    n_threads: int | None = None,
    device: str | None = None,
    worker: int = 0,
) -> int:
    """One worker: run trials of the study in ``run_dir`` until it holds ``settings["trials"]`` trials.

    Any number of workers (processes, cluster jobs) may run this on the same ``run_dir`` at once.
    Returns the number of trials added to the study while it ran (by any worker).
    """
    import torch

    require_optuna()
    if n_threads:
        torch.set_num_threads(n_threads)
    settings = TuneSettings(**settings)
    config = load_config(config_path)
    run_dir = Path(run_dir)
    study = open_study(run_dir, settings, load_only=True, worker=worker, max_epochs=_max_epochs(config, settings))
    space = json.loads(study.user_attrs["space"])
    with Bank(bank_path) as bank:
        split, relevance, top_k = _scoring(config, bank, settings)
        objective = _objective(config, bank, run_dir, settings, space, relevance, split, top_k, device)
        before = len(study.trials)
        while (trial := _claim_trial(study, run_dir, settings.trials)) is not None:
            _run_claimed(study, trial, objective)
        return len(study.trials) - before


def _claim_trial(study, run_dir: Path, total: int):
    """The next trial of the study for this worker, or ``None`` when the study holds ``total`` already.

    Counting the trials and asking for one happen under an exclusive lock on the run folder, so parallel
    workers never start more than ``total`` trials between them (Optuna's ``MaxTrialsCallback`` counts only
    after a trial ends: two workers could both start the last one). Written by hand: Optuna has no
    cross-process claim.
    """
    import fcntl

    optuna = require_optuna()
    # not WAITING: the enqueued first trial is claimed by ask()
    states = (
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.PRUNED,
        optuna.trial.TrialState.RUNNING,
        optuna.trial.TrialState.FAIL,
    )
    with open(run_dir / ".claim.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if len(study.get_trials(deepcopy=False, states=states)) >= total:
            return None
        return study.ask()


def _run_claimed(study, trial, objective) -> None:
    """Run ``objective`` on a claimed trial and record how it ended (a ``RuntimeError`` fails the trial only)."""
    optuna = require_optuna()
    try:
        value = objective(trial)
    except optuna.TrialPruned:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    except RuntimeError as error:
        warnings.warn(f"Trial {trial.number} failed: {error}", stacklevel=2)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    except BaseException:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
    else:
        study.tell(trial, value)


# ---------------------------------------------------------------------------------------------
# The run folder


def tune(
    bank_path: str | Path,
    run_dir: str | Path,
    config,
    settings: TuneSettings | None = None,
    *,
    workers: int = 1,
    client=None,
    configs_dir: str | Path | None = None,
    config_name: str = "tuned",
    device: str | None = None,
    progress: bool = True,
    restart_if_changed: bool = False,
) -> dict:
    """What ``protolib tune`` does: search hyperparameters, then write the table, figures and best configuration.

    Arguments:
        bank_path: the bank to tune on (its training and validation systems, split as ``config`` says).
        run_dir: the run folder; an existing one is continued (its trials are kept, ``settings.trials`` is the total).
        config: the base :class:`~protolib.config.RunConfig`: every setting not searched, and the first
            trial (its own hyperparameters, so the search starts from what it would beat).
        settings: trials, epochs, sampler, pruner (default: the configuration's ``tuning:`` section).
        workers: trials run at once in local processes (a Dask ``LocalCluster``); 1 runs them here.
        client: a ``dask.distributed.Client`` of a running cluster: one worker loop per Dask worker.
        configs_dir: where the best configuration goes (default: the repository's ``configs/``).
        config_name: its name (``configs/<config_name>.yaml``, loadable with ``load_config(config_name)``).
        device: where trials train (default: CUDA when present).
        progress: a progress bar of finished trials.
        restart_if_changed: when ``run_dir`` holds trials on another bank (e.g. one rebuilt since) or with other
            settings, move it aside to ``<run_dir>.previous-<time>`` and start afresh, instead of stopping with an
            error.

    A run folder is tied to its bank, configuration, search space and ``top_k`` (a rerun with other ones is
    refused); the number of trials and the epochs per trial may change between runs.

    Returns:
        The contents of ``best.json``: the best trial's number, score and hyperparameters, the
        configuration's own score, counts of complete and pruned trials, and the config file written.
    """
    require_optuna()
    settings = settings or config.tuning
    _check_destination(config_name, configs_dir)
    run_dir, bank_path = Path(run_dir), Path(bank_path)
    identity = _bank_identity(bank_path)
    config_data = config_as_dict(config)
    config_file = _prepare_run_folder(run_dir, bank_path, identity, config, config_data, settings, restart_if_changed)
    max_epochs = _max_epochs(config, settings)
    _start_study(run_dir, config, settings, max_epochs)
    worker_settings = {k: getattr(settings, k) for k in TuneSettings.__dataclass_fields__}
    args = (str(config_file.resolve()), str(bank_path.resolve()), str(run_dir.resolve()), worker_settings)
    if client is None and workers <= 1:
        _run_with_progress(lambda: run_trials(*args, device=device), run_dir, settings, progress)
    else:
        _run_on_dask(args, client, workers, device, run_dir, settings, progress)
    study = open_study(run_dir, settings, load_only=True, max_epochs=max_epochs)
    return _report(
        study,
        run_dir,
        config_data,
        bank_path,
        settings,
        configs_dir or find_configs_dir() or Path("configs"),
        config_name,
        device=device,
    )


def _check_destination(config_name: str, configs_dir: str | Path | None) -> None:
    """Refuse a best-configuration name that is a path, and a ``--configs-dir`` that is a file."""
    plain_name(config_name, "--config-name", "the file goes to --configs-dir")
    if configs_dir is not None and Path(configs_dir).exists() and not Path(configs_dir).is_dir():
        raise ProtolibInputError(f"{configs_dir} is a file; --configs-dir must be a folder.")


def _bank_identity(bank_path: Path) -> dict:
    """The bank's identity (shape, seed, creation time), checked before the run folder is made."""
    with Bank(bank_path) as bank:
        identity = {k: bank.identity[k] for k in ("shape", "seed", "created")}
        if bank.n_systems < 3:
            raise ProtolibInputError(
                f"{bank_path} has {bank.n_systems} system(s); tuning needs systems to train, validate and test on."
            )
    return identity


def _prepare_run_folder(
    run_dir: Path,
    bank_path: Path,
    identity: dict,
    config,
    config_data: dict,
    settings: TuneSettings,
    restart_if_changed: bool,
) -> Path:
    """Make or check the run folder (``run.json`` ties it to its bank and settings); write ``config.yaml`` and return
    its path."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = _fingerprint(config_data, settings)
    stamp = run_dir / "run.json"
    run_info = {
        "bank": str(bank_path.resolve()),
        "bank_identity": json.loads(json.dumps(identity)),
        "config": str(config.path),
        "fingerprint": fingerprint,
    }
    problem = _run_folder_problem(run_dir, stamp, run_info)
    if problem and not restart_if_changed:
        raise ProtolibInputError(problem)
    if problem:  # kept, not deleted
        run_dir.rename(run_dir.with_name(f"{run_dir.name}.previous-{time.strftime('%Y%m%d-%H%M%S')}"))
        run_dir.mkdir(parents=True)
    with atomic_path(stamp) as tmp:  # no final newline, as before (write_json would add one)
        tmp.write_text(json.dumps(run_info, indent=2))
    config_file = run_dir / "config.yaml"  # the configuration as given (overrides included): what every worker reads
    with atomic_path(config_file) as tmp:
        tmp.write_text(yaml.safe_dump(config_data, sort_keys=False))
    return config_file


def _run_folder_problem(run_dir: Path, stamp: Path, run_info: dict) -> str | None:
    """Why the run folder cannot be continued with ``run_info`` (its trials are of another bank, or other settings),
    from its ``run.json`` ``stamp``; ``None`` when it can (or is new)."""
    try:
        earlier = json.loads(stamp.read_text()) if stamp.exists() else None
    except ValueError:
        raise ProtolibInputError(
            f"{stamp} is damaged (not JSON); give a new --out, or delete the run folder to start afresh."
        ) from None
    if earlier and earlier.get("bank_identity") != run_info["bank_identity"]:
        return f"{run_dir} holds trials on another bank ({earlier.get('bank')}); give a new --out for this bank."
    if earlier and earlier.get("fingerprint") != run_info["fingerprint"]:
        return (
            f"{run_dir} holds trials made with other settings (configuration, search space or top_k changed since); "
            "their scores would not compare. Give a new --out, or go back to those settings."
        )
    return None


def _start_study(run_dir: Path, config, settings: TuneSettings, max_epochs: int) -> None:
    """Create the study (its first trial the configuration's own hyperparameters), or fail the trials a killed worker
    left running."""
    optuna = require_optuna()
    study = open_study(run_dir, settings, max_epochs=max_epochs)
    space = json.loads(json.dumps(settings.search_space))
    if not study.trials:
        base = first_trial_hyperparameters(config, space)
        differences = first_trial_differences(config, base)
        if differences:
            warnings.warn(
                f"The first trial is the configuration {config.name} as near as the search space allows: "
                + "; ".join(differences)
                + ".",
                stacklevel=3,
            )
        study.set_user_attr("space", json.dumps(space))
        study.set_user_attr("base_config", str(config.path))
        origin = f"configuration {config.name}" + (" (nearest: " + "; ".join(differences) + ")" if differences else "")
        study.enqueue_trial(base, user_attrs={"origin": origin})
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        last_sign = trial.user_attrs.get("heartbeat", trial.datetime_start.timestamp() if trial.datetime_start else 0.0)
        if time.time() - last_sign > STALE_AFTER_S:  # left running by a killed worker, not by one still at work
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)


def _run_with_progress(work, run_dir: Path, settings: TuneSettings, progress: bool) -> None:
    """Run ``work()`` with a progress bar of finished trials, read from the journal every two seconds."""
    import threading

    from tqdm.auto import tqdm

    done = threading.Event()
    bar = tqdm(total=settings.trials, desc="Tuning", unit="trial", disable=not progress)

    def watch():
        while not done.wait(2.0):
            _update_bar(bar, run_dir, settings)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        work()
    finally:
        done.set()
        watcher.join()
        _update_bar(bar, run_dir, settings)
        bar.close()


def _update_bar(bar, run_dir: Path, settings: TuneSettings) -> None:
    optuna = require_optuna()
    try:
        trials = open_study(run_dir, settings, load_only=True).get_trials(deepcopy=False)
    except Exception:  # the journal is being written: try at the next tick
        return
    finished = [t for t in trials if t.state.is_finished()]
    bar.n = len(finished)
    complete = [t.value for t in finished if t.state == optuna.trial.TrialState.COMPLETE]
    bar.set_postfix(
        best=f"{min(complete):.3f}" if complete else "-",
        pruned=sum(t.state == optuna.trial.TrialState.PRUNED for t in finished),
    )
    bar.refresh()


def _run_on_dask(args, client, workers: int, device, run_dir: Path, settings: TuneSettings, progress: bool) -> None:
    """One :func:`run_trials` loop per Dask worker: of ``client``'s cluster, or of a local one of ``workers``
    processes."""
    try:
        from dask.distributed import Client, LocalCluster, wait
    except ImportError:
        raise ProtolibInputError(
            "Parallel tuning needs Dask: pip install 'protolib[cluster]' (dask[distributed])."
        ) from None
    own_cluster = None
    if client is None:
        own_cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(own_cluster)
    try:
        n = len(client.scheduler_info()["workers"]) if own_cluster is None else workers
        threads = max(1, available_cores() // n) if own_cluster is not None else None
        futures = [
            client.submit(run_trials, *args, n_threads=threads, device=device, worker=k, pure=False)
            for k in range(max(1, n))
        ]
        _run_with_progress(lambda: wait(futures), run_dir, settings, progress)
        for future in futures:
            future.result()
    finally:
        if own_cluster is not None:
            client.close()
            own_cluster.close()


# ---------------------------------------------------------------------------------------------
# Reports


def write_tuned_config(
    path: str | Path, config_data: dict, bank: Bank, params: dict, *, epochs: int | None, header: str
) -> Path:
    """Write the base configuration (:func:`config_as_dict`) with the tuned hyperparameters, the epochs the trial
    trained with and the bank it was tuned on, as a YAML configuration."""
    ae_overrides, si_overrides = trial_overrides(params, epochs)
    data = apply_overrides(config_data, {"autoencoder": ae_overrides, "siamese": si_overrides})  # a new dict
    data["name"] = Path(path).stem
    data["bank"] = {
        "n_systems": bank.n_systems,
        "n_projections": bank.n_projections,
        "seed": int(bank.attrs.get("seed", data["bank"]["seed"])),
    }
    simulator = bank.simulator_config
    if simulator is not None:
        data["simulator"] = simulator.to_dict()
        data["instrument"] = bank.instrument.to_dict()
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"# {line}\n" for line in header.splitlines()) + yaml.safe_dump(data, sort_keys=False))
    return Path(path)


def _compare_with_configuration(study, best, config, bank_path: Path, settings: TuneSettings, device=None) -> dict:
    """The best trial's score minus the configuration's own (trial 0), with a paired bootstrap interval over validation
    systems."""
    with Bank(bank_path) as bank:
        split, relevance, top_k = _scoring(config, bank, settings)
        errors = [
            recovery_errors(load_siamese(t.user_attrs["checkpoint"], device), bank, split, relevance, top_k=top_k)
            for t in (best, study.trials[0])
        ]
    comparison = paired_difference(errors[0][0], errors[1][0], errors[0][1])
    comparison["beyond_validation_noise"] = comparison["interval_95"][1] < 0
    return comparison


def _write_trials(run_dir: Path, rows: list[dict], names: list[str]) -> None:
    """Write the table of trials: ``trials.csv`` (every column) and ``trials.md`` (the searched ``names``)."""
    with atomic_path(run_dir / "trials.csv") as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["trial"])
        writer.writeheader()
        writer.writerows(rows)
    with atomic_path(run_dir / "trials.md") as tmp:
        tmp.write_text(trials_markdown(rows, names) + "\n")


def _tuned_header(base: str, best, summary: dict, own: float | None, bank_path: Path, run_dir: Path) -> str:
    """The header of the tuned configuration's file: when and from what it was tuned, and its score beside the base
    configuration's own."""
    return (
        f"Tuned by `protolib tune` on {datetime.date.today().isoformat()} from {base}: trial {best.number} "
        "of "
        f"{summary['trials']} ({summary['pruned']} pruned),\nvalidation recovery error {best.value:.3f}"
        + (f" (the base configuration's own: {own:.3f})" if own is not None else "")
        + f", on bank {bank_path.name}.\nRun folder: {run_dir}"
    )


def _write_best_config(path: Path, config_data: dict, bank_path: Path, best, epochs, header: str) -> Path:
    """Write the best trial's configuration (:func:`write_tuned_config`) for the bank at ``bank_path``."""
    with Bank(bank_path) as bank:
        return write_tuned_config(path, config_data, bank, best.params, epochs=epochs, header=header)


def _counts(rows: list[dict], own: float | None) -> dict:
    """``best.json``'s counts of trials (complete, pruned, failed), the configuration's own score, and what the score
    is."""
    return {
        "trials": len(rows),
        "complete": sum(r["state"] == "complete" for r in rows),
        "pruned": sum(r["state"] == "pruned" for r in rows),
        "failed": sum(r["state"] == "fail" for r in rows),
        "configuration_score": own,
        "score": "validation recovery error "
        "(mean RMS error of the top-k matches' median / prior spread over the target-similarity parameters; lower is "
        "better)",
    }


def _report(
    study,
    run_dir: Path,
    config_data: dict,
    bank_path: Path,
    settings: TuneSettings,
    configs_dir: Path,
    config_name: str,
    device=None,
) -> dict:
    """Write ``trials.csv``, ``trials.md``, the figures, the best configuration and ``best.json``; return
    ``best.json``'s contents."""
    config = load_config(run_dir / "config.yaml")
    rows = trials_table(study)
    space = json.loads(study.user_attrs["space"])
    _write_trials(run_dir, rows, list(space))
    own = next((r["recovery_error"] for r in rows if r["trial"] == 0 and r["state"] == "complete"), None)
    write_figure(plot_tuning_scores(rows, space, reference=own), run_dir / "scores.png", dpi=110)
    write_figure(plot_tuning_curves(study), run_dir / "learning_curves.png", dpi=110)
    summary = _counts(rows, own)
    if summary["complete"]:
        best = study.best_trial
        header = _tuned_header(config.name, best, summary, own, bank_path, run_dir)
        epochs = best.user_attrs.get("epochs_budget", settings.epochs)
        written = _write_best_config(
            Path(configs_dir) / f"{config_name}.yaml", config_data, bank_path, best, epochs, header
        )
        summary.update(
            best_trial=best.number,
            best_score=best.value,
            best_hyperparameters=best.params,
            best_checkpoint=best.user_attrs.get("checkpoint"),
            config_file=str(written),
        )
        if own is not None and best.number != 0:
            summary["best_minus_configuration"] = _compare_with_configuration(
                study, best, config, bank_path, settings, device
            )
    write_json(json.loads(json.dumps(summary, default=str)), run_dir / "best.json")
    return summary
