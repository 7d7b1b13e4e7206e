"""Target similarities from normalised parameters, and the pairs a batch compares."""

import numpy as np
import pytest
import torch

from protolib.pairs import all_pairs, sample_fixed_pairs
from protolib.target_similarity import TargetDefinition, pairwise_target_similarity, target_similarity

TWO = ["stellar_mass", "disk_radius"]


def test_cosine_target_calls_11_and_22_identical_but_the_kernel_does_not():
    a, b = np.array([[1.0, 1.0]]), np.array([[2.0, 2.0]])
    cosine = target_similarity(a, b, TargetDefinition(kind="cosine", parameters=TWO))
    kernel = target_similarity(a, b, TargetDefinition(kind="kernel", parameters=TWO, sigma=1.0))
    assert cosine[0] == pytest.approx(1.0)
    assert kernel[0] == pytest.approx(np.exp(-0.5))  # mean squared difference 1, sigma 1


def test_kernel_is_one_only_for_identical_parameters_and_falls_with_distance():
    definition = TargetDefinition(kind="kernel", parameters=TWO)
    a = np.zeros((3, 2))
    b = np.array([[0.0, 0.0], [0.5, 0.0], [2.0, 0.0]])
    s = target_similarity(a, b, definition)
    assert s[0] == pytest.approx(1.0) and 1.0 > s[1] > s[2] > 0


def test_weights_select_the_parameters_that_matter():
    a, b = np.array([[0.0, 0.0]]), np.array([[0.0, 3.0]])
    only_mass = TargetDefinition(kind="kernel", parameters=TWO, weights=[1.0, 0.0])
    assert target_similarity(a, b, only_mass)[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="weights"):
        TargetDefinition(parameters=TWO, weights=[1.0])


def test_pairwise_targets_are_symmetric_with_projections_of_one_system_as_positives():
    z = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, -1.0], [2.0, 0.5]])  # rows 0 and 1: one system
    for kind in ("cosine", "kernel"):
        matrix = pairwise_target_similarity(z, TargetDefinition(kind=kind, parameters=TWO))
        assert matrix.shape == (4, 4)
        assert torch.allclose(matrix, matrix.T)
        assert matrix[0, 1].item() == pytest.approx(1.0)


def test_all_pairs_lists_every_unordered_pair_once():
    i, j = all_pairs(5)
    pairs = set(zip(i.tolist(), j.tolist()))
    assert len(i) == 5 * 4 // 2 == len(pairs)
    assert pairs == {(a, b) for a in range(5) for b in range(a + 1, 5)}


def test_fixed_pairs_are_a_reproducible_fraction_of_all_pairs():
    pairs = sample_fixed_pairs(40, 0.1, seed=3)
    assert len(pairs) == round(0.1 * 40 * 39 / 2)
    assert np.all(pairs[:, 0] < pairs[:, 1]) and pairs.max() < 40
    assert len({tuple(p) for p in pairs.tolist()}) == len(pairs)
    assert np.array_equal(pairs, sample_fixed_pairs(40, 0.1, seed=3))
