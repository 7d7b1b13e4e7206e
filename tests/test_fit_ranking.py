"""The distribution's matches chosen by their image-space fit: the better-fitting ones, on the target and on the
references that calibrate its intervals alike, and recorded in ``matches.csv`` and ``report.json``."""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest
from match_helpers import fake_siamese_module, write_bank, write_fake_model

from protolib.bank import Bank
from protolib.cli import main
from protolib.matching import Matches
from protolib.matching.calibration import choose_k_and_widening
from protolib.matching.fit import choose_matches, distribution_weights
from protolib.runtime import ProtolibInputError


def test_the_fit_rules_keep_the_matches_that_fit_when_the_most_similar_fit_worse():
    # a shortlist, most similar first, whose three most similar leave 40-60 times the noise and whose
    # 4th, 7th and 9th reproduce the map
    chi2 = np.array([60.0, 50.0, 40.0, 1.1, 30.0, 25.0, 1.3, 20.0, 1.2, 35.0, 45.0, 55.0])
    keep, weights = choose_matches(chi2, "fit_rank", 3, beams=10.0)
    assert keep.tolist() == [3, 8, 6] and weights is None
    keep, _ = choose_matches(chi2, "similarity", 3, beams=10.0)
    assert keep.tolist() == [0, 1, 2]
    keep, weights = choose_matches(chi2, "fit_cut", None, beams=10.0)  # within 2x the best, at least 10
    assert keep[:3].tolist() == [3, 8, 6] and len(keep) == 10 and set(weights) == {1.0}
    keep, weights = choose_matches(chi2, "fit_weight", None, beams=10.0)
    assert keep[:3].tolist() == [3, 8, 6] and weights[0] == 1.0 and weights[-1] < 1e-100
    with pytest.raises(ProtolibInputError, match="matching.distribution"):
        choose_matches(chi2, "closest", 3, beams=10.0)


def test_fit_weights_are_tempered_by_the_best_fit_and_counted_in_beams():
    # a bank that leaves 50 times the noise at best: a match at 55 is 10% worse, in 20 beams dchi2 = 2
    weights = distribution_weights(np.array([50.0, 55.0]), "fit_weight", beams=20.0)
    assert weights[1] == pytest.approx(np.exp(-1.0))
    # within the noise the noise is not inflated
    weights = distribution_weights(np.array([0.5, 1.5]), "fit_weight", beams=20.0)
    assert weights[1] == pytest.approx(np.exp(-10.0))


def test_the_calibration_chooses_the_references_matches_by_the_targets_rule(tmp_path):
    """References whose similarity order is useless but whose fit ranks the truly nearest first: calibrated by the fit
    rule, they give the intervals the nearest matches give; summarised by similarity, they would not."""
    with Bank(write_bank(tmp_path / "big.h5", n_systems=120, n_projections=2)) as big:
        physical = list(big.physical_parameters)
        scaled = np.stack(
            [np.log10(big.parameters[n]) if n != "cavity_angle" else big.parameters[n] for n in physical], axis=1
        )
        scaled = (scaled - scaled.mean(0)) / scaled.std(0)
        rows = np.arange(0, 240, 5)  # 48 reference images
        shuffled, chi2, nearest = [], [], []
        for row in rows:
            system = row // 2
            others = np.array([s for s in range(big.n_systems) if s != system])
            order = others[np.random.default_rng(system).permutation(len(others))]  # a useless similarity
            distance = np.linalg.norm(scaled[order] - scaled[system], axis=1)
            shuffled.append(Matches(np.linspace(1, 0, len(order)), order, np.zeros(len(order), dtype=int), system))
            chi2.append(1.0 + distance**2)  # the nearest in parameters fit best
            by_fit = order[np.argsort(distance, kind="stable")]
            nearest.append(Matches(np.linspace(1, 0, len(order)), by_fit, np.zeros(len(order), dtype=int), system))
        candidates = (10, 20, 50, 100)
        by_fit = choose_k_and_widening(big, rows, shuffled, candidates, reference_chi2=chi2, rule="fit_rank")
        assert by_fit == choose_k_and_widening(big, rows, nearest, candidates)  # the rule, applied to the references
        by_similarity = choose_k_and_widening(big, rows, shuffled, candidates)
        assert by_fit[0] == 10 and min(by_similarity[2].values()) > 1.5 * by_fit[2]["10"]
        # a weighting rule weights the references' matches too: its one k, every match searched
        weighted = choose_k_and_widening(big, rows, shuffled, candidates, reference_chi2=chi2, rule="fit_weight")
        assert list(weighted[2]) == ["119"] and weighted[2]["119"] < min(by_similarity[2].values())


def test_matches_csv_and_the_report_record_the_rule_and_how_many_matches_reproduce(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "protolib.siamese", fake_siamese_module())
    with Bank(write_bank(tmp_path / "bank.h5")) as bank:
        path = bank.path
    model = write_fake_model(tmp_path / "siamese.pt")
    import protolib.pipelines.match as pipeline

    calibrated = []  # the rule the references were chosen by, each match

    def calibrate(*args, **kwargs):
        calibrated.append(kwargs.get("rule", "similarity"))
        return choose_k_and_widening(*args, **kwargs)

    monkeypatch.setattr(pipeline, "choose_k_and_widening", calibrate)
    common = ["match", "--model", str(model), "--bank", str(path), "--target-system", "5", "--top-k", "40"]
    found = {}
    for rule in ("similarity", "fit_rank"):
        out = tmp_path / rule
        assert main([*common, "--set", f"matching.distribution={rule}", "--out", str(out)]) == 0
        with open(out / "matches.csv") as table:
            rows = list(csv.DictReader(table))
        found[rule] = rows, json.loads((out / "report.json").read_text())
    assert calibrated == ["similarity", "fit_rank"]  # the references chosen as the target's matches
    rows, report = found["fit_rank"]
    chi2 = [float(r["reduced_chi2"]) for r in rows]
    assert {r["chosen_by"] for r in rows} == {"fit_rank"} and chi2 == sorted(chi2)  # best-fitting first
    assert report["settings"]["distribution_rule"] == "fit_rank" and report["distribution"]["rule"] == "fit_rank"
    assert report["distribution"]["reproducing_matches"] == sum(r["reproduces"] == "True" for r in rows)
    assert f"{report['distribution']['reproducing_matches']} of the distribution's" in report["distribution"]["message"]
    assert report["distribution"]["message"] in capsys.readouterr().out  # said on the console too
    similar_rows, similar = found["similarity"]
    assert [int(r["similarity_rank"]) for r in similar_rows] == list(range(1, len(similar_rows) + 1))
    # the fit rule's matches fit better than the most similar ones
    assert np.median(chi2) <= np.median([float(r["reduced_chi2"]) for r in similar_rows])
    assert similar["distribution"]["best_fit_similarity_rank"] == report["distribution"]["best_fit_similarity_rank"]


@pytest.mark.parametrize("rule", ["fit_rank", "fit_weight"])
def test_a_fit_rule_chooses_each_observing_draws_matches_by_their_fit(tmp_path, monkeypatch, rule):
    """An observation matched at draws of its flux scale: each draw's matches are chosen by their fit to the map as
    that draw prepares it, and the report still says how many of the distribution's matches reproduce the map."""
    from protolib.instrument import Beam
    from protolib.observation import write_observation_fits

    monkeypatch.setitem(sys.modules, "protolib.siamese", fake_siamese_module())
    with Bank(write_bank(tmp_path / "bank.h5")) as bank:
        path, system = bank.path, {name: float(values[3]) for name, values in bank.parameters.items()}
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
    out = tmp_path / "out"
    args = ["match", "--model", str(model), "--bank", str(path), "--target", str(fits_path), "--distance", "150"]
    args += ["--top-k", "30", "--observing-draws", "3", "--set", f"matching.distribution={rule}", "--out", str(out)]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    with open(out / "observing_draws.csv") as table:
        draws = list(csv.DictReader(table))
    assert report["distribution"]["rule"] == rule and report["distribution"]["reproducing_matches"] is not None
    per_draw = [sum(int(r["draw"]) == d for r in draws) for d in range(3)]
    if rule == "fit_rank":  # the same k from each draw
        assert per_draw == [report["settings"]["distribution_k"]] * 3
    else:  # every match of each draw, weighted
        assert per_draw == [30] * 3
