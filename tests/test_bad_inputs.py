"""The bad-input battery: every case runs ``protolib ...`` in a subprocess, as a user would.

Each refused input must give exit code 2, exactly one error line naming the file (or value) and the
problem, no traceback, and no partial output. The cases run two at a time in a module fixture; the
tests then read their results. Each case is a process of its own, forked from a Python that has already
imported protolib and torch (tests/preloaded_cli.py: a new Python spent most of its time importing
torch); the tests that interrupt runs with signals, and those that run several commands at once, start
new Pythons.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest
from astropy.io import fits
from preloaded_cli import PreloadedProtolib

from protolib.bank import THESIS_DATASETS
from protolib.cli import main

pytestmark = pytest.mark.battery

PROTOLIB = [sys.executable, "-m", "protolib"]
ENV = {**os.environ, "PROTOLIB_DEVICE": "cpu", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore::DeprecationWarning"}


# ---------------------------------------------------------------------------------------------
# What every run is built from: a tiny bank, a trained model and a good observation.


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("battery")
    bank, run = root / "bank.h5", root / "run"
    assert main(["simulate", "--config", "tiny", "--systems", "12", "--projections", "2", "--out", str(bank)]) == 0
    assert (
        main(
            [
                "train-autoencoder",
                "--config",
                "tiny",
                "--bank",
                str(bank),
                "--out",
                str(run),
                "--epochs",
                "1",
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        main(
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
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "simulate-observation",
                "--out",
                str(root / "obs.fits"),
                "--from-bank",
                str(bank),
                "--system",
                "3",
                "--pixel",
                "0.05",
                "--size",
                "128",
            ]
        )
        == 0
    )
    return root


def _fits_variant(base: Path, name: str, change) -> Path:
    """A copy of the good observation with ``change(data, header) -> data`` applied."""
    with fits.open(base / "obs.fits") as hdul:
        data, header = hdul[0].data.copy(), hdul[0].header.copy()
    data = change(data, header)
    path = base / "inputs" / name
    path.parent.mkdir(exist_ok=True)
    fits.PrimaryHDU(data, header=header).writeto(path, overwrite=True)
    return path


def _bank_variant(base: Path, name: str, change) -> Path:
    """A copy of the good bank with ``change(h5py.File)`` applied."""
    path = base / "inputs" / name
    path.parent.mkdir(exist_ok=True)
    shutil.copy(base / "bank.h5", path)
    with h5py.File(path, "r+") as f:
        change(f)
    return path


def _delete(header, *keys):
    for key in keys:
        header.remove(key, ignore_missing=True)


def _set_nan(dataset, where, value=np.nan):
    values = dataset[()]
    values[where] = value
    dataset[...] = values


def _fits_cases(b: Path) -> dict:
    """id -> (file, extra arguments, message): each refused by ``observe`` and by ``match``."""
    text = b / "inputs" / "notes.fits"
    text.parent.mkdir(exist_ok=True)
    text.write_text("this is not a FITS file\n")
    truncated = b / "inputs" / "truncated.fits"
    truncated.write_bytes((b / "obs.fits").read_bytes()[: 2880 + 5000])
    good = b / "obs.fits"
    return {
        "not_fits": (text, [], r"notes\.fits: not a FITS file"),
        "truncated_fits": (truncated, [], r"truncated\.fits: .*(truncated|damaged)"),
        "no_celestial_wcs": (
            _fits_variant(b, "linear.fits", lambda d, h: (h.update(CTYPE1="LINEAR", CTYPE2="LINEAR"), d)[1]),
            [],
            r"linear\.fits: no celestial WCS",
        ),
        "no_pixel_scale": (
            _fits_variant(b, "noscale.fits", lambda d, h: (_delete(h, "CDELT1", "CDELT2", "CD1_1", "CD2_2"), d)[1]),
            [],
            r"noscale\.fits: .*no pixel scale",
        ),
        "all_nan": (
            _fits_variant(b, "nan.fits", lambda d, h: np.full_like(d, np.nan)),
            [],
            r"nan\.fits: every pixel is NaN",
        ),
        "one_pixel": (_fits_variant(b, "tiny.fits", lambda d, h: d[..., :1, :1]), [], r"tiny\.fits: .*too small"),
        "cube": (
            _fits_variant(b, "cube.fits", lambda d, h: np.repeat(d, 5, axis=0)),
            [],
            r"cube\.fits: the image has 5 planes",
        ),
        "kelvin": (
            _fits_variant(b, "kelvin.fits", lambda d, h: (h.update(BUNIT="K"), d)[1]),
            [],
            r"kelvin\.fits: BUNIT = 'K'",
        ),
        "mjy_per_sr": (
            _fits_variant(b, "mjysr.fits", lambda d, h: (h.update(BUNIT="MJy/sr"), d)[1]),
            [],
            r"mjysr\.fits: BUNIT = 'MJy/sr'",
        ),
        "negative_beam": (
            _fits_variant(b, "negbeam.fits", lambda d, h: (h.update(BMAJ=-1e-4), d)[1]),
            [],
            r"negbeam\.fits: .*BMAJ.*not a beam size",
        ),
        "huge_beam": (
            _fits_variant(b, "hugebeam.fits", lambda d, h: (h.update(BMAJ=0.01, BMIN=0.01), d)[1]),
            [],
            r"hugebeam\.fits: the beam .* (is larger than the bank's field|spans 720 pixels)",
        ),
        "noise_nan": (good, ["--noise", "nan"], r"obs\.fits: the noise rms must be a positive number, got nan"),
        "noise_negative": (good, ["--noise", "-1"], r"obs\.fits: the noise rms must be a positive number, got -1"),
        "noise_zero": (good, ["--noise", "0"], r"obs\.fits: the noise rms must be a positive number, got 0"),
        "distance_negative": (good, ["--distance", "-3"], r"obs\.fits: the distance must be a positive number"),
        "distance_nan": (good, ["--distance", "nan"], r"obs\.fits: the distance must be a positive number"),
        "distance_text": (good, ["--distance", "far"], r"argument --distance: invalid float value: 'far'"),
        "centre_outside": (
            good,
            ["--centre", "05:00:00 +20:00:00"],
            r"obs\.fits: the centre .* lies outside the image",
        ),
        "centre_garbage": (good, ["--centre", "north of the star"], r"obs\.fits: cannot read the centre"),
        "missing_file": (b / "inputs" / "missing.fits", [], r"missing\.fits: no such file"),
    }


def _bank_cases(b: Path) -> dict:
    """id -> (bank file, message): each refused by ``match`` (and, where it reads the bank, by training)."""
    garbage = b / "inputs" / "garbage.h5"
    garbage.parent.mkdir(exist_ok=True)
    garbage.write_bytes(b"not HDF5 at all" * 100)
    truncated = b / "inputs" / "truncated.h5"
    truncated.write_bytes((b / "bank.h5").read_bytes()[:20_000])
    foreign = b / "inputs" / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["data"] = np.zeros(3)
    folder = b / "inputs" / "bank_folder"
    folder.mkdir(exist_ok=True)
    return {
        "bank_missing": (b / "inputs" / "nobank.h5", r"nobank\.h5 does not exist"),
        "bank_not_hdf5": (garbage, r"garbage\.h5 is not a readable HDF5 file"),
        "bank_truncated": (truncated, r"truncated\.h5 is not a readable HDF5 file"),
        "bank_foreign": (foreign, r"foreign\.h5 is an HDF5 file but not a protolib bank"),
        "bank_is_folder": (folder, r"bank_folder is a folder, not a bank file"),
        "bank_nan_parameter": (
            _bank_variant(b, "nanpar.h5", lambda f: _set_nan(f["parameters/disk_radius"], 2)),
            r"nanpar\.h5: parameters/disk_radius holds 1 NaN or infinite value",
        ),
        "bank_inf_viewing": (
            _bank_variant(b, "infview.h5", lambda f: _set_nan(f["viewing/inclination"], (1, 0), np.inf)),
            r"infview\.h5: viewing/inclination holds 1 NaN or infinite value",
        ),
        "bank_nan_images": (
            _bank_variant(b, "nanimg.h5", lambda f: _set_nan(f["images"], (4, 1, slice(0, 3), 0))),
            r"nanimg\.h5: images holds 3 NaN or infinite pixel",
        ),
        "bank_negative_mass": (
            _bank_variant(b, "negmass.h5", lambda f: _set_nan(f["parameters/stellar_mass"], 0, -0.5)),
            r"negmass\.h5: parameters/stellar_mass .*must be positive",
        ),
    }


# ---------------------------------------------------------------------------------------------
# The cases.


@dataclass
class Case:
    argv: list[str]
    message: str = ""  # a regex the error line must match (exit 2); "" for runs that must succeed
    absent: list[Path] = field(default_factory=list)  # what must not exist afterwards
    intact: dict[Path, bytes] = field(default_factory=dict)  # files that must keep these bytes
    limit_file_bytes: int | None = None  # RLIMIT_FSIZE for the run (a full disk, as the process sees it)
    code: int = 2
    env: dict = field(default_factory=dict)  # extra environment variables for the run


def _cases(b: Path) -> dict[str, Case]:
    bank, model, obs, out = b / "bank.h5", b / "run" / "siamese.pt", b / "obs.fits", b / "outputs"
    cases: dict[str, Case] = {}
    for name, (path, extra, message) in _fits_cases(b).items():
        distance = [] if "--distance" in extra else ["--distance", "140"]
        prepared = out / f"observe_{name}.fits"
        cases[f"observe_{name}"] = Case(
            ["observe", str(path), *distance, *extra, "--bank", str(bank), "--out", str(prepared)], message, [prepared]
        )
        if name in (
            "truncated_fits",
            "no_pixel_scale",
            "one_pixel",
            "negative_beam",
            "noise_nan",
            "noise_zero",
            "not_fits",
        ):
            folder = out / f"match_{name}"
            cases[f"match_{name}"] = Case(
                [
                    "match",
                    "--model",
                    str(model),
                    "--bank",
                    str(bank),
                    "--target",
                    str(path),
                    *distance,
                    *extra,
                    "--out",
                    str(folder),
                ],
                message,
                [folder],
            )
    for name, (path, message) in _bank_cases(b).items():
        folder = out / f"match_{name}"
        cases[f"match_{name}"] = Case(
            ["match", "--model", str(model), "--bank", str(path), "--target-system", "1", "--out", str(folder)],
            message,
            [folder],
        )
    for name in ("bank_nan_parameter", "bank_nan_images"):
        path = _bank_cases(b)[name][0]
        run = out / f"train_{name}"
        cases[f"train_{name}"] = Case(
            ["train-autoencoder", "--config", "tiny", "--bank", str(path), "--out", str(run), "--quiet"],
            _bank_cases(b)[name][1],
            [run / "autoencoder.pt"],
        )

    payload_marker = b / "payload_ran"
    pickled = b / "inputs" / "payload.pt"
    pickled.write_bytes(_pickle_payload(payload_marker))
    garbage_model = b / "inputs" / "garbage.pt"
    garbage_model.write_bytes(b"\x00" * 4096)
    match = ["match", "--bank", str(bank), "--target-system", "1", "--out"]
    cases["model_pickle_payload"] = Case(
        [*match, str(out / "m_payload"), "--model", str(pickled)],
        r"payload\.pt was refused: it holds Python objects",
        [out / "m_payload", payload_marker],
    )
    cases["model_garbage"] = Case(
        [*match, str(out / "m_garbage"), "--model", str(garbage_model)],
        r"garbage\.pt could not be read",
        [out / "m_garbage"],
    )
    cases["model_missing"] = Case(
        [*match, str(out / "m_missing"), "--model", str(b / "none.pt")], r"none\.pt does not exist", [out / "m_missing"]
    )
    cases["model_is_autoencoder"] = Case(
        [*match, str(out / "m_ae"), "--model", str(b / "run" / "autoencoder.pt")],
        r"autoencoder\.pt holds a 'autoencoder' model, not a 'siamese' one",
        [out / "m_ae"],
    )
    cases["target_system_out_of_range"] = Case(
        ["match", "--model", str(model), "--bank", str(bank), "--target-system", "99", "--out", str(out / "m_range")],
        r"got system 99",
        [out / "m_range"],
    )
    cases["top_k_negative"] = Case(
        [
            "match",
            "--model",
            str(model),
            "--bank",
            str(bank),
            "--target-system",
            "1",
            "--top-k",
            "-3",
            "--out",
            str(out / "m_topk"),
        ],
        r"--top-k must be 0 \(all above --threshold\) or a positive",
        [out / "m_topk"],
    )
    a_file = b / "inputs" / "a_file.txt"
    a_file.write_text("keep me\n")
    cases["match_out_is_a_file"] = Case(
        ["match", "--model", str(model), "--bank", str(bank), "--target-system", "1", "--out", str(a_file)],
        r"a_file\.txt exists and is not a folder",
        intact={a_file: b"keep me\n"},
    )
    cases["match_out_under_a_file"] = Case(
        ["match", "--model", str(model), "--bank", str(bank), "--target-system", "1", "--out", str(a_file / "sub")],
        r"a_file\.txt.* not a folder",
        intact={a_file: b"keep me\n"},
    )
    cases["match_disk_full"] = Case(
        [
            "match",
            "--model",
            str(model),
            "--bank",
            str(bank),
            "--target",
            str(obs),
            "--distance",
            "140",
            "--out",
            str(out / "m_full"),
        ],
        r"m_full.*could not write: File too large",
        [out / "m_full"],
        limit_file_bytes=20_000,
    )

    folder = b / "inputs" / "a_folder"
    folder.mkdir(exist_ok=True)
    (folder / "keep.txt").write_text("keep\n")
    simulate = ["simulate", "--config", "tiny", "--projections", "2"]
    cases["simulate_out_is_a_folder"] = Case(
        [*simulate, "--systems", "2", "--out", str(folder)],
        r"a_folder is a folder",
        intact={folder / "keep.txt": b"keep\n"},
    )
    cases["simulate_zero_systems"] = Case(
        [*simulate, "--systems", "0", "--out", str(out / "zero.h5")], r"at least one system", [out / "zero.h5"]
    )
    cases["simulate_one_pixel"] = Case(
        [*simulate, "--systems", "2", "--size", "1", "--out", str(out / "px.h5")],
        r"image size must be at least 8 pixels",
        [out / "px.h5"],
    )
    cases["simulate_disk_full"] = Case(
        [*simulate, "--systems", "40", "--out", str(out / "full.h5")],
        r"full\.h5.*File too large",
        [out / "full.h5"],
        limit_file_bytes=60_000,
    )
    cases["train_disk_full"] = Case(
        [
            "train-siamese",
            "--config",
            "tiny",
            "--bank",
            str(bank),
            "--autoencoder",
            str(b / "run" / "autoencoder.pt"),
            "--out",
            str(out / "t_full"),
            "--epochs",
            "1",
            "--quiet",
        ],
        r"siamese.*could not write: File too large",
        [out / "t_full" / "siamese.pt"],
        limit_file_bytes=30_000,
    )
    cases["unknown_option"] = Case(
        ["match", "--modle", "x"], r"unrecognized arguments|the following arguments are required"
    )
    cases["import_thesis_missing_folder"] = Case(
        ["import-thesis", str(b / "nowhere"), "--out", str(out / "t.h5")], r"nowhere", [out / "t.h5"]
    )

    cases.update(_second_round(b, bank, model, obs, out))
    cases.update(_third_round(b, bank, out))
    cases.update(_fourth_round(b, bank, model, obs, out))
    infinite = _fits_variant(b, "inf.fits", lambda d, h: _with_inf(d))
    cases["observe_infinite_pixel_is_blanked"] = Case(
        ["observe", str(infinite), "--distance", "140", "--bank", str(bank), "--out", str(out / "inf_prepared.fits")],
        code=0,
    )
    bordered = _fits_variant(b, "zero_border.fits", lambda d, h: _zero_border(d, h))
    cases["observe_zero_blanked_border"] = Case(
        [
            "observe",
            str(bordered),
            "--distance",
            "140",
            "--bank",
            str(bank),
            "--out",
            str(out / "border_prepared.fits"),
        ],
        code=0,
    )
    galactic = _fits_variant(b, "galactic.fits", lambda d, h: (_to_galactic(h), d)[1])
    cases["observe_galactic_map"] = Case(
        ["observe", str(galactic), "--distance", "140", "--bank", str(bank), "--out", str(out / "gal_prepared.fits")],
        code=0,
    )
    return cases


def _second_round(b: Path, bank: Path, model: Path, obs: Path, out: Path) -> dict[str, Case]:
    """Cases found by an adversarial probe of 394 inputs: files that read other files, ask for absurd memory, or
    mislead."""
    secret = b / "inputs" / "secret.txt"
    secret.write_bytes(b"not for a bank" * 5000)

    def external(f):
        images = f["images"][()]
        del f["images"]
        f.create_dataset("images", shape=images.shape, dtype="<f4", external=[(str(secret), 0, h5py.h5f.UNLIMITED)])

    def linked(f):
        del f["viewing"]
        f["viewing"] = h5py.ExternalLink(str(b / "bank.h5"), "/viewing")

    banks = {
        "bank_external_storage": (
            _bank_variant(b, "external.h5", external),
            r"external\.h5: /images keeps its data outside",
        ),
        "bank_external_link": (_bank_variant(b, "extlink.h5", linked), r"extlink\.h5: /viewing is a ExternalLink"),
        "bank_no_viewing": (
            _bank_variant(b, "noview.h5", lambda f: f.__delitem__("viewing")),
            r"noview\.h5: the bank has no /viewing",
        ),
        "bank_duplicate_ids": (
            _bank_variant(b, "dupid.h5", lambda f: f["system_id"].__setitem__(Ellipsis, 0)),
            r"dupid\.h5: /system_id repeats",
        ),
    }
    cases = {
        f"match_{name}": Case(
            [
                "match",
                "--model",
                str(model),
                "--bank",
                str(path),
                "--target-system",
                "1",
                "--out",
                str(out / f"match_{name}"),
            ],
            message,
            [out / f"match_{name}"],
        )
        for name, (path, message) in banks.items()
    }
    # was an out-of-memory kill
    fits_files = {
        "degree_pixels": (
            _fits_variant(b, "degree.fits", lambda d, h: (h.update(CDELT1=-1.0, CDELT2=1.0), d)[1]),
            [],
            r"degree\.fits: the beam .* spans .* pixels .* pixel scale \(CDELT/CD\) or its beam",
        ),
        "nan_crval": (
            _nan_card(_fits_variant(b, "nancrval.fits", lambda d, h: (h.update(CRVAL1=123456.0), d)[1])),
            [],
            r"nancrval\.fits: the header card CRVAL1 = 'NaN' is not a finite number",
        ),
        "stokes_v": (
            _fits_variant(b, "stokesv.fits", lambda d, h: (h.update(CRVAL4=4.0), d)[1]),
            [],
            r"stokesv\.fits: the image is Stokes V",
        ),
        "nan_bpa": (
            _nan_card(_fits_variant(b, "nanbpa.fits", lambda d, h: (h.update(BPA=123456.0), d)[1])),
            [],
            r"nanbpa\.fits: BPA = .* is not a position angle",
        ),
        "max_scale_below_beam": (
            obs,
            ["--max-scale", "1e-6"],
            r"obs\.fits: a maximum recoverable scale of 1e-06\" is smaller than the beam",
        ),
        "max_scale_huge": (
            obs,
            ["--max-scale", "1e6"],
            r"obs\.fits: a maximum recoverable scale of 1e\+06\" is beyond 3600",
        ),
    }
    for name, (path, extra, message) in fits_files.items():
        cases[f"observe_{name}"] = Case(
            [
                "observe",
                str(path),
                "--distance",
                "140",
                *extra,
                "--bank",
                str(bank),
                "--out",
                str(out / f"observe_{name}.fits"),
            ],
            message,
            [out / f"observe_{name}.fits"],
        )
    copy = b / "inputs" / "mine.fits"
    shutil.copy(obs, copy)
    cases["observe_out_is_its_input"] = Case(
        ["observe", str(copy), "--distance", "140", "--bank", str(bank), "--out", str(copy)],
        r"mine\.fits: --out is the input file itself",
        intact={copy: obs.read_bytes()},
    )
    listed = b / "inputs" / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    train = ["train-autoencoder", "--bank", str(bank), "--quiet", "--epochs", "1"]
    cases["train_config_is_a_list"] = Case(
        [*train, "--config", str(listed), "--out", str(out / "t_list")],
        r"list\.yaml: a configuration is a mapping of sections",
        [out / "t_list"],
    )
    cases["train_set_wrong_type"] = Case(
        [*train, "--config", "tiny", "--set", "autoencoder.training.patience=abc", "--out", str(out / "t_abc")],
        r"\[autoencoder\.training\]: patience = 'abc' is not a whole number",
        [out / "t_abc"],
    )
    cases["train_learning_rate_nan"] = Case(
        [*train, "--config", "tiny", "--learning-rate", "nan", "--out", str(out / "t_nan")],
        r"learning rate must be a number >= 0, got nan",
        [out / "t_nan"],
    )
    cases["simulate_negative_seed"] = Case(
        ["simulate", "--config", "tiny", "--seed", "-1", "--out", str(out / "seed.h5")],
        r"invalid seed -1",
        [out / "seed.h5"],
    )
    cases["match_device_bogus"] = Case(
        [
            "match",
            "--model",
            str(model),
            "--bank",
            str(bank),
            "--target-system",
            "1",
            "--device",
            "gpu0",
            "--out",
            str(out / "m_dev"),
        ],
        r"--device = 'gpu0' is not a device",
        [out / "m_dev"],
    )
    cases["match_empty_out"] = Case(
        ["match", "--model", str(model), "--bank", str(bank), "--target-system", "1", "--out", ""],
        r"argument --out: an empty path",
    )
    cases["tune_config_name_is_a_path"] = Case(
        [
            "tune",
            "--config",
            "tiny",
            "--bank",
            str(bank),
            "--trials",
            "1",
            "--epochs",
            "1",
            "--config-name",
            "../../evil",
            "--configs-dir",
            str(out / "cfg"),
            "--out",
            str(out / "tune"),
        ],
        r"--config-name '\.\./\.\./evil': give a plain name",
        [out / "tune", out / "evil.yaml"],
    )
    return cases


def _thesis_folder(b: Path, name: str, second_projection) -> Path:
    """A folder of one thesis snapshot (two projections) whose second projection is made by ``second_projection(f,
    name)``."""
    folder = b / "inputs" / f"thesis_{name}"
    folder.mkdir(parents=True, exist_ok=True)
    with h5py.File(folder / "snap.h5", "w") as f:
        f["intensity_projection_1"] = np.random.default_rng(0).random((32, 32)).astype("f4")
        second_projection(f, "intensity_projection_2")
        for key in THESIS_DATASETS:
            f[key] = 1.0
    return folder


def _thesis_cases(b: Path) -> dict[str, Path]:
    """id -> a folder of snapshots whose image is read from another file, in each of HDF5's three ways."""
    secret = b / "inputs" / "secret.txt"
    good = _thesis_folder(b, "good", lambda f, name: f.create_dataset(name, data=np.ones((32, 32), "f4"))) / "snap.h5"

    def virtual(f, name):
        layout = h5py.VirtualLayout(shape=(32, 32), dtype="<f4")
        layout[:] = h5py.VirtualSource(str(good), "intensity_projection_1", shape=(32, 32))
        f.create_virtual_dataset(name, layout)

    return {
        "external_storage": _thesis_folder(
            b,
            "external",
            lambda f, name: f.create_dataset(
                name, shape=(32, 32), dtype="<f4", external=[(str(secret), 0, h5py.h5f.UNLIMITED)]
            ),
        ),
        "external_link": _thesis_folder(
            b, "link", lambda f, name: f.__setitem__(name, h5py.ExternalLink(str(good), "/intensity_projection_1"))
        ),
        "virtual_dataset": _thesis_folder(b, "virtual", virtual),
    }


def _third_round(b: Path, bank: Path, out: Path) -> dict[str, Case]:
    """Cases of issue 31: files read from elsewhere, outputs that are not files, settings that reach past their
    folder."""
    cases = {
        f"import_thesis_{name}": Case(
            ["import-thesis", str(folder), "--projections", "2", "--out", str(out / f"thesis_{name}.h5")],
            r"thesis_\w+/snap\.h5: /intensity_projection_2 (keeps its data outside|is a ExternalLink)",
            [out / f"thesis_{name}.h5"],
        )
        for name, folder in _thesis_cases(b).items()
    }
    fifo, link = b / "inputs" / "pipe", b / "inputs" / "null_link"
    if not os.path.lexists(fifo):
        os.mkfifo(fifo)
        link.symlink_to(os.devnull)
    observe = ["observe", str(b / "obs.fits"), "--distance", "140", "--bank", str(bank), "--out"]
    simulate = ["simulate", "--config", "tiny", "--systems", "2", "--projections", "2"]
    cases["observe_out_is_a_fifo"] = Case([*observe, str(fifo)], r"pipe is a FIFO \(named pipe\), not a regular file")
    cases["simulate_out_is_a_device"] = Case(
        [*simulate, "--out", os.devnull], r"/dev/null is a character device, not a regular file"
    )
    cases["simulate_out_links_to_a_device"] = Case(
        [*simulate, "--out", str(link)], r"null_link is a link to a character device"
    )
    cases["match_out_is_a_fifo"] = Case(
        [
            "match",
            "--model",
            str(b / "run" / "siamese.pt"),
            "--bank",
            str(bank),
            "--target-system",
            "1",
            "--out",
            str(fifo),
        ],
        r"pipe is a FIFO \(named pipe\), not a folder",
    )
    piped = b / "inputs" / "piped_products"
    if not os.path.lexists(piped / "matches.csv"):
        piped.mkdir(parents=True, exist_ok=True)
        os.mkfifo(piped / "matches.csv")
    cases["match_product_is_a_fifo"] = Case(
        [
            "match",
            "--model",
            str(b / "run" / "siamese.pt"),
            "--bank",
            str(bank),
            "--target-system",
            "1",
            "--out",
            str(piped),
        ],
        r"piped_products/matches\.csv exists and is not a regular file",
    )
    cases["simulate_out_ends_with_a_slash"] = Case(
        [*simulate, "--out", f"{out / 'new_folder'}/"],
        r"new_folder/' names a folder, but this is a file",
        [out / "new_folder"],
    )
    for name, setting in {
        "noise_negative": "instrument.noise_rms_jy_beam=-1",
        "noise_nan": "instrument.noise_rms_jy_beam=.nan",
        "distance_zero": "instrument.distance_pc=0",
        "beam_negative": "instrument.beam_major_arcsec=-0.1",
        "seed_huge": f"bank.seed={2**70}",
    }.items():
        kept = b / "inputs" / f"good_{name}.h5"
        shutil.copy(bank, kept)
        cases[f"simulate_{name}_keeps_the_bank"] = Case(
            [*simulate, "--set", setting, "--out", str(kept)],
            r"\[(instrument|bank)\]: .*(must be|a seed is)",
            intact={kept: bank.read_bytes()},
        )
    kept = b / "inputs" / "good_nan_images.h5"
    shutil.copy(bank, kept)
    cases["simulate_nan_images_keeps_the_bank"] = Case(
        [*simulate, "--set", "simulator.frequency_ghz=1.0e+300", "--out", str(kept)],
        r"good_nan_images\.h5: the simulator rendered \d+ NaN or infinite pixel",
        intact={kept: bank.read_bytes()},
    )
    train = [
        "train-autoencoder",
        "--config",
        "tiny",
        "--bank",
        str(bank),
        "--quiet",
        "--epochs",
        "1",
        "--out",
        str(out / "t_name"),
    ]
    cases["config_name_is_a_path"] = Case(
        [*train, "--set", "name=../../evil"], r"tiny\.yaml: name '\.\./\.\./evil': give a plain name", [out / "t_name"]
    )
    cases["config_name_is_absolute"] = Case(
        [*train, "--set", f"name={out / 'abs'}"],
        r"tiny\.yaml: name '/.*abs': give a plain name",
        [out / "t_name", out / "abs"],
    )
    return cases


def _fourth_round(b: Path, bank: Path, model: Path, obs: Path, out: Path) -> dict[str, Case]:
    """Cases of issue 31, items 7-14: what files say about themselves (units, beams, cards, checkpoints, banks),
    targets with nothing to match, prepared files prepared again, and options that reached a traceback."""
    cases = {
        f"observe_{name}": Case(
            [
                "observe",
                str(path),
                "--distance",
                "140",
                *extra,
                "--bank",
                str(bank),
                "--out",
                str(out / f"observe_{name}.fits"),
            ],
            message,
            [out / f"observe_{name}.fits"],
        )
        for name, (path, extra, message) in _fourth_round_fits(b).items()
    }
    prepared = b / "inputs" / "prepared.fits"
    assert main(["observe", str(obs), "--distance", "140", "--bank", str(bank), "--out", str(prepared)]) == 0
    match = ["match", "--model", str(model), "--bank", str(bank)]
    cases["observe_prepared_again"] = Case(
        ["observe", str(prepared), "--distance", "140", "--bank", str(bank), "--out", str(out / "twice.fits")],
        r"prepared\.fits: this image was written by `protolib observe`",
        [out / "twice.fits"],
    )
    cases["match_prepared_with_options"] = Case(
        [*match, "--target", str(prepared), "--centre", "69.9746 26.0527", "--out", str(out / "m_prep_opt")],
        r"prepared\.fits was prepared already .* --centre cannot",
        [out / "m_prep_opt"],
    )
    cases["match_prepared_as_it_is"] = Case([*match, "--target", str(prepared), "--out", str(out / "m_prep")], code=0)
    cases["match_mask_blanks_everything"] = Case(
        [*match, "--target", str(obs), "--distance", "140", "--mask-radius", "1e-6", "--out", str(out / "m_empty")],
        r"obs\.fits: nothing to match on the bank's grid",
        [out / "m_empty"],
    )
    zeros = _fits_variant(b, "zeros.fits", lambda d, h: np.zeros_like(d))
    cases["match_all_zero_target"] = Case(
        [*match, "--target", str(zeros), "--distance", "140", "--noise", "1e-4", "--out", str(out / "m_zero")],
        r"zeros\.fits: every pixel that is not blank holds the same value \(0\)",
        [out / "m_zero"],
    )
    for name, (path, message) in _fourth_round_models(b, model).items():
        cases[f"match_{name}"] = Case(
            [*match, "--target-system", "1", "--model", str(path), "--out", str(out / f"m_{name}")],
            message,
            [out / f"m_{name}"],
        )
    cases.update(_fourth_round_settings(b, bank, model, out))
    return cases


def _fourth_round_fits(b: Path) -> dict:
    """id -> (FITS file, extra arguments, message) refused by ``observe``."""

    def beams_table(name, columns):
        path = _fits_variant(b, name, lambda d, h: (_delete(h, "BMAJ", "BMIN", "BPA"), d)[1])
        table = fits.BinTableHDU.from_columns(
            [fits.Column(name=k, format="E", array=np.array([v])) for k, v in columns.items()], name="BEAMS"
        )
        with fits.open(path, mode="append") as hdul:
            hdul.append(table)
        return path

    tables = b / "inputs" / "table_only.fits"
    fits.HDUList(
        [fits.PrimaryHDU(), fits.BinTableHDU.from_columns([fits.Column(name="FLUX", format="E", array=np.ones(3))])]
    ).writeto(tables, overwrite=True)
    huge = b / "inputs" / "huge.fits"
    header = fits.getheader(b / "obs.fits")
    header.update(NAXIS1=300_000, NAXIS2=300_000)
    huge.write_bytes(header.tostring().encode() + b"\0" * 2880)  # the header declares 360 GB; the data are not there

    def card(name, key, value):
        return _fits_variant(b, name, lambda d, h: (h.__setitem__(f"HIERARCH {key}", value), d)[1])

    return {
        "bunit_ambiguous_capitals": (
            _fits_variant(b, "mjy_caps.fits", lambda d, h: (h.update(BUNIT="MJY/BEAM"), d)[1]),
            [],
            r"mjy_caps\.fits: BUNIT = 'MJY/BEAM' is ambiguous",
        ),
        "bunit_per_second": (
            _fits_variant(b, "jys.fits", lambda d, h: (h.update(BUNIT="Jy/s"), d)[1]),
            [],
            r"jys\.fits: BUNIT = 'Jy/s' is not",
        ),
        "beams_table_nan": (
            beams_table("beams_nan.fits", {"BMAJ": np.nan, "BMIN": 0.2, "BPA": 0.0}),
            [],
            r"beams_nan\.fits: the BEAMS table gives BMAJ = nan",
        ),
        "beams_table_negative": (
            beams_table("beams_neg.fits", {"BMAJ": -0.3, "BMIN": 0.2, "BPA": 0.0}),
            [],
            r"beams_neg\.fits: the BEAMS table gives BMAJ = -0.3",
        ),
        "beams_table_no_bmaj": (
            beams_table("beams_nobmaj.fits", {"BMIN": 0.2, "BPA": 0.0}),
            [],
            r"beams_nobmaj\.fits: the BEAMS table has no BMAJ",
        ),
        "card_max_scale_negative": (
            card("maxscale.fits", "PROTOLIB MAX_SCALE", -5.0),
            [],
            r"maxscale\.fits: the card PROTOLIB MAX_SCALE: the maximum recoverable scale must be 0",
        ),
        "card_not_a_number": (
            card("cardtext.fits", "PROTOLIB TRUE STELLAR_MASS", "heavy"),
            [],
            r"cardtext\.fits: the header card PROTOLIB TRUE STELLAR_MASS = 'heavy' is not a finite number",
        ),
        "table_only": (tables, [], r"table_only\.fits: no image data \(it holds only table"),
        "too_large_for_memory": (
            huge,
            [],
            r"huge\.fits: the image is 300000 x 300000 (x 1 )*values .* needs about .* GB",
        ),
    }


def _fourth_round_models(b: Path, model: Path) -> dict:
    """id -> (checkpoint, message): checkpoints whose values would not pass the options that set them."""
    import torch

    good = torch.load(model, weights_only=True)

    def variant(name, change):
        data = {**good, "preprocessing": dict(good["preprocessing"]), "normaliser": dict(good["normaliser"])}
        change(data)
        path = b / "inputs" / name
        torch.save(data, path)
        return path

    return {
        "model_distance_zero": (
            variant("dist0.pt", lambda d: d["preprocessing"].update(distance_pc=0.0)),
            r"dist0\.pt: its image preprocessing .* distance_pc must be a positive number",
        ),
        "model_pixels_per_beam_negative": (
            variant("ppb.pt", lambda d: d["preprocessing"].update(pixels_per_beam=-3.0)),
            r"ppb\.pt: its image preprocessing .* pixels_per_beam must be a positive",
        ),
        "model_zero_spread": (
            variant("spread0.pt", lambda d: d["normaliser"].update(spread=[0.0] * len(d["normaliser"]["spread"]))),
            r"spread0\.pt: its parameter normaliser .* spread positive",
        ),
        "model_missing_part": (variant("nonorm.pt", lambda d: d.pop("normaliser")), r"nonorm\.pt lacks normaliser"),
        "model_is_a_bank": (b / "bank.h5", r"bank\.h5 is an HDF5 file \(a bank\?\), not a protolib checkpoint"),
    }


def _fourth_round_settings(b: Path, bank: Path, model: Path, out: Path) -> dict[str, Case]:
    """Options and configuration values that reached a traceback or said the wrong thing."""
    train = ["train-autoencoder", "--config", "tiny", "--bank", str(bank), "--quiet", "--epochs", "1"]
    simulate = ["simulate", "--config", "tiny", "--systems", "2", "--projections", "2"]
    match = ["match", "--model", str(model), "--bank", str(bank), "--target-system", "1"]
    binary = b / "inputs" / "binary.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    unknown = _bank_variant(
        b,
        "unknown_key.h5",
        lambda f: f.attrs.__setitem__(
            "simulator_config", json.dumps({**json.loads(f.attrs["simulator_config"]), "warp_factor": 9})
        ),
    )
    one = b / "inputs" / "one_system.h5"
    assert main([*simulate[:3], "--systems", "1", "--projections", "2", "--out", str(one)]) == 0
    thesis = _thesis_folder(b, "three", lambda f, name: f.create_dataset(name, data=np.ones((32, 32), "f4")))
    for k in (1, 2):
        shutil.copy(thesis / "snap.h5", thesis / f"snap{k}.h5")
    imported = b / "inputs" / "thesis.h5"
    assert main(["import-thesis", str(thesis), "--projections", "2", "--out", str(imported)]) == 0
    no_sbi = b / "inputs" / "no_sbi" / "sbi"
    no_sbi.mkdir(parents=True, exist_ok=True)
    (no_sbi / "__init__.py").write_text("raise ImportError('sbi is not installed (as the test pretends)')\n")
    path = os.pathsep.join([str(no_sbi.parent), os.environ.get("PYTHONPATH", "")])
    settings = {
        "set_yaml_syntax_error": (
            [*train, "--set", "autoencoder.training.patience=[1"],
            r"--set .*the value is not valid YAML",
        ),
        "set_python_tag": (
            [*train, "--set", "autoencoder.training.patience=!!python/object/apply:os.system ['true']"],
            r"not valid YAML.*tags such as !!python",
        ),
        "set_exponent_is_a_number": (
            [*train, "--set", "autoencoder.training.learning_rate=-1e6"],
            r"learning rate must be a number >= 0, got -1000000",
        ),
        "config_is_binary": ([*train, "--config", str(binary)], r"binary\.yaml is not a text file"),
        "threads_negative": ([*train, "--threads", "-2"], r"num_threads \(--threads\) must be a whole number >= 1"),
        "seed_huge": (
            [*train, "--seed", str(2**70)],
            r"invalid seed \d+: give a whole number >= 0 \(and at most 2\*\*63 - 1\)",
        ),
        "prior_inverted": (
            [*simulate, "--set", "prior.stellar_mass_msun=[2, 1]"],
            r"prior\.stellar_mass_msun must be a range \[low, high\]",
        ),
        "fov_tiny": ([*simulate, "--fov", "1e-9"], r"beam .* is wider than the simulator's field of view"),
        "scheduler_not_an_address": (
            [*simulate, "--scheduler", "not a url"],
            r"--scheduler 'not a url' is not a Dask scheduler address",
        ),
        "threshold_above_one": (
            [*match, "--top-k", "0", "--threshold", "2"],
            r"--threshold must be a similarity between -1 and 1 .*got 2",
        ),
        "threshold_nan": (
            [*match, "--threshold", "nan"],
            r"--threshold must be a similarity between -1 and 1 .*got nan",
        ),
        "one_system_bank": (
            ["match", "--model", str(model), "--bank", str(one), "--target-system", "0"],
            r"one_system\.h5 has one system",
        ),
        "bank_unknown_simulator_key": (
            ["match", "--model", str(model), "--bank", str(unknown), "--target-system", "1"],
            r"unknown_key\.h5: the bank's simulator_config: unknown setting\(s\) \['warp_factor'\]",
        ),
    }
    cases = {
        name: Case([*argv, "--out", str(out / f"s4_{name}")], message, [out / f"s4_{name}"])
        for name, (argv, message) in settings.items()
    }
    cases["evaluate_npe_without_sbi"] = Case(
        [
            "evaluate",
            "--config",
            "tiny",
            "--model",
            str(model),
            "--bank",
            str(bank),
            "--methods",
            "npe",
            "--out",
            str(out / "e_npe"),
        ],
        r"--methods npe needs the sbi package",
        [out / "e_npe"],
        env={"PYTHONPATH": path},
    )
    for name, change in {"hot_pixel": _hot_pixel, "blank_peak": _blank_peak}.items():
        cases[f"observe_{name}"] = Case(
            [
                "observe",
                str(_fits_variant(b, f"{name}.fits", lambda d, h, change=change: change(d))),
                "--distance",
                "140",
                "--bank",
                str(bank),
                "--out",
                str(out / f"{name}_prepared.fits"),
            ],
            code=0,
        )
    # a model trained on Jy/beam images is refused on an imported bank of arbitrary units (issue 31 item 11), in one
    # line
    cases["match_imported_thesis_bank"] = Case(
        [
            "match",
            "--model",
            str(model),
            "--bank",
            str(imported),
            "--target-system",
            "0",
            "--out",
            str(out / "m_thesis"),
        ],
        r"another setup .*image unit Jy/beam against arbitrary",
    )
    return cases


def _hot_pixel(data):
    """One pixel, far from the source, ten times brighter than the source's peak (a glitch, a cosmic ray)."""
    data = data.copy()
    data[..., 10, 10] = 10 * np.nanmax(data)
    return data


def _blank_peak(data):
    """The 3 x 3 pixels on the source's peak blanked (NaN)."""
    data = data.copy()
    row, col = np.unravel_index(int(np.nanargmax(data[0, 0])), data.shape[-2:])
    data[..., row - 1 : row + 2, col - 1 : col + 2] = np.nan
    return data


def _nan_card(path: Path) -> Path:
    """The file with its card of value 123456.0 made NaN (astropy writes no NaN cards; other software does)."""
    content = path.read_bytes()
    assert content.count(b"123456.0") == 1
    path.write_bytes(content.replace(b"123456.0", b"     NaN"))
    return path


def _with_inf(data):
    data = data.copy()
    data[..., 5, 7] = np.inf
    return data


def _zero_border(data, header):
    """The map inside a wide border of exact zeros, as some pipelines blank what lies outside the primary beam."""
    padded = np.zeros((*data.shape[:-2], data.shape[-2] + 160, data.shape[-1] + 160), dtype=data.dtype)
    padded[..., 80:-80, 80:-80] = data
    header["CRPIX1"] += 80
    header["CRPIX2"] += 80
    return padded


def _to_galactic(header):
    from astropy.coordinates import SkyCoord

    centre = SkyCoord(header["CRVAL1"], header["CRVAL2"], unit="deg", frame="icrs").galactic
    header.update(CTYPE1="GLON-SIN", CTYPE2="GLAT-SIN", CRVAL1=centre.l.deg, CRVAL2=centre.b.deg)
    _delete(header, "RADESYS", "EQUINOX")


def _pickle_payload(marker: Path) -> bytes:
    """A file that runs ``touch marker`` when unpickled (as a crafted ``siamese.pt`` would)."""
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return pickle.dumps({"kind": "siamese", "model_state": Payload()})


def _run(
    argv: list[str], limit_file_bytes: int | None = None, timeout: float = 240, env: dict | None = None
) -> subprocess.CompletedProcess:
    """``protolib ARGV`` in a process of its own: a fork of the module's preloaded Python (tests/preloaded_cli.py),
    or a new Python where ``env`` changes what Python reads when it starts (or no preloaded one runs)."""
    if env or not PRELOADED:
        return _run_in_a_new_python(argv, limit_file_bytes, timeout, env)
    return PRELOADED[0].run(argv, ENV, timeout, limit_file_bytes)


def _run_in_a_new_python(
    argv: list[str], limit_file_bytes: int | None = None, timeout: float = 240, env: dict | None = None
) -> subprocess.CompletedProcess:
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit then fail with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_bytes, limit_file_bytes))

    return subprocess.run(
        [*PROTOLIB, *argv],
        capture_output=True,
        text=True,
        env={**ENV, **(env or {})},
        timeout=timeout,
        preexec_fn=limit if limit_file_bytes else None,
    )


PRELOADED: list[PreloadedProtolib] = []  # the module's two servers while its tests run


@pytest.fixture(scope="module", autouse=True)
def preloaded_protolib():
    """Two servers that have imported protolib and torch once; ``_run`` forks each command from one of them."""
    runner = PreloadedProtolib(ENV, workers=2)
    PRELOADED.append(runner)
    yield runner
    PRELOADED.remove(runner)
    runner.close()


@pytest.fixture(scope="module")
def results(base):
    cases = _cases(base)
    before = {name: {p: p.read_bytes() for p in case.intact} for name, case in cases.items()}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            name: pool.submit(_run, case.argv, case.limit_file_bytes, 240, case.env) for name, case in cases.items()
        }
        done = {name: future.result() for name, future in futures.items()}
    return {name: (cases[name], done[name], before[name]) for name in cases}


def _error_lines(stderr: str) -> list[str]:
    """The lines of stderr that are not progress bars or warnings."""
    lines = [line for chunk in stderr.splitlines() for line in chunk.split("\r") if line.strip()]
    return [
        line
        for line in lines
        if "it/s]" not in line and "img/s]" not in line and "%|" not in line and ": warning: " not in line
    ]


@pytest.mark.parametrize(
    "name",
    [
        *(
            f"observe_{n}"
            for n in [
                "not_fits",
                "truncated_fits",
                "no_celestial_wcs",
                "no_pixel_scale",
                "all_nan",
                "one_pixel",
                "cube",
                "kelvin",
                "mjy_per_sr",
                "negative_beam",
                "huge_beam",
                "noise_nan",
                "noise_negative",
                "noise_zero",
                "distance_negative",
                "distance_nan",
                "distance_text",
                "centre_outside",
                "centre_garbage",
                "missing_file",
            ]
        ),
        *(
            f"match_{n}"
            for n in [
                "truncated_fits",
                "no_pixel_scale",
                "one_pixel",
                "negative_beam",
                "noise_nan",
                "noise_zero",
                "not_fits",
            ]
        ),
        *(
            f"match_{n}"
            for n in [
                "bank_missing",
                "bank_not_hdf5",
                "bank_truncated",
                "bank_foreign",
                "bank_is_folder",
                "bank_nan_parameter",
                "bank_inf_viewing",
                "bank_nan_images",
                "bank_negative_mass",
            ]
        ),
        "train_bank_nan_parameter",
        "train_bank_nan_images",
        "model_pickle_payload",
        "model_garbage",
        "model_missing",
        "model_is_autoencoder",
        "target_system_out_of_range",
        "top_k_negative",
        "match_out_is_a_file",
        "match_out_under_a_file",
        "match_disk_full",
        "simulate_out_is_a_folder",
        "simulate_zero_systems",
        "simulate_one_pixel",
        "simulate_disk_full",
        "train_disk_full",
        "unknown_option",
        "import_thesis_missing_folder",
        *(f"match_bank_{n}" for n in ["external_storage", "external_link", "no_viewing", "duplicate_ids"]),
        *(
            f"observe_{n}"
            for n in [
                "degree_pixels",
                "nan_crval",
                "stokes_v",
                "nan_bpa",
                "max_scale_below_beam",
                "max_scale_huge",
                "out_is_its_input",
            ]
        ),
        "train_config_is_a_list",
        "train_set_wrong_type",
        "train_learning_rate_nan",
        "simulate_negative_seed",
        "match_device_bogus",
        "match_empty_out",
        "tune_config_name_is_a_path",
        *(f"import_thesis_{n}" for n in ["external_storage", "external_link", "virtual_dataset"]),
        "observe_out_is_a_fifo",
        "simulate_out_is_a_device",
        "simulate_out_links_to_a_device",
        "match_out_is_a_fifo",
        "match_product_is_a_fifo",
        "simulate_out_ends_with_a_slash",
        "config_name_is_a_path",
        "config_name_is_absolute",
        *(
            f"simulate_{n}_keeps_the_bank"
            for n in ["noise_negative", "noise_nan", "distance_zero", "beam_negative", "seed_huge", "nan_images"]
        ),
        *(
            f"observe_{n}"
            for n in [
                "bunit_ambiguous_capitals",
                "bunit_per_second",
                "beams_table_nan",
                "beams_table_negative",
                "beams_table_no_bmaj",
                "card_max_scale_negative",
                "card_not_a_number",
                "table_only",
                "too_large_for_memory",
                "prepared_again",
            ]
        ),
        "match_prepared_with_options",
        "match_mask_blanks_everything",
        "match_all_zero_target",
        *(
            f"match_model_{n}"
            for n in ["distance_zero", "pixels_per_beam_negative", "zero_spread", "missing_part", "is_a_bank"]
        ),
        "set_yaml_syntax_error",
        "set_python_tag",
        "set_exponent_is_a_number",
        "config_is_binary",
        "threads_negative",
        "seed_huge",
        "prior_inverted",
        "fov_tiny",
        "scheduler_not_an_address",
        "threshold_above_one",
        "threshold_nan",
        "one_system_bank",
        "bank_unknown_simulator_key",
        "evaluate_npe_without_sbi",
    ],
)
def test_refused_with_one_line_and_no_partial_output(name, results):
    case, done, before = results[name]
    errors = _error_lines(done.stderr)
    assert done.returncode == case.code, f"exit {done.returncode}\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert len(errors) == 1, f"expected one error line, got {len(errors)}:\n" + "\n".join(errors)
    assert re.search(case.message, errors[0]), errors[0]
    assert errors[0].startswith(f"protolib {case.argv[0]}: error: ")
    for path in case.absent:
        assert not path.exists(), f"{path} was left behind"
    for path, content in before.items():
        assert path.read_bytes() == content, f"{path} was changed"
    strays = [p for p in (Path(case.argv[-1]).parent if case.argv else Path(".")).glob(".*.tmp")]
    assert not strays, f"temporary files left: {strays}"


def test_an_output_that_is_not_a_regular_file_is_left_as_it_was(results, base):
    for name in (
        "observe_out_is_a_fifo",
        "match_out_is_a_fifo",
        "match_product_is_a_fifo",
        "simulate_out_is_a_device",
        "simulate_out_links_to_a_device",
    ):
        assert results[name][1].returncode == 2
    assert stat.S_ISFIFO((base / "inputs" / "pipe").stat().st_mode)
    assert stat.S_ISFIFO((base / "inputs" / "piped_products" / "matches.csv").stat().st_mode)
    assert sorted(p.name for p in (base / "inputs" / "piped_products").iterdir()) == [".protolib.lock", "matches.csv"]
    assert (base / "inputs" / "null_link").is_symlink() and stat.S_ISCHR(os.stat(os.devnull).st_mode)


def test_a_command_never_deletes_another_commands_products(base, tmp_path):
    shared = tmp_path / "shared"
    assert _run(_match_argv(base, shared)).returncode == 0
    products = lambda: {p.name: p.read_bytes() for p in shared.iterdir() if p.is_file()}  # noqa: E731
    before = products()
    assert {"matches.csv", "summary.csv", "report.json"} <= set(before)
    evaluate = _run(
        [
            "evaluate",
            "--config",
            "tiny",
            "--model",
            str(base / "run" / "siamese.pt"),
            "--bank",
            str(base / "bank.h5"),
            "--out",
            str(shared),
        ]
    )
    assert evaluate.returncode == 2 and "Traceback" not in evaluate.stderr, evaluate.stderr[-2000:]
    assert _error_lines(evaluate.stderr) == [
        f"protolib evaluate: error: {shared} holds the products of `protolib match` (corner.png, "
        "gallery.png, matches.csv, observing_draws.csv, ...); give `protolib evaluate` a folder of its own "
        "(--out), or remove those products first."
    ]
    assert products() == before and not any(shared.glob(".staging-*"))
    again = _run(_match_argv(base, shared))  # the same command still replaces its own products
    assert again.returncode == 0 and set(products()) == set(before)


def test_a_crafted_checkpoint_never_runs_its_code(results, base):
    case, done, _ = results["model_pickle_payload"]
    assert done.returncode == 2 and not (base / "payload_ran").exists()
    assert "could run code" in done.stderr


def test_an_infinite_pixel_is_blanked_with_a_warning_and_never_chosen_as_centre(results, base):
    case, done, _ = results["observe_infinite_pixel_is_blanked"]
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r"inf\.fits: 1 infinite pixel\(s\) .*blanked", done.stderr)
    prepared = fits.getheader(base / "outputs" / "inf_prepared.fits")
    good = fits.getheader(base / "obs.fits")
    assert (
        abs(prepared["CRVAL1"] - good["CRVAL1"]) * 3600 < 0.2 and abs(prepared["CRVAL2"] - good["CRVAL2"]) * 3600 < 0.2
    )


def test_a_zero_blanked_border_is_not_taken_for_noise(results, base):
    case, done, _ = results["observe_zero_blanked_border"]
    assert done.returncode == 0, done.stderr[-2000:]
    noise = fits.getheader(base / "outputs" / "border_prepared.fits")["PROTOLIB NOISE_RMS"]
    assert 3e-5 < noise < 1e-4  # about simulate-observation's 5e-5 Jy/beam, not ~1e-19 from the zeros
    assert "zero-valued blanking" in done.stdout


def test_a_hot_pixel_never_takes_the_centre_and_blanks_on_the_source_are_said(results, base):
    good = fits.getheader(base / "obs.fits")
    hot, blank = results["observe_hot_pixel"][1], results["observe_blank_peak"][1]
    assert hot.returncode == 0 and blank.returncode == 0, hot.stderr[-2000:] + blank.stderr[-2000:]
    prepared = fits.getheader(base / "outputs" / "hot_pixel_prepared.fits")
    assert (
        abs(prepared["CRVAL1"] - good["CRVAL1"]) * 3600 < 0.2 and abs(prepared["CRVAL2"] - good["CRVAL2"]) * 3600 < 0.2
    )
    assert re.search(
        r"hot_pixel\.fits: 1 single-pixel spike\(s\) brighter than the source .* \(pixel x=10, y=10\)", hot.stderr
    )
    assert "1 compact source(s)" in hot.stdout  # the hot pixel is no companion
    assert re.search(
        r"blank_peak\.fits: 9 of the \d+ pixels within a beam FWHM of the source centre are blanked", blank.stderr
    )


def test_a_prepared_file_is_matched_as_it_is(results, base):
    done = results["match_prepared_as_it_is"][1]
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    report = json.loads((base / "outputs" / "m_prep" / "report.json").read_text())
    header = fits.getheader(base / "inputs" / "prepared.fits")
    preparation = report["inputs"]["target"]["preparation"]
    # not widened again
    assert preparation["beam_arcsec_at_bank_distance"][0] == pytest.approx(header["BMAJ"] * 3600, rel=1e-6)
    assert preparation["noise_rms_jy_beam"] == pytest.approx(header["PROTOLIB NOISE_RMS"], rel=1e-6)  # nor scaled again


def test_a_galactic_map_is_read_and_its_coordinates_named_as_such(results):
    case, done, _ = results["observe_galactic_map"]
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    # the ICRS position, not l and b as RA and Dec
    assert "centred on 04h39m53.90s +26d03m09.80s" in done.stdout, done.stdout


# ---------------------------------------------------------------------------------------------
# Caches, concurrency, interruptions and reproducibility, each in real subprocesses.


def _match_argv(base: Path, out: Path, model: Path | None = None) -> list[str]:
    return [
        "match",
        "--model",
        str(model or base / "run" / "siamese.pt"),
        "--bank",
        str(base / "bank.h5"),
        "--target",
        str(base / "obs.fits"),
        "--distance",
        "140",
        "--top-k",
        "8",
        "--out",
        str(out),
    ]


@pytest.fixture(scope="module")
def private_model(base, tmp_path_factory) -> Path:
    """A copy of the model in a folder of its own, so that its embedding caches are this test's alone."""
    folder = tmp_path_factory.mktemp("model")
    shutil.copy(base / "run" / "siamese.pt", folder / "siamese.pt")
    return folder / "siamese.pt"


def _caches(model: Path) -> list[Path]:
    return sorted(model.parent.glob("siamese.embeddings-*"))


@pytest.mark.parametrize("tamper", ["shuffled_vectors", "truncated_vectors", "edited_reference"])
def test_a_tampered_embedding_cache_is_recomputed_with_a_warning(tamper, base, private_model, tmp_path):
    first = _run(_match_argv(base, tmp_path / "first", private_model))
    assert first.returncode == 0, first.stderr[-2000:]
    vectors = next(p for p in _caches(private_model) if p.suffix == ".npy")
    archive = next(p for p in _caches(private_model) if p.suffix == ".npz")
    if tamper == "shuffled_vectors":
        values = np.load(vectors)
        np.save(vectors, values[np.random.default_rng(0).permutation(len(values))])
    elif tamper == "truncated_vectors":
        vectors.write_bytes(vectors.read_bytes()[:300])
    else:
        with np.load(archive) as data:
            arrays = dict(data)
        arrays["nearest_neighbour_similarity"] = arrays["nearest_neighbour_similarity"] - 0.5
        np.savez(archive, **arrays)
    second = _run(_match_argv(base, tmp_path / "second", private_model))
    assert second.returncode == 0, second.stderr[-2000:]
    assert re.search(r"warning: The embedding cache .* (differ from what was written|could not be read)", second.stderr)
    assert (tmp_path / "first" / "matches.csv").read_bytes() == (tmp_path / "second" / "matches.csv").read_bytes()
    report = lambda name: json.loads((tmp_path / name / "report.json").read_text())["out_of_distribution"]  # noqa: E731
    assert report("first") == report("second")
    third = _run(_match_argv(base, tmp_path / "third", private_model))
    assert "embedding cache" not in third.stderr  # the rebuilt cache is trusted again


def test_the_same_match_twice_gives_byte_identical_matches(base, tmp_path):
    runs = [_run(_match_argv(base, tmp_path / name)) for name in ("a", "b")]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr[-2000:]
    for product in ("matches.csv", "summary.csv"):
        assert (tmp_path / "a" / product).read_bytes() == (tmp_path / "b" / product).read_bytes()


def test_two_matches_at_once_never_mix_their_outputs_or_corrupt_the_cache(base, tmp_path):
    model = tmp_path / "model" / "siamese.pt"
    model.parent.mkdir()
    shutil.copy(base / "run" / "siamese.pt", model)
    shared, alone = tmp_path / "shared", tmp_path / "alone"
    other = [
        "match",
        "--model",
        str(model),
        "--bank",
        str(base / "bank.h5"),
        "--target-system",
        "2",
        "--out",
        str(shared),
    ]
    with ThreadPoolExecutor(max_workers=3) as pool:
        runs = [
            pool.submit(_run_in_a_new_python, _match_argv(base, shared, model)),
            pool.submit(_run_in_a_new_python, other),
            pool.submit(_run_in_a_new_python, _match_argv(base, alone, model)),
        ]
        first, second, third = (r.result() for r in runs)
    assert third.returncode == 0, third.stderr[-2000:]
    codes = sorted([first.returncode, second.returncode])
    assert codes in ([0, 0], [0, 2]), first.stderr[-1500:] + second.stderr[-1500:]
    if codes == [0, 2]:
        refused = first if first.returncode == 2 else second
        assert "another protolib run" in refused.stderr and "is writing to this folder" in refused.stderr
    report = json.loads((shared / "report.json").read_text())
    matches = (shared / "matches.csv").read_text()
    target = report["inputs"]["target"]
    assert len(matches.splitlines()) == report["n_matches"] + 1
    alone_report = json.loads((alone / "report.json").read_text())
    if "file" in target:  # the observation's run published last: its matches are those of the run alone
        assert (
            matches == (alone / "matches.csv").read_text()
            and report["best_similarity"] == alone_report["best_similarity"]
        )
        assert report["settings"]["top_k"] == 8
    else:
        assert target["system"] == 2 and report["settings"]["top_k"] == 200 and report["n_matches"] > 8
    again = _run(_match_argv(base, tmp_path / "again", model))
    assert again.returncode == 0 and "embedding cache" not in again.stderr
    assert (tmp_path / "again" / "matches.csv").read_bytes() == (alone / "matches.csv").read_bytes()


def _start(argv: list[str]) -> subprocess.Popen:
    """``protolib ARGV`` in a subprocess that SIGINT interrupts as Ctrl-C would in a terminal. A test suite run
    from a background job hands its children SIGINT ignored (the shell's rule for background jobs), and
    the tests below send it."""
    return subprocess.Popen(
        [*PROTOLIB, *argv],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_for(predicate, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, f"the run ended before the signal: {process.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "the run never got there"
        time.sleep(0.05)


def _temporaries(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.tmp"))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_an_interrupted_simulate_keeps_the_previous_bank_and_leaves_no_temporary_file(signum, base, tmp_path):
    bank = tmp_path / "bank.h5"
    shutil.copy(base / "bank.h5", bank)
    before = bank.read_bytes()
    argv = [
        "simulate",
        "--config",
        "tiny",
        "--systems",
        "3000",
        "--projections",
        "2",
        "--workers",
        "1",
        "--out",
        str(bank),
    ]
    process = _start(argv)
    _wait_for(lambda: _temporaries(tmp_path), process)
    time.sleep(0.5)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -signal.SIGKILL}[signum], (
        stderr[-2000:]
    )
    assert bank.read_bytes() == before
    if signum != signal.SIGKILL:
        assert "Traceback" not in stderr and "the previous outputs are as they were" in stderr
        assert not _temporaries(tmp_path)
    else:  # nothing runs on SIGKILL: the next write of the same file removes what it left
        assert _temporaries(tmp_path)
        rerun = _run(["simulate", "--config", "tiny", "--systems", "2", "--projections", "2", "--out", str(bank)])
        assert rerun.returncode == 0 and not _temporaries(tmp_path)


SWALLOWING_LOOP = """
import signal, sys, time, weakref
import protolib.cli as cli
cli.REPEAT_SIGTERM_S = 0.3
class Thing:
    pass
def callback(reference):
    end = time.perf_counter() + 0.05
    while time.perf_counter() < end:  # Python code in a weak-reference callback: an exception raised here is dropped
        pass
signal.signal(signal.SIGTERM, cli._on_sigterm)
print("ready", flush=True)
keep = []
try:
    while True:
        thing = Thing()
        keep.append(weakref.ref(thing, callback))
        del thing
        keep.clear()
        end = time.perf_counter() + 0.01
        while time.perf_counter() < end:
            pass
except KeyboardInterrupt:
    cli._TERMINATION["caught"] = True
    sys.exit(143)
"""  # without the repeated signal, 4 runs in 8 went on after SIGTERM


def test_a_sigterm_that_lands_in_a_finaliser_is_not_lost():
    """A run told to stop while Python runs a finaliser (where an exception is dropped) still stops."""
    process = subprocess.Popen(
        [sys.executable, "-c", SWALLOWING_LOOP], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 143, stderr[-2000:]


def test_an_interrupted_retraining_keeps_the_previous_model_and_can_be_resumed(base, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(base / "run", run, ignore=shutil.ignore_patterns("siamese.embeddings-*"))
    model, metrics = run / "siamese.pt", run / "metrics.json"
    before = {model: model.read_bytes(), metrics: metrics.read_bytes()}
    argv = [
        "train-siamese",
        "--config",
        "tiny",
        "--bank",
        str(base / "bank.h5"),
        "--autoencoder",
        str(run / "autoencoder.pt"),
        "--out",
        str(run),
        "--epochs",
        "40",
        "--patience",
        "40",
        "--quiet",
    ]
    process = _start(argv)
    partial = run / "siamese.partial.pt"
    _wait_for(partial.exists, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in stderr, stderr[-2000:]
    assert all(path.read_bytes() == content for path, content in before.items())  # the finished model and its metrics
    match = _run(
        [
            "match",
            "--model",
            str(model),
            "--bank",
            str(base / "bank.h5"),
            "--target-system",
            "1",
            "--out",
            str(tmp_path / "m"),
        ]
    )
    assert match.returncode == 0
    from protolib.training import load_checkpoint

    done_before = len(load_checkpoint(partial)["history"])  # epochs finished before the signal landed
    resumed = _run([*argv[:-5], "--epochs", str(done_before + 2), "--resume", "--quiet"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not partial.exists() and model.read_bytes() != before[model]
    history = json.loads((run / "siamese_history.json").read_text())["history"]
    assert [record["epoch"] for record in history] == list(range(1, done_before + 3))  # continued, not restarted
    assert json.loads(metrics.read_text())["best_epoch"] == torch_load_best_epoch(model)


def torch_load_best_epoch(path: Path) -> int:
    from protolib.training import load_checkpoint

    return load_checkpoint(path)["best_epoch"]


def test_an_interrupted_match_keeps_the_previous_products(base, tmp_path):
    out = tmp_path / "m"
    assert _run(_match_argv(base, out)).returncode == 0
    before = {p: p.read_bytes() for p in out.iterdir() if p.is_file() and not p.name.startswith(".")}
    model = tmp_path / "fresh" / "siamese.pt"  # no cache: the run embeds the bank, time enough for the signal
    model.parent.mkdir()
    shutil.copy(base / "run" / "siamese.pt", model)
    argv = ["match", "--model", str(model), "--bank", str(base / "bank.h5"), "--target-system", "5", "--out", str(out)]
    process = _start(argv)
    _wait_for(lambda: any(out.glob(".staging-*")), process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode in (143, 0), stderr[-2000:]
    if process.returncode == 143:  # (0: it had already finished)
        assert {p: p.read_bytes() for p in out.iterdir() if p.is_file() and not p.name.startswith(".")} == before
        assert not any(out.glob(".staging-*"))


def test_a_folder_another_run_is_writing_to_is_refused_at_once(base, tmp_path):
    import fcntl

    out = tmp_path / "busy"
    out.mkdir()
    with open(out / ".protolib.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write("pid 12345 on a-node\n")
        lock.flush()
        done = _run(_match_argv(base, out))
    assert done.returncode == 2
    assert _error_lines(done.stderr) == [
        f"protolib match: error: {out}: another protolib run (pid 12345 on a-node) is writing to "
        "this folder; wait for it to finish, or choose another --out."
    ]
    assert sorted(p.name for p in out.iterdir()) == [".protolib.lock"]


def test_products_get_the_usual_permissions_not_mkstemps(base, tmp_path):
    out = tmp_path / "m"
    assert _run(_match_argv(base, out)).returncode == 0
    umask = os.umask(0o022)
    os.umask(umask)
    for product in ("matches.csv", "report.json", "corner.png"):
        assert (out / product).stat().st_mode & 0o777 == 0o666 & ~umask


def test_an_interrupt_while_starting_is_one_line(base, tmp_path):
    argv = ["simulate", "--config", "tiny", "--systems", "2", "--out", str(tmp_path / "b.h5")]
    process = _start(argv)
    time.sleep(0.6)  # while torch is being imported
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    if process.returncode == 0:
        pytest.skip("the run finished before the signal")  # (a very fast machine)
    # 130, or killed by SIGINT (-2): when the signal lands inside torch's import, CPython marks the
    # KeyboardInterrupt as unhandled and re-raises SIGINT at exit, whatever main() returned.
    assert process.returncode in (130, -signal.SIGINT) and "Traceback" not in stderr, stderr[-2000:]
    assert len(_error_lines(stderr)) == 1 and not (tmp_path / "b.h5").exists()


# ---------------------------------------------------------------------------------------------
# Issue 31, items 6, 11, 14 and 15: runs that race, model and bank of different setups, runs too large, signals.


def _held_lock(path: Path):
    """An exclusive lock on ``path`` held by this process, as a running protolib command holds it."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = open(path, "a+")
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    lock.write("pid 4242 on a-node\n")
    lock.flush()
    return lock


def _runs_cases(b: Path) -> dict[str, Case]:
    bank, model, out = b / "bank.h5", b / "run" / "siamese.pt", b / "outputs_runs"
    other = {
        "pixel_scale": (["--fov", "4000"], r"pixel scale 31\.25 au/px against 125 au/px"),
        "band": (["--set", "simulator.frequency_ghz=100"], r"frequency 230 GHz against 100 GHz"),
        "beam": (["--set", "instrument.beam_major_arcsec=1.0"], r"beam major axis 0\.25 arcsec against 1 arcsec"),
        "distance": (["--set", "instrument.distance_pc=400"], r"distance 140 pc against 400 pc"),
    }
    cases = {}
    for name, (settings, message) in other.items():
        path = b / "inputs" / f"setup_{name}.h5"
        if not path.exists():
            assert (
                main(
                    [
                        "simulate",
                        "--config",
                        "tiny",
                        "--systems",
                        "6",
                        "--projections",
                        "2",
                        *settings,
                        "--out",
                        str(path),
                    ]
                )
                == 0
            )
        cases[f"match_model_of_another_{name}"] = Case(
            [
                "match",
                "--model",
                str(model),
                "--bank",
                str(path),
                "--target-system",
                "1",
                "--out",
                str(out / f"m_{name}"),
            ],
            message,
            [out / f"m_{name}"],
        )
    cases["evaluate_model_of_another_pixel_scale"] = Case(
        [
            "evaluate",
            "--config",
            "tiny",
            "--model",
            str(model),
            "--bank",
            str(b / "inputs" / "setup_pixel_scale.h5"),
            "--out",
            str(out / "e_scale"),
        ],
        r"another setup than bank .*pixel scale",
        [out / "e_scale"],
    )
    busy = out / "busy_run"
    cases["train_autoencoder_into_a_busy_folder"] = Case(
        ["train-autoencoder", "--config", "tiny", "--bank", str(bank), "--epochs", "1", "--quiet", "--out", str(busy)],
        r"busy_run: another protolib run \(pid 4242 on "
        r"a-node\) is writing to this folder",
        [busy / "autoencoder.pt"],
    )
    cases["train_siamese_into_a_busy_folder"] = Case(
        [
            "train-siamese",
            "--config",
            "tiny",
            "--bank",
            str(bank),
            "--autoencoder",
            str(b / "run" / "autoencoder.pt"),
            "--epochs",
            "1",
            "--quiet",
            "--out",
            str(busy),
        ],
        r"busy_run: another protolib run",
        [busy / "siamese.pt"],
    )
    cases["simulate_into_a_busy_bank"] = Case(
        ["simulate", "--config", "tiny", "--systems", "2", "--out", str(out / "busy.h5")],
        r"busy\.h5: another protolib run \(pid 4242 on a-node\) is writing to this file",
        [out / "busy.h5"],
    )
    cases["simulate_oversample_beyond_memory"] = Case(
        [
            "simulate",
            "--config",
            "tiny",
            "--systems",
            "1",
            "--set",
            "simulator.oversample=100000",
            "--out",
            str(out / "huge.h5"),
        ],
        r"Rendering 3200000 x 3200000 rays .* needs "
        r"about .* more than the .* available; lower simulator\.oversample",
        [out / "huge.h5"],
    )
    return cases


@pytest.fixture(scope="module")
def runs_results(base):
    cases = _runs_cases(base)
    out = base / "outputs_runs"
    locks = [_held_lock(out / "busy_run" / ".protolib.lock"), _held_lock(out / ".busy.h5.protolib.lock")]
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = {name: pool.submit(_run, case.argv) for name, case in cases.items()}
            done = {name: future.result() for name, future in futures.items()}
    finally:
        for lock in locks:
            lock.close()
    return {name: (cases[name], done[name], {}) for name in cases}


@pytest.mark.parametrize(
    "name",
    [
        "match_model_of_another_pixel_scale",
        "match_model_of_another_band",
        "match_model_of_another_beam",
        "match_model_of_another_distance",
        "evaluate_model_of_another_pixel_scale",
        "train_autoencoder_into_a_busy_folder",
        "train_siamese_into_a_busy_folder",
        "simulate_into_a_busy_bank",
        "simulate_oversample_beyond_memory",
    ],
)
def test_runs_refused_with_one_line_and_no_partial_output(name, runs_results):
    test_refused_with_one_line_and_no_partial_output(name, runs_results)


def test_a_bank_rewritten_while_match_reads_it_is_refused_and_nothing_is_published(base, tmp_path, monkeypatch, capsys):
    from protolib.pipelines import match as match_pipeline

    bank = tmp_path / "bank.h5"
    shutil.copy(base / "bank.h5", bank)
    original = match_pipeline._match_into

    def rewritten_meanwhile(*args, **kwargs):
        report = original(*args, **kwargs)
        replacement = tmp_path / "new.h5"
        shutil.copy(base / "bank.h5", replacement)
        os.replace(replacement, bank)  # another `simulate --out bank.h5` finished while this match ran
        return report

    monkeypatch.setattr(match_pipeline, "_match_into", rewritten_meanwhile)
    out = tmp_path / "m"
    code = main(
        [
            "match",
            "--model",
            str(base / "run" / "siamese.pt"),
            "--bank",
            str(bank),
            "--target-system",
            "1",
            "--out",
            str(out),
        ]
    )
    errors = _error_lines(capsys.readouterr().err)
    assert (
        code == 2
        and len(errors) == 1
        and "bank.h5: the bank file was replaced or rewritten while this run read it" in errors[0]
    )
    assert not out.exists()


def test_an_evaluation_too_large_for_the_memory_is_refused_before_any_work():
    from types import SimpleNamespace

    from protolib.evaluation import EvaluationSettings
    from protolib.pipelines.evaluate import evaluation_plan
    from protolib.runtime import ProtolibInputError

    bank = SimpleNamespace(n_systems=300_000, n_projections=8, image_size=64)
    split = SimpleNamespace(train=np.arange(180_000), validation=np.arange(60_000), test=np.arange(60_000))
    with pytest.raises(
        ProtolibInputError, match=r"Ranking 1440000 reference images .* needs about .* TB .*\(--projection 0\)"
    ):
        evaluation_plan(bank, split, EvaluationSettings(), 7)
    small = SimpleNamespace(train=np.arange(12), validation=np.arange(4), test=np.arange(4))
    assert "peak memory about" in evaluation_plan(
        SimpleNamespace(n_systems=20, n_projections=2, image_size=32), small, EvaluationSettings(), 7
    )


SLOW_SVD = """
import os, signal, sys, threading, time
import numpy as np
from protolib.runtime import interruptible
def stop(*_):
    raise KeyboardInterrupt
signal.signal(signal.SIGTERM, stop)
threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
started = time.monotonic()
try:
    interruptible(np.linalg.svd, np.random.default_rng(0).random((4000, 3000)), full_matrices=False, compute_uv=False)
    print("finished", time.monotonic() - started)
except KeyboardInterrupt:
    print("stopped", time.monotonic() - started)
"""


def test_a_sigterm_during_a_long_svd_acts_within_seconds():
    """Issue 31, item 15: evaluate's PCA runs numpy's SVD (25-51 s on a large bank), during which Python cannot act on
    a signal; run through runtime.interruptible, SIGTERM stops it within seconds and leaves no process behind."""
    done = subprocess.run([sys.executable, "-c", SLOW_SVD], capture_output=True, text=True, env=ENV, timeout=120)
    word, seconds = done.stdout.split()
    assert word == "stopped" and float(seconds) < 10.0, done.stdout + done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "BLAS" not in done.stderr, done.stderr[-2000:]
