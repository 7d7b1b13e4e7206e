"""Embedding maps: the bank's embeddings projected to 2-D, coloured by physical parameters, and how smooth each is."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .runtime import ProtolibInputError

__all__ = [
    "EmbeddingMapSettings",
    "PcaMap",
    "UmapMap",
    "embedding_map",
    "image_parameters",
    "map_smoothness",
]


@dataclass
class EmbeddingMapSettings:
    """The ``embedding_map:`` section: how ``protolib embedding-map`` projects the embeddings."""

    method: str = "pca"  # "pca" (linear, fast) or "umap" (non-linear; needs protolib[maps])
    seed: int = 0  # seed of the UMAP layout and of the smoothness measure


@dataclass
class PcaMap:
    """A linear projection of embeddings ``(N, D)`` onto their first principal components."""

    mean: np.ndarray  # (D,) mean embedding of the bank
    components: np.ndarray  # (n_components, D) principal directions, largest variance first
    explained: np.ndarray  # (n_components,) fraction of the total variance along each direction
    axis_name = "PC"

    @classmethod
    def fit(cls, embeddings: np.ndarray, n_components: int = 2) -> PcaMap:
        """Principal components of ``embeddings`` ``(N, D)`` by singular value decomposition."""
        embeddings = np.asarray(embeddings, dtype=np.float64)
        if embeddings.ndim != 2 or len(embeddings) < 2:
            raise ProtolibInputError(f"Expected at least two embeddings (N, D), got shape {embeddings.shape}.")
        mean = embeddings.mean(0)
        _, singular, directions = np.linalg.svd(embeddings - mean, full_matrices=False)
        variance = singular**2
        return cls(mean, directions[:n_components], variance[:n_components] / max(variance.sum(), 1e-300))

    def __call__(self, embeddings: np.ndarray) -> np.ndarray:
        """Map coordinates ``(N, n_components)`` of embeddings ``(N, D)`` (or one ``(D,)``, giving
        ``(n_components,)``)."""
        return (np.asarray(embeddings, dtype=np.float64) - self.mean) @ self.components.T


@dataclass
class UmapMap:
    """A non-linear map of embeddings ``(N, D)`` by UMAP (McInnes et al. 2018), needing ``protolib[maps]``.

    UMAP keeps neighbourhoods rather than distances: points close in embedding space stay close on
    the map, but distances between far-apart clusters mean little. Seeded, it runs on one thread and
    gives the same map every time.
    """

    reducer: object  # the fitted umap.UMAP
    axis_name = "UMAP"

    @classmethod
    def fit(
        cls, embeddings: np.ndarray, n_components: int = 2, seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1
    ) -> UmapMap:
        """UMAP of ``embeddings`` ``(N, D)`` with ``n_neighbors`` (capped at ``N - 1``) and ``min_dist``, seeded by
        ``seed``."""
        try:
            import umap
        except ImportError:
            raise ProtolibInputError(
                'UMAP maps need the umap-learn package: pip install "protolib[maps]" (or umap-learn).'
            ) from None
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or len(embeddings) < 3:
            raise ProtolibInputError(
                f"Expected at least three embeddings (N, D) for a UMAP map, got shape {embeddings.shape}."
            )
        reducer = umap.UMAP(
            n_components=n_components,
            n_neighbors=min(n_neighbors, len(embeddings) - 1),
            min_dist=min_dist,
            random_state=seed,
            n_jobs=1,
        )
        return cls(reducer.fit(embeddings))

    def __call__(self, embeddings: np.ndarray) -> np.ndarray:
        """Map coordinates ``(N, n_components)`` of embeddings ``(N, D)`` (or one ``(D,)``, giving
        ``(n_components,)``)."""
        embeddings = np.asarray(embeddings, dtype=np.float32)
        coordinates = self.reducer.transform(np.atleast_2d(embeddings)).astype(np.float64)
        return coordinates[0] if embeddings.ndim == 1 else coordinates


def embedding_map(embeddings: np.ndarray, method: str = "pca", seed: int = 0) -> PcaMap | UmapMap:
    """The map ``method`` (``"pca"`` or ``"umap"``) fitted to embeddings ``(N, D)``; UMAP is seeded by ``seed``.

    Example:
        >>> projection = embedding_map(embeddings.vectors, "umap")   # doctest: +SKIP
        >>> coordinates = projection(embeddings.vectors)             # (N, 2)
    """
    if method == "pca":
        return PcaMap.fit(embeddings)
    if method == "umap":
        return UmapMap.fit(embeddings, seed=seed)
    raise ProtolibInputError(f"Unknown embedding map {method!r}; choose 'pca' or 'umap'.")


def image_parameters(
    bank, systems: np.ndarray, projections: np.ndarray, names: list[str] | None = None
) -> dict[str, np.ndarray]:
    """Physical parameters (``names``, default all) and the inclination [deg] of bank images ``(N,)``, one array
    each."""
    names = list(names or bank.parameters)
    table = bank.parameter_table(names)[systems]
    values = {name: table[:, k] for k, name in enumerate(names)}
    values["inclination"] = bank.inclination[systems, projections]
    return values


def map_smoothness(
    coordinates: np.ndarray,
    values: np.ndarray,
    *,
    k: int = 5,
    n_random: int = 20000,
    max_points: int = 4000,
    seed: int = 0,
) -> float:
    """How smoothly ``values`` ``(N,)`` vary across a map ``(N, 2)``: 0 perfectly smooth, about 1 no structure.

    Values are replaced by their ranks scaled to ``[0, 1]`` (so a log-distributed parameter counts
    like a uniform one); the measure is the mean ``|difference|`` between each point and its ``k``
    nearest neighbours on the map divided by the same between ``n_random`` random pairs of points.
    Maps of more than ``max_points`` points are measured on a random subset of that many (drawn with
    ``seed``), which keeps the neighbour search's ``(max_points, max_points)`` distances in memory.
    """
    coordinates, values = np.asarray(coordinates, dtype=np.float64), np.asarray(values, dtype=np.float64)
    if len(coordinates) != len(values) or len(values) <= k:
        raise ProtolibInputError(
            f"Need more than k = {k} points with one value each; got {len(coordinates)} points and {len(values)} "
            "values."
        )
    rng = np.random.default_rng(seed)
    if len(values) > max_points:
        keep = rng.choice(len(values), max_points, replace=False)
        coordinates, values = coordinates[keep], values[keep]
    ranks = np.argsort(np.argsort(values, kind="stable"), kind="stable") / (len(values) - 1)
    distance = ((coordinates[:, None, :] - coordinates[None, :, :]) ** 2).sum(-1)  # (N, N)
    np.fill_diagonal(distance, np.inf)
    neighbours = np.argpartition(distance, k, axis=1)[:, :k]  # (N, k)
    local = np.abs(ranks[:, None] - ranks[neighbours]).mean()
    first, second = rng.integers(len(values), size=(2, n_random))
    keep = first != second
    return float(local / max(np.abs(ranks[first[keep]] - ranks[second[keep]]).mean(), 1e-300))
