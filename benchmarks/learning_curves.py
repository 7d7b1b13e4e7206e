"""Learning curves: how each method's parameter recovery and calibration grow with the training set (issue 27).

One 3,000-system bank made with ``configs/default.yaml`` (``/tmp/size-study-runs/N3000/bank.h5``) is cut
into fixed held-out systems and nested training sets, so that every size is scored on the SAME targets:
``--test-systems`` test and ``--validation-systems`` validation systems are drawn with ``--seed`` (disjoint,
every projection of each), and the training sets are the first 210, 700 and 2,100 systems of one
permutation (same seed) of the rest: the training parts of 300-, 1,000- and 3,000-system banks under the
configuration's 70/15/15 split. At each size an autoencoder and a Siamese network are trained with the
configuration's settings (one torch thread, ``num_threads=1``; checkpoints in ``--run-dir``/N<size>/), and
``protolib.evaluation.evaluate_methods`` (pixel chi-square, autoencoder latent, Siamese matches) and
``protolib.npe.add_npe_result`` (``npe`` on the frozen Siamese embedding, ``npe_end_to_end``) score the
methods with the configuration's ``evaluation:`` settings, the correction (k and a widening per parameter)
chosen on the validation systems.

Measured, per method, size and parameter (corrected figures): the RMS error of the median over the prior's
spread (``rms_error_over_prior_spread``, the spread of the size's own training images, as the library
reports it), the same over one fixed spread (the 2,100-system training set's, ``rms_error_over_fixed_spread``,
so that the sizes share a denominator), the median absolute error over the prior's spread, the 68% and 95%
coverage; per method and size the mean coverage; and the wall seconds (one thread) of every training (the
autoencoder, the Siamese network, each neural posterior estimate's flow) and of each evaluation. Then
(``--fit``, also run at the end) a curve ``error(N) = a + b * N**(-c)`` (N: training systems; a, b >= 0,
0 < c <= 2; else a log-linear fit) per method and parameter, extrapolated to 14,000 training systems (the
training part of configs/gpu.yaml's 20,000-system bank): an extrapolation from three sizes, marked as one.

Everything finished is kept (checkpoints, each method's figures in ``--run-dir``/N<size>/results.json), so a
rerun resumes; progress goes to ``--run-dir``/log.txt with timestamps. Reproduce (56 minutes on one
thread of a 2-core machine shared with other work, 4.4 GB at most; the largest size's trainings take 35 of them):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/learning_curves.py
    .venv/bin/python benchmarks/learning_curves.py --fit   # refit and rewrite the JSON's fits only

Writes ``benchmarks/results/learning_curves.json``; ``protolib.plots.evaluation.plot_learning_curves`` draws it.
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # the machine is shared: one thread everywhere, set before torch loads
os.environ["MKL_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
torch.set_num_interop_threads(1)

ROOT = Path(__file__).resolve().parent.parent
BANK = Path("/tmp/size-study-runs/N3000/bank.h5")
RUN_DIR = Path("/tmp/learning-curves")
OUT = ROOT / "benchmarks" / "results" / "learning_curves.json"
SIZES = (210, 700, 2100)  # training systems: the training parts of 300-, 1,000- and 3,000-system banks (70/15/15)
METHODS = ("pixel", "autoencoder", "siamese", "npe", "npe_end_to_end")
TRAIN_FRACTION = 0.7
EXTRAPOLATE_BANK = 20000  # configs/gpu.yaml's bank: 14,000 training systems
COMMAND = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/learning_curves.py"


def log(message: str, run_dir: Path = RUN_DIR) -> None:
    """A timestamped line on stdout and in ``run_dir/log.txt``, with the process's peak memory so far."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    line = f"{datetime.datetime.now().isoformat(timespec='seconds')} [peak {peak:.1f} GB] {message}"
    print(line, flush=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "log.txt", "a") as f:
        f.write(line + "\n")


def write(data: dict, path: Path) -> None:
    """``data`` as indented JSON, atomically (numpy numbers as Python's, NaN as null)."""
    from protolib.runtime import write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(data, path, strict=True)


def read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def held_out(n_systems: int, n_test: int, n_validation: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Test and validation systems (sorted) and the order in which the rest join the training sets."""
    order = np.random.default_rng(seed).permutation(n_systems)
    test, validation = np.sort(order[:n_test]), np.sort(order[n_test : n_test + n_validation])
    return test, validation, order[n_test + n_validation :]


def split_for(size: int, pool: np.ndarray, validation: np.ndarray, test: np.ndarray, seed: int):
    """The :class:`~protolib.splits.Split` of one size: the first ``size`` systems of ``pool`` train."""
    from protolib.splits import Split

    if size > len(pool):
        raise SystemExit(f"Only {len(pool)} systems are left for training; {size} asked for.")
    return Split(np.sort(pool[:size]).astype(np.int64), validation.astype(np.int64), test.astype(np.int64), seed=seed)


def timed_stage(name: str, path: Path, timings_path: Path, train, run_dir: Path) -> None:
    """Run ``train(resume)`` unless ``path`` is finished (its seconds in ``timings_path``); record its wall seconds."""
    from protolib.training import partial_checkpoint_path

    timings = read(timings_path)
    if path.exists() and name in timings:
        log(f"{path}: done before ({timings[name]['seconds']:.0f} s), kept", run_dir)
        return
    resume = partial_checkpoint_path(path).exists()
    log(f"training {name} -> {path}{' (resuming an interrupted run)' if resume else ''}", run_dir)
    start = time.perf_counter()
    train(resume)
    seconds = time.perf_counter() - start
    history = read(path.with_name(f"{path.stem}_history.json"))
    epochs = history.get("history", [])
    timings[name] = {
        "seconds": seconds,
        "resumed": resume,
        "epochs_run": len(epochs),
        "best_epoch": history.get("best_epoch"),
        "seconds_in_epochs": float(sum(e.get("seconds", 0.0) for e in epochs)),
    }
    write(timings, timings_path)
    log(f"trained {name}: {seconds:.0f} s, {len(epochs)} epochs (best {history.get('best_epoch')})", run_dir)


def train_networks(
    config, bank, split, folder: Path, epochs: int | None, ae_epochs: int | None, run_dir: Path
) -> tuple[Path, Path]:
    """The size's autoencoder and Siamese network, with the configuration's settings on one thread (trained once)."""
    from protolib.autoencoder import train_autoencoder
    from protolib.pipelines.train import autoencoder_settings, siamese_settings
    from protolib.siamese import train_siamese

    ae_settings = autoencoder_settings(
        config, {"training": {"num_threads": 1, **({"epochs": ae_epochs} if ae_epochs else {})}}
    )
    siamese_overrides = {"training": {"num_threads": 1, **({"epochs": epochs} if epochs else {})}}
    si_settings = siamese_settings(config, siamese_overrides)
    ae_path, si_path, timings = folder / "autoencoder.pt", folder / "siamese.pt", folder / "training_seconds.json"
    timed_stage(
        "autoencoder",
        ae_path,
        timings,
        lambda resume: train_autoencoder(
            bank, ae_path, split=split, resume=resume, progress=False, device="cpu", **ae_settings
        ),
        run_dir,
    )
    torch.set_num_threads(1)
    timed_stage(
        "siamese",
        si_path,
        timings,
        lambda resume: train_siamese(
            bank, ae_path, si_path, split=split, resume=resume, progress=False, device="cpu", **si_settings
        ),
        run_dir,
    )
    torch.set_num_threads(1)
    return ae_path, si_path


class FlowTimer:
    """Wraps ``protolib.npe.train_flow`` so that the flow's training seconds are known apart from the sampling."""

    def __init__(self):
        import protolib.npe as npe

        self.module, self.original, self.seconds, self.epochs, self.converged = npe, npe.train_flow, [], [], []

    def __enter__(self):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            flow = self.original(*args, **kwargs)
            self.seconds.append(time.perf_counter() - start)
            # protolib versions whose train_flow says how training went
            self.epochs.append(getattr(flow, "epochs", None))
            self.converged.append(getattr(flow, "converged", None))
            return flow

        self.module.train_flow = timed
        return self

    def __exit__(self, *exc):
        self.module.train_flow = self.original


def evaluate_size(
    bank, split, ae_path: Path, si_path: Path, settings, folder: Path, run_dir: Path, origin: dict
) -> dict:
    """Every method's figures at one size, each computed once (``folder/results.json`` keeps them)."""
    from dataclasses import replace

    from protolib.autoencoder import load_autoencoder
    from protolib.evaluation import Relevance, baseline_methods, evaluate_methods
    from protolib.npe import add_npe_result
    from protolib.siamese import load_siamese

    cache_path = folder / "results.json"
    cache = read(cache_path)
    model = load_siamese(si_path, "cpu")
    relevance = Relevance.from_model(model)
    for name in settings.methods:
        if name in cache:
            continue
        log(f"evaluating {name} ({len(split.train)} training systems)", run_dir)
        one = replace(settings, methods=[name])
        start = time.perf_counter()
        with FlowTimer() as timer:
            if name in ("npe", "npe_end_to_end"):
                results = add_npe_result(
                    {}, bank, split, relevance, one, model=model, autoencoder=load_autoencoder(ae_path, "cpu")
                )
            else:
                results = evaluate_methods(baseline_methods(model, bank, split.train, one), bank, relevance, split, one)
        torch.set_num_threads(1)
        if name not in results:
            raise SystemExit(f"{name} gave no result (is sbi installed?)")
        cache[name] = {
            "result": results[name].to_json(),
            "seconds": time.perf_counter() - start,
            "flow_training_seconds": timer.seconds[0] if timer.seconds else None,
            "code": {
                "git_commit": origin["git_commit"],
                "protolib_diff_sha256": origin["protolib_uncommitted_changes"]["diff_sha256"],
            },
            "flow_epochs": timer.epochs[0] if timer.epochs else None,
            "flow_converged": timer.converged[0] if timer.converged else None,
        }
        write(cache, cache_path)
        corrected = cache[name]["result"]["corrected"]["calibration"]
        log(
            f"{name}: {cache[name]['seconds']:.0f} s; corrected coverage {corrected['coverage_68']:.2f} / "
            f"{corrected['coverage_95']:.2f}",
            run_dir,
        )
    return cache


def compact(entry: dict, fixed_spread: dict) -> dict:
    """One method's figures at one size, corrected: coverage and the per-parameter errors the curves need."""
    result = entry["result"]
    corrected = result["corrected"]
    parameters = {}
    for name, row in corrected["parameters"].items():
        spread = (
            row["rms_error"] / row["rms_error_over_prior_spread"]
            if row["rms_error_over_prior_spread"]
            else float("nan")
        )
        parameters[name] = {
            "in_target_similarity": row["in_target_similarity"],
            "rms_error_over_prior_spread": row["rms_error_over_prior_spread"],
            "rms_error_over_fixed_spread": row["rms_error"] / fixed_spread[name],
            "median_abs_error_over_prior_spread": row["median_abs_error"] / spread,
            "rms_error": row["rms_error"],
            "unit": row["unit"],
            "prior_spread": spread,
            "coverage_68": row["coverage_68"],
            "coverage_95": row["coverage_95"],
            "width_68_over_prior_spread": row["width_68_over_prior_spread"],
            "uncorrected_rms_error_over_prior_spread": result["at_top_k"]["parameters"][name][
                "rms_error_over_prior_spread"
            ],
        }
    target = [n for n, row in parameters.items() if row["in_target_similarity"]]
    return {
        "chosen_k": result.get("chosen_k"),
        "chosen_widening": result.get("chosen_widening"),
        "coverage_68": corrected["calibration"]["coverage_68"],
        "coverage_95": corrected["calibration"]["coverage_95"],
        "uncorrected_coverage_68": result["at_top_k"]["calibration"]["coverage_68"],
        "uncorrected_coverage_95": result["at_top_k"]["calibration"]["coverage_95"],
        "mean_target_rms_error_over_prior_spread": float(
            np.mean([parameters[n]["rms_error_over_prior_spread"] for n in target])
        ),
        "mean_target_rms_error_over_fixed_spread": float(
            np.mean([parameters[n]["rms_error_over_fixed_spread"] for n in target])
        ),
        "ndcg": corrected.get("retrieval", {}).get("ndcg"),
        "spearman": corrected.get("similarity", {}).get("spearman_per_target"),
        "evaluation_seconds": entry["seconds"],
        "parameters": parameters,
    }


def power_law(n, a, b, c):
    return a + b * np.power(n, -c)


def fit_curve(sizes, errors, extrapolate_to: float) -> dict:
    """``error(N) = a + b N^-c`` (a, b >= 0, 0 < c <= 2) by least squares, else ``alpha + beta log10 N``; and its value
    at ``extrapolate_to``."""
    from scipy.optimize import curve_fit

    n, y = np.asarray(sizes, dtype=float), np.asarray(errors, dtype=float)
    reference = n.max()  # fitted in N / N_max, which keeps b of order the errors
    best = None
    for c0 in (0.25, 0.5, 1.0, 1.5):
        try:
            p, _ = curve_fit(
                power_law,
                n / reference,
                y,
                p0=(max(y.min() * 0.5, 1e-3), max(y.max() - y.min(), 1e-3), c0),
                bounds=([0.0, 0.0, 1e-6], [np.inf, np.inf, 2.0]),
                maxfev=20000,
            )
        except (RuntimeError, ValueError):
            continue
        sse = float(np.sum((power_law(n / reference, *p) - y) ** 2))
        if best is None or sse < best[1]:
            best = (p, sse)
    if best is not None:
        a, b_ref, c = (float(v) for v in best[0])
        fitted = power_law(n / reference, a, b_ref, c)
        at_bound = [
            name
            for name, v, low, high in (("a", a, 0, None), ("b", b_ref, 0, None), ("c", c, 1e-6, 2.0))
            if abs(v - low) < 1e-6 or (high is not None and abs(v - high) < 1e-6)
        ]
        beta, alpha = np.polyfit(np.log10(n), y, 1)
        return {
            "model": "a + b * N**(-c)",
            "a": a,
            "b": b_ref * reference**c,
            "c": c,
            "fitted": fitted.tolist(),
            "residuals": (y - fitted).tolist(),
            "parameters_at_bounds": at_bound,
            "extrapolation": {
                "value": float(power_law(extrapolate_to / reference, a, b_ref, c)),
                "is_extrapolation": True,
                "log_linear_value": float(alpha + beta * np.log10(extrapolate_to)),
                "note": "three sizes for three constants: the power law passes through them unless a bound holds "
                "(parameters_at_bounds); log_linear_value "
                "(alpha + beta log10 N, least squares) shows how much the extrapolation rests on the curve chosen",
            },
        }
    beta, alpha = np.polyfit(np.log10(n), y, 1)
    fitted = alpha + beta * np.log10(n)
    return {
        "model": "alpha + beta * log10(N) (the power law failed)",
        "alpha": float(alpha),
        "beta": float(beta),
        "fitted": fitted.tolist(),
        "residuals": (y - fitted).tolist(),
        "extrapolation": {"value": float(alpha + beta * np.log10(extrapolate_to)), "is_extrapolation": True},
    }


def add_fits(summary: dict) -> dict:
    """Fit every method's corrected RMS error over the prior's spread (each parameter and the target mean) against
    training systems."""
    sizes = summary["train_systems"]
    to = summary["extrapolation"]["train_systems"]
    fits = {}
    for method, data in summary["methods"].items():
        rows = [data["sizes"][str(s)] for s in sizes if str(s) in data["sizes"]]
        if len(rows) < 3:
            continue
        fits[method] = {
            name: fit_curve(sizes, [r["parameters"][name]["rms_error_over_prior_spread"] for r in rows], to)
            for name in summary["target_parameters"]
        }
        fits[method]["mean_target"] = fit_curve(sizes, [r["mean_target_rms_error_over_prior_spread"] for r in rows], to)
    summary["fits"] = {
        "figure": "corrected rms_error_over_prior_spread",
        "N": "training systems",
        "extrapolated_to": summary["extrapolation"],
        "by_method": fits,
    }
    return summary


def provenance() -> dict:
    import platform

    import sbi
    import scipy

    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    import hashlib

    diff = subprocess.run(
        ["git", "-C", str(ROOT), "diff", "HEAD", "--", "protolib"], capture_output=True, text=True
    ).stdout
    changed = subprocess.run(
        ["git", "-C", str(ROOT), "diff", "HEAD", "--name-only", "--", "protolib"], capture_output=True, text=True
    ).stdout
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "git_commit": commit,
        "protolib_uncommitted_changes": {
            "files": changed.split(),
            "diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if diff else None,
            "note": "when the run's process started; the working tree is shared with other sessions",
        },
        "machine": {
            "cpu_count": os.cpu_count(),
            "threads_used": 1,
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "sbi": sbi.__version__,
            "scipy": scipy.__version__,
            "note": "2 CPU cores shared with another session's work; one torch thread throughout",
        },
    }


def fixed_spreads(bank, systems: np.ndarray, names: list[str]) -> dict:
    """The spread of each scaled parameter over every image of ``systems`` (the largest training set)."""
    from protolib.normalise import scaled_image_parameters

    values, _ = scaled_image_parameters(bank, names)
    rows = (np.asarray(systems)[:, None] * bank.n_projections + np.arange(bank.n_projections)).ravel()
    return {name: float(values[rows, j].std()) for j, name in enumerate(names)}


def reductions(args) -> str:
    """What this run changed from the configuration's training and evaluation, in words."""
    done = [
        f"Siamese epochs {args.siamese_epochs} at every size" if args.siamese_epochs else "",
        f"autoencoder epochs {args.autoencoder_epochs} at every size" if args.autoencoder_epochs else "",
        f"one projection ({args.projection}) of each held-out system as targets, at every size"
        if args.projection is not None
        else "",
        args.note or "",
    ]
    done = [d for d in done if d]
    return (
        "; ".join(done)
        if done
        else "none: the configuration's epochs at every size, every projection of every held-out system"
    )


def run(args) -> dict:
    """Train and evaluate every size (resuming what is done) and gather the figures."""
    from protolib.bank import Bank
    from protolib.config import load_config
    from protolib.pipelines.train import siamese_settings

    origin = provenance()  # the code this process imported (other sessions edit the working tree meanwhile)
    config = load_config("default")
    bank = Bank(args.bank)
    chosen = {"methods": list(args.methods), "projection": args.projection}
    settings = dataclasses.replace(config.evaluation, **{k: v for k, v in chosen.items() if v is not None})
    test, validation, pool = held_out(bank.n_systems, args.test_systems, args.validation_systems, args.seed)
    log(
        f"start: bank {args.bank} ({bank.n_systems} systems), sizes {args.sizes}, {len(test)} test / {len(validation)} "
        "validation systems, "
        f"methods {list(args.methods)}, projection {args.projection}",
        args.run_dir,
    )
    per_size, training = {}, {}
    for size in args.sizes:
        split = split_for(size, pool, validation, test, args.seed)
        folder = args.run_dir / f"N{size}"
        folder.mkdir(parents=True, exist_ok=True)
        ae_path, si_path = train_networks(
            config, bank, split, folder, args.siamese_epochs, args.autoencoder_epochs, args.run_dir
        )
        per_size[size] = evaluate_size(bank, split, ae_path, si_path, settings, folder, args.run_dir, origin)
        training[size] = read(folder / "training_seconds.json")
        log(f"size {size} done", args.run_dir)
    names = [*bank.physical_parameters, "inclination"]
    spread = fixed_spreads(bank, pool[: max(args.sizes)], names)
    target = list(siamese_settings(config)["target"].parameters)
    summary = {
        "description": __doc__.split("\n")[0],
        "command": COMMAND,
        **origin,
        "settings": {
            "config": "default",
            "bank": str(args.bank),
            "bank_systems": bank.n_systems,
            "projections": bank.n_projections,
            "seed": args.seed,
            "evaluation": {
                k: getattr(settings, k)
                for k in (
                    "top_k",
                    "projection",
                    "npe_samples",
                    "npe_max_epochs",
                    "correction",
                    "k_candidates",
                    "widening_candidates",
                    "seed",
                )
            },
            "targets": f"{len(test)} test systems x {bank.n_projections if args.projection is None else 1} "
            "projection(s)",
            "siamese_epochs": args.siamese_epochs or config.section("siamese")["training"]["epochs"],
            "autoencoder_epochs": args.autoencoder_epochs or config.section("autoencoder")["training"]["epochs"],
            "reductions": reductions(args),
            "prior_spread": "rms_error_over_prior_spread divides by the spread over each size's own training images "
            "(the library's "
            "figure); rms_error_over_fixed_spread by the 2,100-system training set's spread at every size",
        },
        "systems": {
            "test": test.tolist(),
            "validation": validation.tolist(),
            "training_order": pool[: max(args.sizes)].tolist(),
        },
        "train_systems": list(args.sizes),
        "bank_systems_equivalent": [round(s / TRAIN_FRACTION) for s in args.sizes],
        "target_parameters": target,
        "fixed_spread": spread,
        "training_seconds": {str(s): training[s] for s in args.sizes},
        "methods": {},
        "extrapolation": {
            "train_systems": round(EXTRAPOLATE_BANK * TRAIN_FRACTION),
            "bank_systems": EXTRAPOLATE_BANK,
            "note": "configs/gpu.yaml's bank size; an extrapolation from three sizes, not a measurement",
        },
    }
    for method in args.methods:
        sizes = {str(s): compact(per_size[s][method], spread) for s in args.sizes}
        for s in args.sizes:
            flow = per_size[s][method].get("flow_training_seconds")
            if flow is not None:
                summary["training_seconds"][str(s)][method] = {
                    "seconds": flow,
                    "epochs_run": per_size[s][method].get("flow_epochs"),
                    "converged": per_size[s][method].get("flow_converged"),
                    "note": "the flow's training (sbi; max epochs from the evaluation settings, early stopping on its "
                    "held-out loss), sampling excluded",
                }
        summary["methods"][method] = {
            "description": per_size[args.sizes[0]][method]["result"]["description"],
            "sizes": sizes,
        }
    return summary


def table(summary: dict) -> str:
    """The corrected RMS error over the prior's spread (target parameters), mean coverage and training seconds, as
    markdown."""
    lines = [
        "| method | N train | " + " | ".join(summary["target_parameters"]) + " | mean | cov68 | cov95 |",
        "|" + " --- |" * (len(summary["target_parameters"]) + 5),
    ]
    for method, data in summary["methods"].items():
        for size, row in data["sizes"].items():
            cells = [f"{row['parameters'][n]['rms_error_over_prior_spread']:.3f}" for n in summary["target_parameters"]]
            lines.append(
                f"| {method} | {size} | "
                + " | ".join(cells)
                + f" | {row['mean_target_rms_error_over_prior_spread']:.3f} | "
                f"{row['coverage_68']:.3f} | {row['coverage_95']:.3f} |"
            )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fit", action="store_true", help="only refit the curves of an existing --out JSON")
    parser.add_argument("--bank", type=Path, default=BANK)
    parser.add_argument("--run-dir", type=Path, default=RUN_DIR)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--test-systems", type=int, default=100)
    parser.add_argument("--validation-systems", type=int, default=60)
    parser.add_argument(
        "--projection", type=int, default=None, help="one projection of each held-out system (default: all)"
    )
    parser.add_argument(
        "--siamese-epochs",
        type=int,
        default=None,
        help="fewer Siamese epochs at every size (default: the configuration's)",
    )
    parser.add_argument(
        "--autoencoder-epochs",
        type=int,
        default=None,
        help="fewer autoencoder epochs at every size (default: the configuration's)",
    )
    parser.add_argument("--note", default=None, help="what was reduced, for the JSON's settings")
    parser.add_argument("--seed", type=int, default=0, help="draws the held-out systems and the training order")
    args = parser.parse_args(argv)
    if args.fit:
        summary = add_fits(read(args.out))
    else:
        started = time.perf_counter()
        summary = add_fits(run(args))
        summary["script_wall_seconds_this_run"] = time.perf_counter() - started
    write(summary, args.out)
    log(f"wrote {args.out}\n{table(summary)}", args.run_dir)


if __name__ == "__main__":
    sys.exit(main())
