"""The metric-learning losses against calculations by hand on points of a unit circle."""

import math

import pytest
import torch

from protolib.losses import ContrastiveLoss, LogRatioLoss, SimilarityMSELoss, make_loss
from protolib.pairs import all_pairs

# Three unit embeddings at 0, 60 and 180 degrees: cosines 0.5 (0-1), -1 (0-2), -0.5 (1-2).
ANGLES = torch.tensor([0.0, 60.0, 180.0]) * math.pi / 180
EMBEDDINGS = torch.stack([torch.cos(ANGLES), torch.sin(ANGLES)], 1)
TARGET = torch.tensor([[1.0, 0.8, -0.5], [0.8, 1.0, 0.0], [-0.5, 0.0, 1.0]])


def pair_values():
    similarity = EMBEDDINGS @ EMBEDDINGS.T
    i, j = all_pairs(3)
    return similarity[i, j], TARGET[i, j]


def test_pairs_of_the_circle_are_the_listed_cosines():
    similarity, target = pair_values()
    assert torch.allclose(similarity, torch.tensor([0.5, -1.0, -0.5]), atol=1e-6)
    assert torch.allclose(target, torch.tensor([0.8, -0.5, 0.0]))


def test_contrastive_loss_matches_hand_calculation():
    # d = (1 - cos)/2 = 0.25, 1.0, 0.75; t = (1 + s)/2 = 0.9, 0.25, 0.5; margin 0.5
    # pair 0-1: 0.9 * 0.25^2 + 0.1 * (0.5 - 0.25)^2 = 0.0625
    # pair 0-2: 0.25 * 1.0^2 + 0.75 * 0              = 0.25
    # pair 1-2: 0.5 * 0.75^2 + 0.5 * 0               = 0.28125
    expected = (0.0625 + 0.25 + 0.28125) / 3
    assert ContrastiveLoss(margin=0.5)(*pair_values()).item() == pytest.approx(expected, abs=1e-6)


def test_contrastive_loss_pushes_dissimilar_pairs_only_inside_the_margin():
    loss = ContrastiveLoss(margin=0.5)
    # target -1 (t = 0): no cost beyond the margin (d = 0.75), cost (0.5 - 0.25)^2 inside it (d = 0.25)
    assert loss(torch.tensor([-0.5]), torch.tensor([-1.0])).item() == pytest.approx(0.0)
    assert loss(torch.tensor([0.5]), torch.tensor([-1.0])).item() == pytest.approx(0.0625)


def test_mse_loss_matches_hand_calculation():
    expected = ((0.5 - 0.8) ** 2 + (-1.0 + 0.5) ** 2 + (-0.5 - 0.0) ** 2) / 3
    assert SimilarityMSELoss()(*pair_values()).item() == pytest.approx(expected, abs=1e-6)


def test_log_ratio_loss_matches_hand_calculation_over_every_triplet():
    e = 1e-3
    d = {(0, 1): 0.5, (0, 2): 2.0, (1, 2): 1.5}  # 1 - cos
    lab = {(0, 1): 0.2, (0, 2): 1.5, (1, 2): 1.0}  # 1 - target

    def key(a, b):
        return (min(a, b), max(a, b))

    terms = []
    for anchor, i, j in [(0, 1, 2), (1, 0, 2), (2, 0, 1)]:
        predicted = math.log((d[key(anchor, i)] + e) / (d[key(anchor, j)] + e))
        labelled = math.log((lab[key(anchor, i)] + e) / (lab[key(anchor, j)] + e))
        terms.append((predicted - labelled) ** 2)
    similarity = EMBEDDINGS @ EMBEDDINGS.T
    assert LogRatioLoss(epsilon=e)(similarity, TARGET).item() == pytest.approx(sum(terms) / 3, rel=1e-5)


def test_log_ratio_loss_is_zero_when_distances_are_proportional_to_label_distances():
    similarity = EMBEDDINGS @ EMBEDDINGS.T
    target = 1.0 - 0.5 * (1.0 - similarity)  # label distance = half the embedding distance
    assert LogRatioLoss(epsilon=0.0)(similarity, target).item() == pytest.approx(0.0, abs=1e-8)


def test_losses_give_gradients_and_unknown_kind_is_refused():
    embeddings = EMBEDDINGS.clone().requires_grad_(True)
    similarity = embeddings @ embeddings.T
    i, j = all_pairs(3)
    for kind in ("contrastive", "mse"):
        loss = make_loss(kind, margin=0.5)(similarity[i, j], TARGET[i, j])
        assert torch.autograd.grad(loss, embeddings, retain_graph=True)[0].abs().sum() > 0
    with pytest.raises(ValueError, match="Loss must be one of"):
        make_loss("triplet")
