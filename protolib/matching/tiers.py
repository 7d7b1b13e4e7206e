"""Resolution tiers: the bank embedded once at a few beams and noise levels, so a new observation need not re-embed it.

An observation has its own beam and noise, so exhaustive matching sees every bank image through the
observation's transform and embeds the whole bank again (:func:`~protolib.matching.bank_embeddings`):
seconds for the book's bank, minutes for a thesis-sized one, a quarter of an hour for 10^6 images
on a CPU. Tiered matching does that work once, ahead of the observations:

1. the bank is embedded at a few *resolution tiers* (:class:`ResolutionTier`): circular beams a few
   times the bank's, each at a few noise levels given as the peak signal-to-noise of a typical bank
   system at that beam. Each tier is cached beside the model like any embedding cache
   (:func:`tier_embeddings`), and embedded only when first needed;
2. a target's shortlist is its nearest neighbours in the tier nearest to its beam and noise
   (:func:`nearest_tier`);
3. only the shortlist is seen through the observation's exact transform and embedded again, and
   re-ranked by that similarity (:class:`~protolib.matching.TieredMatcher`).

Noise is drawn per bank row from ``(seed, row)`` (:class:`~protolib.matching.ObservationTransform`),
so a re-embedded shortlist row is bit-identical to the same row embedded exhaustively: the re-ranked
top ``k`` is the exhaustive top ``k`` whenever the latter lies inside the shortlist. The recall against
exhaustive matching is tested in ``tests/test_tiers.py`` and measured in ``benchmarks/tiered_search.py``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bank import Bank
from ..instrument import Beam
from ..runtime import ProtolibInputError
from .embeddings import BankEmbeddings, EmbedFunction, bank_embeddings, key_digest
from .observation_targets import ObservationTransform

__all__ = [
    "ResolutionTier",
    "resolution_tiers",
    "nearest_tier",
    "tier_cache_path",
    "tier_embeddings",
    "DEFAULT_TIER_BEAM_FACTORS",
    "DEFAULT_TIER_PEAK_SNR",
]

DEFAULT_TIER_BEAM_FACTORS = (1.0, 2.0, 4.0, 8.0)  # tier beam FWHM / the bank beam's major axis
DEFAULT_TIER_PEAK_SNR = (300.0, 100.0, 30.0, 10.0)  # a typical bank system's peak / the tier's noise rms


@dataclass(frozen=True)
class ResolutionTier:
    """One resolution tier: a circular beam and a noise level the whole bank is embedded at.

    Attributes:
        beam_fwhm_arcsec: the tier's circular beam FWHM, at the bank's distance [arcsec].
        noise_rms_jy_beam: the tier's total noise rms [Jy per tier beam] (the bank's own noise,
            smoothed to the tier beam, counts towards it).
        beam_factor: ``beam_fwhm_arcsec`` over the bank beam's major axis.
        peak_snr: the median peak of the bank's images at this beam, over ``noise_rms_jy_beam``.
    """

    beam_fwhm_arcsec: float
    noise_rms_jy_beam: float
    beam_factor: float
    peak_snr: float

    @property
    def beam(self) -> Beam:
        return Beam(self.beam_fwhm_arcsec, self.beam_fwhm_arcsec, 0.0)

    def key(self, noise_seed: int) -> dict:
        """Plain data identifying the tier's transform (keys its embedding cache)."""
        return {
            "tier_beam_fwhm_arcsec": round(self.beam_fwhm_arcsec, 9),
            "tier_noise_rms_jy_beam": float(f"{self.noise_rms_jy_beam:.9g}"),
            "noise_seed": int(noise_seed),
        }

    def transform(self, bank: Bank, noise_seed: int = 0) -> ObservationTransform:
        """Bank images seen at this tier's beam and noise, the noise of each row seeded by ``(noise_seed, row)``."""
        from ..observation import ResolutionMatch
        from ..observation.regrid import BankGrid

        grid = BankGrid.from_bank(bank)
        resolution = ResolutionMatch(
            self.beam,
            grid.pixel_arcsec,
            bank_beam=grid.beam,
            noise_rms_jy_beam=self.noise_rms_jy_beam,
            bank_noise_rms_jy_beam=grid.noise_rms_jy_beam,
        )
        return ObservationTransform(resolution, noise_seed)

    def __str__(self) -> str:
        return (
            f"tier beam {self.beam_fwhm_arcsec:.3g}\" ({self.beam_factor:g} x the bank's), noise "
            f"{self.noise_rms_jy_beam * 1e3:.3g} mJy/beam (peak S/N {self.peak_snr:.3g})"
        )


def resolution_tiers(
    bank: Bank,
    beam_factors: Sequence[float] = DEFAULT_TIER_BEAM_FACTORS,
    peak_snr: Sequence[float] = DEFAULT_TIER_PEAK_SNR,
    *,
    n_sample: int = 256,
) -> list[ResolutionTier]:
    """The bank's resolution tiers: every beam factor with every peak signal-to-noise.

    A tier's noise is the median peak of ``n_sample`` bank images (a fixed sample) seen at its beam,
    divided by ``peak_snr``; where that is below the bank's own noise smoothed to the beam, the tier
    takes the bank's noise (tiers that then coincide are kept once).

    Raises:
        ProtolibInputError: a beam factor below 1 (a bank cannot be sharpened) or a peak
            signal-to-noise that is not positive.
    """
    from ..observation import ResolutionMatch
    from ..observation.regrid import BankGrid

    if not beam_factors or min(beam_factors) < 1.0:
        raise ProtolibInputError(
            f"Tier beam factors must be at least 1 (a bank cannot be sharpened), got {list(beam_factors)}."
        )
    if not peak_snr or min(peak_snr) <= 0:
        raise ProtolibInputError(f"Tier peak signal-to-noise ratios must be positive, got {list(peak_snr)}.")
    grid = BankGrid.from_bank(bank)
    base = grid.beam.major_arcsec if grid.beam is not None else 2.0 * grid.pixel_arcsec
    sample = np.random.default_rng(0).choice(
        bank.n_systems * bank.n_projections, min(n_sample, bank.n_systems * bank.n_projections), replace=False
    )
    images = bank.images_at(sample // bank.n_projections, sample % bank.n_projections)
    tiers: list[ResolutionTier] = []
    for factor in sorted(set(float(f) for f in beam_factors)):
        resolution = ResolutionMatch(
            Beam(base * factor, base * factor),
            grid.pixel_arcsec,
            bank_beam=grid.beam,
            bank_noise_rms_jy_beam=grid.noise_rms_jy_beam,
        )
        peak = float(np.median(resolution(images).reshape(len(images), -1).max(axis=1)))
        for snr in sorted(set(float(s) for s in peak_snr), reverse=True):
            noise = max(peak / snr, resolution.bank_noise_rms_jy_beam)
            if not any(
                t.beam_factor == factor and math.isclose(t.noise_rms_jy_beam, noise, rel_tol=1e-6) for t in tiers
            ):
                tiers.append(ResolutionTier(base * factor, noise, factor, peak / noise if noise > 0 else math.inf))
    return tiers


def nearest_tier(tiers: Sequence[ResolutionTier], beam: Beam, noise_rms_jy_beam: float) -> ResolutionTier:
    """The tier nearest an observation's beam and noise (both at the bank's distance).

    Distance: ``|ln(b / b_tier)| + 0.5 |ln(sigma / sigma_tier)|``, with ``b`` the beam's geometric-mean
    FWHM and ``sigma`` the noise rms: the beam matters more than the noise to what the network sees.
    """
    if not tiers:
        raise ProtolibInputError(
            "No resolution tiers to choose from; give at least one beam factor and one peak signal-to-noise."
        )
    size = math.sqrt(beam.major_arcsec * beam.minor_arcsec)
    floor = 1e-30

    def distance(tier: ResolutionTier) -> float:
        return abs(math.log(size / tier.beam_fwhm_arcsec)) + 0.5 * abs(
            math.log(max(noise_rms_jy_beam, floor) / max(tier.noise_rms_jy_beam, floor))
        )

    return min(tiers, key=distance)


def tier_cache_path(model_path: str | Path, bank: Bank, tier: ResolutionTier, noise_seed: int = 0) -> Path:
    """Where a model's embeddings of ``bank`` at ``tier`` are cached: ``<model>.tier-<hash>.npz`` beside it.

    Tier caches are not pruned with the observations' caches (:func:`~protolib.matching.prune_embedding_caches`):
    they are the point of embedding once.
    """
    model_path = Path(model_path)
    return model_path.with_name(
        f"{model_path.stem}.tier-{key_digest({'bank': bank.identity, **tier.key(noise_seed)})[:16]}.npz"
    )


def tier_embeddings(
    embed: EmbedFunction,
    bank: Bank,
    tier: ResolutionTier,
    *,
    model_key: dict,
    cache_path: str | Path | None,
    noise_seed: int = 0,
    batch_size: int = 256,
    progress: bool = True,
) -> BankEmbeddings:
    """The bank's embeddings at ``tier`` (read from ``cache_path`` when it holds them, else computed and cached).

    When ``cache_path``'s folder cannot be written, they are kept in memory for this run, with a warning.
    """
    options = dict(
        key={**model_key, "tier": tier.key(noise_seed)},
        transform=tier.transform(bank, noise_seed),
        batch_size=batch_size,
        progress=progress,
    )
    try:
        return bank_embeddings(embed, bank, cache_path=cache_path, **options)
    except ProtolibInputError as error:
        if cache_path is None or "could not write" not in str(error):
            raise
        warnings.warn(
            f"The tier's embeddings could not be cached ({error}); they are kept in memory for this run only.",
            stacklevel=2,
        )
        return bank_embeddings(embed, bank, cache_path=None, **options)
