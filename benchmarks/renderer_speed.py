"""The renderer's speed and its agreement with a baseline renderer, in one run (issue 29).

Times, with one torch thread, drawn nuisance physics and the default configuration (64x64):

- ``render``: the clean images alone, one system's projections per call as the bank renders them;
- ``bank path``: :func:`protolib.bank.render_systems`, which adds the envelope mass and the instrument
  (beam and noise): what ``protolib simulate`` does per system.

Each is measured as images per CPU-second of the process (one thread: one core), after a warm-up
call, this checkout with its compiled kernels (``simulator.compile: true``) and with its eager ones
and, with ``--baseline PATH``, another protolib checkout (``git worktree add /tmp/base <commit>``), each
in a fresh process, alternating ``--repeats`` times; the best of each is reported with the ratios. The
warm-up call's wall time is reported too: for the compiled kernels, what compiling costs a process
(from torch's on-disk cache after the first run; ``TORCHINDUCTOR_CACHE_DIR`` set to an empty folder
measures a cold compile). With a baseline, the renderers' clean images of the same systems are also
compared: the relative difference in total flux and the largest difference of the azimuthally averaged
radial profile, as a fraction of its peak.

    python benchmarks/renderer_speed.py [--systems 16] [--repeats 3] [--baseline /tmp/base] [--out results.json]

The machine is shared and noisy: compare the rows of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

TIMER = r"""
import sys, time, numpy as np, torch
torch.set_num_threads(1)
from protolib.bank import draw_systems, render_systems
from protolib.config import load_config
from protolib.parameters import Prior
from protolib.simulator import render, RENDER_KEYS, NUISANCE_FIELDS
n, images_out = {n}, {images_out!r}
config = load_config("default")
if {compile!r} and hasattr(config.simulator, "compile"):
    config.simulator.compile = {compile!r}
systems = draw_systems(n, 8, 3, Prior(nuisance="drawn"), config.simulator)
per_image = {{k: torch.as_tensor(np.repeat(systems[k], 8)) for k in (*RENDER_KEYS, *NUISANCE_FIELDS)}}
angles = [torch.as_tensor(systems[k].reshape(-1)) for k in ("inclination", "position_angle")]
def clean():
    with torch.no_grad():
        return torch.cat([render({{k: v[8 * i:8 * i + 8] for k, v in per_image.items()}}, angles[0][8 * i:8 * i + 8],
                                 angles[1][8 * i:8 * i + 8], config.simulator, 140.0) for i in range(n)])
def bank_path():
    render_systems(systems, np.arange(n), config.simulator, config.instrument, 0, "cpu")
warm_up = time.time()
render_systems(systems, np.arange(1), config.simulator, config.instrument, 0, "cpu")  # warm-up (and compiling)
warm_up = time.time() - warm_up
rates = []
for f in (clean, bank_path):
    start = time.process_time()
    out = f()
    rates.append(n * 8 / (time.process_time() - start))
if images_out:
    np.save(images_out, clean().numpy())
print(rates[0], rates[1], warm_up)
"""


def timed(path: str, n_systems: int, images_out: str = "", compile: str = "") -> tuple[float, float, float]:
    """Images per CPU-second of ``render`` and of the bank path with the protolib checkout at ``path``, and the
    warm-up's wall time [s]; ``compile``: its ``simulator.compile`` setting (where it has one)."""
    env = {**os.environ, "PYTHONPATH": path}
    code = TIMER.format(n=n_systems, images_out=images_out, compile=compile)
    out = subprocess.run([sys.executable, "-c", code], cwd=path, env=env, capture_output=True, text=True, check=True)
    render_rate, bank_rate, warm_up = map(float, out.stdout.strip().splitlines()[-1].split())
    return render_rate, bank_rate, warm_up


def agreement(new: np.ndarray, old: np.ndarray) -> dict:
    """Total-flux and radial-profile differences of two image stacks ``(N, H, W)``, relative to ``old``."""
    new, old = new.astype(np.float64), old.astype(np.float64)
    flux = np.abs(new.sum((1, 2)) / old.sum((1, 2)) - 1.0)
    size = old.shape[-1]
    y, x = np.indices((size, size)) - (size - 1) / 2.0
    ring = np.hypot(x, y).astype(int).ravel()
    counts = np.bincount(ring)

    def profiles(images):
        return np.stack([np.bincount(ring, weights=image.ravel()) / counts for image in images])

    profile_new, profile_old = profiles(new), profiles(old)
    profile = np.abs(profile_new - profile_old).max(1) / profile_old.max(1)
    return {
        "images": int(old.shape[0]),
        "total_flux_max": float(flux.max()),
        "total_flux_median": float(np.median(flux)),
        "radial_profile_max": float(profile.max()),
        "radial_profile_median": float(np.median(profile)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", type=int, default=16, help="systems of 8 projections each")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", default=None, help="another protolib checkout to time and compare with")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    here = str(Path(__file__).resolve().parents[1])
    checkouts = {
        "this": (here, "true"),
        "this_eager": (here, "false"),
        **({"baseline": (args.baseline, "")} if args.baseline else {}),
    }
    runs = {name: [] for name in checkouts}
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(args.repeats):
            for name, (path, compile) in checkouts.items():
                runs[name].append(timed(path, args.systems, f"{folder}/{name}.npy" if repeat == 0 else "", compile))
        report = {
            "machine": f"{platform.node()}, {os.cpu_count()} cores",
            "load_average": os.getloadavg(),
            "images": args.systems * 8,
            "threads": 1,
            "images_per_cpu_second": {
                k: {"render": [r[0] for r in v], "bank_path": [r[1] for r in v]} for k, v in runs.items()
            },
            "warm_up_wall_s": {k: [r[2] for r in v] for k, v in runs.items()},
        }
        best = {k: {"render": max(r[0] for r in v), "bank_path": max(r[1] for r in v)} for k, v in runs.items()}
        report["best"] = best
        report["compiled_over_eager"] = {k: best["this"][k] / best["this_eager"][k] for k in ("render", "bank_path")}
        if args.baseline:
            report["speed_up"] = {k: best["this"][k] / best["baseline"][k] for k in ("render", "bank_path")}
            report["eager_speed_up"] = {k: best["this_eager"][k] / best["baseline"][k] for k in ("render", "bank_path")}
            report["agreement"] = agreement(np.load(f"{folder}/this.npy"), np.load(f"{folder}/baseline.npy"))
            report["agreement_eager"] = agreement(
                np.load(f"{folder}/this_eager.npy"), np.load(f"{folder}/baseline.npy")
            )
    print(json.dumps(report, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
