"""``protolib simulate``, ``import-thesis`` and ``simulate-observation``: making banks and synthetic observations."""

from __future__ import annotations

import math
import sys

from ..runtime import ProtolibInputError
from .common import add_setting, beam_argument, one_line, output_file, path_argument, run_config, seed_argument

__all__ = ["register_simulate", "register_import_thesis", "register_simulate_observation"]


def register_simulate(sub) -> None:
    p = sub.add_parser(
        "simulate",
        help="simulate a bank of images into one HDF5 file",
        description="Simulate a bank of protostellar systems, each rendered in several projections.",
    )
    add_setting(p, "--systems", key="bank.n_systems", type=int, help="number of systems")
    add_setting(p, "--projections", key="bank.n_projections", type=int, help="viewing angles per system")
    add_setting(p, "--size", key="simulator.image_size", type=int, help="image size in pixels")
    add_setting(p, "--fov", key="simulator.field_of_view_au", type=float, help="field of view in au")
    add_setting(p, "--seed", key="bank.seed", type=seed_argument, help="random seed")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="render on this many local processes, --threads threads each (default: one per CPU core for banks "
        "of 1024 images or more on the CPU, else 1)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of each rendering process (default 1: on a shared machine more threads per process "
        "lose more to waiting than they gain)",
    )
    p.add_argument(
        "--scheduler", default=None, help="address of a running Dask scheduler (e.g. tcp://node:8786) to render on"
    )
    p.add_argument("--shard-systems", type=int, default=16, help="systems per shard in parallel runs (default 16)")
    p.add_argument("--out", required=True, type=output_file(".h5"), help="bank file to write (.h5)")

    p.set_defaults(handler=_simulate)


def _simulate(args) -> None:
    from ..bank import Bank
    from ..pipelines.simulate import local_workers, simulate_command_bank, simulate_plan
    from ..runtime import run_lock

    config = run_config(args)
    n_images = config.bank.n_systems * config.bank.n_projections
    print(
        simulate_plan(
            config, 1 if args.scheduler else local_workers(args.workers, args.threads, n_images, args.device)
        ),
        flush=True,
    )
    with run_lock(args.out, folder=False):  # a second run writing the same bank is refused, not raced
        report = simulate_command_bank(
            args.out,
            config,
            device=args.device,
            threads=args.threads,
            workers=args.workers,
            scheduler=args.scheduler,
            shard_systems=args.shard_systems,
        )
    if report.n_shards is not None:
        print(
            f"Rendered {report.rendered} of {report.n_shards} shards on the cluster's workers "
            f"({report.reused} reused from an earlier run)."
        )
    with Bank(args.out) as bank:
        print(f"Wrote {bank}")


def register_import_thesis(sub) -> None:
    p = sub.add_parser("import-thesis", help="convert a folder of the thesis's per-snapshot HDF5 files into a bank")
    p.add_argument(
        "folder", type=path_argument, help="folder of snapshot files with intensity_projection_1..8 and parameters"
    )
    p.add_argument("--out", required=True, type=output_file(".h5"), help="bank file to write (.h5)")
    add_setting(p, "--projections", key="bank.n_projections", type=int, help="projections per snapshot")
    p.add_argument("--pixel-size-au", type=float, default=None, help="pixel size of the images in au, if known")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable or incomplete files (each is reported)")

    p.set_defaults(handler=_import_thesis)


def _import_thesis(args) -> None:
    from ..bank import import_thesis_snapshots

    config = run_config(args)
    report = import_thesis_snapshots(
        args.folder,
        args.out,
        n_projections=config.bank.n_projections,
        pixel_size_au=args.pixel_size_au,
        on_error="skip" if args.skip_bad else "raise",
    )
    print(f"Imported {len(report.imported)} snapshot(s) into {args.out}.")
    for path, reason in report.skipped.items():
        print(f"protolib import-thesis: warning: skipped {path}: {one_line(reason)}", file=sys.stderr)


def register_simulate_observation(sub) -> None:
    p = sub.add_parser(
        "simulate-observation",
        help="write one simulated system as an ALMA-style FITS image",
        description="Draw one system from the bank's prior (or take one from a bank), render it at a chosen "
        "distance and pixel scale, convolve with a beam, add noise, and write an ALMA-style FITS "
        "image whose header holds the true parameters (PROTOLIB TRUE cards). The configuration's "
        "simulator section sets the rendering's sampling when --config or --set is given.",
    )
    p.add_argument("--out", type=output_file(".fits"), required=True, help="FITS file to write")
    p.add_argument("--distance", type=float, default=140.0, help="distance in pc (default 140)")
    p.add_argument("--pixel", type=float, default=0.03, help="pixel side in arcsec (default 0.03)")
    p.add_argument("--size", type=int, default=256, help="pixels per side (default 256)")
    p.add_argument(
        "--beam",
        nargs=3,
        type=float,
        metavar=("MAJ", "MIN", "PA"),
        default=[0.3, 0.25, 20.0],
        help="beam FWHM axes [arcsec] and PA [deg] (default 0.3 0.25 20)",
    )
    p.add_argument("--noise", type=float, default=5e-5, help="noise rms in Jy/beam (default 5e-5)")
    p.add_argument(
        "--seed", type=seed_argument, default=0, help="seed of the system drawn from the prior and of the noise"
    )
    _add_system_options(p)


def _add_system_options(p) -> None:
    """Which system is observed: from a bank or the prior, its inclination and position angle, its offset and name."""
    p.add_argument(
        "--from-bank", type=path_argument, default=None, help="take the system from this bank instead of the prior"
    )
    p.add_argument("--system", type=int, default=0, help="index of the system in --from-bank (default 0)")
    p.add_argument("--inclination", type=float, default=None, help="inclination in deg (default: drawn)")
    p.add_argument("--position-angle", type=float, default=None, help="disk PA in deg east of north (default: drawn)")
    p.add_argument(
        "--offset",
        nargs=2,
        type=float,
        metavar=("EAST", "NORTH"),
        default=[0.0, 0.0],
        help="source offset from the phase centre in arcsec",
    )
    p.add_argument("--object", default="protolib synthetic", help="OBJECT name")
    p.set_defaults(handler=_simulate_observation)


def _check_observation_options(args, beam) -> None:
    """Refuse impossible options of ``simulate-observation`` before any work, naming the option."""
    for name, value in (("--distance", args.distance), ("--pixel", args.pixel), ("--size", args.size)):
        if not (value > 0 and math.isfinite(value)):
            raise ProtolibInputError(f"{args.out}: {name} must be positive, got {value}.")
    field = args.size * args.pixel
    checks = [
        (16 <= args.size <= 8192, f"--size {args.size}: give 16 to 8192 pixels a side"),
        (beam.major_arcsec < field / 2, f'--beam {beam.major_arcsec:g}" is not smaller than half the {field:g}" image'),
        (
            all(math.isfinite(o) and abs(o) < field / 2 for o in args.offset),
            f'--offset {args.offset} lies outside the {field:g}" image',
        ),
        (math.isfinite(args.noise) and args.noise >= 0, f"--noise {args.noise} must be a number >= 0 (Jy/beam)"),
        (
            args.inclination is None or 0 <= args.inclination <= 180,
            f"--inclination {args.inclination} must be 0-180 deg",
        ),
        (args.position_angle is None or math.isfinite(args.position_angle), "--position-angle must be a number"),
        (
            args.object is None or (args.object.isascii() and args.object.isprintable()),
            f"--object {args.object!r}: FITS headers hold printable ASCII only",
        ),
    ]
    for good, problem in checks:
        if not good:
            raise ProtolibInputError(f"{args.out}: {problem}.")


def _observed_system(args) -> tuple[dict, float, float]:
    """The system to observe (from ``--from-bank`` or drawn from the prior), its inclination and PA in degrees."""
    from ..bank import Bank, draw_systems

    if args.from_bank is not None:
        with Bank(args.from_bank) as bank:
            if not 0 <= args.system < bank.n_systems:
                raise ProtolibInputError(
                    f"{args.from_bank}: --system {args.system} is out of range (0..{bank.n_systems - 1})."
                )
            system = {k: float(v[args.system]) for k, v in bank.parameters.items()}
            inclination, position_angle = bank.inclination[args.system, 0], bank.position_angle[args.system, 0]
    else:
        drawn = draw_systems(1, 1, args.seed)
        system = {k: float(v[0]) for k, v in drawn.items() if v.ndim == 1}
        inclination, position_angle = drawn["inclination"][0, 0], drawn["position_angle"][0, 0]
    inclination = args.inclination if args.inclination is not None else float(inclination)
    position_angle = args.position_angle if args.position_angle is not None else float(position_angle)
    return system, inclination, position_angle


def _simulate_observation(args) -> None:
    from ..observation import write_observation_fits

    beam = beam_argument(args.beam, str(args.out))
    _check_observation_options(args, beam)
    simulator = run_config(args).simulator if (args.config or args.set) else None
    system, inclination, position_angle = _observed_system(args)
    write_observation_fits(
        args.out,
        system,
        inclination_deg=inclination,
        position_angle_deg=position_angle,
        distance_pc=args.distance,
        pixel_arcsec=args.pixel,
        image_size=args.size,
        beam=beam,
        noise_rms_jy_beam=args.noise,
        seed=args.seed,
        config=simulator,
        source_offset_arcsec=tuple(args.offset),
        object_name=args.object,
    )
    print(
        f'Wrote {args.out}: {args.size}x{args.size} px of {args.pixel:g}" at {args.distance:g} pc, '
        f"inclination {inclination:.0f} deg, PA {position_angle:.0f} deg."
    )
