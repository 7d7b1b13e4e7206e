"""Scoring: every figure of one method's ranking (or posterior samples) at one number of matches, and the correction.

:func:`score_ranking` scores a :class:`~protolib.evaluation.ranking.Ranking` at ``k`` matches per
target; :func:`distribution_metrics` scores any method's samples (matches, or posterior draws)
against the truths: recovery, coverage, rank histograms (simulation-based calibration) and TARP,
from the plain-array statistics of :mod:`protolib.statistics`. :func:`choose_correction` picks ``k``
and a widening per parameter on validation systems, and :func:`evaluate_methods` does all of it for
every method on the same targets.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from ..bank import Bank
from ..distributions import similarity_weights
from ..matching import embed_bank
from ..normalise import scaled_image_parameters
from ..siamese import similarity_metrics
from ..statistics import (
    calibrate_widening,
    central_coverage,
    central_intervals,
    ndcg_at_k,
    r_squared,
    required_widening,
    tarp_coverage,
    truth_ranks,
)
from .methods import MatchingMethod
from .ranking import Ranking, Relevance, rank_targets
from .settings import COVERAGE_LEVELS, CURVE_LEVELS, EvaluationSettings

__all__ = [
    "MethodEvaluation",
    "MethodResult",
    "score_ranking",
    "distribution_metrics",
    "choose_correction",
    "evaluate_methods",
    "result_metrics",
]


@dataclass
class MethodEvaluation:
    """One method's figures on one set of targets at one ``k``.

    Attributes:
        method: the method's name.
        top_k: matches per target.
        metrics: the scalar figures (``similarity``, ``retrieval``, ``parameters``, ``calibration``), JSON-ready.
        parameters: evaluated parameters, in order.
        truth: name -> ``(T,)`` true values (log10 where log-scaled).
        median: name -> ``(T,)`` the matches' median.
        interval_68: name -> ``(T, 2)`` the matches' 16th and 84th percentiles.
        ranks: name -> ``(T,)`` SBC rank of the truth among the ``top_k`` matches, as a fraction:
            ``(rank + u) / (top_k + 1)`` with ``u`` uniform in [0, 1), so that it is uniform on [0, 1] for a
            calibrated method whatever the bins.
        coverage_curve: name -> ``(len(CURVE_LEVELS),)`` coverage at :data:`CURVE_LEVELS`.
        tarp: ``(alpha, ecp)``.
        covered: name -> ``(T, len(COVERAGE_LEVELS))`` whether each target's (widened) central interval holds its truth.
        needed_widening: name -> ``(T, len(COVERAGE_LEVELS))`` the widening of the matches' own intervals at which each
            target would be covered (:func:`~protolib.statistics.required_widening`): ``covered`` is it at most
            the widening applied; a further term (:mod:`protolib.out_of_family`) is scored from it.
        target_system: ``(T,)`` each target's system (set by :func:`score_ranking`; ``None``: every target its own),
            which :func:`~protolib.statistics.coverage_standard_error` resamples.
        top_k_per_parameter: name -> the matches per target its figures are at, where the correction chose a ``k``
            per parameter (:func:`choose_correction` with ``k_per_parameter``; ``top_k`` is then the one ``k`` at
            which the figures over all parameters at once, similarity, retrieval and TARP, are scored); else ``None``.
    """

    method: str
    top_k: int
    metrics: dict
    parameters: list[str]
    truth: dict
    median: dict
    interval_68: dict
    ranks: dict
    coverage_curve: dict
    tarp: tuple[np.ndarray, np.ndarray]
    covered: dict = field(default_factory=dict)
    target_system: np.ndarray | None = None
    needed_widening: dict = field(default_factory=dict)
    top_k_per_parameter: dict[str, int] | None = None


@dataclass
class MethodResult:
    """One method evaluated on the test targets: at the configured ``k``, and corrected on validation systems.

    Attributes:
        method: the :class:`~protolib.evaluation.methods.MatchingMethod` (its name, comparison and description).
        evaluation: its figures at the configured ``top_k``.
        corrected: its figures at the ``k`` and interval widening chosen on the validation systems
            (:func:`choose_correction`); ``None`` without a correction.
        chosen_k, chosen_widening: that choice, the widening per parameter (``None`` without one).
        chosen_k_per_parameter: with a ``k`` chosen per parameter (``evaluate_methods(..., k_per_parameter=True)``),
            name -> its ``k`` (``chosen_k`` is then the one ``k`` chosen without the option); else ``None``.
        corrected_single_k: with a ``k`` per parameter, the figures the one-``k`` correction gives on the same
            test targets, for comparison; else ``None``.
        k_scores: the validation score of every candidate ``k``, ``{"k=..": score}``.
        path: the checkpoint of the network evaluated (set by
            :func:`~protolib.pipelines.evaluate.compare_variants`; else ``None``).

    ``result["evaluation"]`` reads ``result.evaluation``, as for the dicts earlier versions returned.
    """

    method: MatchingMethod
    evaluation: MethodEvaluation
    corrected: MethodEvaluation | None = None
    chosen_k: int | None = None
    chosen_widening: dict[str, float] | None = None
    k_scores: dict = field(default_factory=dict)
    path: Path | None = None
    chosen_k_per_parameter: dict[str, int] | None = None
    corrected_single_k: MethodEvaluation | None = None

    def __getitem__(self, key: str):
        """The attribute ``key`` (``result["chosen_k"]`` is ``result.chosen_k``)."""
        if key not in {f.name for f in fields(self)}:
            raise KeyError(key)
        return getattr(self, key)

    def figures(self, corrected: bool = False) -> MethodEvaluation:
        """The corrected figures when ``corrected`` and there are some, else those at the configured ``k``."""
        return self.corrected if corrected and self.corrected is not None else self.evaluation

    def to_json(self) -> dict:
        """This result as its ``metrics.json`` entry: description, metric, ``at_top_k`` and, when corrected, the
        correction."""
        entry = {
            "description": self.method.description,
            "metric": self.method.comparison.name,
            "at_top_k": {**self.evaluation.metrics, "top_k": self.evaluation.top_k},
        }
        if self.corrected is not None:
            entry["corrected"] = {**self.corrected.metrics, "top_k": self.corrected.top_k}
            entry["chosen_k"], entry["chosen_widening"] = self.chosen_k, self.chosen_widening
            entry["correction_scores_on_validation"] = self.k_scores
        if self.chosen_k_per_parameter is not None:
            entry["chosen_k_per_parameter"] = self.chosen_k_per_parameter
        return entry


def score_ranking(
    ranking: Ranking,
    bank: Bank,
    relevance: Relevance,
    *,
    top_k: int,
    parameters: Sequence[str] | None = None,
    weight_temperature: float | None = None,
    rank_bins: int = 10,
    seed: int = 0,
    widening: float | Mapping[str, float] = 1.0,
) -> MethodEvaluation:
    """Every figure of one method's ranking at ``top_k`` matches per target.

    Arguments:
        ranking: from :func:`rank_targets`.
        bank: the bank.
        relevance: the target similarity (for the normalised parameter distance and TARP).
        top_k: matches per target.
        parameters: parameters evaluated (default: every bank parameter and the inclination).
        weight_temperature: weight matches by :func:`~protolib.distributions.similarity_weights` (``None``: equal).
        rank_bins: bins of the rank histograms (for the uniformity test).
        seed: tie-breaking of ranks and TARP's reference points.
        widening: intervals (coverage, 68% ranges) widened about the median by this factor, or by
            ``widening[name]`` per parameter (the correction; 1 for a parameter it does not name).
    """
    names = [*bank.physical_parameters, "inclination"] if parameters is None else list(parameters)
    top_k = min(top_k, ranking.order.shape[1])
    target_rows, match_rows, weights = _top_matches(ranking, bank, top_k, weight_temperature)
    z_images = np.repeat(relevance.normalised(bank), bank.n_projections, axis=0)
    distance = np.sqrt(((z_images[match_rows] - z_images[target_rows][:, None, :]) ** 2).mean(-1))  # (T, k)
    values, logs = scaled_image_parameters(bank, names)
    reference_rows = np.unique(ranking.reference_system * bank.n_projections + ranking.reference_projection)
    evaluation = distribution_metrics(
        values[match_rows],
        values[target_rows],
        names,
        logs,
        values[reference_rows].std(0),
        bank,
        relevance,
        z_images[match_rows],
        z_images[target_rows],
        method=ranking.method,
        weights=weights,
        widening=widening,
        rank_bins=rank_bins,
        seed=seed,
    )
    # similarity and retrieval first
    evaluation.metrics = {**_similarity_and_retrieval(ranking, top_k, distance), **evaluation.metrics}
    evaluation.target_system = np.asarray(ranking.target_system)
    return evaluation


def _top_matches(
    ranking: Ranking, bank: Bank, top_k: int, weight_temperature: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Each target's bank row ``(T,)``, its first ``top_k`` matches' bank rows ``(T, k)``, and their weights ``(T, k)``
    (``None``: equal weights)."""
    p = bank.n_projections
    target_rows = ranking.target_system * p + ranking.target_projection
    match_rows = (ranking.reference_system * p + ranking.reference_projection)[ranking.order[:, :top_k]]
    weights = None
    if weight_temperature is not None:
        weights = np.stack([similarity_weights(s, weight_temperature) for s in ranking.score[:, :top_k]])
    return target_rows, match_rows, weights


def _row_spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's correlation of each row of ``a`` with the same row of ``b`` (rows constant in either left out).

    ``scipy.stats.spearmanr`` correlates one pair of vectors per call; this ranks every row at once
    (average ranks for ties, as it does) and takes each row's Pearson correlation of the ranks.
    """
    keep = (np.ptp(a, axis=1) > 0) & (np.ptp(b, axis=1) > 0)
    from scipy.stats import rankdata  # imported here: scipy.stats costs 0.5 s in every process that reads a config

    ranks_a, ranks_b = (rankdata(x[keep], axis=1) for x in (a, b))
    ranks_a -= ranks_a.mean(1, keepdims=True)
    ranks_b -= ranks_b.mean(1, keepdims=True)
    return (ranks_a * ranks_b).sum(1) / np.sqrt((ranks_a**2).sum(1) * (ranks_b**2).sum(1))


def _similarity_and_retrieval(ranking: Ranking, top_k: int, distance: np.ndarray) -> dict:
    """The ``similarity`` and ``retrieval`` figures of a ranking at ``top_k``; ``distance (T, k)``: each match's
    normalised parameter distance."""
    ranked_relevance = np.take_along_axis(ranking.relevance, ranking.order, axis=1)
    pooled = similarity_metrics(ranking.score.ravel(), ranked_relevance.ravel())
    per_target = _row_spearman(ranking.score, ranked_relevance)
    ndcg = ndcg_at_k(ranked_relevance, ranking.relevance, top_k)
    chance = (
        ranking.relevance.mean(1)
        * (1.0 / np.log2(np.arange(2, top_k + 2))).sum()
        / (-np.sort(-ranking.relevance, axis=1)[:, :top_k] * (1.0 / np.log2(np.arange(2, top_k + 2)))).sum(1)
    )
    return {
        "similarity": {
            "spearman": pooled["spearman"],
            "spearman_per_target": float(np.nanmean(per_target)) if len(per_target) else float("nan"),
            "mse": pooled["mse"] if ranking.comparison.on_target_scale else float("nan"),
            "within_0.1": pooled["within_0.1"] if ranking.comparison.on_target_scale else float("nan"),
        },
        "retrieval": {
            f"ndcg_at_{top_k}": float(np.nanmean(ndcg)),
            "ndcg": float(np.nanmean(ndcg)),
            "ndcg_chance": float(np.nanmean(chance)),
            "mean_normalised_parameter_distance": float(distance.mean()),
            "best_match_normalised_parameter_distance": float(distance[:, 0].mean()),
        },
    }


def distribution_metrics(
    samples: np.ndarray,
    truths: np.ndarray,
    names: list[str],
    logs: list[bool],
    prior_spread: np.ndarray,
    bank: Bank,
    relevance: Relevance,
    z_samples: np.ndarray,
    z_truths: np.ndarray,
    *,
    method: str,
    weights: np.ndarray | None,
    widening: float | Mapping[str, float],
    rank_bins: int,
    seed: int,
) -> MethodEvaluation:
    """Recovery and calibration figures of any method's samples against the truths.

    Arguments:
        samples: ``(T, n, K)`` each target's samples (matches, or posterior draws), scaled as
            :func:`~protolib.normalise.scaled_image_parameters` (log10 where ``logs``).
        truths: ``(T, K)`` the true values, scaled the same way.
        names, logs: the ``K`` parameters and whether each is log-scaled.
        prior_spread: ``(K,)`` the prior's standard deviation of each scaled parameter (errors are divided by it).
        bank: the bank (for the parameters' units).
        relevance: the target similarity (which parameters it constrains; TARP's parameters).
        z_samples, z_truths: ``(T, n, K')`` and ``(T, K')`` the same in the relevance's normalised parameters
            (for TARP).
        method: the method's name.
        weights: ``(T, n)`` weight per sample, or ``None`` for equal weights.
        widening: intervals widened about the median by this factor, or ``widening[name]`` per parameter (default 1).
        rank_bins, seed: as in :func:`score_ranking`.

    Returns:
        The method's :class:`MethodEvaluation` at ``top_k = n``, its ``metrics`` the ``parameters`` and
        ``calibration`` figures only.
    """
    factors = {name: _widening_of(widening, name) for name in names}
    table, arrays = {}, {}
    for j, name in enumerate(names):
        row, arrays[name] = _parameter_figures(
            samples[..., j], truths[:, j], factors[name], weights, prior_spread[j], rank_bins=rank_bins, seed=(seed, j)
        )
        table[name] = {**_parameter_labels(name, logs[j], bank, relevance), **row}
    alpha, ecp = tarp_coverage(z_samples, z_truths, weights=weights, seed=seed)
    each = {key: {name: arrays[name][key] for name in names} for key in next(iter(arrays.values()), {})}
    calibration = _calibration(table, each.get("curve", {}), names, factors, alpha, ecp, relevance)
    return MethodEvaluation(
        method,
        samples.shape[1],
        {"parameters": table, "calibration": calibration},
        list(names),
        *(each.get(key, {}) for key in ("truth", "median", "interval_68", "rank", "curve")),
        (alpha, ecp),
        each.get("covered", {}),
        needed_widening=each.get("needed", {}),
    )


def _parameter_labels(name: str, log: bool, bank: Bank, relevance: Relevance) -> dict:
    """The first fields of a parameter's ``metrics.json`` row: whether log-scaled, its unit, whether in the target
    similarity."""
    unit = "dex" if log else ("deg" if name == "inclination" else bank.parameter_info[name].unit)
    return {"log_scale": log, "unit": unit, "in_target_similarity": name in relevance.definition.parameters}


def _parameter_figures(
    values: np.ndarray,
    truths: np.ndarray,
    factor: float,
    weights: np.ndarray | None,
    spread: float,
    *,
    rank_bins: int,
    seed: tuple[int, int],
) -> tuple[dict, dict]:
    """One parameter's figures: its ``metrics.json`` row, and its per-target arrays.

    Arguments:
        values: ``(T, n)`` each target's samples of the parameter; ``truths``: ``(T,)``.
        factor: the intervals' widening about the median.
        weights: ``(T, n)`` weight per sample, or ``None``.
        spread: the prior's spread of the parameter (errors and widths are divided by it; none where it is 0).
        rank_bins: bins of the rank histogram.
        seed: ``(seed, j)``: the random generators of the rank ties and of the rank spreading, for parameter ``j``.

    Returns:
        The row (errors, R^2, width, coverage, rank histogram), and ``truth``, ``median``, ``interval_68`` (widened),
        ``rank``, ``curve``, ``covered``, ``needed`` per target.
    """
    spread = spread if spread > 0 else float("nan")
    median, low, high = central_intervals(values, [0.68], weights)
    estimate = values.mean(1) if weights is None else (values * weights).sum(1)
    error = median - truths
    _, low_c, high_c = central_intervals(values, COVERAGE_LEVELS, weights, widening=factor)
    covered = (low_c <= truths[:, None]) & (truths[:, None] <= high_c)  # (T, levels)
    rank = _rank_fractions(values, truths, seed)
    counts = np.histogram(rank, bins=rank_bins, range=(0.0, 1.0))[0]
    row = {
        "median_abs_error": float(np.median(np.abs(error))),
        "rms_error": float(np.sqrt(np.mean(error**2))),
        "rms_error_over_prior_spread": float(np.sqrt(np.mean(error**2)) / spread),
        "r2_knn": r_squared(estimate, truths),
        "r2_median": r_squared(median, truths),
        "width_68_over_prior_spread": float(np.median(0.5 * factor * (high[:, 0] - low[:, 0])) / spread),
        **{f"coverage_{round(100 * c)}": float(v) for c, v in zip(COVERAGE_LEVELS, covered.mean(0))},
        "rank_histogram": counts.tolist(),
        "rank_uniformity_p": _uniformity_p(counts),
    }
    arrays = {
        "truth": truths,
        "median": median,
        "interval_68": median[:, None] + factor * (np.c_[low[:, 0], high[:, 0]] - median[:, None]),
        "rank": rank,
        "curve": central_coverage(values, truths, CURVE_LEVELS, weights, widening=factor),
        "covered": covered,
        "needed": required_widening(values, truths, COVERAGE_LEVELS, weights),
    }
    return row, arrays


def _uniformity_p(counts: np.ndarray) -> float:
    """The chi-square test's p-value that the rank histogram ``counts`` is uniform (``nan`` when empty)."""
    from scipy.stats import chisquare  # imported here: scipy.stats costs 0.5 s in every process that reads a config

    return float(chisquare(counts).pvalue) if counts.sum() else float("nan")


def _rank_fractions(values: np.ndarray, truths: np.ndarray, seed: tuple[int, int]) -> np.ndarray:
    """Each truth's SBC rank among its target's ``n`` samples as a fraction, ``(rank + u) / (n + 1)``: the integer rank
    (0 .. n, :func:`~protolib.statistics.truth_ranks`) spread by ``u`` uniform in [0, 1), so that it is uniform on
    [0, 1] for a calibrated method whatever the bins."""
    rank = truth_ranks(values, truths, seed=seed[0] + seed[1])
    return (rank + np.random.default_rng(list(seed)).uniform(size=len(rank))) / (values.shape[1] + 1)


def _widening_of(widening: float | Mapping[str, float], name: str) -> float:
    """The widening factor of parameter ``name``: ``widening`` itself, or its entry (1 where it has none)."""
    return float(widening.get(name, 1.0)) if isinstance(widening, Mapping) else float(widening)


def _calibration(
    table: dict,
    curves: dict,
    names: list[str],
    widening: dict[str, float],
    alpha: np.ndarray,
    ecp: np.ndarray,
    relevance: Relevance,
) -> dict:
    """The ``calibration`` figures over all parameters: the widening per parameter, mean coverage, the coverage curves
    and TARP's ``(alpha, ecp)``."""
    return {
        "interval_widening": {name: float(widening[name]) for name in names},
        **{
            f"coverage_{round(100 * c)}": float(np.mean([table[n][f"coverage_{round(100 * c)}"] for n in names]))
            for c in COVERAGE_LEVELS
        },
        "coverage_curve": {"levels": list(CURVE_LEVELS), **{n: curves[n].tolist() for n in names}},
        "tarp": {
            "alpha": alpha.tolist(),
            "ecp": ecp.tolist(),
            "max_deviation": float(np.max(np.abs(ecp - alpha))),
            "mean_abs_deviation": float(np.mean(np.abs(ecp - alpha))),
            "parameters": list(relevance.definition.parameters),
        },
    }


def choose_correction(
    ranking: Ranking,
    bank: Bank,
    k_candidates: Sequence[int],
    widening_candidates: Sequence[float] = (1.0,),
    *,
    parameters: Sequence[str] | None = None,
    extra_parameters: Sequence[str] = (),
    weight_temperature: float | None = None,
    k_per_parameter: bool = False,
) -> tuple[int | dict[str, int], dict[str, float], dict]:
    """The ``k``, and per parameter the interval widening, that make the intervals honest on ``ranking``'s targets.

    Run it on validation systems, never the test ones. Few matches give narrow, overconfident
    distributions; many tend to the prior and over-cover; widening the intervals about the median
    (a scale factor, as in conformal calibration) fixes what no ``k`` does.

    The widening, at each ``k`` and per parameter, is the one rule of
    :func:`~protolib.statistics.calibrate_widening`: the least of ``widening_candidates`` whose 68% and
    95% coverage reach nominal within one binomial standard error (its docstring says why). The match
    reports calibrate by the same rule (:func:`~protolib.matching.calibration.reference_calibration`).

    The ``k`` keeps its own criterion, which the widening alone cannot give (every ``k`` can be made
    to reach nominal by widening enough): a parameter's miss is ``|c68 - 0.68| + |c95 - 0.95|`` at its
    calibrated widening, and the ``k`` with the smallest mean miss over ``parameters`` wins (among
    near-ties, within 0.01, the one with the least mean widening). ``extra_parameters`` (e.g. the
    nuisance physics) get their own widening at that ``k`` without taking part in its choice.

    The widening is chosen per parameter because one factor for all cannot make each honest: a
    parameter whose matches' spread falls short of their error by more than the rest (a mass seen
    through an unknown opacity, say) stays under-covered at the factor that suits the others.

    With ``k_per_parameter``, each parameter (``extra_parameters`` included) gets its own ``k`` too, by
    the same criterion on its own miss: the ``k`` with the smallest miss, among near-ties (within 0.01)
    the one whose widened 68% intervals are narrowest on the validation targets (median half-width;
    the widening factors of different ``k`` scale spreads of different size, so the width itself is
    compared). Why: the ``k`` best on average can suit one parameter badly. With three bands, β's
    matches are tight where the masses' are not, and the one ``k`` (200, the largest) that the masses
    ask for left β over-covered (68% coverage 0.80-0.84) and twice as wide as at ``k = 20``
    (benchmarks/README.md, "Matching in one, two and three bands").

    Returns:
        The chosen ``k`` (with ``k_per_parameter``: name -> its ``k``), the widening per parameter
        (``parameters`` and ``extra_parameters``, at its ``k``), and ``{"k=..": score}`` for every
        candidate ``k``; with ``k_per_parameter`` also ``"single_k"`` (the one ``k`` chosen without it,
        at which figures over all parameters at once are scored), ``"single_k_widening"`` (the
        widenings at it) and ``"per_parameter"``: name -> ``{"k=..": miss}``.
    """
    names = [*bank.physical_parameters, "inclination"] if parameters is None else list(parameters)
    extra = [n for n in extra_parameters if n not in names]
    calibrated = _calibrate_every_k(
        ranking, bank, k_candidates, widening_candidates, [*names, *extra], weight_temperature, k_per_parameter
    )
    chosen = {k: {name: c["widening"] for name, c in at_k.items()} for k, at_k in calibrated.items()}
    scores = {k: float(np.mean([_miss(at_k[n]) for n in names])) for k, at_k in calibrated.items()}
    best = min(scores.values())
    k = min(
        (k for k, score in scores.items() if score <= best + 0.01),
        key=lambda k: (np.mean([chosen[k][n] for n in names]), scores[k]),
    )
    table = {f"k={key}": score for key, score in scores.items()}
    if not k_per_parameter:
        return k, chosen[k], table
    own = {name: _own_k(calibrated, name) for name in [*names, *extra]}
    per_parameter = {name: {f"k={key}": _miss(at_k[name]) for key, at_k in calibrated.items()} for name in own}
    widening = {name: chosen[own[name]][name] for name in own}
    return own, widening, {**table, "single_k": k, "single_k_widening": chosen[k], "per_parameter": per_parameter}


def _calibrate_every_k(
    ranking: Ranking,
    bank: Bank,
    k_candidates: Sequence[int],
    widening_candidates: Sequence[float],
    names: list[str],
    weight_temperature: float | None,
    with_width: bool,
) -> dict[int, dict[str, dict]]:
    """Every candidate ``k`` -> parameter -> its :func:`~protolib.statistics.calibrate_widening` on ``ranking``'s
    targets at that ``k`` (with ``with_width``, also ``"half_width"``: the median half-width of its widened 68%
    intervals, in the scaled parameter)."""
    values, _ = scaled_image_parameters(bank, names)
    candidates = sorted({float(w) for w in widening_candidates})
    calibrated = {}
    for k in sorted({min(int(c), ranking.order.shape[1]) for c in k_candidates}):
        target_rows, match_rows, weights = _top_matches(ranking, bank, k, weight_temperature)
        calibrated[k] = {
            name: calibrate_widening(values[match_rows, j], values[target_rows, j], candidates, weights)
            for j, name in enumerate(names)
        }
        for j, name in enumerate(names if with_width else []):
            _, low, high = central_intervals(values[match_rows, j], [0.68], weights)
            half_width = 0.5 * calibrated[k][name]["widening"] * (high[:, 0] - low[:, 0])
            calibrated[k][name]["half_width"] = float(np.median(half_width))
    return calibrated


def _own_k(calibrated: dict[int, dict[str, dict]], name: str) -> int:
    """The ``k`` whose calibrated intervals of parameter ``name`` miss nominal coverage least; among near-ties (within
    0.01) the one with the narrowest intervals, then the smaller ``k``."""
    misses = {k: _miss(at_k[name]) for k, at_k in calibrated.items()}
    best = min(misses.values())
    return min(
        (k for k, miss in misses.items() if miss <= best + 0.01),
        key=lambda k: (calibrated[k][name]["half_width"], misses[k], k),
    )


def _miss(calibration: dict) -> float:
    """How far a calibrated parameter's 68% and 95% coverage lie from nominal: ``|c68 - 0.68| + |c95 - 0.95|``."""
    return abs(calibration["coverage_68"] - 0.68) + abs(calibration["coverage_95"] - 0.95)


def evaluate_methods(
    methods: Sequence[MatchingMethod],
    bank: Bank,
    relevance: Relevance,
    split,
    settings: EvaluationSettings | None = None,
    *,
    parameters: Sequence[str] | None = None,
    extra_parameters: Sequence[str] = (),
    k_per_parameter: bool = False,
) -> dict[str, MethodResult]:
    """Evaluate every method on the same test targets, against the training systems.

    With ``settings.correction`` other than ``"none"``, ``k`` (and with ``"choose_k_and_widening"`` an
    interval widening per parameter) is also chosen per method on the validation systems
    (:func:`choose_correction`), and the test figures with that choice are reported as ``corrected``.
    ``parameters`` (default: the bank's physical ones and the inclination) are evaluated and calibrated;
    ``extra_parameters`` (e.g. the nuisance physics) are evaluated too, at the ``k`` chosen on
    ``parameters``, each with its own widening. With ``k_per_parameter``, each parameter's corrected
    figures are at its own ``k`` (:func:`choose_correction`), and the one-``k`` correction's figures are
    kept beside them (:attr:`MethodResult.corrected_single_k`).

    Returns:
        method name -> its :class:`MethodResult`.
    """
    settings = settings or EvaluationSettings()
    scored = (
        None
        if parameters is None and not extra_parameters
        else [*(parameters or [*bank.physical_parameters, "inclination"]), *extra_parameters]
    )
    options = dict(
        parameters=scored,
        weight_temperature=settings.weight_temperature,
        rank_bins=settings.rank_bins,
        seed=settings.seed,
    )
    results = {}
    for method in methods:
        vectors, _, _ = embed_bank(method.embed, bank, progress=False, unit_norm=method.comparison.unit_norm)
        ranking = rank_targets(
            method, vectors, bank, relevance, split.test, split.train, projection=settings.projection
        )
        result = MethodResult(method, score_ranking(ranking, bank, relevance, top_k=settings.top_k, **options))
        if settings.correction != "none" and len(split.validation):
            validation = rank_targets(
                method, vectors, bank, relevance, split.validation, split.train, projection=settings.projection
            )
            choice = (parameters, extra_parameters, k_per_parameter)
            _correct(result, ranking, validation, bank, relevance, settings, options, *choice)
        results[method.name] = result
    return results


def _correct(
    result: MethodResult,
    ranking: Ranking,
    validation: Ranking,
    bank: Bank,
    relevance: Relevance,
    settings: EvaluationSettings,
    options: dict,
    parameters: Sequence[str] | None,
    extra_parameters: Sequence[str],
    k_per_parameter: bool = False,
) -> None:
    """Choose ``k`` (and widenings; with ``k_per_parameter`` a ``k`` per parameter) on the ``validation`` ranking and
    score the test ``ranking`` with them into ``result``."""
    widenings = settings.widening_candidates if settings.correction == "choose_k_and_widening" else [1.0]
    k, widening, scores = choose_correction(
        validation,
        bank,
        settings.k_candidates,
        widenings,
        parameters=parameters,
        extra_parameters=extra_parameters,
        weight_temperature=settings.weight_temperature,
        k_per_parameter=k_per_parameter,
    )
    result.chosen_k, result.chosen_widening, result.k_scores = k, widening, scores
    if not k_per_parameter:
        result.corrected = score_ranking(ranking, bank, relevance, top_k=k, widening=widening, **options)
        return
    result.chosen_k, result.chosen_k_per_parameter = scores["single_k"], k
    single = score_ranking(
        ranking, bank, relevance, top_k=scores["single_k"], widening=scores["single_k_widening"], **options
    )
    result.corrected_single_k = single
    result.corrected = _at_own_k(ranking, bank, relevance, single, k, widening, options)


def _at_own_k(
    ranking: Ranking,
    bank: Bank,
    relevance: Relevance,
    single: MethodEvaluation,
    own_k: dict[str, int],
    widening: dict[str, float],
    options: dict,
) -> MethodEvaluation:
    """The test figures with each parameter at its own ``k`` and widening: the one-``k`` figures ``single`` (similarity,
    retrieval, TARP stay at its ``k``) with every parameter's row and per-target arrays taken at its own ``k``."""
    merged = copy.deepcopy(single)  # a parameter at the one k has the same widening there
    for k in sorted(set(own_k.values()) - {single.top_k}):
        at_k = score_ranking(ranking, bank, relevance, top_k=k, widening=widening, **options)
        for name in (n for n, own in own_k.items() if own == k and n in merged.parameters):
            merged.metrics["parameters"][name] = at_k.metrics["parameters"][name]
            merged.metrics["calibration"]["coverage_curve"][name] = at_k.metrics["calibration"]["coverage_curve"][name]
            for key in ("truth", "median", "interval_68", "ranks", "coverage_curve", "covered", "needed_widening"):
                getattr(merged, key)[name] = getattr(at_k, key)[name]
    merged.metrics["calibration"]["interval_widening"] = {n: _widening_of(widening, n) for n in merged.parameters}
    table = merged.metrics["parameters"]
    for level in (f"coverage_{round(100 * c)}" for c in COVERAGE_LEVELS):
        merged.metrics["calibration"][level] = float(np.mean([table[n][level] for n in merged.parameters]))
    merged.top_k_per_parameter = {n: own_k.get(n, single.top_k) for n in merged.parameters}
    return merged


def result_metrics(result: MethodResult | dict, corrected: bool) -> dict:
    """The figures of a :class:`MethodResult`, or of its ``metrics.json`` entry (:meth:`MethodResult.to_json`), with
    ``top_k``: the corrected ones when ``corrected`` and there are some."""
    if isinstance(result, MethodResult):
        chosen = result.figures(corrected)
        return {**chosen.metrics, "top_k": chosen.top_k}
    return result["corrected"] if corrected and result.get("corrected") else result["at_top_k"]
