"""Hyperparameter search for the networks (``protolib tune``), scored by parameter recovery.

Each **trial** trains one Siamese network (on an autoencoder of the trial's encoder width and depth,
trained once per architecture and shared between trials) with hyperparameters drawn by Optuna, and
is scored by what the pipeline is for: the **validation recovery error**, the mean over the
parameters of the target similarity of the RMS error of the top-k matches' median, in units of the
prior's spread (:func:`recovery_error`; the validation systems matched against the training systems,
exactly as :mod:`protolib.evaluation` scores the test systems). Lower is better; 0 is perfect, and
about 1 is what guessing the prior's centre gives (random matches score about the same). The test systems are never
looked at.

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

This module holds the search space, the score and the study (the figures are :mod:`protolib.plots.tuning`);
running a search on a configuration and writing its run folder is ``protolib tune``,
:func:`protolib.pipelines.tune.tune`.
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

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .bank import Bank
from .evaluation import rank_targets, score_ranking, siamese_method
from .normalise import scaled_image_parameters
from .runtime import ProtolibInputError

__all__ = [
    "SEARCH_SPACE",
    "TuneSettings",
    "recovery_error",
    "recovery_errors",
    "paired_difference",
    "suggest_hyperparameters",
    "trial_overrides",
    "require_optuna",
    "open_study",
    "STALE_AFTER_S",
    "load_study",
    "trials_table",
    "trials_markdown",
]

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
"""The hyperparameters searched, with their ranges (``choices``, or ``low``/``high`` with ``log`` for a log-uniform
draw).

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
            raise ProtolibInputError(
                f"Tuning needs at least one trial and one epoch (got trials={self.trials}, epochs={self.epochs})."
            )
        unknown = set(self.space) - set(SEARCH_SPACE)
        if unknown:
            raise ProtolibInputError(
                f"Unknown hyperparameter(s) {sorted(unknown)} in tuning.space; known ones are {sorted(SEARCH_SPACE)}."
            )
        if self.reduction_factor < 2 or self.min_epochs < 1:
            raise ProtolibInputError(
                f"Tuning needs reduction_factor >= 2 and min_epochs >= 1 (got {self.reduction_factor}, "
                f"{self.min_epochs})."
            )
        for name, spec in self.space.items():
            ranged = (
                isinstance(spec, dict) and {"low", "high"} <= set(spec) and float(spec["low"]) < float(spec["high"])
            )
            if not (isinstance(spec, dict) and (spec.get("choices") or ranged)):
                raise ProtolibInputError(
                    f"tuning.space.{name} must be {{choices: [...]}} or {{low: L, high: H}} with L < H (log: true for "
                    "a "
                    f"log-uniform draw); got {spec!r}."
                )

    @property
    def search_space(self) -> dict:
        """:data:`SEARCH_SPACE` with this run's replacements."""
        return {**SEARCH_SPACE, **self.space}


# ---------------------------------------------------------------------------------------------
# The objective


def recovery_errors(
    model, bank: Bank, split, relevance, *, top_k: int, parameters=None, images: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per validation image, the scaled error of the top-``top_k`` matches' median for each parameter.

    ``images``: the training then validation systems' images ``(n, P, H, W)`` when already in memory
    (a search scores every epoch of every trial on the same images).

    Returns:
        ``errors (T, K)``: median minus truth in prior spreads (dex / spread for log-scaled parameters),
        one row per projection of every validation system, and ``systems (T,)``, each row's system.
    """
    if not len(split.validation):
        raise ProtolibInputError(
            "Tuning scores trials on validation systems, and the split has none; give the split a validation fraction."
        )
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
    values, _ = scaled_image_parameters(bank, names)
    # the prior's spread: over the training images
    spread = values[rows[: len(split.train) * bank.n_projections]].std(0)
    spread = np.where(spread > 0, spread, 1.0)
    errors = np.stack([scored.median[n] - scored.truth[n] for n in names], axis=1) / spread
    return errors, ranking.target_system


def recovery_error(
    model, bank: Bank, split, relevance, *, top_k: int, parameters=None, images: np.ndarray | None = None
) -> float:
    """Validation recovery error of a Siamese ``model``: lower is better.

    Every projection of every validation system is matched against the training systems' images;
    for each parameter in ``relevance``'s target similarity (or ``parameters``) the RMS error of the
    top-``top_k`` matches' median against the truth is divided by the prior's spread (the training
    images' standard deviation, in dex for log-scaled parameters), and these are averaged.
    """
    errors, _ = recovery_errors(model, bank, split, relevance, top_k=top_k, parameters=parameters, images=images)
    return _score(errors)


def _score(errors: np.ndarray) -> float:
    """The recovery error of per-image errors ``(T, K)``: the mean over parameters of their RMS."""
    return float(np.sqrt((errors**2).mean(0)).mean())


def paired_difference(
    errors_a: np.ndarray, errors_b: np.ndarray, systems: np.ndarray, *, n_boot: int = 2000, seed: int = 0
) -> dict:
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
    return {
        "difference": _score(errors_a) - _score(errors_b),
        "interval_95": [float(low), float(high)],
        "systems": int(len(unique)),
    }


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
        siamese["loss"] = {
            "kind": params["loss"],
            **({"margin": float(params["margin"])} if "margin" in params else {}),
        }
    training = {
        k: v
        for k, v in (
            ("learning_rate", params.get("learning_rate")),
            ("batch_systems", params.get("batch_systems")),
            ("epochs", epochs),
        )
        if v is not None
    }
    if training:
        siamese["training"] = training
    return autoencoder, siamese


# ---------------------------------------------------------------------------------------------
# The study


def require_optuna():
    """The ``optuna`` module, its logging quietened to warnings; a :class:`ProtolibInputError` saying how to install it
    when missing."""
    try:
        import optuna
    except ImportError:
        raise ProtolibInputError("Tuning needs Optuna (4.0 or later): pip install 'protolib[tune]'.") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def open_study(
    run_dir: Path, settings: TuneSettings, *, load_only: bool = False, worker: int = 0, max_epochs: int | None = None
):
    """The Optuna study ``"protolib"`` of a run folder's ``study.journal``, with ``settings``' sampler and pruner.

    Arguments:
        run_dir: the run folder.
        settings: the sampler, pruner and their options.
        load_only: load the study (it must exist) instead of creating it when missing.
        worker: the worker's number; with the trials already in the study it shifts the sampler's seed,
            so that parallel workers, and each rerun that adds trials, do not draw the same hyperparameters.
        max_epochs: the most epochs a trial trains (Hyperband's last rung when ``settings.epochs`` is unset).
    """
    optuna = require_optuna()
    storage = _journal_storage(run_dir / "study.journal")
    # parallel workers, and each rerun that adds trials, must not draw the same hyperparameters again
    seed = settings.seed + 7919 * worker + 104729 * _trials_so_far(storage)
    sampler = (
        optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=min(10, max(2, settings.trials // 3)), constant_liar=True
        )
        if settings.sampler == "tpe"
        else optuna.samplers.RandomSampler(seed=seed)
    )
    pruner = _pruner(optuna, settings, max_epochs)
    if load_only:
        return optuna.load_study(study_name="protolib", storage=storage, sampler=sampler, pruner=pruner)
    return optuna.create_study(
        study_name="protolib",
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        direction="minimize",
        load_if_exists=True,
    )


def _journal_storage(journal: Path):
    """Optuna's storage of the journal file ``journal``; a :class:`ProtolibInputError` when it cannot be read."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    try:
        return JournalStorage(JournalFileBackend(str(journal)))
    except (ValueError, KeyError, TypeError) as error:
        raise ProtolibInputError(
            f"{journal} is damaged ({str(error)[:100]}); give a new --out, or delete the run folder to start afresh."
        ) from None


def _trials_so_far(storage) -> int:
    """The trials of the study ``"protolib"`` in ``storage`` (0 before it exists)."""
    return next(
        (
            len(storage.get_all_trials(s._study_id, deepcopy=False))
            for s in storage.get_all_studies()
            if s.study_name == "protolib"
        ),
        0,
    )


def _pruner(optuna, settings: TuneSettings, max_epochs: int | None):
    """The pruner ``settings.pruner`` names: successive halving (ASHA), Hyperband (its last rung the most epochs a
    trial trains) or none."""
    if settings.pruner == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=settings.min_epochs, reduction_factor=settings.reduction_factor
        )
    if settings.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=settings.min_epochs,
            max_resource=settings.epochs or max_epochs or "auto",
            reduction_factor=settings.reduction_factor,
        )
    return optuna.pruners.NopPruner()


STALE_AFTER_S = 3600.0
"""A RUNNING trial without a sign of life (an epoch scored) for this long is taken as left by a killed worker."""


# ---------------------------------------------------------------------------------------------
# Reports


def trials_table(study) -> list[dict]:
    """One row per trial: number, state, score, epochs trained, seconds, each hyperparameter, checkpoint."""
    rows = []
    names = list(json.loads(study.user_attrs.get("space", "{}"))) or sorted({k for t in study.trials for k in t.params})
    for t in study.trials:
        curve = t.user_attrs.get("curve", [])
        seconds = (
            (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start
            else float("nan")
        )
        value = t.value if t.value is not None else (curve[-1] if curve else float("nan"))
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name.lower(),
                "recovery_error": float(value),
                "epochs": len(curve),
                "seconds": round(seconds, 1),
                **{n: t.params.get(n, "") for n in names},
                "checkpoint": t.user_attrs.get("checkpoint", ""),
                "origin": t.user_attrs.get("origin", ""),
            }
        )
    return rows


def trials_markdown(rows: list[dict], names: list[str]) -> str:
    """The rows of :func:`trials_table` as a markdown table (columns: state, score, epochs, seconds and the
    hyperparameters ``names``): the complete trials first, then those stopped early (scored after fewer epochs), each
    group best first."""

    def cell(value, column):
        if column == "recovery_error" and isinstance(value, float):
            return f"{value:.3f}"  # the scores compared: one number of decimals, as the text quotes them
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    columns = ["trial", "state", "recovery_error", "epochs", "seconds", *names]
    ordered = sorted(
        rows,
        key=lambda r: (r["state"] != "complete", r["recovery_error"] if np.isfinite(r["recovery_error"]) else math.inf),
    )
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(r[c], c) for c in columns) + " |" for r in ordered]
    return "\n".join(lines)


def load_study(run_dir: str | Path):
    """The Optuna study of a ``protolib tune`` run folder (read-only use: its ``trials``, ``best_trial``, ...)."""
    run_dir = Path(run_dir)
    if not (run_dir / "study.journal").exists():
        raise ProtolibInputError(
            f"{run_dir} holds no tuning run (no study.journal); run `protolib tune --out {run_dir}` first."
        )
    return open_study(run_dir, TuneSettings(), load_only=True)
