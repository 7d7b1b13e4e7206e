"""Posterior-like distributions: summaries recover known percentiles, plots show what they claim."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
from match_helpers import write_bank

from protolib.bank import Bank
from protolib.distributions import (
    ParameterSummary,
    format_summary,
    match_parameters,
    prior_parameters,
    similarity_weights,
    summarise,
    truth_coverage,
    truth_parameters,
)
from protolib.matching import Matches
from protolib.plots.corner import plot_corner, plot_marginals
from protolib.plots.gallery import plot_gallery
from protolib.runtime import ProtolibInputError


@pytest.fixture
def bank(tmp_path):
    with Bank(write_bank(tmp_path / "bank.h5", n_systems=40)) as b:
        yield b


def test_log_normal_samples_recover_their_percentiles_in_physical_units():
    rng = np.random.default_rng(1)
    accretion_rate = 10 ** rng.normal(-5.0, 0.4, 200_000)
    cavity_angle = rng.normal(25.0, 3.0, 200_000)
    [mdot, cavity] = summarise({"accretion_rate": accretion_rate, "cavity_angle": cavity_angle})
    assert mdot.log_scale and mdot.unit == "Msun/yr"
    assert mdot.median == pytest.approx(1e-5, rel=0.01)
    one_sigma, two_sigma = 0.4 * 0.9945, 0.4 * 1.9600  # 16/84 and 2.5/97.5 percentiles of a normal, in dex
    assert (mdot.p16, mdot.p84) == (
        pytest.approx(10 ** (-5 - one_sigma), rel=0.02),
        pytest.approx(10 ** (-5 + one_sigma), rel=0.02),
    )
    assert (mdot.p2_5, mdot.p97_5) == (
        pytest.approx(10 ** (-5 - two_sigma), rel=0.03),
        pytest.approx(10 ** (-5 + two_sigma), rel=0.03),
    )
    assert mdot.width_68 == pytest.approx(0.4, rel=0.02)
    assert not cavity.log_scale
    assert (cavity.median, cavity.p16, cavity.p84) == (
        pytest.approx(25.0, abs=0.05),
        pytest.approx(22.0, abs=0.06),
        pytest.approx(28.0, abs=0.06),
    )


def test_summary_compares_width_with_the_prior_and_keeps_the_truth():
    rng = np.random.default_rng(2)
    prior = {"stellar_mass": 10 ** rng.uniform(-1.3, 0.5, 10_000)}
    narrow = {"stellar_mass": 10 ** rng.normal(-0.3, 0.05, 5_000)}
    [summary] = summarise(narrow, prior=prior, truths={"stellar_mass": 0.5})
    assert summary.prior_width_ratio < 0.2 and summary.truth == 0.5
    [unconstrained] = summarise({"stellar_mass": prior["stellar_mass"][:5000]}, prior=prior)
    assert unconstrained.prior_width_ratio == pytest.approx(1.0, abs=0.1)


def test_similarity_weights_favour_the_best_matches():
    weights = similarity_weights(np.array([0.99, 0.97, 0.90]), temperature=0.02)
    assert weights.sum() == pytest.approx(1.0) and weights[0] > weights[1] > weights[2]
    assert weights[1] / weights[0] == pytest.approx(np.exp(-1.0))
    with pytest.raises(ProtolibInputError, match="positive"):
        similarity_weights(np.array([0.9]), temperature=0)


def test_log_scaled_parameter_with_non_positive_values_is_refused():
    with pytest.raises(ProtolibInputError, match="disk_mass is log-scaled"):
        summarise({"disk_mass": np.array([0.1, 0.0])})


def test_match_parameters_follow_the_matched_systems_and_projections(bank):
    matches = Matches(np.array([0.9, 0.8]), np.array([3, 17]), np.array([1, 2]))
    table = match_parameters(bank, matches)
    assert table["disk_radius"].tolist() == [bank.parameters["disk_radius"][3], bank.parameters["disk_radius"][17]]
    assert table["inclination"].tolist() == [bank.inclination[3, 1], bank.inclination[17, 2]]
    prior = prior_parameters(bank)
    assert len(prior["stellar_mass"]) == len(prior["inclination"]) == 40 * 4


def test_corner_plot_overlays_matches_on_prior_with_truths(bank):
    matches = Matches(np.linspace(0.99, 0.9, 60), np.arange(60) % 40, np.arange(60) % 4)
    names = ["stellar_mass", "disk_radius", "inclination"]
    truths = truth_parameters(bank, 5, 1)
    fig = plot_corner(
        match_parameters(bank, matches),
        prior_parameters(bank),
        parameters=names,
        truths=truths,
        parameter_info=bank.parameter_info,
    )
    assert len(fig.axes) == 9
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["best matches (60)", "prior: whole bank (160)", "truth"]
    assert "log10 M* [Msun]" in [ax.get_xlabel() for ax in fig.axes]
    truth_line = fig.axes[0].lines[-1].get_xdata()[0]
    assert truth_line == pytest.approx(np.log10(truths["stellar_mass"]))
    plt.close(fig)


def test_marginals_plot_shows_each_distribution(bank):
    best = match_parameters(bank, Matches(np.ones(20), np.arange(20), np.zeros(20, int)))
    random = match_parameters(bank, Matches(np.ones(20), np.arange(20, 40), np.ones(20, int)))
    fig = plot_marginals(
        {"best 20": best, "random 20": random},
        prior_parameters(bank),
        parameters=["stellar_mass", "age"],
        truths={"stellar_mass": 1.0},
    )
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["prior (bank)", "best 20", "random 20", "truth"]
    plt.close(fig)


def test_gallery_titles_each_match_with_its_similarity(bank):
    images = bank.load_images([1, 2, 3])[:, 0]
    fig = plot_gallery(images[0], images[1:], np.array([0.987, 0.955]), captions=["system 2", "system 3"], n_columns=4)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["target", "#1  s = 0.987\nsystem 2", "#2  s = 0.955\nsystem 3"]
    assert fig.axes[0].images[0].origin == "lower"
    plt.close(fig)


def test_explorer_shows_a_static_view_without_a_frontend_and_a_live_widget_with_one(bank, monkeypatch):
    from match_helpers import ProjectionEmbedder

    from protolib import explorer
    from protolib.explorer import bank_target, match_explorer
    from protolib.matching import Matcher

    matcher = Matcher.from_embed_function(ProjectionEmbedder(), bank, progress=False)
    targets = [bank_target(matcher, 2, k_max=60), bank_target(matcher, 11, 3, k_max=60)]
    monkeypatch.setenv("PROTOLIB_INTERACTIVE", "0")
    figures = match_explorer(bank, targets, parameters=["stellar_mass", "disk_radius"], k=30)
    assert len(figures) == 2 and figures[0].axes[0].get_title() == "bank system 2 (projection 0)"
    assert len(figures[1].axes) == 4
    monkeypatch.setenv("PROTOLIB_INTERACTIVE", "1")
    drawn = []
    monkeypatch.setattr(
        explorer,
        "plot_corner",
        lambda samples, *a, **k: (
            drawn.append((len(samples["stellar_mass"]), k["truths"]["stellar_mass"], k["parameters"])) or plt.figure()
        ),
    )
    widget = match_explorer(bank, targets, parameters=["stellar_mass"], k=30)
    choice, k_slider = widget.children[0].children[0].children
    k_slider.value = 12
    choice.value = 1
    assert drawn[0][0] == 30 and len(drawn[0][2]) == 2
    assert drawn[-1][:2] == (12, bank.parameters["stellar_mass"][11])
    plt.close("all")


def test_truth_coverage_counts_truths_inside_the_ranges(bank):
    own = {s: Matches(np.ones(4), np.full(4, s), np.arange(4)) for s in range(5)}
    others = {s: Matches(np.ones(4), np.full(4, (s + 1) % 5), np.arange(4)) for s in range(5)}
    [own_mass] = truth_coverage(bank, own, parameters=["stellar_mass"])
    [other_mass] = truth_coverage(bank, others, parameters=["stellar_mass"])
    assert own_mass["within_68"] == 1.0 and own_mass["n_targets"] == 5
    assert other_mass["within_95"] == 0.0


def test_a_corner_plot_leaves_out_a_parameter_the_bank_does_not_know():
    """An imported thesis bank has no inclinations (NaN): its corner plot shows the other parameters, never fails on
    NaN limits."""
    import matplotlib

    matplotlib.use("Agg")
    from protolib.plots.corner import plot_corner

    rng = np.random.default_rng(0)
    prior = {
        "stellar_mass": 10 ** rng.uniform(-1, 0.5, 200),
        "disk_radius": 10 ** rng.uniform(1, 2.5, 200),
        "inclination": np.full(200, np.nan),
    }
    samples = {name: values[:20] for name, values in prior.items()}
    fig = plot_corner(samples, prior, parameters=["stellar_mass", "disk_radius", "inclination"])
    labels = " ".join(ax.get_xlabel() for ax in fig.axes)
    assert "inclination" not in labels and len(fig.axes) == 4


def test_the_summary_table_keeps_its_columns_in_line_with_a_long_parameter_name():
    rows = [
        ParameterSummary(name, "1", False, 0.7, 0.5, 0.9, 0.4, 1.0, 0.2, 0.9, 200, 1.0, 0.6)
        for name in ("age", "midplane_temperature_ratio")
    ]
    header, *lines = format_summary(rows).splitlines()
    assert {line.index("0.7") for line in lines} == {header.index("median") + len("median") - len("0.7")}
    assert lines[1].startswith("disk midplane over surface temperature ") and "_" not in "".join(lines)  # in words
