"""The search index: nearest neighbours by cosine similarity over L2-normalised embeddings.

:class:`EmbeddingIndex` searches exactly by chunked matrix products (torch, CPU or GPU), or with a
FAISS index for very large banks (:func:`faiss_available` says whether FAISS is installed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ..runtime import ProtolibInputError, default_device
from .matches import Matches

__all__ = ["EmbeddingIndex", "faiss_available"]


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
            raise ProtolibInputError(
                f"Query embeddings have {queries.shape[1]} dimensions; the bank's have {self.dimension}."
            )
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
        return Matches(
            sims[valid].astype(np.float32),
            self.system[rows],
            self.projection[rows],
            None if excluded is None else int(excluded),
        )

    def _top_k(self, queries: np.ndarray, k: int, excluded: list) -> tuple[np.ndarray, np.ndarray]:
        if self.backend == "faiss":
            return self._faiss_top_k(queries, k, excluded)
        if len(queries) > 1:
            batch = max(1, (1 << 25) // max(1, min(len(self), self.chunk_rows)))
            parts = [
                self._exact_top_k(queries[i : i + batch], k, excluded[i : i + batch])
                for i in range(0, len(queries), batch)
            ]
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
                    f"The FAISS index {self.faiss_factory!r} cannot search by threshold ({error}); give top_k too, or "
                    "use 'Flat'."
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
            raise ProtolibInputError(
                f"FAISS search settings {parameters!r} do not apply to the index {factory!r} ({error})."
            ) from None
    return index
