"""What training the book's autoencoder until its validation loss is flat costs (issue 30, chapter 02).

Trains the default configuration's autoencoder on its bank twice, through the same call as the book
(:func:`protolib.autoencoder.train_autoencoder`): once as configured (the book's run), and once with a
large epoch cap and early stopping on a flat validation loss (``--schedule``, ``--patience``,
``--min-delta``). For each it records the epochs run, the best epoch, why it stopped
(:func:`protolib.training.why_training_stopped`), the best validation loss, the mean squared error of
the test systems' reconstructions, and the wall-clock and CPU seconds. Chapter 02 quotes the second
from the committed ``benchmarks/results/autoencoder_convergence.json``.

    python benchmarks/autoencoder_convergence.py --bank BANK.h5 --threads 2 --out
benchmarks/results/autoencoder_convergence.json
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

from protolib.autoencoder import load_autoencoder, train_autoencoder
from protolib.bank import Bank
from protolib.config import load_config
from protolib.pipelines.train import autoencoder_settings, run_split
from protolib.training import why_training_stopped


def train_and_describe(bank, split, settings: dict, folder: Path, name: str) -> dict:
    """Train one autoencoder with ``settings`` and describe how it ended and what it reached."""
    wall, cpu = time.perf_counter(), time.process_time()
    path = train_autoencoder(bank, folder / f"{name}.pt", split=split, progress=False, **settings)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    model = load_autoencoder(path, "cpu")
    inputs, rebuilt = model.reconstruct(bank.load_images(split.test).reshape(-1, bank.image_size, bank.image_size))
    return {
        **why_training_stopped(model.checkpoint),
        "training": settings["training"].to_dict(),
        "best_validation_loss": model.checkpoint["best_validation_loss"],
        "test_reconstruction_mse": float(np.mean((inputs - rebuilt) ** 2)),
        "validation_losses": [h["validation_loss"] for h in model.history],
        "wall_s": wall,
        "cpu_s": cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="default")
    parser.add_argument(
        "--bank", type=Path, default=None, help="the configuration's bank (default: its artifacts folder's)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cap", type=int, default=300, help="most epochs of the run to convergence")
    parser.add_argument("--schedule", default="plateau")
    parser.add_argument("--patience", type=int, default=None, help="default: the configuration's")
    parser.add_argument("--min-delta", type=float, default=None, help="default: the configuration's")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    bank = Bank(args.bank or config.bank_path)
    split = run_split(config, bank)
    book = autoencoder_settings(config, {"training": {"num_threads": args.threads}})
    patience = args.patience or book["training"].patience
    min_delta = book["training"].min_delta if args.min_delta is None else args.min_delta
    flat = autoencoder_settings(
        config,
        {
            "training": {
                "num_threads": args.threads,
                "epochs": args.cap,
                "schedule": args.schedule,
                "patience": patience,
                "min_delta": min_delta,
            }
        },
    )
    report = {
        "machine": f"{platform.node()}, {os.cpu_count()} cores, {args.threads} torch threads",
        "config": args.config,
        "bank": repr(bank),
        "command": "python benchmarks/autoencoder_convergence.py "
        + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and k not in ("bank", "out")
        ),
    }
    with tempfile.TemporaryDirectory() as folder:
        report["book"] = train_and_describe(bank, split, book, Path(folder), "book")
        report["until_flat"] = train_and_describe(bank, split, flat, Path(folder), "until_flat")
    report["load_average"] = os.getloadavg()
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
