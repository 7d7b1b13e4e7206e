"""The matcher: one embedding function (a trained Siamese network) and one bank, searched by nearest neighbours.

:class:`Matcher` embeds the bank once (or reads its cache), then matches target images or bank
systems, judges them (:meth:`Matcher.check`) and, for the benchmark, matches pairwise the thesis's way.
:class:`MatchingSettings` is the ``matching:`` section of a run configuration.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..bank import Bank, check_same_setup
from ..runtime import ProtolibInputError
from .band_embeddings import band_bank_embeddings
from .baselines import pairwise_matches
from .embeddings import (
    BankEmbeddings,
    EmbedFunction,
    ImageTransform,
    bank_embeddings,
    cached_bank_embeddings,
    file_sha256,
)
from .index import EmbeddingIndex
from .matches import Matches
from .ood import OutOfDistributionCheck, check_out_of_distribution
from .tiers import (
    DEFAULT_TIER_BEAM_FACTORS,
    DEFAULT_TIER_PEAK_SNR,
    ResolutionTier,
    nearest_tier,
    resolution_tiers,
    tier_cache_path,
    tier_embeddings,
)

__all__ = ["MatchingSettings", "Matcher", "TieredMatcher", "BandMatcher", "embeds_bands", "read_rows"]


@dataclass
class MatchingSettings:
    """The ``matching:`` section of a run configuration."""

    top_k: int = 200  # best matches kept per target
    n_random: int = 200  # random bank images drawn for the random-match comparison
    backend: str = "auto"  # "exact", "faiss" or "auto" (FAISS for banks of millions of images)
    weight_temperature: float | None = None  # weight matches by exp((s - s_best) / T); None: equal weights
    # which searched matches form the distribution: "similarity" (the k most similar), "fit_rank" (the k that fit the
    # target best in image space), "fit_cut" (within a factor 2 of the best fit), "fit_weight" (weighted by the
    # tempered fit); the references that calibrate k and the intervals are chosen the same way. The fit rules covered
    # the truth less often (95%: 0.75-0.93 against 0.96), for intervals at most 5% narrower where they covered 0.9 or
    # more (benchmarks/fit_ranking.py)
    distribution: str = "similarity"
    limit_percentile: float = 5.0  # out of distribution below this percentile of bank images' own best similarity
    # an observation against the bank: "exhaustive" re-embeds the whole bank at its beam and noise, "tiered" re-ranks a
    # shortlist from the nearest pre-embedded tier, "auto" is tiered from tiered_above bank images
    search: str = "auto"
    # bank images from which "auto" search is tiered (below, re-embedding the bank takes under a minute on a laptop CPU)
    tiered_above: int = 50_000
    # tier beams: circular, FWHM these times the bank beam's major axis
    tier_beam_factors: list[float] = field(default_factory=lambda: list(DEFAULT_TIER_BEAM_FACTORS))
    # tier noise levels: a typical bank image's peak signal-to-noise at each tier beam
    tier_peak_snr: list[float] = field(default_factory=lambda: list(DEFAULT_TIER_PEAK_SNR))
    # tiered search: candidates per observation taken from its tier and re-embedded at its exact beam and noise (at
    # least top_k)
    shortlist: int = 2000

    def tiered(self, n_bank_images: int) -> bool:
        """Whether an observation against a bank of ``n_bank_images`` is matched by tiers (see :attr:`search`)."""
        if self.search not in ("auto", "exhaustive", "tiered"):
            raise ProtolibInputError(f"matching.search must be 'auto', 'exhaustive' or 'tiered', got {self.search!r}.")
        return self.search == "tiered" or (self.search == "auto" and n_bank_images >= self.tiered_above)


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
        self.index = EmbeddingIndex(
            embeddings.vectors,
            embeddings.system,
            embeddings.projection,
            backend=backend,
            faiss_factory=faiss_factory,
            faiss_parameters=faiss_parameters,
            device=device,
        )

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
    ) -> Matcher:
        """A matcher for any embedding function, the bank embedded (or read from ``cache_path``)."""
        embeddings = bank_embeddings(
            embed, bank, cache_path=cache_path, key=key, transform=transform, batch_size=batch_size, progress=progress
        )
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
    ) -> Matcher:
        """A matcher for a trained Siamese network saved at ``model_path``.

        The bank's embeddings are cached beside the model (``<model>.embeddings-<hash>.npz``),
        keyed by the model file's content, the bank and ``transform_key`` (describe ``transform``
        there, e.g. the observation's beam and noise, so another transform recomputes).

        Raises:
            ProtolibInputError: the model file is missing or unreadable, or it was trained on
                images of another size than the bank's.
        """
        model_path = Path(model_path)
        embed, model_options = _siamese_embedding(model_path, bank, batch_size)
        if transform is not None and transform_key is None:
            raise ProtolibInputError(
                "Describe the bank transform in transform_key (plain data), so its embeddings are cached apart."
            )
        key = {"model_sha256": file_sha256(model_path), "transform": transform_key}
        embeddings = cached_bank_embeddings(
            embed, bank, model_path, key=key, transform=transform, cache=cache, batch_size=batch_size, progress=progress
        )
        return cls(embed, bank, embeddings, transform=transform, **model_options, **options)

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Embeddings ``(N, D)`` of target images ``(N, H, W)`` (or one ``(H, W)``)."""
        images = np.asarray(images, dtype=np.float32)
        images = images[None] if images.ndim == 2 else images
        if images.ndim != 3 or images.shape[1:] != (self.image_size, self.image_size):
            raise ProtolibInputError(
                f"Target images must be {self.image_size}x{self.image_size} px like the bank's; got shape "
                f"{images.shape[1:]}. "
                "Prepare observations onto the bank's grid first."
            )
        if not np.all(np.isfinite(images)):
            raise ProtolibInputError("Target image has NaN or infinite pixels; fill or crop them before matching.")
        return np.asarray(self.embed_images(images), dtype=np.float32)

    def match(
        self,
        image: np.ndarray,
        *,
        top_k: int | None = 200,
        threshold: float | None = None,
        exclude_system: int | None = None,
    ) -> Matches:
        """The best matches of one target image ``(H, W)``: by ``top_k``, ``threshold``, or both."""
        image = np.asarray(image)
        if image.ndim != 2:
            raise ProtolibInputError(f"match() takes one image (H, W); got shape {image.shape}.")
        [found] = self.search(self.embed(image), top_k=top_k, threshold=threshold, exclude_systems=[exclude_system])
        return found

    def search(
        self,
        queries: np.ndarray,
        *,
        top_k: int | None = 200,
        threshold: float | None = None,
        exclude_systems: Sequence[int | None] | None = None,
    ) -> list[Matches]:
        """The best matches of each embedded target ``(Q, D)`` (rows of :meth:`embed`), as :meth:`match` finds them.

        The one search of this matcher, used for the target and for the reference targets that
        calibrate its intervals, so that both are found the same way (a :class:`TieredMatcher` re-ranks).
        """
        return self.index.search(queries, top_k=top_k, threshold=threshold, exclude_systems=exclude_systems)

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
        return check_out_of_distribution(
            matches, self.embeddings.nearest_neighbour_similarity, limit_percentile=limit_percentile
        )

    def pairwise(
        self, image: np.ndarray, *, top_k: int = 200, exclude_system: int | None = None, batch_size: int = 256
    ) -> Matches:
        """The thesis's pairwise matching with the network (slow; the benchmark's reference)."""
        if self.similarity is None:
            raise ProtolibInputError(
                "This matcher has no pairwise similarity function (make it with Matcher.from_model)."
            )
        return pairwise_matches(
            self.similarity,
            np.asarray(image, dtype=np.float32),
            self.bank,
            top_k=top_k,
            exclude_system=exclude_system,
            transform=self.transform,
            batch_size=batch_size,
        )

    def training_part(self, system: int) -> str | None:
        """``"train"``, ``"validation"`` or ``"test"`` when the model was trained on this bank, else ``None``."""
        split = self.checkpoint.get("split")
        trained_on = self.checkpoint.get("bank") or {}
        if (
            not split
            or trained_on.get("path") != self.bank.identity["path"]
            or trained_on.get("created") != self.bank.identity["created"]
        ):
            return None
        for part in ("train", "validation", "test"):
            if system in set(int(s) for s in split.get(part, [])):
                return part
        return None


class TieredMatcher(Matcher):
    """A matcher that shortlists from a pre-embedded resolution tier, then re-ranks with the observation's exact
    transform.

    The index searched is the bank at ``tier`` (:func:`~protolib.matching.tier_embeddings`), so a new
    observation costs one forward pass, one search and ``shortlist`` re-embedded bank images, whatever
    the bank's size. The out-of-distribution reference is the tier's. Bank rows are re-embedded
    with ``transform``'s noise seeded by row, exactly as exhaustive matching embeds them.

    Arguments:
        embed, bank: as for :class:`Matcher`.
        embeddings: the bank's embeddings at ``tier``.
        tier: the :class:`~protolib.matching.ResolutionTier` they were made at.
        transform: the observation's exact transform (an :class:`~protolib.matching.ObservationTransform`).
        shortlist: candidates taken from the tier per target and re-embedded (at least ``top_k``).
        options: as for :class:`Matcher`.
    """

    def __init__(
        self,
        embed: EmbedFunction,
        bank: Bank,
        embeddings: BankEmbeddings,
        tier,
        *,
        transform: ImageTransform,
        shortlist: int = 2000,
        **options,
    ):
        if shortlist < 1:
            raise ProtolibInputError(f"The shortlist must hold at least one candidate, got {shortlist}.")
        super().__init__(embed, bank, embeddings, transform=transform, **options)
        self.tier, self.shortlist = tier, int(shortlist)

    @classmethod
    def from_model(  # type: ignore[override]
        cls,
        model_path: str | Path,
        bank: Bank,
        *,
        transform: ImageTransform,
        settings: MatchingSettings | None = None,
        batch_size: int = 256,
        progress: bool = True,
        **options,
    ) -> TieredMatcher:
        """A tiered matcher for the Siamese network at ``model_path`` and an observation's ``transform``.

        The tiers come from ``settings`` (:attr:`MatchingSettings.tier_beam_factors` and
        :attr:`~MatchingSettings.tier_peak_snr`); the one nearest the observation's beam and noise is
        embedded the first time it is needed and cached beside the model (``<model>.tier-<hash>.npz``),
        then read from there by every later observation near it.

        Raises:
            ProtolibInputError: as :meth:`Matcher.from_model`, or ``transform`` is not an observation's
                (:class:`~protolib.matching.ObservationTransform`, which knows its beam and noise).
        """
        settings = settings or MatchingSettings()
        resolution = _observation_resolution(transform)
        model_path = Path(model_path)
        embed, model_options = _siamese_embedding(model_path, bank, batch_size)
        tier = nearest_tier(
            resolution_tiers(bank, settings.tier_beam_factors, settings.tier_peak_snr),
            resolution.target_beam,
            resolution.noise_rms_jy_beam,
        )
        embeddings = _cached_tier_embeddings(embed, model_path, bank, tier, batch_size, progress)
        return cls(
            embed,
            bank,
            embeddings,
            tier,
            transform=transform,
            shortlist=max(settings.shortlist, settings.top_k or 0),
            **model_options,
            **options,
        )

    def match(
        self,
        image: np.ndarray,
        *,
        top_k: int | None = 200,
        threshold: float | None = None,
        exclude_system: int | None = None,
    ) -> Matches:
        """The best matches of one target image ``(H, W)``: shortlisted in the tier, re-ranked at the target's
        transform.

        With ``threshold`` alone, only shortlisted candidates can pass it.
        """
        image = np.asarray(image)
        if image.ndim != 2:
            raise ProtolibInputError(f"match() takes one image (H, W); got shape {image.shape}.")
        [found] = self.search(self.embed(image), top_k=top_k, threshold=threshold, exclude_systems=[exclude_system])
        return found

    def search(
        self,
        queries: np.ndarray,
        *,
        top_k: int | None = 200,
        threshold: float | None = None,
        exclude_systems: Sequence[int | None] | None = None,
    ) -> list[Matches]:
        """The best matches of each embedded target ``(Q, D)``: shortlisted in the tier, re-ranked at the exact
        transform.

        Every candidate of every shortlist is embedded once, so the reference targets of the
        calibration (:func:`~protolib.matching.fit_matches`) cost what their shortlists hold together.
        """
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        shortlists = self.index.search(queries, top_k=max(self.shortlist, top_k or 0), exclude_systems=exclude_systems)
        rows = np.unique(
            np.concatenate([m.system.astype(np.int64) * self.bank.n_projections + m.projection for m in shortlists])
        )
        vectors = self.embed_rows(rows // self.bank.n_projections, rows % self.bank.n_projections)
        found = []
        for query, candidates in zip(queries, shortlists):
            at = np.searchsorted(
                rows, candidates.system.astype(np.int64) * self.bank.n_projections + candidates.projection
            )
            similarity = vectors[at] @ query
            order = np.argsort(-similarity, kind="stable")[: top_k or None]
            if threshold is not None:
                order = order[similarity[order] >= threshold]
            found.append(
                Matches(
                    similarity[order].astype(np.float32),
                    candidates.system[order],
                    candidates.projection[order],
                    candidates.excluded_system,
                )
            )
        return found

    def embed_rows(self, systems: np.ndarray, projections: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Embeddings ``(n, D)`` of the bank images ``(systems[i], projections[i])`` seen through the exact
        transform."""
        rows = np.asarray(systems, dtype=np.int64) * self.bank.n_projections + np.asarray(projections, dtype=np.int64)
        parts = []
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            images = read_rows(self.bank, chunk)
            parts.append(np.asarray(self.embed_images(self.transform(images, rows=chunk)), dtype=np.float32))
        return np.concatenate(parts) if parts else np.zeros((0, self.embeddings.vectors.shape[1]), dtype=np.float32)


def embeds_bands(model_path: str | Path) -> bool:
    """Whether the Siamese network at ``model_path`` embeds any subset of a bank's bands (trained with
    ``siamese.model.bands: all``, :mod:`~protolib.band_siamese`); ``False`` for a one-band network."""
    from ..siamese import load_siamese

    if not Path(model_path).exists():
        return False
    return "bands" in (getattr(load_siamese(model_path), "checkpoint", None) or {})


class BandMatcher(Matcher):
    """A matcher for one source's maps in some bands, embedded jointly by a band-dropout network.

    The target is its maps stacked in increasing frequency ``(bands, H, W)`` (one map: ``(H, W)`` too);
    every bank image is embedded in the same bands, each band seen as its map is (its own transform),
    by :meth:`~protolib.siamese.SiameseModel.embed_bands`
    (:func:`~protolib.matching.band_embeddings.band_bank_embeddings`, cached per subset of bands and transforms).
    ``bank`` is one band of the bank (the searched map's, opened as a one-band bank): what the image-space fit, the
    calibration and the report read; the embeddings are of the whole bank.

    Arguments:
        embed: images ``(N, bands, H, W)`` of ``bands_ghz`` to embeddings ``(N, D)``.
        bank, embeddings, options: as for :class:`Matcher`; ``transform``: the transform of ``bank``'s band.
        bands_ghz: the bands embedded, increasing [GHz].
    """

    def __init__(self, embed: EmbedFunction, bank: Bank, embeddings: BankEmbeddings, *, bands_ghz, **options):
        super().__init__(embed, bank, embeddings, **options)
        self.bands_ghz = [float(f) for f in bands_ghz]

    @classmethod
    def from_model(  # type: ignore[override]
        cls,
        model_path: str | Path,
        bank: Bank,
        *,
        bands_bank: Bank,
        bands_ghz,
        transforms: Sequence[ImageTransform],
        transform_keys: Sequence[dict],
        transform: ImageTransform | None = None,
        cache: bool = True,
        batch_size: int = 256,
        progress: bool = True,
        **options,
    ) -> BandMatcher:
        """A matcher for the band-dropout network at ``model_path``: ``bands_bank`` (the bank opened whole) embedded
        in ``bands_ghz`` (increasing), band ``j`` through ``transforms[j]`` (described by ``transform_keys[j]``, so
        another transform recomputes), cached beside the model; ``bank``: the searched band, opened as one band."""
        model_path = Path(model_path)
        model, checkpoint, model_size = _load_siamese_for(model_path, bands_bank)
        key = {"model_sha256": file_sha256(model_path), "transform": list(transform_keys)}
        embeddings = band_bank_embeddings(
            model,
            bands_bank,
            model_path,
            bands_ghz=bands_ghz,
            key=key,
            transforms=list(transforms),
            cache=cache,
            batch_size=batch_size,
            progress=progress,
        )

        def embed(images: np.ndarray) -> np.ndarray:
            return model.embed_bands(images, bands_ghz, batch_size=batch_size)

        options.update(transform=transform, image_size=int(model_size) if model_size else None, checkpoint=checkpoint)
        return cls(embed, bank, embeddings, bands_ghz=bands_ghz, **options)

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Embeddings ``(N, D)`` of targets ``(N, bands, H, W)`` (or one ``(bands, H, W)``; of one band, ``(N, H, W)``
        or ``(H, W)`` too)."""
        images = np.asarray(images, dtype=np.float32)
        n_bands, size = len(self.bands_ghz), (self.image_size, self.image_size)
        if n_bands == 1 and images.ndim in (2, 3) and images.shape[-2:] == size:
            images = images.reshape(-1, 1, *size)
        images = images[None] if images.ndim == 3 else images
        if images.ndim != 4 or images.shape[1:] != (n_bands, *size):
            raise ProtolibInputError(
                f"Targets in {n_bands} band{'s' if n_bands > 1 else ''} ({', '.join(f'{f:g}' for f in self.bands_ghz)}"
                f" GHz) must be ({n_bands}, {size[0]}, {size[1]}) like the bank's images; got shape {images.shape}."
            )
        if not np.all(np.isfinite(images)):
            raise ProtolibInputError("Target image has NaN or infinite pixels; fill or crop them before matching.")
        return np.asarray(self.embed_images(images), dtype=np.float32)

    def match(
        self,
        image: np.ndarray,
        *,
        top_k: int | None = 200,
        threshold: float | None = None,
        exclude_system: int | None = None,
    ) -> Matches:
        """The best matches of one target: its maps ``(bands, H, W)`` (one band: ``(H, W)`` too)."""
        [found] = self.search(self.embed(image), top_k=top_k, threshold=threshold, exclude_systems=[exclude_system])
        return found


def _observation_resolution(transform: ImageTransform):
    """The beam and noise an observation's ``transform`` degrades bank images to; refused, in one line, for any
    other transform (tiers are chosen by the observation's beam and noise)."""
    resolution = getattr(transform, "resolution", None)
    if resolution is None or not getattr(transform, "seeded_by_row", False):
        raise ProtolibInputError(
            "Tiered matching needs an observation's transform (an ObservationTransform, e.g. "
            "matching_target(...).transform); use Matcher.from_model for other transforms."
        )
    return resolution


def _cached_tier_embeddings(
    embed: EmbedFunction, model_path: Path, bank: Bank, tier: ResolutionTier, batch_size: int, progress: bool
) -> BankEmbeddings:
    """The bank's embeddings at ``tier``, read from their cache beside the model (keyed by the model file's SHA-256),
    or embedded now and cached there."""
    return tier_embeddings(
        embed,
        bank,
        tier,
        model_key={"model_sha256": file_sha256(model_path)},
        cache_path=tier_cache_path(model_path, bank, tier),
        batch_size=batch_size,
        progress=progress,
    )


def read_rows(bank: Bank, rows: np.ndarray) -> np.ndarray:
    """The bank images ``(n, H, W)`` of bank rows ``system * n_projections + projection``, each read alone.

    A shortlist is spread over the whole bank: reading its images one by one (in file order) costs
    what it holds, where :meth:`~protolib.bank.Bank.images_at` reads every projection of each system.
    """
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((len(rows), bank.image_size, bank.image_size), dtype=np.float32)
    for i in np.argsort(rows, kind="stable"):
        out[i] = bank.images[rows[i] // bank.n_projections, rows[i] % bank.n_projections]
    return out


def _siamese_embedding(model_path: Path, bank: Bank, batch_size: int) -> tuple[EmbedFunction, dict]:
    """The embedding function of the Siamese network at ``model_path`` (checked against ``bank``), and the
    :class:`Matcher` options that come with it (its pairwise similarity, image size and checkpoint)."""
    model, checkpoint, model_size = _load_siamese_for(Path(model_path), bank)

    def embed(images: np.ndarray) -> np.ndarray:
        return model.embed_images(images, batch_size=batch_size, progress=False)

    return embed, {
        "similarity": getattr(model, "similarity", None),
        "image_size": int(model_size) if model_size else None,
        "checkpoint": checkpoint,
    }


def _load_siamese_for(model_path: Path, bank: Bank):
    """The Siamese network saved at ``model_path``, its checkpoint and its image size, refused in one line when
    the file is missing or was trained on images of another size than ``bank``'s."""
    from ..siamese import load_siamese

    if not model_path.exists():
        raise ProtolibInputError(
            f"Model file {model_path} does not exist. Train one with `protolib train-siamese` "
            "or by running chapter 03 (notebooks/03_siamese_wsml.ipynb)."
        )
    model = load_siamese(model_path)
    checkpoint = getattr(model, "checkpoint", {}) or {}
    model_size = checkpoint.get("image_size")
    if model_size is not None and not isinstance(model_size, int):
        raise ProtolibInputError(
            f"Model {model_path}: its image_size {model_size!r} is not a whole number; the file was edited."
        )
    if model_size is not None and int(model_size) != bank.image_size:
        raise ProtolibInputError(
            f"Model {model_path} was trained on {model_size}x{model_size} px images but bank {bank.path} has "
            f"{bank.image_size}x{bank.image_size} px images; use a bank made with the model's image size."
        )
    check_same_setup(checkpoint, bank, model_path)
    return model, checkpoint, model_size
