"""The bank stage: a configuration's bank, simulated once; and the ``protolib simulate`` run.

:func:`ensure_bank` returns the bank a configuration describes, simulating it only when it is
missing or was made with other settings. :func:`simulate_command_bank` is ``protolib simulate``:
it picks local worker processes or a Dask cluster and writes the bank.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..bank import Bank, simulate_bank
from ..config import RunConfig
from ..runtime import ProtolibInputError, default_device

__all__ = ["ensure_bank", "simulate_command_bank", "local_workers", "PARALLEL_FROM_IMAGES", "SimulateReport"]

PARALLEL_FROM_IMAGES = 1024  # below this, starting worker processes costs more than it saves


def ensure_bank(config: RunConfig, progress: bool = True):
    """The configuration's bank: opened when it exists and matches the configuration, else simulated.

    A bank made with other settings (size, seed, prior, simulator, instrument) is rebuilt, so a notebook
    never silently uses a stale bank.
    """
    path = config.bank_path
    if path.exists():
        bank = Bank(path)
        if _bank_matches(bank, config):
            return bank
        bank.close()
    simulate_bank(
        path,
        config.bank.n_systems,
        config.bank.n_projections,
        seed=config.bank.seed,
        config=config.simulator,
        instrument=config.instrument,
        prior=config.prior,
        progress=progress,
        workers=local_workers(None, 1, config.bank.n_systems * config.bank.n_projections),
    )
    return Bank(path)


def _bank_matches(bank, config: RunConfig) -> bool:
    same_shape = bank.images.shape[:2] == (config.bank.n_systems, config.bank.n_projections)
    same_sim = json.loads(bank.attrs.get("simulator_config", "{}")) == json.loads(json.dumps(config.simulator.to_dict()))
    same_prior = json.loads(bank.attrs.get("prior", "{}")) == json.loads(json.dumps(config.prior.to_dict()))
    same_inst = all(abs(float(bank.attrs.get(k, float("nan"))) - float(v)) < 1e-12 for k, v in config.instrument.to_dict().items())
    return same_shape and same_sim and same_prior and same_inst and int(bank.attrs.get("seed", -1)) == config.bank.seed


def local_workers(requested: int | None, threads: int, n_images: int, device: str | None = None) -> int:
    """Worker processes for a bank: as ``requested``, else one per core for large CPU banks, else 1."""
    if threads < 1 or (requested is not None and requested < 1):
        raise ProtolibInputError(f"--workers and --threads must be at least 1 (got {requested} and {threads}).")
    if requested is not None:
        return requested
    if default_device(device).type != "cpu" or n_images < PARALLEL_FROM_IMAGES:
        return 1
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass
class SimulateReport:
    """What :func:`simulate_command_bank` did: on a cluster, the shards rendered and reused."""

    path: Path
    n_shards: int | None = None  # shards of a cluster run (None: a local run)
    rendered: int = 0  # shards rendered by this run
    reused: int = 0  # shards kept from an earlier, interrupted run


def simulate_command_bank(out: Path, config: RunConfig, *, device: str | None = None, threads: int = 1, workers: int | None = None,
                          scheduler: str | None = None, shard_systems: int = 16) -> SimulateReport:
    """``protolib simulate``: the configuration's bank written to ``out``, locally or on a Dask scheduler."""
    common = dict(seed=config.bank.seed, config=config.simulator, instrument=config.instrument, prior=config.prior)
    n_workers = local_workers(workers, threads, config.bank.n_systems * config.bank.n_projections, device)
    if not scheduler:
        simulate_bank(out, config.bank.n_systems, config.bank.n_projections, device=device, threads=threads, workers=n_workers, **common)
        return SimulateReport(Path(out))
    from ..cluster import connect_scheduler, simulate_bank_parallel

    client = connect_scheduler(scheduler)
    report = simulate_bank_parallel(out, config.bank.n_systems, config.bank.n_projections, client=client, shard_systems=shard_systems,
                                    **common)
    return SimulateReport(Path(out), report.n_shards, len(report.rendered), len(report.reused))
