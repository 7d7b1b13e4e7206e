"""The bank file: schema, reproducibility, safe writes, the thesis layout, splits and normalisation."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

import protolib.bank as bank_module
from protolib.bank import Bank, import_thesis_snapshots, simulate_bank
from protolib.cli import main as cli_main
from protolib.normalise import ParameterNormaliser
from protolib.parameters import PARAMETERS
from protolib.runtime import ProtolibInputError
from protolib.simulator import SimulatorConfig
from protolib.splits import split_systems

SMALL = SimulatorConfig(image_size=24, field_of_view_au=800.0, envelope_samples=16, disk_samples=16)


@pytest.fixture(scope="module")
def small_bank(tmp_path_factory):
    path = tmp_path_factory.mktemp("bank") / "bank.h5"
    simulate_bank(path, n_systems=6, n_projections=3, seed=3, config=SMALL, progress=False)
    return path


def test_bank_schema_has_units_viewing_angles_and_provenance(small_bank):
    with Bank(small_bank) as bank:
        assert bank.images.shape == (6, 3, 24, 24)
        assert bank.images.dtype == np.float32
        assert bank.images.chunks[1:] == (3, 24, 24)
        assert bank.unit == "Jy/beam"
        for name in [
            "stellar_mass",
            "accretion_rate",
            "disk_radius",
            "disk_mass",
            "envelope_mass",
            "luminosity",
            "temperature",
            "age",
        ]:
            assert bank.parameter_info[name].unit == PARAMETERS[name].unit
            assert bank.parameters[name].shape == (6,)
            assert np.all(bank.parameters[name] > 0)
        assert bank.inclination.shape == (6, 3) and np.all((bank.inclination >= 0) & (bank.inclination <= 90))
        assert bank.position_angle.shape == (6, 3)
        assert bank.attrs["seed"] == 3
        assert bank.attrs["protolib_version"]
        assert bank.simulator_config == SMALL
        assert bank.pixel_size_au == pytest.approx(800.0 / 24)
        assert bank.instrument.distance_pc == 140.0
        assert np.isfinite(bank.load_images()).all()


def test_same_seed_gives_the_same_bank_bit_for_bit(tmp_path, small_bank):
    again = tmp_path / "again.h5"
    other = tmp_path / "other.h5"
    simulate_bank(again, n_systems=6, n_projections=3, seed=3, config=SMALL, progress=False, systems_per_batch=4)
    simulate_bank(other, n_systems=6, n_projections=3, seed=4, config=SMALL, progress=False)
    with Bank(small_bank) as a, Bank(again) as b, Bank(other) as c:
        assert np.array_equal(a.load_images(), b.load_images())
        for name in a.parameters:
            assert np.array_equal(a.parameters[name], b.parameters[name])
        assert not np.array_equal(a.load_images(), c.load_images())
        assert not np.array_equal(a.parameters["stellar_mass"], c.parameters["stellar_mass"])


def test_load_images_keeps_the_requested_order(small_bank):
    with Bank(small_bank) as bank:
        everything = bank.load_images()
        picked = bank.load_images([4, 1, 4, 0])
        assert np.array_equal(picked, everything[[4, 1, 4, 0]])


def test_interrupted_simulation_leaves_the_previous_bank_in_place(tmp_path, monkeypatch, small_bank):
    out = tmp_path / "bank.h5"
    out.write_bytes(small_bank.read_bytes())
    calls = {"n": 0}
    real = bank_module.render_systems

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(bank_module, "render_systems", interrupted)
    with pytest.raises(KeyboardInterrupt):
        simulate_bank(out, n_systems=6, n_projections=3, seed=99, config=SMALL, progress=False, systems_per_batch=2)
    assert out.read_bytes() == small_bank.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["bank.h5"]


def test_opening_a_file_that_is_not_a_bank_says_so(tmp_path):
    with pytest.raises(ProtolibInputError, match="does not exist"):
        Bank(tmp_path / "missing.h5")
    text = tmp_path / "notes.h5"
    text.write_text("hello")
    with pytest.raises(ProtolibInputError, match="not a readable HDF5"):
        Bank(text)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = 1
    with pytest.raises(ProtolibInputError, match="not a protolib bank"):
        Bank(other)


def _write_snapshot(path, seed, n_projections=8, size=16, drop=None):
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        for k in range(1, n_projections + 1):
            f[f"intensity_projection_{k}"] = rng.random((size, size))
        values = dict(
            Envelope_mass=0.5 + seed,
            accretion_rate=1e-5,
            temperature=40.0,
            mass=0.3 + seed,
            disk_size=50.0,
            luminosity=3.0,
            age=1e5,
        )
        for name, value in values.items():
            if name != drop:
                f[name] = value


def test_thesis_snapshots_are_imported_with_their_parameters(tmp_path):
    folder = tmp_path / "snapshots"
    folder.mkdir()
    for i in range(3):
        _write_snapshot(folder / f"snap_{i:03d}.h5", i)
    report = import_thesis_snapshots(folder, tmp_path / "thesis.h5", pixel_size_au=10.0, progress=False)
    assert len(report.imported) == 3 and not report.skipped
    with Bank(tmp_path / "thesis.h5") as bank:
        assert bank.images.shape == (3, 8, 16, 16)
        assert np.allclose(bank.parameters["stellar_mass"], [0.3, 1.3, 2.3])
        assert np.allclose(bank.parameters["envelope_mass"], [0.5, 1.5, 2.5])
        assert np.allclose(bank.parameters["disk_radius"], 50.0)
        assert bank.pixel_size_au == 10.0
        with h5py.File(folder / "snap_001.h5") as f:
            assert np.allclose(bank.images[1, 2], f["intensity_projection_3"][()])


def test_thesis_import_names_the_bad_file_and_the_missing_dataset(tmp_path):
    folder = tmp_path / "snapshots"
    folder.mkdir()
    _write_snapshot(folder / "snap_000.h5", 0)
    _write_snapshot(folder / "snap_001.h5", 1, drop="disk_size")
    (folder / "snap_002.h5").write_text("not hdf5")
    with pytest.raises(ProtolibInputError, match=r"snap_001\.h5: missing dataset\(s\) disk_size"):
        import_thesis_snapshots(folder, tmp_path / "thesis.h5", progress=False)
    assert not (tmp_path / "thesis.h5").exists()
    report = import_thesis_snapshots(folder, tmp_path / "thesis.h5", on_error="skip", progress=False)
    assert [p.endswith("snap_000.h5") for p in report.imported] == [True]
    assert set(p.rsplit("/", 1)[-1] for p in report.skipped) == {"snap_001.h5", "snap_002.h5"}
    assert "not a readable HDF5" in report.skipped[str(folder / "snap_002.h5")]


def test_splits_are_by_system_disjoint_and_reproducible():
    split = split_systems(100, (0.7, 0.15, 0.15), seed=5)
    parts = [set(split.train), set(split.validation), set(split.test)]
    assert sum(len(p) for p in parts) == 100 and set.union(*parts) == set(range(100))
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert (len(split.train), len(split.validation), len(split.test)) == (70, 15, 15)
    again = split_systems(100, (0.7, 0.15, 0.15), seed=5)
    assert np.array_equal(split.test, again.test)
    assert not np.array_equal(split.test, split_systems(100, (0.7, 0.15, 0.15), seed=6).test)
    with pytest.raises(ProtolibInputError, match="summing to 1"):
        split_systems(10, (0.5, 0.1, 0.1))


def test_normaliser_is_fitted_on_training_systems_and_inverts(small_bank):
    with Bank(small_bank) as bank:
        names = ["stellar_mass", "disk_radius", "cavity_angle"]
        table = bank.parameter_table(names)
    train = table[:4]
    norm = ParameterNormaliser(names).fit(train)
    z = norm.transform(train)
    assert np.allclose(z.mean(0), 0.0) and np.allclose(z.std(0), 1.0)
    assert np.allclose(norm.inverse(norm.transform(table)), table)
    # log10 for masses and radii, linear for angles
    assert norm.log_scale == [True, True, False]
    assert np.allclose(norm.centre[0], np.log10(train[:, 0]).mean())
    restored = ParameterNormaliser.from_dict(norm.to_dict())
    assert np.allclose(restored.transform(table), norm.transform(table))
    minmax = ParameterNormaliser(names, method="minmax").fit(train)
    assert np.allclose(minmax.transform(train).min(0), 0.0) and np.allclose(minmax.transform(train).max(0), 1.0)


def test_simulate_command_writes_a_bank_and_reports_user_errors_in_one_line(tmp_path, capsys):
    out = tmp_path / "cli.h5"
    assert (
        cli_main(
            [
                "simulate",
                "--config",
                "tiny",
                "--systems",
                "3",
                "--projections",
                "2",
                "--size",
                "16",
                "--seed",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    with Bank(out) as bank:
        assert bank.images.shape == (3, 2, 16, 16)
    capsys.readouterr()
    assert cli_main(["simulate", "--config", "no-such-config", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no-such-config" in err[0] and "Traceback" not in err[0]


def test_a_second_simulate_writing_the_same_bank_is_refused_and_the_bank_kept(tmp_path, capsys):
    """Two runs into one --out both printed "Wrote" and one result was lost (issue 31): the second is refused."""
    from protolib.runtime import run_lock

    out = tmp_path / "bank.h5"
    assert (
        cli_main(
            ["simulate", "--config", "tiny", "--systems", "2", "--projections", "2", "--size", "16", "--out", str(out)]
        )
        == 0
    )
    before = out.read_bytes()
    capsys.readouterr()
    with run_lock(out, folder=False):  # another simulate writing this bank
        assert (
            cli_main(
                [
                    "simulate",
                    "--config",
                    "tiny",
                    "--systems",
                    "3",
                    "--projections",
                    "2",
                    "--size",
                    "16",
                    "--out",
                    str(out),
                ]
            )
            == 2
        )
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "another protolib run" in error[0] and "this file" in error[0]
    assert out.read_bytes() == before
