"""The GPU path, checked in one short run: what `benchmarks/gpu_check.sh` runs on a CUDA machine.

Sections (each timed, each recorded as passed or failed with its error):

1. simulator throughput at 64x64 and 128x128 on the GPU (the ``gpu`` configuration's sampling);
1b. issue 29's renderer at the default configuration (64x64, drawn nuisance physics): the clean render of a large
   batch and the bank path (:func:`protolib.bank.render_systems`: one system's projections per call, + envelope
   mass, beam and noise), with the eager kernels; the compiled kernels (``simulator.compile: true``) where they
   apply, on a CPU without ``--smoke`` (on a GPU the renderer always runs its eager kernels);
1c. a three-band bank (ALMA bands 3, 6 and 7: 100, 230 and 345 GHz, beams 0.55", 0.25" and 0.2") beside the
   one-band bank of the same systems, written by :func:`protolib.bank.simulate_bank` on the device;
1d. a fitted bank: ``protolib bank-for`` on a shipped NOEMA map (``data/observations/HH211_NOEMA_1mm_PRODIGE.fits``
   at 321 pc) at its default size, the bank and both networks, each stage timed;
2. a bank of that simulator (128 px, the ``gpu`` configuration), then a few epochs of the autoencoder and
   of the Siamese network with mixed precision: images per second of the training steps;
3. embedding throughput of the trained network;
4. a search of one query against 10^6 random unit embeddings (exact, on the GPU; FAISS when installed);
5. with two GPUs or more, a short ``torchrun`` training over NCCL.

Writes a JSON of the figures and exits non-zero when any section fails. Goals on an H200: simulator
>= 10,000 images/s at 64x64, Siamese training >= 20,000 images/s; each is reported as met or missed.

    python benchmarks/gpu_check.py --out gpu_check.json
    python benchmarks/gpu_check.py --allow-cpu --smoke --out /tmp/check.json   # the script itself, on a CPU
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
import traceback
from pathlib import Path

import numpy as np
import torch

GOALS = {"simulator_64_images_per_second": 10_000.0, "siamese_training_images_per_second": 20_000.0}


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def simulator_rate(image_size: int, device: torch.device, n_images: int) -> dict:
    """Images per second of :func:`protolib.simulator.render` at ``image_size`` (best of 3, after a warm-up)."""
    from protolib.bank import draw_systems
    from protolib.config import load_config
    from protolib.simulator import NUISANCE_FIELDS, RENDER_KEYS, SimulatorConfig, render

    base = load_config("gpu").simulator.to_dict()
    config = SimulatorConfig(**{**base, "image_size": image_size})
    systems = draw_systems(n_images, 1, seed=1)
    params = {k: torch.as_tensor(systems[k], device=device) for k in (*RENDER_KEYS, *NUISANCE_FIELDS)}
    inclination = torch.as_tensor(systems["inclination"][:, 0], device=device)
    position_angle = torch.as_tensor(systems["position_angle"][:, 0], device=device)
    best = float("inf")
    with torch.no_grad():
        render({k: v[:8] for k, v in params.items()}, inclination[:8], position_angle[:8], config, 140.0)
        for _ in range(3):
            _synchronise(device)
            start = time.perf_counter()
            render(params, inclination, position_angle, config, 140.0)
            _synchronise(device)
            best = min(best, time.perf_counter() - start)
    return {
        "image_size": image_size,
        "images": n_images,
        "seconds": best,
        "images_per_second": n_images / best,
        "samples": {"envelope": config.envelope_samples, "disk": config.disk_samples, "oversample": config.oversample},
    }


def renderer_rates(device: torch.device, smoke: bool) -> dict:
    """Issue 29's renderer at the default configuration (64x64, drawn nuisance physics): images per second of the
    clean render of one large batch and of the bank path (one system's projections per call), eager kernels; the
    compiled kernels on a CPU only (on a GPU the renderer runs its eager kernels whatever ``simulator.compile``)."""
    from dataclasses import replace

    from protolib.bank import draw_systems
    from protolib.config import load_config

    config = load_config("default")
    n_batch, n_systems = (16, 2) if smoke else (8192, 256)
    systems = draw_systems(max(n_batch, n_systems * 8), 8, 1, config.prior, config.simulator)
    eager = replace(config.simulator, compile="false")
    result = {"eager": _render_and_bank_path(systems, eager, config.instrument, device, n_batch, n_systems)}
    if device.type != "cpu":
        result["compiled"] = {"skipped": "on a GPU the renderer runs its eager kernels (simulator.compile: CPUs only)"}
    elif smoke:
        result["compiled"] = {"skipped": "--smoke: compiling the kernels takes a minute from a cold cache"}
    else:
        compiled = replace(config.simulator, compile="true")
        result["compiled"] = _render_and_bank_path(systems, compiled, config.instrument, device, n_batch, n_systems)
    return result


def _render_and_bank_path(systems: dict, simulator, instrument, device: torch.device, n_batch: int, n_systems: int):
    """Images per second of :func:`~protolib.simulator.render` on ``n_batch`` images in one call and of
    :func:`~protolib.bank.render_systems` on ``n_systems`` systems (all their projections), after a warm-up each."""
    from protolib.bank import render_systems
    from protolib.simulator import NUISANCE_FIELDS, RENDER_KEYS, render

    params = {k: torch.as_tensor(systems[k][:n_batch], device=device) for k in (*RENDER_KEYS, *NUISANCE_FIELDS)}
    inclination = torch.as_tensor(systems["inclination"][:n_batch, 0], device=device)
    position_angle = torch.as_tensor(systems["position_angle"][:n_batch, 0], device=device)
    with torch.no_grad():
        render({k: v[:8] for k, v in params.items()}, inclination[:8], position_angle[:8], simulator, 140.0)
        _synchronise(device)
        start = time.perf_counter()
        render(params, inclination, position_angle, simulator, 140.0)
        _synchronise(device)
        render_seconds = time.perf_counter() - start
    render_systems(systems, np.arange(1), simulator, instrument, 0, device)
    _synchronise(device)
    start = time.perf_counter()
    render_systems(systems, np.arange(n_systems), simulator, instrument, 0, device)
    _synchronise(device)
    bank_seconds = time.perf_counter() - start
    return {
        "render": {"images": n_batch, "seconds": render_seconds, "images_per_second": n_batch / render_seconds},
        "bank_path": {
            "images": n_systems * 8,
            "seconds": bank_seconds,
            "images_per_second": n_systems * 8 / bank_seconds,
        },
    }


THREE_BANDS_GHZ = [100.0, 230.0, 345.0]
"""ALMA bands 3, 6 and 7, as benchmarks/band_render.py renders them."""
THREE_BAND_BEAMS = [
    {"beam_major_arcsec": 0.55, "beam_minor_arcsec": 0.55},
    {},
    {"beam_major_arcsec": 0.2, "beam_minor_arcsec": 0.2},
]


def three_band_bank(work: Path, device: torch.device, smoke: bool) -> dict:
    """A bank in ALMA bands 3, 6 and 7 at once beside the one-band (230 GHz) bank of the same systems, both written by
    :func:`~protolib.bank.simulate_bank` on the device (the default configuration, 64x64): images per second (an image:
    one view in all its bands) and the cost of the three bands against one."""
    from dataclasses import replace

    from protolib.bank import simulate_bank
    from protolib.config import load_config
    from protolib.instrument import Instrument

    config = load_config("default")
    n_systems = 4 if smoke else 512
    three = replace(config.simulator, frequencies_ghz=list(THREE_BANDS_GHZ))
    instrument = Instrument(**{**config.instrument.to_dict(), "bands": THREE_BAND_BEAMS})
    result = {"systems": n_systems, "projections": 8, "bands_ghz": THREE_BANDS_GHZ}
    for name, simulator, seen in (
        ("one_band", config.simulator, config.instrument),
        ("three_bands", three, instrument),
    ):
        start = time.perf_counter()
        simulate_bank(
            work / f"{name}.h5",
            n_systems,
            8,
            seed=0,
            config=simulator,
            instrument=seen,
            device=device,
            progress=False,
            threads=None,
        )
        seconds = time.perf_counter() - start
        result[name] = {"seconds": seconds, "images_per_second": n_systems * 8 / seconds}
    result["three_bands_cost_against_one"] = result["three_bands"]["seconds"] / result["one_band"]["seconds"]
    return result


FITTED_MAP = ("data/observations/HH211_NOEMA_1mm_PRODIGE.fits", 321.0)
"""The shipped map a fitted bank is built for, and its distance [pc] (benchmarks/README.md, "A fitted bank")."""


def fitted_bank(work: Path, smoke: bool) -> dict:
    """``protolib bank-for`` on a shipped NOEMA map at its default size (the bank and both networks, on the default
    device), each stage timed from its file's completion; ``--smoke``: 16 systems and one epoch per network."""
    from protolib.config import load_config
    from protolib.pipelines.bank_for import bank_for

    repository = Path(__file__).resolve().parent.parent
    overrides = (
        {"bank": {"n_systems": 16}, "autoencoder": {"training": {"epochs": 1}}, "siamese": {"training": {"epochs": 1}}}
        if smoke
        else {}
    )
    plan = []
    start = time.time()
    report = bank_for(
        [repository / FITTED_MAP[0]],
        FITTED_MAP[1],
        work / "fitted",
        load_config("default"),
        overrides,
        progress=False,
        announce=plan.append,
    )
    finished = [start] + [path.stat().st_mtime for path in (report.bank, report.autoencoder, report.siamese)]
    stages = dict(zip(("bank", "autoencoder", "siamese"), np.diff(finished).tolist()))
    return {
        "map": FITTED_MAP[0],
        "distance_pc": FITTED_MAP[1],
        "plan": "\n".join(plan),
        "seconds": report.seconds,
        "stage_seconds": stages,
        "goal_seconds": 180.0,
    }


def training_rates(work: Path, device: torch.device, smoke: bool) -> dict:
    """A bank of the ``gpu`` configuration's simulator, then the autoencoder and the Siamese network with mixed
    precision."""
    from protolib.autoencoder import load_autoencoder, train_autoencoder
    from protolib.bank import Bank, simulate_bank
    from protolib.config import load_config
    from protolib.pipelines.train import autoencoder_settings, run_split, siamese_settings
    from protolib.siamese import load_siamese, train_siamese

    config = load_config("tiny" if smoke else "gpu")
    n_systems, epochs = (24, 2) if smoke else (2048, 3)
    bank_path = work / "bank.h5"
    start = time.perf_counter()
    simulate_bank(
        bank_path,
        n_systems,
        config.bank.n_projections,
        seed=0,
        config=config.simulator,
        instrument=config.instrument,
        device=device,
        progress=False,
        threads=None,
    )
    bank_seconds = time.perf_counter() - start
    changes = {"epochs": epochs, "patience": epochs + 1, "mixed_precision": True}
    result = {
        "bank": {
            "systems": n_systems,
            "projections": config.bank.n_projections,
            "image_size": config.simulator.image_size,
            "seconds": bank_seconds,
            "images_per_second": n_systems * config.bank.n_projections / bank_seconds,
        }
    }
    with Bank(bank_path) as bank:
        split = run_split(config, bank)
        ae = train_autoencoder(
            bank,
            work / "autoencoder.pt",
            split=split,
            progress=False,
            device=device,
            **autoencoder_settings(config, {"training": changes}),
        )
        result["autoencoder"] = _throughput(load_autoencoder(ae, "cpu").history)
        si = train_siamese(
            bank,
            ae,
            work / "siamese.pt",
            split=split,
            progress=False,
            device=device,
            **siamese_settings(config, {"training": changes}),
        )
        model = load_siamese(si, device)
        result["siamese"] = _throughput(model.checkpoint["history"])
        images = bank.load_images(np.arange(min(bank.n_systems, 512))).reshape(-1, bank.image_size, bank.image_size)
    model.embed_images(images[:64], batch_size=256)
    _synchronise(device)
    start = time.perf_counter()
    model.embed_images(images, batch_size=1024)
    _synchronise(device)
    result["embedding"] = {"images": len(images), "images_per_second": len(images) / (time.perf_counter() - start)}
    return result


def _throughput(history: list[dict]) -> dict:
    epochs = history[1:] if len(history) > 1 else history  # the first epoch is warm-up (compilation, caches)
    seconds = sum(h["train_seconds"] for h in epochs)
    images = sum(h["images"] for h in epochs)
    return {
        "epochs_counted": len(epochs),
        "images": images,
        "train_seconds": seconds,
        "images_per_second": images / seconds,
        "waiting_for_data": sum(h["data_seconds"] for h in epochs) / seconds,
    }


def search_million(device: torch.device, n_bank: int) -> dict:
    """One query against ``n_bank`` random unit vectors of 64 dimensions: exact search on the device (and FAISS when
    installed)."""
    from protolib.matching import EmbeddingIndex

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n_bank, 64), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    system, projection = np.arange(n_bank) // 8, np.arange(n_bank) % 8
    result = {"bank_vectors": n_bank}
    for backend in ("exact", "faiss"):
        try:
            index = EmbeddingIndex(vectors, system, projection, backend=backend, device=device)
        except Exception as error:  # noqa: BLE001 - FAISS may be missing; recorded, not fatal
            result[backend] = {"skipped": str(error)[:200]}
            continue
        index.search(vectors[:1], top_k=200)
        times = []
        for query in vectors[1:6]:
            _synchronise(device)
            start = time.perf_counter()
            index.search(query[None], top_k=200)
            _synchronise(device)
            times.append(time.perf_counter() - start)
        result[backend] = {"median_seconds": float(np.median(times))}
    return result


def nccl_run(work: Path) -> dict:
    """A one-epoch Siamese training under torchrun on two GPUs (NCCL); skipped with fewer GPUs."""
    if torch.cuda.device_count() < 2:
        return {"skipped": f"{torch.cuda.device_count()} GPU(s): NCCL needs two"}
    argv = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "protolib",
        "train-siamese",
        "--config",
        "tiny",
        "--bank",
        str(work / "bank.h5"),
        "--autoencoder",
        str(work / "autoencoder.pt"),
        "--out",
        str(work / "ddp"),
        "--epochs",
        "1",
        "--quiet",
    ]
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"torchrun exited {done.returncode}: {done.stderr[-1500:]}")
    return {"seconds": time.perf_counter() - start, "gpus": 2}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    parser.add_argument("--allow-cpu", action="store_true", help="run without CUDA (to check the script itself)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: seconds, not minutes")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.allow_cpu:
        print(
            "gpu_check: no CUDA device; this check is for a GPU machine (--allow-cpu runs it anyway)", file=sys.stderr
        )
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    report = {
        "machine": platform.node(),
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "gpus": torch.cuda.device_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "sections": {},
    }
    n_sim, n_search = (16, 20_000) if args.smoke else (8192, 1_000_000)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        sections = {
            "simulator_64": lambda: simulator_rate(64, device, n_sim),
            "simulator_128": lambda: simulator_rate(128, device, n_sim // 4),
            "renderer": lambda: renderer_rates(device, args.smoke),
            "three_band_bank": lambda: three_band_bank(work, device, args.smoke),
            "fitted_bank": lambda: fitted_bank(work, args.smoke),
            "training": lambda: training_rates(work, device, args.smoke),
            "search_1e6": lambda: search_million(device, n_search),
            "nccl": lambda: nccl_run(work),
        }
        for name, run in sections.items():
            start = time.perf_counter()
            try:
                report["sections"][name] = {"passed": True, **run()}
            except Exception as error:  # noqa: BLE001 - every failure is recorded, and fails the check
                report["sections"][name] = {
                    "passed": False,
                    "error": f"{type(error).__name__}: {error}",
                    "traceback": traceback.format_exc()[-3000:],
                }
            report["sections"][name]["wall_seconds"] = time.perf_counter() - start
            print(
                f"{name}: {'ok' if report['sections'][name]['passed'] else 'FAILED'} "
                f"({report['sections'][name]['wall_seconds']:.1f} s)",
                flush=True,
            )
    sim = report["sections"]["simulator_64"].get("images_per_second")
    train = (report["sections"]["training"].get("siamese") or {}).get("images_per_second")
    report["goals"] = {
        name: {"goal": goal, "measured": value, "met": value is not None and value >= goal}
        for (name, goal), value in zip(GOALS.items(), (sim, train))
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps({"goals": report["goals"]}, indent=1))
    failed = [name for name, section in report["sections"].items() if not section["passed"]]
    if failed:
        print(f"gpu_check: FAILED sections: {', '.join(failed)} (details in {args.out})", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
