"""The ``protolib`` command line: one sub-command per pipeline step.

Each sub-command lives in a small ``_register_*`` function below, which adds its parser and sets
``handler``. User mistakes raise :class:`~protolib.runtime.ProtolibInputError` and are printed as one
line, without a traceback; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .runtime import ProtolibInputError

__all__ = ["main", "build_parser"]


def _register_simulate(sub) -> None:
    p = sub.add_parser("simulate", help="simulate a bank of images into one HDF5 file",
                       description="Simulate a bank of protostellar systems, each rendered in several projections.")
    p.add_argument("--systems", type=int, help="number of systems (default: from the config)")
    p.add_argument("--projections", type=int, help="viewing angles per system (default: from the config)")
    p.add_argument("--size", type=int, help="image size in pixels (default: from the config)")
    p.add_argument("--fov", type=float, help="field of view in au (default: from the config)")
    p.add_argument("--seed", type=int, help="random seed (default: from the config)")
    p.add_argument("--config", default=None, help="configuration name or YAML path (default: $PROTOLIB_CONFIG or 'default')")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
    p.add_argument("--out", required=True, type=Path, help="bank file to write (.h5)")

    def handler(args):
        from .bank import Bank, simulate_bank
        from .config import load_config

        overrides = {"bank": {}, "simulator": {}}
        for key, section, name in [("systems", "bank", "n_systems"), ("projections", "bank", "n_projections"),
                                   ("seed", "bank", "seed"), ("size", "simulator", "image_size"),
                                   ("fov", "simulator", "field_of_view_au")]:
            if getattr(args, key) is not None:
                overrides[section][name] = getattr(args, key)
        config = load_config(args.config, overrides)
        simulate_bank(args.out, config.bank.n_systems, config.bank.n_projections, seed=config.bank.seed,
                      config=config.simulator, instrument=config.instrument, device=args.device)
        with Bank(args.out) as bank:
            print(f"Wrote {bank}")

    p.set_defaults(handler=handler)


def _register_import_thesis(sub) -> None:
    p = sub.add_parser("import-thesis", help="convert a folder of the thesis's per-snapshot HDF5 files into a bank")
    p.add_argument("folder", type=Path, help="folder of snapshot files with intensity_projection_1..8 and parameters")
    p.add_argument("--out", required=True, type=Path, help="bank file to write (.h5)")
    p.add_argument("--projections", type=int, default=8, help="projections per snapshot (default 8)")
    p.add_argument("--pixel-size-au", type=float, default=None, help="pixel size of the images in au, if known")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable or incomplete files (each is reported)")

    def handler(args):
        from .bank import import_thesis_snapshots

        report = import_thesis_snapshots(args.folder, args.out, n_projections=args.projections,
                                         pixel_size_au=args.pixel_size_au, on_error="skip" if args.skip_bad else "raise")
        print(f"Imported {len(report.imported)} snapshot(s) into {args.out}.")
        for path, reason in report.skipped.items():
            print(f"Skipped {path}: {reason}", file=sys.stderr)

    p.set_defaults(handler=handler)


def _parse_set(items: list[str] | None) -> dict:
    """``["autoencoder.model.latent_size=16", ...]`` as a nested dict (values read as YAML)."""
    import yaml

    result: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ProtolibInputError(f"--set expects SECTION.KEY=VALUE (e.g. siamese.loss.kind=mse), got {item!r}.")
        node = result
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return result


def _stage_overrides(args, stage: str, options: dict) -> dict:
    """The named command-line options of a stage as nested overrides of its config section."""
    overrides: dict = {}
    section = overrides.setdefault(stage, {})
    for attribute, (part, key) in options.items():
        value = getattr(args, attribute, None)
        if value is not None:
            section.setdefault(part, {})[key] = value
    return overrides


def _add_learning_options(p) -> None:
    p.add_argument("--bank", required=True, type=Path, help="bank file (.h5)")
    p.add_argument("--out", required=True, type=Path, help="run folder for the checkpoint, history and metrics")
    p.add_argument("--config", default=None, help="configuration name or YAML path (default: $PROTOLIB_CONFIG or 'default')")
    p.add_argument("--epochs", type=int, help="most epochs to train (early stopping may end sooner)")
    p.add_argument("--batch-systems", type=int, help="systems per batch")
    p.add_argument("--learning-rate", type=float, help="AdamW learning rate at the start")
    p.add_argument("--patience", type=int, help="epochs without improvement before stopping")
    p.add_argument("--seed", type=int, help="seed of initialisation, batch order and augmentation")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override any config setting, e.g. --set siamese.loss.kind=contrastive (repeatable)")


_TRAINING_OPTIONS = {"epochs": ("training", "epochs"), "batch_systems": ("training", "batch_systems"),
                     "learning_rate": ("training", "learning_rate"), "patience": ("training", "patience"),
                     "seed": ("training", "seed"), "threads": ("training", "num_threads")}


def _learning_config(args):
    from .config import load_config

    return load_config(args.config, _parse_set(args.set))


def _register_train_autoencoder(sub) -> None:
    p = sub.add_parser("train-autoencoder", help="train the convolutional autoencoder on a bank",
                       description="Train the autoencoder on the bank's training systems; writes OUT/autoencoder.pt.")
    _add_learning_options(p)
    p.add_argument("--latent-size", type=int, help="length of the latent vector")
    p.add_argument("--channels", type=lambda s: [int(c) for c in s.split(",")], help="feature maps per level, e.g. 16,32,64")
    p.add_argument("--stretch", choices=["minmax", "asinh"], help="per-image brightness stretch")
    p.add_argument("--flux", dest="use_flux", action="store_true", default=None, help="give the network the log total flux")
    p.add_argument("--no-flux", dest="use_flux", action="store_false", help="stretched pixels only")

    def handler(args):
        from .autoencoder import load_autoencoder, train_autoencoder
        from .bank import Bank
        from .learning import autoencoder_settings, run_split

        options = {**_TRAINING_OPTIONS, "latent_size": ("model", "latent_size"), "channels": ("model", "channels"),
                   "use_flux": ("model", "use_flux"), "stretch": ("images", "stretch")}
        overrides = _stage_overrides(args, "autoencoder", options)
        config = _learning_config(args)
        settings = autoencoder_settings(config, overrides.get("autoencoder"))
        with Bank(args.bank) as bank:
            path = train_autoencoder(bank, args.out / "autoencoder.pt", split=run_split(config, bank), resume=args.resume,
                                     progress=not args.quiet, device=args.device, **settings)
        model = load_autoencoder(path, "cpu")
        print(f"Wrote {path} (best epoch {model.checkpoint['best_epoch']}, validation loss {model.checkpoint['best_validation_loss']:.4g}).")

    p.set_defaults(handler=handler)


def _register_train_siamese(sub) -> None:
    p = sub.add_parser("train-siamese", help="train the Siamese network by weakly supervised metric learning",
                       description="Train the Siamese network from a pretrained autoencoder; writes OUT/siamese.pt and "
                                   "OUT/metrics.json (held-out spearman, mse, within_0.1).")
    _add_learning_options(p)
    p.add_argument("--autoencoder", required=True, type=Path, help="autoencoder checkpoint (RUN/autoencoder.pt)")
    p.add_argument("--target", choices=["kernel", "cosine"], help="target similarity from parameters")
    p.add_argument("--parameters", type=lambda s: s.split(","), help="parameters defining similarity, comma-separated")
    p.add_argument("--weights", type=lambda s: [float(w) for w in s.split(",")], help="a weight per parameter, comma-separated")
    p.add_argument("--sigma", type=float, help="kernel width in normalised units")
    p.add_argument("--loss", choices=["mse", "contrastive", "log_ratio"], help="metric-learning loss")
    p.add_argument("--pairs", choices=["all", "fixed"], help="every pair within a batch, or the thesis's fixed pairs")
    p.add_argument("--embedding-size", type=int, help="length of the embedding")
    p.add_argument("--freeze-encoder", action="store_true", default=None, help="keep the pretrained encoder fixed")

    def handler(args):
        import json

        from .bank import Bank
        from .learning import run_split, siamese_settings
        from .siamese import metrics_path, train_siamese

        options = {**_TRAINING_OPTIONS, "target": ("target", "kind"), "parameters": ("target", "parameters"),
                   "weights": ("target", "weights"), "sigma": ("target", "sigma"), "loss": ("loss", "kind"),
                   "pairs": ("pairs", "mode"), "embedding_size": ("model", "embedding_size"),
                   "freeze_encoder": ("model", "freeze_encoder")}
        overrides = _stage_overrides(args, "siamese", options)
        config = _learning_config(args)
        settings = siamese_settings(config, overrides.get("siamese"))
        with Bank(args.bank) as bank:
            path = train_siamese(bank, args.autoencoder, args.out / "siamese.pt", split=run_split(config, bank), resume=args.resume,
                                 progress=not args.quiet, device=args.device, **settings)
        metrics = json.loads(metrics_path(path).read_text())
        print(f"Wrote {path} and {metrics_path(path)}: held-out spearman {metrics['spearman']:.3f}, "
              f"mse {metrics['mse']:.4f}, within_0.1 {metrics['within_0.1']:.3f}.")

    p.set_defaults(handler=handler)


REGISTRY = [_register_simulate, _register_import_thesis, _register_train_autoencoder, _register_train_siamese]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="protolib", description="Match images of protostellar systems to a simulated bank.")
    parser.add_argument("--version", action="version", version=f"protolib {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in REGISTRY:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        args.handler(args)
    except ProtolibInputError as error:
        if args.debug:
            raise
        print(f"protolib {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"protolib {args.command}: interrupted; no partial output was left behind.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
