"""The bank stage: a configuration's bank, simulated once; and the ``protolib simulate`` run.

:func:`ensure_bank` returns the bank a configuration describes, simulating it only when it is
missing or was made with other settings. :func:`simulate_command_bank` is ``protolib simulate``:
it picks local worker processes or a Dask cluster and writes the bank.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..bank import Bank, simulate_bank
from ..config import RunConfig
from ..runtime import ProtolibInputError, available_cores, default_device

__all__ = [
    "ensure_bank",
    "simulate_command_bank",
    "local_workers",
    "PARALLEL_FROM_IMAGES",
    "SimulateReport",
    "simulate_cost",
    "simulate_plan",
    "PROCESS_BYTES",
]

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
    same_sim = json.loads(bank.attrs.get("simulator_config", "{}")) == json.loads(
        json.dumps(config.simulator.to_dict())
    )
    same_prior = json.loads(bank.attrs.get("prior", "{}")) == json.loads(json.dumps(config.prior.to_dict()))
    wanted = config.instrument.per_band(len(config.simulator.bands_ghz))
    if len(wanted) == 1:  # the instrument's settings, as the bank's attributes record them
        same_inst = all(
            abs(float(bank.attrs.get(k, float("nan"))) - float(v)) < 1e-12 for k, v in wanted[0].to_dict().items()
        )
    else:  # each band's, as its /bands table records them
        same_inst = len(wanted) == bank.n_bands and all(
            abs(float(getattr(have, k)) - float(v)) < 1e-12
            for have, want in zip(bank.band_instruments, wanted)
            for k, v in want.to_dict().items()
        )
    return same_shape and same_sim and same_prior and same_inst and int(bank.attrs.get("seed", -1)) == config.bank.seed


def local_workers(requested: int | None, threads: int, n_images: int, device: str | None = None) -> int:
    """Worker processes for a bank: as ``requested``, else one per core for large CPU banks, else 1."""
    if threads < 1 or (requested is not None and requested < 1):
        raise ProtolibInputError(f"--workers and --threads must be at least 1 (got {requested} and {threads}).")
    if requested is not None:
        return requested
    if default_device(device).type != "cpu" or n_images < PARALLEL_FROM_IMAGES:
        return 1
    return available_cores()


PROCESS_BYTES = 4e8
"""Memory of one Python process with torch and numpy loaded [bytes] (about 350 MB measured)."""


def simulate_cost(config: RunConfig, workers: int = 1) -> tuple[float, float]:
    """The peak memory [bytes] and the time [s] of simulating ``config``'s bank on this machine, estimated before any
    work.

    Memory: each rendering process holds, for one system, a float32 value per ray of every projection
    and the ray offsets (``(image_size x oversample)^2`` rays per image, ``n_projections + 3`` arrays),
    and its batch of rays at work (``batch_elements`` line-of-sight samples, about 64 arrays of it),
    on top of :data:`PROCESS_BYTES`. Time: one system rendered here (a second time) at 64 px without oversampling,
    scaled by the rays per image, times the systems, over the worker processes (an overestimate of up
    to twice for heavy oversampling, whose rays cost less each).
    """
    import time
    from dataclasses import replace

    import numpy as np
    import torch

    from ..bank import draw_systems, render_systems

    sim, n_proj = config.simulator, config.bank.n_projections
    rays = float(sim.image_size * sim.oversample) ** 2
    per_process = 4.0 * rays * (n_proj + 3) + 4.0 * sim.batch_elements * 64
    memory = PROCESS_BYTES + workers * per_process + (workers * PROCESS_BYTES if workers > 1 else 0.0)
    probe = replace(sim, image_size=min(sim.image_size, 64), oversample=1)
    systems = draw_systems(1, n_proj, config.bank.seed, config.prior, probe)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # the first call also warms up
        render_systems(systems, np.arange(1), probe, config.instrument, config.bank.seed, "cpu")
        start = time.process_time()
        render_systems(systems, np.arange(1), probe, config.instrument, config.bank.seed, "cpu")
    finally:
        torch.set_num_threads(threads)
    seconds = (time.process_time() - start) * rays / probe.image_size**2 * config.bank.n_systems / max(1, workers)
    return memory, seconds


def simulate_plan(config: RunConfig, workers: int = 1, what: str = "simulate") -> str:
    """One line with the estimated time and peak memory of simulating ``config``'s bank (:func:`simulate_cost`); a bank
    that would not fit in the machine's available memory is refused in one line naming the settings to change."""
    from ..bank import check_beam_fits_field
    from ..runtime import check_memory, describe_bytes

    check_beam_fits_field(config.simulator, config.instrument)  # before the probe renders anything
    memory, seconds = simulate_cost(config, workers)
    sim = config.simulator
    side = sim.image_size * sim.oversample
    check_memory(
        memory,
        f"Rendering {side} x {side} rays per image (simulator.image_size = {sim.image_size}, "
        f"simulator.oversample = {sim.oversample}, {config.bank.n_projections} projections, {workers} process(es))",
        "lower simulator.oversample or simulator.image_size (or --workers)",
    )
    return (
        f"{what}: {config.bank.n_systems} systems x {config.bank.n_projections} projections of {sim.image_size} px "
        f"({side} x {side} rays each): about {_duration(seconds)} on {workers} process(es), peak memory about "
        f"{describe_bytes(memory)}."
    )


def _duration(seconds: float) -> str:
    return (
        f"{seconds:.0f} s"
        if seconds < 120
        else f"{seconds / 60:.0f} min"
        if seconds < 7200
        else f"{seconds / 3600:.1f} h"
    )


@dataclass
class SimulateReport:
    """What :func:`simulate_command_bank` did: on a cluster, the shards rendered and reused."""

    path: Path
    n_shards: int | None = None  # shards of a cluster run (None: a local run)
    rendered: int = 0  # shards rendered by this run
    reused: int = 0  # shards kept from an earlier, interrupted run


def simulate_command_bank(
    out: Path,
    config: RunConfig,
    *,
    device: str | None = None,
    threads: int = 1,
    workers: int | None = None,
    scheduler: str | None = None,
    shard_systems: int = 16,
) -> SimulateReport:
    """``protolib simulate``: the configuration's bank written to ``out``, locally or on a Dask scheduler."""
    common = dict(seed=config.bank.seed, config=config.simulator, instrument=config.instrument, prior=config.prior)
    n_workers = local_workers(workers, threads, config.bank.n_systems * config.bank.n_projections, device)
    if not scheduler:
        simulate_bank(
            out,
            config.bank.n_systems,
            config.bank.n_projections,
            device=device,
            threads=threads,
            workers=n_workers,
            **common,
        )
        return SimulateReport(Path(out))
    from ..cluster import connect_scheduler, simulate_bank_parallel

    client = connect_scheduler(scheduler)
    report = simulate_bank_parallel(
        out, config.bank.n_systems, config.bank.n_projections, client=client, shard_systems=shard_systems, **common
    )
    return SimulateReport(Path(out), report.n_shards, len(report.rendered), len(report.reused))
