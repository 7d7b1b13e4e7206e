"""The recoverable scale estimated from a map's negative bowl, on synthetic NOEMA-like maps of known scale.

``--maps`` systems drawn from the prior are written as FITS maps at the NOEMA setup of
``benchmarks/fitted_banks.py`` (300 pc, a 0.86" x 0.69" beam, 0.16 mJy/beam, a 25.6" map), filtered
as protolib models missing short spacings (the map minus itself smoothed by a Gaussian whose FWHM is
the recoverable scale, :class:`protolib.observation.resolution.ResolutionMatch`) at each ``--scales``,
and left unfiltered. :func:`protolib.observation.scale.estimate_max_scale` then reads each. The script
prints, per true scale, how many maps show a bowl, and the estimate over the truth (its range and
median); and how many unfiltered maps are wrongly said to show one.

    python benchmarks/recoverable_scale.py --maps 40 --scales 3 6 12 --seed 11   # the maps BOWL_OVER_TRUTH was read
from
    python benchmarks/recoverable_scale.py --maps 40 --scales 3 6 12 --seed 23 --work /tmp/recoverable-scale-23 \
        --json benchmarks/results/recoverable_scale.json                         # other maps: the check
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

SETUP = {
    "distance_pc": 300.0,
    "beam": (0.86, 0.69, 18.0),
    "noise_rms_jy_beam": 1.6e-4,
    "pixel_arcsec": 0.2,
    "image_size": 128,
    "frequency_ghz": 220.0,
}


def estimates(maps: int, scales: list[float], folder: Path, seed: int) -> dict:
    """Per scale (and ``"unfiltered"``), each map's estimate (``None``: no bowl) and significance."""
    import torch

    from protolib.bank import draw_systems
    from protolib.instrument import FWHM_TO_SIGMA, Beam, convolve_beam
    from protolib.observation import read_observation, write_observation_fits
    from protolib.observation.scale import estimate_max_scale

    folder.mkdir(parents=True, exist_ok=True)
    drawn, beam, pixel = draw_systems(maps, 1, seed), Beam(*SETUP["beam"]), SETUP["pixel_arcsec"]
    found = {str(s): [] for s in scales} | {"unfiltered": []}
    for i in range(maps):
        path = folder / f"map{i:03d}.fits"
        if not path.exists():
            write_observation_fits(
                path,
                {k: float(v[i]) for k, v in drawn.items() if v.ndim == 1},
                inclination_deg=float(drawn["inclination"][i, 0]),
                position_angle_deg=float(drawn["position_angle"][i, 0]),
                distance_pc=SETUP["distance_pc"],
                pixel_arcsec=pixel,
                image_size=SETUP["image_size"],
                beam=beam,
                noise_rms_jy_beam=SETUP["noise_rms_jy_beam"],
                seed=seed + i,
                frequency_ghz=SETUP["frequency_ghz"],
                include_model=False,
            )
        image = read_observation(path).image_jy_beam.astype(np.float64)
        row, col = np.unravel_index(np.nanargmax(image), image.shape)
        snr = float(np.nanmax(image) / SETUP["noise_rms_jy_beam"])
        for key in found:
            filtered = image
            if key != "unfiltered":
                covariance = (float(key) / pixel * FWHM_TO_SIGMA) ** 2 * np.eye(2)
                filtered = image - convolve_beam(torch.as_tensor(image), covariance).numpy()
            estimate = estimate_max_scale(
                filtered,
                (col, row),
                noise_rms=SETUP["noise_rms_jy_beam"],
                beam_major_px=beam.major_arcsec / pixel,
                beam_minor_px=beam.minor_arcsec / pixel,
                pixel_arcsec=pixel,
            )
            found[key].append(
                {
                    "estimate": estimate.max_scale_arcsec,
                    "range": estimate.range_arcsec,
                    "significance": estimate.significance,
                    "snr": snr,
                }
            )
    return found


def table(found: dict) -> str:
    """Markdown: per true scale, maps with a bowl, and the estimate over the truth."""
    lines = [
        "| true scale | maps with a bowl | estimate / truth: min, median, max | truth inside the stated range |",
        "|---|---|---|---|",
    ]
    for key, rows in found.items():
        values = [r["estimate"] for r in rows if r["estimate"] is not None]
        if key == "unfiltered":
            lines.append(f"| none (unfiltered) | {len(values)} of {len(rows)} (false) | — | — |")
            continue
        ratios = np.array(values) / float(key)
        spread = f"{ratios.min():.2f}, {np.median(ratios):.2f}, {ratios.max():.2f}" if len(ratios) else "—"
        inside = sum(r["range"][0] <= float(key) <= r["range"][1] for r in rows if r["range"])
        lines.append(f'| {float(key):g}" | {len(values)} of {len(rows)} | {spread} | {inside} of {len(values)} |')
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", type=int, default=40)
    parser.add_argument("--scales", type=float, nargs="+", default=[3.0, 6.0, 12.0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/recoverable-scale"))
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    found = estimates(args.maps, args.scales, args.work, args.seed)
    text = table(found)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"setup": SETUP, "found": found, "table": text}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
