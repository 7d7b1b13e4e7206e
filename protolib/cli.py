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
    p.add_argument("--workers", type=int, default=1, help="render in parallel on a local Dask cluster of this many processes")
    p.add_argument("--scheduler", default=None, help="address of a running Dask scheduler (e.g. tcp://node:8786) to render on")
    p.add_argument("--shard-systems", type=int, default=16, help="systems per shard in parallel runs (default 16)")
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
        common = dict(seed=config.bank.seed, config=config.simulator, instrument=config.instrument)
        if args.workers > 1 or args.scheduler:
            from .cluster import simulate_bank_parallel

            client = None
            if args.scheduler:
                from dask.distributed import Client

                client = Client(args.scheduler)
            report = simulate_bank_parallel(args.out, config.bank.n_systems, config.bank.n_projections, client=client,
                                            n_workers=args.workers, shard_systems=args.shard_systems, **common)
            print(f"Rendered {len(report.rendered)} of {report.n_shards} shards ({len(report.reused)} reused from an earlier run).")
        else:
            simulate_bank(args.out, config.bank.n_systems, config.bank.n_projections, device=args.device, **common)
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


REGISTRY = [_register_simulate, _register_import_thesis]


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
