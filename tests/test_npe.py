"""The neural posterior estimates (sbi) and the paired bootstrap that compares methods."""

import json

import numpy as np
import pytest
from conftest import open_small_bank

from protolib.autoencoder import AutoencoderConfig, train_autoencoder
from protolib.cli import main
from protolib.comparison import difference_table, paired_difference
from protolib.evaluation import MethodEvaluation
from protolib.npe import draw_samples, sbi_available, train_flow
from protolib.runtime import ProtolibInputError
from protolib.siamese import train_siamese
from protolib.splits import split_systems
from protolib.statistics import central_coverage
from protolib.training import TrainingConfig

needs_sbi = pytest.mark.skipif(not sbi_available(), reason="sbi is not installed")


def toy_evaluation(name: str, errors: np.ndarray, truths: np.ndarray, systems: np.ndarray) -> MethodEvaluation:
    """A method's figures on one parameter ``x`` whose medians miss the truths by ``errors`` (prior spread 1)."""
    rms = float(np.sqrt(np.mean(errors**2)))
    metrics = {
        "parameters": {"x": {"rms_error": rms, "rms_error_over_prior_spread": rms, "in_target_similarity": True}}
    }
    return MethodEvaluation(
        name, 20, metrics, ["x"], {"x": truths}, {"x": truths + errors}, {}, {}, {}, (None, None), {}, systems
    )


def test_a_paired_bootstrap_calls_a_clear_gain_better_and_noise_level():
    rng = np.random.default_rng(0)
    systems = np.repeat(np.arange(45), 8)  # 45 test systems seen in 8 projections, as in chapter 06
    truths = rng.normal(size=len(systems))
    # what is hard for one method is hard for the other: it cancels in the pairing
    shared = np.repeat(rng.normal(size=45), 8)
    worse = toy_evaluation("b", shared + 0.5 * rng.normal(size=len(systems)), truths, systems)
    better = toy_evaluation("a", 0.6 * shared + 0.3 * rng.normal(size=len(systems)), truths, systems)
    gain = paired_difference(better, worse, "x")
    assert gain.verdict == "better" and gain.high < 0 and gain.ratio < 1 and gain.n_systems == 45
    # the same method again, other noise
    twin = toy_evaluation("c", shared + 0.5 * rng.normal(size=len(systems)), truths, systems)
    tie = paired_difference(twin, worse, "x")
    assert tie.verdict == "level" and tie.low < 0 < tie.high
    assert "level" in difference_table([tie]) and "45 test systems" in difference_table([tie])
    # eight projections of a system are one sample: the interval is that of 45 systems, far wider than of 360
    # independent images
    independent = toy_evaluation("b", worse.median["x"] - truths, truths, np.arange(len(systems)))
    narrow = paired_difference(
        toy_evaluation("a", better.median["x"] - truths, truths, np.arange(len(systems))), independent, "x"
    )
    assert (gain.high - gain.low) > 1.3 * (narrow.high - narrow.low)
    with pytest.raises(ProtolibInputError, match="same targets"):
        paired_difference(better, toy_evaluation("d", shared, truths + 1, systems), "x")


@needs_sbi
def test_the_flow_recovers_a_known_gaussian_posterior_with_nominal_coverage():
    """theta ~ N(0, 1), x = theta + N(0, 0.5): the posterior is N(0.8 x, 0.45); samples must centre and spread as
    that."""
    rng = np.random.default_rng(1)
    theta = rng.normal(size=(3000, 2))
    x = theta + 0.5 * rng.normal(size=theta.shape)
    posterior = train_flow(theta, x, max_epochs=60, seed=0)
    truths = rng.normal(size=(300, 2))
    observed = truths + 0.5 * rng.normal(size=truths.shape)
    samples = draw_samples(posterior, observed, 300, seed=0, batch=64)
    assert samples.shape == (300, 300, 2)
    assert np.abs(np.median(samples, 1) - 0.8 * observed).mean() < 0.1
    assert np.std(samples, 1).mean() == pytest.approx(np.sqrt(0.2), rel=0.15)
    coverage = central_coverage(samples[..., 0], truths[:, 0], (0.68, 0.95))
    assert coverage == pytest.approx([0.68, 0.95], abs=0.08)


@needs_sbi
def test_protolib_evaluate_scores_both_posterior_estimates_beside_the_matches(tmp_path_factory, tmp_path, capsys):
    with open_small_bank(tmp_path_factory, 16, seed=2) as bank:
        split = split_systems(bank.n_systems, (0.5, 0.25, 0.25), seed=0)
        quick = TrainingConfig(epochs=1, batch_systems=4, learning_rate=3e-3, num_threads=1)
        autoencoder = train_autoencoder(
            bank,
            tmp_path / "autoencoder.pt",
            split=split,
            model=AutoencoderConfig(channels=[4, 8], latent_size=8),
            training=quick,
            progress=False,
        )
        model = train_siamese(bank, autoencoder, tmp_path / "siamese.pt", training=quick, progress=False)
        arguments = ["evaluate", "--model", str(model), "--bank", str(bank.path), "--top-k", "4", "--config", "tiny"]
        arguments += ["--methods", "random,siamese,npe,npe_end_to_end", "--set", "evaluation.npe_samples=50"]

        def evaluate(out: str, epochs: int = 3) -> dict:
            assert main([*arguments, "--out", str(tmp_path / out), "--set", f"evaluation.npe_max_epochs={epochs}"]) == 0
            return json.loads((tmp_path / out / "metrics.json").read_text())

        metrics = evaluate("evaluation")
        # each estimate is kept beside the network and read back, not trained, when nothing it learns from changed
        cache = tmp_path / "npe_flows"
        first = sorted(cache.glob("*.pt"))
        assert [p.name.split("-")[0] for p in first] == ["npe", "npe_end_to_end"]
        first[0].write_bytes(b"not a torch file")  # a broken one is trained again, with a warning
        kept = first[1].stat().st_mtime_ns
        capsys.readouterr()
        again = evaluate("again")
        warned = capsys.readouterr().err
        assert f"trained estimate {first[0]} in the cache could not be read" in " ".join(warned.split())
        assert sorted(cache.glob("*.pt")) == first and first[1].stat().st_mtime_ns == kept  # read, not rewritten
        assert first[0].stat().st_size > 1000  # trained again and replaced
        for name in ("npe", "npe_end_to_end"):
            assert again["methods"][name]["corrected"] == metrics["methods"][name]["corrected"]
            assert again["methods"][name]["chosen_widening"] == metrics["methods"][name]["chosen_widening"]
        assert len(list(cache.glob("*.pt"))) == 2
        evaluate("fewer_epochs", epochs=2)  # another setting: trained anew, the others kept
        assert len(list(cache.glob("*.pt"))) == 4
    assert list(metrics["methods"]) == ["random", "siamese", "npe", "npe_end_to_end"]
    for name in ("npe", "npe_end_to_end"):
        entry = metrics["methods"][name]
        assert entry["metric"] == "posterior" and entry["at_top_k"]["top_k"] == 50
        assert (
            sum(entry["at_top_k"]["parameters"]["disk_radius"]["rank_histogram"])
            == len(split.test) * bank.n_projections
        )
        assert set(entry["chosen_widening"]) == {*bank.physical_parameters, "inclination"}
        assert 0 <= entry["corrected"]["calibration"]["coverage_68"] <= 1


@needs_sbi
def test_match_puts_a_posterior_estimate_beside_the_matches_of_an_observation(tmp_path, monkeypatch):
    import sys

    from match_helpers import fake_siamese_module, write_bank, write_fake_model

    from protolib.bank import Bank
    from protolib.instrument import Beam
    from protolib.observation import write_observation_fits

    monkeypatch.setitem(sys.modules, "protolib.siamese", fake_siamese_module())
    with Bank(write_bank(tmp_path / "bank.h5", n_systems=40)) as bank:
        system = {name: float(values[3]) for name, values in bank.parameters.items()}
    model = write_fake_model(tmp_path / "siamese.pt")
    fits_path = write_observation_fits(
        tmp_path / "synthetic.fits",
        system,
        inclination_deg=60.0,
        position_angle_deg=30.0,
        distance_pc=150.0,
        pixel_arcsec=0.05,
        image_size=40,
        beam=Beam(0.35, 0.3, 20.0),
        noise_rms_jy_beam=1e-4,
        seed=1,
    )
    arguments = ["match", "--model", str(model), "--bank", str(tmp_path / "bank.h5"), "--target", str(fits_path)]
    arguments += ["--distance", "150", "--top-k", "10", "--posterior-estimate", "--set", "evaluation.npe_max_epochs=20"]
    assert main([*arguments, "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    estimate = report["posterior_estimate"]
    assert "neural posterior estimate" in estimate["description"]
    assert [s["parameter"] for s in estimate["summary"]] == [
        s["parameter"] for s in report["summary"] if s["parameter"] != "position_angle"
    ]
    for row in estimate["summary"]:
        assert row["p2_5"] <= row["p16"] <= row["median"] <= row["p84"] <= row["p97_5"]
        assert row["widening"] >= 1.0
    # the same map again: the estimate is read from beside the network, with the same intervals
    assert [p.name.split("-")[0] for p in (tmp_path / "npe_flows").glob("*.pt")] == ["npe_observation"]
    assert main([*arguments, "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "report.json").read_text())["posterior_estimate"]
    assert again["summary"] == estimate["summary"] and "read from the cache" in again["description"]
    assert "read from the cache" not in estimate["description"]


def test_learning_curve_numbers_say_what_still_improves_and_plot_every_parameter():
    from protolib.comparison import learning_curve_numbers
    from protolib.plots.evaluation import plot_learning_curves

    def row(errors):
        return {
            "mean_target_rms_error_over_prior_spread": float(np.mean(list(errors.values()))),
            "coverage_68": 0.68,
            "coverage_95": 0.95,
            "parameters": {p: {"rms_error_over_prior_spread": e} for p, e in errors.items()},
        }

    sizes = [210, 700, 2100]
    siamese = {
        "210": row({"disk_mass": 0.8, "age": 0.7}),
        "700": row({"disk_mass": 0.7, "age": 0.65}),
        "2100": row({"disk_mass": 0.6, "age": 0.64}),
    }
    npe = {
        n: row({p: v["rms_error_over_prior_spread"] - 0.05 for p, v in r["parameters"].items()})
        for n, r in siamese.items()
    }
    fit = {"a": 0.5, "b": 2.0, "c": 0.5, "extrapolation": {"value": 0.52}}
    curves = {
        "train_systems": sizes,
        "target_parameters": ["disk_mass", "age"],
        "systems": {"test": list(range(60))},
        "methods": {"siamese": {"sizes": siamese}, "npe": {"sizes": npe}},
        "fits": {"by_method": {m: {"disk_mass": fit, "age": fit, "mean_target": fit} for m in ("siamese", "npe")}},
        "extrapolation": {"train_systems": 14000},
    }
    figures = learning_curve_numbers(curves)
    # fell 0.10 against 0.01
    assert figures["lc_improving"].startswith("disk mass") and figures["lc_flat"].startswith("age")
    assert figures["lc_siamese_first"] == pytest.approx(0.75) and figures["lc_npe_last"] == pytest.approx(0.57)
    assert (
        figures["lc_ratio_last"] == pytest.approx(0.62 / 0.57)
        and figures["lc_n_test"] == 60
        and figures["lc_far_size"] == 14000
    )
    fig = plot_learning_curves(curves)
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 3  # two parameters and their mean


def test_an_interval_end_that_excludes_zero_never_prints_as_zero():
    """Chapter 06 calls a method better only where the interval excludes zero: [-0.18, -0.003] must not read
    [-0.18, -0.00], which looks as if it touched zero."""
    from protolib.comparison import Difference, difference_numbers

    better = Difference("disk_mass", "siamese", "pixel", -0.1, -0.18, -0.0034, 0.9, 0.8, 0.99, 0.95, 45)
    assert better.verdict == "better"
    phrase = difference_numbers([better], "boot")["boot_better"]
    assert "-0.003]" in phrase and "-0.00]" not in phrase
    assert "[-0.18, " in difference_table([better])


@needs_sbi
def test_a_trained_estimate_that_cannot_be_kept_is_used_for_this_run_with_a_warning(tmp_path):
    from protolib.evaluation import EvaluationSettings
    from protolib.npe import trained_estimate

    rng = np.random.default_rng(3)
    values = rng.normal(size=(300, 2))
    inputs = values + 0.3 * rng.normal(size=values.shape)
    settings = EvaluationSettings(npe_max_epochs=2, npe_samples=20)
    blocked = tmp_path / "a_file"
    blocked.write_text("not a folder")  # where the cache folder should be: it cannot be made
    with pytest.warns(UserWarning, match="could not be kept in .*a_file.*used for this run only"):
        flow, centre, spread, widening = trained_estimate(
            "npe", ["a", "b"], (values[:250], inputs[:250]), (values[250:], inputs[250:]), settings, cache_dir=blocked
        )
    assert set(widening) == {"a", "b"} and not flow.cached and blocked.read_text() == "not a folder"
