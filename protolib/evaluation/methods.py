"""Matching methods: one interface, an embedding function and how its embeddings compare.

Every method (random matches, pixels with a chi-square on the noise, PCA, the autoencoder's latent
space, the Siamese network) embeds images as vectors, and a :class:`Comparison` says how two vectors
compare: :data:`COSINE`, :data:`EUCLIDEAN`, or :data:`DRAWS_SAMPLES` for a neural posterior estimate,
which ranks nothing. Every method that ranks is searched with the same
:class:`~protolib.matching.EmbeddingIndex` (:func:`~protolib.evaluation.ranking.rank_targets`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..bank import Bank
from ..matching import EmbedFunction
from ..runtime import ProtolibInputError, interruptible
from .settings import NPE_METHODS, EvaluationSettings

__all__ = [
    "Comparison",
    "Cosine",
    "Euclidean",
    "DrawsSamples",
    "COSINE",
    "EUCLIDEAN",
    "DRAWS_SAMPLES",
    "MatchingMethod",
    "random_method",
    "pixel_method",
    "pca_method",
    "autoencoder_method",
    "siamese_method",
    "baseline_methods",
]


class Comparison:
    """How a method's embeddings compare: the similarity an inner-product search ranks by.

    Attributes:
        name: as ``metrics.json`` writes it (its ``metric``).
        unit_norm: whether the vectors are L2-normalised before the search.
        on_target_scale: whether the similarity is on the target similarity's scale (0 to 1), so that
            its mean-squared error against it, and the fraction within 0.1, mean something.
        ranks: whether the method ranks bank images at all.
    """

    name = ""
    unit_norm = False
    on_target_scale = False
    ranks = True

    def searchable(self, queries: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Queries ``(Q, D)`` and reference vectors ``(R, D)`` as an inner-product search takes them.

        Returns:
            ``(queries, reference, shift)``: the similarity is ``queries @ reference.T + shift[:, None]``.
        """
        return queries, reference, np.zeros(len(queries), dtype=np.float32)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Cosine(Comparison):
    """The cosine of unit vectors, on the target similarity's scale (the Siamese network is taught it)."""

    name = "cosine"
    unit_norm = True
    on_target_scale = True


class Euclidean(Comparison):
    """``-|a - b|^2 / 2``: for pixels scaled by the noise, ``-chi^2 / 2``."""

    name = "euclidean"

    def searchable(self, queries: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``-|q - b|^2 / 2 = q.b - |b|^2 / 2 - |q|^2 / 2``: an inner product on augmented vectors, and a shift."""
        centre = reference.mean(0)  # distances do not change; float32 products lose less
        queries, reference = queries - centre, reference - centre
        reference = np.c_[reference, -0.5 * (reference**2).sum(1)]
        return np.c_[queries, np.ones(len(queries), dtype=np.float32)], reference, -0.5 * (queries**2).sum(1)


class DrawsSamples(Comparison):
    """A neural posterior estimate (:mod:`protolib.npe`): it draws samples of the parameters and ranks nothing."""

    name = "posterior"
    ranks = False


COSINE, EUCLIDEAN, DRAWS_SAMPLES = Cosine(), Euclidean(), DrawsSamples()


@dataclass
class MatchingMethod:
    """One way of ranking bank images for a target (or, for a posterior estimate, of drawing parameters).

    Attributes:
        name: short name (``"siamese"``, ``"pixel"`` ...).
        embed: images ``(N, H, W)`` to vectors ``(N, D)`` (``None`` for a method that ranks nothing).
        comparison: how the vectors compare (:data:`COSINE`, :data:`EUCLIDEAN`, :data:`DRAWS_SAMPLES`).
        description: one line for tables and reports.
    """

    name: str
    embed: EmbedFunction | None
    comparison: Comparison = COSINE
    description: str = ""

    def __post_init__(self):
        if not isinstance(self.comparison, Comparison):
            raise ProtolibInputError(
                "A method's comparison must be a Comparison (COSINE, EUCLIDEAN or DRAWS_SAMPLES), "
                f"got {self.comparison!r}."
            )


def random_method(seed: int = 0) -> MatchingMethod:
    """Random matches (the prior): every image gets a random unit vector, so rankings are random."""
    rng = np.random.default_rng(seed)

    def embed(images: np.ndarray) -> np.ndarray:
        vectors = rng.normal(size=(len(images), 8))
        return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)

    return MatchingMethod("random", embed, COSINE, "random bank images (the prior)")


def pixel_method(noise_rms: float) -> MatchingMethod:
    """Nearest neighbours in pixel space by chi-square: ``sum (a - b)^2 / (2 sigma^2)`` (both images noisy)."""
    if not noise_rms > 0:
        raise ProtolibInputError(f"The pixel chi-square needs a positive noise rms, got {noise_rms}.")
    scale = 1.0 / (math.sqrt(2.0) * noise_rms)
    return MatchingMethod(
        "pixel",
        lambda images: images.reshape(len(images), -1).astype(np.float32) * scale,
        EUCLIDEAN,
        "pixel chi-square on the noise",
    )


def pca_method(train_images: np.ndarray, preprocessing, n_components: int = 32) -> MatchingMethod:
    """Nearest neighbours in the first ``n_components`` principal components of the stretched training images.

    Arguments:
        train_images: ``(N, H, W)`` training images in the bank's unit (the PCA is fit on them only).
        preprocessing: the networks' :class:`~protolib.images.ImagePreprocessing` (the same stretch).
        n_components: dimensions kept.
    """

    def stretched(images: np.ndarray) -> np.ndarray:
        pixels, _ = preprocessing(torch.as_tensor(np.ascontiguousarray(images), dtype=torch.float32))
        return pixels.reshape(len(images), -1).numpy().astype(np.float64)

    flat = stretched(train_images)
    mean = flat.mean(0)
    # (H*W, n); tens of seconds on a large bank: stoppable
    basis = interruptible(_principal_axes, flat - mean, n_components)
    return MatchingMethod(
        "pca",
        lambda images: ((stretched(images) - mean) @ basis).astype(np.float32),
        EUCLIDEAN,
        f"PCA of the stretched images ({basis.shape[1]} components)",
    )


def _principal_axes(centred: np.ndarray, n_components: int) -> np.ndarray:
    """The first ``n_components`` principal axes ``(D, n)`` of the rows of ``centred`` ``(N, D)`` (numpy's SVD)."""
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return np.ascontiguousarray(vt[:n_components].T)


def autoencoder_method(autoencoder, train_images: np.ndarray) -> MatchingMethod:
    """Nearest neighbours in the autoencoder's latent space, each dimension scaled to unit spread on training images."""
    latents = autoencoder.encode_images(train_images)
    mean, spread = latents.mean(0), latents.std(0) + 1e-8
    return MatchingMethod(
        "autoencoder",
        lambda images: ((autoencoder.encode_images(images) - mean) / spread).astype(np.float32),
        EUCLIDEAN,
        "autoencoder latent (standardised)",
    )


def siamese_method(model) -> MatchingMethod:
    """The Siamese network: cosine of its unit embeddings."""
    return MatchingMethod("siamese", lambda images: model.embed_images(images), COSINE, "Siamese network (WSML)")


def baseline_methods(
    model, bank: Bank, train_systems: np.ndarray, settings: EvaluationSettings
) -> list[MatchingMethod]:
    """The methods named in ``settings.methods``, built for a trained Siamese ``model`` and its bank.

    The autoencoder baseline uses the autoencoder the network was trained from; it is left out,
    with a warning, when that file is gone.
    """
    from ..autoencoder import load_autoencoder

    train_images = bank.load_images(train_systems).reshape(-1, bank.image_size, bank.image_size)
    methods = []
    for name in settings.methods:
        if name == "random":
            methods.append(random_method(settings.seed))
        elif name == "pixel":
            methods.append(pixel_method(bank.instrument.noise_rms_jy_beam or float(np.std(train_images))))
        elif name == "pca":
            methods.append(pca_method(train_images, model.preprocessing, settings.pca_components))
        elif name in NPE_METHODS:
            continue  # not a matching method: see protolib.npe.npe_evaluation
        elif name == "autoencoder":
            path = Path(model.checkpoint.get("autoencoder", ""))
            if not path.is_file():
                warnings.warn(
                    f"The autoencoder {path} the network was trained from is gone; its baseline is left out.",
                    stacklevel=2,
                )
                continue
            methods.append(autoencoder_method(load_autoencoder(path, model.device), train_images))
        else:
            methods.append(siamese_method(model))
    return methods
