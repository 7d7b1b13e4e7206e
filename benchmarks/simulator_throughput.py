"""Simulator and bank-reading throughput on this machine (see benchmarks/README.md).

Measures images per second for the simulator at 64x64 and 128x128 on the device it finds, how the
cost grows with pixels x line-of-sight samples, and how fast training batches are read from a bank.

    python benchmarks/simulator_throughput.py [--images 64] [--device cpu] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from protolib.bank import Bank, draw_systems, simulate_bank
from protolib.runtime import default_device
from protolib.simulator import SimulatorConfig, render


def images_per_second(config: SimulatorConfig, n_images: int, device: torch.device, repeats: int = 3) -> float:
    systems = draw_systems(n_images, 1, seed=1)
    params = {
        k: torch.as_tensor(systems[k], device=device)
        for k in (
            "stellar_mass",
            "accretion_rate",
            "disk_radius",
            "disk_mass",
            "luminosity",
            "disk_scale_height",
            "cavity_angle",
        )
    }
    inclination = torch.as_tensor(systems["inclination"][:, 0], device=device)
    position_angle = torch.as_tensor(systems["position_angle"][:, 0], device=device)
    with torch.no_grad():
        render({k: v[:2] for k, v in params.items()}, inclination[:2], position_angle[:2], config, 140.0)  # warm-up
        best, best_cpu = float("inf"), float("inf")
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start, start_cpu = time.perf_counter(), time.process_time()
            render(params, inclination, position_angle, config, 140.0)
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
            best_cpu = min(best_cpu, time.process_time() - start_cpu)
    return n_images / best, n_images / best_cpu


def bank_read_rate(batch_systems: int = 32) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.h5"
        config = SimulatorConfig(image_size=64, envelope_samples=16, disk_samples=16)
        simulate_bank(path, n_systems=256, n_projections=8, seed=0, config=config, progress=False)
        with Bank(path) as bank:
            rng = np.random.default_rng(0)
            start = time.perf_counter()
            n_images = 0
            for _ in range(20):
                systems = rng.choice(bank.n_systems, batch_systems, replace=False)
                n_images += bank.load_images(systems).shape[0] * bank.n_projections
            elapsed = time.perf_counter() - start
    return {"images_per_second": n_images / elapsed, "batch_systems": batch_systems, "projections": 8, "image_size": 64}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64, help="images per timed batch")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    device = default_device(args.device)
    results = {
        "load_average_1min": os.getloadavg()[0],
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, device {device}",
        "simulator": [],
    }
    print(results["machine"], f"(load average {results['load_average_1min']:.1f})")
    for size in (64, 128):
        for env, disk in ((32, 24), (64, 48)):
            config = SimulatorConfig(image_size=size, envelope_samples=env, disk_samples=disk)
            n = args.images if size == 64 else max(8, args.images // 4)
            rate, per_cpu_second = images_per_second(config, n, device)
            work = size * size * (env + disk)
            row = {
                "image_size": size,
                "envelope_samples": env,
                "disk_samples": disk,
                "images_per_second": rate,
                "images_per_cpu_second": per_cpu_second,
                "cpu_ns_per_pixel_sample": 1e9 / (per_cpu_second * work),
            }
            results["simulator"].append(row)
            print(
                f"simulator {size}x{size}, {env}+{disk} samples: {rate:8.1f} images/s wall, {per_cpu_second:8.1f} per "
                "CPU-second "
                f"({row['cpu_ns_per_pixel_sample']:.1f} CPU-ns per pixel-sample)"
            )
    results["bank_read"] = bank_read_rate()
    print(
        f"bank read (batches of 32 systems x 8 projections, 64x64): {results['bank_read']['images_per_second']:.0f} "
        "images/s"
    )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
