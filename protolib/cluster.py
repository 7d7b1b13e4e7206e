"""Build banks in parallel on a Dask cluster: workers render shards, which become one bank.

Why Dask: it runs the same code on a laptop (``LocalCluster``) and on the SLURM / PBS clusters
astronomers use (``dask-jobqueue`` submits the workers as batch jobs), it ships numpy arrays to
workers without ceremony, and it needs no service of its own on the cluster. Ray would do as well
but needs its own head node set up inside the batch job.

Every system's image depends only on the bank seed and the system's index
(:func:`protolib.bank.render_systems`), so the result is **bit-identical to**
:func:`protolib.bank.simulate_bank` **whatever the number of workers**. Shards are written
atomically to ``OUT.shards/``; a rerun after an interruption renders only the missing ones.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from tqdm.auto import tqdm

from .bank import check_beam_fits_field, draw_systems, render_systems, write_simulated_bank
from .instrument import Instrument
from .parameters import Prior
from .runtime import ProtolibInputError, atomic_path
from .simulator import SimulatorConfig, settle_compile

__all__ = ["ParallelReport", "simulate_bank_parallel", "shard_folder", "connect_scheduler"]


@dataclass
class ParallelReport:
    """What a parallel build did: the bank, how many shards there were and how many were rendered now."""

    bank: Path
    n_shards: int
    rendered: list[int]
    reused: list[int]


def shard_folder(out: str | Path) -> Path:
    """Where the shards of bank ``out`` are kept while it is being built (``OUT.shards``)."""
    out = Path(out)
    return out.with_name(out.name + ".shards")


def _fingerprint(n_systems, n_projections, seed, config, instrument, prior, shard_systems) -> str:
    recipe = json.dumps(
        [n_systems, n_projections, seed, config.to_dict(), instrument.to_dict(), prior.to_dict(), shard_systems],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def _render_shard(
    shard: int,
    rows: dict,
    config: dict,
    instrument: dict,
    seed: int,
    folder: str,
    fingerprint: str,
    compile: str = "false",
) -> int:
    """Worker task: render the shard's ``rows`` (parameters of its systems) into ``folder/shard_NNNNN.h5``; ``compile``:
    the simulator's setting, settled for the whole bank (:func:`~protolib.simulator.settle_compile`)."""
    import torch

    torch.set_num_threads(1)
    indices = rows["system_index"]
    images, masses = render_systems(
        rows,
        np.arange(len(indices)),
        SimulatorConfig(**config, compile=compile),
        Instrument(**instrument),
        seed,
        device="cpu",
    )
    with atomic_path(Path(folder) / f"shard_{shard:05d}.h5", expected_bytes=images.nbytes + 64 * len(indices)) as tmp:
        with h5py.File(tmp, "w") as f:
            f["images"] = images
            f["envelope_mass"] = masses
            f["indices"] = indices
            f.attrs["fingerprint"] = fingerprint
    return shard


def _shard_rows(systems: dict, shard: int, shard_systems: int) -> dict:
    """The parameters of one shard's systems (a few kB: each task carries its own, nothing is scattered)."""
    n_systems = systems["inclination"].shape[0]
    indices = np.arange(shard * shard_systems, min(n_systems, (shard + 1) * shard_systems))
    return {**{k: v[indices] for k, v in systems.items()}, "system_index": indices}


def _shard_is_complete(path: Path, fingerprint: str) -> bool:
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("fingerprint") == fingerprint and "envelope_mass" in f
    except OSError:
        return False


def connect_scheduler(address: str):
    """A client of the running Dask scheduler at ``address`` (``tcp://HOST:PORT``, ``HOST:PORT`` or another Dask
    protocol), for ``--scheduler`` of every command; an address of another shape, or one that cannot be
    reached within 30 s, is one line saying so."""
    if not re.fullmatch(r"([a-z]+://)?[A-Za-z0-9_.\-\[\]:]+:[0-9]{1,5}/?", str(address).strip()):
        raise ProtolibInputError(
            f"--scheduler {address!r} is not a Dask scheduler address; give tcp://HOST:PORT (e.g. tcp://node1:8786)."
        )
    try:
        from dask.distributed import Client
    except ImportError:
        raise ProtolibInputError("--scheduler needs Dask: pip install 'protolib[cluster]'.") from None
    try:
        return Client(str(address).strip(), timeout="30s")
    except (OSError, ValueError, TypeError, TimeoutError) as error:
        raise ProtolibInputError(
            f"Could not reach the Dask scheduler at {address!r} ({error}); is it running, "
            "and is the address tcp://HOST:PORT?"
        ) from None


def simulate_bank_parallel(
    out: str | Path,
    n_systems: int,
    n_projections: int = 8,
    *,
    seed: int = 0,
    config: SimulatorConfig | None = None,
    instrument: Instrument | None = None,
    prior: Prior | None = None,
    shard_systems: int = 16,
    client=None,
    n_workers: int = 2,
    keep_shards: bool = False,
    progress: bool = True,
) -> ParallelReport:
    """Simulate a bank with Dask workers; the file equals :func:`~protolib.bank.simulate_bank`'s.

    Arguments:
        out: the bank to write.
        shard_systems: systems per shard (one task, one file in ``OUT.shards/``).
        client: a ``dask.distributed.Client`` of an existing cluster (e.g. a ``dask_jobqueue.SLURMCluster``);
            when ``None``, a local cluster of ``n_workers`` processes is started and stopped.
        keep_shards: keep ``OUT.shards/`` after the bank is written (it is deleted by default).

    Returns:
        A :class:`ParallelReport` naming the shards rendered now and those reused from an earlier run.

    Example:
        >>> from dask.distributed import Client                      # doctest: +SKIP
        >>> from dask_jobqueue import SLURMCluster
        >>> cluster = SLURMCluster(cores=8, processes=8, memory="32GB", walltime="02:00:00")
        >>> cluster.scale(jobs=10)
        >>> simulate_bank_parallel("bank.h5", 100_000, client=Client(cluster))
    """
    config, instrument, prior = config or SimulatorConfig(), instrument or Instrument(), prior or Prior()
    _refuse_impossible_request(n_systems, n_projections, shard_systems, config, instrument)
    systems = draw_systems(n_systems, n_projections, seed, prior, config)
    fingerprint = _fingerprint(n_systems, n_projections, seed, config, instrument, prior, shard_systems)
    folder = _claim_shard_folder(out, fingerprint, n_systems, shard_systems)
    n_shards = -(-n_systems // shard_systems)
    paths = [folder / f"shard_{k:05d}.h5" for k in range(n_shards)]
    todo = [k for k in range(n_shards) if not _shard_is_complete(paths[k], fingerprint)]
    reused = [k for k in range(n_shards) if k not in todo]
    if todo:
        tasks = _shard_settings(config, instrument, seed, folder, fingerprint, n_systems * n_projections)
        _render_shards(client, n_workers, {k: _shard_rows(systems, k, shard_systems) for k in todo}, tasks, progress)
    written = dict(seed=seed, config=config, instrument=instrument, prior=prior, progress=progress)
    write_simulated_bank(out, systems, _shard_blocks(paths), description="Writing bank", **written)
    if not keep_shards:
        shutil.rmtree(folder)
    return ParallelReport(bank=Path(out), n_shards=n_shards, rendered=todo, reused=reused)


def _refuse_impossible_request(
    n_systems: int, n_projections: int, shard_systems: int, config: SimulatorConfig, instrument: Instrument
) -> None:
    """Refuse, before anything is drawn: no Dask, a bank of no system or projection, empty shards, or a beam wider
    than the field (:func:`~protolib.bank.check_beam_fits_field`)."""
    try:
        import dask.distributed  # noqa: F401
    except ImportError:
        raise ProtolibInputError(
            "Parallel bank building needs Dask: pip install 'protolib[cluster]' (dask[distributed])."
        ) from None
    if n_systems < 1 or n_projections < 1 or shard_systems < 1:
        raise ProtolibInputError("A bank needs at least one system, one projection and one system per shard.")
    check_beam_fits_field(config, instrument)


def _shard_settings(
    config: SimulatorConfig, instrument: Instrument, seed: int, folder: Path, fingerprint: str, n_images: int
) -> dict:
    """What every shard's task is given besides its systems, as plain data for the workers: the simulator and
    instrument settings, the seed, where shards go and the bank's fingerprint."""
    return dict(
        config=config.to_dict(),
        instrument=instrument.to_dict(),
        seed=seed,
        folder=str(folder),
        fingerprint=fingerprint,
        # as simulate_bank settles it
        compile=settle_compile(config, n_images).compile,
    )


def _shard_blocks(paths: list[Path]):
    """The shards' ``(indices, images, envelope_masses)``, read one shard at a time, in order."""
    for path in paths:
        with h5py.File(path, "r") as f:
            yield f["indices"][()], f["images"][()], f["envelope_mass"][()]


def _claim_shard_folder(out, fingerprint: str, n_systems: int, shard_systems: int) -> Path:
    """``OUT.shards/`` with its manifest; refused when it holds the shards of another bank."""
    folder = shard_folder(out)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text()).get("fingerprint") != fingerprint:
        raise ProtolibInputError(
            f"{folder} holds shards of a different bank (other size, seed or settings). Delete that folder to start "
            "afresh, or write the new bank to another --out."
        )
    manifest.write_text(
        json.dumps({"fingerprint": fingerprint, "n_systems": n_systems, "shard_systems": shard_systems})
    )
    return folder


def _render_shards(client, n_workers: int, rows: dict, tasks: dict, progress: bool) -> None:
    """Render the shards ``rows`` ({shard: system rows}) on ``client``, or on a local cluster of ``n_workers`` started
    here."""
    from dask.distributed import Client, LocalCluster, as_completed

    own_cluster = None
    if client is None:
        own_cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(own_cluster)
    try:
        futures = [client.submit(_render_shard, k, shard_rows, pure=False, **tasks) for k, shard_rows in rows.items()]
        with tqdm(total=len(futures), unit="shard", desc="Rendering shards", disable=not progress) as bar:
            for future in as_completed(futures):
                future.result()
                bar.update(1)
    finally:
        if own_cluster is not None:
            client.close()
            own_cluster.close()
