"""Adversarial probe of issue 31, items 6, 11, 13-15: runs that race, model/bank pairs of different setups, huge
settings, signals.

Every input runs ``python -m protolib ...`` in a subprocess against the tree given by ``--tree`` (its
``protolib`` is put first on ``PYTHONPATH``), and each outcome is put in one class:

- ``clean refusal``: exit 2, one error line, no traceback, nothing written;
- ``correct success``: exit 0 where success is right;
- ``traceback``; ``misleading message`` (a refusal whose line does not say what is wrong);
- ``silent wrong result``: exit 0 where the run should have been refused (a model of another setup, two runs
  into one output both saying "Wrote", a report naming a bank rewritten under it);
- ``killed for memory``: a run that would not fit, stopped by the probe's memory limit (``RLIMIT_AS``);
- ``slow to stop``: a signal acted on after more than 5 s.

Usage (about 15 minutes a tree on 2 cores)::

    git worktree add /tmp/probe-runs-before 6920ea3
    python benchmarks/probe_runs.py --tree /tmp/probe-runs-before --work /tmp/probe_before
    python benchmarks/probe_runs.py --tree . --work /tmp/probe_after
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# bytes of address space a probed run may take: a run meant to be refused must not take the machine
MEMORY_LIMIT = 6 * 2**30


def protolib(
    tree: Path, argv: list[str], *, timeout: float = 300, limit: int | None = None
) -> tuple[int, str, str, float]:
    """``python -m protolib ARGV`` with ``tree``'s protolib: (exit code, stdout, stderr, seconds)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),
        "OMP_NUM_THREADS": "1",
        "PROTOLIB_DEVICE": "cpu",
        "PYTHONWARNINGS": "ignore::DeprecationWarning",
    }

    def cap():
        if limit:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    start = time.monotonic()
    try:
        # in the tree: `-m` puts the working folder first on sys.path
        done = subprocess.run(
            [sys.executable, "-m", "protolib", *argv],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            preexec_fn=cap,
            cwd=tree,
        )
        return done.returncode, done.stdout, done.stderr, time.monotonic() - start
    except subprocess.TimeoutExpired as expired:
        return -999, str(expired.stdout or ""), str(expired.stderr or ""), time.monotonic() - start


BATCH = """
import contextlib, io, json, sys, warnings
from protolib.cli import main
results = []
for argv in json.loads(sys.stdin.read()):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("default")
        try:
            code = main(argv)
        except BaseException as error:  # noqa: BLE001 - a traceback, as the command line would show it
            import traceback
            traceback.print_exc()
            code = 1
    results.append([code, out.getvalue(), err.getvalue()])
print(json.dumps(results))
"""


def protolib_batch(tree: Path, argvs: list[list[str]]) -> list[tuple[int, str, str]]:
    """Many ``protolib`` commands run one after the other in one process (``protolib.cli.main``): the same exit codes
    and
    messages as the command line, without importing torch once per command. For the inputs that need no process of
    their own."""
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),
        "OMP_NUM_THREADS": "1",
        "PROTOLIB_DEVICE": "cpu",
        "PYTHONWARNINGS": "ignore::DeprecationWarning",
    }
    done = subprocess.run(
        [sys.executable, "-c", BATCH],
        input=json.dumps(argvs),
        capture_output=True,
        text=True,
        env=env,
        timeout=3600,
        cwd=tree,
    )
    return [tuple(r) for r in json.loads(done.stdout.strip().splitlines()[-1])]


def error_lines(stderr: str) -> list[str]:
    lines = [part for line in stderr.splitlines() for part in line.split("\r") if part.strip()]
    return [
        x
        for x in lines
        if "it/s]" not in x
        and "img/s]" not in x
        and "%|" not in x
        and ": warning: " not in x
        and "Warning" not in x
        and not x.startswith("  ")
    ]


def classify_refusal_expected(rc: int, stderr: str, pattern: str, written: Path | None = None) -> str:
    """The class of a run that should be refused with a line matching ``pattern``."""
    if "Traceback" in stderr:
        return (
            "killed for memory"
            if re.search(r"MemoryError|can't allocate|Cannot allocate|out of memory", stderr)
            else "traceback"
        )
    if rc in (-9, -999):
        return "killed for memory"
    if rc == 0:
        return "silent wrong result"
    errors = error_lines(stderr)
    if rc == 2 and len(errors) == 1 and re.search(pattern, errors[0]) and (written is None or not written.exists()):
        return "clean refusal"
    return "misleading message"


def classify_success_expected(rc: int, stderr: str) -> str:
    if rc == 0:
        return "correct success"
    if "Traceback" in stderr:
        return "traceback"
    return "misleading message"  # refused what is fine


# ---------------------------------------------------------------------------------------------
# The inputs


def build_base(tree: Path, work: Path) -> dict:
    """A tiny bank and its model, made by the probed tree."""
    work.mkdir(parents=True, exist_ok=True)
    bank, run = work / "bank.h5", work / "run"
    steps = [
        ["simulate", "--config", "tiny", "--systems", "12", "--projections", "2", "--out", str(bank)],
        ["train-autoencoder", "--config", "tiny", "--bank", str(bank), "--out", str(run), "--epochs", "1", "--quiet"],
        [
            "train-siamese",
            "--config",
            "tiny",
            "--bank",
            str(bank),
            "--autoencoder",
            str(run / "autoencoder.pt"),
            "--out",
            str(run),
            "--epochs",
            "1",
            "--quiet",
        ],
    ]
    for argv in steps:
        rc, _, err, _ = protolib(tree, argv)
        assert rc == 0, err[-2000:]
    return {"bank": bank, "model": run / "siamese.pt", "autoencoder": run / "autoencoder.pt"}


# bank name -> (settings, same setup as the model's bank?)
SETUPS = {
    "fov_500": (["--fov", "500"], False),
    "fov_900": (["--fov", "900"], False),
    "fov_999_9": (["--fov", "999.9"], True),
    "fov_1100": (["--fov", "1100"], False),
    "fov_2000": (["--fov", "2000"], False),
    "fov_4000": (["--fov", "4000"], False),
    "freq_100": (["--set", "simulator.frequency_ghz=100"], False),
    "freq_345": (["--set", "simulator.frequency_ghz=345"], False),
    "freq_230_1": (["--set", "simulator.frequency_ghz=230.1"], True),
    "freq_240": (["--set", "simulator.frequency_ghz=240"], False),
    "beam_0_3": (["--set", "instrument.beam_major_arcsec=0.3", "--set", "instrument.beam_minor_arcsec=0.3"], False),
    "beam_1": (["--set", "instrument.beam_major_arcsec=1.0", "--set", "instrument.beam_minor_arcsec=1.0"], False),
    "beam_elliptic": (["--set", "instrument.beam_minor_arcsec=0.15"], False),
    "beam_pa_circular": (["--set", "instrument.beam_position_angle_deg=45"], True),
    "dist_100": (["--set", "instrument.distance_pc=100"], False),
    "dist_400": (["--set", "instrument.distance_pc=400"], False),
    "dist_140_05": (["--set", "instrument.distance_pc=140.05"], True),
    "noise_1e-3": (["--set", "instrument.noise_rms_jy_beam=0.001"], True),
    "seed_5": (["--seed", "5"], True),
    "nuisance_fixed": (["--set", "prior.nuisance=fixed"], True),
    "band_and_beam": (
        [
            "--set",
            "simulator.frequency_ghz=100",
            "--set",
            "instrument.beam_major_arcsec=1",
            "--set",
            "instrument.beam_minor_arcsec=1",
        ],
        False,
    ),
}


def setup_inputs(tree: Path, work: Path, base: dict) -> list[tuple[str, str]]:
    """Every bank of :data:`SETUPS` matched (two ways) and mapped with the base model (one process for all)."""
    outcomes, simulated, runs = [], [], []
    for name, (settings, same) in SETUPS.items():
        bank = work / f"bank_{name}.h5"
        simulated.append(
            ["simulate", "--config", "tiny", "--systems", "12", "--projections", "2", *settings, "--out", str(bank)]
        )
        for label, argv in {
            "match": ["match", "--model", str(base["model"]), "--bank", str(bank), "--target-system", "1"],
            "match top-k 5": [
                "match",
                "--model",
                str(base["model"]),
                "--bank",
                str(bank),
                "--target-system",
                "2",
                "--top-k",
                "5",
            ],
            "embedding-map": ["embedding-map", "--model", str(base["model"]), "--bank", str(bank)],
        }.items():
            out = work / f"out_{name}_{label.replace(' ', '_')}"
            written = Path(str(out) + ".png") if label == "embedding-map" else out
            runs.append((f"setup {name}: {label}", same, written, [*argv, "--out", str(written)]))
    for _argv, (rc, _, err) in zip(simulated, protolib_batch(tree, simulated)):
        assert rc == 0, err[-2000:]
    for (label, same, written, _), (rc, _, err) in zip(runs, protolib_batch(tree, [r[3] for r in runs])):
        outcomes.append(
            (
                label,
                classify_success_expected(rc, err)
                if same
                else classify_refusal_expected(rc, err, r"another setup|trained on \d+x\d+ px", written),
            )
        )
    return outcomes


def race(tree: Path, first: list[str], second: list[str], delay: float) -> tuple[tuple, tuple, tuple]:
    """Two runs, the second started ``delay`` s after the first: each (rc, stderr, start, end)."""

    def timed(argv, wait):
        time.sleep(wait)
        start = time.monotonic()
        rc, out, err, _ = protolib(tree, argv)
        return rc, out, err, start, time.monotonic()

    with ThreadPoolExecutor(2) as pool:
        a, b = pool.submit(timed, first, 0.0), pool.submit(timed, second, delay)
        return a.result(), b.result()


def classify_race(a: tuple, b: tuple) -> str:
    overlapped = b[3] < a[4] and a[3] < b[4]
    if "Traceback" in a[2] + b[2]:
        return "traceback"
    if a[0] == 0 and b[0] == 0:
        return "silent wrong result" if overlapped else "correct success"
    refused = [r for r in (a, b) if r[0] == 2]
    if len(refused) == 1 and len(error_lines(refused[0][2])) == 1 and "another protolib run" in refused[0][2]:
        return "clean refusal"
    return "misleading message"


def race_inputs(tree: Path, work: Path, base: dict) -> list[tuple[str, str]]:
    outcomes = []
    for delay in (0.0, 0.5, 1.5):
        tag = str(delay).replace(".", "_")
        bank = work / f"race_{tag}.h5"
        a, b = race(
            tree,
            *[
                [
                    "simulate",
                    "--config",
                    "tiny",
                    "--systems",
                    "30",
                    "--projections",
                    "2",
                    "--seed",
                    str(s),
                    "--out",
                    str(bank),
                ]
                for s in (1, 2)
            ],
            delay,
        )
        outcomes.append((f"race simulate +{delay}s", classify_race(a, b)))
        for stage in ("autoencoder", "siamese"):
            out = work / f"race_{stage}_{tag}"
            argv = [f"train-{stage}", "--config", "tiny", "--bank", str(base["bank"]), "--out", str(out), "--quiet"]
            if stage == "siamese":
                argv += ["--autoencoder", str(base["autoencoder"])]
            a, b = race(tree, [*argv, "--epochs", "2"], [*argv, "--epochs", "3"], delay)
            outcomes.append((f"race train-{stage} +{delay}s", classify_race(a, b)))
        out = work / f"race_match_{tag}"
        argv = [
            "match",
            "--model",
            str(base["model"]),
            "--bank",
            str(base["bank"]),
            "--target-system",
            "1",
            "--out",
            str(out),
        ]
        a, b = race(tree, argv, [*argv[:-4], "--target-system", "2", "--out", str(out)], delay)
        outcomes.append((f"race match +{delay}s", classify_race(a, b)))
    return outcomes


def rewrite_inputs(tree: Path, work: Path, base: dict) -> list[tuple[str, str]]:
    """A bank rewritten in place (another simulate into it) while match or evaluate reads it."""
    outcomes = []
    for command in ("match", "evaluate"):
        for delay in (0.0, 1.5, 3.0):
            bank = work / f"rewritten_{command}_{delay}.h5"
            shutil.copy(base["bank"], bank)
            out = work / f"rewritten_{command}_{delay}_out"
            argv = (
                ["match", "--model", str(base["model"]), "--bank", str(bank), "--target-system", "1", "--out", str(out)]
                if command == "match"
                else [
                    "evaluate",
                    "--config",
                    "tiny",
                    "--model",
                    str(base["model"]),
                    "--bank",
                    str(bank),
                    "--out",
                    str(out),
                ]
            )
            rewrite = [
                "simulate",
                "--config",
                "tiny",
                "--systems",
                "12",
                "--projections",
                "2",
                "--seed",
                "9",
                "--out",
                str(bank),
            ]
            a, b = race(tree, argv, rewrite, delay)
            rewritten_before_end = b[0] == 0 and b[4] < a[4]
            if "Traceback" in a[2]:
                outcome = "traceback"
            elif a[0] == 0:
                outcome = "silent wrong result" if rewritten_before_end else "correct success"
            elif (
                a[0] == 2
                and len(error_lines(a[2])) == 1
                and re.search(r"replaced or rewritten|another bank|another setup", a[2])
            ):
                outcome = "clean refusal" if rewritten_before_end or "another" in a[2] else "misleading message"
            else:
                outcome = "misleading message"
            outcomes.append((f"bank rewritten during {command} +{delay}s", outcome))
    return outcomes


def huge_inputs(tree: Path, work: Path, base: dict) -> list[tuple[str, str]]:
    """Settings that would not fit in memory: refused before any work, or stopped by the probe's memory limit."""
    outcomes = []
    cases = [
        (["--set", f"simulator.oversample={o}", "--projections", str(p)], f"oversample {o}, {p} projections")
        for o in (1000, 2000, 5000, 10_000, 100_000, 1_000_000)
        for p in (1, 4)
    ]
    cases += [
        (["--size", str(s), "--set", f"simulator.oversample={o}"], f"size {s}, oversample {o}")
        for s in (2048, 4096)
        for o in (16, 64)
    ]
    cases += [
        (["--set", "simulator.oversample=3000", "--workers", str(w)], f"oversample 3000, {w} workers") for w in (2, 4)
    ]
    for settings, label in cases:
        out = work / f"huge_{len(outcomes)}.h5"
        rc, _, err, _ = protolib(
            tree,
            ["simulate", "--config", "tiny", "--systems", "1", *settings, "--out", str(out)],
            timeout=90,
            limit=MEMORY_LIMIT,
        )
        outcomes.append(
            (f"simulate {label}", classify_refusal_expected(rc, err, r"needs about .* more than .* available", out))
        )
    obs = work / "obs.fits"
    protolib(
        tree,
        [
            "simulate-observation",
            "--out",
            str(obs),
            "--from-bank",
            str(base["bank"]),
            "--system",
            "3",
            "--pixel",
            "0.05",
            "--size",
            "64",
        ],
    )
    for o in (1000, 5000, 50_000):
        out = work / f"huge_bank_for_{o}"
        rc, _, err, _ = protolib(
            tree,
            [
                "bank-for",
                str(obs),
                "--distance",
                "140",
                "--config",
                "tiny",
                "--set",
                f"simulator.oversample={o}",
                "--set",
                "bank.n_systems=2",
                "--out",
                str(out),
                "--quiet",
            ],
            timeout=90,
            limit=MEMORY_LIMIT,
        )
        outcomes.append(
            (
                f"bank-for oversample {o}",
                classify_refusal_expected(rc, err, r"needs about .* more than .* available", out / "bank.h5"),
            )
        )
    return outcomes


def signal_inputs(tree: Path, work: Path, base: dict, big: dict | None) -> list[tuple[str, str]]:
    """SIGINT and SIGTERM at several moments of an evaluation: how long until the run stops, and how."""
    outcomes = []
    model, bank = (big["model"], big["bank"]) if big else (base["model"], base["bank"])
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "PROTOLIB_DEVICE": "cpu"}
    for signum in (signal.SIGINT, signal.SIGTERM):
        for delay in (5.0, 10.0, 20.0):
            out = work / f"signal_{signum}_{delay}"
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "protolib",
                    "evaluate",
                    "--config",
                    "tiny",
                    "--set",
                    "evaluation.methods=[random,pixel,pca,siamese]",
                    "--model",
                    str(model),
                    "--bank",
                    str(bank),
                    "--out",
                    str(out),
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                cwd=tree,
            )
            time.sleep(delay)
            sent = time.monotonic()
            process.send_signal(signum)
            _, err = process.communicate(timeout=300)
            took = time.monotonic() - sent
            if process.returncode == 0:
                outcome = "correct success"  # it had finished
            elif "Traceback" in err:
                outcome = "traceback"
            elif took > 5.0:
                outcome = "slow to stop"
            elif out.exists() and any(p.name.endswith(".json") for p in out.iterdir()):
                outcome = "misleading message"
            else:
                outcome = "clean refusal"
            outcomes.append((f"{signal.Signals(signum).name} at {delay}s of evaluate ({took:.1f} s to stop)", outcome))
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, required=True, help="the protolib checkout to probe")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (emptied)")
    parser.add_argument(
        "--big-bank", type=Path, default=None, help="a larger bank for the signal inputs (with --big-model)"
    )
    parser.add_argument("--big-model", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write every input's outcome here")
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    base = build_base(args.tree.resolve(), args.work)
    big = {"bank": args.big_bank, "model": args.big_model} if args.big_bank else None
    tree = args.tree.resolve()
    outcomes = []
    for part in (setup_inputs, race_inputs, rewrite_inputs, huge_inputs):
        outcomes += part(tree, args.work, base)
        print(f"{part.__name__}: {collections.Counter(o for _, o in outcomes)}", flush=True)
    outcomes += signal_inputs(tree, args.work, base, big)
    counts = collections.Counter(o for _, o in outcomes)
    for name, outcome in outcomes:
        print(f"{outcome:22s} {name}")
    print(f"\n{len(outcomes)} inputs: " + ", ".join(f"{n} {k}" for k, n in counts.most_common()))
    if args.json:
        args.json.write_text(json.dumps({"counts": dict(counts), "outcomes": outcomes}, indent=1))


if __name__ == "__main__":
    main()
