"""A bank fitted to the map against the teaching bank, on synthetic maps at two real setups.

For each setup, ``--maps`` systems are drawn from the prior and written as ALMA-style FITS maps with
:func:`protolib.observation.write_observation_fits` (true parameters in the header, no missing short
spacings, declared). ``protolib bank-for`` builds a bank and both networks for the first map (every map
of a setup shares it), with the configuration given (the book's by default). Every map is then
matched against the fitted bank and against the teaching bank (``protolib match``, observing settings
taken as exact, so that the comparison is of the banks alone), and the script prints, per parameter,
the median 68% half-width over the prior's and the 68% and 95% coverage of the calibrated intervals.

Setups:

- ``noema``: NOEMA at 1.4 mm in Perseus, like the shipped maps: 300 pc, a 0.86" x 0.69" beam, 0.16
  mJy/beam, a 25" map;
- ``long_baseline``: ALMA long baselines at 140 pc: a 0.036" x 0.029" beam (5 x 4 au), 20 uJy/beam, a
  4" (560 au) map. The teaching bank's 1000 au field is twice the map's, so it refuses such maps.

    python benchmarks/fitted_banks.py --teaching artifacts/default --setups noema long_baseline --maps 30 \
        --work /tmp/fitted-banks --json benchmarks/results/fitted_banks.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

SETUPS = {
    "noema": {
        "distance_pc": 300.0,
        "beam": (0.86, 0.69, 18.0),
        "noise_rms_jy_beam": 1.6e-4,
        "pixel_arcsec": 0.2,
        "image_size": 128,
        "frequency_ghz": 220.0,
    },
    "long_baseline": {
        "distance_pc": 140.0,
        "beam": (0.036, 0.029, 0.0),
        "noise_rms_jy_beam": 2e-5,
        "pixel_arcsec": 0.008,
        "image_size": 500,
        "frequency_ghz": 230.0,
    },
}


def write_maps(setup: dict, n: int, folder: Path, seed: int) -> list[Path]:
    """``n`` prior draws written as FITS maps at ``setup``."""
    from protolib.bank import draw_systems
    from protolib.instrument import Beam
    from protolib.observation import write_observation_fits

    folder.mkdir(parents=True, exist_ok=True)
    drawn = draw_systems(n, 1, seed)
    paths = []
    for i in range(n):
        system = {k: float(v[i]) for k, v in drawn.items() if v.ndim == 1}
        path = folder / f"map{i:03d}.fits"
        if not path.exists():
            write_observation_fits(
                path,
                system,
                inclination_deg=float(drawn["inclination"][i, 0]),
                position_angle_deg=float(drawn["position_angle"][i, 0]),
                distance_pc=setup["distance_pc"],
                pixel_arcsec=setup["pixel_arcsec"],
                image_size=setup["image_size"],
                beam=Beam(*setup["beam"]),
                noise_rms_jy_beam=setup["noise_rms_jy_beam"],
                seed=seed + i,
                frequency_ghz=setup["frequency_ghz"],
                include_model=False,
            )
        paths.append(path)
    return paths


def score(report: dict) -> dict:
    """Per parameter with a truth: the 68% half-width over the prior's and whether the intervals hold the truth."""
    out = {}
    for s in report["summary"]:
        truth = s["truth"]
        if truth is not None and np.isfinite(truth):
            out[s["parameter"]] = {
                "width": float(s["prior_width_ratio"]),
                "in68": bool(s["p16"] <= truth <= s["p84"]),
                "in95": bool(s["p2_5"] <= truth <= s["p97_5"]),
            }
    return out


def match_all(maps: list[Path], model: Path, bank: Path, out: Path, distance_pc: float) -> list[dict | str]:
    """Each map's scores, or the one-line refusal when the bank refuses it."""
    from protolib.pipelines.match import run_match
    from protolib.runtime import ProtolibInputError

    results = []
    for i, path in enumerate(maps):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                report = run_match(
                    model,
                    bank,
                    out / path.stem,
                    target=path,
                    distance_pc=distance_pc,
                    progress=False,
                    observing_draws=0,
                )
            results.append(score(report))
        except ProtolibInputError as error:
            results.append(str(error))
        print(f"  {bank.parent.name}: map {i + 1}/{len(maps)}", file=sys.stderr, flush=True)
    return results


def table(by_bank: dict[str, list]) -> str:
    """Markdown: per parameter, each bank's median width over the prior's and its 68%/95% coverage."""
    scored = {label: [r for r in rows if isinstance(r, dict)] for label, rows in by_bank.items()}
    refused = {label: sum(isinstance(r, str) for r in rows) for label, rows in by_bank.items()}
    names = next((list(rows[0]) for rows in scored.values() if rows), [])
    lines = [
        "| parameter | "
        + " | ".join(
            f"{label} ({len(rows)} maps, {refused[label]} refused): width, cov. 68/95" for label, rows in scored.items()
        )
        + " |",
        "|---|" + "---|" * len(scored),
    ]
    for name in names:
        cells = []
        for rows in scored.values():
            values = [r[name] for r in rows if name in r]
            cells.append(
                f"{np.median([v['width'] for v in values]):.2f}, {np.mean([v['in68'] for v in values]):.2f}/"
                f"{np.mean([v['in95'] for v in values]):.2f}"
                if values
                else "—"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--teaching", type=Path, default=Path("artifacts/default"), help="the teaching run (bank.h5, siamese.pt)"
    )
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--maps", type=int, default=30, help="synthetic maps per setup")
    parser.add_argument("--config", default="default", help="configuration the fitted banks start from")
    parser.add_argument("--work", type=Path, default=Path("/tmp/fitted-banks"), help="where maps, banks and matches go")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from protolib.config import load_config
    from protolib.pipelines.bank_for import bank_for

    results = {}
    for name in args.setups:
        setup, started = SETUPS[name], time.perf_counter()
        maps = write_maps(setup, args.maps, args.work / name / "maps", args.seed)
        fitted = bank_for(
            maps[:1],
            setup["distance_pc"],
            args.work / name / "bank",
            load_config(args.config),
            progress=False,
            announce=lambda text: print(text, file=sys.stderr),
        )
        built = time.perf_counter() - started
        by_bank = {
            "teaching": match_all(
                maps,
                args.teaching / "siamese.pt",
                args.teaching / "bank.h5",
                args.work / name / "teaching",
                setup["distance_pc"],
            ),
            "fitted": match_all(maps, fitted.siamese, fitted.bank, args.work / name / "fitted", setup["distance_pc"]),
        }
        text = table(by_bank)
        print(f"\n{name}: {fitted.setup.describe()}; fitted bank and networks {built:.0f} s\n{text}")
        results[name] = {
            "setup": fitted.setup.describe(),
            "bank_seconds": built,
            "results": by_bank,
            "table": text,
            "seconds": time.perf_counter() - started,
        }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
