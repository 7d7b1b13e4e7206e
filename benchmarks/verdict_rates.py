"""How often the image-space verdict flags synthetic misfits, and plain systems, per peak S/N (issue 25).

For each bank folder given (``bank.h5`` and ``siamese.pt``, as ``protolib bank-for`` or the book leave
them), ``--n`` targets of each kind (plain systems from the bank's prior; a binary, an off-centre
clump, a ring, spiral arms, a streamer: :mod:`protolib.misfits`) in each peak-S/N bin are matched and
judged as ``protolib match`` judges a target. Prints the fraction flagged per kind and bin, and which
of the verdict's tests flagged them; ``--out`` keeps every target's row as JSON.

    python benchmarks/verdict_rates.py artifacts/default [/path/to/fitted] [--n 16] [--seed 0] [--flux-tolerance 0.2]
[--out rates.json]

Goal (issue 25): at least 90% of each misfit kind flagged, at most 10% of plain systems.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from protolib.bank import Bank
from protolib.matching import Matcher
from protolib.misfits import rates_table, verdict_rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="folders holding bank.h5 and siamese.pt")
    parser.add_argument("--n", type=int, default=16, help="targets per kind and S/N bin")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--flux-tolerance",
        type=float,
        default=0.0,
        help="each match's fluxes may be scaled within this fraction to fit (as protolib match allows "
        "twice a map's flux-calibration error; default 0)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)  # the machine is shared: one thread per process waits least
    results = {}
    for folder in map(Path, args.folders):
        start = time.perf_counter()
        with Bank(folder / "bank.h5") as bank:
            matcher = Matcher.from_model(folder / "siamese.pt", bank, progress=False)
            rows = verdict_rates(matcher, n=args.n, seed=args.seed, flux_tolerance=args.flux_tolerance)
            setup = (
                f"{bank.n_systems} systems, {bank.image_size}^2 px of {bank.pixel_size_au:.3g} au, beam "
                f"{bank.instrument.beam}"
            )
        results[str(folder)] = {"setup": setup, "rows": rows, "seconds": time.perf_counter() - start}
        print(f"\n{folder}: {setup} ({time.perf_counter() - start:.0f} s)")
        table = rates_table(rows)
        columns = list(table[0])
        print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
        for line in table:
            print("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in line.values()) + " |")
        for kind in dict.fromkeys(r["kind"] for r in rows):
            reasons = [reason for r in rows if r["kind"] == kind for reason in r["reasons"]]
            counts = {key: reasons.count(key) for key in ("bank", "absolute", "structure")}
            print(
                f"  {kind}: flagged by test {counts}; median residual peak "
                f"{np.median([r['residual_peak_fraction'] for r in rows if r['kind'] == kind]):.2f} of the peak"
            )
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
