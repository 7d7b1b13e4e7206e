"""Training throughput of the autoencoder and the Siamese network, and the share of time spent waiting for data.

Runs a few epochs of each through the real engine (:func:`protolib.training.fit`) and reports, per
stage: images per second, pairs per second (Siamese), and the fraction of the training-step time
spent waiting for the next batch (reading the bank and building the batch). Augmentation and the
image stretch run inside the step, on the training device, and are not counted as waiting.
``wall_s`` and ``cpu_s`` are per stage, validation and held-out evaluation included; on a shared
machine compare ``cpu_s`` (with ``--threads 1``) rather than wall-clock figures.

Usage::

    python benchmarks/training_throughput.py --config default --epochs 2 --threads 2
    python benchmarks/training_throughput.py --bank bank.h5 --stream     # read the bank chunk by chunk
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from protolib.autoencoder import load_autoencoder, train_autoencoder
from protolib.bank import Bank
from protolib.config import load_config
from protolib.pipelines.simulate import ensure_bank
from protolib.pipelines.train import autoencoder_settings, run_split, siamese_settings
from protolib.runtime import default_device
from protolib.siamese import load_siamese, train_siamese


def summarise(history: list[dict], pairs_per_image: float = 0.0) -> dict:
    """Throughput over the epochs after the first (warm-up excluded when there is more than one)."""
    epochs = history[1:] if len(history) > 1 else history
    seconds = sum(h["train_seconds"] for h in epochs)
    images = sum(h["images"] for h in epochs)
    waiting = sum(h["data_seconds"] for h in epochs)
    result = {
        "images_per_s": images / seconds,
        "data_wait_share": waiting / seconds,
        "epoch_train_s": seconds / len(epochs),
    }
    if pairs_per_image:
        result["pairs_per_s"] = images * pairs_per_image / seconds
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="default", help="configuration (its bank is simulated when missing)")
    parser.add_argument("--bank", type=Path, default=None, help="a bank file instead of the configuration's")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per stage (the first is warm-up)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--stream", action="store_true", help="read the bank chunk by chunk instead of loading it into memory"
    )
    args = parser.parse_args()
    config = load_config(args.config)
    bank = Bank(args.bank) if args.bank else ensure_bank(config)
    split = run_split(config, bank)
    changes = {
        "epochs": args.epochs,
        "patience": args.epochs + 1,
        "num_threads": args.threads,
        **({"memory_limit_mb": 0.0} if args.stream else {}),
    }
    ae = autoencoder_settings(config, {"training": changes})
    si = siamese_settings(config, {"training": changes})
    results = {
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads() if not args.threads else args.threads} torch threads",
        "device": str(default_device()),
        "bank": repr(bank),
        "stream": args.stream,
    }
    with tempfile.TemporaryDirectory() as run:
        start, cpu = time.perf_counter(), time.process_time()
        ae_path = train_autoencoder(bank, Path(run) / "autoencoder.pt", split=split, progress=False, **ae)
        results["autoencoder"] = {
            **summarise(load_autoencoder(ae_path, "cpu").history),
            "wall_s": time.perf_counter() - start,
            "cpu_s": time.process_time() - cpu,
        }
        start, cpu = time.perf_counter(), time.process_time()
        si_path = train_siamese(bank, ae_path, Path(run) / "siamese.pt", split=split, progress=False, **si)
        per_batch = si["training"].batch_systems * (si["training"].projections_per_system or bank.n_projections)
        results["siamese"] = {
            **summarise(load_siamese(si_path, "cpu").history, (per_batch - 1) / 2),
            "wall_s": time.perf_counter() - start,
            "cpu_s": time.process_time() - cpu,
            "images_per_batch": per_batch,
            "pairs_per_batch": per_batch * (per_batch - 1) // 2,
        }
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
