"""The statistics on plain arrays, on cases with known answers: percentiles, intervals, coverage, calibration,
nDCG, R^2, SBC ranks and TARP."""

import numpy as np
import pytest

from protolib.runtime import ProtolibInputError
from protolib.statistics import (
    calibrate_widening,
    central_coverage,
    central_intervals,
    coverage_standard_error,
    ndcg_at_k,
    r_squared,
    required_widening,
    tarp_coverage,
    truth_ranks,
    weighted_percentile,
)

COVERAGE_LEVELS = (0.5, 0.68, 0.95)


def gaussian_toy(width: float, n_targets: int = 1500, n_samples: int = 200, dims: int = 2, seed: int = 0):
    """Truths drawn around each target's mean with unit spread; samples with ``width`` (1: calibrated)."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(0, 3, size=(n_targets, dims))
    truths = mean + rng.normal(size=(n_targets, dims))
    samples = mean[:, None, :] + width * rng.normal(size=(n_targets, n_samples, dims))
    return samples, truths


def test_ndcg_is_one_for_the_ideal_order_and_at_chance_for_random_orders():
    rng = np.random.default_rng(0)
    relevance = rng.uniform(size=(400, 50))
    ideal = -np.sort(-relevance, axis=1)
    assert np.allclose(ndcg_at_k(ideal, relevance, 10), 1.0)
    shuffled = np.stack([rng.permutation(r) for r in relevance])
    chance = (
        relevance.mean(1) * (1 / np.log2(np.arange(2, 12))).sum() / (ideal[:, :10] / np.log2(np.arange(2, 12))).sum(1)
    )
    assert ndcg_at_k(shuffled, relevance, 10).mean() == pytest.approx(chance.mean(), abs=0.02)
    assert ndcg_at_k(ideal[:, ::-1], relevance, 10).mean() < 0.2


def test_r_squared_is_one_for_the_truth_and_zero_for_its_mean():
    truth = np.random.default_rng(1).normal(size=100)
    assert r_squared(truth, truth) == 1.0
    assert r_squared(np.full(100, truth.mean()), truth) == pytest.approx(0.0, abs=1e-12)


def test_coverage_is_nominal_for_a_calibrated_method_and_for_the_prior_itself():
    samples, truths = gaussian_toy(1.0, dims=1)
    assert central_coverage(samples[..., 0], truths[:, 0]) == pytest.approx([0.5, 0.68, 0.95], abs=0.04)
    overconfident = central_coverage(gaussian_toy(0.3, dims=1)[0][..., 0], truths[:, 0])
    assert np.all(overconfident < np.array([0.5, 0.68, 0.95]) - 0.2)
    widened = central_coverage(gaussian_toy(0.5, dims=1)[0][..., 0], truths[:, 0], widening=2.0)  # the correction
    assert widened == pytest.approx([0.5, 0.68, 0.95], abs=0.04)
    rng = np.random.default_rng(2)  # random matches: samples of the prior, truths from the same prior
    prior_truths, prior_samples = rng.normal(size=1500), rng.normal(size=(1500, 200))
    assert central_coverage(prior_samples, prior_truths) == pytest.approx([0.5, 0.68, 0.95], abs=0.04)


def test_rank_histogram_is_flat_when_calibrated_and_u_shaped_when_overconfident():
    samples, truths = gaussian_toy(1.0, dims=1)
    flat = np.histogram(truth_ranks(samples[..., 0], truths[:, 0]) / 200, bins=10, range=(0, 1 + 1e-9))[0]
    assert flat.min() > 0.7 * flat.mean() and flat.max() < 1.3 * flat.mean()
    narrow = np.histogram(
        truth_ranks(gaussian_toy(0.3, dims=1)[0][..., 0], truths[:, 0]) / 200, bins=10, range=(0, 1 + 1e-9)
    )[0]
    assert narrow[0] + narrow[-1] > 0.5 * narrow.sum()


def test_tarp_follows_the_diagonal_when_calibrated_and_not_when_overconfident():
    alpha, ecp = tarp_coverage(*gaussian_toy(1.0), seed=3)
    assert np.max(np.abs(ecp - alpha)) < 0.05
    alpha, ecp = tarp_coverage(*gaussian_toy(0.3), seed=3)
    assert np.max(np.abs(ecp - alpha)) > 0.2


def test_a_coverage_s_standard_error_counts_systems_not_their_projections():
    """Eight projections of one system share its verdict: the error is that of the systems' number, not the images'."""
    rng = np.random.default_rng(5)
    n_systems, n_projections = 50, 8
    verdict = rng.uniform(size=(n_systems, 2)) < np.array([0.68, 0.95])  # each system covered or not, at two levels
    covered = np.repeat(verdict, n_projections, axis=0)
    systems = np.repeat(np.arange(n_systems), n_projections)
    clustered = coverage_standard_error(covered, systems, seed=1)
    expected = np.sqrt(verdict.mean(0) * (1 - verdict.mean(0)) / n_systems)
    assert clustered == pytest.approx(expected, rel=0.15)
    # every image taken as independent: eight times the targets, a third of the error
    assert coverage_standard_error(covered, None, seed=1) == pytest.approx(expected / np.sqrt(n_projections), rel=0.15)


def test_weighted_percentiles():
    values = np.arange(11.0)
    np.testing.assert_allclose(
        weighted_percentile(values, [10, 50, 90], np.ones(11)), np.percentile(values, [10, 50, 90])
    )
    heavy = np.full(11, 1e-6)
    heavy[8] = 1.0
    assert weighted_percentile(values, [50], heavy)[0] == pytest.approx(8.0, abs=0.01)
    with pytest.raises(ProtolibInputError, match="non-negative"):
        weighted_percentile(values, [50], -np.ones(11))


def test_required_widening_says_at_which_widening_each_target_is_covered():
    rng = np.random.default_rng(0)
    samples = rng.normal(size=(400, 50))
    truths = rng.normal(scale=1.5, size=400)
    needed = required_widening(samples, truths, COVERAGE_LEVELS)
    for widening in (0.5, 1.0, 1.7, 3.0):
        _, low, high = central_intervals(samples, COVERAGE_LEVELS, widening=widening)
        covered = (low <= truths[:, None]) & (truths[:, None] <= high)
        assert np.array_equal(covered, needed <= widening)


def test_calibration_reaches_nominal_with_the_least_widening_and_leaves_honest_intervals():
    """The one rule: the least widening whose 68% and 95% coverage reach nominal within one binomial standard error."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=1000)
    truths = centres + rng.normal(size=1000)
    honest = centres[:, None] + 1.1 * rng.normal(size=(1000, 200))
    narrow = centres[:, None] + 0.5 * rng.normal(size=(1000, 200))
    assert calibrate_widening(honest, truths)["widening"] == 1.0
    result = calibrate_widening(narrow, truths, (1.0, 1.5, 1.8, 1.9, 2.0, 2.2, 2.5, 3.0))
    tolerance = np.sqrt(0.95 * 0.05 / 1000)
    assert result["coverage_68"] >= 0.68 - np.sqrt(0.68 * 0.32 / 1000) and result["coverage_95"] >= 0.95 - tolerance
    below = max(c for c in (1.0, 1.5, 1.8, 1.9, 2.0, 2.2, 2.5, 3.0) if c < result["widening"])
    short = central_coverage(narrow, truths, (0.68, 0.95), widening=below)
    assert short[0] < 0.68 - np.sqrt(0.68 * 0.32 / 1000) or short[1] < 0.95 - tolerance  # the least that reaches it
    assert result["raw_coverage_95"] < 0.75 and result["n_reference"] == 1000
    # none reaches nominal: the largest candidate
    assert calibrate_widening(narrow, truths, (1.0, 1.2))["widening"] == 1.2


def test_calibration_counts_weights():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=600)
    truths = centres + rng.normal(size=600)
    samples = np.concatenate([centres[:, None] + 1.1 * rng.normal(size=(600, 100)), 5 + rng.normal(size=(600, 100))], 1)
    weights = np.concatenate([np.ones((600, 100)), np.full((600, 100), 1e-9)], 1)
    assert calibrate_widening(samples, truths, (1.0, 2.0, 4.0), weights)["widening"] == 1.0
