"""A bank of several bands embedded in a subset of its bands, for a target observed in those bands, and cached.

A joint match of maps in some bands (:func:`~protolib.matching.prepare_band_targets`) compares the
target's embedding in those bands with every bank image embedded in the same bands, each band seen
as its map is (its own :class:`~protolib.matching.ObservationTransform`). The network is one of
several bands (``siamese.model.bands: all``) or a one-band network, which reads its own band and
ignores the others (:meth:`~protolib.siamese.SiameseModel.embed_bands`). The cache beside the model is
keyed by the subset, so matching B6 alone and B3+B6 keep one cache each.

Example:
    >>> targets = prepare_band_targets(paths, bank, distance_pc)                     # doctest: +SKIP
    >>> query = model.embed_bands(targets.images()[None], targets.frequencies_ghz)    # (1, D)
    >>> bank_vectors = band_bank_embeddings(model, bank, model_path, bands_ghz=targets.frequencies_ghz,
    ...                                     key=key, transforms=[t.transform for t in targets.targets])
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..band_siamese import band_positions
from ..bank import Bank
from ..runtime import ProtolibInputError
from .embeddings import BankEmbeddings, EmbedFunction, ImageTransform, apply_transform, cached_bank_embeddings

__all__ = ["band_embedding", "band_transform", "band_embedding_key", "band_bank_embeddings"]


def band_embedding(model, bank_frequencies_ghz: Sequence[float], bands_ghz: Sequence[float]) -> EmbedFunction:
    """The embedding of a whole bank's images ``(N, bank bands, H, W)`` in ``bands_ghz`` alone, by ``model``
    (:meth:`~protolib.siamese.SiameseModel.embed_bands`): what :func:`~protolib.matching.embed_bank` and
    :class:`~protolib.evaluation.MatchingMethod` take."""
    positions = band_positions(list(bank_frequencies_ghz), bands_ghz, "the bank")
    frequencies = [float(bank_frequencies_ghz[p]) for p in positions]

    def embed(images: np.ndarray) -> np.ndarray:
        return model.embed_bands(np.asarray(images)[:, positions], frequencies)

    return embed


class _BandTransform:
    """Each band of a whole bank's images ``(N, bands, H, W)`` seen through its own transform (``None``: as it is)."""

    def __init__(self, transforms: Sequence[ImageTransform | None]):
        self.transforms = list(transforms)
        self.seeded_by_row = any(getattr(t, "seeded_by_row", False) for t in self.transforms if t is not None)

    def __call__(self, images: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        if images.ndim != 4 or images.shape[1] != len(self.transforms):
            raise ProtolibInputError(
                f"A transform of {len(self.transforms)} bands was given images of shape {images.shape}."
            )
        seen = [
            band if transform is None else apply_transform(transform, band, rows)
            for band, transform in zip(np.moveaxis(images, 1, 0), self.transforms)
        ]
        return np.stack([np.asarray(band, dtype=np.float32) for band in seen], axis=1)


def band_transform(
    bank_frequencies_ghz: Sequence[float], bands_ghz: Sequence[float], transforms: Sequence[ImageTransform | None]
) -> ImageTransform:
    """One transform of a whole bank's images ``(N, bank bands, H, W)``: band ``bands_ghz[j]`` through
    ``transforms[j]`` (each a one-band :data:`~protolib.matching.ImageTransform`), the bank's other bands as they
    are (they are not embedded). Seeded by row when any of them is."""
    if len(transforms) != len(bands_ghz):
        raise ProtolibInputError(f"{len(transforms)} transforms were given for {len(bands_ghz)} bands.")
    per_band: list[ImageTransform | None] = [None] * len(bank_frequencies_ghz)
    for position, transform in zip(band_positions(list(bank_frequencies_ghz), bands_ghz, "the bank"), transforms):
        per_band[position] = transform
    return _BandTransform(per_band)


def band_embedding_key(key: dict, bank_frequencies_ghz: Sequence[float], bands_ghz: Sequence[float]) -> dict:
    """``key`` (what identifies the model and transform) with the bank's bands embedded, increasing: the cache of
    each subset is its own."""
    positions = sorted(band_positions(list(bank_frequencies_ghz), bands_ghz, "the bank"))
    return {**key, "bands_ghz": [float(bank_frequencies_ghz[p]) for p in positions]}


def band_bank_embeddings(
    model,
    bank: Bank,
    model_path: Path,
    *,
    bands_ghz: Sequence[float],
    key: dict,
    transforms: Sequence[ImageTransform | None] | None = None,
    cache: bool = True,
    batch_size: int = 256,
    progress: bool = True,
) -> BankEmbeddings:
    """Every image of ``bank`` (opened whole, several bands) embedded by ``model`` in ``bands_ghz`` alone, each band
    seen through its transform in ``transforms`` (``None``: as the bank holds it), cached beside the model under
    ``key`` and the subset (:func:`band_embedding_key`, :func:`~protolib.matching.cached_bank_embeddings`)."""
    frequencies = bank.frequencies_ghz
    transform = None if transforms is None else band_transform(frequencies, bands_ghz, transforms)
    return cached_bank_embeddings(
        band_embedding(model, frequencies, bands_ghz),
        bank,
        Path(model_path),
        key=band_embedding_key(key, frequencies, bands_ghz),
        transform=transform,
        cache=cache,
        batch_size=batch_size,
        progress=progress,
    )
