"""Coverage under physics outside the bank's family, before and after a misspecification term.

The configuration's held-out test systems (and chapter 06b's added ones) rendered with each family of
:data:`protolib.out_of_family.FAMILIES` (a static power-law envelope; external heating), matched by
the configuration's Siamese network with its calibrated intervals, and scored; a term learnt on one
family (``--learn-on``) is then scored on every set, the bank's own included (what it costs there).

    python benchmarks/out_of_family.py --config default --learn-on power_law_envelope \
        --json benchmarks/results/out_of_family.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="default")
    parser.add_argument("--learn-on", default="power_law_envelope")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from protolib.config import load_config
    from protolib.out_of_family import FAMILIES, IN_FAMILY, family_table
    from protolib.pipelines.out_of_family import run_out_of_family

    started = time.perf_counter()
    result = run_out_of_family(load_config(args.config), learn_on=args.learn_on, progress=False)
    seconds = time.perf_counter() - started
    tables = {}
    for family in (IN_FAMILY, *FAMILIES):
        tables[family] = family_table(result.rows, family)
        print(f"\n{family}" + (f" ({FAMILIES[family][0]})" if family in FAMILIES else "") + f":\n{tables[family]}")
    print(f"\nterm learnt on {result.learnt_on}; {seconds:.0f} s")
    print(
        "terms the bank's own test systems alone ask: "
        + ", ".join(f"{k} {v:.2f}" for k, v in result.terms_own_physics.items())
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "config": args.config,
                    "learnt_on": result.learnt_on,
                    "terms": result.terms,
                    "terms_own_physics": result.terms_own_physics,
                    "calibration": result.calibration,
                    "rows": result.rows,
                    "families": {k: v[0] for k, v in FAMILIES.items()},
                    "test_systems": int(len(np.unique(result.evaluations[IN_FAMILY].target_system))),
                    "tables": tables,
                    "seconds": seconds,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
