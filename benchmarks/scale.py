"""Scaling: bank generation with 1 and 2 Dask workers, training with 1 and 2 processes, memory while embedding a big
bank.

Three measurements, each run on its own (``--part``) or all together:

``generation``
    :func:`protolib.cluster.simulate_bank_parallel` on a local Dask cluster of 1 then 2 worker
    processes (one thread each), wall-clock time including the cluster's start, and whether the two
    banks are bit-identical.
``training``
    ``protolib train-autoencoder`` in one process, then under ``torchrun --nproc_per_node 2`` (one
    thread per process), on the same bank, global batch and epochs, augmentation off (so that the two
    loss histories can be compared); training images per second from the written history (images
    seen / training seconds, validation excluded).
``embedding``
    A bank of random images with the bank schema, ``--bank-gb`` GB on disk, embedded by an untrained
    Siamese network of the default size through :func:`protolib.matching.bank_embeddings` with a cache
    file (embeddings written to disk batch by batch), in a fresh process; its peak resident memory
    (``ru_maxrss``) is compared with the bank's size and with the process's memory before embedding.

Usage::

    python benchmarks/scale.py --out benchmarks/scale.json
    python benchmarks/scale.py --part embedding --bank-gb 2 --workdir /tmp/scale
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def generation(workdir: Path, n_systems: int, image_size: int) -> dict:
    from protolib.cluster import simulate_bank_parallel
    from protolib.simulator import SimulatorConfig

    config = SimulatorConfig(image_size=image_size, envelope_samples=24, disk_samples=24)
    rows, digests = [], []
    for workers in (1, 2):
        out = workdir / f"generated_{workers}.h5"
        tick = time.perf_counter()
        simulate_bank_parallel(
            out, n_systems, 8, seed=0, config=config, shard_systems=8, n_workers=workers, progress=False
        )
        seconds = time.perf_counter() - tick
        with h5py.File(out, "r") as f:
            digests.append(hashlib.sha256(f["images"][()].tobytes()).hexdigest())
        rows.append({"workers": workers, "seconds": seconds, "systems_per_second": n_systems / seconds})
    return {
        "systems": n_systems,
        "projections": 8,
        "image_size": image_size,
        "shard_systems": 8,
        "runs": rows,
        "bit_identical": digests[0] == digests[1],
        "speedup": rows[0]["seconds"] / rows[1]["seconds"],
    }


def training(workdir: Path, n_systems: int, image_size: int, epochs: int) -> dict:
    from protolib.bank import simulate_bank
    from protolib.simulator import SimulatorConfig

    bank = workdir / "training_bank.h5"
    if not bank.exists():
        simulate_bank(
            bank,
            n_systems,
            8,
            seed=0,
            config=SimulatorConfig(image_size=image_size, envelope_samples=16, disk_samples=16),
            progress=False,
        )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "PROTOLIB_DEVICE": "cpu",
    }
    arguments = [
        "-m",
        "protolib",
        "train-autoencoder",
        "--bank",
        str(bank),
        "--config",
        "tiny",
        "--epochs",
        str(epochs),
        "--batch-systems",
        "8",
        "--threads",
        "1",
        "--quiet",
        "--set",
        "autoencoder.training.patience=100",
        *[
            part
            for key, value in (("rotate", "false"), ("flip", "false"), ("beam_jitter", 0), ("noise_jitter", 0))
            for part in ("--set", f"autoencoder.augmentation.{key}={value}")
        ],
    ]
    launchers = {
        1: [sys.executable],
        2: [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
    }
    rows = []
    for processes, launcher in launchers.items():
        out = workdir / f"training_{processes}"
        tick = time.perf_counter()
        subprocess.run([*launcher, *arguments, "--out", str(out)], env=env, check=True, capture_output=True)
        wall = time.perf_counter() - tick
        history = json.loads((out / "autoencoder_history.json").read_text())["history"]
        images, seconds = sum(h["images"] for h in history), sum(h["train_seconds"] for h in history)
        rows.append(
            {
                "processes": processes,
                "threads_per_process": 1,
                "images_per_second": images / seconds,
                "train_seconds": seconds,
                "wall_seconds_with_startup": wall,
                "train_loss": [h["train_loss"] for h in history],
            }
        )
    return {
        "systems": n_systems,
        "projections": 8,
        "image_size": image_size,
        "epochs": epochs,
        "batch_systems": 8,
        "runs": rows,
        "speedup": rows[1]["images_per_second"] / rows[0]["images_per_second"],
        "largest_relative_loss_difference": float(
            np.max(np.abs(np.subtract(rows[1]["train_loss"], rows[0]["train_loss"])) / np.abs(rows[0]["train_loss"]))
        ),
    }


def write_random_bank(path: Path, gigabytes: float, image_size: int, projections: int = 8) -> int:
    """A bank of random images with the bank schema, about ``gigabytes`` GB, written 256 systems at a time."""
    from protolib.bank import write_bank_attributes, write_bank_tables
    from protolib.instrument import Instrument
    from protolib.parameters import Prior, sample_viewing

    n_systems = int(gigabytes * 2**30 / (projections * image_size**2 * 4))
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        images = f.create_dataset(
            "images",
            (n_systems, projections, image_size, image_size),
            dtype="f4",
            chunks=(16, projections, image_size, image_size),
        )
        images.attrs["unit"] = "Jy/beam"
        block = rng.random((256, projections, image_size, image_size), dtype=np.float32) * 1e-3
        for start in range(0, n_systems, 256):
            count = min(256, n_systems - start)
            images[start : start + count] = block[:count] * rng.uniform(0.5, 2.0, (count, 1, 1, 1)).astype(np.float32)
        write_bank_tables(f, sample_viewing(n_systems, projections, rng), Prior().sample(n_systems, rng))
        write_bank_attributes(
            f, seed=0, config=None, instrument=Instrument(), prior=None, source="benchmark", pixel_size_au=10.0
        )
    return n_systems


def embedding_child(bank_path: Path, cache: Path, batch_size: int) -> None:
    """Run in a fresh process: embed the bank into ``cache``; print peak memory before and after, as JSON."""
    import torch
    import torch.nn.functional as F

    from protolib.autoencoder import AutoencoderConfig
    from protolib.bank import Bank
    from protolib.images import ImagePreprocessing
    from protolib.matching import bank_embeddings
    from protolib.siamese import SiameseConfig, SiameseNetwork

    torch.set_num_threads(2)
    with Bank(bank_path) as bank:
        network = SiameseNetwork(AutoencoderConfig(image_size=bank.image_size), SiameseConfig()).eval()
        preprocessing = ImagePreprocessing()

        def embed(images: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return F.normalize(network(*preprocessing(torch.from_numpy(images))), dim=1).numpy()

        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        tick = time.perf_counter()
        result = bank_embeddings(
            embed, bank, cache_path=cache, key={"model": "untrained"}, batch_size=batch_size, progress=False
        )
        seconds = time.perf_counter() - tick
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            json.dumps(
                {
                    "images": int(len(result.system)),
                    "dimension": int(result.vectors.shape[1]),
                    "seconds": seconds,
                    "peak_rss_mb_before": before,
                    "peak_rss_mb": after,
                    "embeddings_mb": result.vectors.nbytes / 2**20,
                }
            )
        )


def embedding(workdir: Path, gigabytes: float, image_size: int, batch_size: int) -> dict:
    bank = workdir / "big_bank.h5"
    tick = time.perf_counter()
    n_systems = write_random_bank(bank, gigabytes, image_size)
    written = time.perf_counter() - tick
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [
        sys.executable,
        __file__,
        "--embedding-child",
        str(bank),
        "--cache",
        str(workdir / "big_bank.embeddings.npz"),
        "--batch-size",
        str(batch_size),
    ]
    child = json.loads(
        subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    )
    bank_mb = bank.stat().st_size / 2**20
    return {
        "bank_mb": bank_mb,
        "systems": n_systems,
        "projections": 8,
        "image_size": image_size,
        "batch_size": batch_size,
        "bank_write_seconds": written,
        **child,
        "images_per_second": child["images"] / child["seconds"],
        "peak_rss_over_bank_size": child["peak_rss_mb"] / bank_mb,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["generation", "training", "embedding", "all"], default="all")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where banks and runs go (default: a temporary folder)"
    )
    parser.add_argument("--generation-systems", type=int, default=64)
    parser.add_argument("--training-systems", type=int, default=240)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=32, help="image size for generation and training")
    parser.add_argument("--bank-gb", type=float, default=1.0, help="size on disk of the bank embedded")
    parser.add_argument("--embedding-image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=256, help="images per embedding batch")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--embedding-child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.embedding_child:
        embedding_child(args.embedding_child, args.cache, args.batch_size)
        return
    with tempfile.TemporaryDirectory(prefix="protolib-scale-") as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        report = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count()}
        if args.part in ("generation", "all"):
            report["generation"] = generation(workdir, args.generation_systems, args.image_size)
            print("generation", json.dumps(report["generation"]))
        if args.part in ("training", "all"):
            report["training"] = training(workdir, args.training_systems, args.image_size, args.epochs)
            print("training", json.dumps(report["training"]))
        if args.part in ("embedding", "all"):
            report["embedding"] = embedding(workdir, args.bank_gb, args.embedding_image_size, args.batch_size)
            print("embedding", json.dumps(report["embedding"]))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
