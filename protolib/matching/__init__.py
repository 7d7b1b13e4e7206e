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

What each submodule owns:

- :mod:`~protolib.matching.matches`: :class:`Matches` (what a search returns) and the parameters of
  matched bank images;
- :mod:`~protolib.matching.index`: :class:`EmbeddingIndex`, exact and FAISS search;
- :mod:`~protolib.matching.ood`: the out-of-distribution check and its reference;
- :mod:`~protolib.matching.embeddings`: embedding the bank, and the embedding cache beside the model;
- :mod:`~protolib.matching.baselines`: pairwise matching (the thesis's) and random matches;
- :mod:`~protolib.matching.observation_targets`: observations prepared as targets;
- :mod:`~protolib.matching.tiers`: the bank embedded at a few resolution tiers (beams and noise
  levels), so a new observation need not re-embed it;
- :mod:`~protolib.matching.matcher`: :class:`Matcher`, :class:`TieredMatcher` (shortlist from a
  tier, re-rank at the observation's exact transform), :class:`BandMatcher` (maps in several bands
  embedded jointly by a band-dropout network) and :class:`MatchingSettings`;
- :mod:`~protolib.matching.calibration`: the matches' intervals calibrated on reference targets (the
  statistics are in :mod:`protolib.statistics`);
- :mod:`~protolib.matching.bands`: maps of one source in several bands, each prepared in the bank's
  band nearest it, for one joint match (:func:`prepare_band_targets`);
- :mod:`~protolib.matching.fit`: the matches compared with the target in image space (:func:`fit_matches`).

Matching one target and writing its report (``protolib match``) is a run of the pipelines layer:
:func:`protolib.pipelines.match.run_match`.
"""

from .bands import BandTargets, MapBand, band_label, map_bands, prepare_band_targets, spectral_indices
from .baselines import pairwise_matches, random_matches
from .calibration import reference_calibration
from .embeddings import (
    CACHE_FORMAT,
    MAX_CACHES,
    BankEmbeddings,
    EmbedFunction,
    ImageTransform,
    apply_transform,
    bank_embeddings,
    cached_bank_embeddings,
    embed_bank,
    file_sha256,
    key_digest,
    model_cache_path,
    prune_embedding_caches,
)
from .fit import MatchFit, fit_matches
from .index import EmbeddingIndex, faiss_available
from .matcher import BandMatcher, Matcher, MatchingSettings, TieredMatcher, embeds_bands, read_rows
from .matches import Matches, describe_parameter, match_parameters, scaled_for_summary, truth_parameters
from .observation_targets import (
    ObservationTarget,
    ObservationTransform,
    matching_target,
    read_observation_target,
)
from .ood import OutOfDistributionCheck, check_out_of_distribution, nearest_neighbour_similarities
from .tiers import ResolutionTier, nearest_tier, resolution_tiers, tier_cache_path, tier_embeddings

__all__ = [
    "EmbedFunction",
    "ImageTransform",
    "Matches",
    "BankEmbeddings",
    "EmbeddingIndex",
    "OutOfDistributionCheck",
    "Matcher",
    "TieredMatcher",
    "BandMatcher",
    "embeds_bands",
    "read_rows",
    "ResolutionTier",
    "resolution_tiers",
    "nearest_tier",
    "tier_cache_path",
    "tier_embeddings",
    "ObservationTransform",
    "apply_transform",
    "embed_bank",
    "bank_embeddings",
    "cached_bank_embeddings",
    "model_cache_path",
    "prune_embedding_caches",
    "key_digest",
    "file_sha256",
    "CACHE_FORMAT",
    "MAX_CACHES",
    "nearest_neighbour_similarities",
    "check_out_of_distribution",
    "pairwise_matches",
    "random_matches",
    "faiss_available",
    "ObservationTarget",
    "matching_target",
    "read_observation_target",
    "fit_matches",
    "BandTargets",
    "MapBand",
    "band_label",
    "map_bands",
    "prepare_band_targets",
    "spectral_indices",
    "MatchFit",
    "MatchingSettings",
    "match_parameters",
    "truth_parameters",
    "describe_parameter",
    "scaled_for_summary",
    "reference_calibration",
]
