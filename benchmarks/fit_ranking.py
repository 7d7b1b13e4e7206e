"""Which matches should form the distribution: the most similar, or those that fit the map (issue 25)?

Each target is searched once (its 200 most similar bank images, as ``protolib match`` searches an observation) and
fitted once in image space (every match's reduced chi-square, and the 48 reference bank images seen like it with
their own matches' chi-squares, :func:`protolib.matching.fit_matches`). Then each rule of
:data:`protolib.matching.fit.DISTRIBUTION_RULES` chooses the distribution's matches, **on the target and on its
references alike** (:func:`protolib.matching.calibration.choose_k_and_widening` with the references' chi-squares),
so that the widening is measured on the intervals the rule gives:

- ``similarity``: the first ``k`` by similarity (``k`` calibrated among 10-200), as ``protolib match`` does;
  ``similarity_upto50``: ``k`` at most 50;
- ``fit_rank``: the 200 re-ranked by reduced chi-square, the first ``k`` (``k`` calibrated among 10-200);
  ``fit_rank_upto20``, ``_upto50``, ``_upto100``: ``k`` at most 20, 50, 100;
- ``fit_cut``: those within a factor 2 of the best reduced chi-square (at least 10), equal weights;
- ``fit_weight``: all 200, weighted by exp(-dchi2/2) with dchi2 counted in independent beams and tempered by the
  best match's reduced chi-square (:func:`protolib.matching.fit.distribution_weights` says why);
  ``fit_weight_quarter``: a quarter of the beams (a gentler weight).

Targets:

- ``--maps`` synthetic NOEMA-like maps (``benchmarks/fitted_banks.py``'s ``noema`` setup: 300 pc, a 0.86" x 0.69"
  beam, 0.16 mJy/beam, prior draws, truth in the header): per parameter the median 68% half-width over the prior's,
  the 68%/95% coverage, and the median reduced chi-square of the distribution's matches (weighted);
- the shipped NOEMA maps (the four sources of chapter 05b): the published values (:mod:`protolib.literature`) inside
  the 95% intervals, the mean width over the prior's, and the median reduced chi-square of the matches kept.

Observing settings are taken as exact (no observing draws), as in ``benchmarks/fitted_banks.py``, so that the rules
alone are compared; the flux tolerance of the fit is twice the band's nominal flux-calibration error, as in
``protolib match``. Default bank and network (``artifacts/default``). Reproduce:

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/fit_ranking.py --run artifacts/default --maps 40 \\
        --work /tmp/fit-ranking --json benchmarks/results/fit_ranking.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


VARIANTS = {
    "similarity": ("similarity", None, 1.0),
    "similarity_upto50": ("similarity", 50, 1.0),
    "fit_rank": ("fit_rank", None, 1.0),
    "fit_rank_upto20": ("fit_rank", 20, 1.0),
    "fit_rank_upto50": ("fit_rank", 50, 1.0),
    "fit_rank_upto100": ("fit_rank", 100, 1.0),
    "fit_cut": ("fit_cut", None, 1.0),
    "fit_weight": ("fit_weight", None, 1.0),
    "fit_weight_quarter": ("fit_weight", None, 0.25),
}
"""What is measured: name -> (rule, the most matches the distribution may take (``k`` calibrated among
:data:`~protolib.matching.calibration.K_CANDIDATES` up to it, as ``protolib match`` does; ``None``: up to the 200
searched), the factor on the independent beams a fit weight counts)."""


def match_once(
    bank, model: Path, path: Path, distance_pc: float, options: dict | None = None, cache: Path | None = None
):
    """One target searched and fitted as ``protolib match`` does it (nominal observing settings): its true parameters
    (``None``: a real map), its matches, their :class:`~protolib.matching.MatchFit` and the seconds it took (kept in
    ``cache``, a pickle, so that a second run compares rules without matching again)."""
    import pickle

    if cache is not None and cache.exists():
        return pickle.loads(cache.read_bytes())
    started = time.perf_counter()
    found = (*_match_once(bank, model, path, distance_pc, options), time.perf_counter() - started)
    if cache is not None:
        cache.write_bytes(pickle.dumps(found))
    return found


def _match_once(bank, model: Path, path: Path, distance_pc: float, options: dict | None):
    """:func:`match_once`, done."""
    from protolib.matching import Matcher, fit_matches, matching_target
    from protolib.matching.observing import default_flux_calibration

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        observation = matching_target(path, bank, distance_pc, **(options or {}))
    matcher = Matcher.from_model(
        model, bank, transform=observation.transform, transform_key=observation.transform_key, progress=False
    )
    matches = matcher.match(observation.image, top_k=200)
    frequency = observation.info.get("observed_frequency_ghz") or observation.info.get("bank_frequency_ghz")
    tolerance = 2.0 * default_flux_calibration(frequency)
    fit = fit_matches(matcher, observation.image, matches, observation=observation, flux_tolerance=tolerance)
    fit.verdict = None  # only the chi-squares and references are compared here
    return observation.truths, matches, fit


def apply_rule(bank, matches, fit, variant: str, truths: dict | None):
    """The distribution the rule of ``variant`` (:data:`VARIANTS`) gives, calibrated on references chosen by the same
    rule: its summaries, the reduced chi-squares and weights of its matches, and ``k``."""
    from protolib.distributions import prior_parameters, summarise
    from protolib.matching import match_parameters
    from protolib.matching.calibration import choose_k_and_widening, in_distribution_order
    from protolib.matching.fit import distribution_order, distribution_weights

    rule, most, beam_factor = VARIANTS[variant]
    beams = fit.independent_beams * beam_factor
    if most is None:
        k, calibration, _ = choose_k_and_widening(
            bank,
            fit.reference_rows,
            fit.reference_matches,
            reference_chi2=fit.reference_reduced_chi2,
            rule=rule,
            beams=beams,
        )
    else:  # the references' first matches by the rule, up to ``most``, k calibrated among them
        ordered, _ = in_distribution_order(fit.reference_matches, fit.reference_reduced_chi2, rule, beams)
        k, calibration, _ = choose_k_and_widening(bank, fit.reference_rows, [m.head(most) for m in ordered])
    order = distribution_order(fit.reduced_chi2, rule)
    chi2 = fit.reduced_chi2[order]
    weights = distribution_weights(chi2, rule, beams)
    chosen = matches.take(order) if weights is not None else matches.take(order).head(k)
    summaries = summarise(
        match_parameters(bank, chosen),
        weights=weights,
        prior=prior_parameters(bank),
        truths=truths,
        parameter_info=bank.parameter_info,
        widening={name: c["widening"] for name, c in calibration.items()},
    )
    return summaries, chi2[: len(chosen)], weights, k


def kept_chi2(chi2: np.ndarray, weights: np.ndarray | None) -> dict:
    """The distribution's matches' median reduced chi-square (weighted) and their effective number."""
    from protolib.statistics import weighted_percentile

    w = np.ones(len(chi2)) if weights is None else np.asarray(weights)
    return {
        "median_reduced_chi2": float(weighted_percentile(chi2, [50.0], w)[0]),
        "effective_matches": float(w.sum() ** 2 / np.sum(w**2)),
    }


def shown(bank) -> list[str]:
    """The parameters scored: the bank's physical ones and the inclination."""
    return [*bank.physical_parameters, "inclination"]


def synthetic(bank, model: Path, maps: list[Path], rules) -> list[dict]:
    """Per synthetic map and rule: per parameter the width over the prior's and whether the 68%/95% intervals hold
    the truth, and the matches' median reduced chi-square."""
    rows = []
    for i, path in enumerate(maps):
        started = time.perf_counter()
        truths, matches, fit, seconds = match_once(bank, model, path, 300.0, cache=path.with_suffix(".pickle"))
        row = {
            "map": path.name,
            "best_reduced_chi2": float(fit.reduced_chi2.min()),
            "rules": {},
            "match_seconds": seconds,
        }
        for rule in rules:
            summaries, chi2, weights, k = apply_rule(bank, matches, fit, rule, truths)
            row["rules"][rule] = {
                "k": int(k),
                **kept_chi2(chi2, weights),
                "parameters": {  # [68% half-width over the prior's, truth inside 68%, inside 95%]
                    s.parameter: [
                        round(float(s.prior_width_ratio), 4),
                        bool(s.p16 <= s.truth <= s.p84),
                        bool(s.p2_5 <= s.truth <= s.p97_5),
                    ]
                    for s in summaries
                    if s.parameter in shown(bank) and np.isfinite(s.truth)
                },
            }
        row["seconds"] = time.perf_counter() - started
        rows.append(row)
        print(f"  map {i + 1}/{len(maps)} ({row['seconds']:.0f} s)", file=sys.stderr, flush=True)
    return rows


def real(bank, model: Path, rules, work: Path) -> dict:
    """Per shipped source and rule: the published values inside the 95% intervals, the mean width over the prior's
    of the compared parameters, and the matches' median reduced chi-square."""
    from protolib.distributions import prior_parameters
    from protolib.literature import compare_with_literature, load_literature

    sources, out = load_literature(), {}
    options = {"L1448-IRS3A": {"centre": sources["L1448-IRS3A"].position, "mask_radius_arcsec": 3.5}}
    for name, source in sources.items():
        started = time.perf_counter()
        _, matches, fit, seconds = match_once(
            bank, model, source.path, source.distance_pc, options.get(name), cache=work / f"{name}.pickle"
        )
        out[name] = {"best_reduced_chi2": float(fit.reduced_chi2.min()), "rules": {}, "match_seconds": seconds}
        for rule in rules:
            summaries, chi2, weights, k = apply_rule(bank, matches, fit, rule, None)
            compared = compare_with_literature(summaries, source, prior_parameters(bank))
            widths = {s.parameter: float(s.prior_width_ratio) for s in summaries if s.parameter in shown(bank)}
            out[name]["rules"][rule] = {
                "k": int(k),
                **kept_chi2(chi2, weights),
                "published_inside_95": [r["parameter"] for r in compared if r["inside"]],
                "published_outside_95": [r["parameter"] for r in compared if not r["inside"]],
                "mean_width": float(np.mean(list(widths.values()))),
                "widths": widths,
            }
        out[name]["seconds"] = time.perf_counter() - started
        print(f"  {name} ({out[name]['seconds']:.0f} s)", file=sys.stderr, flush=True)
    return out


def tables(rows: list[dict], by_source: dict, rules) -> str:
    """Markdown: the synthetic maps' width and coverage per parameter and rule, then the real maps per rule."""
    lines = [
        "| parameter | " + " | ".join(f"{r}: width, cov. 68/95" for r in rules) + " |",
        "|---|" + "---|" * len(rules),
    ]
    for name in dict.fromkeys(p for row in rows for p in row["rules"][rules[0]]["parameters"]):
        cells = []
        for rule in rules:
            values = [
                row["rules"][rule]["parameters"][name] for row in rows if name in row["rules"][rule]["parameters"]
            ]
            cells.append(
                f"{np.median([v[0] for v in values]):.2f}, {np.mean([v[1] for v in values]):.2f}/"
                f"{np.mean([v[2] for v in values]):.2f}"
                if values
                else "—"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    medians = [np.median([row["rules"][rule]["median_reduced_chi2"] for row in rows]) for rule in rules]
    lines.append("| median chi2_red of the matches kept | " + " | ".join(f"{m:.3g}" for m in medians) + " |")
    lines += ["", "| source | " + " | ".join(f"{r}: inside 95%, width, chi2_red kept" for r in rules) + " |"]
    lines.append("|---|" + "---|" * len(rules))
    for name, found in by_source.items():
        cells = []
        for rule in rules:
            r = found["rules"][rule]
            n = len(r["published_inside_95"]) + len(r["published_outside_95"])
            cells.append(f"{len(r['published_inside_95'])}/{n}, {r['mean_width']:.2f}, {r['median_reduced_chi2']:.3g}")
        lines.append(f"| {name} (best {found['best_reduced_chi2']:.3g}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(rows: list[dict], by_source: dict, variants) -> dict:
    """Per variant, over the synthetic maps: the mean over parameters of the 68%/95% coverage, the lowest parameter's
    95% coverage, the mean of the parameters' median width over the prior's, the median of the maps' median reduced
    chi-square of the matches kept; over the real maps: the published values inside the 95% intervals, the mean width,
    and each source's matches' median reduced chi-square."""
    out = {}
    for v in variants:
        by_parameter = {}
        for row in rows:
            for name, (width, in68, in95) in row["rules"][v]["parameters"].items():
                by_parameter.setdefault(name, []).append((width, in68, in95))
        values = {name: np.array(found, dtype=float) for name, found in by_parameter.items()}
        real = [found["rules"][v] for found in by_source.values()]
        out[v] = {
            "coverage_68": float(np.mean([a[:, 1].mean() for a in values.values()])),
            "coverage_95": float(np.mean([a[:, 2].mean() for a in values.values()])),
            "lowest_coverage_95": float(min(a[:, 2].mean() for a in values.values())),
            "width": float(np.mean([np.median(a[:, 0]) for a in values.values()])),
            "median_reduced_chi2_kept": float(np.median([row["rules"][v]["median_reduced_chi2"] for row in rows])),
            "median_k": float(np.median([row["rules"][v]["k"] for row in rows])),
            "real_published_inside_95": sum(len(r["published_inside_95"]) for r in real),
            "real_published_compared": sum(
                len(r["published_inside_95"]) + len(r["published_outside_95"]) for r in real
            ),
            "real_mean_width": float(np.mean([r["mean_width"] for r in real])) if real else None,
            "real_median_reduced_chi2_kept": {
                name: found["rules"][v]["median_reduced_chi2"] for name, found in by_source.items()
            },
        }
    return out


def summary_table(found: dict) -> str:
    """Markdown: :func:`summary`, one row per variant."""
    lines = [
        "| rule | synthetic: coverage 68% / 95% (lowest 95%) | width / prior | chi2_red of the matches kept | "
        "real: published inside 95% | real: width / prior | real: chi2_red kept (per source) |",
        "|---|---|---|---|---|---|---|",
    ]
    for v, r in found.items():
        kept = ", ".join(f"{x:.3g}" for x in r["real_median_reduced_chi2_kept"].values())
        lines.append(
            f"| {v} | {r['coverage_68']:.2f} / {r['coverage_95']:.2f} ({r['lowest_coverage_95']:.2f}) | "
            f"{r['width']:.2f} | "
            f"{r['median_reduced_chi2_kept']:.3g} | {r['real_published_inside_95']}/{r['real_published_compared']} | "
            f"{r['real_mean_width'] or float('nan'):.2f} | {kept} |"
        )
    return "\n".join(lines)


def arguments(argv=None) -> argparse.Namespace:
    """The command line's options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("artifacts/default"), help="folder with bank.h5, siamese.pt")
    parser.add_argument("--maps", type=int, default=20, help="synthetic NOEMA-like maps")
    parser.add_argument("--work", type=Path, default=Path("/tmp/fit-ranking"), help="maps and embedding caches")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = arguments(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from fitted_banks import SETUPS, write_maps

    from protolib.bank import Bank

    args.work.mkdir(parents=True, exist_ok=True)
    model = args.work / "siamese.pt"  # a copy, so that the embedding caches go to the work folder
    if not model.exists():
        shutil.copy(args.run / "siamese.pt", model)
    started = time.perf_counter()
    maps = write_maps(SETUPS["noema"], args.maps, args.work / "maps", args.seed)
    with Bank(args.run / "bank.h5") as bank:
        rows = synthetic(bank, model, maps, list(VARIANTS))
        synthetic_seconds = time.perf_counter() - started
        by_source = {} if args.skip_real else real(bank, model, list(VARIANTS), args.work)
    found = summary(rows, by_source, list(VARIANTS))
    text = summary_table(found) + "\n\n" + tables(rows, by_source, list(VARIANTS))
    print(text)
    results = {
        "command": " ".join(sys.argv),
        "bank": str(args.run / "bank.h5"),
        "variants": {name: dict(zip(("rule", "most_matches", "beam_factor"), v)) for name, v in VARIANTS.items()},
        "summary": found,
        "synthetic": rows,
        "synthetic_seconds": synthetic_seconds,
        "real": by_source,
        "seconds": time.perf_counter() - started,
        "table": text,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
