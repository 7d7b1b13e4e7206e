"""What a map does not say exactly, carried into the intervals: its distance, its flux scale and its recoverable scale.

Three settings of a match are uncertain for every real map:

- **the distance**: cloud distances carry 5-20% errors (``--distance 293 --distance-error 22``);
- **the flux calibration**: an interferometer's absolute flux scale is good to 5-20% depending on
  the band (:func:`default_flux_calibration`);
- **the maximum recoverable scale**, when neither the user nor the file gives it: any value from
  :data:`MAX_SCALE_RANGE_BEAMS` beam major axes is plausible for an interferometer, and none at all
  for a model image or a map combined with single-dish data (:data:`NO_FILTER_SHARE` of the draws).

A match is repeated over draws of all three (:meth:`ObservingUncertainty.draws`, a Latin hypercube
from :mod:`scipy.stats.qmc`, so a dozen draws cover each range evenly), each draw prepared and
searched like the nominal one, and the matches of all draws are pooled (:func:`pooled_matches`),
each draw with the same total weight. The intervals of the pooled matches then carry the three
uncertainties. :func:`widening_by_source` says how much each one widened them and how far each
parameter moves across its range, from a linear fit of every draw's median on the three settings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ..runtime import ProtolibInputError
from .matches import Matches, describe_parameter, scaled_for_summary

__all__ = [
    "FLUX_CALIBRATION_BANDS",
    "MAX_SCALE_RANGE_BEAMS",
    "NO_FILTER_SHARE",
    "OBSERVING_DRAWS",
    "ObservingDraw",
    "ObservingDraws",
    "ObservingUncertainty",
    "default_flux_calibration",
    "observing_uncertainty",
    "pooled_matches",
    "widening_by_source",
]

# Nominal absolute flux-calibration accuracy (1 sigma) by observed frequency: up to 211 GHz (ALMA Bands 1-5,
# NOEMA 3 and 2 mm) 5%; to 373 GHz (Bands 6-7, NOEMA 1.3 mm) 10%; above (Bands 8-10) 20%. These are the ALMA
# Technical Handbook's nominal figures; Francis et al. (2020, AJ 160, 270) measured the nominal 10% in Band 7.
FLUX_CALIBRATION_BANDS = ((211.0, 0.05), (373.0, 0.10), (math.inf, 0.20))
# recoverable scales drawn (log-uniform) when the map does not say, in beam major axes ...
MAX_SCALE_RANGE_BEAMS = (
    5.0,
    50.0,
)
# ... and this share of the draws with no filtering at all (a model, or a map with single-dish data)
NO_FILTER_SHARE = 0.25
OBSERVING_DRAWS = 12  # draws of (distance, flux scale, recoverable scale) a match is repeated over
SOURCES = ("distance", "flux_calibration", "recoverable_scale")


@dataclass(frozen=True)
class ObservingDraw:
    """One draw of the uncertain settings: the distance [pc], the factor the map's fluxes are multiplied by,
    and the maximum recoverable scale [arcsec] (``None``: as given or as the file says; 0: no filtering)."""

    distance_pc: float
    flux_factor: float
    max_scale_arcsec: float | None


@dataclass(frozen=True)
class ObservingUncertainty:
    """How uncertain a map's distance, flux scale and recoverable scale are (see :func:`observing_uncertainty`).

    Attributes:
        distance_pc, distance_error_pc: the distance and its 1-sigma error [pc] (0: exact).
        flux_calibration: the 1-sigma fractional error of the flux scale (0: exact).
        max_scale_range_arcsec: the range the recoverable scale is drawn from, log-uniformly [arcsec]
            (``None``: it is known).
        n_draws: how many draws the match is repeated over; ``seed``: the draws' seed.
        flux_calibration_source: where ``flux_calibration`` came from ("given" or the band's default).
        no_filter_share: the share of the draws with no filtering (:data:`NO_FILTER_SHARE`; 0 when the map's
            negative bowl shows that it is filtered).
        max_scale_range_source: where ``max_scale_range_arcsec`` came from.
    """

    distance_pc: float
    distance_error_pc: float = 0.0
    flux_calibration: float = 0.0
    max_scale_range_arcsec: tuple[float, float] | None = None
    n_draws: int = OBSERVING_DRAWS
    seed: int = 0
    flux_calibration_source: str = "given"
    no_filter_share: float = NO_FILTER_SHARE
    max_scale_range_source: str = ""

    @property
    def sources(self) -> list[str]:
        """The settings that are uncertain: among ``distance``, ``flux_calibration`` and ``recoverable_scale``."""
        uncertain = (self.distance_error_pc > 0, self.flux_calibration > 0, self.max_scale_range_arcsec is not None)
        return [name for name, on in zip(SOURCES, uncertain) if on] if self.n_draws > 0 else []

    def draws(self) -> list[ObservingDraw]:
        """The draws: a Latin hypercube over the three settings (seeded), normal in distance (kept above half
        of it), log-normal in flux scale, log-uniform in recoverable scale with :data:`NO_FILTER_SHARE` of the
        draws unfiltered."""
        from scipy.stats import norm, qmc

        if not self.sources:
            return []
        unit = qmc.LatinHypercube(d=3, seed=np.random.default_rng(self.seed)).random(self.n_draws)
        distance = np.maximum(self.distance_pc + self.distance_error_pc * norm.ppf(unit[:, 0]), 0.5 * self.distance_pc)
        flux = np.exp(math.log1p(self.flux_calibration) * norm.ppf(unit[:, 1]))
        if self.max_scale_range_arcsec is None:
            scales = [None] * self.n_draws
        else:
            low, high = np.log(self.max_scale_range_arcsec)
            position = unit[:, 2] / (1.0 - self.no_filter_share)
            scales = [float(np.exp(low + (high - low) * u)) if u < 1.0 else 0.0 for u in position]
        return [ObservingDraw(float(d), float(f), s) for d, f, s in zip(distance, flux, scales)]

    def standardised(self, draws: Sequence[ObservingDraw]) -> np.ndarray:
        """``(n_draws, n_sources)``: each uncertain setting of each draw in units of its spread (distance and log
        flux scale in sigmas; the recoverable scale from -1 to 1: log-uniformly across its range, then the
        unfiltered draws at the top)."""
        columns = {
            "distance": [(d.distance_pc - self.distance_pc) / (self.distance_error_pc or 1.0) for d in draws],
            "flux_calibration": [math.log(d.flux_factor) / math.log1p(self.flux_calibration or 1.0) for d in draws],
        }
        if self.max_scale_range_arcsec is not None:
            low, high = np.log(self.max_scale_range_arcsec)
            kept = 1.0 - self.no_filter_share
            columns["recoverable_scale"] = [
                2
                * (
                    kept * (math.log(d.max_scale_arcsec) - low) / (high - low)
                    if d.max_scale_arcsec
                    else 1.0 - 0.5 * self.no_filter_share
                )
                - 1
                for d in draws
            ]
        return np.column_stack([columns[name] for name in self.sources]) if self.sources else np.zeros((len(draws), 0))

    def to_dict(self) -> dict:
        """Plain data for ``report.json``."""
        described = asdict(self)
        described["sources"] = self.sources
        assumed = self.max_scale_range_arcsec is not None and not self.max_scale_range_source
        described["max_scale_range_beams"] = list(MAX_SCALE_RANGE_BEAMS) if assumed else None
        described["no_filter_share"] = self.no_filter_share if self.max_scale_range_arcsec is not None else 0.0
        return described


def default_flux_calibration(frequency_ghz: float | None) -> float:
    """The nominal 1-sigma flux-calibration error at ``frequency_ghz`` (:data:`FLUX_CALIBRATION_BANDS`); 10% when
    the frequency is unknown."""
    if frequency_ghz is None or not math.isfinite(frequency_ghz):
        return 0.10
    return next(error for upper, error in FLUX_CALIBRATION_BANDS if frequency_ghz <= upper)


def observing_uncertainty(
    distance_pc: float,
    *,
    distance_error_pc: float | None = None,
    flux_calibration: float | None = None,
    frequency_ghz: float | None = None,
    beam_major_arcsec: float | None = None,
    max_scale_known: bool = True,
    n_draws: int = OBSERVING_DRAWS,
    seed: int = 0,
    source: str = "the map",
    estimated_scale: dict | None = None,
) -> ObservingUncertainty:
    """The uncertainty of a map's observing settings, checked.

    Arguments:
        distance_pc, distance_error_pc: the distance and its 1-sigma error [pc] (``None``: 0, exact).
        flux_calibration: 1-sigma fractional flux-scale error (``None``: :func:`default_flux_calibration` at
            ``frequency_ghz``).
        beam_major_arcsec, max_scale_known: when the recoverable scale is not known, it is drawn over
            :data:`MAX_SCALE_RANGE_BEAMS` beam major axes, with :data:`NO_FILTER_SHARE` of the draws unfiltered ...
        estimated_scale: ... unless the map's negative bowl gave a range
    (:class:`~protolib.observation.scale.ScaleEstimate`'s
            ``to_dict()``): it is then drawn over that range, every draw filtered.
        n_draws: draws to repeat the match over (0: none, the settings taken as exact).
        source: the map, for the messages.

    Raises:
        ProtolibInputError: an error that is negative, not finite, or too large to mean anything.
    """
    error, flux = _checked_errors(distance_pc, distance_error_pc, flux_calibration, frequency_ghz, n_draws, source)
    given = flux_calibration is not None
    scale_range, share, how = _max_scale_draws(estimated_scale, max_scale_known, beam_major_arcsec)
    at = f"{frequency_ghz:.0f} GHz" if frequency_ghz else "an unknown frequency"
    return ObservingUncertainty(
        float(distance_pc),
        error,
        flux,
        scale_range,
        int(n_draws),
        int(seed),
        "given" if given else f"nominal at {at}",
        share,
        how,
    )


def _checked_errors(
    distance_pc: float,
    distance_error_pc: float | None,
    flux_calibration: float | None,
    frequency_ghz: float | None,
    n_draws,
    source: str,
) -> tuple[float, float]:
    """The distance error [pc] and the fractional flux-calibration error (the band's nominal one when not given),
    each refused in one line when negative, not finite or too large to mean anything, as is a number of draws outside
    0-200."""
    error = 0.0 if distance_error_pc is None else float(distance_error_pc)
    if not (math.isfinite(error) and 0 <= error < 0.5 * distance_pc):
        raise ProtolibInputError(
            f"{source}: the distance error must be at least 0 and under half the distance ({distance_pc:g} pc), "
            f"got {distance_error_pc}."
        )
    flux = float(flux_calibration) if flux_calibration is not None else default_flux_calibration(frequency_ghz)
    if not (math.isfinite(flux) and 0 <= flux <= 0.5):
        raise ProtolibInputError(
            f"{source}: the flux-calibration error is a fraction from 0 to 0.5 (0.1 for 10%), got {flux_calibration}."
        )
    if not (isinstance(n_draws, (int, np.integer)) and 0 <= n_draws <= 200):
        raise ProtolibInputError(f"{source}: the number of observing draws must be 0 (none) to 200, got {n_draws}.")
    return error, flux


def _max_scale_draws(
    estimated_scale: dict | None, max_scale_known: bool, beam_major_arcsec: float | None
) -> tuple[tuple[float, float] | None, float, str]:
    """The range the recoverable scale is drawn over [arcsec], the share of draws left unfiltered and where the
    range comes from: the map's negative bowl when it gave one (every draw filtered), else
    :data:`MAX_SCALE_RANGE_BEAMS` beams when the scale is not known, else none."""
    scale_range, share, how = None, NO_FILTER_SHARE, ""
    if estimated_scale and estimated_scale.get("range_arcsec"):
        scale_range, share, how = tuple(estimated_scale["range_arcsec"]), 0.0, estimated_scale["reason"]
    elif not max_scale_known and beam_major_arcsec:
        scale_range = (MAX_SCALE_RANGE_BEAMS[0] * beam_major_arcsec, MAX_SCALE_RANGE_BEAMS[1] * beam_major_arcsec)
    return scale_range, share, how


def pooled_matches(draws: Sequence[Matches]) -> tuple[Matches, np.ndarray]:
    """The matches of every draw in one list, and weights that give each draw the same total weight
    (a bank image matched in several draws counts once per draw)."""
    if not draws:
        raise ProtolibInputError("No draws to pool.")
    weights = np.concatenate([np.full(len(m), 1.0 / max(len(m), 1)) for m in draws])
    pooled = Matches(
        np.concatenate([m.similarity for m in draws]),
        np.concatenate([m.system for m in draws]),
        np.concatenate([m.projection for m in draws]),
        draws[0].excluded_system,
    )
    return pooled, weights / weights.sum()


def widening_by_source(
    uncertainty: ObservingUncertainty,
    draws: Sequence[ObservingDraw],
    draw_samples: Sequence[Mapping[str, np.ndarray]],
    nominal: Mapping[str, np.ndarray],
    pooled: Mapping[str, np.ndarray],
    pooled_weights: np.ndarray,
    parameters: Sequence[str],
    parameter_info=None,
) -> dict:
    """How much each uncertain setting widened each parameter's 68% interval, and how far it moves the parameter.

    Every draw's median (in log10 for log-scaled parameters) is fitted linearly on the standardised settings
    (:meth:`ObservingUncertainty.standardised`). For each setting: ``shift`` is the change of the median across
    the setting's spread (from -1 to +1 sigma, or across the whole recoverable-scale range), in the units the
    parameter is summarised in (dex for log-scaled ones), and ``widening`` the 68% width it alone would give
    against the nominal one, ``sqrt(1 + (spread of the medians it causes / nominal half-width)^2)``. The
    measured ``widening`` of all together is the pooled matches' 68% width against the nominal matches'.

    Returns:
        parameter -> ``{"nominal_width", "pooled_width", "widening", "unit", "by_source": {setting: {"shift",
        "widening"}}}``.
    """
    from ..statistics import weighted_percentile

    z = uncertainty.standardised(draws)
    design = np.column_stack([np.ones(len(draws)), z])
    spread = z.std(axis=0)
    out = {}
    for name in parameters:
        info = describe_parameter(name, parameter_info)
        medians = np.array([np.median(scaled_for_summary(s[name], info.log_scale, name)) for s in draw_samples])
        slopes = np.linalg.lstsq(design, medians, rcond=None)[0][1:]
        low, high = weighted_percentile(scaled_for_summary(nominal[name], info.log_scale, name), [16, 84])
        p_low, p_high = weighted_percentile(
            scaled_for_summary(pooled[name], info.log_scale, name), [16, 84], pooled_weights
        )
        half = max(0.5 * (high - low), 1e-12)
        by_source = {
            source: {"shift": float(2 * slope), "widening": float(math.sqrt(1 + (slope * s / half) ** 2))}
            for source, slope, s in zip(uncertainty.sources, slopes, spread)
        }
        out[name] = {
            "unit": "dex" if info.log_scale else info.unit,
            "nominal_width": float(high - low),
            "pooled_width": float(p_high - p_low),
            "widening": float((p_high - p_low) / (2 * half)),
            "by_source": by_source,
        }
    return out


@dataclass
class ObservingDraws:
    """A target matched again at each draw of its uncertain settings.

    Attributes:
        uncertainty: the :class:`ObservingUncertainty` drawn from.
        draws: the :class:`ObservingDraw` of each repetition.
        matches: each draw's :class:`~protolib.matching.Matches`.
    """

    uncertainty: ObservingUncertainty
    draws: list[ObservingDraw]
    matches: list[Matches]

    def pooled(self) -> tuple[Matches, np.ndarray]:
        """All draws' matches in one list, with weights giving each draw the same total (:func:`pooled_matches`)."""
        return pooled_matches(self.matches)

    def draw_of_each_match(self) -> np.ndarray:
        """``(n_pooled,)`` the draw (0-based) each pooled match comes from."""
        return np.concatenate([np.full(len(m), i) for i, m in enumerate(self.matches)])
