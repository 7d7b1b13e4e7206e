"""The numbers the book's prose quotes, by plain identifier, for MyST-NB's ``glue``: numbers, names and phrases.

Chapter 06 glues :func:`book_numbers` (the methods compared) and :func:`variant_book_numbers` (the
target similarities and losses compared), so that no number in its prose is typed by hand; chapter 06b
glues :func:`band_matching_numbers` (one, two and three bands, read from the committed results of
``benchmarks/band_matching.py``) and shows :func:`band_matching_table`.
"""

from __future__ import annotations

import re

import numpy as np

from ..parameters import NUISANCE_PARAMETERS
from ..plots.style import parameter_words, word_list
from .report import constrains, mean_target_error, parameter_verdicts, variant_label, widening_label
from .scoring import MethodResult, result_metrics
from .settings import NPE_METHODS

__all__ = [
    "METHOD_LABELS",
    "BAND_CASES",
    "BAND_LABELS",
    "book_numbers",
    "variant_book_numbers",
    "band_matching_parameters",
    "band_matching_table",
    "band_half_widths",
    "band_matching_numbers",
    "unconstrained_nuisance",
    "rising_learning_curves",
    "band_parameter_widths",
]

METHOD_LABELS = {
    "random": "random matches",
    "pixel": "the pixel chi-square",
    "pca": "PCA",
    "autoencoder": "the autoencoder latent",
    "siamese": "the Siamese network",
    "npe": "the neural posterior estimate on the Siamese embedding",
    "npe_end_to_end": "the end-to-end neural posterior estimate",
}
"""How prose names each method (:func:`book_numbers`); other names (variants) are used as they are."""


def book_numbers(results: dict[str, MethodResult | dict], reference: str = "siamese", *, margin: float = 0.05) -> dict:
    """The numbers chapter 06's prose quotes about the methods, by plain identifier (for MyST-NB ``glue``).

    Per method ``m``: ``ndcg_m``, ``spearman_m``, ``cov68_m``, ``cov95_m``, ``tarp_m`` (TARP's largest
    deviation), ``rms_m`` (:func:`mean_target_error`), ``r2_inclination_m`` and, for ``reference`` when
    corrected, the same with ``_corrected`` and ``k_{reference}_corrected``, ``widening_{reference}_corrected``
    (:func:`widening_label`). Then who ranks best
    (``best_ndcg_method``, ``best_spearman_method``), how ``reference`` compares per parameter
    (:func:`parameter_verdicts` at the configured k: ``{reference}_better``, ``_level``, ``_worse`` as
    phrases), the calibration in brief, and what the correction changes for ``reference``.
    """
    numbers = {}
    for name, result in results.items():
        corrected = [("_corrected", result_metrics(result, True))] if name == reference and _corrected(result) else []
        for suffix, metrics in [("", result_metrics(result, False))] + corrected:
            calibration, parameters = metrics["calibration"], metrics["parameters"]
            numbers.update(
                {
                    f"ndcg_{name}{suffix}": metrics.get("retrieval", {}).get("ndcg", float("nan")),
                    f"spearman_{name}{suffix}": _unsigned_zero(
                        metrics.get("similarity", {}).get("spearman_per_target", float("nan"))
                    ),
                    f"cov68_{name}{suffix}": calibration["coverage_68"],
                    f"cov95_{name}{suffix}": calibration["coverage_95"],
                    f"tarp_{name}{suffix}": calibration["tarp"]["max_deviation"],
                    f"rms_{name}{suffix}": mean_target_error(metrics),
                }
            )
            if "inclination" in parameters:
                numbers[f"r2_inclination_{name}{suffix}"] = parameters["inclination"]["r2_knn"]
            if suffix:
                numbers.update(
                    {
                        f"k_{name}_corrected": int(metrics["top_k"]),
                        f"widening_{name}_corrected": widening_label(calibration["interval_widening"]),
                    }
                )
        if "retrieval" in result_metrics(result, False):
            numbers["ndcg_chance"] = result_metrics(result, False)["retrieval"]["ndcg_chance"]
    numbers["best_ndcg_method"] = _label(_best({m: numbers[f"ndcg_{m}"] for m in results}))
    numbers["best_spearman_method"] = _label(_best({m: numbers[f"spearman_{m}"] for m in results}))
    numbers.update(_recovery_numbers(results, reference, margin))
    numbers.update(_calibration_numbers(results, reference))
    return {name: _plain(value) for name, value in numbers.items()}


def _recovery_numbers(results: dict, reference: str, margin: float) -> dict:
    """How ``reference`` recovers each parameter against the best other method, and what no method constrains."""
    judged = parameter_verdicts(results, reference, margin=margin)
    target = {name: v for name, v in judged.items() if v["in_target_similarity"]}
    numbers = {"n_target_parameters": len(target)}
    for group in ("better", "level", "worse"):
        members = [name for name, v in target.items() if v["comparison"] == group]
        numbers[f"{reference}_n_{group}"] = len(members)
        numbers[f"{reference}_{group}"] = word_list(
            [
                f"{_label(n)} ({target[n]['error']:.2f} against {target[n]['best_error']:.2f}, "
                f"{_label(target[n]['best'])})"
                for n in members
            ]
        )
    numbers[f"{reference}_constrained"] = word_list([_label(n) for n, v in judged.items() if v["constrained"]])
    tables = {name: result_metrics(result, False)["parameters"] for name, result in results.items()}
    nobody = [n for n in judged if not any(constrains(t[n], margin) for t in tables.values())]
    errors = [t[n]["rms_error_over_prior_spread"] for n in nobody for t in tables.values()]
    numbers["unconstrained_everywhere"] = word_list([_label(n) for n in nobody]) + (
        f" (RMS errors {min(errors):.2f} to {max(errors):.2f} prior spreads)" if errors else ""
    )
    if target:
        best = min(target, key=lambda n: target[n]["error"])
        own, rival = tables[reference][best], target[best]["best"]
        numbers.update(
            {
                f"{reference}_best_parameter": _label(best),
                f"{reference}_best_error": own["rms_error_over_prior_spread"],
                f"{reference}_best_error_unit": own["rms_error"],
                f"{reference}_best_unit": own["unit"],
                f"{reference}_best_r2": own["r2_knn"],
                f"{reference}_best_rival": _label(rival),
                f"{reference}_best_rival_error": target[best]["best_error"],
                f"{reference}_best_rival_r2": tables[rival][best]["r2_knn"] if rival else float("nan"),
            }
        )
    return numbers


def _calibration_numbers(results: dict, reference: str, rejection_p: float = 0.01) -> dict:
    """Coverage of the matching methods in brief, and what the correction changes for ``reference``."""
    matching = {
        m: result_metrics(r, False)["calibration"] for m, r in results.items() if m != "random" and m not in NPE_METHODS
    }
    c68, c95 = [c["coverage_68"] for c in matching.values()], [c["coverage_95"] for c in matching.values()]
    numbers = {
        "n_matching": len(matching),
        "cov68_min": min(c68),
        "cov68_max": max(c68),
        "cov95_min": min(c95),
        "cov95_max": max(c95),
        "n_overconfident": sum(a < 0.68 and b < 0.95 for a, b in zip(c68, c95)),
    }
    result = results[reference]
    if not _corrected(result):
        return numbers
    before, after = result_metrics(result, False)["parameters"], result_metrics(result, True)["parameters"]
    target = [n for n, row in before.items() if row["in_target_similarity"]]
    change = {n: after[n]["rms_error_over_prior_spread"] - before[n]["rms_error_over_prior_spread"] for n in target}
    for key, name in (("most_improved", min(change, key=change.get)), ("most_worsened", max(change, key=change.get))):
        numbers[f"{reference}_{key}"] = (
            f"{_label(name)} ({before[name]['rms_error_over_prior_spread']:.2f} to "
            f"{after[name]['rms_error_over_prior_spread']:.2f})"
        )
    worst = max(after, key=lambda n: abs(after[n]["coverage_68"] - 0.68))
    numbers.update(
        {
            f"{reference}_worst_coverage_parameter": _label(worst),
            f"{reference}_worst_coverage": after[worst]["coverage_68"],
            f"{reference}_n_rank_rejected": sum(row["rank_uniformity_p"] < rejection_p for row in after.values()),
            "n_parameters": len(after),
        }
    )
    return numbers


def variant_book_numbers(
    variants: dict[str, MethodResult | dict], reference: str = "kernel + mse", *, margin: float = 0.05
) -> dict:
    """The numbers the comparison of target similarities and losses quotes, by plain identifier (for ``glue``).

    Per variant ``v`` (its name as an identifier: ``kernel_mse`` ...): ``ndcg_v``, ``spearman_v``,
    ``rms_v`` (:func:`mean_target_error`), and ``rms_v_corrected``, ``cov68_v_corrected``,
    ``cov95_v_corrected``; ``best_ndcg_variant``, ``best_spearman_variant``, ``best_rms_variant``,
    ``best_rms_corrected_variant`` (the last three with any variant equal to it at two decimals); and per variant
    other than ``reference``, ``better_v`` and ``worse_v``: the target similarity's parameters on which its error is
    lower (higher) than ``reference``'s by more than ``margin`` prior spreads, as phrases.
    """
    slug = {name: re.sub(r"\W+", "_", name).strip("_") for name in variants}
    numbers = {}
    for name, result in variants.items():
        at_k, corrected = result_metrics(result, False), result_metrics(result, True)
        numbers.update(
            {
                f"ndcg_{slug[name]}": at_k["retrieval"]["ndcg"],
                f"spearman_{slug[name]}": _unsigned_zero(at_k["similarity"]["spearman_per_target"]),
                f"rms_{slug[name]}": mean_target_error(at_k),
                f"rms_{slug[name]}_corrected": mean_target_error(corrected),
                f"cov68_{slug[name]}_corrected": corrected["calibration"]["coverage_68"],
                f"cov95_{slug[name]}_corrected": corrected["calibration"]["coverage_95"],
            }
        )
    for number, template in (
        ("ndcg", "ndcg_{}"),
        ("spearman", "spearman_{}"),
        ("rms", "rms_{}"),
        ("rms_corrected", "rms_{}_corrected"),
    ):
        values = {variant_label(name): numbers[template.format(slug[name])] for name in variants}
        best = _best(values, lowest=number.startswith("rms"))
        tied_at_two_decimals = number.startswith("rms") or number == "spearman"  # the prose prints these to 0.01
        numbers[f"best_{number}_variant"] = _with_ties(best, values) if tied_at_two_decimals else best
    numbers.update(_variant_changes(variants, reference, slug, margin))
    return {name: _plain(value) for name, value in numbers.items()}


def _variant_changes(variants: dict, reference: str, slug: dict[str, str], margin: float) -> dict:
    """Per variant other than ``reference``, ``better_v`` and ``worse_v``: the target similarity's parameters on
    which its error is lower (higher) than ``reference``'s by more than ``margin`` prior spreads, as phrases."""
    own, numbers = result_metrics(variants[reference], False)["parameters"], {}
    for name, result in variants.items():
        if name != reference:
            table = result_metrics(result, False)["parameters"]
            change = {
                n: table[n]["rms_error_over_prior_spread"] - own[n]["rms_error_over_prior_spread"]
                for n in own
                if own[n]["in_target_similarity"]
            }
            for word, sign in (("better", -1), ("worse", 1)):
                numbers[f"{word}_{slug[name]}"] = word_list(
                    [
                        f"{_label(n)} ({table[n]['rms_error_over_prior_spread']:.2f} against "
                        f"{own[n]['rms_error_over_prior_spread']:.2f})"
                        for n, d in change.items()
                        if sign * d > margin
                    ]
                )
    return numbers


def _corrected(result: MethodResult | dict) -> bool:
    return (result.corrected if isinstance(result, MethodResult) else result.get("corrected")) is not None


def _with_ties(best: str | None, values: dict[str, float]) -> str | None:
    """``best``, and the others equal to it at the two decimals the prose prints (``"a and b, equal at two
    decimals"``), so that a tie on the page is not named as one winner."""
    if best is None:
        return None
    tied = [k for k, v in values.items() if k != best and v == v and round(v, 2) == round(values[best], 2)]
    return best if not tied else f"{word_list([best, *tied])}, equal at two decimals"


def _best(values: dict[str, float], *, lowest: bool = False) -> str | None:
    """The key of the highest (``lowest``: lowest) value, NaN ignored; ``None`` when every value is NaN."""
    finite = {k: v for k, v in values.items() if v == v}
    return (min if lowest else max)(finite, key=finite.get) if finite else None


def _label(name: str | None) -> str:
    """How prose names a method (:data:`METHOD_LABELS`) or a parameter (in the words its figures use, ``infall rate``
    for ``accretion_rate``; otherwise underscores as spaces)."""
    return "none" if name is None else METHOD_LABELS.get(name, parameter_words(name))


def _unsigned_zero(value: float, digits: int = 2) -> float:
    """``value``, or 0 where it rounds to zero at the prose's ``digits``: random matches' correlation reads 0.00,
    not -0.00."""
    return 0.0 if value == value and round(value, digits) == 0 else value


def _plain(value):
    """A glue-able plain Python value (numpy scalars to int or float), so that MyST-NB formats it."""
    return value.item() if isinstance(value, np.generic) else value


BAND_CASES = {"B6": "dropout B6", "B3+B6": "dropout B3+B6", "B3+B6+B7": "dropout B3+B6+B7"}
"""The bands matched (the book's names) -> the band-dropout network's case in ``benchmarks/band_matching.py``'s
results."""
OPACITY = ("opacity_beta", "opacity_230ghz")
# a uniform prior's central 68% spans 0.68 sqrt(3) standard deviations either side of its middle: the half-width of
# the matches' 68% interval when the images say nothing (kappa_230 is log-uniform: uniform in the log it is scored in)
PRIOR_HALF_WIDTH = 0.68 * np.sqrt(3.0)
BAND_LABELS = {"opacity_beta": "β", "opacity_230ghz": "κ_230"}
# issue 26's goals, as benchmarks/band_matching.py judges them: with three bands β's 68% half-width at most this many
# prior spreads, the disk and envelope mass errors within this factor of the fixed-physics case's, coverage this near
GOAL_BETA_HALF_WIDTH, GOAL_MASS_RATIO, GOAL_COVERAGE = 0.5, 1.1, 0.05


def band_matching_parameters(results: dict) -> list[str]:
    """The parameters the images constrain in any of :data:`BAND_CASES` (the benchmark's ``goals``, RMS error and
    half-width below 0.95 prior spreads), then β and κ_230, whether constrained or not, in the results' order."""
    constrained = {n for case in BAND_CASES for n in results["goals"][case]["constrained"]} | set(OPACITY)
    order = list(results["cases"][BAND_CASES["B6"]]["parameters"])
    return [n for n in order if n in constrained and n not in OPACITY] + list(OPACITY)


def band_matching_table(results: dict) -> str:
    """A Markdown table: per parameter of :func:`band_matching_parameters` and per case of :data:`BAND_CASES`, the
    median |error| over the prior spread, the 68% and the 95% coverage."""
    head = "| parameter | " + " | ".join(f"{case}: error / 68% / 95%" for case in BAND_CASES) + " |"
    lines = [head, "| --- | " + " | ".join("---:" for _ in BAND_CASES) + " |"]
    for name in band_matching_parameters(results):
        cells = []
        for case in BAND_CASES.values():
            row = results["cases"][case]["parameters"][name]
            cells.append(
                f"{row['median_abs_error_over_prior_spread']:.2f} / {row['coverage_68']:.2f} / {row['coverage_95']:.2f}"
            )
        lines.append(f"| {BAND_LABELS.get(name, parameter_words(name))} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def band_half_widths(results: dict) -> dict[str, dict[str, float]]:
    """Per case of :data:`BAND_CASES`, each parameter's (:func:`band_matching_parameters`) 68% half-width over the
    prior spread."""
    return {
        case: {
            n: float(results["cases"][name]["parameters"][n]["half_width_68_over_prior_spread"])
            for n in band_matching_parameters(results)
        }
        for case, name in BAND_CASES.items()
    }


def band_matching_numbers(results: dict, prefix: str = "bands") -> dict:
    """The numbers chapter 06b's prose quotes about one, two and three bands, by plain identifier (for ``glue``),
    each name beginning ``bands_`` (the chapter glues other results beside them).

    Per case slug ``c`` (``b6``, ``b3b6``, ``b3b6b7``): β's and κ_230's 68% half-width over the prior spread
    (``bands_beta_width_c``, ``bands_kappa_width_c``), their median error (``bands_beta_error_c``,
    ``bands_kappa_error_c``), β's 68% coverage (``bands_beta_cov68_c``), the disk and envelope mass errors over the
    fixed-physics case's (``bands_disk_mass_ratio_c``, ``bands_envelope_mass_ratio_c``), the largest coverage miss
    of the constrained parameters (``bands_worst_miss_c``) and whose it is (``bands_worst_miss_parameter_c``); the
    prior's own half-width (``bands_prior_half_width``), the goals (``bands_goal_beta_width``,
    ``bands_goal_mass_ratio``, ``bands_goal_coverage``), the range of the band-dropout network's error in B6 over
    today's one-band network's, parameter by parameter (``bands_loses_nothing_low``, ``bands_loses_nothing_high``),
    and the setup (``bands_systems``, ``bands_test_systems``, ``bands_targets``). ``prefix`` replaces ``bands`` (the
    chapter glues a second result, with the opacity anchored to β, beside the first).
    """
    numbers = {"prior_half_width": float(PRIOR_HALF_WIDTH)}
    for case, name in BAND_CASES.items():
        slug = case.lower().replace("+", "")
        rows, goals = results["cases"][name]["parameters"], results["goals"][case]
        for short, parameter in (("beta", "opacity_beta"), ("kappa", "opacity_230ghz")):
            numbers[f"{short}_width_{slug}"] = float(rows[parameter]["half_width_68_over_prior_spread"])
            numbers[f"{short}_error_{slug}"] = float(rows[parameter]["median_abs_error_over_prior_spread"])
        numbers[f"beta_cov68_{slug}"] = float(rows["opacity_beta"]["coverage_68"])
        for mass, ratio in goals["mass_error_over_fixed_physics"].items():
            numbers[f"{mass}_ratio_{slug}"] = float(ratio)
        numbers[f"worst_miss_{slug}"] = float(goals["worst_coverage_miss"])
        numbers[f"worst_miss_parameter_{slug}"] = _worst_miss(rows, goals["constrained"])
    ratios = [float(v["error_ratio"]) for v in results["loses_nothing"].values()]
    setup = results["setup"]
    numbers.update(
        goal_beta_width=GOAL_BETA_HALF_WIDTH,
        goal_mass_ratio=GOAL_MASS_RATIO,
        goal_coverage=GOAL_COVERAGE,
        loses_nothing_low=min(ratios),
        loses_nothing_high=max(ratios),
        systems=int(setup["systems"]),
        test_systems=int(setup["split"]["test"]),
        targets=int(results["cases"][BAND_CASES["B6"]]["targets"]),
    )
    return {f"{prefix}_{name}": value for name, value in numbers.items()}


WIDER_WITH_BANDS = 1.1  # a parameter's 68% half-width counts as growing with the bands beyond this factor


def band_parameter_widths(results: dict, parameter: str = "disk_radius", prefix: str = "bands") -> dict:
    """What one parameter's 68% interval does as bands are added, and why, for chapter 06b's prose (for ``glue``).

    Per case slug ``c`` (``b6``, ``b3b6``, ``b3b6b7``) and with ``p`` the parameter's name: its corrected 68%
    half-width over the prior spread (``{prefix}_p_width_c``), that of the evaluation's own top k before the
    correction (``_p_raw_width_c``), the correction's widening of it (``_p_widening_c``), its median error
    (``_p_error_c``) and 68% coverage (``_p_cov68_c``), and the correction's number of matches (``_chosen_k_c``);
    then the top k (``{prefix}_raw_top_k``), the weight of β and κ_230 in the benchmark's target similarity
    (``{prefix}_opacity_weight``), and the image-constrained parameters whose half-width grows from one band to
    three by more than :data:`WIDER_WITH_BANDS` (``{prefix}_wider_with_bands``, a phrase). Separating the
    correction's widening from the matches' own spread says whether more bands made the calibration more cautious
    or the matches themselves less alike in the parameter.
    """
    numbers = {}
    for case, name in BAND_CASES.items():
        slug, result = case.lower().replace("+", ""), results["cases"][name]
        row, raw = result["parameters"][parameter], result["uncorrected_at_top_k"]["parameters"][parameter]
        numbers[f"{parameter}_width_{slug}"] = float(row["half_width_68_over_prior_spread"])
        numbers[f"{parameter}_raw_width_{slug}"] = float(raw["half_width_68_over_prior_spread"])
        numbers[f"{parameter}_widening_{slug}"] = float(result["chosen_widening"][parameter])
        numbers[f"{parameter}_error_{slug}"] = float(row["median_abs_error_over_prior_spread"])
        numbers[f"{parameter}_cov68_{slug}"] = float(row["coverage_68"])
        numbers[f"chosen_k_{slug}"] = int(result["chosen_k"])
    one, three = (results["cases"][BAND_CASES[c]]["parameters"] for c in ("B6", "B3+B6+B7"))
    constrained = [n for n in results["goals"]["B6"]["constrained"] if n in one]
    wider = [
        f"{parameter_words(n)} ({one[n]['half_width_68_over_prior_spread']:.2f} to "
        f"{three[n]['half_width_68_over_prior_spread']:.2f})"
        for n in constrained
        if three[n]["half_width_68_over_prior_spread"] > WIDER_WITH_BANDS * one[n]["half_width_68_over_prior_spread"]
    ]
    numbers.update(
        raw_top_k=int(results["cases"][BAND_CASES["B6"]]["uncorrected_at_top_k"]["top_k"]),
        opacity_weight=float(results["setup"]["opacity_weight"]),
        wider_with_bands=word_list(wider),
    )
    return {f"{prefix}_{name}": value for name, value in numbers.items()}


def unconstrained_nuisance(results: dict, case: str = "B3+B6+B7", most: int = 3) -> str:
    """The nuisance parameters the images leave unconstrained in ``case`` (of :data:`BAND_CASES`), the ``most`` with
    the largest median error first, as a phrase with each error in prior spreads: what stays between the bands and
    the masses once β and κ_230 are measured."""
    rows, constrained = results["cases"][BAND_CASES[case]]["parameters"], results["goals"][case]["constrained"]
    left = [n for n in rows if n in NUISANCE_PARAMETERS and n not in constrained]
    left.sort(key=lambda n: -rows[n]["median_abs_error_over_prior_spread"])
    return word_list(
        [f"{parameter_words(n)} ({rows[n]['median_abs_error_over_prior_spread']:.2f})" for n in left[:most]]
    )


def _worst_miss(rows: dict, constrained: list[str]) -> str:
    """The name (as the table writes it) of the constrained parameter whose 68% or 95% coverage is furthest from
    nominal."""
    worst = max(constrained, key=lambda n: max(abs(rows[n]["coverage_68"] - 0.68), abs(rows[n]["coverage_95"] - 0.95)))
    return BAND_LABELS.get(worst, parameter_words(worst))


def rising_learning_curves(curves: dict) -> list[tuple[str, str]]:
    """The ``(method, parameter)`` learning curves of ``benchmarks/learning_curves.py``'s results whose error rises at
    every step from the smallest training set to the largest while their fit ``a + b N^-c`` sits at its bound
    ``c = 0``: a curve of that form only falls or stays flat, so it cannot follow them, and carrying it on would draw
    a flat line below the last measured point. Chapter 06 draws no extrapolation for these and says why
    (``"mean_target"`` is the mean over the target parameters)."""
    rising = []
    for method, data in curves["methods"].items():
        for name, fit in curves.get("fits", {}).get("by_method", {}).get(method, {}).items():
            sizes = [data["sizes"][str(int(n))] for n in curves["train_systems"]]
            values = [
                row["mean_target_rms_error_over_prior_spread"]
                if name == "mean_target"
                else row["parameters"][name]["rms_error_over_prior_spread"]
                for row in sizes
            ]
            if fit and "c" in fit.get("parameters_at_bounds", []) and all(b > a for a, b in zip(values, values[1:])):
                rising.append((method, name))
    return rising
