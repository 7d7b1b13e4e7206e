"""Attribution maps: which pixels of two images drive their predicted similarity (integrated gradients).

The attributions are taken with respect to the pixels **as the network sees them**: each image after
the per-image brightness stretch of its :class:`~protolib.images.ImagePreprocessing`, with its log
total flux (the network's second input) held at the image's own value. The stretch is invariant to
scaling the image, so attributions with respect to the raw fluxes along a path from a dark image
would miss the stretch's jump at zero; in stretched pixels the path is smooth and completeness holds:
the attributions of both images sum to the similarity of the pair minus that of two black images.

References:
    Sundararajan, Taly & Yan (2017), "Axiomatic attribution for deep networks", ICML.
    Adebayo et al. (2018), "Sanity checks for saliency maps", NeurIPS.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from .goodness_of_fit import DETECTION_SIGMA
from .runtime import ProtolibInputError
from .siamese import SiameseModel

__all__ = [
    "pair_similarity",
    "pair_attributions",
    "randomised_copy",
    "attribution_rank_correlation",
    "randomisation_check_passes",
    "half_weight_radius",
    "pick_pairs",
    "detected_pairs",
    "AttributionSettings",
    "MAX_STEPS",
    "RANDOMISATION_LIMIT",
]

# The sanity check passes when the median rank correlation of |attribution| between the trained and a
# randomised network is below this: the trained maps order the pixels differently (1: identically).
RANDOMISATION_LIMIT = 0.75


def _network_inputs(model: SiameseModel, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    image = np.asarray(image, dtype=np.float32)
    size = model.checkpoint["image_size"]
    if image.shape != (size, size):
        raise ProtolibInputError(f"Expected an image of shape ({size}, {size}), got {image.shape}.")
    return model.preprocessing(torch.as_tensor(image, device=model.device)[None])  # (1, 1, H, W), (1, 1)


def pair_similarity(
    model: SiameseModel, pixels_a: torch.Tensor, pixels_b: torch.Tensor, flux_a: torch.Tensor, flux_b: torch.Tensor
) -> torch.Tensor:
    """Differentiable predicted similarity ``(N,)`` of stretched pixels ``(N, 1, H, W)`` with log fluxes ``(N, 1)``."""
    return (model.network(pixels_a, flux_a) * model.network(pixels_b, flux_b)).sum(1)


def pair_attributions(
    model: SiameseModel, image_a: np.ndarray, image_b: np.ndarray, *, steps: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Integrated gradients of the predicted similarity of two images with respect to both images' pixels.

    Arguments:
        model: a trained (or randomised) Siamese model.
        image_a, image_b: images ``(H, W)`` in the bank's unit, rows north and columns west.
        steps: points of the path integral from black images to the stretched images.

    Returns:
        ``(map_a, map_b)``, each ``(H, W)`` float64: a pixel's contribution to the similarity (positive:
        it makes the two images look alike to the network). Together they sum to
        ``similarity(a, b) - similarity(black, black)`` up to the integration error.

    Example:
        >>> map_a, map_b = pair_attributions(model, bank.images[3, 0], bank.images[7, 1])  # doctest: +SKIP
    """
    pixels_a, flux_a = _network_inputs(model, image_a)
    pixels_b, flux_b = _network_inputs(model, image_b)
    was_training = model.network.training
    model.network.eval()
    from captum.attr import IntegratedGradients  # imported here: captum pulls in matplotlib (0.4 s per process)

    method = IntegratedGradients(
        lambda a, b: pair_similarity(model, a, b, flux_a.expand(len(a), 1), flux_b.expand(len(b), 1))
    )
    map_a, map_b = method.attribute(
        (pixels_a, pixels_b), baselines=(torch.zeros_like(pixels_a), torch.zeros_like(pixels_b)), n_steps=steps
    )
    model.network.train(was_training)
    return map_a[0, 0].detach().cpu().double().numpy(), map_b[0, 0].detach().cpu().double().numpy()


def randomised_copy(model: SiameseModel, seed: int) -> SiameseModel:
    """The same architecture and preprocessing with every layer's weights re-initialised (the sanity check's control).

    Arguments:
        model: a trained Siamese model; it is left unchanged.
        seed: seed of the re-initialisation.

    Returns:
        A new :class:`~protolib.siamese.SiameseModel` whose attribution maps should differ from ``model``'s
        (Adebayo et al. 2018); if they do not, the maps show the images, not what the network learned.
    """
    network = copy.deepcopy(model.network)
    torch.manual_seed(seed)
    for module in network.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return SiameseModel(network, model.preprocessing, model.checkpoint, model.device)


def attribution_rank_correlation(map_one: np.ndarray, map_two: np.ndarray) -> float:
    """Spearman rank correlation of ``|map_one|`` and ``|map_two|`` over pixels (the sanity checks' measure)."""
    from scipy.stats import spearmanr  # imported here: scipy.stats costs 0.5 s per process

    return float(spearmanr(np.abs(map_one).ravel(), np.abs(map_two).ravel()).statistic)


def randomisation_check_passes(rank_correlations) -> bool:
    """Whether attribution maps pass the randomisation sanity check (Adebayo et al. 2018).

    Arguments:
        rank_correlations: :func:`attribution_rank_correlation` of the trained and the randomised
            network's maps, one per pair.

    Returns:
        ``True`` when their median is below :data:`RANDOMISATION_LIMIT`: the maps depend on what the
        network learnt, not only on the images.
    """
    return bool(np.median(np.asarray(list(rank_correlations), dtype=float)) < RANDOMISATION_LIMIT)


def half_weight_radius(weight: np.ndarray, pixel_size_au: float) -> float:
    """The radius [au] about the image centre within which half of ``weight`` ``(H, W)`` (non-negative) lies.

    For a uniform map over a square field of half-width ``L`` this is about ``L sqrt(2 / pi)``, 0.8 ``L``:
    the reference for an attribution map, whose value near it says the network uses the whole field.
    """
    weight = np.asarray(weight, dtype=float)
    rows, columns = weight.shape
    y, x = np.meshgrid(
        (np.arange(rows) - (rows - 1) / 2) * pixel_size_au,
        (np.arange(columns) - (columns - 1) / 2) * pixel_size_au,
        indexing="ij",
    )
    radius, flat = np.hypot(x, y).ravel(), weight.ravel()
    order = np.argsort(radius, kind="stable")
    return float(radius[order][np.searchsorted(np.cumsum(flat[order]), flat.sum() / 2)])


def pick_pairs(predicted: np.ndarray, target: np.ndarray) -> dict[str, int]:
    """Indices of the pairs whose predicted similarity is closest to, at the median distance from, and furthest from
    the target."""
    order = np.argsort(np.abs(np.asarray(predicted) - np.asarray(target)), kind="stable")
    return {"best": int(order[0]), "middle": int(order[len(order) // 2]), "worst": int(order[-1])}


def detected_pairs(held_out: dict, noise_rms_jy_beam: float, threshold: float = DETECTION_SIGMA) -> np.ndarray:
    """The rows of :func:`~protolib.siamese.evaluate_similarity`'s pairs that join two different systems whose images
    both hold a source: a brightest pixel at least ``threshold`` times ``noise_rms_jy_beam`` (the bank's noise; 0: a
    noiseless bank, every image counts).

    A bank keeps systems too faint for its noise, as the sky holds them; their images are noise alone, and an
    attribution map of noise spreads over the whole field like a uniform map, so pairs with them would say nothing
    about where the network looks for a source.
    """
    images = np.asarray(held_out["images"])
    peaks = images.reshape(len(images), -1).max(axis=1)
    seen = peaks >= threshold * noise_rms_jy_beam if noise_rms_jy_beam > 0 else np.ones(len(images), dtype=bool)
    first, second, system = held_out["first"], held_out["second"], held_out["system"]
    return np.flatnonzero((system[first] != system[second]) & seen[first] & seen[second])


MAX_STEPS = 4096  # integrated-gradient steps: more is no better, and costs memory in proportion


@dataclass
class AttributionSettings:
    """The ``attribution:`` section: how ``protolib attribute`` draws its maps."""

    steps: int = 32  # steps of the integrated-gradients path from a black image (1 to MAX_STEPS)
    seed: int = 0  # seed of the randomised network and of the test-system subset
    device: str | None = "cpu"  # where attributions are computed ("cpu", "cuda", ...; None: CUDA when present)
