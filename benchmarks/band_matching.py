"""What a second and a third band buy: held-out systems with drawn physics matched in B6, B3+B6 and B3+B6+B7.

One bank of ``--systems`` systems x ``--projections`` projections in three bands, the nuisance physics
(dust opacity κ_230 and β, temperature law, disk profile, cavity, envelope size) drawn per system,
every band at a beam and noise typical of it (ALMA, a configuration of ~0.25" at 230 GHz; the
default configuration's commented ``instrument.bands``):

=========  =======  ============  ==================
band       GHz      beam FWHM     noise [Jy/beam]
=========  =======  ============  ==================
B3         100      0.6" x 0.6"   3e-5
B6         230      0.25" x 0.25" 1e-4 (the book's)
B7         345      0.2" x 0.2"   2e-4
=========  =======  ============  ==================

The networks, the default configuration's settings (the autoencoder's epochs capped by ``--ae-epochs``,
the Siamese networks' set by ``--epochs``, the band-dropout network's by ``--dropout-epochs``: it has
every subset of bands to learn and its validation loss still falls where the others' are flat), all on
the same split:

- the autoencoder, on the B6 band (the reference band);
- ``dropout``: the band-dropout Siamese network (``siamese.model.bands: all``) on all three bands, its
  target similarity the book's seven parameters plus β and κ_230 (what two bands can separate);
- ``today``: today's one-band network on B6 with the same target (the "loses nothing" check);
- ``today (book target)``: today's one-band network on B6 with the book's target, as configured now;
- ``fixed physics``: today's network on a B6 bank of the same systems with the nuisance physics fixed
  (chapter 06b's "no shift" case), its autoencoder the same B6 one.

Every network matches the held-out (test) systems' images against the training systems' (the
bank's own images at each band's beam and noise), with chapter 06's correction (``k`` and the
intervals' widening chosen on the validation systems): :func:`protolib.evaluation.evaluate_methods`.
For each case, and each parameter (the physical ones, the inclination and every nuisance
parameter): the median |error| over the prior spread, the 68% and 95% coverage, the 68% half-width
over the prior spread, and whether the images constrain it (RMS error and half-width both below 0.95
prior spreads). Then the issue's goals: with B3+B6+B7, β's 68% half-width at most 0.5 prior spreads,
disk and envelope mass errors within 1.1 times the fixed-physics case's, coverage within ±0.05 of
nominal for the constrained parameters.

With ``--k-per-parameter`` the correction chooses a ``k`` per parameter
(``evaluate_methods(..., k_per_parameter=True)``): each parameter's own coverage miss on the
validation systems, near-ties to the narrower intervals. Each case then also records the one-``k``
correction's figures on the same networks and test targets (``single_k_corrected``, and
``goals_single_k``), so that the two are compared in one run.

``--folder`` keeps the banks and networks; a later run with the same folder and the same settings
that make them (systems, projections, image size, epochs, opacity weight and law, split) reuses
them and only evaluates, so that a second evaluation of the same networks (with and without
``--k-per-parameter``, say) does not simulate or train again. The settings are written to
``settings.json`` in the folder, and a run with other settings refuses the folder.

    python benchmarks/band_matching.py [--systems 800] [--out benchmarks/results/band_matching.json]

Runs on one torch thread; the default size takes about 15 minutes on a quiet CPU core.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from protolib.autoencoder import train_autoencoder
from protolib.bank import Bank, simulate_bank
from protolib.config import load_config
from protolib.evaluation import MatchingMethod, Relevance, evaluate_methods
from protolib.evaluation.report import constrains
from protolib.instrument import Instrument
from protolib.matching.band_embeddings import band_embedding
from protolib.parameters import Prior
from protolib.siamese import SiameseConfig, load_siamese, train_siamese
from protolib.splits import split_systems
from protolib.target_similarity import TargetDefinition

BANDS_GHZ = [100.0, 230.0, 345.0]
BAND_SETTINGS = [
    {"beam_major_arcsec": 0.6, "beam_minor_arcsec": 0.6, "noise_rms_jy_beam": 3e-5},
    {},
    {"beam_major_arcsec": 0.2, "beam_minor_arcsec": 0.2, "noise_rms_jy_beam": 2e-4},
]
CASES = {"B6": [230.0], "B3+B6": [100.0, 230.0], "B3+B6+B7": BANDS_GHZ}
OPACITY = ["opacity_beta", "opacity_230ghz"]
GOAL_BETA_HALF_WIDTH, GOAL_MASS_RATIO, GOAL_COVERAGE = 0.5, 1.1, 0.05


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", type=int, default=800)
    parser.add_argument("--projections", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--ae-epochs", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--dropout-epochs", type=int, default=60, help="the band-dropout network's (it learns more)")
    parser.add_argument("--opacity-weight", type=float, default=3.0, help="β's and κ's weight in the target")
    parser.add_argument("--reference-alone", type=float, default=None, help="the dropout network's B6-alone share")
    parser.add_argument("--split", type=float, nargs=3, default=[0.6, 0.15, 0.25], help="train, validation, test")
    parser.add_argument("--folder", default=None, help="where the banks and networks go (default: a temporary one)")
    parser.add_argument(
        "--opacity-law",
        choices=["independent", "anchored"],
        default="independent",
        help="how the three-band bank draws κ_230: independent of β, or anchored at 1000 GHz (prior.opacity_law)",
    )
    parser.add_argument(
        "--k-per-parameter", action="store_true", help="the correction chooses a k per parameter (and keeps one k's)"
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.folder or scratch)
        folder.mkdir(parents=True, exist_ok=True)
        _claim(folder, args)
        record = run(args, folder)
    record["seconds"] = time.perf_counter() - start
    _print(record)
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n")


def run(args, folder: Path) -> dict:
    """The banks, the networks, and every case's figures."""
    config = load_config("default")
    split = split_systems(args.systems, tuple(args.split), seed=0)
    paths, timings = _banks(args, config, folder)
    tick = time.perf_counter()
    networks = _networks(config, args, split, paths, folder)
    timings["training_seconds"] = time.perf_counter() - tick
    tick = time.perf_counter()
    cases = _evaluate(networks, paths, split, config, args.k_per_parameter)
    timings["evaluation_seconds"] = time.perf_counter() - tick
    single_k = {name: {**case, "parameters": case["single_k_corrected"]} for name, case in cases.items()}
    return {
        "setup": _setup(args, config, split),
        "timings": timings,
        "cases": cases,
        "goals": _goals(cases),
        **({"goals_single_k": _goals(single_k)} if args.k_per_parameter else {}),
        "loses_nothing": _one_band_comparison(cases),
        "machine": platform.platform(),
        "torch": torch.__version__,
        "load_average": os.getloadavg()[0],
    }


def _claim(folder: Path, args) -> None:
    """Write the settings that make the banks and networks to ``folder/settings.json``, or, where the folder holds
    some already, refuse it unless they are the same (its banks and networks are then reused)."""
    made_by = {key: value for key, value in vars(args).items() if key not in ("folder", "out", "k_per_parameter")}
    path = folder / "settings.json"
    if path.exists() and json.loads(path.read_text()) != made_by:
        raise SystemExit(f"{path}: the banks and networks there were made with other settings; use another --folder.")
    path.write_text(json.dumps(made_by, indent=1) + "\n")


def _banks(args, config, folder: Path) -> tuple[dict, dict]:
    """The three-band bank with drawn physics and the one-band (B6) bank of the same systems with fixed physics
    (each kept where ``folder`` has it already, :func:`_claim`)."""
    simulator = replace(config.simulator, image_size=args.image_size)
    three = Instrument(**{**config.instrument.to_dict(), "bands": BAND_SETTINGS})
    paths = {"three": folder / "three_bands.h5", "fixed": folder / "b6_fixed_physics.h5"}
    timings = {}
    for name, sim, instrument, nuisance in (
        ("three", replace(simulator, frequencies_ghz=list(BANDS_GHZ)), three, "drawn"),
        ("fixed", replace(simulator, frequency_ghz=230.0, frequencies_ghz=None), config.instrument, "fixed"),
    ):
        if paths[name].exists():
            continue
        tick = time.perf_counter()
        simulate_bank(
            paths[name],
            args.systems,
            args.projections,
            seed=0,
            config=sim,
            instrument=instrument,
            prior=Prior(nuisance=nuisance, opacity_law=args.opacity_law if nuisance == "drawn" else "independent"),
            progress=False,
        )
        timings[f"bank_{name}_seconds"] = time.perf_counter() - tick
    return paths, timings


def _networks(config, args, split, paths: dict, folder: Path) -> dict[str, Path]:
    """The autoencoder on B6 and the four Siamese networks (module docstring)."""
    ae = config.autoencoder
    ae_training = replace(ae.training, epochs=min(ae.training.epochs, args.ae_epochs), num_threads=1)
    autoencoder = folder / "autoencoder.pt"
    with Bank(paths["three"], 230.0) as b6:
        autoencoder = (
            autoencoder
            if autoencoder.exists()
            else train_autoencoder(
                b6,
                folder / "autoencoder.pt",
                split=split,
                model=ae.model,
                images=ae.images,
                augmentation=ae.augmentation,
                training=ae_training,
                progress=False,
            )
        )
    book = config.siamese.target
    weights = [*(book.weights or [1.0] * len(book.parameters)), args.opacity_weight, args.opacity_weight]
    opacity = replace(book, parameters=[*book.parameters, *OPACITY], weights=weights)
    plans = {
        "dropout": (paths["three"], None, _dropout_model(config, args), opacity),
        "today": (paths["three"], 230.0, config.siamese.model, opacity),
        "today (book target)": (paths["three"], 230.0, config.siamese.model, book),
        "fixed physics": (paths["fixed"], None, config.siamese.model, book),
    }
    return {
        name: _train(config, epochs, split, autoencoder, folder / f"{name.split()[0]}_{i}.pt", *plan)
        for i, (name, plan) in enumerate(plans.items())
        for epochs in [args.dropout_epochs if name == "dropout" else args.epochs]
    }


def _dropout_model(config, args) -> SiameseConfig:
    """The configuration's Siamese network with ``bands: all`` (and ``--reference-alone`` when given)."""
    return SiameseConfig(**{**config.siamese.model.to_dict(), "bands": "all", "reference_alone": args.reference_alone})


def _train(
    config, epochs: int, split, autoencoder, out: Path, bank_path, band, model, target: TargetDefinition
) -> Path:
    """One Siamese network trained to ``out`` (kept where it is there already, :func:`_claim`)."""
    if out.exists():
        return out
    settings = config.siamese
    training = replace(settings.training, epochs=epochs, num_threads=1)
    with Bank(bank_path, band) as bank:
        return train_siamese(
            bank,
            autoencoder,
            out,
            model=model,
            target=target,
            loss=settings.loss,
            pairs=settings.pairs,
            augmentation=settings.augmentation,
            training=training,
            split=split,
            progress=False,
            test_metrics=False,
        )


def _evaluate(networks: dict[str, Path], paths: dict, split, config, k_per_parameter: bool) -> dict:
    """Every case's per-parameter figures (corrected as chapter 06's; with ``k_per_parameter``, a ``k`` per
    parameter), on the held-out systems."""
    settings = replace(config.evaluation, methods=["siamese"])
    cases = {}
    with Bank(paths["three"]) as bank:
        relevance = Relevance.fit(config.siamese.target, bank, split.train)
        dropout = load_siamese(networks["dropout"], "cpu")
        today = {name: load_siamese(networks[name], "cpu") for name in ("today", "today (book target)")}
        methods = [
            MatchingMethod(f"dropout {case}", band_embedding(dropout, bank.frequencies_ghz, bands))
            for case, bands in CASES.items()
        ]
        methods += [
            MatchingMethod(f"{name} B6", band_embedding(model, bank.frequencies_ghz, [230.0]))
            for name, model in today.items()
        ]
        results = evaluate_methods(
            methods,
            bank,
            relevance,
            split,
            settings,
            extra_parameters=bank.nuisance_parameters,
            k_per_parameter=k_per_parameter,
        )
        cases.update({name: _figures(result) for name, result in results.items()})
    with Bank(paths["fixed"]) as fixed:
        model = load_siamese(networks["fixed physics"], "cpu")
        method = MatchingMethod("fixed physics B6", model.embed_images)
        relevance = Relevance.fit(config.siamese.target, fixed, split.train)
        result = evaluate_methods([method], fixed, relevance, split, settings, k_per_parameter=k_per_parameter)
        cases.update({name: _figures(r) for name, r in result.items()})
    return cases


def _figures(result) -> dict:
    """One case's figures per parameter, corrected (the k and widenings chosen on the validation systems): median
    |error| and 68% half-width over the prior spread, 68%/95% coverage, whether constrained; the same at the
    evaluation's own k (20) without the correction; the chosen k and widenings. With a ``k`` per parameter, that
    choice, and the one-``k`` correction's rows (``single_k_corrected``; else the same as ``parameters``)."""
    rows = _rows(result.figures(True))
    uncorrected = _rows(result.figures(False))
    single = result.corrected_single_k
    return {
        "chosen_k": result.chosen_k,
        "chosen_widening": result.chosen_widening,
        "chosen_k_per_parameter": result.chosen_k_per_parameter,
        "single_k_corrected": rows if single is None else _rows(single),
        "targets": int(len(result.figures(True).target_system)),
        "parameters": rows,
        "uncorrected_at_top_k": {"top_k": result.figures(False).top_k, "parameters": uncorrected},
    }


def _rows(evaluation) -> dict:
    rows = {}
    for name, row in evaluation.metrics["parameters"].items():
        spread = row["rms_error"] / row["rms_error_over_prior_spread"] if row["rms_error_over_prior_spread"] else np.nan
        rows[name] = {
            "median_abs_error_over_prior_spread": row["median_abs_error"] / spread,
            "median_abs_error": row["median_abs_error"],
            "rms_error_over_prior_spread": row["rms_error_over_prior_spread"],
            "coverage_68": row["coverage_68"],
            "coverage_95": row["coverage_95"],
            "half_width_68_over_prior_spread": row["width_68_over_prior_spread"],
            "constrained": constrains(row),
        }
    return rows


def _goals(cases: dict) -> dict:
    """The issue's goals for each number of bands: β's half-width, the masses' errors against fixed physics, and
    coverage of the constrained parameters."""
    fixed = cases["fixed physics B6"]["parameters"]
    goals = {}
    for case in CASES:
        rows = cases[f"dropout {case}"]["parameters"]
        constrained = [n for n, r in rows.items() if r["constrained"]]
        misses = {n: max(abs(rows[n]["coverage_68"] - 0.68), abs(rows[n]["coverage_95"] - 0.95)) for n in constrained}
        ratios = {n: rows[n]["median_abs_error"] / fixed[n]["median_abs_error"] for n in ("disk_mass", "envelope_mass")}
        goals[case] = {
            "beta_half_width_over_prior_spread": rows["opacity_beta"]["half_width_68_over_prior_spread"],
            "beta_goal_met": rows["opacity_beta"]["half_width_68_over_prior_spread"] <= GOAL_BETA_HALF_WIDTH,
            "kappa_half_width_over_prior_spread": rows["opacity_230ghz"]["half_width_68_over_prior_spread"],
            "mass_error_over_fixed_physics": ratios,
            "mass_goal_met": all(r <= GOAL_MASS_RATIO for r in ratios.values()),
            "constrained": constrained,
            "worst_coverage_miss": max(misses.values(), default=float("nan")),
            "coverage_goal_met": all(m <= GOAL_COVERAGE for m in misses.values()),
        }
    return goals


def _one_band_comparison(cases: dict) -> dict:
    """The dropout network in B6 alone against today's network with the same target: error ratio and coverage
    difference per parameter (``> 1``: the dropout network's error is larger)."""
    dropout, today = cases["dropout B6"]["parameters"], cases["today B6"]["parameters"]
    return {
        name: {
            "error_ratio": dropout[name]["median_abs_error"] / today[name]["median_abs_error"],
            "coverage_68_difference": dropout[name]["coverage_68"] - today[name]["coverage_68"],
            "coverage_95_difference": dropout[name]["coverage_95"] - today[name]["coverage_95"],
        }
        for name in dropout
    }


def _setup(args, config, split) -> dict:
    return {
        "systems": args.systems,
        "projections": args.projections,
        "image_size": args.image_size,
        "bands_ghz": BANDS_GHZ,
        "band_instruments": [{**config.instrument.to_dict(), **b, "bands": None} for b in BAND_SETTINGS],
        "split": {"train": len(split.train), "validation": len(split.validation), "test": len(split.test)},
        "autoencoder_epochs": args.ae_epochs,
        "siamese_epochs": args.epochs,
        "dropout_epochs": args.dropout_epochs,
        "opacity_weight": args.opacity_weight,
        "reference_alone": _dropout_model(load_config("default"), args).dropout(3, 1).reference_alone,
        "nuisance": "drawn (three-band bank); fixed (the fixed-physics B6 bank)",
        "opacity_law": args.opacity_law,
        "k_per_parameter": args.k_per_parameter,
    }


def _print(record: dict) -> None:
    shown = ["disk_mass", "envelope_mass", "stellar_mass", "accretion_rate", "inclination", *OPACITY]
    print(f"{record['setup']}\n{record['timings']}, {record['seconds']:.0f} s in all")
    print(f"{'case':28s} {'parameter':16s} {'|err|/spread':>12s} {'c68':>6s} {'c95':>6s} {'hw68/spread':>11s}")
    for case, figures in record["cases"].items():
        for name in shown:
            row = figures["parameters"].get(name)
            if row is not None:
                print(
                    f"{case:28s} {name:16s} {row['median_abs_error_over_prior_spread']:12.3f} "
                    f"{row['coverage_68']:6.2f} {row['coverage_95']:6.2f} "
                    f"{row['half_width_68_over_prior_spread']:11.2f}"
                    f"{'  constrained' if row['constrained'] else ''}"
                )
    print(json.dumps(record["goals"], indent=1))
    ratios = {n: round(v["error_ratio"], 2) for n, v in record["loses_nothing"].items()}
    print("dropout B6 / today B6 median |error|:", ratios)


if __name__ == "__main__":
    main()
