"""Evaluation: does matching recover physical parameters, and are its distributions calibrated?

Every held-out (test) system of the bank is taken in turn as the target, in one or all of its
projections, and matched against the *training* systems only. Every matching method (random
matches, pixels with a chi-square on the noise, PCA, the autoencoder's latent space, the Siamese
network) is a :class:`MatchingMethod`: an embedding function and how embeddings compare (a
:class:`Comparison`), searched with the same :class:`~protolib.matching.EmbeddingIndex`. The same
targets give, per method:

- **similarity**: Spearman correlation and mean-squared error of predicted against target similarity;
- **retrieval**: nDCG@k with the target similarity as graded relevance, and the mean normalised
  parameter distance of the top k;
- **parameter recovery**, per parameter: error of the matches' median against the truth (dex for
  log-scaled parameters, and in units of the prior's spread), and R^2 of the k-nearest-neighbour mean;
- **calibration**: coverage of central intervals (50/68/95% and a curve), rank histograms
  (simulation-based calibration, Talts et al. 2018) and TARP (Lemos et al. 2023).

Matches are neighbours, not posterior draws, so their intervals need not be calibrated at a given k:
:func:`choose_correction` picks k (and, per parameter, a widening of the intervals about the median,
by the one rule of :func:`protolib.statistics.calibrate_widening`) on the *validation* systems, and
the test figures are reported before and after (``k_per_parameter=True``: a k per parameter too).
A neural posterior estimate on the same frozen embedding (:mod:`protolib.npe`, optional ``sbi``) is the
reference, and :func:`~protolib.pipelines.evaluate.compare_variants` scores Siamese networks trained with other
target similarities and losses (:data:`VARIANTS`).

What each module owns:

- :mod:`~protolib.evaluation.settings`: :class:`EvaluationSettings`, the method names and coverage levels, the cost;
- :mod:`~protolib.evaluation.methods`: :class:`MatchingMethod`, the comparisons of embeddings, the baselines;
- :mod:`~protolib.evaluation.ranking`: :class:`Relevance`, :class:`Ranking` and :func:`rank_targets`;
- :mod:`~protolib.evaluation.scoring`: :class:`MethodEvaluation`, :class:`MethodResult`, the scoring of
  a ranking or of any samples, the correction and :func:`evaluate_methods`;
- :mod:`~protolib.evaluation.variants`: the checkpoint variants compared;
- :mod:`~protolib.evaluation.report`: Markdown tables and verdict sentences;
- :mod:`~protolib.evaluation.book`: the numbers the book's prose quotes (:func:`book_numbers`).

The statistics on plain arrays (intervals, coverage, nDCG, R^2, SBC ranks, TARP) live in
:mod:`protolib.statistics`. ``protolib evaluate``, which writes ``metrics.json`` and the figures, is
:func:`protolib.pipelines.evaluate.run_evaluation`.
"""

from .book import METHOD_LABELS, book_numbers, variant_book_numbers
from .methods import (
    COSINE,
    DRAWS_SAMPLES,
    EUCLIDEAN,
    Comparison,
    Cosine,
    DrawsSamples,
    Euclidean,
    MatchingMethod,
    autoencoder_method,
    baseline_methods,
    pca_method,
    pixel_method,
    random_method,
    siamese_method,
)
from .ranking import Ranking, Relevance, image_rows, rank_targets
from .report import (
    constrains,
    headline_table,
    mean_target_error,
    parameter_table,
    parameter_verdicts,
    summary_table,
    verdicts,
    widening_label,
)
from .scoring import (
    MethodEvaluation,
    MethodResult,
    choose_correction,
    distribution_metrics,
    evaluate_methods,
    result_metrics,
    score_ranking,
)
from .settings import (
    CORRECTIONS,
    COVERAGE_LEVELS,
    CURVE_LEVELS,
    METHOD_NAMES,
    NPE_METHODS,
    EvaluationSettings,
    evaluation_cost,
)
from .variants import VARIANTS

__all__ = [
    "EvaluationSettings",
    "evaluation_cost",
    "COVERAGE_LEVELS",
    "CURVE_LEVELS",
    "METHOD_NAMES",
    "NPE_METHODS",
    "CORRECTIONS",
    "Comparison",
    "Cosine",
    "Euclidean",
    "DrawsSamples",
    "COSINE",
    "EUCLIDEAN",
    "DRAWS_SAMPLES",
    "MatchingMethod",
    "random_method",
    "pixel_method",
    "pca_method",
    "autoencoder_method",
    "siamese_method",
    "baseline_methods",
    "Relevance",
    "Ranking",
    "image_rows",
    "rank_targets",
    "MethodEvaluation",
    "MethodResult",
    "score_ranking",
    "distribution_metrics",
    "choose_correction",
    "evaluate_methods",
    "result_metrics",
    "VARIANTS",
    "headline_table",
    "summary_table",
    "parameter_table",
    "mean_target_error",
    "constrains",
    "parameter_verdicts",
    "verdicts",
    "widening_label",
    "METHOD_LABELS",
    "book_numbers",
    "variant_book_numbers",
]
