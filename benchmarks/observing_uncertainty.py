"""Does the answer hinge on a guess of the recoverable scale? Synthetic maps with no missing short spacings.

Each test-split system of a trained run's bank is written as an ALMA-style FITS map with
:func:`protolib.observation.write_observation_fits` (the bank's beam and distance, no interferometric
filtering), and its ``PROTOLIB MAX_SCALE`` card removed, so the map, like a model image or a map
combined with single-dish data, does not say what scales it holds. Each map is matched three ways:

- ``assumed``: the recoverable scale assumed (10 beam major axes) and taken as exact (``observing_draws=0``);
  what ``protolib match`` did before the observing uncertainties;
- ``drawn``: the default: the recoverable scale drawn over 5-50 beams and the flux scale over its nominal
  10%, the matches of 12 draws pooled;
- ``told``: the truth given (``max_scale_arcsec=0``, no filtering), taken as exact: the reference.

It prints, per parameter, the median error of the median [dex for log-scaled parameters] and the 68%
and 95% coverage, and writes the table as JSON.

    python benchmarks/observing_uncertainty.py artifacts/default --maps 16 --json
benchmarks/results/observing_uncertainty.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits

MODES = {"assumed": {"observing_draws": 0}, "drawn": {}, "told": {"observing_draws": 0, "max_scale_arcsec": 0.0}}


def write_maps(bank_path: Path, systems: list[int], folder: Path) -> list[Path]:
    """Each system (projection 0) as a FITS map at the bank's beam and distance, without its MAX_SCALE card."""
    from protolib.bank import Bank
    from protolib.instrument import Beam
    from protolib.observation import write_observation_fits

    paths = []
    with Bank(bank_path) as bank:
        instrument, config = bank.instrument, bank.simulator_config
        field_arcsec = bank.image_size * bank.pixel_size_au / instrument.distance_pc
        for system in systems:
            parameters = {k: float(v[system]) for k, v in bank.parameters.items()}
            path = folder / f"system{system}.fits"
            write_observation_fits(
                path,
                parameters,
                inclination_deg=float(bank.inclination[system, 0]),
                position_angle_deg=float(bank.position_angle[system, 0]),
                distance_pc=instrument.distance_pc,
                pixel_arcsec=0.05,
                image_size=int(1.25 * field_arcsec / 0.05),
                beam=Beam(
                    instrument.beam_major_arcsec, instrument.beam_minor_arcsec, instrument.beam_position_angle_deg
                ),
                noise_rms_jy_beam=instrument.noise_rms_jy_beam,
                seed=system,
                config=config,
                include_model=False,
            )
            with fits.open(path, mode="update") as hdul:
                del hdul[0].header["HIERARCH PROTOLIB MAX_SCALE"]
            paths.append(path)
    return paths


def score(report: dict) -> dict:
    """Per parameter with a truth: the error of the median and whether the 68% and 95% intervals hold the truth."""
    out = {}
    for s in report["summary"]:
        truth = s["truth"]
        if truth is None or not np.isfinite(truth):
            continue
        value = (lambda x: np.log10(x)) if s["log_scale"] else (lambda x: x)
        out[s["parameter"]] = {
            "error": float(value(s["median"]) - value(truth)),
            "in68": bool(s["p16"] <= truth <= s["p84"]),
            "in95": bool(s["p2_5"] <= truth <= s["p97_5"]),
            "width68": float(s["width_68"]),
        }
    return out


def table(results: dict, parameters: list[str]) -> str:
    lines = [
        "| parameter | " + " | ".join(f"{m}: median abs. error, cov. 68/95, half-width" for m in MODES) + " |",
        "|---|" + "---|" * len(MODES),
    ]
    for name in parameters:
        cells = []
        for mode in MODES:
            rows = [r[name] for r in results[mode] if name in r]
            cells.append(
                f"{np.median([abs(r['error']) for r in rows]):.2f}, {np.mean([r['in68'] for r in rows]):.2f}/"
                f"{np.mean([r['in95'] for r in rows]):.2f}, {np.median([r['width68'] for r in rows]):.2f}"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a trained run's folder (bank.h5, siamese.pt), e.g. artifacts/default")
    parser.add_argument("--maps", type=int, default=16, help="test-split systems to write as maps (default 16)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from protolib.pipelines.match import run_match

    checkpoint = torch.load(args.run / "siamese.pt", map_location="cpu", weights_only=False)
    systems = [int(s) for s in checkpoint["split"]["test"]][: args.maps]
    results = {mode: [] for mode in MODES}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        maps = write_maps(args.run / "bank.h5", systems, Path(tmp))
        for i, path in enumerate(maps):
            for mode, options in MODES.items():
                draws = options.get("observing_draws")
                scale = {"max_scale_arcsec": options["max_scale_arcsec"]} if "max_scale_arcsec" in options else {}
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    report = run_match(
                        args.run / "siamese.pt",
                        args.run / "bank.h5",
                        Path(tmp) / f"{mode}{i}",
                        target=path,
                        distance_pc=140.0,
                        progress=False,
                        observing_draws=draws,
                        observation_options=scale,
                    )
                results[mode].append(score(report))
            print(f"map {i + 1}/{len(maps)} ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    parameters = [p for p in results["told"][0]]
    text = table(results, parameters)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {"systems": systems, "results": results, "table": text, "seconds": time.perf_counter() - started},
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
