"""Should the image-space goodness of fit enter the parameter distributions, or only the verdict?

Interval coverage on synthetic observations that look like the PRODIGE NOEMA maps (300 pc, 0.15"
pixels, 96 px, a 0.95" x 0.65" beam at PA 25 deg, thermal noise set per map to its noiseless peak / 100
by default, ``--peak-snr``; or one fixed ``--noise`` with ``--peak-snr 0``), made from the model's held-out test
systems. Each target is prepared onto the bank's grid, the bank is embedded under its transform, the
200 best matches by embedding similarity are taken (the target's own system excluded, as for a real
source that is not in the bank) and their reduced chi-squares and the image-space verdict computed
(:func:`protolib.matching.fit_matches`). The distributions are then formed in several ways, for
k in (20, 50, 100):

- ``embedding``: the top k by similarity, equal weights (today's behaviour);
- ``chi2_rerank``: among the top 200, the k with the lowest reduced chi-square, equal weights;
- ``chi2_weights``: the top 200 weighted by ``exp(-(chi2 - chi2_min) / (2 s))``, ``s`` found by
  bisection so that the effective sample size ``1 / sum(w^2)`` (``w`` normalised) is k;
- ``verdict_only``: as ``embedding``, reported separately for targets the verdict says are / are
  not reproduced (``embedding|reproduces`` and ``embedding|not_reproduced``);
- ``prior``: the whole bank (the no-information reference).

For each: the coverage of the central 68% and 95% intervals for the network's 7 target parameters
(log10 where log-scaled), the median interval width over the prior's same-percentile width, and the
RMS error of the median in units of the prior's standard deviation.

Usage::

    python benchmarks/chi2_coverage.py --n-targets 40 --out benchmarks/results/chi2_coverage.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from astropy.io import fits

import protolib
from protolib.distributions import _info, match_parameters, prior_parameters, weighted_percentile
from protolib.instrument import Beam
from protolib.matching import Matcher, fit_matches, prepare_observation_target
from protolib.observation import write_observation_fits

KS = (20, 50, 100)
TOP = 200
PCTS = (2.5, 16.0, 50.0, 84.0, 97.5)
DISTANCE_PC, PIXEL_ARCSEC, IMAGE_SIZE = 300.0, 0.15, 96
BEAM = Beam(0.95, 0.65, 25.0)


def chi2_weights(chi2: np.ndarray, ess: float, iterations: int = 200) -> tuple[np.ndarray, float]:
    """Weights exp(-(chi2 - min) / (2 s)), normalised, with s bisected (in log) so 1/sum(w^2) = ess."""
    d = np.asarray(chi2, dtype=np.float64) - float(np.min(chi2))

    def weights(s):
        w = np.exp(-d / (2.0 * s))
        return w / w.sum()

    lo, hi = np.log(1e-12), np.log(1e12)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if 1.0 / np.sum(weights(np.exp(mid)) ** 2) < ess:
            lo = mid
        else:
            hi = mid
    s = float(np.exp(0.5 * (lo + hi)))
    return weights(s), s


def intervals(samples: dict, parameters, info, weights=None) -> dict:
    out = {}
    for name in parameters:
        values = np.asarray(samples[name], dtype=np.float64)
        values = np.log10(values) if info[name] else values
        out[name] = [float(v) for v in weighted_percentile(values, PCTS, weights)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="artifacts/default/siamese.pt")
    parser.add_argument("--bank", default="artifacts/default/bank.h5")
    parser.add_argument("--n-targets", type=int, default=40)
    parser.add_argument("--peak-snr", type=float, default=100.0,
                        help="noise of each map = its noiseless peak / this (0: a fixed --noise for all)")
    parser.add_argument("--noise", type=float, default=3e-5, help="fixed thermal noise [Jy/beam] when --peak-snr is 0")
    parser.add_argument("--seed", type=int, default=0, help="base seed: target i uses seed + i for its noise")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/chi2_coverage.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    start = time.perf_counter()

    bank = protolib.Bank(args.bank)
    model = protolib.load_siamese(args.model)
    parameters = list(model.checkpoint["target"]["parameters"])
    test = [int(s) for s in model.checkpoint["split"]["test"]][: args.n_targets]
    info = {name: bool(_info(name, bank.parameter_info).log_scale) for name in parameters}
    prior = prior_parameters(bank, parameters)
    prior_scaled = {n: (np.log10(prior[n]) if info[n] else np.asarray(prior[n], dtype=np.float64)) for n in parameters}
    prior_stats = {n: {"std": float(np.std(v)), "width68": float(np.subtract(*np.percentile(v, [84, 16]))),
                       "width95": float(np.subtract(*np.percentile(v, [97.5, 2.5])))} for n, v in prior_scaled.items()}
    prior_iv = {n: [float(x) for x in np.percentile(v, PCTS)] for n, v in prior_scaled.items()}

    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, system in enumerate(test):
            t0 = time.perf_counter()
            projection = i % bank.n_projections
            params = {k: float(v[system]) for k, v in bank.parameters.items()}
            def write(name, noise):
                return write_observation_fits(
                    Path(tmp) / name, params, inclination_deg=float(bank.inclination[system, projection]),
                    position_angle_deg=float(bank.position_angle[system, projection]), distance_pc=DISTANCE_PC,
                    pixel_arcsec=PIXEL_ARCSEC, image_size=IMAGE_SIZE, beam=BEAM, noise_rms_jy_beam=noise,
                    seed=args.seed + i, config=bank.simulator_config, include_model=False)

            peak = float(np.nanmax(fits.getdata(write(f"clean_{i}.fits", 0.0), 0)))
            noise = peak / args.peak_snr if args.peak_snr > 0 else args.noise
            path = write(f"target_{i}.fits", noise)
            raw = np.squeeze(fits.getdata(path, 0))
            target = prepare_observation_target(path, bank, DISTANCE_PC, noise_seed=args.seed + i)
            matcher = Matcher.from_model(args.model, bank, transform=target.transform, transform_key=target.transform_key,
                                         cache=False, progress=False)
            matches = matcher.match(target.image, top_k=TOP, exclude_system=system)
            fitted = fit_matches(matcher, target.image, matches, observation=target, seed=args.seed + i)
            if isinstance(fitted, tuple):  # older protolib: (reduced_chi2, verdict, residuals)
                chi2, verdict = fitted[0], fitted[1]
            else:  # MatchFit
                chi2, verdict = fitted.reduced_chi2, fitted.verdict
            chi2 = np.asarray(chi2, dtype=np.float64)
            samples = match_parameters(bank, matches, parameters)
            truth = {n: (float(np.log10(params[n])) if info[n] else params[n]) for n in parameters}
            methods = {"prior": prior_iv}
            for k in KS:
                methods[f"embedding@{k}"] = intervals({n: v[:k] for n, v in samples.items()}, parameters, info)
                best = np.argsort(chi2, kind="stable")[:k]
                methods[f"chi2_rerank@{k}"] = intervals({n: v[best] for n, v in samples.items()}, parameters, info)
                w, s = chi2_weights(chi2, k)
                methods[f"chi2_weights@{k}"] = intervals(samples, parameters, info, w)
                methods[f"chi2_weights@{k}"]["_s"] = s
            top_by_sim_chi2 = float(chi2[0])
            record = {
                "index": i, "system": system, "projection": projection, "truth": truth,
                "noise_rms_jy_beam": noise, "noiseless_peak_jy_beam": peak, "peak_snr_raw": float(np.nanmax(raw) / noise),
                "peak_snr_prepared": float(np.max(target.image) / target.noise_rms_jy_beam),
                "prepared_noise_rms_jy_beam": float(target.noise_rms_jy_beam),
                "best_reduced_chi2": float(chi2.min()), "top1_similarity_chi2": top_by_sim_chi2,
                "median_chi2_top200": float(np.median(chi2)),
                "reproduces": bool(verdict.reproduces), "verdict": verdict.to_dict(),
                "top_similarity": float(matches.similarity[0]), "intervals": methods,
                "seconds": time.perf_counter() - t0,
            }
            records.append(record)
            print(f"[{i + 1}/{len(test)}] system {system} proj {projection}: peak SNR {record['peak_snr_raw']:.0f} "
                  f"(prepared {record['peak_snr_prepared']:.0f}), best chi2 {record['best_reduced_chi2']:.3g}, "
                  f"reproduces {record['reproduces']}, {record['seconds']:.1f} s", flush=True)

    def score(method: str, subset) -> dict:
        per = {}
        for n in parameters:
            iv = np.array([r["intervals"][method][n] for r in subset])
            t = np.array([r["truth"][n] for r in subset])
            eps = 1e-9 * np.maximum(np.abs(iv), 1.0)
            in68 = (iv[:, 1] - eps[:, 1] <= t) & (t <= iv[:, 3] + eps[:, 3])
            in95 = (iv[:, 0] - eps[:, 0] <= t) & (t <= iv[:, 4] + eps[:, 4])
            ps = prior_stats[n]
            per[n] = {"cov68": float(in68.mean()), "cov95": float(in95.mean()),
                      "width68_ratio": float(np.median((iv[:, 3] - iv[:, 1]) / ps["width68"])),
                      "width95_ratio": float(np.median((iv[:, 4] - iv[:, 0]) / ps["width95"])),
                      "rms_error": float(np.sqrt(np.mean((iv[:, 2] - t) ** 2)) / ps["std"])}
        mean = {key: float(np.mean([per[n][key] for n in parameters])) for key in next(iter(per.values()))}
        return {"n_targets": len(subset), "mean": mean, "per_parameter": per}

    summary = {}
    names = ["prior"] + [f"{m}@{k}" for m in ("embedding", "chi2_rerank", "chi2_weights") for k in KS]
    for name in names:
        summary[name] = score(name, records)
    good = [r for r in records if r["reproduces"]]
    bad = [r for r in records if not r["reproduces"]]
    for k in KS:
        for label, subset in (("reproduces", good), ("not_reproduced", bad)):
            if subset:
                summary[f"verdict_only@{k}|{label}"] = score(f"embedding@{k}", subset)
    wall = time.perf_counter() - start
    stats = {
        "n_targets": len(records), "fraction_reproduces": float(np.mean([r["reproduces"] for r in records])),
        "median_best_reduced_chi2": float(np.median([r["best_reduced_chi2"] for r in records])),
        "median_top1_similarity_reduced_chi2": float(np.median([r["top1_similarity_chi2"] for r in records])),
        "median_noise_rms_jy_beam": float(np.median([r["noise_rms_jy_beam"] for r in records])),
        "noise_rms_jy_beam_range": [float(min(r["noise_rms_jy_beam"] for r in records)), float(max(r["noise_rms_jy_beam"] for r in records))],
        "median_peak_snr_raw": float(np.median([r["peak_snr_raw"] for r in records])),
        "median_peak_snr_prepared": float(np.median([r["peak_snr_prepared"] for r in records])),
        "median_seconds_per_target": float(np.median([r["seconds"] for r in records])),
        "wall_seconds": wall,
    }
    result = {
        "settings": {"model": args.model, "bank": args.bank, "n_targets": args.n_targets, "peak_snr": args.peak_snr, "fixed_noise_rms_jy_beam": args.noise,
                     "seed": args.seed, "distance_pc": DISTANCE_PC, "pixel_arcsec": PIXEL_ARCSEC, "image_size": IMAGE_SIZE,
                     "beam": [BEAM.major_arcsec, BEAM.minor_arcsec, BEAM.position_angle_deg], "top": TOP, "ks": list(KS),
                     "parameters": parameters, "own_system_excluded": True, "threads": args.threads},
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()},
        "statistics": stats, "prior": prior_stats, "summary": summary, "targets": records,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))

    print(f"\n{'method':34s} {'n':>3s} {'cov68':>6s} {'cov95':>6s} {'w68':>6s} {'w95':>6s} {'rms':>6s}")
    for name, row in summary.items():
        m = row["mean"]
        print(f"{name:34s} {row['n_targets']:3d} {m['cov68']:6.3f} {m['cov95']:6.3f} {m['width68_ratio']:6.3f} "
              f"{m['width95_ratio']:6.3f} {m['rms_error']:6.3f}")
    print("\n" + json.dumps(stats, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
