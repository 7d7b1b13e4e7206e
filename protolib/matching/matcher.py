"""The matcher: one embedding function (a trained Siamese network) and one bank, searched by nearest neighbours.

:class:`Matcher` embeds the bank once (or reads its cache), then matches target images or bank
systems, judges them (:meth:`Matcher.check`) and, for the benchmark, matches pairwise the thesis's way.
:class:`MatchingSettings` is the ``matching:`` section of a run configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..bank import Bank
from ..runtime import ProtolibInputError
from .baselines import pairwise_matches
from .embeddings import BankEmbeddings, EmbedFunction, ImageTransform, bank_embeddings, cached_bank_embeddings, file_sha256
from .index import EmbeddingIndex
from .matches import Matches
from .ood import OutOfDistributionCheck, check_out_of_distribution

__all__ = ["MatchingSettings", "Matcher"]


@dataclass
class MatchingSettings:
    """The ``matching:`` section of a run configuration."""

    top_k: int = 200  # best matches kept per target
    n_random: int = 200  # random bank images drawn for the random-match comparison
    backend: str = "auto"  # "exact", "faiss" or "auto" (FAISS for banks of millions of images)
    weight_temperature: float | None = None  # weight matches by exp((s - s_best) / T); None: equal weights
    limit_percentile: float = 5.0  # out of distribution below this percentile of bank images' own best similarity


class Matcher:
    """Match target images to one bank with one embedding function (a trained Siamese network).

    Arguments:
        embed: images ``(N, H, W)`` to L2-normalised embeddings ``(N, D)``.
        bank: the bank to search.
        embeddings: the bank's embeddings under ``embed`` (see :func:`bank_embeddings`).
        backend, faiss_factory, faiss_parameters, device: how to search (see :class:`EmbeddingIndex`).
        similarity: the network's pairwise similarity, kept for :meth:`pairwise` (optional).
        image_size: the image size the embedding function expects (checked against targets).
        checkpoint: the model checkpoint, when made with :meth:`from_model`.
        transform: the transform the bank images were embedded through, if any (for :meth:`pairwise`).

    Example:
        >>> matcher = Matcher.from_model("artifacts/default/siamese.pt", bank)     # doctest: +SKIP
        >>> matches = matcher.match_system(12, top_k=200)
        >>> matcher.check(matches).message
    """

    def __init__(
        self,
        embed: EmbedFunction,
        bank: Bank,
        embeddings: BankEmbeddings,
        *,
        backend: str = "auto",
        faiss_factory: str = "Flat",
        faiss_parameters: str = "",
        device: str | torch.device | None = None,
        similarity: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
        image_size: int | None = None,
        checkpoint: dict | None = None,
        transform: ImageTransform | None = None,
    ):
        self.embed_images = embed
        self.transform = transform
        self.bank = bank
        self.embeddings = embeddings
        self.similarity = similarity
        self.image_size = image_size or bank.image_size
        self.checkpoint = checkpoint or {}
        self.index = EmbeddingIndex(embeddings.vectors, embeddings.system, embeddings.projection,
                                    backend=backend, faiss_factory=faiss_factory, faiss_parameters=faiss_parameters, device=device)

    @classmethod
    def from_embed_function(
        cls,
        embed: EmbedFunction,
        bank: Bank,
        *,
        cache_path: str | Path | None = None,
        key: dict | None = None,
        transform: ImageTransform | None = None,
        batch_size: int = 256,
        progress: bool = True,
        **options,
    ) -> "Matcher":
        """A matcher for any embedding function, the bank embedded (or read from ``cache_path``)."""
        embeddings = bank_embeddings(embed, bank, cache_path=cache_path, key=key, transform=transform,
                                     batch_size=batch_size, progress=progress)
        return cls(embed, bank, embeddings, transform=transform, **options)

    @classmethod
    def from_model(
        cls,
        model_path: str | Path,
        bank: Bank,
        *,
        transform: ImageTransform | None = None,
        transform_key: dict | None = None,
        cache: bool = True,
        batch_size: int = 256,
        progress: bool = True,
        **options,
    ) -> "Matcher":
        """A matcher for a trained Siamese network saved at ``model_path``.

        The bank's embeddings are cached beside the model (``<model>.embeddings-<hash>.npz``),
        keyed by the model file's content, the bank and ``transform_key`` (describe ``transform``
        there, e.g. the observation's beam and noise, so another transform recomputes).

        Raises:
            ProtolibInputError: the model file is missing or unreadable, or it was trained on
                images of another size than the bank's.
        """
        model_path = Path(model_path)
        model, checkpoint, model_size = _load_siamese_for(model_path, bank)
        if transform is not None and transform_key is None:
            raise ProtolibInputError("Describe the bank transform in transform_key (plain data), so its embeddings are cached apart.")
        key = {"model_sha256": file_sha256(model_path), "transform": transform_key}

        def embed(images: np.ndarray) -> np.ndarray:
            return model.embed_images(images, batch_size=batch_size, progress=False)

        embeddings = cached_bank_embeddings(embed, bank, model_path, key=key, transform=transform, cache=cache,
                                            batch_size=batch_size, progress=progress)
        return cls(embed, bank, embeddings, similarity=getattr(model, "similarity", None),
                   image_size=int(model_size) if model_size else None, checkpoint=checkpoint, transform=transform, **options)

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Embeddings ``(N, D)`` of target images ``(N, H, W)`` (or one ``(H, W)``)."""
        images = np.asarray(images, dtype=np.float32)
        images = images[None] if images.ndim == 2 else images
        if images.ndim != 3 or images.shape[1:] != (self.image_size, self.image_size):
            raise ProtolibInputError(
                f"Target images must be {self.image_size}x{self.image_size} px like the bank's; got shape {images.shape[1:]}. "
                "Prepare observations onto the bank's grid first."
            )
        if not np.all(np.isfinite(images)):
            raise ProtolibInputError("Target image has NaN or infinite pixels; fill or crop them before matching.")
        return np.asarray(self.embed_images(images), dtype=np.float32)

    def match(
        self, image: np.ndarray, *, top_k: int | None = 200, threshold: float | None = None, exclude_system: int | None = None
    ) -> Matches:
        """The best matches of one target image ``(H, W)``: by ``top_k``, ``threshold``, or both."""
        image = np.asarray(image)
        if image.ndim != 2:
            raise ProtolibInputError(f"match() takes one image (H, W); got shape {image.shape}.")
        [found] = self.index.search(self.embed(image), top_k=top_k, threshold=threshold, exclude_systems=[exclude_system])
        return found

    def match_system(
        self, system: int, projection: int = 0, *, top_k: int | None = 200, threshold: float | None = None
    ) -> Matches:
        """The best matches of one bank image, never from its own system (held-out targets)."""
        if not 0 <= system < self.bank.n_systems or not 0 <= projection < self.bank.n_projections:
            raise ProtolibInputError(
                f"Bank {self.bank.path} has systems 0..{self.bank.n_systems - 1} and projections "
                f"0..{self.bank.n_projections - 1}; got system {system}, projection {projection}."
            )
        row = system * self.bank.n_projections + projection
        query = self.embeddings.vectors[row : row + 1]
        [found] = self.index.search(query, top_k=top_k, threshold=threshold, exclude_systems=[system])
        return found

    def check(self, matches: Matches, *, limit_percentile: float = 5.0) -> OutOfDistributionCheck:
        """The out-of-distribution verdict for a target's matches (see :func:`check_out_of_distribution`)."""
        return check_out_of_distribution(matches, self.embeddings.nearest_neighbour_similarity, limit_percentile=limit_percentile)

    def pairwise(self, image: np.ndarray, *, top_k: int = 200, exclude_system: int | None = None, batch_size: int = 256) -> Matches:
        """The thesis's pairwise matching with the network (slow; the benchmark's reference)."""
        if self.similarity is None:
            raise ProtolibInputError("This matcher has no pairwise similarity function (make it with Matcher.from_model).")
        return pairwise_matches(self.similarity, np.asarray(image, dtype=np.float32), self.bank, top_k=top_k,
                                exclude_system=exclude_system, transform=self.transform, batch_size=batch_size)

    def training_part(self, system: int) -> str | None:
        """``"train"``, ``"validation"`` or ``"test"`` when the model was trained on this bank, else ``None``."""
        split = self.checkpoint.get("split")
        trained_on = (self.checkpoint.get("bank") or {})
        if not split or trained_on.get("path") != self.bank.identity["path"] or trained_on.get("created") != self.bank.identity["created"]:
            return None
        for part in ("train", "validation", "test"):
            if system in set(int(s) for s in split.get(part, [])):
                return part
        return None


def _load_siamese_for(model_path: Path, bank: Bank):
    """The Siamese network saved at ``model_path``, its checkpoint and its image size, refused in one line when
    the file is missing or was trained on images of another size than ``bank``'s."""
    from ..siamese import load_siamese

    if not model_path.exists():
        raise ProtolibInputError(f"Model file {model_path} does not exist. Train one with `protolib train-siamese` (notebook 03).")
    model = load_siamese(model_path)
    checkpoint = getattr(model, "checkpoint", {}) or {}
    model_size = checkpoint.get("image_size")
    if model_size is not None and not isinstance(model_size, int):
        raise ProtolibInputError(f"Model {model_path}: its image_size {model_size!r} is not a whole number; the file was edited.")
    if model_size is not None and int(model_size) != bank.image_size:
        raise ProtolibInputError(
            f"Model {model_path} was trained on {model_size}x{model_size} px images but bank {bank.path} has "
            f"{bank.image_size}x{bank.image_size} px images; use a bank made with the model's image size."
        )
    return model, checkpoint, model_size
