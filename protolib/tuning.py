"""Hyperparameter search for the networks (``protolib tune``), scored by parameter recovery.

Each **trial** trains one Siamese network (on an autoencoder of the trial's encoder width and depth,
trained once per architecture and shared between trials) with hyperparameters drawn by Optuna, and
is scored by what the pipeline is for: the **validation recovery error**, the mean over the
parameters of the target similarity of the RMS error of the top-k matches' median, in units of the
prior's spread (:func:`recovery_error`; the validation systems matched against the training systems,
exactly as :mod:`protolib.evaluation` scores the test systems). Lower is better; 0 is perfect, about
1.4 is what random matches give. The test systems are never looked at.

The score is also taken after every epoch, and poor trials are stopped early by asynchronous
successive halving (ASHA, Li et al. 2020; Optuna's ``SuccessiveHalvingPruner``) or Hyperband: a
trial continues past an epoch "rung" (``min_epochs`` x ``reduction_factor``^n) only when it is among the
best 1/``reduction_factor`` of the trials that reached that rung, and while fewer than
2 x ``reduction_factor`` trials have reached it, only when it is the best of them. That is greedy:
on the default bank 21 of 24 trials stopped within 9 epochs. Raise ``min_epochs`` when early epochs
say little about the final score.

Why Optuna rather than Ray Tune (which the thesis used): Optuna is a light pure-Python package that
runs in-process on a laptop, its ask/tell study lives in one journal file, so trials run in parallel
by simply pointing several workers at that file: the same Dask workers (local processes, or a
cluster through ``--scheduler``) that build banks in parallel (:mod:`protolib.cluster`). Ray Tune
would bring its own cluster runtime next to Dask and hundreds of megabytes of dependencies.

The run folder holds everything: ``study.journal`` (the Optuna study: rerun with a larger
``--trials`` to add trials), ``trials.csv`` and ``trials.md`` (the table), ``scores.png`` (score
against each hyperparameter), ``learning_curves.png`` (score per epoch, pruned trials ending early),
``best.json``, one Siamese checkpoint per trial in ``trials/`` and the shared autoencoders in
``autoencoders/``. The best configuration is written as a YAML config to ``configs/``.

References:
    Akiba et al. (2019), "Optuna: a next-generation hyperparameter optimization framework", KDD.
    Li et al. (2020), "A system for massively parallel hyperparameter tuning", MLSys (ASHA).
"""

from __future__ import annotations

import csv
import datetime
import json
import re
import math
import hashlib
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from .bank import Bank
from .runtime import ProtolibInputError, atomic_path, write_figure, write_json

__all__ = ["SEARCH_SPACE", "TuneSettings", "tune_settings", "recovery_error", "recovery_errors", "paired_difference", "trial_overrides", "tune", "load_study", "trials_table",
           "plot_scores", "plot_learning_curves", "plot_tuning", "write_tuned_config"]

SEARCH_SPACE = {
    "encoder_width": {"choices": [4, 8, 16]},  # feature maps of the encoder's first level (doubling at each level)
    "encoder_depth": {"choices": [2, 3]},  # levels of the encoder; each halves the image
    "embedding_size": {"choices": [8, 16, 32, 64]},  # length of the unit embedding
    "kernel_width": {"low": 0.3, "high": 3.0, "log": True},  # sigma of the target similarity exp(-d^2 / 2 sigma^2)
    "loss": {"choices": ["mse", "contrastive", "log_ratio"]},  # the metric-learning loss
    "margin": {"low": 0.1, "high": 1.0},  # the contrastive loss's margin (drawn for that loss only)
    "learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},  # AdamW's starting step size
    "batch_systems": {"choices": [4, 8, 16, 32]},  # systems per batch (all their projections' pairs compared)
}
"""The hyperparameters searched, with their ranges (``choices``, or ``low``/``high`` with ``log`` for a log-uniform draw).

A configuration's ``tuning: {space: {...}}`` section replaces any entry (e.g. ``encoder_depth: {choices: [2, 3, 4]}``
for 64 px images)."""

PRUNERS = ("asha", "hyperband", "none")
SAMPLERS = ("tpe", "random")


@dataclass
class TuneSettings:
    """How a search runs: the ``tuning:`` section of a configuration, and ``protolib tune``'s options."""

    trials: int = 20  # trials in the run folder in all (a rerun with more adds trials)
    epochs: int | None = None  # most epochs per trial (None: the siamese section's)
    sampler: str = "tpe"  # "tpe" (Optuna's default Bayesian sampler) or "random" (the thesis's random search)
    pruner: str = "asha"  # "asha" (successive halving), "hyperband" or "none"
    reduction_factor: int = 3  # ASHA/Hyperband: keep the best 1/reduction_factor at each rung
    min_epochs: int = 1  # ASHA/Hyperband: the first rung
    top_k: int | None = None  # matches per target in the score (None: the evaluation section's top_k)
    seed: int = 0  # the sampler's seed (the trials' training seed is the configuration's)
    space: dict = field(default_factory=dict)  # replacements of SEARCH_SPACE entries

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ProtolibInputError(f"Tuning sampler must be one of {SAMPLERS}, got {self.sampler!r}.")
        if self.pruner not in PRUNERS:
            raise ProtolibInputError(f"Tuning pruner must be one of {PRUNERS}, got {self.pruner!r}.")
        if self.trials < 1 or (self.epochs is not None and self.epochs < 1):
            raise ProtolibInputError(f"Tuning needs at least one trial and one epoch (got trials={self.trials}, epochs={self.epochs}).")
        unknown = set(self.space) - set(SEARCH_SPACE)
        if unknown:
            raise ProtolibInputError(f"Unknown hyperparameter(s) {sorted(unknown)} in tuning.space; known ones are {sorted(SEARCH_SPACE)}.")
        if self.reduction_factor < 2 or self.min_epochs < 1:
            raise ProtolibInputError(f"Tuning needs reduction_factor >= 2 and min_epochs >= 1 (got {self.reduction_factor}, {self.min_epochs}).")
        for name, spec in self.space.items():
            ranged = isinstance(spec, dict) and {"low", "high"} <= set(spec) and float(spec["low"]) < float(spec["high"])
            if not (isinstance(spec, dict) and (spec.get("choices") or ranged)):
                raise ProtolibInputError(f"tuning.space.{name} must be {{choices: [...]}} or {{low: L, high: H}} with L < H (log: true for a "
                                         f"log-uniform draw); got {spec!r}.")

    @property
    def search_space(self) -> dict:
        return {**SEARCH_SPACE, **self.space}


def tune_settings(config, overrides: dict | None = None) -> TuneSettings:
    """The configuration's ``tuning:`` section (defaults where silent), with ``overrides`` (``None`` values ignored)."""
    section = config.section("tuning") if config is not None else {}
    section.update({k: v for k, v in (overrides or {}).items() if v is not None})
    known = set(TuneSettings.__dataclass_fields__)
    if set(section) - known:
        raise ProtolibInputError(f"{getattr(config, 'path', 'tuning settings')} [tuning]: unknown setting(s) {sorted(set(section) - known)}; "
                                 f"known ones are {sorted(known)}.")
    return TuneSettings(**section)


# ---------------------------------------------------------------------------------------------
# The objective


def recovery_errors(model, bank: Bank, split, relevance, *, top_k: int, parameters=None, images: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Per validation image, the scaled error of the top-``top_k`` matches' median for each parameter.

    ``images``: the training then validation systems' images ``(n, P, H, W)`` when already in memory
    (a search scores every epoch of every trial on the same images).

    Returns:
        ``errors (T, K)``: median minus truth in prior spreads (dex / spread for log-scaled parameters),
        one row per projection of every validation system, and ``systems (T,)``, each row's system.
    """
    from .evaluation import _scaled_values, rank_targets, score_ranking, siamese_method

    if not len(split.validation):
        raise ProtolibInputError("Tuning scores trials on validation systems, and the split has none; give the split a validation fraction.")
    names = list(parameters or relevance.definition.parameters)
    method = siamese_method(model)
    systems = np.concatenate([split.train, split.validation])
    vectors = np.zeros((bank.n_systems * bank.n_projections, model.network.head[-1].out_features), dtype=np.float32)
    if images is None:
        images = bank.load_images(systems)
    rows = (systems[:, None] * bank.n_projections + np.arange(bank.n_projections)).ravel()
    vectors[rows] = method.embed(images.reshape(-1, bank.image_size, bank.image_size))
    ranking = rank_targets(method, vectors, bank, relevance, split.validation, split.train)
    scored = score_ranking(ranking, bank, relevance, top_k=top_k, parameters=names)
    values, _ = _scaled_values(bank, names)
    spread = values[rows[: len(split.train) * bank.n_projections]].std(0)  # the prior's spread: over the training images
    spread = np.where(spread > 0, spread, 1.0)
    errors = np.stack([scored.median[n] - scored.truth[n] for n in names], axis=1) / spread
    return errors, ranking.target_system


def recovery_error(model, bank: Bank, split, relevance, *, top_k: int, parameters=None, images: np.ndarray | None = None) -> float:
    """Validation recovery error of a Siamese ``model``: lower is better.

    Every projection of every validation system is matched against the training systems' images;
    for each parameter in ``relevance``'s target similarity (or ``parameters``) the RMS error of the
    top-``top_k`` matches' median against the truth is divided by the prior's spread (the training
    images' standard deviation, in dex for log-scaled parameters), and these are averaged.
    """
    errors, _ = recovery_errors(model, bank, split, relevance, top_k=top_k, parameters=parameters, images=images)
    return _score(errors)


def _score(errors: np.ndarray) -> float:
    return float(np.sqrt((errors**2).mean(0)).mean())


def paired_difference(errors_a: np.ndarray, errors_b: np.ndarray, systems: np.ndarray, *, n_boot: int = 2000, seed: int = 0) -> dict:
    """Score of ``a`` minus score of ``b`` on the same validation images, with a 95% bootstrap interval over systems.

    Systems (all their projections together) are resampled with replacement, the same for both, so the
    interval says whether ``a`` beats ``b`` beyond the luck of which systems are in the validation set.
    When ``a`` is the best of many trials chosen on these same systems, the interval is optimistic
    (it ignores the selection): "not beyond the noise" is then a safe verdict, "beyond" a hopeful one.
    """
    unique, inverse = np.unique(systems, return_inverse=True)
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(inverse == k) for k in range(len(unique))]
    draws = []
    for _ in range(n_boot):
        rows = np.concatenate([members[k] for k in rng.integers(0, len(unique), len(unique))])
        draws.append(_score(errors_a[rows]) - _score(errors_b[rows]))
    low, high = np.percentile(draws, [2.5, 97.5])
    return {"difference": _score(errors_a) - _score(errors_b), "interval_95": [float(low), float(high)], "systems": int(len(unique))}


def _suggest(trial, name: str, spec: dict):
    if "choices" in spec:
        return trial.suggest_categorical(name, list(spec["choices"]))
    return trial.suggest_float(name, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log", False)))


def suggest_hyperparameters(trial, space: dict) -> dict:
    """Draw one trial's hyperparameters from ``space``; the margin only for the contrastive loss."""
    params = {name: _suggest(trial, name, spec) for name, spec in space.items() if name != "margin"}
    if params.get("loss") == "contrastive" and "margin" in space:
        params["margin"] = _suggest(trial, "margin", space["margin"])
    return params


def trial_overrides(params: dict, epochs: int | None = None) -> tuple[dict, dict]:
    """``(autoencoder overrides, siamese overrides)`` of the configuration for one trial's hyperparameters."""
    autoencoder, siamese = {}, {}
    if "encoder_width" in params or "encoder_depth" in params:
        width, depth = int(params.get("encoder_width", 8)), int(params.get("encoder_depth", 3))
        autoencoder["model"] = {"channels": [width * 2**level for level in range(depth)]}
    if "embedding_size" in params:
        siamese["model"] = {"embedding_size": int(params["embedding_size"])}
    if "kernel_width" in params:
        siamese["target"] = {"sigma": float(params["kernel_width"])}
    if "loss" in params:
        siamese["loss"] = {"kind": params["loss"], **({"margin": float(params["margin"])} if "margin" in params else {})}
    training = {k: v for k, v in (("learning_rate", params.get("learning_rate")), ("batch_systems", params.get("batch_systems")),
                                  ("epochs", epochs)) if v is not None}
    if training:
        siamese["training"] = training
    return autoencoder, siamese


def _base_hyperparameters(config, space: dict) -> dict:
    """The configuration's own values of the searched hyperparameters (the first trial), added to ``choices`` when outside them."""
    from .pipelines.train import autoencoder_settings, siamese_settings

    ae, si = autoencoder_settings(config), siamese_settings(config)
    values = {"encoder_width": ae["model"].channels[0], "encoder_depth": len(ae["model"].channels),
              "embedding_size": si["model"].embedding_size, "kernel_width": si["target"].sigma, "loss": si["loss"].kind,
              "margin": si["loss"].margin, "learning_rate": si["training"].learning_rate, "batch_systems": si["training"].batch_systems}
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


def _base_differences(config, base: dict) -> list[str]:
    """How the first trial differs from the configuration (an encoder whose levels do not double, a value outside a range)."""
    from .pipelines.train import autoencoder_settings

    ae_overrides, si_overrides = trial_overrides(base)
    differences = []
    channels = autoencoder_settings(config)["model"].channels
    if "model" in ae_overrides and ae_overrides["model"]["channels"] != channels:
        differences.append(f"encoder channels {ae_overrides['model']['channels']} instead of {channels}")
    section = config.section("siamese")
    for part, values in si_overrides.items():
        for key, value in values.items():
            own = (section.get(part) or {}).get(key)
            if own is not None and own != value and not (isinstance(own, (int, float)) and abs(float(own) - float(value)) < 1e-12):
                differences.append(f"{part}.{key} {value} instead of {own}")
    return differences


# ---------------------------------------------------------------------------------------------
# Running trials


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ProtolibInputError("Tuning needs Optuna (4.0 or later): pip install 'protolib[tune]'.") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _study(run_dir: Path, settings: TuneSettings, *, load_only: bool = False, worker: int = 0, max_epochs: int | None = None):
    optuna = _optuna()
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = run_dir / "study.journal"
    try:
        storage = JournalStorage(JournalFileBackend(str(journal)))
    except (ValueError, KeyError, TypeError) as error:
        raise ProtolibInputError(f"{journal} is damaged ({str(error)[:100]}); give a new --out, or delete the run folder to "
                                 "start afresh.") from None
    existing = next((len(storage.get_all_trials(s._study_id, deepcopy=False)) for s in storage.get_all_studies() if s.study_name == "protolib"), 0)
    # parallel workers, and each rerun that adds trials, must not draw the same hyperparameters again
    seed = settings.seed + 7919 * worker + 104729 * existing
    sampler = (optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, settings.trials // 3)), constant_liar=True)
               if settings.sampler == "tpe" else optuna.samplers.RandomSampler(seed=seed))
    if settings.pruner == "asha":
        pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=settings.min_epochs, reduction_factor=settings.reduction_factor)
    elif settings.pruner == "hyperband":
        pruner = optuna.pruners.HyperbandPruner(min_resource=settings.min_epochs, max_resource=settings.epochs or max_epochs or "auto",
                                                reduction_factor=settings.reduction_factor)
    else:
        pruner = optuna.pruners.NopPruner()
    if load_only:
        return optuna.load_study(study_name="protolib", storage=storage, sampler=sampler, pruner=pruner)
    return optuna.create_study(study_name="protolib", storage=storage, sampler=sampler, pruner=pruner, direction="minimize",
                               load_if_exists=True)


def _ensure_trial_autoencoder(config, bank: Bank, run_dir: Path, overrides: dict, split, device=None) -> Path:
    """The autoencoder of one encoder architecture, trained once per run folder (atomically: parallel workers never see half of one)."""
    from .autoencoder import train_autoencoder
    from .pipelines.train import autoencoder_settings

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


def _objective(config, bank: Bank, run_dir: Path, settings: TuneSettings, space: dict, relevance, split, top_k: int, device):
    optuna = _optuna()
    from .pipelines.train import siamese_settings
    from .siamese import train_siamese

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

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            train_siamese(bank, autoencoder, checkpoint, split=split, progress=False, device=device, on_epoch=on_epoch,
                          test_metrics=False, **siamese)  # the test systems are never looked at
        from .siamese import load_siamese

        return recovery_error(load_siamese(checkpoint, device), bank, split, relevance, top_k=top_k, images=images)

    return objective


def _scoring(config, bank: Bank, settings: TuneSettings):
    """What every trial is scored with: the configuration's split, its own target similarity (whatever kernel width a
    trial trains with, as :func:`~protolib.evaluation.compare_variants` does) and the number of matches."""
    from .evaluation import Relevance, evaluation_settings
    from .pipelines.train import run_split, siamese_settings
    from .normalise import ParameterNormaliser

    split = run_split(config, bank)
    target = siamese_settings(config)["target"]
    normaliser = ParameterNormaliser(list(target.parameters), target.normalisation).fit(bank.parameter_table(list(target.parameters))[split.train])
    return split, Relevance(target, normaliser), settings.top_k or evaluation_settings(config).top_k


STALE_AFTER_S = 3600.0
"""A RUNNING trial without a sign of life (an epoch scored) for this long is taken as left by a killed worker."""


def _max_epochs(config, settings: TuneSettings) -> int:
    from .pipelines.train import siamese_settings

    return settings.epochs or siamese_settings(config)["training"].epochs


def config_as_dict(config) -> dict:
    """A :class:`~protolib.config.RunConfig` as the plain dict of its YAML file (``load_config`` of it gives it back)."""
    from dataclasses import asdict

    return {"name": config.name, "bank": asdict(config.bank), "simulator": config.simulator.to_dict(), "instrument": config.instrument.to_dict(),
            "split": {"fractions": list(config.split.fractions), "seed": config.split.seed}, **json.loads(json.dumps(config.sections))}


def _fingerprint(config_data: dict, settings: TuneSettings) -> str:
    """What must not change between runs on one folder: every setting except the tuning budget."""
    fixed = {k: v for k, v in config_data.items() if k not in ("name", "tuning")}
    scoring = {"top_k": settings.top_k, "space": settings.search_space}
    return hashlib.sha256(json.dumps([fixed, scoring], sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_trials(config_path: str, bank_path: str, run_dir: str, settings: dict, n_threads: int | None = None, device: str | None = None,
               worker: int = 0) -> int:
    """One worker: run trials of the study in ``run_dir`` until it holds ``settings["trials"]`` trials.

    Any number of workers (processes, cluster jobs) may run this on the same ``run_dir`` at once.
    Returns the number of trials added to the study while it ran (by any worker).
    """
    import torch

    from .config import load_config

    optuna = _optuna()
    from optuna.study import MaxTrialsCallback

    if n_threads:
        torch.set_num_threads(n_threads)
    settings = TuneSettings(**settings)
    config = load_config(config_path)
    run_dir = Path(run_dir)
    study = _study(run_dir, settings, load_only=True, worker=worker, max_epochs=_max_epochs(config, settings))
    space = json.loads(study.user_attrs["space"])
    with Bank(bank_path) as bank:
        split, relevance, top_k = _scoring(config, bank, settings)
        objective = _objective(config, bank, run_dir, settings, space, relevance, split, top_k, device)
        before = len(study.trials)
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING,
                  optuna.trial.TrialState.FAIL)  # not WAITING: the enqueued first trial is run by these
        remaining = settings.trials - len(study.get_trials(deepcopy=False, states=states))
        if remaining > 0:
            study.optimize(objective, n_trials=remaining, callbacks=[MaxTrialsCallback(settings.trials, states=states)], catch=(RuntimeError,))
        return len(study.trials) - before


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
            settings, move it aside to ``<run_dir>.previous-<time>`` and start afresh, instead of stopping with an error.

    A run folder is tied to its bank, configuration, search space and ``top_k`` (a rerun with other ones is
    refused); the number of trials and the epochs per trial may change between runs.

    Returns:
        The contents of ``best.json``: the best trial's number, score and hyperparameters, the
        configuration's own score, counts of complete and pruned trials, and the config file written.
    """
    from .config import find_configs_dir

    optuna = _optuna()
    settings = settings or tune_settings(config)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", config_name or "") or ".." in config_name:
        raise ProtolibInputError(f"--config-name {config_name!r}: give a plain name (letters, digits, '_', '-', '.'), not a path; "
                                 "the file goes to --configs-dir.")
    if configs_dir is not None and Path(configs_dir).exists() and not Path(configs_dir).is_dir():
        raise ProtolibInputError(f"{configs_dir} is a file; --configs-dir must be a folder.")
    run_dir = Path(run_dir)
    bank_path = Path(bank_path)
    with Bank(bank_path) as bank:  # opened (and checked) before the run folder is made
        identity = {k: bank.identity[k] for k in ("shape", "seed", "created")}
        if bank.n_systems < 3:
            raise ProtolibInputError(f"{bank_path} has {bank.n_systems} system(s); tuning needs systems to train, validate and test on.")
    run_dir.mkdir(parents=True, exist_ok=True)
    config_data = config_as_dict(config)
    fingerprint = _fingerprint(config_data, settings)
    stamp = run_dir / "run.json"
    run_info = {"bank": str(bank_path.resolve()), "bank_identity": json.loads(json.dumps(identity)), "config": str(config.path),
                "fingerprint": fingerprint}
    try:
        earlier = json.loads(stamp.read_text()) if stamp.exists() else None
    except ValueError:
        raise ProtolibInputError(f"{stamp} is damaged (not JSON); give a new --out, or delete the run folder to start afresh.") from None
    problem = None
    if earlier and earlier.get("bank_identity") != run_info["bank_identity"]:
        problem = f"{run_dir} holds trials on another bank ({earlier.get('bank')}); give a new --out for this bank."
    elif earlier and earlier.get("fingerprint") != fingerprint:
        problem = (f"{run_dir} holds trials made with other settings (configuration, search space or top_k changed since); "
                   "their scores would not compare. Give a new --out, or go back to those settings.")
    if problem and not restart_if_changed:
        raise ProtolibInputError(problem)
    if problem:  # kept, not deleted
        run_dir.rename(run_dir.with_name(f"{run_dir.name}.previous-{time.strftime('%Y%m%d-%H%M%S')}"))
        run_dir.mkdir(parents=True)
    with atomic_path(stamp) as tmp:
        tmp.write_text(json.dumps(run_info, indent=2))
    config_file = run_dir / "config.yaml"  # the configuration as given (overrides included): what every worker reads
    with atomic_path(config_file) as tmp:
        tmp.write_text(yaml.safe_dump(config_data, sort_keys=False))
    max_epochs = _max_epochs(config, settings)
    study = _study(run_dir, settings, max_epochs=max_epochs)
    space = json.loads(json.dumps(settings.search_space))
    if not study.trials:
        base = _base_hyperparameters(config, space)
        differences = _base_differences(config, base)
        if differences:
            warnings.warn(f"The first trial is the configuration {config.name} as near as the search space allows: "
                          + "; ".join(differences) + ".", stacklevel=2)
        study.set_user_attr("space", json.dumps(space))
        study.set_user_attr("base_config", str(config.path))
        origin = f"configuration {config.name}" + (" (nearest: " + "; ".join(differences) + ")" if differences else "")
        study.enqueue_trial(base, user_attrs={"origin": origin})
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        last_sign = trial.user_attrs.get("heartbeat", trial.datetime_start.timestamp() if trial.datetime_start else 0.0)
        if time.time() - last_sign > STALE_AFTER_S:  # left running by a killed worker, not by one still at work
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    worker_settings = {k: getattr(settings, k) for k in TuneSettings.__dataclass_fields__}
    args = (str(config_file.resolve()), str(bank_path.resolve()), str(run_dir.resolve()), worker_settings)
    if client is None and workers <= 1:
        _run_with_progress(lambda: run_trials(*args, device=device), run_dir, settings, progress)
    else:
        _run_on_dask(args, client, workers, device, run_dir, settings, progress)
    study = _study(run_dir, settings, load_only=True, max_epochs=max_epochs)
    return _report(study, run_dir, config_data, bank_path, settings, configs_dir or find_configs_dir() or Path("configs"), config_name,
                   device=device)


def _run_with_progress(work, run_dir: Path, settings: TuneSettings, progress: bool) -> None:
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
    optuna = _optuna()
    try:
        trials = _study(run_dir, settings, load_only=True).get_trials(deepcopy=False)
    except Exception:  # the journal is being written: try at the next tick
        return
    finished = [t for t in trials if t.state.is_finished()]
    bar.n = len(finished)
    complete = [t.value for t in finished if t.state == optuna.trial.TrialState.COMPLETE]
    bar.set_postfix(best=f"{min(complete):.3f}" if complete else "-", pruned=sum(t.state == optuna.trial.TrialState.PRUNED for t in finished))
    bar.refresh()


def _run_on_dask(args, client, workers: int, device, run_dir: Path, settings: TuneSettings, progress: bool) -> None:
    try:
        from dask.distributed import Client, LocalCluster, wait
    except ImportError:
        raise ProtolibInputError("Parallel tuning needs Dask: pip install 'protolib[cluster]' (dask[distributed]).") from None
    own_cluster = None
    if client is None:
        own_cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(own_cluster)
    try:
        n = len(client.scheduler_info()["workers"]) if own_cluster is None else workers
        threads = max(1, (os.cpu_count() or 1) // n) if own_cluster is not None else None
        futures = [client.submit(run_trials, *args, n_threads=threads, device=device, worker=k, pure=False)
                   for k in range(max(1, n))]
        _run_with_progress(lambda: wait(futures), run_dir, settings, progress)
        for future in futures:
            future.result()
    finally:
        if own_cluster is not None:
            client.close()
            own_cluster.close()


# ---------------------------------------------------------------------------------------------
# Reports


def trials_table(study) -> list[dict]:
    """One row per trial: number, state, score, epochs trained, seconds, each hyperparameter, checkpoint."""
    rows = []
    names = list(json.loads(study.user_attrs.get("space", "{}"))) or sorted({k for t in study.trials for k in t.params})
    for t in study.trials:
        curve = t.user_attrs.get("curve", [])
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else float("nan")
        value = t.value if t.value is not None else (curve[-1] if curve else float("nan"))
        rows.append({"trial": t.number, "state": t.state.name.lower(), "recovery_error": float(value), "epochs": len(curve),
                     "seconds": round(seconds, 1), **{n: t.params.get(n, "") for n in names}, "checkpoint": t.user_attrs.get("checkpoint", ""),
                     "origin": t.user_attrs.get("origin", "")})
    return rows


def _markdown(rows: list[dict], names: list[str]) -> str:
    def cell(value):
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    columns = ["trial", "state", "recovery_error", "epochs", "seconds", *names]
    ordered = sorted(rows, key=lambda r: (r["state"] != "complete", r["recovery_error"] if np.isfinite(r["recovery_error"]) else math.inf))
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(r[c]) for c in columns) + " |" for r in ordered]
    return "\n".join(lines)


def plot_scores(rows: list[dict], space: dict, *, reference: float | None = None):
    """Recovery error against each hyperparameter: complete trials coloured by order, pruned ones grey at their last score."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    names = [n for n in space if any(r[n] != "" for r in rows)]
    ncols = min(4, len(names))
    nrows = -(-len(names) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.9 * nrows), squeeze=False, constrained_layout=True)
    for ax, name in zip(axes.ravel(), names):
        spec = space[name]
        for state, style in (("pruned", dict(color="0.6", marker="x", s=22, label="pruned (last score)")),
                             ("complete", dict(c=None, marker="o", s=28, label="complete (colour: trial number)"))):
            chosen = [r for r in rows if r["state"] == state and r[name] != "" and np.isfinite(r["recovery_error"])]
            if not chosen:
                continue
            if "choices" in spec:
                labels = [str(c) for c in spec["choices"]]
                x = [labels.index(str(r[name])) + np.random.default_rng(r["trial"]).uniform(-0.15, 0.15) for r in chosen]
            else:
                x = [float(r[name]) for r in chosen]
            y = [r["recovery_error"] for r in chosen]
            if state == "complete":
                style["c"] = [r["trial"] for r in chosen]
                style["cmap"] = "viridis"
            ax.scatter(x, y, **style)
        if "choices" in spec:
            ax.set_xticks(range(len(spec["choices"])), [str(c) for c in spec["choices"]])
        elif spec.get("log"):
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 3.0), numticks=6))
            ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        if reference is not None:
            ax.axhline(reference, color="C3", ls="--", lw=1, label="configuration's own")
        ax.set_xlabel(name.replace("_", " "))
        ax.set_ylabel("validation recovery error")
    for ax in axes.ravel()[len(names):]:
        ax.set_visible(False)
    axes.ravel()[0].legend(fontsize=7, loc="best")
    fig.suptitle("Validation recovery error (RMS error / prior spread, lower is better) against each hyperparameter")
    return fig


def plot_learning_curves(study):
    """Recovery error after each epoch of every trial: pruned trials (grey) stop at a rung, complete ones run on."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6.5, 4), constrained_layout=True)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for t in study.trials:
        curve = t.user_attrs.get("curve", [])
        if not curve:
            continue
        complete = t.state.name == "COMPLETE"
        ax.plot(np.arange(1, len(curve) + 1), curve, color=None if complete else "0.65", lw=1.5 if complete else 0.8,
                marker="o" if len(curve) < 3 else None, ms=3, label=f"trial {t.number}" if complete else None, zorder=3 if complete else 2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation recovery error")
    ax.set_title("Score per epoch (grey: stopped early by the pruner)")
    if len(ax.get_legend_handles_labels()[0]) <= 12:
        ax.legend(fontsize=7, ncols=2)
    return fig


def load_study(run_dir: str | Path):
    """The Optuna study of a ``protolib tune`` run folder (read-only use: its ``trials``, ``best_trial``, ...)."""
    run_dir = Path(run_dir)
    if not (run_dir / "study.journal").exists():
        raise ProtolibInputError(f"{run_dir} holds no tuning run (no study.journal); run `protolib tune --out {run_dir}` first.")
    return _study(run_dir, TuneSettings(), load_only=True)


def plot_tuning(run_dir: str | Path):
    """The two figures of a run folder, drawn afresh: score against each hyperparameter, and score per epoch."""
    study = load_study(run_dir)
    rows = trials_table(study)
    own = next((r["recovery_error"] for r in rows if r["trial"] == 0 and r["state"] == "complete"), None)
    return plot_scores(rows, json.loads(study.user_attrs["space"]), reference=own), plot_learning_curves(study)


def write_tuned_config(path: str | Path, config_data: dict, bank: Bank, params: dict, *, epochs: int | None, header: str) -> Path:
    """Write the base configuration (:func:`config_as_dict`) with the tuned hyperparameters, the epochs the trial
    trained with and the bank it was tuned on, as a YAML configuration."""
    from .config import apply_overrides

    ae_overrides, si_overrides = trial_overrides(params, epochs)
    data = apply_overrides(config_data, {"autoencoder": ae_overrides, "siamese": si_overrides})  # a new dict
    data["name"] = Path(path).stem
    data["bank"] = {"n_systems": bank.n_systems, "n_projections": bank.n_projections, "seed": int(bank.attrs.get("seed", data["bank"]["seed"]))}
    simulator = bank.simulator_config
    if simulator is not None:
        data["simulator"] = simulator.to_dict()
        data["instrument"] = bank.instrument.to_dict()
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"# {line}\n" for line in header.splitlines()) + yaml.safe_dump(data, sort_keys=False))
    return Path(path)


def _compare_with_configuration(study, best, config, bank_path: Path, settings: TuneSettings, device=None) -> dict:
    """The best trial's score minus the configuration's own (trial 0), with a paired bootstrap interval over validation systems."""
    from .siamese import load_siamese

    with Bank(bank_path) as bank:
        split, relevance, top_k = _scoring(config, bank, settings)
        errors = [recovery_errors(load_siamese(t.user_attrs["checkpoint"], device), bank, split, relevance, top_k=top_k)
                  for t in (best, study.trials[0])]
    comparison = paired_difference(errors[0][0], errors[1][0], errors[0][1])
    comparison["beyond_validation_noise"] = comparison["interval_95"][1] < 0
    return comparison


def _report(study, run_dir: Path, config_data: dict, bank_path: Path, settings: TuneSettings, configs_dir: Path, config_name: str,
            device=None) -> dict:
    from .config import load_config

    config = load_config(run_dir / "config.yaml")
    rows = trials_table(study)
    space = json.loads(study.user_attrs["space"])
    names = list(space)
    with atomic_path(run_dir / "trials.csv") as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["trial"])
        writer.writeheader()
        writer.writerows(rows)
    with atomic_path(run_dir / "trials.md") as tmp:
        tmp.write_text(_markdown(rows, names) + "\n")
    complete = [r for r in rows if r["state"] == "complete"]
    own = next((r["recovery_error"] for r in rows if r["trial"] == 0 and r["state"] == "complete"), None)
    write_figure(plot_scores(rows, space, reference=own), run_dir / "scores.png", dpi=110)
    write_figure(plot_learning_curves(study), run_dir / "learning_curves.png", dpi=110)
    summary = {"trials": len(rows), "complete": len(complete), "pruned": sum(r["state"] == "pruned" for r in rows),
               "failed": sum(r["state"] == "fail" for r in rows), "configuration_score": own, "score": "validation recovery error "
               "(mean RMS error of the top-k matches' median / prior spread over the target-similarity parameters; lower is better)"}
    if complete:
        best = study.best_trial
        header = (f"Tuned by `protolib tune` on {datetime.date.today().isoformat()} from {config.name}: trial {best.number} of "
                  f"{len(rows)} ({summary['pruned']} pruned),\nvalidation recovery error {best.value:.3f}"
                  + (f" (the base configuration's own: {own:.3f})" if own is not None else "") + f", on bank {bank_path.name}.\nRun folder: {run_dir}")
        with Bank(bank_path) as bank:
            written = write_tuned_config(Path(configs_dir) / f"{config_name}.yaml", config_data, bank, best.params,
                                         epochs=best.user_attrs.get("epochs_budget", settings.epochs), header=header)
        summary.update(best_trial=best.number, best_score=best.value, best_hyperparameters=best.params,
                       best_checkpoint=best.user_attrs.get("checkpoint"), config_file=str(written))
        if own is not None and best.number != 0:
            summary["best_minus_configuration"] = _compare_with_configuration(study, best, config, bank_path, settings, device)
    write_json(json.loads(json.dumps(summary, default=str)), run_dir / "best.json")
    return summary
