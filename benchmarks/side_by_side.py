"""Chapter 05b's matches of the shipped NOEMA maps one after the other (``run_match``, torch on every core) and side
by side (``run_matches``, one process per core), in one run, with the same products.

    python benchmarks/side_by_side.py --config default [--bank fitted] [--out benchmarks/results/side_by_side.json]

Reads the configuration's bank and Siamese network (``--bank teaching``, with a neural posterior estimate per map
as chapter 05b asks) or the NOEMA maps' fitted bank (``--bank fitted``: ``artifacts/<config>/noema``, made by chapter
05b); matches into a temporary folder; prints and writes the wall times and their ratio.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

from protolib.config import load_config
from protolib.literature import load_literature
from protolib.pipelines.match import run_match, run_matches


def jobs(config, bank: str, out: Path) -> list[dict]:
    """Chapter 05b's four matches (its targets and options) into ``out``."""
    sources = load_literature()
    options = {"L1448-IRS3A": {"centre": sources["L1448-IRS3A"].position, "mask_radius_arcsec": 3.5}}
    folder = config.artifacts_dir if bank == "teaching" else config.artifacts_dir / "noema"
    return [
        dict(
            model_path=folder / "siamese.pt",
            bank_path=folder / "bank.h5",
            out_dir=out / name,
            target=sources[name].path,
            distance_pc=sources[name].distance_pc,
            matching=config.matching,
            progress=False,
            observation_options=options.get(name, {}),
            distance_error_pc=sources[name].distance_error_pc,
            posterior=config.evaluation if bank == "teaching" else None,
        )
        for name in ("B5-IRS1", "HH211-mms", "L1448-IRS3B", "L1448-IRS3A")
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="default")
    parser.add_argument("--bank", choices=("teaching", "fitted"), default="teaching")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    config = load_config(args.config)
    times, done = {}, {}
    with tempfile.TemporaryDirectory() as work, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for label, run in (
            ("one after the other", lambda js: [run_match(**j) for j in js]),
            ("side by side", run_matches),
        ):
            start = time.perf_counter()
            reports = run(jobs(config, args.bank, Path(work) / label.replace(" ", "_")))
            times[label] = time.perf_counter() - start
            print(f"{label}: {times[label]:.1f} s", flush=True)
            done[label] = reports
    alone, side = done.values()
    result = {
        "config": args.config,
        "bank": args.bank,
        "seconds": times,
        "ratio": times["one after the other"] / times["side by side"],
        "same_verdicts": all(a["verdict"] == b["verdict"] for a, b in zip(alone, side)),
        "largest_median_difference": max(
            abs(a["median"] - b["median"]) / max(abs(b["median"]), 1e-30)
            for x, y in zip(alone, side)
            for a, b in zip(x["summary"], y["summary"])
        ),
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
