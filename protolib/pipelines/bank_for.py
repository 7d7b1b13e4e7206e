"""``protolib bank-for``: a bank and its networks made for a map's field, resolution and band.

:func:`bank_for` derives the setup from the map(s) (:func:`~protolib.observation.setup.map_setup`),
writes ``OUT/config.yaml`` (the base configuration with the setup's ``simulator:`` and
``instrument:`` keys, then the user's ``--set`` on top: readable, editable, and rerun as it is), and
builds ``OUT/bank.h5``, ``OUT/autoencoder.pt`` and ``OUT/siamese.pt`` through the same calls the
book uses (:func:`~protolib.pipelines.simulate.ensure_bank`,
:func:`~protolib.pipelines.train.ensure_autoencoder`, :func:`~protolib.pipelines.train.ensure_siamese`),
so a rerun, or a second map of the same setup, reuses what is there.

Maps of one source at several frequencies (one map per band) make one bank in those bands, each band
observed with its map's beam and noise (:func:`~protolib.observation.setup.band_setup`); its autoencoder
is trained on its reference band (the one nearest 230 GHz), and so is its Siamese network unless the
configuration asks for a band-dropout network (``--set siamese.model.bands=all``), which is trained on
every band and embeds the maps jointly in ``protolib match``.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import yaml

from ..config import RunConfig, apply_overrides, config_from_data
from ..observation.setup import MapSetup, fitted_setup, map_setup
from ..runtime import ProtolibInputError, atomic_path, available_cores, run_lock, shown_path, write_json
from .simulate import ensure_bank, local_workers, simulate_plan
from .train import ensure_autoencoder, ensure_siamese

__all__ = ["bank_for", "BankForReport", "fitted_data", "estimate_seconds", "SETUP_FILE", "TRAINING_IMAGES_PER_SECOND"]

SETUP_FILE = "setup.json"
TRAINING_IMAGES_PER_SECOND = {"autoencoder": 1000.0, "siamese": 3700.0}
"""Training rates at 64x64 on 2 CPU cores (benchmarks/README.md, "Training throughput"), for the estimate."""


@dataclass
class BankForReport:
    """What :func:`bank_for` made or reused, and where."""

    folder: Path
    setup: MapSetup
    config_path: Path
    bank: Path
    autoencoder: Path
    siamese: Path
    reused: dict[str, bool] = field(default_factory=dict)  # artifact -> it was there and current
    seconds: float = 0.0


def bank_for(
    maps: list[str | Path],
    distance_pc: float | list[float],
    out: str | Path,
    base: RunConfig,
    overrides: dict | None = None,
    *,
    frequency_ghz: float | None = None,
    progress: bool = True,
    announce=print,
) -> BankForReport:
    """Build (or reuse) the bank and networks that fit ``maps`` (one setup) in the folder ``out``.

    Arguments:
        maps: FITS maps of one band (a survey's): the bank takes their sharpest beam, lowest noise and
            smallest field (:func:`~protolib.observation.setup.common_setup`), so that it serves each; or maps
            of one source in several bands, one per band: the bank is rendered in those bands, each at its
            map's beam and noise (:func:`~protolib.observation.setup.band_setup`).
        distance_pc: distance to the sources [pc], one for all or one per map (the bank is at their median).
        out: the folder for ``config.yaml``, ``setup.json``, ``bank.h5``, ``autoencoder.pt`` and ``siamese.pt``.
        base: the configuration the fitted one starts from (sizes, prior, networks).
        overrides: the user's settings, applied last (e.g. ``{"bank": {"n_systems": 1000}}``).
        frequency_ghz: the observing frequency, when the files do not give it (then every map is taken to be in it).
        announce: where the plan and its time estimate are said, before any work.

    Raises:
        ProtolibInputError: a map that cannot be used, maps in several bands that are not of one source or
            give two maps for one band, or an ``out`` folder holding a bank that cannot serve these maps
            (nothing is written then).
    """
    started = time.perf_counter()
    distances = list(distance_pc) if isinstance(distance_pc, (list, tuple)) else [distance_pc] * len(maps)
    if len(distances) != len(maps):
        raise ProtolibInputError(
            f"{len(maps)} maps but {len(distances)} distances: give one --distance for all, or one per map."
        )
    setup = fitted_setup([map_setup(path, d, frequency_ghz=frequency_ghz) for path, d in zip(maps, distances)])
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ProtolibInputError(
            f"--out {out} is a file; bank-for writes a folder (config.yaml, bank.h5, autoencoder.pt, siamese.pt)."
        )
    created = not out.exists()
    try:
        with run_lock(out, folder=True):  # a second bank-for into the same folder is refused, not raced
            return _build(out, setup, base, overrides, progress, announce, started)
    except BaseException:
        if created and out.is_dir() and {p.name for p in out.iterdir()} <= {".protolib.lock"}:
            shutil.rmtree(out, ignore_errors=True)  # a refused first run leaves no folder behind
        raise


def _build(
    out: Path, setup: MapSetup, base: RunConfig, overrides, progress: bool, announce, started: float
) -> BankForReport:
    """The body of :func:`bank_for`, under its folder's lock: the configuration, then the bank and the networks."""
    setup = _setup_in_folder(out, setup)
    data = fitted_data(base, setup, overrides)
    config = config_from_data(data, out / "config.yaml")
    config.artifacts = out
    paths = {"bank": config.bank_path, "autoencoder": out / "autoencoder.pt", "siamese": out / "siamese.pt"}
    before = {name: _modified(path) for name, path in paths.items()}
    announce(_plan(config, setup, before))
    _write_config(out, data, setup)
    whole = ensure_bank(config, progress=progress)
    bank = whole.band(setup.frequency_ghz) if setup.bands else whole  # the autoencoder reads the reference band
    try:
        autoencoder = ensure_autoencoder(config, bank, progress=progress)
        # a band-dropout network (siamese.model.bands: all) reads every band; a one-band network the reference band
        siamese = ensure_siamese(config, whole if _all_bands(config, setup) else bank, autoencoder, progress=progress)
    finally:
        bank.close()
        whole.close()
    reused = {name: before[name] is not None and before[name] == _modified(path) for name, path in paths.items()}
    return BankForReport(
        out, setup, out / "config.yaml", paths["bank"], autoencoder, siamese, reused, time.perf_counter() - started
    )


def _all_bands(config: RunConfig, setup: MapSetup) -> bool:
    """Whether the Siamese network embeds every band of a bank of several (``siamese.model.bands: all``)."""
    return bool(setup.bands) and config.siamese.model.all_bands


def _modified(path: Path) -> int | None:
    return path.stat().st_mtime_ns if path.exists() else None


def _setup_in_folder(out: Path, setup: MapSetup) -> MapSetup:
    """The setup to build in ``out``: the one already there when the maps fit it (so that its bank is reused)."""
    recorded = out / SETUP_FILE
    if not recorded.exists():
        if (out / "bank.h5").exists() or (out / "siamese.pt").exists():
            raise ProtolibInputError(
                f"{out} holds a bank or networks that bank-for did not make (no {SETUP_FILE}); give another --out."
            )
        return setup
    try:
        existing = MapSetup.from_dict(json.loads(recorded.read_text()))
    except (ValueError, TypeError, KeyError) as error:
        raise ProtolibInputError(
            f"{recorded} cannot be read ({error}); remove the folder or give another --out."
        ) from None
    shortfalls = existing.shortfalls(setup)
    if shortfalls:
        raise ProtolibInputError(
            f"{out} holds a bank made for {', '.join(Path(m).name for m in existing.maps[:2])} that cannot serve "
            f"{Path(setup.maps[0]).name}: {'; '.join(shortfalls)}. Give another --out for this map."
        )
    return replace(existing, maps=list(dict.fromkeys([*existing.maps, *setup.maps])))


def fitted_data(base: RunConfig, setup: MapSetup, overrides: dict | None = None) -> dict:
    """The fitted configuration as plain data: ``base``'s file, ``setup``'s simulator and instrument keys, then
    ``overrides``."""
    data = (yaml.safe_load(base.path.read_text()) if base.path is not None else None) or {}
    data = apply_overrides(apply_overrides(data, setup.overrides()), overrides or {})
    return {**data, "name": "bank-for"}


def _write_config(out: Path, data: dict, setup: MapSetup) -> None:
    """``OUT/config.yaml`` (the configuration as YAML, headed by how it was made) and ``OUT/setup.json``."""
    header = (
        f"# Made by protolib bank-for for {', '.join(Path(m).name for m in setup.maps)}:\n# {setup.describe()}.\n"
        "# The bank, autoencoder.pt and siamese.pt beside it were made from it; edit it and pass it to bank-for as "
        "--config\n"
        "# to build another.\n"
    )
    text = header + yaml.safe_dump(data, sort_keys=False)
    path = out / "config.yaml"
    if not path.exists() or path.read_text() != text:
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    write_json(setup.to_dict(), out / SETUP_FILE)


def estimate_seconds(config: RunConfig) -> dict[str, float]:
    """Rough seconds for the bank (one system rendered here, times the systems over the worker processes) and
    for each training (training images x epochs at :data:`TRAINING_IMAGES_PER_SECOND`, scaled by the pixels
    and the cores)."""
    from ..bank import draw_systems, render_systems

    systems = draw_systems(1, config.bank.n_projections, config.bank.seed, config.prior, config.simulator)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.process_time()
    try:
        render_systems(systems, np.arange(1), config.simulator, config.instrument, config.bank.seed, "cpu")
    finally:
        torch.set_num_threads(threads)
    n_images = config.bank.n_systems * config.bank.n_projections
    seconds = {"bank": (time.process_time() - start) * config.bank.n_systems / local_workers(None, 1, n_images)}
    scale = (config.simulator.image_size / 64) ** 2 * 2 / max(1, min(4, available_cores()))
    for stage in ("autoencoder", "siamese"):
        epochs = getattr(config, stage).training.epochs
        seconds[stage] = n_images * config.split.fractions[0] * epochs * scale / TRAINING_IMAGES_PER_SECOND[stage]
    return seconds


def _plan(config: RunConfig, setup: MapSetup, before: dict) -> str:
    """What bank-for will build, about how long it will take and how much memory it will need at its peak
    (refused in one line when more than the machine has available, see
    :func:`~protolib.pipelines.simulate.simulate_plan`)."""
    n = config.bank.n_systems * config.bank.n_projections
    memory = simulate_plan(config, local_workers(None, 1, n), "bank-for") if before["bank"] is None else ""
    seconds = estimate_seconds(config)
    there = [name for name in seconds if before[name] is not None]
    return (
        f"A bank for {len(setup.maps)} map(s): {setup.describe()}.\n"
        + (f"{memory}\n" if memory else "")
        + f"{config.bank.n_systems} systems x {config.bank.n_projections} projections ({n} images) in "
        f"{shown_path(config.artifacts_dir)}: "
        f"bank ~{seconds['bank']:.0f} s, autoencoder ~{seconds['autoencoder']:.0f} s, Siamese network "
        f"~{seconds['siamese']:.0f} s, "
        f"about {sum(seconds.values()) / 60:.1f} min from scratch"
        + (f" ({', '.join(there)} already there: reused if made with these settings)." if there else ".")
    )
