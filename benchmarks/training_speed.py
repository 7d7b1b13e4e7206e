"""Training speed of the autoencoder and the Siamese network against a baseline checkout, in one run (issue 29).

Each measurement runs in a fresh process with one protolib checkout (this one and, with ``--baseline PATH``,
another: ``git archive <commit> | tar -x -C /tmp/base``), alternating ``--repeats`` times, at each of
``--threads`` (torch CPU threads; 2 is the book's machine). A process trains, on the default configuration
as that checkout defines it and the same bank file, an autoencoder for ``--epochs`` epochs and then a
Siamese network on it for as many (early stopping off), and reports for each network

- ``images_per_s``: training images per second of the training steps (wall clock), epochs after the first;
- ``images_per_cpu_s``: training images per CPU-second of the process over the whole training call
  (set-up and validation included), the figure to compare on a shared machine.

The best of the repeats is kept per checkout and thread count, with their ratio. ``--autoencoder-batch-systems N``
gives both checkouts' autoencoders the same batch (the configurations may differ in it) for a like-for-like figure.
With ``--quality`` each
checkout also trains both networks once as its configuration says (its epochs, early stopping and
schedule, one thread) and reports what the project measures of them: the autoencoder's best epoch, epochs
run and best validation loss, with the mean squared error of its reconstructions of the validation and
test systems' stretched images (computed the same way for both); the Siamese network's best validation
loss and held-out Spearman correlation (``metrics.json``); and the seconds each training took.

    python benchmarks/training_speed.py --bank BANK.h5 [--baseline /tmp/base] [--repeats 3] [--threads 2 1] [--quality]
[--out out.json]

The bank must be readable by both checkouts. The machine is shared and noisy: compare the rows of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

TIMER = r"""
import json, sys, tempfile, time
from pathlib import Path
import numpy as np, torch
torch.set_num_threads({threads})
from protolib.autoencoder import load_autoencoder, train_autoencoder
from protolib.bank import Bank
from protolib.config import load_config
from protolib.pipelines.train import autoencoder_settings, run_split, siamese_settings
from protolib.siamese import load_siamese, train_siamese
epochs, quality, ae_batch = {epochs}, {quality}, {ae_batch}
config = load_config("default")
bank = Bank({bank!r})
split = run_split(config, bank)
changes = {{"num_threads": {threads}}} if quality else {{"epochs": epochs, "patience": epochs + 1, "num_threads":
{threads}}}

def rates(history, cpu_s):
    later = history[1:] if len(history) > 1 else history
    return {{"images_per_s": sum(h["images"] for h in later) / sum(h["train_seconds"] for h in later),
             "images_per_cpu_s": sum(h["images"] for h in history) / cpu_s}}

def reconstruction_mse(model, systems):
    images = bank.load_images(systems).reshape(-1, bank.image_size, bank.image_size)
    inputs, rebuilt = model.reconstruct(images)
    return float(np.mean((inputs - rebuilt) ** 2))

result = {{}}
with tempfile.TemporaryDirectory() as run:
    wall, cpu = time.perf_counter(), time.process_time()
    ae_changes = {{**changes, **({{"batch_systems": ae_batch}} if ae_batch else {{}})}}
    ae_path = train_autoencoder(bank, Path(run) / "autoencoder.pt", split=split, progress=False,
**autoencoder_settings(config, {{"training": ae_changes}}))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    ae = load_autoencoder(ae_path, "cpu")
    result["autoencoder"] = {{**rates(ae.history, cpu), "wall_s": wall, "cpu_s": cpu, "epochs_run": len(ae.history),
                             "best_epoch": ae.checkpoint["best_epoch"], "best_validation_loss":
ae.checkpoint["best_validation_loss"]}}
    if quality:
        result["autoencoder"].update(reconstruction_mse_validation=reconstruction_mse(ae, split.validation),
                                     reconstruction_mse_test=reconstruction_mse(ae, split.test))
    wall, cpu = time.perf_counter(), time.process_time()
    si_path = train_siamese(bank, ae_path, Path(run) / "siamese.pt", split=split, progress=False, test_metrics=quality,
                            **siamese_settings(config, {{"training": changes}}))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    si = load_siamese(si_path, "cpu")
    result["siamese"] = {{**rates(si.history, cpu), "wall_s": wall, "cpu_s": cpu, "epochs_run": len(si.history),
                         "best_epoch": si.checkpoint["best_epoch"], "best_validation_loss":
si.checkpoint["best_validation_loss"]}}
    if quality:
        metrics = json.loads((Path(run) / "metrics.json").read_text())
        result["siamese"].update(spearman=metrics["spearman"],
spearman_between_systems=metrics["spearman_between_systems"])
print("RESULT " + json.dumps(result))
"""


def measure(
    path: str, bank: str, threads: int, epochs: int, quality: bool = False, ae_batch: int | None = None
) -> dict:
    """One fresh process training both networks with the protolib checkout at ``path``."""
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    code = TIMER.format(
        threads=threads, epochs=epochs, quality=quality, ae_batch=ae_batch, bank=str(Path(bank).resolve())
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=path, env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"training with {path} failed:\n{out.stderr[-3000:]}")
    line = [row for row in out.stdout.splitlines() if row.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def best_of(runs: list[dict]) -> dict:
    """Per network, the highest images per second and per CPU-second over the repeats."""
    return {
        net: {key: max(run[net][key] for run in runs) for key in ("images_per_s", "images_per_cpu_s")}
        for net in ("autoencoder", "siamese")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bank", required=True, help="a bank of the default configuration that both checkouts read")
    parser.add_argument("--baseline", default=None, help="another protolib checkout to measure beside this one")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    parser.add_argument(
        "--epochs", type=int, default=4, help="epochs per network in the speed runs (the first is warm-up)"
    )
    parser.add_argument(
        "--autoencoder-batch-systems",
        type=int,
        default=None,
        help="speed runs: this many systems per autoencoder batch in both checkouts (default: each configuration's)",
    )
    parser.add_argument(
        "--quality", action="store_true", help="also train both networks as configured and compare their losses"
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    checkouts = {
        "this": str(Path(__file__).resolve().parents[1]),
        **({"baseline": str(Path(args.baseline).resolve())} if args.baseline else {}),
    }
    runs = {name: {threads: [] for threads in args.threads} for name in checkouts}
    for _ in range(args.repeats):
        for threads in args.threads:
            for name, path in checkouts.items():
                runs[name][threads].append(
                    measure(path, args.bank, threads, args.epochs, ae_batch=args.autoencoder_batch_systems)
                )
    report = {
        "machine": f"{platform.node()}, {os.cpu_count()} cores",
        "load_average_after_speed_runs": os.getloadavg(),
        "bank": args.bank,
        "epochs": args.epochs,
        "repeats": args.repeats,
        "autoencoder_batch_systems": args.autoencoder_batch_systems,
        "runs": {name: {str(t): v for t, v in by_threads.items()} for name, by_threads in runs.items()},
        "best": {name: {str(t): best_of(v) for t, v in by_threads.items()} for name, by_threads in runs.items()},
    }
    if args.baseline:
        report["speed_up"] = {
            str(t): {
                net: {
                    key: report["best"]["this"][str(t)][net][key] / report["best"]["baseline"][str(t)][net][key]
                    for key in ("images_per_s", "images_per_cpu_s")
                }
                for net in ("autoencoder", "siamese")
            }
            for t in args.threads
        }
    if args.quality:
        report["quality"] = {name: measure(path, args.bank, 1, 0, quality=True) for name, path in checkouts.items()}
        report["load_average_after_quality_runs"] = os.getloadavg()
    print(json.dumps(report, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
