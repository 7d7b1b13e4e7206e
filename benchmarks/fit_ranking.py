"""Which matches should form the distribution: the most similar, or those that fit the map (issue 25)?

Each target is searched once (its 200 most similar bank images, as ``protolib match`` searches an observation) and
fitted once in image space (every match's reduced chi-square, and the 48 reference bank images seen like it with
their own matches' chi-squares, :func:`protolib.matching.fit_matches`). Then each rule of
:data:`protolib.matching.fit.DISTRIBUTION_RULES` chooses the distribution's matches, **on the target and on its
references alike** (:func:`protolib.matching.calibration.choose_k_and_widening` with the references' chi-squares),
so that the widening is measured on the intervals the rule gives:

- ``similarity``: the first ``k`` by similarity (``k`` calibrated), as before;
- ``fit_rank``: the 200 re-ranked by reduced chi-square, the first ``k`` (``k`` calibrated);
- ``fit_cut``: those within a factor 2 of the best reduced chi-square (at least 10), equal weights;
- ``fit_weight``: all 200, weighted by exp(-dchi2/2) with dchi2 counted in beams and tempered by the best match's
  reduced chi-square (:func:`protolib.matching.fit.distribution_weights` says why).

Targets:

- ``--maps`` synthetic NOEMA-like maps (``benchmarks/fitted_banks.py``'s ``noema`` setup: 300 pc, a 0.86" x 0.69"
  beam, 0.16 mJy/beam, prior draws, truth in the header): per parameter the median 68% half-width over the prior's,
  the 68%/95% coverage, and the median reduced chi-square of the distribution's matches (weighted);
- the shipped NOEMA maps (the four sources of chapter 05b): the published values (:mod:`protolib.literature`) inside
  the 95% intervals, the mean width over the prior's, and the median reduced chi-square of the matches kept.

Observing settings are taken as exact (no observing draws), as in ``benchmarks/fitted_banks.py``, so that the rules
alone are compared; the flux tolerance of the fit is twice the band's nominal flux-calibration error, as in
``protolib match``. Default bank and network (``artifacts/default``). Reproduce:

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/fit_ranking.py --run artifacts/default --maps 20 \\
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


def match_once(bank, model: Path, path: Path, distance_pc: float, options: dict | None = None):
    """One target searched and fitted as ``protolib match`` does it (nominal observing settings): its
    :class:`~protolib.matching.ObservationTarget`, its matches and their :class:`~protolib.matching.MatchFit`."""
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
    return observation, matches, fit


def apply_rule(bank, matches, fit, rule: str, truths: dict | None):
    """The distribution ``rule`` gives, calibrated on references chosen by the same rule: its summaries, the reduced
    chi-squares and weights of its matches, and ``k``."""
    from protolib.distributions import prior_parameters, summarise
    from protolib.matching import match_parameters
    from protolib.matching.calibration import choose_k_and_widening
    from protolib.matching.fit import distribution_order, distribution_weights

    k, calibration, _ = choose_k_and_widening(
        bank,
        fit.reference_rows,
        fit.reference_matches,
        reference_chi2=fit.reference_reduced_chi2,
        rule=rule,
        beams=fit.independent_beams,
    )
    order = distribution_order(fit.reduced_chi2, rule)
    chi2 = fit.reduced_chi2[order]
    weights = distribution_weights(chi2, rule, fit.independent_beams)
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
        observation, matches, fit = match_once(bank, model, path, 300.0)
        row = {"map": path.name, "best_reduced_chi2": float(fit.reduced_chi2.min()), "rules": {}}
        for rule in rules:
            summaries, chi2, weights, k = apply_rule(bank, matches, fit, rule, observation.truths)
            row["rules"][rule] = {
                "k": int(k),
                **kept_chi2(chi2, weights),
                "parameters": {
                    s.parameter: {
                        "width": float(s.prior_width_ratio),
                        "in68": bool(s.p16 <= s.truth <= s.p84),
                        "in95": bool(s.p2_5 <= s.truth <= s.p97_5),
                    }
                    for s in summaries
                    if s.parameter in shown(bank) and np.isfinite(s.truth)
                },
            }
        row["seconds"] = time.perf_counter() - started
        rows.append(row)
        print(f"  map {i + 1}/{len(maps)} ({row['seconds']:.0f} s)", file=sys.stderr, flush=True)
    return rows


def real(bank, model: Path, rules) -> dict:
    """Per shipped source and rule: the published values inside the 95% intervals, the mean width over the prior's
    of the compared parameters, and the matches' median reduced chi-square."""
    from protolib.distributions import prior_parameters
    from protolib.literature import compare_with_literature, load_literature

    sources, out = load_literature(), {}
    options = {"L1448-IRS3A": {"centre": sources["L1448-IRS3A"].position, "mask_radius_arcsec": 3.5}}
    for name, source in sources.items():
        started = time.perf_counter()
        _, matches, fit = match_once(bank, model, source.path, source.distance_pc, options.get(name))
        out[name] = {"best_reduced_chi2": float(fit.reduced_chi2.min()), "rules": {}}
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
                f"{np.median([v['width'] for v in values]):.2f}, {np.mean([v['in68'] for v in values]):.2f}/"
                f"{np.mean([v['in95'] for v in values]):.2f}"
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("artifacts/default"), help="folder with bank.h5, siamese.pt")
    parser.add_argument("--maps", type=int, default=20, help="synthetic NOEMA-like maps")
    parser.add_argument("--work", type=Path, default=Path("/tmp/fit-ranking"), help="maps and embedding caches")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from fitted_banks import SETUPS, write_maps

    from protolib.bank import Bank
    from protolib.matching.fit import DISTRIBUTION_RULES

    args.work.mkdir(parents=True, exist_ok=True)
    model = args.work / "siamese.pt"  # a copy, so that the embedding caches go to the work folder
    if not model.exists():
        shutil.copy(args.run / "siamese.pt", model)
    started = time.perf_counter()
    maps = write_maps(SETUPS["noema"], args.maps, args.work / "maps", args.seed)
    with Bank(args.run / "bank.h5") as bank:
        rows = synthetic(bank, model, maps, DISTRIBUTION_RULES)
        synthetic_seconds = time.perf_counter() - started
        by_source = {} if args.skip_real else real(bank, model, DISTRIBUTION_RULES)
    text = tables(rows, by_source, DISTRIBUTION_RULES)
    print(text)
    results = {
        "command": " ".join(sys.argv),
        "bank": str(args.run / "bank.h5"),
        "rules": list(DISTRIBUTION_RULES),
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
