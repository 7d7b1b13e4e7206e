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


def _register_match(sub) -> None:
    p = sub.add_parser("match", help="match a target image to the bank and summarise its best matches' parameters",
                       description="Find the bank images most similar to a target (an observation FITS file or a bank "
                                   "system) and write the matches, parameter summaries, a corner plot, a gallery and a report.")
    p.add_argument("--model", required=True, type=Path, help="trained Siamese network (RUN/siamese.pt)")
    p.add_argument("--bank", required=True, type=Path, help="bank file to search (.h5)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--target", type=Path, help="observation to match (FITS image)")
    target.add_argument("--target-system", type=int, help="a bank system to match (its own system is never matched)")
    p.add_argument("--projection", type=int, default=0, help="projection of --target-system (default 0)")
    p.add_argument("--distance", type=float, help="distance to the observed source in pc (needed with --target)")
    p.add_argument("--top-k", type=int, default=200, help="number of best matches (default 200)")
    p.add_argument("--threshold", type=float, default=None, help="keep only matches with similarity at least this")
    p.add_argument("--weight-temperature", type=float, default=None,
                   help="weight matches by exp((s - s_best) / T) in the summaries and corner plot (default: equal weights)")
    p.add_argument("--backend", choices=["auto", "exact", "faiss"], default="auto", help="nearest-neighbour search (default auto)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
    p.add_argument("--out", required=True, type=Path, help="folder for matches.csv, summary.csv, corner.png, gallery.png, report.json")

    def handler(args):
        import matplotlib

        matplotlib.use("Agg")
        from .matching import run_match

        report = run_match(args.model, args.bank, args.out, target=args.target, target_system=args.target_system,
                           projection=args.projection, distance_pc=args.distance, top_k=args.top_k,
                           threshold=args.threshold, weight_temperature=args.weight_temperature,
                           backend=args.backend, device=args.device)
        verdict = report["out_of_distribution"]
        print(f"Wrote {report['n_matches']} matches and their summaries to {args.out}/ (best similarity "
              f"{report['best_similarity']:.3f}).")
        print(verdict["message"], file=sys.stderr if verdict["is_out_of_distribution"] else sys.stdout)

    p.set_defaults(handler=handler)


REGISTRY = [_register_simulate, _register_import_thesis, _register_match]


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
