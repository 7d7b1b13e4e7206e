"""The ``protolib`` command line: one sub-command per pipeline step.

Each sub-command lives in a small ``_register_*`` function below, which adds its parser and sets
``handler``. User mistakes raise :class:`~protolib.runtime.ProtolibInputError` and are printed as one
line, without a traceback; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import math
import os
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
    p.add_argument("--seed", type=_seed, help="random seed (default: from the config)")
    p.add_argument("--config", default=None, help="configuration name or YAML path (default: $PROTOLIB_CONFIG or 'default')")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
    p.add_argument("--workers", type=int, default=None,
                   help="render on this many local processes, --threads threads each (default: one per CPU core for banks "
                        f"of {PARALLEL_FROM_IMAGES} images or more on the CPU, else 1)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of each rendering process (default 1: on a shared machine more threads per process "
                        "lose more to waiting than they gain)")
    p.add_argument("--scheduler", default=None, help="address of a running Dask scheduler (e.g. tcp://node:8786) to render on")
    p.add_argument("--shard-systems", type=int, default=16, help="systems per shard in parallel runs (default 16)")
    p.add_argument("--out", required=True, type=_path, help="bank file to write (.h5)")

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
        workers = _simulate_workers(args, config.bank.n_systems * config.bank.n_projections)
        if args.scheduler:
            from .cluster import simulate_bank_parallel

            client = None
            if args.scheduler:
                from dask.distributed import Client

                try:
                    client = Client(args.scheduler, timeout="30s")
                except (OSError, ValueError, TypeError) as error:
                    raise ProtolibInputError(f"Could not reach the Dask scheduler at {args.scheduler!r} ({error}); is it running, "
                                             "and is the address tcp://HOST:PORT?") from None
            report = simulate_bank_parallel(args.out, config.bank.n_systems, config.bank.n_projections, client=client,
                                            shard_systems=args.shard_systems, **common)
            print(f"Rendered {len(report.rendered)} of {report.n_shards} shards on the cluster's workers "
                  f"({len(report.reused)} reused from an earlier run).")
        else:
            simulate_bank(args.out, config.bank.n_systems, config.bank.n_projections, device=args.device, threads=args.threads,
                          workers=workers, **common)
        with Bank(args.out) as bank:
            print(f"Wrote {bank}")

    p.set_defaults(handler=handler)


PARALLEL_FROM_IMAGES = 1024  # below this, starting worker processes costs more than it saves


def _simulate_workers(args, n_images: int) -> int:
    """Worker processes for ``simulate``: as asked, else one per core for large CPU banks, else 1."""
    if args.threads < 1 or (args.workers is not None and args.workers < 1):
        raise ProtolibInputError(f"--workers and --threads must be at least 1 (got {args.workers} and {args.threads}).")
    if args.workers is not None:
        return args.workers
    from .runtime import default_device

    if default_device(args.device).type != "cpu" or n_images < PARALLEL_FROM_IMAGES:
        return 1
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _register_import_thesis(sub) -> None:
    p = sub.add_parser("import-thesis", help="convert a folder of the thesis's per-snapshot HDF5 files into a bank")
    p.add_argument("folder", type=_path, help="folder of snapshot files with intensity_projection_1..8 and parameters")
    p.add_argument("--out", required=True, type=_path, help="bank file to write (.h5)")
    p.add_argument("--projections", type=int, default=8, help="projections per snapshot (default 8)")
    p.add_argument("--pixel-size-au", type=float, default=None, help="pixel size of the images in au, if known")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable or incomplete files (each is reported)")

    def handler(args):
        from .bank import import_thesis_snapshots

        report = import_thesis_snapshots(args.folder, args.out, n_projections=args.projections,
                                         pixel_size_au=args.pixel_size_au, on_error="skip" if args.skip_bad else "raise")
        print(f"Imported {len(report.imported)} snapshot(s) into {args.out}.")
        for path, reason in report.skipped.items():
            print(f"protolib import-thesis: warning: skipped {path}: {_one_line(reason)}", file=sys.stderr)

    p.set_defaults(handler=handler)


def _register_match(sub) -> None:
    p = sub.add_parser("match", help="match a target image to the bank and summarise its best matches' parameters",
                       description="Find the bank images most similar to a target (an observation FITS file or a bank "
                                   "system) and write the matches, parameter summaries, a corner plot, a gallery and a report.")
    p.add_argument("--model", required=True, type=_path, help="trained Siamese network (RUN/siamese.pt)")
    p.add_argument("--bank", required=True, type=_path, help="bank file to search (.h5)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--target", type=_path, help="observation to match (FITS image)")
    target.add_argument("--target-system", type=int, help="a bank system to match (its own system is never matched)")
    p.add_argument("--projection", type=int, default=0, help="projection of --target-system (default 0)")
    p.add_argument("--distance", type=float, help="distance to the observed source in pc (needed with --target)")
    p.add_argument("--centre", "--center", dest="centre", default=None,
                   help="with --target: sky position to centre on, 'RA DEC' (default: the emission peak)")
    p.add_argument("--beam", nargs=3, type=float, metavar=("MAJ", "MIN", "PA"), default=None,
                   help="with --target: beam FWHM axes [arcsec] and PA [deg], when the header has none")
    p.add_argument("--noise", type=float, default=None, help="with --target: noise rms [Jy/beam] (default: estimated)")
    _add_real_file_options(p)
    p.add_argument("--top-k", type=int, default=200, help="number of best matches (default 200; 0: all above --threshold)")
    p.add_argument("--threshold", type=float, default=None, help="keep only matches with similarity at least this")
    p.add_argument("--weight-temperature", type=float, default=None,
                   help="weight matches by exp((s - s_best) / T) in the summaries and corner plot (default: equal weights)")
    p.add_argument("--backend", choices=["auto", "exact", "faiss"], default="auto", help="nearest-neighbour search (default auto)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
    p.add_argument("--out", required=True, type=_path, help="folder for matches.csv, summary.csv, corner.png, gallery.png, report.json")

    def handler(args):
        import matplotlib

        matplotlib.use("Agg")
        from .matching import run_match

        report = _run_reporting_warnings("match", lambda: run_match(
            args.model, args.bank, args.out, target=args.target, target_system=args.target_system, projection=args.projection,
            distance_pc=args.distance, top_k=args.top_k or None, threshold=args.threshold,
            weight_temperature=args.weight_temperature, backend=args.backend, device=args.device,
            observation_options={"centre": args.centre, "beam": _beam_argument(args.beam, str(args.target)),
                                 "noise_rms_jy_beam": args.noise, **_real_file_options(args)}))
        verdict, fit, overall = report["out_of_distribution"], report["goodness_of_fit"], report["verdict"]
        print(f"Wrote {report['n_matches']} matches and their summaries to {args.out}/ (best similarity "
              f"{report['best_similarity']:.3f}).")
        preparation = (report["inputs"].get("target") or {}).get("preparation")
        if preparation:
            print(_preparation_notes(preparation))
        _say("match", verdict["message"], not verdict["is_out_of_distribution"])
        if fit is not None:
            _say("match", fit["message"], fit["reproduces"])
        if report.get("interval_calibration"):
            print(_calibration_note(report["interval_calibration"]))
        _say("match", f"Verdict: {overall['message']}", overall["trusted"])

    p.set_defaults(handler=handler)


def _refuse_overwriting_input(out: Path, inputs) -> None:
    """Refuse an output path that is one of the inputs (the input would be lost)."""
    if out.exists():
        for given in inputs:
            if given is not None and Path(given).exists() and Path(given).resolve() == out.resolve():
                raise ProtolibInputError(f"{out}: --out is the input file itself, which would be overwritten; write elsewhere.")


def _check_figure_path(path: Path) -> None:
    """Refuse a figure path matplotlib cannot write, before any work is done."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backend_bases import FigureCanvasBase

    suffix = path.suffix.lstrip(".").lower() or "png"
    formats = FigureCanvasBase.get_supported_filetypes()
    if path.is_dir():
        raise ProtolibInputError(f"{path} is a folder; give a figure file name, e.g. {path / 'figure.png'}.")
    if suffix not in formats:
        raise ProtolibInputError(f"{path}: matplotlib cannot write .{suffix} figures; use one of {', '.join(sorted(formats))}.")


def _say(command: str, message: str, good: bool) -> None:
    """A finding on stdout, or, when it is a warning, on stderr as ``protolib COMMAND: warning: ...``."""
    if good:
        print(message)
    else:
        print(f"protolib {command}: warning: {_one_line(message.removeprefix('WARNING: '))}", file=sys.stderr)


def _preparation_notes(info: dict) -> str:
    """One line on the real-file steps: frequency, blanking, recoverable scale, sources."""
    observed = info.get("observed_frequency_ghz")
    frequency = (f"{observed:.2f} GHz ({info['frequency_source']}) -> bank {info['bank_frequency_ghz']:g} GHz, fluxes "
                 f"x{info['frequency_factor']:.3f} (alpha = {info['spectral_index']:g})" if observed else
                 f"frequency unknown, taken as the bank's {info['bank_frequency_ghz']:g} GHz")
    scale = (f"scales above {info['max_scale_arcsec']:.3g}\" removed from the bank images ({info['max_scale_source']})"
             if info.get("max_scale_arcsec") else "no interferometric filtering")
    zeros = f"; {100 * info['blanked_zero_fraction']:.0f}% of pixels were zero-valued blanking" if info.get("blanked_zero_fraction") else ""
    return f"Frequency {frequency}; {scale}; {len(info.get('compact_sources', []))} compact source(s) in the field{zeros}."


def _calibration_note(calibration: dict) -> str:
    """One line: how much the intervals were widened to be honest on the reference targets."""
    widened = {name: c for name, c in calibration.items() if c["widening"] > 1.0}
    n = next(iter(calibration.values()))["n_reference"]
    if not widened:
        return f"Intervals as the matches give them: on {n} reference bank images seen like this target they already hold the truth as often as claimed."
    parts = ", ".join(f"{name} x{c['widening']:g} (95% coverage {c['raw_coverage_95']:.2f} -> {c['coverage_95']:.2f})"
                      for name, c in widened.items())
    return (f"Intervals in summary.csv widened about the median, so that on {n} reference bank images seen like this target "
            f"they hold the truth as often as claimed: {parts}.")


def _run_reporting_warnings(command: str, action):
    """Run ``action()``, printing each warning as one line ``protolib COMMAND: warning: ...``."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return action()
        finally:
            seen = set()
            for item in caught:
                if issubclass(item.category, UserWarning) and str(item.message) not in seen:
                    seen.add(str(item.message))
                    print(f"protolib {command}: warning: {_one_line(str(item.message))}", file=sys.stderr)


def _beam_argument(values, where: str):
    from .instrument import Beam

    if values is None:
        return None
    major, minor, pa = values
    if not (major > 0 and minor > 0 and math.isfinite(major) and math.isfinite(minor) and math.isfinite(pa)):
        raise ProtolibInputError(f"{where}: --beam needs finite, positive FWHM axes in arcsec and a finite PA in degrees "
                                 f"(MAJ MIN PA), got {major} {minor} {pa}.")
    return Beam(major, minor, pa)


def _add_real_file_options(p) -> None:
    """Options for what real files need: frequency, spectral index, recoverable scale, other sources."""
    p.add_argument("--frequency", type=float, default=None,
                   help="observed frequency in GHz (default: from the file's spectral axis)")
    p.add_argument("--spectral-index", type=float, default=None,
                   help="dust spectral index alpha, S ~ nu^alpha, to bring fluxes to the bank's frequency "
                        "(default 2 + the bank's opacity index beta: 3 for the built-in simulator)")
    p.add_argument("--max-scale", type=float, default=None,
                   help="maximum recoverable scale of the observation in arcsec: larger scales are removed from the bank "
                        "images as the interferometer removed them (default: 10 beam major axes; 0: no filtering)")
    p.add_argument("--mask-radius", type=float, default=None,
                   help="blank everything further than this many arcsec from the centre (e.g. a companion)")


def _real_file_options(args) -> dict:
    return {"frequency_ghz": args.frequency, "spectral_index": args.spectral_index, "max_scale_arcsec": args.max_scale,
            "mask_radius_arcsec": args.mask_radius}


def _register_observe(sub) -> None:
    p = sub.add_parser("observe", help="put an observed FITS image on a bank's grid, as the pipeline sees it",
                       description="Read an observed continuum image (FITS), centre it on the source, resample it onto the "
                                   "bank's grid in au (flux conserving), bring it to the bank's units and distance, and write "
                                   "the prepared image (FITS) and optionally a figure.")
    p.add_argument("observation", type=_path, help="the observed image (FITS: 2-4 axes, Jy/beam or Jy/pixel)")
    p.add_argument("--distance", type=float, default=None, help="distance to the source in pc (required)")
    p.add_argument("--bank", type=_path, default=None,
                   help="bank whose grid to use (default: the configuration's bank, see --config)")
    p.add_argument("--config", default=None, help="configuration naming the default bank (default: $PROTOLIB_CONFIG or 'default')")
    p.add_argument("--out", type=_path, required=True, help="prepared image to write (FITS)")
    p.add_argument("--plot", type=_path, default=None, help="also write a figure: original and prepared side by side (PNG, PDF...)")
    p.add_argument("--centre", "--center", dest="centre", default=None,
                   help="sky position to centre on, 'RA DEC' ('04:39:53.9 +26:03:09.4' or degrees); default: the emission peak")
    p.add_argument("--beam", nargs=3, type=float, metavar=("MAJ", "MIN", "PA"), default=None,
                   help="beam FWHM axes [arcsec] and PA [deg east of north], when the header has none (or to override it)")
    p.add_argument("--noise", type=float, default=None, help="noise rms of the observation [Jy/beam] (default: estimated)")
    _add_real_file_options(p)

    def handler(args):
        from .observation import plot_prepared_observation, prepare_observation

        if args.distance is None:
            raise ProtolibInputError(f"{args.observation}: the distance to the source is missing; give it with --distance PC.")
        _refuse_overwriting_input(args.out, [args.observation])
        if args.plot is not None:
            _check_figure_path(args.plot)
            if args.plot.resolve() == args.out.resolve():
                raise ProtolibInputError(f"{args.plot}: --plot and --out name the same file; give the figure its own name.")
        bank = args.bank
        if bank is None:
            from .config import load_config

            bank = load_config(args.config).bank_path
        prepared = _run_reporting_warnings("observe", lambda: prepare_observation(
            args.observation, bank, args.distance, centre=args.centre,
            beam=_beam_argument(args.beam, str(args.observation)), noise_rms_jy_beam=args.noise, **_real_file_options(args)))
        prepared.write_fits(args.out)
        b = prepared.beam
        print(f"Wrote {args.out}: {prepared.grid.image_size}x{prepared.grid.image_size} px of {prepared.grid.pixel_size_au:.3g} au, "
              f"centred on {prepared.centre.to_string('hmsdms', precision=2)}, fluxes x{prepared.flux_scale:.3f} "
              f"({prepared.distance_pc:g} -> {prepared.grid.distance_pc:g} pc), beam {b.major_arcsec:.3g}\"x{b.minor_arcsec:.3g}\" "
              f"PA {b.position_angle_deg:.0f} deg{' (smoothed to contain the bank beam)' if prepared.smoothed else ''}, "
              f"noise {prepared.noise_rms_jy_beam * 1e3:.3g} mJy/beam.")
        print(_preparation_notes(prepared.info()))
        if args.plot is not None:
            import matplotlib

            matplotlib.use("Agg")
            from .runtime import atomic_path

            fig = plot_prepared_observation(prepared)
            with atomic_path(args.plot) as tmp:
                fig.savefig(tmp, dpi=120, format=args.plot.suffix.lstrip(".") or "png")
            print(f"Wrote {args.plot}")

    p.set_defaults(handler=handler)


def _register_simulate_observation(sub) -> None:
    p = sub.add_parser("simulate-observation", help="write one simulated system as an ALMA-style FITS image",
                       description="Draw one system from the bank's prior (or take one from a bank), render it at a chosen "
                                   "distance and pixel scale, convolve with a beam, add noise, and write an ALMA-style FITS "
                                   "image whose header holds the true parameters (PROTOLIB TRUE cards).")
    p.add_argument("--out", type=_path, required=True, help="FITS file to write")
    p.add_argument("--distance", type=float, default=140.0, help="distance in pc (default 140)")
    p.add_argument("--pixel", type=float, default=0.03, help="pixel side in arcsec (default 0.03)")
    p.add_argument("--size", type=int, default=256, help="pixels per side (default 256)")
    p.add_argument("--beam", nargs=3, type=float, metavar=("MAJ", "MIN", "PA"), default=[0.3, 0.25, 20.0],
                   help="beam FWHM axes [arcsec] and PA [deg] (default 0.3 0.25 20)")
    p.add_argument("--noise", type=float, default=5e-5, help="noise rms in Jy/beam (default 5e-5)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the system drawn from the prior and of the noise")
    p.add_argument("--from-bank", type=_path, default=None, help="take the system from this bank instead of the prior")
    p.add_argument("--system", type=int, default=0, help="index of the system in --from-bank (default 0)")
    p.add_argument("--inclination", type=float, default=None, help="inclination in deg (default: drawn)")
    p.add_argument("--position-angle", type=float, default=None, help="disk PA in deg east of north (default: drawn)")
    p.add_argument("--offset", nargs=2, type=float, metavar=("EAST", "NORTH"), default=[0.0, 0.0],
                   help="source offset from the phase centre in arcsec")
    p.add_argument("--object", default="protolib synthetic", help="OBJECT name")

    def handler(args):
        from .bank import Bank, draw_systems
        from .observation import write_observation_fits

        for name, value in (("--distance", args.distance), ("--pixel", args.pixel), ("--size", args.size)):
            if not (value > 0 and math.isfinite(value)):
                raise ProtolibInputError(f"{args.out}: {name} must be positive, got {value}.")
        field = args.size * args.pixel
        beam = _beam_argument(args.beam, str(args.out))
        checks = [(16 <= args.size <= 8192, f"--size {args.size}: give 16 to 8192 pixels a side"),
                  (beam.major_arcsec < field / 2, f"--beam {beam.major_arcsec:g}\" is not smaller than half the {field:g}\" image"),
                  (all(math.isfinite(o) and abs(o) < field / 2 for o in args.offset), f"--offset {args.offset} lies outside the "
                   f"{field:g}\" image"),
                  (math.isfinite(args.noise) and args.noise >= 0, f"--noise {args.noise} must be a number >= 0 (Jy/beam)"),
                  (args.inclination is None or 0 <= args.inclination <= 180, f"--inclination {args.inclination} must be 0-180 deg"),
                  (args.position_angle is None or math.isfinite(args.position_angle), "--position-angle must be a number"),
                  (args.object is None or (args.object.isascii() and args.object.isprintable()),
                   f"--object {args.object!r}: FITS headers hold printable ASCII only")]
        for good, problem in checks:
            if not good:
                raise ProtolibInputError(f"{args.out}: {problem}.")
        if args.from_bank is not None:
            with Bank(args.from_bank) as bank:
                if not 0 <= args.system < bank.n_systems:
                    raise ProtolibInputError(f"{args.from_bank}: --system {args.system} is out of range (0..{bank.n_systems - 1}).")
                system = {k: float(v[args.system]) for k, v in bank.parameters.items()}
                inclination, position_angle = bank.inclination[args.system, 0], bank.position_angle[args.system, 0]
        else:
            drawn = draw_systems(1, 1, args.seed)
            system = {k: float(v[0]) for k, v in drawn.items() if v.ndim == 1}
            inclination, position_angle = drawn["inclination"][0, 0], drawn["position_angle"][0, 0]
        inclination = args.inclination if args.inclination is not None else float(inclination)
        position_angle = args.position_angle if args.position_angle is not None else float(position_angle)
        write_observation_fits(args.out, system, inclination_deg=inclination, position_angle_deg=position_angle,
                               distance_pc=args.distance, pixel_arcsec=args.pixel, image_size=args.size,
                               beam=beam, noise_rms_jy_beam=args.noise, seed=args.seed,
                               source_offset_arcsec=tuple(args.offset), object_name=args.object)
        print(f"Wrote {args.out}: {args.size}x{args.size} px of {args.pixel:g}\" at {args.distance:g} pc, "
              f"inclination {inclination:.0f} deg, PA {position_angle:.0f} deg.")

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
    p.add_argument("--bank", required=True, type=_path, help="bank file (.h5)")
    p.add_argument("--out", required=True, type=_path, help="run folder for the checkpoint, history and metrics")
    p.add_argument("--config", default=None, help="configuration name or YAML path (default: $PROTOLIB_CONFIG or 'default')")
    p.add_argument("--epochs", type=int, help="most epochs to train (early stopping may end sooner)")
    p.add_argument("--batch-systems", type=int, help="systems per batch")
    p.add_argument("--learning-rate", type=float, help="AdamW learning rate at the start")
    p.add_argument("--patience", type=int, help="epochs without improvement before stopping")
    p.add_argument("--seed", type=_seed, help="seed of initialisation, batch order and augmentation")
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
        from .distributed import is_main
        from .bank import Bank
        from .pipelines.train import autoencoder_settings, run_split

        options = {**_TRAINING_OPTIONS, "latent_size": ("model", "latent_size"), "channels": ("model", "channels"),
                   "use_flux": ("model", "use_flux"), "stretch": ("images", "stretch")}
        overrides = _stage_overrides(args, "autoencoder", options)
        config = _learning_config(args)
        settings = autoencoder_settings(config, overrides.get("autoencoder"))
        with Bank(args.bank) as bank:
            path = train_autoencoder(bank, args.out / "autoencoder.pt", split=run_split(config, bank), resume=args.resume,
                                     progress=not args.quiet, device=args.device, **settings)
        if not is_main():
            return
        model = load_autoencoder(path, "cpu")
        print(f"Wrote {path} (best epoch {model.checkpoint['best_epoch']}, validation loss {model.checkpoint['best_validation_loss']:.4g}).")

    p.set_defaults(handler=handler)


def _register_train_siamese(sub) -> None:
    p = sub.add_parser("train-siamese", help="train the Siamese network by weakly supervised metric learning",
                       description="Train the Siamese network from a pretrained autoencoder; writes OUT/siamese.pt and "
                                   "OUT/metrics.json (held-out spearman, mse, within_0.1).")
    _add_learning_options(p)
    p.add_argument("--autoencoder", required=True, type=_path, help="autoencoder checkpoint (RUN/autoencoder.pt)")
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
        from .pipelines.train import run_split, siamese_settings
        from .distributed import is_main
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
        if not is_main():
            return
        metrics = json.loads(metrics_path(path).read_text())
        print(f"Wrote {path} and {metrics_path(path)}: held-out spearman {metrics['spearman']:.3f}, "
              f"mse {metrics['mse']:.4f}, within_0.1 {metrics['within_0.1']:.3f}.")

    p.set_defaults(handler=handler)



def _register_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate matching on held-out systems against baselines",
                       description="Match every test system of the model's split against the training systems with the Siamese "
                                   "network and the baselines (random, pixel chi-square, PCA, autoencoder); write OUT/metrics.json "
                                   "(similarity, retrieval, parameter recovery, calibration per method and parameter) and figures.")
    p.add_argument("--model", required=True, type=_path, help="trained Siamese network (RUN/siamese.pt)")
    p.add_argument("--bank", required=True, type=_path, help="the bank the network was trained on (.h5)")
    p.add_argument("--out", required=True, type=_path, help="folder for metrics.json, headline.md and the figures")
    p.add_argument("--top-k", type=int, default=None, help="matches per target (default: from the config's evaluation section)")
    p.add_argument("--projection", type=int, default=None, help="evaluate one projection of each test system (default: all)")
    p.add_argument("--methods", type=lambda s: s.split(","), default=None,
                   help="comma-separated subset of random,pixel,pca,autoencoder,siamese (default: all)")
    p.add_argument("--config", default=None, help="configuration name or YAML path (default: $PROTOLIB_CONFIG or 'default')")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when present)")

    def handler(args):
        import matplotlib

        matplotlib.use("Agg")
        from .config import load_config
        from .evaluation import evaluation_settings, run_evaluation

        settings = evaluation_settings(load_config(args.config), {"top_k": args.top_k, "projection": args.projection,
                                                                  "methods": args.methods})
        report = _run_reporting_warnings("evaluate", lambda: run_evaluation(args.model, args.bank, args.out, settings, device=args.device))
        print(f"Evaluated {len(report['methods'])} methods on {report['targets']['n_targets']} test images; wrote {args.out}/metrics.json.")
        print((args.out / "headline.md").read_text())

    p.set_defaults(handler=handler)


def _register_attribute(sub) -> None:
    p = sub.add_parser("attribute", help="attribution maps of held-out pairs (and an observation), with their sanity check",
                       description="Draw integrated-gradient attribution maps of the best, middle and worst held-out pairs of the "
                                   "model's test systems (OUT/pair_best.png, pair_middle.png, pair_worst.png), compare them with "
                                   "a network of randomised weights, and write OUT/attribution.json.")
    p.add_argument("--model", required=True, type=_path, help="trained Siamese network (RUN/siamese.pt)")
    p.add_argument("--bank", required=True, type=_path, help="the bank the network was trained on (.h5)")
    p.add_argument("--out", required=True, type=_path, help="folder for the figures and attribution.json")
    p.add_argument("--observation", type=_path, default=None,
                   help="a prepared observation (FITS from `protolib observe --out`): also draw it against its best match")
    p.add_argument("--steps", type=int, default=32, help="steps of the integrated-gradients path (default 32)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the randomised network and of the test-system subset (default 0)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default cpu)")

    def handler(args):
        import matplotlib

        matplotlib.use("Agg")
        from .attribution import run_attribution

        if args.steps < 1:
            raise ProtolibInputError(f"--steps must be at least 1, got {args.steps}.")
        report = _run_reporting_warnings("attribute", lambda: run_attribution(
            args.model, args.bank, args.out, observation=args.observation, steps=args.steps, seed=args.seed, device=args.device))
        for name, pair in report["pairs"].items():
            print(f"{name:6s} pair: predicted {pair['predicted']:.2f}, target {pair['target']:.2f}, "
                  f"rank correlation trained vs randomised {pair['rank_correlation_trained_vs_randomised']:.2f}")
        if "observation" in report:
            best = report["observation"]["best_match"]
            print(f"observation: best match system {best['system']}, projection {best['projection']}, similarity {best['similarity']:.3f}")
        print(f"Wrote the figures and attribution.json to {args.out}/.")

    p.set_defaults(handler=handler)


def _register_embedding_map(sub) -> None:
    p = sub.add_parser("embedding-map", help="the bank's embeddings on a 2-D map, coloured by each parameter",
                       description="Project the bank's embeddings to 2-D (PCA or UMAP), one panel per parameter the model was "
                                   "trained on and one for inclination, an observation optionally marked; write the figure "
                                   "and <OUT stem>_smoothness.json (0: the parameter varies smoothly across the map, 1: no trace).")
    p.add_argument("--model", required=True, type=_path, help="trained Siamese network (RUN/siamese.pt)")
    p.add_argument("--bank", required=True, type=_path, help="bank whose embeddings to map (.h5)")
    p.add_argument("--out", required=True, type=_path, help="figure to write (PNG, PDF ...)")
    p.add_argument("--method", choices=["pca", "umap"], default="pca", help="projection (default pca; umap needs protolib[maps])")
    p.add_argument("--observation", type=_path, default=None, help="a prepared observation (FITS from `protolib observe --out`) to mark")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the UMAP layout and of the smoothness measure (default 0)")

    def handler(args):
        import matplotlib

        matplotlib.use("Agg")
        from .embedding_maps import run_embedding_map

        _check_figure_path(args.out)
        report = _run_reporting_warnings("embedding-map", lambda: run_embedding_map(
            args.model, args.bank, args.out, method=args.method, observation=args.observation, seed=args.seed))
        print(f"Wrote {args.out} ({report['method']} map of {report['n_images']} bank images); smoothness (0 smooth, 1 none): "
              + ", ".join(f"{name} {value:.2f}" for name, value in report["smoothness"].items()))

    p.set_defaults(handler=handler)


def _register_tune(sub) -> None:
    p = sub.add_parser("tune", help="search the networks' hyperparameters for the best parameter recovery",
                       description="Search encoder width and depth, embedding size, the target's kernel width, the loss and its margin, "
                                   "learning rate and batch size (Optuna), scoring each trial by the validation recovery error of "
                                   "protolib's evaluation and stopping poor trials early (successive halving). Writes the table of "
                                   "trials and figures to --out and the best configuration to configs/.")
    p.add_argument("--bank", required=True, type=_path, help="bank to tune on (.h5); its systems are split as the configuration says")
    p.add_argument("--trials", type=int, help="trials in the run folder in all (default: the config's tuning.trials or 20); "
                                               "rerun with more to add trials")
    p.add_argument("--out", required=True, type=_path, help="run folder (created; an existing one is continued)")
    p.add_argument("--epochs", type=int, help="most epochs per trial (default: the config's siamese epochs)")
    p.add_argument("--sampler", choices=["tpe", "random"], help="how trials are drawn (default tpe; random = the thesis's random search)")
    p.add_argument("--pruner", choices=["asha", "hyperband", "none"], help="early stopping of poor trials (default asha)")
    p.add_argument("--seed", type=_seed, help="the sampler's seed (default 0)")
    p.add_argument("--workers", type=int, default=1, help="trials at once, in local Dask processes (default 1)")
    p.add_argument("--scheduler", default=None, help="address of a running Dask scheduler: one trial loop per Dask worker")
    p.add_argument("--config", default=None, help="base configuration name or YAML path (default: $PROTOLIB_CONFIG or 'default')")
    p.add_argument("--config-name", default="tuned", help="name of the best configuration written (default: tuned -> configs/tuned.yaml)")
    p.add_argument("--configs-dir", type=_path, default=None, help="where it is written (default: the repository's configs/)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when present)")

    def handler(args):
        import matplotlib

        matplotlib.use("Agg")
        from .config import load_config
        from .tuning import tune, tune_settings

        if not args.bank.exists():
            raise ProtolibInputError(f"Bank {args.bank} does not exist. Make one with `protolib simulate --out {args.bank}`.")
        config = load_config(args.config)
        settings = tune_settings(config, {"trials": args.trials, "epochs": args.epochs, "sampler": args.sampler, "pruner": args.pruner,
                                          "seed": args.seed})
        client = None
        if args.scheduler:
            try:
                from dask.distributed import Client
            except ImportError:
                raise ProtolibInputError("--scheduler needs Dask: pip install 'protolib[cluster]'.") from None
            try:
                client = Client(args.scheduler, timeout="30s")
            except OSError as error:
                raise ProtolibInputError(f"Could not reach the Dask scheduler at {args.scheduler} ({error}); is it running?") from None
        summary = tune(args.bank, args.out, config, settings, workers=args.workers, client=client, configs_dir=args.configs_dir,
                       config_name=args.config_name, device=args.device)
        print(f"{summary['trials']} trials: {summary['complete']} complete, {summary['pruned']} stopped early, {summary['failed']} failed.")
        if "best_trial" in summary:
            own = summary["configuration_score"]
            print(f"Best: trial {summary['best_trial']}, validation recovery error {summary['best_score']:.3f}"
                  + (f" (configuration {config.name}: {own:.3f})" if own is not None else "") + f"; wrote {summary['config_file']}.")
            if "best_minus_configuration" in summary:
                diff = summary["best_minus_configuration"]
                low, high = diff["interval_95"]
                print(f"Best minus configuration: {diff['difference']:+.3f} (95% over validation systems: {low:+.3f} to {high:+.3f}): "
                      + ("better beyond the noise of the validation set (optimistic: the best was chosen on these systems)."
                         if diff["beyond_validation_noise"] else
                         "NOT better beyond the noise of the validation set; more validation systems would tell."))
        print(f"Table: {args.out}/trials.md; figures: {args.out}/scores.png, {args.out}/learning_curves.png")

    p.set_defaults(handler=handler)


REGISTRY = [_register_simulate, _register_import_thesis, _register_train_autoencoder, _register_train_siamese,
            _register_observe, _register_simulate_observation, _register_match]
REGISTRY += [_register_evaluate, _register_attribute, _register_embedding_map, _register_tune]


def _path(text: str) -> Path:
    """A path argument; an empty one (``--out ''``) would mean the current folder, and is refused."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; give a file or folder name")
    return Path(text)


def _seed(text: str) -> int:
    """A random seed: a whole number >= 0 (numpy's generators take no negative seeds)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid seed {text!r}: give a whole number >= 0") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid seed {value}: give a whole number >= 0")
    return value


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, like protolib's own: ``protolib CMD: error: ...``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="protolib", description="Match images of protostellar systems to a simulated bank.")
    parser.add_argument("--version", action="version", version=f"protolib {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for register in REGISTRY:
        register(sub)
    return parser


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a batch system's time limit, ``kill``), turned into an exception so that clean-up runs."""


def _on_sigterm(signum, frame):
    raise _Terminated()


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command; returns the exit status (0 done, 2 refused input, 130 interrupted, 143 terminated).

    A refused input, and any failure to write an output (a full disk, a read-only folder), is one
    line on stderr: ``protolib COMMAND: error: ...``. SIGINT and SIGTERM stop the run with the
    previous outputs intact (every product is written under a temporary name and renamed).
    """
    import signal

    command = "protolib"
    try:
        if _in_main_thread():
            signal.signal(signal.SIGTERM, _on_sigterm)
        parser = build_parser()
        args = parser.parse_args(argv)
        command = f"protolib {args.command}" if getattr(args, "command", None) else command
        if not getattr(args, "handler", None):
            parser.print_help()
            return 2
        return _run_handler(args, command)
    except KeyboardInterrupt as interrupt:
        terminated = isinstance(interrupt, _Terminated)
        print(f"{command}: {'terminated (SIGTERM)' if terminated else 'interrupted'} before it started; nothing was written.",
              file=sys.stderr)
        return 143 if terminated else 130


def _one_line(message: str, limit: int = 600) -> str:
    """A message on one line: libraries (wcslib, PyYAML, torch) put context on further lines."""
    text = " ".join(message.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _close_progress_bars() -> None:
    """End any progress bar's line, so that an error is printed on a line of its own."""
    tqdm_module = sys.modules.get("tqdm.std")
    if tqdm_module is not None:
        for bar in list(getattr(tqdm_module.tqdm, "_instances", [])):
            bar.close()


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _run_handler(args, command: str) -> int:
    finished = False
    try:
        args.handler(args)
        finished = True
    except (ProtolibInputError, OSError) as error:  # the user's input, or a file-system failure: one line
        if args.debug:
            raise
        from .runtime import describe_os_error

        _close_progress_bars()
        message = str(error) if isinstance(error, ProtolibInputError) else describe_os_error(error)
        print(f"{command}: error: {_one_line(message)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        terminated = isinstance(interrupt, _Terminated)
        print(f"{command}: {'terminated (SIGTERM)' if terminated else 'interrupted'}; the previous outputs are as they were "
              "(a training can be continued with --resume).", file=sys.stderr)
        return 143 if terminated else 130
    finally:
        distributed = sys.modules.get(f"{__package__}.distributed")
        if distributed is not None:  # never imported: no process group was started (and torch may be half-imported)
            distributed.stop(wait=finished)
    return 0


if __name__ == "__main__":
    sys.exit(main())
