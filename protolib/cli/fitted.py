"""``protolib bank-for``: a bank and networks made for one's own map (its field, resolution and band)."""

from __future__ import annotations

import math

from ..runtime import ProtolibInputError
from .common import parse_set, path_argument, run_config, run_reporting_warnings, setting_overrides

__all__ = ["register_bank_for"]


def register_bank_for(sub) -> None:
    p = sub.add_parser(
        "bank-for",
        help="build the bank and networks that fit a map (its field, pixel, beam, noise and band)",
        description="Derive from the map(s) the bank that fits them (the usable field about the source, a pixel "
        "that samples the beam, the map's frequency, beam and noise, the distance), write "
        "OUT/config.yaml, build OUT/bank.h5 and train OUT/autoencoder.pt and OUT/siamese.pt. Maps "
        "of one setup (a survey's) share one bank; maps of one source at several frequencies (one "
        "per band, the frequency read from each file) make one bank in those bands, each at its "
        "map's beam and noise; a rerun, or another map of the same setup, "
        "reuses what OUT holds. --config names the configuration it starts from (bank size, prior, "
        "networks); --set changes any of it, e.g. --set bank.n_systems=1000.",
    )
    p.add_argument(
        "maps",
        nargs="+",
        type=path_argument,
        metavar="MAP",
        help="continuum map(s) of one setup, or of one source in several bands (FITS)",
    )
    p.add_argument(
        "--distance",
        type=float,
        required=True,
        action="append",
        help="distance to the source(s) in pc: once for all maps, or once per map in their order",
    )
    p.add_argument(
        "--frequency", type=float, default=None, help="observing frequency in GHz, when the files do not give it"
    )
    p.add_argument(
        "--out",
        required=True,
        type=path_argument,
        help="folder for config.yaml, setup.json, bank.h5, autoencoder.pt, siamese.pt",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_bank_for)


def _bank_for(args) -> None:
    from ..config import apply_overrides
    from ..pipelines.bank_for import bank_for

    for distance in args.distance:
        if not (math.isfinite(distance) and distance > 0):
            raise ProtolibInputError(f"--distance must be a positive number of pc, got {distance}.")
    report = run_reporting_warnings(
        "bank-for",
        lambda: bank_for(
            args.maps,
            args.distance if len(args.distance) > 1 else args.distance[0],
            args.out,
            run_config(args),
            apply_overrides(parse_set(args.set), setting_overrides(args)),
            frequency_ghz=args.frequency,
            progress=not args.quiet,
        ),
    )
    made = [name for name, reused in report.reused.items() if not reused]
    if report.setup.bands:
        print(
            f"{'Built ' + ', '.join(made) if made else 'Reused everything'} in {report.folder}/ ({report.seconds:.0f} "
            "s): the bank holds "
            f"{len(report.setup.bands)} bands ({', '.join(f'{b.frequency_ghz:.4g}' for b in report.setup.bands)} GHz); "
            "the networks "
            f"are its {report.setup.frequency_ghz:.4g} GHz band's (open that band with "
            f"Bank(path).band({report.setup.frequency_ghz:.4g}))."
        )
        return
    print(
        f"{'Built ' + ', '.join(made) if made else 'Reused everything'} in {report.folder}/ ({report.seconds:.0f} s). "
        "Match a map of "
        f"this setup with:\n  protolib match --model {report.siamese} --bank {report.bank} --target "
        f"{report.setup.maps[-1]} "
        f"--distance {args.distance[-1]:g} --out MATCHES"
    )
