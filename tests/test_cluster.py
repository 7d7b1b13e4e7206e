"""Parallel bank building on a local Dask cluster: identical to the serial bank, and resumable."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("dask.distributed")

from protolib.bank import Bank, simulate_bank
from protolib.cluster import shard_folder, simulate_bank_parallel
from protolib.runtime import ProtolibInputError
from protolib.simulator import SimulatorConfig

SMALL = SimulatorConfig(image_size=16, field_of_view_au=800.0, envelope_samples=12, disk_samples=12)


@pytest.fixture(scope="module")
def local_client():
    from dask.distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(cluster)
    yield client
    client.close()
    cluster.close()


def _same_bank(a_path, b_path):
    with Bank(a_path) as a, Bank(b_path) as b:
        assert np.array_equal(a.load_images(), b.load_images())
        assert list(a.parameters) == list(b.parameters)
        for name in a.parameters:
            assert np.array_equal(a.parameters[name], b.parameters[name]), name
        assert np.array_equal(a.inclination, b.inclination)


def test_parallel_bank_is_bit_identical_to_the_serial_one(tmp_path, local_client):
    simulate_bank(tmp_path / "serial.h5", 10, 3, seed=5, config=SMALL, progress=False)
    report = simulate_bank_parallel(
        tmp_path / "two.h5", 10, 3, seed=5, config=SMALL, shard_systems=3, client=local_client, progress=False
    )
    assert report.n_shards == 4 and report.rendered == [0, 1, 2, 3]
    simulate_bank_parallel(
        tmp_path / "one.h5", 10, 3, seed=5, config=SMALL, shard_systems=4, n_workers=1, progress=False
    )
    _same_bank(tmp_path / "serial.h5", tmp_path / "two.h5")
    _same_bank(tmp_path / "serial.h5", tmp_path / "one.h5")
    # Threads and the grouping of systems into calls do not change a bit either.
    simulate_bank(tmp_path / "threads.h5", 10, 3, seed=5, config=SMALL, progress=False, threads=2, systems_per_batch=3)
    _same_bank(tmp_path / "serial.h5", tmp_path / "threads.h5")
    # processes
    simulate_bank(tmp_path / "pool.h5", 10, 3, seed=5, config=SMALL, progress=False, workers=2, systems_per_batch=3)
    _same_bank(tmp_path / "serial.h5", tmp_path / "pool.h5")
    assert not shard_folder(tmp_path / "two.h5").exists()


def test_rerun_after_an_interruption_renders_only_missing_shards(tmp_path, local_client):
    out = tmp_path / "bank.h5"
    first = simulate_bank_parallel(
        out, 8, 2, seed=1, config=SMALL, shard_systems=2, client=local_client, keep_shards=True, progress=False
    )
    assert first.rendered == [0, 1, 2, 3]
    reference = tmp_path / "reference.h5"
    reference.write_bytes(out.read_bytes())
    # An interrupted run: two shards never finished, and the bank was never written.
    (shard_folder(out) / "shard_00001.h5").unlink()
    (shard_folder(out) / "shard_00003.h5").unlink()
    out.unlink()
    again = simulate_bank_parallel(
        out, 8, 2, seed=1, config=SMALL, shard_systems=2, client=local_client, progress=False
    )
    assert again.rendered == [1, 3] and again.reused == [0, 2]
    _same_bank(reference, out)


def test_shards_of_another_bank_are_not_mixed_in(tmp_path, local_client):
    out = tmp_path / "bank.h5"
    simulate_bank_parallel(
        out, 4, 2, seed=1, config=SMALL, shard_systems=2, client=local_client, keep_shards=True, progress=False
    )
    with pytest.raises(ProtolibInputError, match="different bank"):
        simulate_bank_parallel(out, 4, 2, seed=2, config=SMALL, shard_systems=2, client=local_client, progress=False)
