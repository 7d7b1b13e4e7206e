"""The bank command as a user runs it, beside the renderer's own single-thread rate, in one run.

Measures, on this machine and in this order:

1. the renderer in this process at 64x64 (default configuration), with 1 and with 2 torch threads:
   images per second of wall time and per CPU-second;
2. the whole command ``protolib simulate --systems 250 --projections 8 --size 64`` (start-up and the
   HDF5 file included) with the old default (one process, 2 threads), one process with 1 thread, and
   the new default (one single-threaded worker process per core from 1024 images, else one process), and
   the new default with the renderer's compiled kernels (``--set simulator.compile=true``, what a bank of
   ``COMPILE_FROM_IMAGES`` images or more gets; each worker compiles, from torch's on-disk cache once warm);
   with ``--baseline PATH``, the default command of another protolib checkout too (for example
   ``git worktree add /tmp/base <commit>``).

    python benchmarks/simulate_command.py [--systems 250] [--baseline /tmp/base] [--out results.json]
    python benchmarks/simulate_command.py --default-only --repeats 3 --baseline /tmp/base   # the default command only

The machine is shared and noisy: compare the rows of one run, not runs of different days.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from protolib.bank import draw_systems, render_systems
from protolib.config import load_config
from protolib.pipelines.simulate import PARALLEL_FROM_IMAGES
from protolib.simulator import SimulatorConfig


def renderer_rate(threads: int, n_systems: int = 16, n_projections: int = 8) -> dict:
    """Images per wall-second and per CPU-second of :func:`render_systems` with ``threads`` torch threads."""
    config = load_config("default")
    simulator = SimulatorConfig(**{**config.simulator.to_dict(), "image_size": 64})
    systems = draw_systems(n_systems, n_projections, seed=3)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        render_systems(systems, np.arange(1), simulator, config.instrument, 0, "cpu")  # warm-up
        wall, cpu = time.perf_counter(), time.process_time()
        render_systems(systems, np.arange(n_systems), simulator, config.instrument, 0, "cpu")
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        torch.set_num_threads(previous)
    n = n_systems * n_projections
    return {"threads": threads, "images_per_second": n / wall, "images_per_cpu_second": n / cpu}


def command_rate(
    label: str, extra: list[str], n_systems: int, n_projections: int = 8, checkout: str | None = None
) -> dict:
    """Images per second of the whole ``protolib simulate`` command (a fresh process, start-up included),
    of this checkout or of the protolib checkout at ``checkout``."""
    with tempfile.TemporaryDirectory() as folder:
        argv = [
            sys.executable,
            "-m",
            "protolib",
            "simulate",
            "--config",
            "default",
            "--systems",
            str(n_systems),
            "--projections",
            str(n_projections),
            "--size",
            "64",
            "--out",
            str(Path(folder) / "bank.h5"),
            *extra,
        ]
        start = time.perf_counter()
        usage = os.times()
        env = {**os.environ, "PROTOLIB_DEVICE": "cpu", **({"PYTHONPATH": checkout} if checkout else {})}
        subprocess.run(argv, check=True, capture_output=True, env=env, cwd=checkout)
        seconds = time.perf_counter() - start
        after = os.times()
    cpu = (after.children_user - usage.children_user) + (after.children_system - usage.children_system)
    n = n_systems * n_projections
    return {
        "command": label,
        "arguments": " ".join(extra) or "(defaults)",
        "seconds": seconds,
        "images_per_second": n / seconds,
        "images_per_cpu_second": n / cpu if cpu > 0 else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", type=int, default=250)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    parser.add_argument("--baseline", default=None, help="another protolib checkout whose default command is timed too")
    parser.add_argument(
        "--default-only",
        action="store_true",
        help="time only the default command (and the baseline's), alternated --repeats times, best of each",
    )
    parser.add_argument("--repeats", type=int, default=1, help="with --default-only: runs of each command")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    renderer, commands = (
        ([], _default_against_baseline(args, cores)) if args.default_only else _every_command(args, cores)
    )
    _print_and_write(args, cores, renderer, commands)


def _default_label(n_systems: int, cores: int) -> str:
    return f"default: {cores if n_systems * 8 >= PARALLEL_FROM_IMAGES else 1} process(es), 1 thread each"


def _every_command(args, cores: int) -> tuple[list, list]:
    """The renderer in this process (1 and 2 threads) and every variant of the command, once each."""
    renderer = [renderer_rate(1), renderer_rate(2)]
    commands = [
        command_rate("old default: 1 process, 2 threads", ["--workers", "1", "--threads", "2"], args.systems),
        command_rate("1 process, 1 thread", ["--workers", "1", "--threads", "1"], args.systems),
        command_rate(_default_label(args.systems, cores), [], args.systems),
        command_rate("default, compiled kernels (warm cache)", ["--set", "simulator.compile=true"], args.systems),
    ]
    if args.baseline:
        commands.append(
            command_rate(f"baseline {args.baseline}, its default", [], args.systems, checkout=args.baseline)
        )
    return renderer, commands


def _default_against_baseline(args, cores: int) -> list:
    """The default command of this checkout and of ``--baseline``, alternated ``--repeats`` times: the fastest run of
    each (the machine is shared; the least disturbed run is the closest to what the command costs), with every run's
    time."""
    runs: dict[str, list] = {}
    for _ in range(max(1, args.repeats)):
        runs.setdefault("this", []).append(command_rate(_default_label(args.systems, cores), [], args.systems))
        if args.baseline:
            runs.setdefault("baseline", []).append(
                command_rate(f"baseline {args.baseline}, its default", [], args.systems, checkout=args.baseline)
            )
    best = []
    for rows in runs.values():
        fastest = min(rows, key=lambda row: row["seconds"])
        best.append({**fastest, "every_run_seconds": [round(row["seconds"], 2) for row in rows]})
    if len(best) == 2:
        best[0]["ratio_to_baseline"] = best[1]["seconds"] / best[0]["seconds"]
    return best


def _print_and_write(args, cores: int, renderer: list, commands: list) -> None:
    print(f"{platform.node()}: {cores} cores, load average {os.getloadavg()[0]:.2f}, torch {torch.__version__}")
    if renderer:
        print("renderer in-process (64x64):")
    for row in renderer:
        print(
            f"  {row['threads']} thread(s): {row['images_per_second']:7.1f} images/s, "
            f"{row['images_per_cpu_second']:7.1f} images/CPU-s"
        )
    print(f"protolib simulate --systems {args.systems} --projections 8 --size 64 (whole command):")
    for row in commands:
        per_cpu = f"{row['images_per_cpu_second']:.1f}" if row["images_per_cpu_second"] else "n/a"
        runs = f"  runs {row['every_run_seconds']} s" if "every_run_seconds" in row else ""
        ratio = f"  {row['ratio_to_baseline']:.2f}x the baseline" if "ratio_to_baseline" in row else ""
        print(
            f"  {row['command']:48s} {row['seconds']:6.1f} s  {row['images_per_second']:7.1f} images/s  {per_cpu} "
            f"images/CPU-s{ratio}{runs}"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "machine": platform.node(),
                    "cores": cores,
                    "load_average": os.getloadavg(),
                    "renderer": renderer,
                    "commands": commands,
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
