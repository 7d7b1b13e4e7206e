"""An adversarial probe of what protolib reads from files and options (issue 31, items 7-14).

Each input is one ``protolib ...`` command, run in a subprocess against the tree named by ``--tree``
(its ``protolib`` package comes first on ``PYTHONPATH``), with what a careful user would expect: a
refusal whose one error line names the problem (a regex), or a success whose products are right (a
check). Outcomes are counted as

- ``clean refusal``: exit 2, one error line, no traceback, the expected problem named;
- ``correct success``: exit 0 and the products check out;
- ``traceback``: a Python traceback (or exit 1);
- ``misleading message``: a one-line refusal of the wrong problem, or of an input that is fine;
- ``silent wrong result``: exit 0 where a refusal or a warning was due, or products that are wrong.

None of these inputs is in ``tests/test_bad_inputs.py``. Run it on the tree before and after a fix::

    git worktree add /tmp/probe-before 6920ea3
    python benchmarks/probe_inputs.py --tree /tmp/probe-before --work /tmp/probe-before-work
    python benchmarks/probe_inputs.py --tree . --work /tmp/probe-after-work

It builds a tiny bank and model first (about a minute), then runs about 130 commands two at a time
(``--in-process``: one after another in this process, importing torch once).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from astropy.io import fits

OUTCOMES = ("clean refusal", "correct success", "traceback", "misleading message", "silent wrong result")


@dataclass
class Probe:
    argv: list[str]
    refuse: str | None = None  # regex the one error line must match; None: must succeed
    check: Callable[[subprocess.CompletedProcess], bool] | None = None  # for successes: are the products right?
    env: dict | None = None


class Runner:
    """Runs ``protolib ARGV`` against the tree: in a subprocess, or (``in_process``) through ``protolib.cli.main`` in
    this process, which imports torch once instead of once per input (what the command prints and returns is the
    same; an exception that escapes ``main`` is printed as the traceback a user would see)."""

    def __init__(self, tree: Path, work: Path, in_process: bool = False):
        self.tree, self.work, self.in_process = tree.resolve(), work.resolve(), in_process
        self.env = {
            **os.environ,
            "PYTHONPATH": str(self.tree),
            "PROTOLIB_DEVICE": "cpu",
            "OMP_NUM_THREADS": "1",
            "PYTHONWARNINGS": "ignore::DeprecationWarning",
        }
        if in_process:
            os.environ.update(PROTOLIB_DEVICE="cpu", OMP_NUM_THREADS="1")
            sys.path.insert(0, str(self.tree))

    def run(self, argv, env=None, timeout=300) -> subprocess.CompletedProcess:
        if self.in_process and not env:
            return self._run_here(argv)
        try:
            return subprocess.run(
                [sys.executable, "-m", "protolib", *argv],
                capture_output=True,
                text=True,
                timeout=timeout,
                env={**self.env, **(env or {})},
                cwd=self.work,
            )
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(argv, 124, "", "timed out")

    def _run_here(self, argv) -> subprocess.CompletedProcess:
        import contextlib
        import io
        import traceback
        import warnings

        from protolib.cli import main as protolib_main

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                code = protolib_main([str(a) for a in argv])
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 2
            except BaseException:  # noqa: BLE001 - what a user would see as a traceback
                traceback.print_exc(file=err)
                code = 1
        return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def error_lines(stderr: str) -> list[str]:
    lines = [line for chunk in stderr.splitlines() for line in chunk.split("\r") if line.strip()]
    return [
        line
        for line in lines
        if "it/s]" not in line
        and "img/s]" not in line
        and "%|" not in line
        and ": warning: " not in line
        and not line.startswith("WARNING:")
    ]


def classify(probe: Probe, done: subprocess.CompletedProcess) -> str:
    if "Traceback" in done.stderr or done.returncode not in (0, 2):
        return "traceback"
    errors = error_lines(done.stderr)
    if done.returncode == 2:
        message = re.sub(r"\S*/\S*", "", errors[0]) if errors else ""  # the problem, not the file's name, must match
        if probe.refuse is None or len(errors) != 1 or not re.search(probe.refuse, message):
            return "misleading message"
        return "clean refusal"
    if probe.refuse is not None:
        return "silent wrong result"
    try:
        good = probe.check is None or probe.check(done)
    except Exception:  # noqa: BLE001 - missing or unreadable products are wrong products
        good = False
    return "correct success" if good else "silent wrong result"


# ---------------------------------------------------------------------------------------------
# What every probe starts from.


def build_base(r: Runner) -> Path:
    base = r.work / "base"
    if (base / "run" / "siamese.pt").exists() and (base / "obs.fits").exists():
        return base
    base.mkdir(parents=True, exist_ok=True)
    steps = [
        ["simulate", "--config", "tiny", "--systems", "12", "--projections", "2", "--out", str(base / "bank.h5")],
        [
            "train-autoencoder",
            "--config",
            "tiny",
            "--bank",
            str(base / "bank.h5"),
            "--out",
            str(base / "run"),
            "--epochs",
            "1",
            "--quiet",
        ],
        [
            "train-siamese",
            "--config",
            "tiny",
            "--bank",
            str(base / "bank.h5"),
            "--autoencoder",
            str(base / "run" / "autoencoder.pt"),
            "--out",
            str(base / "run"),
            "--epochs",
            "1",
            "--quiet",
        ],
        [
            "simulate-observation",
            "--out",
            str(base / "obs.fits"),
            "--from-bank",
            str(base / "bank.h5"),
            "--system",
            "3",
            "--pixel",
            "0.05",
            "--size",
            "128",
        ],
        ["simulate", "--config", "tiny", "--systems", "1", "--projections", "2", "--out", str(base / "one.h5")],
        [
            "observe",
            str(base / "obs.fits"),
            "--distance",
            "140",
            "--bank",
            str(base / "bank.h5"),
            "--out",
            str(base / "prepared.fits"),
        ],
    ]
    for argv in steps:
        done = r.run(argv)
        assert done.returncode == 0, (argv, done.stderr[-2000:])
    return base


def fits_variant(base: Path, name: str, change) -> Path:
    with fits.open(base / "obs.fits") as hdul:
        data, header = hdul[0].data.copy(), hdul[0].header.copy()
    data = change(data, header)
    path = base.parent / "inputs" / name
    path.parent.mkdir(exist_ok=True)
    fits.PrimaryHDU(data, header=header).writeto(path, overwrite=True)
    return path


def set_card(key, value):
    def change(d, h):
        h[f"HIERARCH {key}" if " " in key else key] = value
        return d

    return change


def noise_card(path: Path) -> float:
    return float(fits.getheader(path)["PROTOLIB NOISE_RMS"])


def centre_offset_arcsec(path: Path, base: Path) -> float:
    good, got = fits.getheader(base / "prepared.fits"), fits.getheader(path)
    return 3600 * max(abs(good["CRVAL1"] - got["CRVAL1"]), abs(good["CRVAL2"] - got["CRVAL2"]))


# ---------------------------------------------------------------------------------------------
# The probes.


def unit_probes(base: Path, out: Path) -> dict[str, Probe]:
    """BUNIT spellings: read as the unit they name, or refused (items 9)."""
    reference = noise_card(base / "prepared.fits")
    beam_units = {
        "Jy/beam": 1.0,
        "JY/BEAM": 1.0,
        "Jy/Beam": 1.0,
        "jy/beam": 1.0,
        "mJy/beam": 1e-3,
        "MJy/beam": 1e6,
        "uJy/beam": 1e-6,
        "nJy/beam": 1e-9,
        "kJy/beam": 1e3,
        "Jy beam-1": 1.0,
        "Jy.beam-1": 1.0,
        "Jy/beam-1": 1.0,
        "Jy/bm": 1.0,
        "mJy beam-1": 1e-3,
        "UJY/BEAM": 1e-6,
    }
    pixel_units = ["Jy/pixel", "JY/PIXEL", "Jy/pix", "mJy/pixel"]
    refused = {
        "MJY/BEAM": "ambiguous|BUNIT",
        "mjy/beam": "ambiguous|BUNIT",
        "Jy/sr": "BUNIT",
        "Jy": "BUNIT",
        "W/m2/Hz": "BUNIT",
        "Jy/beam/beam": "BUNIT",
        "counts": "BUNIT",
        "Jy/beam km/s": "BUNIT",
        "Jy/arcsec2": "BUNIT",
        "JY/SR": "BUNIT",
        "mK": "BUNIT",
    }
    probes = {}
    for k, (unit, factor) in enumerate(beam_units.items()):
        path = fits_variant(base, f"unit_beam_{k}.fits", set_card("BUNIT", unit))
        target = out / f"unit_beam_{k}.fits"
        probes[f"bunit {unit!r}"] = Probe(
            ["observe", str(path), "--distance", "140", "--bank", str(base / "bank.h5"), "--out", str(target)],
            check=lambda done, t=target, f=factor: abs(noise_card(t) / (reference * f) - 1) < 0.05,
        )
    for k, unit in enumerate(pixel_units):
        path = fits_variant(base, f"unit_pixel_{k}.fits", set_card("BUNIT", unit))
        probes[f"bunit {unit!r}"] = Probe(
            [
                "observe",
                str(path),
                "--distance",
                "140",
                "--bank",
                str(base / "bank.h5"),
                "--out",
                str(out / f"unit_pixel_{k}.fits"),
            ]
        )
    for k, (unit, pattern) in enumerate(refused.items()):
        path = fits_variant(base, f"unit_bad_{k}.fits", set_card("BUNIT", unit))
        probes[f"bunit {unit!r}"] = Probe(
            [
                "observe",
                str(path),
                "--distance",
                "140",
                "--bank",
                str(base / "bank.h5"),
                "--out",
                str(out / f"unit_bad_{k}.fits"),
            ],
            refuse=pattern,
        )
    return probes


def card_and_beam_probes(base: Path, out: Path) -> dict[str, Probe]:
    """PROTOLIB cards and CASA BEAMS tables (items 10 and the tracebacks)."""

    def observe(path, name, refuse=None, extra=(), check=None):
        return Probe(
            [
                "observe",
                str(path),
                "--distance",
                "140",
                "--bank",
                str(base / "bank.h5"),
                *extra,
                "--out",
                str(out / name),
            ],
            refuse=refuse,
            check=check,
        )

    probes = {}
    cards = {
        "MAX_SCALE -5": ("PROTOLIB MAX_SCALE", -5.0, "MAX_SCALE|recoverable"),
        "MAX_SCALE 1e9": ("PROTOLIB MAX_SCALE", 1e9, "MAX_SCALE|recoverable"),
        "MAX_SCALE 1e-9": ("PROTOLIB MAX_SCALE", 1e-9, "MAX_SCALE|recoverable|beam"),
        "MAX_SCALE text": ("PROTOLIB MAX_SCALE", "wide", "MAX_SCALE"),
        "MAX_SCALE true": ("PROTOLIB MAX_SCALE", True, "MAX_SCALE"),
        "TRUE text": ("PROTOLIB TRUE STELLAR_MASS", "heavy", "STELLAR_MASS"),
        "MAX_SCALE 0": ("PROTOLIB MAX_SCALE", 0.0, None),
        "MAX_SCALE 2": ("PROTOLIB MAX_SCALE", 2.0, None),
        "TRUE number": ("PROTOLIB TRUE STELLAR_MASS", 0.5, None),
    }
    for k, (label, (key, value, refuse)) in enumerate(cards.items()):
        probes[f"card {label}"] = observe(
            fits_variant(base, f"card_{k}.fits", set_card(key, value)), f"card_{k}.fits", refuse
        )
    tables = {
        "BMAJ nan": ({"BMAJ": np.nan, "BMIN": 0.2, "BPA": 0.0}, "BEAMS|beam"),
        "BMAJ negative": ({"BMAJ": -0.3, "BMIN": 0.2, "BPA": 0.0}, "BEAMS|beam"),
        "BMIN zero": ({"BMAJ": 0.3, "BMIN": 0.0, "BPA": 0.0}, "BEAMS|beam"),
        "no BMAJ": ({"BMIN": 0.2, "BPA": 0.0}, "BEAMS|BMAJ"),
        "no BPA": ({"BMAJ": 0.3, "BMIN": 0.2}, "BEAMS|BPA"),
        "BPA nan": ({"BMAJ": 0.3, "BMIN": 0.2, "BPA": np.nan}, "BEAMS|BPA|beam"),
        "empty": ({"BMAJ": None, "BMIN": None, "BPA": None}, "no beam|BMAJ"),
        "good": ({"BMAJ": 0.3, "BMIN": 0.25, "BPA": 10.0}, None),
        "lower-case names": ({"bmaj": 0.3, "bmin": 0.25, "bpa": 10.0}, None),
    }
    for k, (label, (columns, refuse)) in enumerate(tables.items()):
        path = fits_variant(
            base, f"beams_{k}.fits", lambda d, h: (h.remove("BMAJ"), h.remove("BMIN"), h.remove("BPA"), d)[-1]
        )
        rows = 0 if any(v is None for v in columns.values()) else 1
        table = fits.BinTableHDU.from_columns(
            [fits.Column(name=n, format="E", array=np.array([v] * rows, dtype=float)) for n, v in columns.items()],
            name="BEAMS",
        )
        with fits.open(path, mode="append") as hdul:
            hdul.append(table)
        probes[f"BEAMS table {label}"] = observe(path, f"beams_{k}.fits", refuse)
        if label == "BMAJ nan":
            probes["BEAMS table BMAJ nan, --beam given"] = observe(
                path, "beams_given.fits", None, ["--beam", "0.3", "0.25", "10"]
            )
    return probes


def layout_probes(base: Path, out: Path) -> dict[str, Probe]:
    """Files that are not images, or would not fit in memory (items 14 and the messages)."""
    inputs = base.parent / "inputs"
    table_only = inputs / "table_only.fits"
    fits.HDUList(
        [fits.PrimaryHDU(), fits.BinTableHDU.from_columns([fits.Column(name="X", format="E", array=np.ones(4))])]
    ).writeto(table_only, overwrite=True)
    probes = {
        "table-only FITS": Probe(
            [
                "observe",
                str(table_only),
                "--distance",
                "140",
                "--bank",
                str(base / "bank.h5"),
                "--out",
                str(out / "t.fits"),
            ],
            refuse=r"no image|table",
        )
    }
    header = fits.getheader(base / "obs.fits")
    for k, (n, bitpix) in enumerate([(300_000, -32), (120_000, -64)]):
        big = header.copy()
        big.update(NAXIS1=n, NAXIS2=n, BITPIX=bitpix)
        path = inputs / f"huge_{k}.fits"
        path.write_bytes(big.tostring().encode() + b"\0" * 2880)
        probes[f"header declares {n} x {n} (BITPIX {bitpix})"] = Probe(
            [
                "observe",
                str(path),
                "--distance",
                "140",
                "--bank",
                str(base / "bank.h5"),
                "--out",
                str(out / f"h{k}.fits"),
            ],
            refuse=r"memory|GB|truncated|damaged",
        )
    return probes


def pixel_probes(base: Path, out: Path) -> dict[str, Probe]:
    """Hot pixels and blanks on the source (item 12): the centre must stay on the source; blanks must be said."""
    peak = float(np.nanmax(fits.getdata(base / "obs.fits")))

    def hot(where, value):
        def change(d, h):
            d = d.copy()
            for r, c in where:
                d[..., r, c] = value
            return d

        return change

    def blank(size):
        def change(d, h):
            d = d.copy()
            r, c = np.unravel_index(int(np.nanargmax(d[0, 0])), d.shape[-2:])
            d[..., r - size // 2 : r + size // 2 + 1, c - size // 2 : c + size // 2 + 1] = np.nan
            return d

        return change

    cases = {
        "one hot pixel far away": (hot([(10, 10)], 10 * peak), ()),
        "one hot pixel, 1e30": (hot([(10, 10)], 1e30), ()),
        "five hot pixels": (hot([(10, 10), (20, 100), (110, 15), (100, 110), (5, 60)], 20 * peak), ()),
        "hot pixel 0.5 arcsec from the source": (hot([(64, 74)], 5 * peak), ()),
        "hot pixel with --noise given": (hot([(10, 10)], 10 * peak), ("--noise", "5e-5")),
    }
    probes = {}
    for k, (label, (change, extra)) in enumerate(cases.items()):
        target = out / f"hot_{k}.fits"
        probes[label] = Probe(
            [
                "observe",
                str(fits_variant(base, f"hot_{k}.fits", lambda d, h, c=change: c(d, h))),
                "--distance",
                "140",
                *extra,
                "--bank",
                str(base / "bank.h5"),
                "--out",
                str(target),
            ],
            check=lambda done, t=target: centre_offset_arcsec(t, base) < 0.2 and "2 compact" not in done.stdout,
        )
    for k, size in enumerate((1, 3, 5)):
        target = out / f"blank_{k}.fits"
        probes[f"{size} x {size} NaN pixels on the peak"] = Probe(
            [
                "observe",
                str(fits_variant(base, f"blank_{k}.fits", lambda d, h, s=size: blank(s)(d, h))),
                "--distance",
                "140",
                "--bank",
                str(base / "bank.h5"),
                "--out",
                str(target),
            ],
            check=lambda done: re.search(r"blank|NaN", done.stderr) is not None,
        )
    return probes


def target_probes(base: Path, out: Path) -> dict[str, Probe]:
    """Targets with nothing to match (item 7) and prepared files prepared again (item 8)."""
    match = ["match", "--model", str(base / "run" / "siamese.pt"), "--bank", str(base / "bank.h5")]
    obs, prepared = base / "obs.fits", base / "prepared.fits"
    probes = {}
    for k, radius in enumerate(("1e-6", "1e-3", "0.01")):
        probes[f"--mask-radius {radius}"] = Probe(
            [
                *match,
                "--target",
                str(obs),
                "--distance",
                "140",
                "--mask-radius",
                radius,
                "--out",
                str(out / f"mask_{k}"),
            ],
            refuse=r"nothing|empty|blank|mask",
        )
    zeros = fits_variant(base, "zeros.fits", lambda d, h: np.zeros_like(d))
    probes["all-zero map with --noise"] = Probe(
        [*match, "--target", str(zeros), "--distance", "140", "--noise", "1e-4", "--out", str(out / "zeros")],
        refuse=r"nothing|same value|empty|every pixel",
    )
    lonely = fits_variant(
        base, "lonely.fits", lambda d, h: np.where(np.arange(d.size).reshape(d.shape) % 9973 == 0, d + 1e-3, np.nan)
    )
    probes["a map of scattered single pixels"] = Probe(
        [*match, "--target", str(lonely), "--distance", "140", "--noise", "1e-4", "--out", str(out / "lonely")],
        refuse=r"nothing|blank|empty|cover",
    )
    probes["observe a prepared file"] = Probe(
        [
            "observe",
            str(prepared),
            "--distance",
            "140",
            "--bank",
            str(base / "bank.h5"),
            "--out",
            str(out / "again.fits"),
        ],
        refuse=r"prepared|protolib observe",
    )
    beam = fits.getheader(prepared)["BMAJ"] * 3600

    def as_is(folder):
        def check(done):
            report = json.loads((folder / "report.json").read_text())
            return abs(report["inputs"]["target"]["preparation"]["beam_arcsec_at_bank_distance"][0] / beam - 1) < 1e-4

        return check

    probes["match a prepared file"] = Probe(
        [*match, "--target", str(prepared), "--distance", "140", "--out", str(out / "prep_a")],
        check=as_is(out / "prep_a"),
    )
    for option, values in {
        "--distance 200": ["--distance", "200"],
        "--noise": ["--distance", "140", "--noise", "1e-4"],
        "--beam": ["--distance", "140", "--beam", "0.4", "0.3", "0"],
        "--mask-radius": ["--distance", "140", "--mask-radius", "0.5"],
    }.items():
        probes[f"match a prepared file with {option}"] = Probe(
            [*match, "--target", str(prepared), *values, "--out", str(out / f"prep_{option[2:6]}")],
            refuse=r"prepared|protolib observe",
        )
    broken = {
        "DIST_OBS 0": ("PROTOLIB DIST_OBS", 0.0),
        "NOISE_RMS -1": ("PROTOLIB NOISE_RMS", -1.0),
        "MAX_SCALE -5": ("PROTOLIB MAX_SCALE", -5.0),
        "PIX_AU text": ("PROTOLIB PIX_AU", "wide"),
    }
    for k, (label, (key, value)) in enumerate(broken.items()):
        path = base.parent / "inputs" / f"prepared_{k}.fits"
        with fits.open(prepared) as hdul:
            hdul[0].header[f"HIERARCH {key}"] = value
            hdul.writeto(path, overwrite=True)
        probes[f"prepared file with {label}"] = Probe(
            [*match, "--target", str(path), "--distance", "140", "--out", str(out / f"prep_b{k}")],
            refuse=key.split()[-1],
        )
    return probes


def checkpoint_probes(base: Path, out: Path) -> dict[str, Probe]:
    """Checkpoints whose values the options that set them would refuse (item 10), parts missing, non-checkpoints."""
    import torch

    good = torch.load(base / "run" / "siamese.pt", weights_only=True)
    inputs = base.parent / "inputs"
    changes = {
        "preprocessing distance_pc 0": (lambda d: d["preprocessing"].update(distance_pc=0.0), "distance_pc"),
        "preprocessing distance_pc -1": (lambda d: d["preprocessing"].update(distance_pc=-1.0), "distance_pc"),
        "preprocessing distance_pc nan": (lambda d: d["preprocessing"].update(distance_pc=float("nan")), "distance_pc"),
        "preprocessing distance_pc text": (lambda d: d["preprocessing"].update(distance_pc="far"), "distance_pc"),
        "preprocessing pixels_per_beam -3": (
            lambda d: d["preprocessing"].update(pixels_per_beam=-3.0),
            "pixels_per_beam",
        ),
        "preprocessing pixels_per_beam 0": (
            lambda d: d["preprocessing"].update(pixels_per_beam=0.0),
            "pixels_per_beam",
        ),
        "preprocessing flux_spread 0": (lambda d: d["preprocessing"].update(flux_spread=0.0), "flux_spread"),
        "preprocessing flux_spread nan": (lambda d: d["preprocessing"].update(flux_spread=float("nan")), "flux_spread"),
        "preprocessing reference_distance_pc 0": (
            lambda d: d["preprocessing"].update(reference_distance_pc=0.0),
            "reference_distance",
        ),
        "preprocessing unknown key": (lambda d: d["preprocessing"].update(bogus=1), "preprocessing|bogus"),
        "normaliser spread 0": (
            lambda d: d["normaliser"].update(spread=[0.0] * len(d["normaliser"]["spread"])),
            "spread",
        ),
        "normaliser spread nan": (
            lambda d: d["normaliser"].update(spread=[float("nan")] * len(d["normaliser"]["spread"])),
            "spread",
        ),
        "normaliser centre inf": (
            lambda d: d["normaliser"].update(centre=[float("inf")] * len(d["normaliser"]["centre"])),
            "centre|spread",
        ),
        "normaliser one spread short": (
            lambda d: d["normaliser"].update(spread=d["normaliser"]["spread"][:-1]),
            "normaliser|spread",
        ),
        "no normaliser": (lambda d: d.pop("normaliser"), "normaliser"),
        "no preprocessing": (lambda d: d.pop("preprocessing"), "preprocessing"),
        "no split": (lambda d: d.pop("split"), "split"),
        "no target": (lambda d: d.pop("target"), "target"),
        "no parameter_names": (lambda d: d.pop("parameter_names"), "parameter_names"),
    }
    match = ["match", "--bank", str(base / "bank.h5"), "--target-system", "1"]
    probes = {}
    for k, (label, (change, pattern)) in enumerate(changes.items()):
        data = copy.deepcopy(good)
        change(data)
        path = inputs / f"model_{k}.pt"
        torch.save(data, path)
        probes[f"checkpoint {label}"] = Probe(
            [*match, "--model", str(path), "--out", str(out / f"model_{k}")], refuse=pattern
        )
    text, empty, folder = inputs / "notes.pt", inputs / "empty.pt", inputs / "model_folder"
    text.write_text("these are my notes\n")
    empty.write_bytes(b"")
    folder.mkdir(exist_ok=True)
    for label, path, pattern in [
        ("a bank as --model", base / "bank.h5", r"HDF5|bank"),
        ("a FITS file as --model", base / "obs.fits", "FITS"),
        ("a text file as --model", text, "text"),
        ("an empty file as --model", empty, "empty"),
        ("a folder as --model", folder, "folder"),
    ]:
        probes[label] = Probe(
            [*match, "--model", str(path), "--out", str(out / f"m_{label[:8].replace(' ', '_')}")], refuse=pattern
        )
    probes["evaluate with a zero-spread normaliser"] = Probe(
        [
            "evaluate",
            "--config",
            "tiny",
            "--model",
            str(inputs / "model_10.pt"),
            "--bank",
            str(base / "bank.h5"),
            "--out",
            str(out / "eval_spread"),
        ],
        refuse="spread",
    )
    return probes


def setting_probes(base: Path, out: Path) -> dict[str, Probe]:
    """--set, --config, seeds, threads, priors, fields of view, schedulers and thresholds (the tracebacks and
    messages)."""
    inputs = base.parent / "inputs"
    simulate = ["simulate", "--config", "tiny", "--systems", "2", "--projections", "2"]
    train = ["train-autoencoder", "--config", "tiny", "--bank", str(base / "bank.h5"), "--quiet", "--epochs", "1"]
    match = [
        "match",
        "--model",
        str(base / "run" / "siamese.pt"),
        "--bank",
        str(base / "bank.h5"),
        "--target-system",
        "1",
    ]

    def bank_noise(path, value):
        return lambda done: abs(float(h5py.File(path, "r").attrs["noise_rms_jy_beam"]) / value - 1) < 1e-9

    binary, empty, tabs, tagged = (
        inputs / "binary.yaml",
        inputs / "empty.yaml",
        inputs / "tabs.yaml",
        inputs / "tagged.yaml",
    )
    binary.write_bytes(bytes(range(256)) * 8)
    empty.write_text("")
    tabs.write_text("bank:\n\tn_systems: 2\n")
    tagged.write_text("bank: !!python/object/apply:os.system ['true']\n")
    probes = {
        "--set [1": ([*train, "--set", "autoencoder.training.patience=[1"], r"YAML|--set"),
        "--set {a": ([*train, "--set", "autoencoder.training.patience={a"], r"YAML|--set"),
        "--set unterminated quote": ([*train, "--set", 'autoencoder.training.patience="abc'], r"YAML|--set"),
        "--set key: :": ([*train, "--set", "autoencoder.training.patience=a: b: c"], r"YAML|--set|patience"),
        "--set !!python/object/apply": (
            [*train, "--set", "autoencoder.training.patience=!!python/object/apply:os.system ['true']"],
            r"YAML|python|tag",
        ),
        "--set !!python/name": (
            [*train, "--set", "autoencoder.training.patience=!!python/name:os.system"],
            r"YAML|python|tag",
        ),
        "--set -1e6 learning rate": (
            [*train, "--set", "autoencoder.training.learning_rate=-1e6"],
            r"learning rate .*-1000000",
        ),
        "--set 1E+3 noise is a number": ([*simulate, "--set", "instrument.noise_rms_jy_beam=1E-3"], None),
        "--set 2e-4 noise is a number": ([*simulate, "--set", "instrument.noise_rms_jy_beam=2e-4"], None),
        "--config binary": ([*train[:2], str(binary), *train[3:]], r"binary|text|YAML"),
        "--config with tabs": ([*train[:2], str(tabs), *train[3:]], r"YAML"),
        "--config with a python tag": ([*train[:2], str(tagged), *train[3:]], r"YAML|python|tag"),
        "--config a folder": ([*train[:2], str(inputs), *train[3:]], r"folder|YAML|not"),
        "--seed 2**63": ([*train, "--seed", str(2**63)], r"seed"),
        "--seed 2**70 (simulate)": ([*simulate, "--seed", str(2**70)], r"seed"),
        "--set training seed 2**64": ([*train, "--set", f"autoencoder.training.seed={2**64}"], r"seed"),
        "--threads 0": ([*train, "--threads", "0"], r"threads"),
        "--threads -2 (siamese)": (
            [
                "train-siamese",
                "--config",
                "tiny",
                "--bank",
                str(base / "bank.h5"),
                "--autoencoder",
                str(base / "run" / "autoencoder.pt"),
                "--quiet",
                "--epochs",
                "1",
                "--threads",
                "-2",
            ],
            r"threads",
        ),
        "--fov 1": ([*simulate, "--fov", "1"], r"fov|field"),
        "--fov 1e-9": ([*simulate, "--fov", "1e-9"], r"fov|field"),
        "--scheduler http://x": ([*simulate, "--scheduler", "http://x"], r"scheduler"),
        "--scheduler tcp://": ([*simulate, "--scheduler", "tcp://"], r"scheduler"),
        "--threshold 2": ([*match, "--threshold", "2"], r"threshold"),
        "--threshold -2 --top-k 0": ([*match, "--threshold", "-2", "--top-k", "0"], r"threshold"),
        "--threshold inf": ([*match, "--threshold", "inf"], r"threshold"),
        "--threshold 0.9999999 --top-k 0": ([*match, "--threshold", "0.9999999", "--top-k", "0"], r"threshold"),
        "one-system bank": (
            [
                "match",
                "--model",
                str(base / "run" / "siamese.pt"),
                "--bank",
                str(base / "one.h5"),
                "--target-system",
                "0",
            ],
            r"one system|at least two|systems",
        ),
    }
    for name in (
        "stellar_mass_msun",
        "accretion_rate_msun_yr",
        "disk_radius_au",
        "disk_to_star_mass_ratio",
        "disk_scale_height_100au",
        "cavity_angle_deg",
    ):
        probes[f"prior {name} inverted"] = ([*simulate, "--set", f"prior.{name}=[50, 1]"], name)
    probes["prior stellar mass from zero"] = (
        [*simulate, "--set", "prior.stellar_mass_msun=[0, 1]"],
        "stellar_mass_msun",
    )
    probes["prior disk radius as text"] = ([*simulate, "--set", "prior.disk_radius_au=[a, b]"], "disk_radius_au")
    result = {}
    for k, (label, (argv, refuse)) in enumerate(probes.items()):
        target = out / f"set_{k}" if argv[0] not in ("simulate",) else out / f"set_{k}.h5"
        check = None
        if label.startswith("--set") and "noise is a number" in label:
            check = bank_noise(target, float(argv[-1].split("=")[1]))
        result[label] = Probe([*argv, "--out", str(target)], refuse=refuse, check=check)
    return result


def unknown_key_probe(base: Path, out: Path) -> dict[str, Probe]:
    path = base.parent / "inputs" / "unknown_key.h5"
    shutil.copy(base / "bank.h5", path)
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["simulator_config"])
        f.attrs["simulator_config"] = json.dumps({**config, "warp_factor": 9})
    return {
        "bank simulator_config with an unknown key": Probe(
            [
                "match",
                "--model",
                str(base / "run" / "siamese.pt"),
                "--bank",
                str(path),
                "--target",
                str(base / "obs.fits"),
                "--distance",
                "140",
                "--out",
                str(out / "unknown_key"),
            ],
            refuse=r"simulator_config|warp_factor",
        )
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, required=True, help="the protolib checkout to probe")
    parser.add_argument(
        "--work", type=Path, required=True, help="a scratch folder (reused between runs of the same tree)"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", default="", help="run only probes whose name contains this")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run each command through protolib.cli.main in this process "
        "(one torch import: much faster on a loaded machine)",
    )
    args = parser.parse_args()
    runner = Runner(args.tree, args.work, args.in_process)
    base = build_base(runner)
    out = args.work / "outputs"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    probes: dict[str, Probe] = {}
    for build in (
        unit_probes,
        card_and_beam_probes,
        layout_probes,
        pixel_probes,
        target_probes,
        checkpoint_probes,
        setting_probes,
        unknown_key_probe,
    ):
        probes.update(build(base, out))
    probes = {name: p for name, p in probes.items() if args.only in name}
    with ThreadPoolExecutor(max_workers=1 if args.in_process else args.workers) as pool:
        done = dict(zip(probes, pool.map(lambda p: runner.run(p.argv, p.env), probes.values())))
    outcomes = {name: classify(probe, done[name]) for name, probe in probes.items()}
    for name, outcome in outcomes.items():
        if outcome not in ("clean refusal", "correct success"):
            last = (error_lines(done[name].stderr) or done[name].stderr.splitlines() or [""])[-1]
            print(f"{outcome:20s} | {name} | exit {done[name].returncode} | {last[:220]}")
    counts = Counter(outcomes.values())
    print(f"\n{len(probes)} inputs against {runner.tree}:")
    for outcome in OUTCOMES:
        print(f"  {outcome:20s} {counts.get(outcome, 0)}")
    (args.work / "probe_results.json").write_text(
        json.dumps(
            {
                name: {
                    "outcome": outcomes[name],
                    "exit": done[name].returncode,
                    "stderr_tail": done[name].stderr[-600:],
                }
                for name in probes
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
