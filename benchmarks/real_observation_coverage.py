"""Coverage of the intervals on NOEMA-like synthetic observations, with and without the image-space fit.

Held-out test systems of the default bank are written as synthetic observations like the shipped
PRODIGE maps (300 pc, 0.15" pixels, a 0.95" x 0.65" beam), prepared and matched as `protolib match`
does, and their distributions formed four ways:

- ``embedding``: the top k by embedding similarity, equal weights (what `protolib match` reports);
- ``chi2 re-rank``: among the top 200 by similarity, the k with the lowest reduced chi-square;
- ``chi2 weights``: the top 200 weighted by exp(-(chi2 - chi2_min) / 2s), s set so that the
  effective number of matches is k;
- ``embedding, reproduced only``: the first, over the targets whose image-space verdict passes;
- ``embedding, calibrated``: the first, each interval widened about the median by the factor that
  makes it honest on the 48 reference bank images seen like this target (what `protolib match` reports).

For each: the mean coverage of the 68% and 95% intervals over the target-similarity parameters, the
median interval width over the prior's, and the RMS error of the median in prior standard deviations.

    python benchmarks/real_observation_coverage.py --n-targets 40 --out
benchmarks/results/real_observation_coverage.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from protolib.config import load_config
from protolib.distributions import match_parameters, prior_parameters
from protolib.instrument import Beam
from protolib.matching import Matcher, fit_matches, matching_target
from protolib.matching.calibration import choose_k_and_widening
from protolib.observation import write_observation_fits
from protolib.pipelines.simulate import ensure_bank
from protolib.pipelines.train import ensure_autoencoder, ensure_siamese, run_split
from protolib.statistics import weighted_percentile

PARAMETERS = ["stellar_mass", "accretion_rate", "disk_radius", "disk_mass", "envelope_mass", "luminosity", "age"]
SHORTLIST = 200


def chi2_weights(chi2: np.ndarray, k: int) -> np.ndarray:
    """exp(-(chi2 - min) / 2s), s found by bisection so that 1 / sum(w^2) is about k."""
    excess = chi2 - chi2.min()
    lo, hi = 1e-6, 1e9
    for _ in range(100):
        s = np.sqrt(lo * hi)
        w = np.exp(-excess / (2 * s))
        w /= w.sum()
        if 1.0 / np.sum(w**2) < k:
            lo = s
        else:
            hi = s
    return w


def scores(values: dict, weights, truths: dict, prior: dict, widening: dict | None = None) -> dict:
    out = {}
    for name in PARAMETERS:
        x, truth, p = np.log10(values[name]), np.log10(truths[name]), np.log10(prior[name])
        q = weighted_percentile(x, [2.5, 16, 50, 84, 97.5], weights)
        q = q[2] + (widening or {}).get(name, 1.0) * (q - q[2])
        pq = np.percentile(p, [2.5, 16, 84, 97.5])
        out[name] = {
            "in68": bool(q[1] <= truth <= q[3]),
            "in95": bool(q[0] <= truth <= q[4]),
            "width68": float((q[3] - q[1]) / (pq[2] - pq[1])),
            "error": float((q[2] - truth) / p.std()),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-targets", type=int, default=40)
    parser.add_argument(
        "--noise", type=float, default=3e-4, help="noise rms [Jy/beam] (0.3 mJy/beam, as in the HH 211 map)"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/real_observation_coverage.json"))
    args = parser.parse_args()
    config = load_config("default")
    bank = ensure_bank(config, progress=False)
    model = ensure_siamese(config, bank, ensure_autoencoder(config, bank, progress=False), progress=False)
    test = run_split(config, bank).test[: args.n_targets]
    prior = prior_parameters(bank)
    results = {
        m: {k: [] for k in (20, 50)}
        for m in ("embedding", "chi2 re-rank", "chi2 weights", "embedding, reproduced only", "embedding, calibrated")
    }
    verdicts, best_chi2, snr = [], [], []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        for i, system in enumerate(test):
            projection = i % bank.n_projections
            truth = {name: float(bank.parameters[name][system]) for name in bank.parameters}
            path = write_observation_fits(
                Path(scratch) / f"obs{i}.fits",
                truth,
                inclination_deg=float(bank.inclination[system, projection]),
                position_angle_deg=float(bank.position_angle[system, projection]),
                distance_pc=300.0,
                pixel_arcsec=0.15,
                image_size=96,
                beam=Beam(0.95, 0.65, 25.0),
                noise_rms_jy_beam=args.noise,
                seed=1000 + i,
                config=bank.simulator_config,
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                target = matching_target(path, bank, 300.0)
            matcher = Matcher.from_model(
                model, bank, transform=target.transform, transform_key=target.transform_key, cache=False, progress=False
            )
            matches = matcher.match(target.image, top_k=SHORTLIST, exclude_system=int(system))
            fit = fit_matches(matcher, target.image, matches.head(50), observation=target)
            chi2, verdict = (
                fit_matches(matcher, target.image, matches, observation=target, n_reference=8).reduced_chi2,
                fit.verdict,
            )
            _, calibration, _ = choose_k_and_widening(bank, fit.reference_rows, fit.reference_matches)
            widening = {name: c["widening"] for name, c in calibration.items()}
            verdicts.append(bool(verdict.reproduces))
            best_chi2.append(float(chi2.min()))
            snr.append(float(target.image.max() / target.noise_rms_jy_beam))
            values = match_parameters(bank, matches)
            for k in (20, 50):
                head = {n: v[:k] for n, v in values.items()}
                order = np.argsort(chi2, kind="stable")[:k]
                reranked = {n: v[order] for n, v in values.items()}
                results["embedding"][k].append(scores(head, None, truth, prior))
                results["chi2 re-rank"][k].append(scores(reranked, None, truth, prior))
                results["chi2 weights"][k].append(scores(values, chi2_weights(chi2, k), truth, prior))
                if verdict.reproduces:
                    results["embedding, reproduced only"][k].append(scores(head, None, truth, prior))
                if k == 50:  # the calibration was made for 50 matches
                    results["embedding, calibrated"][k].append(scores(head, None, truth, prior, widening))
            print(
                f"target {i + 1}/{len(test)}: system {system}, best chi2 {chi2.min():.3g}, reproduced "
                f"{verdict.reproduces}",
                flush=True,
            )
    table = {}
    for method, by_k in results.items():
        for k, rows in by_k.items():
            if not rows:
                continue
            per = {
                name: {
                    "in68": float(np.mean([r[name]["in68"] for r in rows])),
                    "in95": float(np.mean([r[name]["in95"] for r in rows])),
                    "width68": float(np.median([r[name]["width68"] for r in rows])),
                    "rms_error": float(np.sqrt(np.mean([r[name]["error"] ** 2 for r in rows]))),
                }
                for name in PARAMETERS
            }
            table[f"{method}, k={k}"] = {
                "n_targets": len(rows),
                "per_parameter": per,
                **{
                    key: float(np.mean([p[key] for p in per.values()]))
                    for key in ("in68", "in95", "width68", "rms_error")
                },
            }
    summary = {
        "n_targets": len(test),
        "noise_rms_jy_beam": args.noise,
        "median_peak_snr": float(np.median(snr)),
        "fraction_reproduced": float(np.mean(verdicts)),
        "median_best_reduced_chi2": float(np.median(best_chi2)),
        "wall_s": time.perf_counter() - start,
        "methods": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"\n{len(test)} targets, median peak S/N {summary['median_peak_snr']:.0f}, reproduced "
        f"{summary['fraction_reproduced']:.2f}, "
        f"median best chi2 {summary['median_best_reduced_chi2']:.3g}, {summary['wall_s']:.0f} s"
    )
    print(f"{'method':<36} {'n':>3} {'68%':>5} {'95%':>5} {'width/prior':>11} {'rms error':>9}")
    for name, row in table.items():
        print(
            f"{name:<36} {row['n_targets']:>3} {row['in68']:>5.2f} {row['in95']:>5.2f} {row['width68']:>11.2f} "
            f"{row['rms_error']:>9.2f}"
        )


if __name__ == "__main__":
    main()
