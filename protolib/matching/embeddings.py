"""The bank's embeddings: every bank image embedded once, and cached on disk beside the model.

:func:`embed_bank` embeds the bank batch by batch (to memory, or to a ``.npy`` file for banks larger
than memory); :func:`bank_embeddings` adds the cache, keyed by what the embeddings were computed from
and checked on reading (:data:`CACHE_FORMAT`, a digest of the contents); :func:`cached_bank_embeddings`
keeps a model's caches beside it, at most :data:`MAX_CACHES` of them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..bank import Bank
from ..runtime import ProtolibInputError, atomic_path
from .ood import nearest_neighbour_similarities

__all__ = [
    "EmbedFunction",
    "ImageTransform",
    "CACHE_FORMAT",
    "MAX_CACHES",
    "BankEmbeddings",
    "embed_bank",
    "bank_embeddings",
    "cached_bank_embeddings",
    "apply_transform",
    "model_cache_path",
    "prune_embedding_caches",
    "key_digest",
    "file_sha256",
]


EmbedFunction = Callable[[np.ndarray], np.ndarray]
"""Images ``(N, H, W)`` to L2-normalised embeddings ``(N, D)`` float32."""

ImageTransform = Callable[..., np.ndarray]
"""Bank images ``(N, H, W)`` to images seen like the target ``(N, H, W)`` (beam, noise, ...). One with a
true ``seeded_by_row`` attribute also takes ``rows=`` (each image's bank row) to seed its noise by row
(:class:`~protolib.matching.ObservationTransform`); :func:`apply_transform` calls either kind."""

# 2: vectors in their own .npy, written batch by batch; 3: a digest of the contents, checked on reading
CACHE_FORMAT = 3
MAX_CACHES = 8  # embedding caches kept beside a model (one per observation transform); the oldest beyond are removed


@dataclass
class BankEmbeddings:
    """Every bank image's embedding, with where it came from.

    Attributes:
        vectors: ``(n_images, D)`` float32, L2-normalised; row ``s * P + p`` is system ``s``, projection ``p``.
        system: ``(n_images,)`` system index of each row.
        projection: ``(n_images,)`` projection index of each row.
        nearest_neighbour_similarity: ``(n_reference,)`` for a random sample of bank images, the best
            similarity to an image of *another* system: what a target typically gets when it is
            like the bank (the out-of-distribution reference).
        key: what the embeddings were computed from (model, bank, transform), as a dict.
        path: the cache file, when there is one.
    """

    vectors: np.ndarray
    system: np.ndarray
    projection: np.ndarray
    nearest_neighbour_similarity: np.ndarray
    key: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def key_hash(self) -> str:
        """SHA-256 (hex) of :attr:`key` (:func:`key_digest`)."""
        return key_digest(self.key)


def key_digest(key: dict) -> str:
    """SHA-256 (hex) of plain JSON data, keys sorted: what identifies a set of embeddings and its cache."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes, read in blocks of 1 MiB (identifies a model by its content)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def embed_bank(
    embed: EmbedFunction,
    bank: Bank,
    *,
    transform: ImageTransform | None = None,
    batch_size: int = 256,
    progress: bool = True,
    out: str | Path | None = None,
    unit_norm: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Embed every image of the bank, reading it in batches of whole systems.

    With ``out``, each batch's embeddings are appended to the ``.npy`` file ``out`` as soon as they
    are computed (written under a temporary name, renamed when complete), so memory holds one batch
    of images and embeddings whatever the bank's size; the vectors returned are then mapped from that
    file (``numpy.load(out, mmap_mode="c")``), not read into memory.

    Arguments:
        embed: images ``(N, H, W)`` to L2-normalised embeddings ``(N, D)``, e.g.
            ``SiameseModel.embed_images``.
        bank: the bank.
        transform: applied to bank images before embedding (e.g. to see them at an observation's
            beam and noise).
        batch_size: images per call of ``embed`` (about).
        progress: show a progress bar.
        out: a ``.npy`` file to write the embeddings to (``None``: keep them in memory).
        unit_norm: check that every embedding has norm 1 (cosine similarity); ``False`` for vectors
            compared otherwise (e.g. the Euclidean baselines of :mod:`protolib.evaluation`).

    Returns:
        ``vectors (n_images, D)`` float32, ``system (n_images,)``, ``projection (n_images,)``.

    Example:
        >>> out = "bank_embeddings.npy"                                                    # doctest: +SKIP
        >>> vectors, system, projection = embed_bank(model.embed_images, bank, out=out)    # doctest: +SKIP
    """
    n, p = bank.n_systems, bank.n_projections
    bar = tqdm(total=n * p, unit="img", desc="Embedding bank", disable=not progress)
    batches = (
        _embedded(
            embed,
            images.reshape(-1, *images.shape[2:]),
            transform,
            bar,
            unit_norm,
            rows=(systems[:, None] * p + np.arange(p)).ravel(),
        )
        for systems, images in bank.iter_batches(np.arange(n), max(1, batch_size // p))
    )
    if out is None:
        vectors = np.concatenate(list(batches))
    else:
        with atomic_path(out) as tmp, open(tmp, "wb") as handle:
            _write_npy(handle, batches, n * p)
        vectors = np.load(out, mmap_mode="c")
    bar.close()
    return vectors, np.repeat(np.arange(n), p), np.tile(np.arange(p), n)


def _embedded(
    embed: EmbedFunction,
    images: np.ndarray,
    transform: ImageTransform | None,
    bar,
    unit_norm: bool = True,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    vectors = np.asarray(
        embed(images if transform is None else apply_transform(transform, images, rows)), dtype=np.float32
    )
    if vectors.ndim != 2 or len(vectors) != len(images):
        raise ProtolibInputError(
            f"The embedding function returned shape {vectors.shape} for {len(images)} images; expected ({len(images)}, "
            "D)."
        )
    norms = np.linalg.norm(vectors, axis=1)
    if not np.all(np.isfinite(norms)) or (unit_norm and np.any(np.abs(norms - 1.0) > 1e-3)):
        raise ProtolibInputError(
            "The embedding function must return finite, L2-normalised embeddings (norm 1 per row)."
        )
    bar.update(len(images))
    return vectors


def apply_transform(transform: ImageTransform, images: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    """``transform(images)``, given the images' bank rows when it seeds its noise by row
    (``transform.seeded_by_row``)."""
    if rows is not None and getattr(transform, "seeded_by_row", False):
        return transform(images, rows=rows)
    return transform(images)


def _write_npy(handle, batches, n_rows: int) -> None:
    """Write ``(n_rows, D)`` float32 to the open file ``handle`` as ``.npy``, batch after batch."""
    written = 0
    for vectors in batches:
        if written == 0:
            header = {
                "descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                "fortran_order": False,
                "shape": (n_rows, vectors.shape[1]),
            }
            np.lib.format.write_array_header_1_0(handle, header)
        handle.write(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
        written += len(vectors)
    if written != n_rows:
        raise ProtolibInputError(f"The embedding function returned {written} embeddings for {n_rows} bank images.")


def bank_embeddings(
    embed: EmbedFunction,
    bank: Bank,
    *,
    cache_path: str | Path | None = None,
    key: dict | None = None,
    transform: ImageTransform | None = None,
    batch_size: int = 256,
    progress: bool = True,
    n_reference: int = 2000,
) -> BankEmbeddings:
    """The bank's embeddings: read from ``cache_path`` when it holds them for ``key``, else computed.

    Computed embeddings are cached, so a second query does not embed the bank again: the vectors
    go to ``<cache stem>.<hash>.npy`` batch by batch while the bank is embedded (:func:`embed_bank`
    with ``out``; a bank of any size needs memory for one batch), then ``cache_path`` (npz) is
    written with the rest (systems, projections, the out-of-distribution reference, the key), both
    atomically. The vectors are mapped from their file, not read into memory. The cache is keyed by
    ``key`` (what identifies the model and the transform) together with the bank's identity: another
    model, bank or transform recomputes.

    Arguments:
        embed: images ``(N, H, W)`` to embeddings ``(N, D)``.
        bank: the bank.
        cache_path: the cache file (``None``: no cache; the vectors stay in memory).
        key: what identifies the embedding function and transform (plain JSON data).
        transform, batch_size, progress: as in :func:`embed_bank`.
        n_reference: bank images sampled for the out-of-distribution reference.
    """
    full_key = {
        "format": CACHE_FORMAT,
        "bank": bank.identity,
        "bank_file": bank.file_state,
        "embedding": key or {},
        "n_reference": n_reference,
    }
    digest = key_digest(full_key)
    if cache_path is not None and Path(cache_path).exists():
        cached = _read_cache(Path(cache_path), digest, bank.n_systems, bank.n_projections)
        if cached is not None:
            cached.key = full_key
            return cached
    vectors_path = None if cache_path is None else _vectors_path(Path(cache_path), digest)
    vectors, system, projection = embed_bank(
        embed, bank, transform=transform, batch_size=batch_size, progress=progress, out=vectors_path
    )
    reference = nearest_neighbour_similarities(vectors, system, projection, n_reference=n_reference)
    result = BankEmbeddings(vectors, system, projection, reference, full_key, Path(cache_path) if cache_path else None)
    if cache_path is not None:
        _write_cache(Path(cache_path), vectors_path, result, digest)
    return result


def _write_cache(cache_path: Path, vectors_path: Path, embeddings: BankEmbeddings, digest: str) -> None:
    """Write ``cache_path`` (npz, atomically) beside the vectors already at ``vectors_path``: systems, projections,
    the out-of-distribution reference, the key and its hash, and the arrays' SHA-256; then remove the vectors of
    earlier keys."""
    vectors, system, projection = embeddings.vectors, embeddings.system, embeddings.projection
    reference = embeddings.nearest_neighbour_similarity
    with atomic_path(cache_path) as tmp, open(tmp, "wb") as handle:
        np.savez(
            handle,
            vectors_file=np.array(vectors_path.name),
            system=system,
            projection=projection,
            nearest_neighbour_similarity=reference,
            key_hash=np.array(digest),
            key=np.array(json.dumps(embeddings.key, sort_keys=True, default=str)),
            content_sha256=np.array(_content_digest(vectors, system, projection, reference)),
        )
    for stale in cache_path.parent.glob(f"{cache_path.stem}.*.npy"):
        if stale != vectors_path:
            stale.unlink(missing_ok=True)


def _vectors_path(cache_path: Path, digest: str) -> Path:
    return cache_path.with_name(f"{cache_path.stem}.{digest[:16]}.npy")


def _content_digest(vectors: np.ndarray, system: np.ndarray, projection: np.ndarray, reference: np.ndarray) -> str:
    """SHA-256 of the cache's arrays (the vectors read in blocks, so a mapped file is never copied whole)."""
    digest = hashlib.sha256(f"{vectors.shape}{vectors.dtype}".encode())
    for start in range(0, len(vectors), 65536):
        digest.update(np.ascontiguousarray(vectors[start : start + 65536]).tobytes())
    for array in (system, projection, reference):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _read_cache(path: Path, digest: str, n_systems: int, n_projections: int) -> BankEmbeddings | None:
    """The cached embeddings when they are for ``digest`` and pass their checks, else ``None``.

    Checked before use: the vectors' file, shape ``(n_systems * n_projections, D)`` and dtype, the
    rows' systems and projections, and the digest of every array recorded when the cache was written.
    A cache that fails (tampered with, truncated, half-copied) is recomputed with a warning.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["key_hash"]) != digest or "vectors_file" not in data:
                return None  # made for another model, bank or transform: recomputed without a word
            arrays = {name: data[name] for name in ("system", "projection", "nearest_neighbour_similarity")}
            recorded = str(data["content_sha256"])
            vectors_file = path.with_name(str(data["vectors_file"]))
        vectors = np.load(vectors_file, mmap_mode="c", allow_pickle=False)
        n = n_systems * n_projections
        problem = None
        if vectors.dtype != np.float32 or vectors.ndim != 2 or len(vectors) != n:
            problem = f"vectors of shape {vectors.shape} and type {vectors.dtype}, not ({n}, D) float32"
        elif not (
            np.array_equal(arrays["system"], np.repeat(np.arange(n_systems), n_projections))
            and np.array_equal(arrays["projection"], np.tile(np.arange(n_projections), n_systems))
        ):
            problem = "rows that are not the bank's systems and projections in order"
        elif (
            _content_digest(vectors, arrays["system"], arrays["projection"], arrays["nearest_neighbour_similarity"])
            != recorded
        ):
            problem = "contents that differ from what was written (its digest does not match)"
        if problem is not None:
            warnings.warn(f"The embedding cache {path} has {problem}; it was recomputed.", stacklevel=3)
            return None
        return BankEmbeddings(
            vectors, arrays["system"], arrays["projection"], arrays["nearest_neighbour_similarity"], path=path
        )
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as error:
        warnings.warn(
            f"The embedding cache {path} could not be read ({str(error)[:120]}); it was recomputed.", stacklevel=3
        )
        return None


def prune_embedding_caches(model_path: Path, keep: int = MAX_CACHES) -> None:
    """Remove the oldest embedding caches beside a model beyond the ``keep`` most recently used."""
    caches = sorted(
        model_path.parent.glob(f"{model_path.stem}.embeddings-*.npz"), key=lambda p: p.stat().st_mtime, reverse=True
    )
    for old in caches[keep:]:
        for vectors in old.parent.glob(f"{old.stem}.*.npy"):
            vectors.unlink(missing_ok=True)
        old.unlink(missing_ok=True)


def model_cache_path(model_path: Path, bank: Bank, key: dict) -> Path:
    """Where a model's embeddings of ``bank`` are cached: ``<model>.embeddings-<hash of the bank and key>.npz`` beside
    it."""
    return model_path.with_name(f"{model_path.stem}.embeddings-{key_digest({'bank': bank.identity, **key})[:16]}.npz")


def cached_bank_embeddings(
    embed: EmbedFunction,
    bank: Bank,
    model_path: Path,
    *,
    key: dict,
    transform: ImageTransform | None = None,
    cache: bool = True,
    batch_size: int = 256,
    progress: bool = True,
) -> BankEmbeddings:
    """:func:`bank_embeddings` of a model's embedding function, cached beside the model (:func:`model_cache_path`).

    When the model's folder cannot be written, the embeddings are kept in memory for this run, with
    a warning. A cache used is marked most recently used, and the caches beside the model beyond the
    :data:`MAX_CACHES` most recent are removed (:func:`prune_embedding_caches`). ``cache=False``:
    no cache at all.
    """
    cache_path = model_cache_path(model_path, bank, key)
    try:
        embeddings = bank_embeddings(
            embed,
            bank,
            cache_path=cache_path if cache else None,
            key=key,
            transform=transform,
            batch_size=batch_size,
            progress=progress,
        )
    except ProtolibInputError as error:
        if not cache or "could not write" not in str(error):
            raise
        warnings.warn(
            f"The embedding cache could not be written beside the model ({error}); the bank's embeddings are "
            "kept in memory for this run only.",
            stacklevel=3,
        )
        cache = False
        embeddings = bank_embeddings(
            embed, bank, cache_path=None, key=key, transform=transform, batch_size=batch_size, progress=progress
        )
    if cache:
        with contextlib.suppress(OSError):
            os.utime(cache_path)  # most recently used
            prune_embedding_caches(model_path)
    return embeddings
