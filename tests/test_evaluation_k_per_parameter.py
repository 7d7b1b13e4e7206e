"""The evaluation's correction with a number of matches chosen per parameter (issue 26: β's intervals at the one k)."""

from types import SimpleNamespace

import numpy as np
import pytest
from conftest import open_small_bank

from protolib.evaluation import (
    EUCLIDEAN,
    EvaluationSettings,
    Ranking,
    Relevance,
    choose_correction,
    evaluate_methods,
    random_method,
    rank_targets,
    score_ranking,
)
from protolib.matching import embed_bank
from protolib.normalise import ParameterNormaliser
from protolib.splits import split_systems
from protolib.target_similarity import TargetDefinition

K_CANDIDATES = [10, 50, 200]


def sharp_and_prior_ranking(seed: int = 3):
    """Matches ranked by closeness to a noisy aim at ``sharp``'s truth, so that ``sharp``'s 10 best matches are honest
    and 200 far too wide; ``prior`` is independent of the ranking, so its matches are prior draws whose central
    intervals are honest only with many of them (10 samples' 95% interval holds the truth about 80% of the time)."""
    rng = np.random.default_rng(seed)
    n_references, n_targets = 2000, 600
    values = {name: rng.uniform(0, 1, n_references + n_targets) for name in ("sharp", "prior")}
    bank = SimpleNamespace(
        n_projections=1,
        physical_parameters=list(values),
        parameters=values,
        parameter_info={n: SimpleNamespace(log_scale=False) for n in values},
    )
    references, targets = np.arange(n_references), np.arange(n_references, n_references + n_targets)
    # the 10 nearest of 2000 uniform references span ±0.0025 about the aim: a spread of 0.0014
    aimed_at = values["sharp"][targets] + rng.normal(0, 0.0014, n_targets)
    distance = np.abs(values["sharp"][references][None, :] - aimed_at[:, None])
    zeros = np.zeros(n_targets, dtype=int)
    order = np.argsort(distance, axis=1)
    ranking = Ranking(
        "toy",
        EUCLIDEAN,
        targets,
        zeros,
        references,
        np.zeros(n_references, dtype=int),
        order,
        -np.take_along_axis(distance, order, axis=1),
        np.zeros((n_targets, n_references)),
    )
    return ranking, bank


@pytest.mark.parametrize("widenings", [(1.0,), (1.0, 1.25, 1.6, 2.0)])
def test_each_parameter_gets_its_own_k_and_the_one_k_choice_does_not_move(widenings):
    ranking, bank = sharp_and_prior_ranking()
    k, widening, scores = choose_correction(ranking, bank, K_CANDIDATES, widenings, parameters=["sharp", "prior"])
    own, own_widening, own_scores = choose_correction(
        ranking, bank, K_CANDIDATES, widenings, parameters=["sharp", "prior"], k_per_parameter=True
    )
    # the sharp parameter's best matches are few, the prior-like one's many; unwidened, the one k is the many
    assert own["sharp"] == 10 and own["prior"] > 10
    if widenings == (1.0,):
        assert own["prior"] == 200 and k == 200
    assert own_scores["per_parameter"]["sharp"]["k=10"] < own_scores["per_parameter"]["sharp"]["k=200"]
    assert own_scores["per_parameter"]["prior"][f"k={own['prior']}"] < own_scores["per_parameter"]["prior"]["k=10"]
    # the one-k result is the same with or without the option
    assert own_scores["single_k"] == k and own_scores["single_k_widening"] == widening
    assert {key: own_scores[key] for key in scores} == scores
    at_own_k = {name: choose_correction(ranking, bank, [own[name]], widenings, parameters=[name]) for name in own}
    assert own_widening == {name: at_own_k[name][1][name] for name in own}


@pytest.fixture(scope="module")
def small_bank(tmp_path_factory):
    with open_small_bank(tmp_path_factory, 16, seed=2) as opened:
        yield opened


def test_the_evaluation_scores_each_parameter_at_its_own_k_and_keeps_the_one_k_figures(small_bank):
    names = ["stellar_mass", "disk_radius", "disk_mass"]
    split = split_systems(small_bank.n_systems, (0.5, 0.25, 0.25), seed=0)
    normaliser = ParameterNormaliser(names).fit(small_bank.parameter_table(names)[split.train])
    relevance = Relevance(TargetDefinition(kind="kernel", parameters=names), normaliser)
    settings = EvaluationSettings(top_k=4, k_candidates=[2, 4, 8], widening_candidates=[1.0, 1.5, 2.0])
    # random matches (a method with matches no better than the prior), the same ones in every call
    one_k = evaluate_methods([random_method(0)], small_bank, relevance, split, settings, parameters=names)["random"]
    own = evaluate_methods(
        [random_method(0)], small_bank, relevance, split, settings, parameters=names, k_per_parameter=True
    )["random"]
    assert own.chosen_k == one_k.chosen_k and own.corrected_single_k.metrics == one_k.corrected.metrics
    assert set(own.chosen_k_per_parameter) == set(names) and own.to_json()["chosen_k_per_parameter"]
    method = random_method(0)
    vectors, _, _ = embed_bank(method.embed, small_bank, progress=False, unit_norm=method.comparison.unit_norm)
    ranking = rank_targets(method, vectors, small_bank, relevance, split.test, split.train)
    assert len(set(own.chosen_k_per_parameter.values())) > 1  # seed 0: 4, 8 and 2 matches
    for name, k in own.chosen_k_per_parameter.items():
        alone = score_ranking(ranking, small_bank, relevance, top_k=k, parameters=names, widening=own.chosen_widening)
        assert own.corrected.metrics["parameters"][name] == alone.metrics["parameters"][name]
        assert own.corrected.top_k_per_parameter[name] == k
    # figures over every parameter at once stay at the one k
    assert own.corrected.metrics["retrieval"] == one_k.corrected.metrics["retrieval"]
