"""What drawing the nuisance physics per system costs the renderer, in one run.

Renders the same systems (default configuration, 64x64, one torch thread, one system's projections
per call as the bank does) with the nuisance physics fixed at the simulator's values and drawn per
system, alternating the two ``--repeats`` times, and reports images per second of each and their
ratio. With ``--baseline PATH``, a checkout of protolib from before the nuisance physics (e.g.
``git worktree add /tmp/old c23fe53``) is timed the same way in a subprocess, alternating too.

    python benchmarks/nuisance_cost.py [--systems 8] [--repeats 3] [--baseline /tmp/old] [--out results.json]

The machine is shared and noisy: compare the rows of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np
import torch

TIMER = """
import sys, time, numpy as np, torch
torch.set_num_threads(1)
from protolib.bank import draw_systems, render_systems
from protolib.config import load_config
config = load_config("default")
systems = draw_systems({n}, 8, 3)
render_systems(systems, np.arange(1), config.simulator, config.instrument, 0, "cpu")
start = time.perf_counter()
render_systems(systems, np.arange({n}), config.simulator, config.instrument, 0, "cpu")
print({n} * 8 / (time.perf_counter() - start))
"""


def rate(mode: str, n_systems: int) -> float:
    """Images per second of :func:`protolib.bank.render_systems` with the nuisance physics ``mode`` ("fixed" or
    "drawn")."""
    from protolib.bank import draw_systems, render_systems
    from protolib.config import load_config
    from protolib.parameters import Prior

    config = load_config("default")
    systems = draw_systems(n_systems, 8, 3, Prior(nuisance=mode), config.simulator)
    render_systems(systems, np.arange(1), config.simulator, config.instrument, 0, "cpu")  # warm-up
    start = time.perf_counter()
    render_systems(systems, np.arange(n_systems), config.simulator, config.instrument, 0, "cpu")
    return n_systems * 8 / (time.perf_counter() - start)


def baseline_rate(path: str, n_systems: int) -> float:
    """The same timing with the protolib checkout at ``path`` (a fresh process)."""
    env = {**os.environ, "PYTHONPATH": path}
    out = subprocess.run(
        [sys.executable, "-c", TIMER.format(n=n_systems)], cwd=path, env=env, capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", default=None, help="a protolib checkout from before the nuisance physics")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs = {"fixed": [], "drawn": [], **({"baseline": []} if args.baseline else {})}
    for _ in range(args.repeats):
        runs["fixed"].append(rate("fixed", args.systems))
        runs["drawn"].append(rate("drawn", args.systems))
        if args.baseline:
            runs["baseline"].append(baseline_rate(args.baseline, args.systems))
    best = {k: max(v) for k, v in runs.items()}
    report = {
        "machine": platform.node(),
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
        "images": args.systems * 8,
        "images_per_second": runs,
        "best": best,
        "drawn_over_fixed": best["drawn"] / best["fixed"],
    }
    if args.baseline:
        report["drawn_over_baseline"] = best["drawn"] / best["baseline"]
        report["fixed_over_baseline"] = best["fixed"] / best["baseline"]
    print(json.dumps(report, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
