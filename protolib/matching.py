"""Matching: embed the bank once, then find the bank images most similar to a target image.

The Siamese network's two branches share weights, so every bank image is embedded once
(:func:`embed_bank`), the embeddings are cached beside the model (:func:`bank_embeddings`), and a
query costs one forward pass plus a nearest-neighbour search in an :class:`EmbeddingIndex`: exact
search by chunked matrix products (torch, CPU or GPU), or a FAISS index for very large banks.
:class:`Matcher` ties these together for one model and one bank. The thesis's way, running the
network on every (target, bank image) pair, is kept as :func:`pairwise_matches`, the reference the
benchmark compares against.

Embeddings are L2-normalised, so the similarity of two images is the cosine of their embeddings,
1 for identical images.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .bank import Bank
from .runtime import ProtolibInputError, atomic_path, default_device, output_folder, typed_settings

__all__ = [
    "EmbedFunction",
    "ImageTransform",
    "Matches",
    "BankEmbeddings",
    "EmbeddingIndex",
    "OutOfDistributionCheck",
    "Matcher",
    "embed_bank",
    "bank_embeddings",
    "nearest_neighbour_similarities",
    "check_out_of_distribution",
    "pairwise_matches",
    "random_matches",
    "faiss_available",
    "ObservationTarget",
    "prepare_observation_target",
    "read_observation_target",
    "run_match",
    "fit_matches",
    "MatchFit",
    "MatchingSettings",
    "matching_settings",
]

EmbedFunction = Callable[[np.ndarray], np.ndarray]
"""Images ``(N, H, W)`` to L2-normalised embeddings ``(N, D)`` float32."""

ImageTransform = Callable[[np.ndarray], np.ndarray]
"""Bank images ``(N, H, W)`` to images seen like the target ``(N, H, W)`` (beam, noise, ...)."""

CACHE_FORMAT = 3  # 2: vectors in their own .npy, written batch by batch; 3: a digest of the contents, checked on reading
MAX_CACHES = 8  # embedding caches kept beside a model (one per observation transform); the oldest beyond are removed


@dataclass
class MatchingSettings:
    """The ``matching:`` section of a run configuration."""

    top_k: int = 200  # best matches kept per target
    n_random: int = 200  # random bank images drawn for the random-match comparison
    backend: str = "auto"  # "exact", "faiss" or "auto" (FAISS for banks of millions of images)
    weight_temperature: float | None = None  # weight matches by exp((s - s_best) / T); None: equal weights
    limit_percentile: float = 5.0  # out of distribution below this percentile of bank images' own best similarity


def matching_settings(config) -> MatchingSettings:
    """The configuration's matching settings (defaults where its ``matching:`` section is silent)."""
    return typed_settings(MatchingSettings, config.section("matching"), f"{config.path} [matching]")


@dataclass
class Matches:
    """The best matches of one target, best first.

    Attributes:
        similarity: ``(n,)`` similarity of each match to the target, descending (1 = identical).
        system: ``(n,)`` bank system index of each match.
        projection: ``(n,)`` projection index of each match within its system.
        excluded_system: the bank system that was not searched (the target's own), or ``None``.
    """

    similarity: np.ndarray
    system: np.ndarray
    projection: np.ndarray
    excluded_system: int | None = None

    def __len__(self) -> int:
        return len(self.similarity)

    @property
    def rank(self) -> np.ndarray:
        """``(n,)`` rank of each match, 1 for the best."""
        return np.arange(1, len(self) + 1)

    def head(self, k: int) -> "Matches":
        """The ``k`` best matches."""
        return Matches(self.similarity[:k], self.system[:k], self.projection[:k], self.excluded_system)


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
        return _hash_key(self.key)


def _hash_key(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def faiss_available() -> bool:
    """Whether the optional FAISS package (``pip install faiss-cpu``) can be imported."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _import_faiss():
    try:
        import faiss
    except ImportError:
        raise ProtolibInputError(
            "FAISS search needs the faiss-cpu package (pip install 'protolib[search]' or pip install faiss-cpu); "
            "use backend='exact' without it."
        ) from None
    return faiss


class EmbeddingIndex:
    """Nearest-neighbour search over L2-normalised embeddings by cosine similarity.

    Arguments:
        vectors: ``(N, D)`` embeddings, L2-normalised.
        system: ``(N,)`` system of each row (for own-system exclusion).
        projection: ``(N,)`` projection of each row.
        backend: ``"exact"`` (chunked matrix products with torch), ``"faiss"``, or ``"auto"``
            (FAISS above ``faiss_above`` rows when it is installed, exact otherwise).
        faiss_factory: the FAISS index description, e.g. ``"Flat"`` (exact), ``"HNSW32"`` (graph,
            approximate) or ``"IVF1024,Flat"`` (inverted lists, approximate; needs training).
        faiss_parameters: FAISS search settings, e.g. ``"nprobe=16"`` (inverted lists visited per
            query; FAISS's default 1 misses many neighbours) or ``"efSearch=64"`` for HNSW;
            ``benchmarks/faiss_recall.py`` measures recall@k against exact search for such settings.
        device: where exact search runs (default: CUDA when present, else CPU).
        chunk_rows: bank rows per matrix product in exact search (bounds memory).
        faiss_above: with ``backend="auto"``, the bank size from which FAISS is used.

    Example:
        >>> index = EmbeddingIndex(vectors, system, projection)          # doctest: +SKIP
        >>> [matches] = index.search(query[None], top_k=10, exclude_systems=[3])
    """

    def __init__(
        self,
        vectors: np.ndarray,
        system: np.ndarray,
        projection: np.ndarray,
        *,
        backend: str = "auto",
        faiss_factory: str = "Flat",
        faiss_parameters: str = "",
        device: str | torch.device | None = None,
        chunk_rows: int = 1 << 18,
        faiss_above: int = 2_000_000,
    ):
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(system) or len(system) != len(projection):
            raise ProtolibInputError(
                f"Embeddings must be (N, D) with one system and projection per row; got {vectors.shape}, "
                f"{np.shape(system)}, {np.shape(projection)}."
            )
        if backend not in ("auto", "exact", "faiss"):
            raise ProtolibInputError(f"Search backend must be 'auto', 'exact' or 'faiss', got {backend!r}.")
        if backend == "auto":
            backend = "faiss" if len(vectors) >= faiss_above and faiss_available() else "exact"
        self.backend = backend
        self.vectors = vectors
        self.system = np.asarray(system, dtype=np.int64)
        self.projection = np.asarray(projection, dtype=np.int64)
        self.chunk_rows = int(chunk_rows)
        self.rows_per_system = int(np.bincount(self.system).max()) if len(self.system) else 0
        if backend == "exact":
            self.device = default_device(device)
            self._vectors = torch.from_numpy(vectors).to(self.device)
            self._system = torch.from_numpy(self.system).to(self.device)
        else:
            self.device = torch.device("cpu")
            self._faiss = _build_faiss(vectors, faiss_factory, faiss_parameters)
        self.faiss_factory, self.faiss_parameters = faiss_factory, faiss_parameters

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def dimension(self) -> int:
        return int(self.vectors.shape[1])

    def search(
        self,
        queries: np.ndarray,
        *,
        top_k: int | None = 200,
        threshold: float | None = None,
        exclude_systems: Sequence[int | None] | None = None,
    ) -> list[Matches]:
        """The best matches of each query.

        Arguments:
            queries: ``(Q, D)`` L2-normalised query embeddings.
            top_k: how many matches per query (``None``: all above ``threshold``).
            threshold: keep only matches with similarity at least this (``None``: no cut).
            exclude_systems: per query, a bank system never to return (its own), or ``None``.

        Returns:
            One :class:`Matches` per query, best first.
        """
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if queries.shape[1] != self.dimension:
            raise ProtolibInputError(f"Query embeddings have {queries.shape[1]} dimensions; the bank's have {self.dimension}.")
        if top_k is None and threshold is None:
            raise ProtolibInputError("Give top_k, a similarity threshold, or both.")
        if top_k is not None and top_k < 1:
            raise ProtolibInputError(f"top_k must be at least 1, got {top_k}.")
        excluded = [None] * len(queries) if exclude_systems is None else list(exclude_systems)
        if len(excluded) != len(queries):
            raise ProtolibInputError(f"{len(queries)} queries but {len(excluded)} entries in exclude_systems.")
        if top_k is not None:
            sims, rows = self._top_k(queries, min(top_k, len(self)), excluded)
            if threshold is not None:
                keep = sims >= threshold
                return [self._matches(s[m], r[m], e) for s, r, m, e in zip(sims, rows, keep, excluded)]
            return [self._matches(s, r, e) for s, r, e in zip(sims, rows, excluded)]
        return [self._matches(*self._above(q, threshold, e), e) for q, e in zip(queries, excluded)]

    def _matches(self, sims: np.ndarray, rows: np.ndarray, excluded: int | None) -> Matches:
        valid = rows >= 0
        rows = rows[valid]
        return Matches(sims[valid].astype(np.float32), self.system[rows], self.projection[rows], None if excluded is None else int(excluded))

    def _top_k(self, queries: np.ndarray, k: int, excluded: list) -> tuple[np.ndarray, np.ndarray]:
        if self.backend == "faiss":
            return self._faiss_top_k(queries, k, excluded)
        if len(queries) > 1:
            batch = max(1, (1 << 25) // max(1, min(len(self), self.chunk_rows)))
            parts = [self._exact_top_k(queries[i : i + batch], k, excluded[i : i + batch]) for i in range(0, len(queries), batch)]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        return self._exact_top_k(queries, k, excluded)

    def _exact_top_k(self, queries: np.ndarray, k: int, excluded: list) -> tuple[np.ndarray, np.ndarray]:
        q = torch.from_numpy(queries).to(self.device)
        ex = torch.as_tensor([-1 if e is None else int(e) for e in excluded], device=self.device)
        excluding = any(e is not None for e in excluded)
        best_sims = torch.full((len(q), 0), -math.inf, device=self.device)
        best_rows = torch.zeros((len(q), 0), dtype=torch.int64, device=self.device)
        for start in range(0, len(self), self.chunk_rows):
            block = self._vectors[start : start + self.chunk_rows]
            sims = q @ block.T  # (Q, rows)
            if excluding:
                own = self._system[start : start + len(block)][None, :] == ex[:, None]
                sims = sims.masked_fill(own, -math.inf)
            top = torch.topk(sims, min(k, sims.shape[1]), dim=1)
            best_sims = torch.cat([best_sims, top.values], dim=1)
            best_rows = torch.cat([best_rows, top.indices + start], dim=1)
            if best_sims.shape[1] > k:
                keep = torch.topk(best_sims, k, dim=1)
                best_sims, best_rows = keep.values, torch.gather(best_rows, 1, keep.indices)
        order = torch.argsort(best_sims, dim=1, descending=True)
        sims = torch.gather(best_sims, 1, order).cpu().numpy()
        rows = torch.gather(best_rows, 1, order).cpu().numpy()
        rows[~np.isfinite(sims)] = -1
        return sims, rows

    def _faiss_top_k(self, queries: np.ndarray, k: int, excluded: list) -> tuple[np.ndarray, np.ndarray]:
        extra = self.rows_per_system if any(e is not None for e in excluded) else 0
        sims, rows = self._faiss.search(queries, min(len(self), k + extra))
        out_sims = np.full((len(queries), k), -np.inf, dtype=np.float32)
        out_rows = np.full((len(queries), k), -1, dtype=np.int64)
        for i, e in enumerate(excluded):
            keep = rows[i] >= 0
            if e is not None:
                keep &= self.system[np.maximum(rows[i], 0)] != e
            n = min(k, int(keep.sum()))
            out_sims[i, :n], out_rows[i, :n] = sims[i][keep][:n], rows[i][keep][:n]
        return out_sims, out_rows

    def _above(self, query: np.ndarray, threshold: float, excluded: int | None) -> tuple[np.ndarray, np.ndarray]:
        if self.backend == "faiss":
            try:
                _, sims, rows = self._faiss.range_search(query[None], float(threshold))
            except RuntimeError as error:
                raise ProtolibInputError(
                    f"The FAISS index {self.faiss_factory!r} cannot search by threshold ({error}); give top_k too, or use 'Flat'."
                ) from None
        else:
            q = torch.from_numpy(query).to(self.device)
            parts_s, parts_r = [], []
            for start in range(0, len(self), self.chunk_rows):
                sims = self._vectors[start : start + self.chunk_rows] @ q  # (rows,)
                hit = torch.nonzero(sims >= threshold).flatten()
                parts_s.append(sims[hit].cpu().numpy())
                parts_r.append(hit.cpu().numpy() + start)
            sims, rows = np.concatenate(parts_s), np.concatenate(parts_r)
        if excluded is not None:
            keep = self.system[rows] != excluded
            sims, rows = sims[keep], rows[keep]
        order = np.argsort(-sims, kind="stable")
        return sims[order], rows[order].astype(np.int64)


def _build_faiss(vectors: np.ndarray, factory: str, parameters: str = ""):
    faiss = _import_faiss()
    try:
        index = faiss.index_factory(vectors.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        raise ProtolibInputError(f"{factory!r} is not a FAISS index description FAISS understands ({error}).") from None
    if not index.is_trained:
        sample = vectors[np.random.default_rng(0).permutation(len(vectors))[: max(100_000, 64 * 1024)]]
        index.train(sample)
    index.add(vectors)
    if parameters:
        try:
            faiss.ParameterSpace().set_index_parameters(index, parameters)
        except RuntimeError as error:
            raise ProtolibInputError(f"FAISS search settings {parameters!r} do not apply to the index {factory!r} ({error}).") from None
    return index


@dataclass
class OutOfDistributionCheck:
    """Is the target like the bank? Its best similarity against bank images' own nearest neighbours.

    Attributes:
        best_similarity: the target's best similarity to any bank image it may match.
        reference_percentiles: percentiles (keys 1, 5, 16, 50) of the bank images' best similarity
            to another system.
        fraction_of_bank_below: the fraction of bank images whose own best similarity is below the
            target's (small: the target is unusual).
        limit_percentile: below this percentile of the reference, the target is out of distribution.
        is_out_of_distribution: the verdict.
        message: the verdict in words, with the numbers.
    """

    best_similarity: float
    reference_percentiles: dict
    fraction_of_bank_below: float
    limit_percentile: float
    is_out_of_distribution: bool
    message: str

    def to_dict(self) -> dict:
        return {
            "best_similarity": self.best_similarity,
            "reference_percentiles": {str(k): v for k, v in self.reference_percentiles.items()},
            "fraction_of_bank_below": self.fraction_of_bank_below,
            "limit_percentile": self.limit_percentile,
            "is_out_of_distribution": self.is_out_of_distribution,
            "message": self.message,
        }


def check_out_of_distribution(
    matches: Matches, reference: np.ndarray, *, limit_percentile: float = 5.0
) -> OutOfDistributionCheck:
    """Compare a target's best similarity with bank images' own nearest-neighbour similarities.

    Arguments:
        matches: the target's matches (its best similarity is the first).
        reference: ``(n,)`` bank images' best similarities to other systems
            (:attr:`BankEmbeddings.nearest_neighbour_similarity`).
        limit_percentile: the target is out of distribution when its best similarity is below this
            percentile of ``reference``.
    """
    reference = np.asarray(reference, dtype=np.float64)
    if len(matches) == 0 or len(reference) == 0:
        message = "No matches to judge: the distributions are empty."
        return OutOfDistributionCheck(float("nan"), {}, float("nan"), limit_percentile, True, message)
    best = float(matches.similarity[0])
    percentiles = {q: float(np.percentile(reference, q)) for q in (1, 5, 16, 50)}
    limit = float(np.percentile(reference, limit_percentile))
    fraction = float(np.mean(reference < best))
    outside = best < limit
    if outside:
        message = (
            f"WARNING: out of distribution. The target's best similarity {best:.3f} is below what "
            f"{100 - limit_percentile:g}% of bank images get from their nearest neighbour "
            f"({limit_percentile:g}th percentile {limit:.3f}, median {percentiles[50]:.3f}; only "
            f"{100 * fraction:.1f}% of bank images do worse). The target looks unlike the bank: "
            "the parameter distributions are not to be trusted."
        )
    else:
        message = (
            f"In distribution: the target's best similarity {best:.3f} is typical of bank images' nearest "
            f"neighbours ({limit_percentile:g}th percentile {limit:.3f}, median {percentiles[50]:.3f}; "
            f"{100 * fraction:.1f}% of bank images do worse)."
        )
    return OutOfDistributionCheck(best, percentiles, fraction, limit_percentile, outside, message)


def nearest_neighbour_similarities(
    vectors: np.ndarray, system: np.ndarray, projection: np.ndarray, *, n_reference: int = 2000, seed: int = 0,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """For a random sample of bank images, the best similarity to an image of another system.

    This is what a target like the bank typically gets, and the reference of
    :func:`check_out_of_distribution`.

    Returns:
        ``(min(n_reference, N),)`` float32 similarities.
    """
    if len(np.unique(system)) < 2:
        return np.zeros(0, dtype=np.float32)
    rows = np.random.default_rng(seed).permutation(len(vectors))[:n_reference]
    index = EmbeddingIndex(vectors, system, projection, backend="exact", device=device)
    found = index.search(vectors[rows], top_k=1, exclude_systems=system[rows].tolist())
    return np.array([m.similarity[0] for m in found], dtype=np.float32)


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
        >>> vectors, system, projection = embed_bank(model.embed_images, bank, out="bank_embeddings.npy")  # doctest: +SKIP
    """
    n, p = bank.n_systems, bank.n_projections
    bar = tqdm(total=n * p, unit="img", desc="Embedding bank", disable=not progress)
    batches = (_embedded(embed, images.reshape(-1, *images.shape[2:]), transform, bar, unit_norm)
               for _, images in bank.iter_batches(np.arange(n), max(1, batch_size // p)))
    if out is None:
        vectors = np.concatenate(list(batches))
    else:
        with atomic_path(out) as tmp, open(tmp, "wb") as handle:
            _write_npy(handle, batches, n * p)
        vectors = np.load(out, mmap_mode="c")
    bar.close()
    return vectors, np.repeat(np.arange(n), p), np.tile(np.arange(p), n)


def _embedded(embed: EmbedFunction, images: np.ndarray, transform: ImageTransform | None, bar, unit_norm: bool = True) -> np.ndarray:
    vectors = np.asarray(embed(images if transform is None else transform(images)), dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(images):
        raise ProtolibInputError(f"The embedding function returned shape {vectors.shape} for {len(images)} images; expected ({len(images)}, D).")
    norms = np.linalg.norm(vectors, axis=1)
    if not np.all(np.isfinite(norms)) or (unit_norm and np.any(np.abs(norms - 1.0) > 1e-3)):
        raise ProtolibInputError("The embedding function must return finite, L2-normalised embeddings (norm 1 per row).")
    bar.update(len(images))
    return vectors


def _write_npy(handle, batches, n_rows: int) -> None:
    """Write ``(n_rows, D)`` float32 to the open file ``handle`` as ``.npy``, batch after batch."""
    written = 0
    for vectors in batches:
        if written == 0:
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False, "shape": (n_rows, vectors.shape[1])}
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
    full_key = {"format": CACHE_FORMAT, "bank": bank.identity, "bank_file": bank.file_state, "embedding": key or {},
                "n_reference": n_reference}
    digest = _hash_key(full_key)
    if cache_path is not None and Path(cache_path).exists():
        cached = _read_cache(Path(cache_path), digest, bank.n_systems, bank.n_projections)
        if cached is not None:
            cached.key = full_key
            return cached
    vectors_path = None if cache_path is None else _vectors_path(Path(cache_path), digest)
    vectors, system, projection = embed_bank(embed, bank, transform=transform, batch_size=batch_size, progress=progress, out=vectors_path)
    reference = nearest_neighbour_similarities(vectors, system, projection, n_reference=n_reference)
    result = BankEmbeddings(vectors, system, projection, reference, full_key, Path(cache_path) if cache_path else None)
    if cache_path is not None:
        with atomic_path(cache_path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, vectors_file=np.array(vectors_path.name), system=system, projection=projection,
                     nearest_neighbour_similarity=reference, key_hash=np.array(digest),
                     key=np.array(json.dumps(full_key, sort_keys=True, default=str)),
                     content_sha256=np.array(_content_digest(vectors, system, projection, reference)))
        for stale in Path(cache_path).parent.glob(f"{Path(cache_path).stem}.*.npy"):
            if stale != vectors_path:
                stale.unlink(missing_ok=True)
    return result


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
        elif not (np.array_equal(arrays["system"], np.repeat(np.arange(n_systems), n_projections))
                  and np.array_equal(arrays["projection"], np.tile(np.arange(n_projections), n_systems))):
            problem = "rows that are not the bank's systems and projections in order"
        elif _content_digest(vectors, arrays["system"], arrays["projection"], arrays["nearest_neighbour_similarity"]) != recorded:
            problem = "contents that differ from what was written (its digest does not match)"
        if problem is not None:
            warnings.warn(f"The embedding cache {path} has {problem}; it was recomputed.", stacklevel=3)
            return None
        return BankEmbeddings(vectors, arrays["system"], arrays["projection"], arrays["nearest_neighbour_similarity"], path=path)
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as error:
        warnings.warn(f"The embedding cache {path} could not be read ({str(error)[:120]}); it was recomputed.", stacklevel=3)
        return None


def _prune_caches(model_path: Path, keep: int = MAX_CACHES) -> None:
    """Remove the oldest embedding caches beside a model beyond the ``keep`` most recently used."""
    caches = sorted(model_path.parent.glob(f"{model_path.stem}.embeddings-*.npz"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in caches[keep:]:
        for vectors in old.parent.glob(f"{old.stem}.*.npy"):
            vectors.unlink(missing_ok=True)
        old.unlink(missing_ok=True)


def pairwise_matches(
    similarity: Callable[[np.ndarray, np.ndarray], np.ndarray],
    target_image: np.ndarray,
    bank: Bank,
    *,
    top_k: int = 200,
    exclude_system: int | None = None,
    transform: ImageTransform | None = None,
    batch_size: int = 256,
    progress: bool = False,
) -> Matches:
    """The thesis's way: run the Siamese network on every (target, bank image) pair.

    Kept as the reference that :class:`Matcher` is checked and benchmarked against; it costs one
    full network evaluation per bank image per query.

    Arguments:
        similarity: ``(images_a (N, H, W), images_b (N, H, W)) -> (N,)``, e.g. ``SiameseModel.similarity``.
        target_image: ``(H, W)``.
        bank: the bank.
        top_k: matches to return.
        exclude_system: a bank system never to return.
        transform: applied to bank images first (as in :func:`embed_bank`).
    """
    n, p = bank.n_systems, bank.n_projections
    systems = np.array([s for s in range(n) if s != exclude_system])
    sims, rows = [], []
    bar = tqdm(total=len(systems) * p, unit="pair", desc="Pairwise similarities", disable=not progress)
    for chunk, images in bank.iter_batches(systems, max(1, batch_size // p)):
        flat = images.reshape(-1, *images.shape[2:])
        flat = flat if transform is None else transform(flat)
        sims.append(np.asarray(similarity(np.repeat(target_image[None], len(flat), axis=0), flat), dtype=np.float32))
        rows.append((chunk[:, None] * p + np.arange(p)[None, :]).reshape(-1))
        bar.update(len(flat))
    bar.close()
    sims, rows = np.concatenate(sims), np.concatenate(rows)
    order = np.argsort(-sims, kind="stable")[:top_k]
    return Matches(sims[order], rows[order] // p, rows[order] % p, exclude_system)


def random_matches(bank: Bank, n: int, *, exclude_system: int | None = None, seed: int = 0) -> Matches:
    """``n`` bank images drawn at random (without replacement): the thesis's baseline for the distributions.

    Their similarity is reported as NaN (they were not ranked).
    """
    rows = np.arange(bank.n_systems * bank.n_projections)
    if exclude_system is not None:
        rows = rows[rows // bank.n_projections != exclude_system]
    rows = np.random.default_rng(seed).choice(rows, size=min(n, len(rows)), replace=False)
    return Matches(np.full(len(rows), np.nan, dtype=np.float32), rows // bank.n_projections, rows % bank.n_projections, exclude_system)


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
        from .siamese import load_siamese

        model_path = Path(model_path)
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
        if transform is not None and transform_key is None:
            raise ProtolibInputError("Describe the bank transform in transform_key (plain data), so its embeddings are cached apart.")
        key = {"model_sha256": _file_sha256(model_path), "transform": transform_key}
        cache_path = model_path.with_name(f"{model_path.stem}.embeddings-{_hash_key({'bank': bank.identity, **key})[:16]}.npz")

        def embed(images: np.ndarray) -> np.ndarray:
            return model.embed_images(images, batch_size=batch_size, progress=False)

        try:
            embeddings = bank_embeddings(embed, bank, cache_path=cache_path if cache else None, key=key,
                                         transform=transform, batch_size=batch_size, progress=progress)
        except ProtolibInputError as error:
            if not cache or "could not write" not in str(error):
                raise
            warnings.warn(f"The embedding cache could not be written beside the model ({error}); the bank's embeddings are "
                          "kept in memory for this run only.", stacklevel=2)
            cache = False
            embeddings = bank_embeddings(embed, bank, cache_path=None, key=key, transform=transform, batch_size=batch_size,
                                         progress=progress)
        if cache:
            with contextlib.suppress(OSError):
                os.utime(cache_path)  # most recently used
                _prune_caches(model_path)
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


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class ObservationTarget:
    """An observation prepared for matching (see :func:`prepare_observation_target`).

    Attributes:
        image: ``(H, W)`` the observation on the bank's grid [Jy/beam at the bank's distance].
        transform: bank images ``(N, H, W)`` to the observation's resolution, units and noise.
        transform_key: plain data describing ``transform`` (keys the embedding cache).
        info: what the preparation did (beam, noise, flux scale, padding), for the report.
        truths: the true parameters when the file is a synthetic observation, else ``None``.
        resolution: the noise-free part of ``transform`` (for residuals and the goodness of fit).
        noise_rms_jy_beam: the noise rms of ``image``.
        coverage: ``(H, W)`` fraction of each pixel holding observed data.
    """

    image: np.ndarray
    transform: ImageTransform
    transform_key: dict
    info: dict
    truths: dict | None
    resolution: Any = None
    noise_rms_jy_beam: float = 0.0
    coverage: np.ndarray | None = None


def prepare_observation_target(
    path: str | Path, bank: Bank, distance_pc: float | None, *, noise_seed: int = 0, **options
) -> ObservationTarget:
    """An observation FITS file prepared onto the bank's grid, with the transform that sees the bank like it.

    Uses :func:`protolib.observation.prepare_observation` (``options``: its ``centre``, ``beam`` and
    ``noise_rms_jy_beam``); the bank's noise is topped up to the observation's with a generator
    seeded by ``noise_seed``, so the cached embeddings are reproducible.

    Raises:
        ProtolibInputError: the file is missing, the distance is not given, or the image cannot be
            prepared onto the bank's grid.
    """
    from .observation import prepare_observation

    path = Path(path)
    if not path.exists():
        raise ProtolibInputError(f"Target file {path} does not exist.")
    if distance_pc is None or not distance_pc > 0:
        raise ProtolibInputError(f"Matching the observation {path} needs its distance in pc (e.g. --distance 140).")
    return _observation_target(prepare_observation(path, bank, distance_pc, **options), bank, noise_seed)


def read_observation_target(path: str | Path, bank: Bank, *, noise_seed: int = 0) -> ObservationTarget:
    """An observation already prepared onto ``bank``'s grid (``protolib observe --out``), ready for matching.

    Raises:
        ProtolibInputError: the file is missing, is not a prepared observation, or was prepared for
            another grid (image size or pixel size) than the bank's.
    """
    from .observation import read_prepared_observation

    path = Path(path)
    if not path.exists():
        raise ProtolibInputError(f"Observation file {path} does not exist. Prepare one with `protolib observe OBS.fits --out {path}`.")
    prepared = read_prepared_observation(path)
    grid = prepared.grid
    if grid.image_size != bank.image_size or not math.isclose(grid.pixel_size_au, bank.pixel_size_au, rel_tol=1e-4):
        raise ProtolibInputError(
            f"{path} was prepared for {grid.image_size}x{grid.image_size} px of {grid.pixel_size_au:.3g} au but bank {bank.path} has "
            f"{bank.image_size}x{bank.image_size} px of {bank.pixel_size_au:.3g} au; prepare it again with `protolib observe --bank {bank.path}`."
        )
    return _observation_target(prepared, bank, noise_seed)


def _observation_target(prepared, bank: Bank, noise_seed: int) -> ObservationTarget:
    """The :class:`ObservationTarget` of a :class:`~protolib.observation.PreparedObservation` for ``bank``."""
    resolution = prepared.transform()
    rng = np.random.default_rng(noise_seed)

    def transform(images: np.ndarray) -> np.ndarray:
        return resolution(images, rng)

    beam = prepared.beam
    coverage = None if resolution.coverage is None else hashlib.sha256(np.ascontiguousarray(prepared.coverage).tobytes()).hexdigest()
    key = {"beam_arcsec": [beam.major_arcsec, beam.minor_arcsec, beam.position_angle_deg],
           "noise_rms_jy_beam": prepared.noise_rms_jy_beam, "coverage_sha256": coverage, "noise_seed": noise_seed,
           "max_scale_arcsec": resolution.max_scale_arcsec}
    truths = {k: v for k, v in prepared.true_parameters.items() if k in bank.parameters or k in ("inclination", "position_angle")}
    return ObservationTarget(prepared.image_jy_beam, transform, key, prepared.info(), truths or None, resolution,
                             prepared.noise_rms_jy_beam, prepared.coverage)


def run_match(
    model_path: str | Path,
    bank_path: str | Path,
    out_dir: str | Path,
    *,
    target: str | Path | None = None,
    target_system: int | None = None,
    projection: int = 0,
    distance_pc: float | None = None,
    top_k: int | None = 200,
    threshold: float | None = None,
    weight_temperature: float | None = None,
    backend: str = "auto",
    device: str | None = None,
    progress: bool = True,
    observation_options: dict | None = None,
) -> dict:
    """Match one target (an observation FITS file or a bank system) and write every product to ``out_dir``.

    What ``protolib match`` does: ``matches.csv``, ``summary.csv``, ``corner.png``, ``gallery.png``
    and ``report.json`` (see :func:`protolib.distributions.write_match_report`). The corner plot shows
    the parameters the network's target similarity was computed from, and the inclination. ``observation_options``
    go to :func:`prepare_observation_target` (``centre``, ``beam``, ``noise_rms_jy_beam``).

    Returns:
        The report written to ``report.json``.
    """
    if (target is None) == (target_system is None):
        raise ProtolibInputError("Give exactly one target: an observation file or a bank system.")
    if top_k is not None and top_k < 1:
        raise ProtolibInputError(f"--top-k must be 0 (all above --threshold) or a positive number of matches, got {top_k}.")
    if not Path(model_path).exists():
        raise ProtolibInputError(f"Model file {model_path} does not exist. Train one first (notebook 03 or `protolib train-siamese`).")
    with Bank(bank_path) as bank, output_folder(out_dir) as staging:
        return _match_into(staging, model_path, bank, target, target_system, projection, distance_pc, top_k, threshold,
                           weight_temperature, dict(backend=backend, device=device, progress=progress), observation_options)


def _match_into(out_dir: Path, model_path, bank: Bank, target, target_system, projection, distance_pc, top_k, threshold,
                weight_temperature, options: dict, observation_options: dict | None) -> dict:
    """The body of :func:`run_match`, writing into the staging folder ``out_dir``."""
    from . import distributions

    bank_path = bank.path
    inputs = {"model": str(Path(model_path).resolve()), "bank": str(Path(bank_path).resolve())}
    if target_system is not None:
        if not 0 <= target_system < bank.n_systems or not 0 <= projection < bank.n_projections:
            raise ProtolibInputError(
                f"Bank {bank.path} has systems 0..{bank.n_systems - 1} and projections 0..{bank.n_projections - 1}; "
                f"got system {target_system}, projection {projection}."
            )
        matcher = Matcher.from_model(model_path, bank, **options)
        matches = matcher.match_system(target_system, projection, top_k=top_k, threshold=threshold)
        image = bank.images[target_system, projection]
        truths = distributions.truth_parameters(bank, target_system, projection)
        inputs["target"] = {"system": target_system, "projection": projection, "system_id": int(bank.system_id[target_system]),
                            "part_of_model_split": matcher.training_part(target_system)}
    else:
        observation = prepare_observation_target(target, bank, distance_pc, **(observation_options or {}))
        matcher = Matcher.from_model(model_path, bank, transform=observation.transform, transform_key=observation.transform_key, **options)
        image, truths = observation.image, observation.truths
        matches = matcher.match(image, top_k=top_k, threshold=threshold)
        inputs["target"] = {"file": str(Path(target).resolve()), "distance_pc": distance_pc, "preparation": observation.info,
                            "true_parameters_in_file": truths is not None}
    verdict = matcher.check(matches)
    fit = fit_matches(matcher, image, matches, observation=None if target is None else observation)
    settings = {"top_k": top_k, "threshold": threshold, "backend": matcher.index.backend, "device": str(matcher.index.device),
                "embedding_cache": str(matcher.embeddings.path) if matcher.embeddings.path else None}
    trained_on = (matcher.checkpoint.get("target") or {}).get("parameters") or []
    corner_parameters = [p for p in trained_on if p in bank.parameters] + ["inclination"] if trained_on else None
    report = distributions.write_match_report(out_dir, bank, matches, image, verdict=verdict, truths=truths,
                                              weight_temperature=weight_temperature, inputs=inputs, settings=settings,
                                              corner_parameters=corner_parameters, match_image_transform=matcher.transform,
                                              **({} if fit is None else {"reduced_chi2": fit.reduced_chi2, "fit_verdict": fit.verdict,
                                                                        "gallery_residuals": fit.residuals, "calibration": fit.calibration}))
    return report


def _reference_rows(bank: Bank, fit, image: np.ndarray, n_reference: int, rng: np.random.Generator) -> np.ndarray:
    """Bank image rows as bright as the target: from ``8 n_reference`` drawn at random, the ``n_reference``
    whose signal rms after the transform is nearest the target's (the excess residual of faint images
    is dominated by noise, of bright ones by the bank's coarseness: the yardstick must be like the target)."""
    n_rows = bank.n_systems * bank.n_projections
    candidates = np.sort(rng.choice(n_rows, size=min(8 * n_reference, n_rows), replace=False))
    models = fit.models(bank.images_at(candidates // bank.n_projections, candidates % bank.n_projections))
    brightness = np.sqrt(np.mean(np.square(models[:, fit.used(np.shape(image))]), axis=1)) + 1e-30
    return candidates[np.argsort(np.abs(np.log(brightness / fit.signal_rms(image))), kind="stable")[:n_reference]]


@dataclass
class MatchFit:
    """What the image-space comparison of a target with its matches gives (:func:`fit_matches`).

    Attributes:
        reduced_chi2: ``(n_matches,)`` each match's reduced chi-square against the target.
        verdict: the :class:`~protolib.goodness_of_fit.FitVerdict`.
        residuals: ``(n_gallery, H, W)`` the first matches' residual maps, in noise rms.
        calibration: parameter -> the widening of the intervals that makes them honest on the
            reference targets, with the coverage before and after (:func:`~protolib.distributions.reference_calibration`).
    """

    reduced_chi2: np.ndarray
    verdict: Any
    residuals: np.ndarray
    calibration: dict


def fit_matches(
    matcher: "Matcher", image: np.ndarray, matches: Matches, *, observation: ObservationTarget | None = None,
    n_reference: int = 48, reference_top_k: int | None = None, n_gallery: int = 11, seed: int = 0,
) -> MatchFit | None:
    """Every match's reduced chi-square against the target, the image-space verdict, the gallery's
    residuals, and the intervals' calibration at the target's resolution and noise.

    See :mod:`protolib.goodness_of_fit`. The reference is ``n_reference`` bank images as bright as the
    target (:func:`_reference_rows`, drawn with ``seed``), turned into targets like this one (the
    observation's transform and noise, or the bank's own for a bank target) and matched with their
    ``reference_top_k`` best matches (default: as many as the target has). Their true parameters are
    known, so they also calibrate the target's intervals: how much the central intervals of that many
    matches must be widened about the median to hold the truth as often as they claim, at this
    observation's beam and noise.

    Returns:
        The :class:`MatchFit`, or ``None`` for a noiseless bank target (no noise to judge a residual by).
    """
    from .distributions import reference_calibration
    from .goodness_of_fit import ImageFit, judge_fit, reference_chi2

    bank = matcher.bank
    rng = np.random.default_rng(seed)
    if observation is not None:
        resolution = observation.resolution
        fit = ImageFit(resolution, observation.noise_rms_jy_beam, resolution.bank_noise_rms_jy_beam, observation.coverage)

        def observe(images):
            return resolution(images, rng)
    else:
        noise = bank.instrument.noise_rms_jy_beam if bank.unit == "Jy/beam" else 0.0
        if not noise > 0:
            return None
        fit = ImageFit(None, noise, noise)

        def observe(images):
            return images
    chi2 = fit.reduced_chi2(image, bank.images_at(matches.system, matches.projection))
    rows = _reference_rows(bank, fit, image, n_reference, rng)

    def search(vectors, excluded):
        return matcher.index.search(vectors, top_k=reference_top_k or len(matches), exclude_systems=excluded)

    best_chi2, best_excess, found = reference_chi2(fit, observe, matcher.embed, search, bank.images_at, rows, bank.n_projections)
    head = matches.head(n_gallery)
    residuals = fit.residuals(image, bank.images_at(head.system, head.projection))
    best = float(chi2.min())
    verdict = judge_fit(best, float(fit.excess(image, best)), (best_chi2, best_excess))
    return MatchFit(chi2, verdict, residuals, reference_calibration(bank, rows, found))
