"""``protolib train-autoencoder``, ``train-siamese`` and ``tune``: the networks, and their hyperparameters."""

from __future__ import annotations

from ..runtime import ProtolibInputError
from .common import add_setting, path_argument, run_config, seed_argument

__all__ = ["register_train_autoencoder", "register_train_siamese", "register_tune"]


def _add_training_options(p, stage: str) -> None:
    """What both trainings take: bank, run folder, the training settings of ``stage``, device, resume."""
    p.add_argument("--bank", required=True, type=path_argument, help="bank file (.h5)")
    p.add_argument(
        "--out", required=True, type=path_argument, help="run folder for the checkpoint, history and metrics"
    )
    add_setting(
        p,
        "--epochs",
        key=f"{stage}.training.epochs",
        type=int,
        help="most epochs to train (early stopping may end sooner)",
    )
    add_setting(p, "--batch-systems", key=f"{stage}.training.batch_systems", type=int, help="systems per batch")
    add_setting(
        p, "--learning-rate", key=f"{stage}.training.learning_rate", type=float, help="AdamW learning rate at the start"
    )
    add_setting(
        p, "--patience", key=f"{stage}.training.patience", type=int, help="epochs without improvement before stopping"
    )
    add_setting(
        p,
        "--seed",
        key=f"{stage}.training.seed",
        type=seed_argument,
        help="seed of initialisation, batch order and augmentation",
    )
    add_setting(p, "--threads", key=f"{stage}.training.num_threads", type=int, help="CPU threads for torch")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _training_lock(out):
    """The run folder's lock (:func:`~protolib.runtime.run_lock`), taken by the first process of a run only.

    A second training into the same ``--out`` is refused in one line while the first runs, instead of
    both printing "Wrote" and one checkpoint being lost. The other processes of a distributed run
    (``torchrun``, ``RANK`` > 0) write through the first and take no lock.
    """
    import contextlib
    import os

    from ..runtime import run_lock

    return run_lock(out, folder=True) if os.environ.get("RANK", "0") == "0" else contextlib.nullcontext()


def _channels(text: str) -> list[int]:
    return [int(c) for c in text.split(",")]


def register_train_autoencoder(sub) -> None:
    p = sub.add_parser(
        "train-autoencoder",
        help="train the convolutional autoencoder on a bank",
        description="Train the autoencoder on the bank's training systems; writes OUT/autoencoder.pt.",
    )
    _add_training_options(p, "autoencoder")
    add_setting(p, "--latent-size", key="autoencoder.model.latent_size", type=int, help="length of the latent vector")
    add_setting(
        p, "--channels", key="autoencoder.model.channels", type=_channels, help="feature maps per level, e.g. 16,32,64"
    )
    add_setting(
        p,
        "--stretch",
        key="autoencoder.images.stretch",
        choices=["minmax", "asinh"],
        help="per-image brightness stretch",
    )
    add_setting(
        p,
        "--flux",
        key="autoencoder.model.use_flux",
        action="store_const",
        const=True,
        help="give the network the log total flux",
    )
    add_setting(
        p,
        "--no-flux",
        key="autoencoder.model.use_flux",
        action="store_const",
        const=False,
        help="stretched pixels only",
    )

    p.set_defaults(handler=_train_autoencoder)


def _train_autoencoder(args) -> None:
    from ..autoencoder import load_autoencoder, train_autoencoder
    from ..bank import Bank
    from ..distributed import is_main
    from ..pipelines.train import autoencoder_settings, run_split

    config = run_config(args)
    with _training_lock(args.out), Bank(args.bank) as bank:
        path = train_autoencoder(
            bank,
            args.out / "autoencoder.pt",
            split=run_split(config, bank),
            resume=args.resume,
            progress=not args.quiet,
            device=args.device,
            **autoencoder_settings(config),
        )
    if not is_main():
        return
    model = load_autoencoder(path, "cpu")
    print(
        f"Wrote {path} (best epoch {model.checkpoint['best_epoch']}, validation loss "
        f"{model.checkpoint['best_validation_loss']:.4g})."
    )


def register_train_siamese(sub) -> None:
    p = sub.add_parser(
        "train-siamese",
        help="train the Siamese network by weakly supervised metric learning",
        description="Train the Siamese network from a pretrained autoencoder; writes OUT/siamese.pt and "
        "OUT/metrics.json (held-out spearman, mse, within_0.1).",
    )
    _add_training_options(p, "siamese")
    p.add_argument(
        "--autoencoder", required=True, type=path_argument, help="autoencoder checkpoint (RUN/autoencoder.pt)"
    )
    _add_similarity_options(p)
    add_setting(
        p, "--loss", key="siamese.loss.kind", choices=["mse", "contrastive", "log_ratio"], help="metric-learning loss"
    )
    add_setting(
        p,
        "--pairs",
        key="siamese.pairs.mode",
        choices=["all", "fixed"],
        help="every pair within a batch, or the thesis's fixed pairs",
    )
    add_setting(p, "--embedding-size", key="siamese.model.embedding_size", type=int, help="length of the embedding")
    add_setting(
        p,
        "--freeze-encoder",
        key="siamese.model.freeze_encoder",
        action="store_const",
        const=True,
        help="keep the pretrained encoder fixed",
    )

    p.set_defaults(handler=_train_siamese)


def _add_similarity_options(p) -> None:
    """The target similarity the network learns: from which parameters, with which weights and kernel width."""
    add_setting(
        p, "--target", key="siamese.target.kind", choices=["kernel", "cosine"], help="target similarity from parameters"
    )
    add_setting(
        p,
        "--parameters",
        key="siamese.target.parameters",
        type=lambda s: s.split(","),
        help="parameters defining similarity, comma-separated",
    )
    add_setting(
        p,
        "--weights",
        key="siamese.target.weights",
        type=lambda s: [float(w) for w in s.split(",")],
        help="a weight per parameter, comma-separated",
    )
    add_setting(p, "--sigma", key="siamese.target.sigma", type=float, help="kernel width in normalised units")


def _train_siamese(args) -> None:
    import json

    from ..bank import Bank
    from ..distributed import is_main
    from ..pipelines.train import run_split, siamese_settings
    from ..siamese import metrics_path, train_siamese

    config = run_config(args)
    with _training_lock(args.out), Bank(args.bank) as bank:
        path = train_siamese(
            bank,
            args.autoencoder,
            args.out / "siamese.pt",
            split=run_split(config, bank),
            resume=args.resume,
            progress=not args.quiet,
            device=args.device,
            **siamese_settings(config),
        )
    if not is_main():
        return
    metrics = json.loads(metrics_path(path).read_text())
    print(
        f"Wrote {path} and {metrics_path(path)}: held-out spearman {metrics['spearman']:.3f}, "
        f"mse {metrics['mse']:.4f}, within_0.1 {metrics['within_0.1']:.3f}."
    )


def register_tune(sub) -> None:
    p = sub.add_parser(
        "tune",
        help="search the networks' hyperparameters for the best parameter recovery",
        description="Search encoder width and depth, embedding size, the target's kernel width, the loss and its "
        "margin, "
        "learning rate and batch size (Optuna), scoring each trial by the validation recovery error of "
        "protolib's evaluation and stopping poor trials early (successive halving). Writes the table of "
        "trials and figures to --out and the best configuration to configs/.",
    )
    p.add_argument(
        "--bank",
        required=True,
        type=path_argument,
        help="bank to tune on (.h5); its systems are split as the configuration says",
    )
    _add_search_options(p)
    p.add_argument("--workers", type=int, default=1, help="trials at once, in local Dask processes (default 1)")
    p.add_argument(
        "--scheduler", default=None, help="address of a running Dask scheduler: one trial loop per Dask worker"
    )
    p.add_argument(
        "--config-name",
        default="tuned",
        help="name of the best configuration written (default: tuned -> configs/tuned.yaml)",
    )
    p.add_argument(
        "--configs-dir",
        type=path_argument,
        default=None,
        help="where it is written (default: the repository's configs/)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
    p.set_defaults(handler=_tune)


def _add_search_options(p) -> None:
    """The search: how many trials, their epochs, how they are drawn and stopped early, and the seed."""
    add_setting(
        p,
        "--trials",
        key="tuning.trials",
        type=int,
        help="trials in the run folder in all; rerun with more to add trials",
    )
    p.add_argument(
        "--out", required=True, type=path_argument, help="run folder (created; an existing one is continued)"
    )
    add_setting(
        p, "--epochs", key="tuning.epochs", type=int, help="most epochs per trial (null: the siamese section's)"
    )
    add_setting(
        p,
        "--sampler",
        key="tuning.sampler",
        choices=["tpe", "random"],
        help="how trials are drawn (random = the thesis's search)",
    )
    add_setting(
        p, "--pruner", key="tuning.pruner", choices=["asha", "hyperband", "none"], help="early stopping of poor trials"
    )
    add_setting(p, "--seed", key="tuning.seed", type=seed_argument, help="the sampler's seed")


def _dask_client(address: str | None):
    """A client of the Dask scheduler at ``address`` (``None`` without one)."""
    if not address:
        return None
    from ..cluster import connect_scheduler

    return connect_scheduler(address)


def _print_best_trial(summary: dict, config_name: str) -> None:
    """The best trial's score beside the configuration's own, and whether it is better beyond the validation noise."""
    own = summary["configuration_score"]
    print(
        f"Best: trial {summary['best_trial']}, validation recovery error {summary['best_score']:.3f}"
        + (f" (configuration {config_name}: {own:.3f})" if own is not None else "")
        + f"; wrote {summary['config_file']}."
    )
    if "best_minus_configuration" in summary:
        diff = summary["best_minus_configuration"]
        low, high = diff["interval_95"]
        print(
            f"Best minus configuration: {diff['difference']:+.3f} (95% over validation systems: {low:+.3f} to "
            f"{high:+.3f}): "
            + (
                "better beyond the noise of the validation set (optimistic: the best was chosen on these systems)."
                if diff["beyond_validation_noise"]
                else "NOT better beyond the noise of the validation set; more validation systems would tell."
            )
        )


def _tune(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from ..pipelines.tune import tune

    if not args.bank.exists():
        raise ProtolibInputError(
            f"Bank {args.bank} does not exist. Make one with `protolib simulate --out {args.bank}`."
        )
    config = run_config(args)
    summary = tune(
        args.bank,
        args.out,
        config,
        config.tuning,
        workers=args.workers,
        client=_dask_client(args.scheduler),
        configs_dir=args.configs_dir,
        config_name=args.config_name,
        device=args.device,
    )
    print(
        f"{summary['trials']} trials: {summary['complete']} complete, {summary['pruned']} stopped early, "
        f"{summary['failed']} failed."
    )
    if "best_trial" in summary:
        _print_best_trial(summary, config.name)
    print(f"Table: {args.out}/trials.md; figures: {args.out}/scores.png, {args.out}/learning_curves.png")
