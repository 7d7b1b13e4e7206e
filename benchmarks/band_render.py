"""What a second and a third band cost the renderer: one band, three bands at once, three bands one by one.

In one process, with one torch thread, drawn nuisance physics and the default configuration (64x64),
for ``--systems`` systems x 8 projections rendered one system's projections per call (as the bank does):

- ``one band``: ``simulator.frequency_ghz: 230`` (today's bank);
- ``three bands at once``: ``simulator.frequencies_ghz: [100, 230, 345]``: the geometry, densities and
  temperatures once, the opacity, Planck function and radiative transfer per band;
- ``three bands one by one``: three one-band renders at 100, 230 and 345 GHz (what a user would do
  without several bands).

Each is timed as the clean render (:func:`protolib.simulator.render`) and as the bank path
(:func:`protolib.bank.render_systems`: + envelope mass, each band's beam and noise), in images per
CPU-second of the process (one image: one system seen in one projection, in all its bands), the
three alternated ``--repeats`` times and the best of each kept. The three-band render is also checked
to give, band by band, the one-band renders' images bit for bit.

    python benchmarks/band_render.py [--systems 8] [--repeats 3] [--out benchmarks/results/band_render.json]

The machine is shared and noisy: compare the rows of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace

import numpy as np
import torch

from protolib.bank import draw_systems, render_systems
from protolib.config import load_config
from protolib.instrument import Instrument
from protolib.parameters import Prior
from protolib.simulator import NUISANCE_FIELDS, RENDER_KEYS, render

BANDS_GHZ = [100.0, 230.0, 345.0]
PROJECTIONS = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = load_config("default")
    one = replace(config.simulator, frequency_ghz=230.0, frequencies_ghz=None)
    three = replace(config.simulator, frequencies_ghz=list(BANDS_GHZ))
    singles = [replace(config.simulator, frequency_ghz=f, frequencies_ghz=None) for f in BANDS_GHZ]
    instrument = config.instrument
    three_instrument = Instrument(
        **{
            **instrument.to_dict(),
            "bands": [
                {"beam_major_arcsec": 0.55, "beam_minor_arcsec": 0.55},
                {},
                {"beam_major_arcsec": 0.2, "beam_minor_arcsec": 0.2},
            ],
        }
    )
    systems = draw_systems(args.systems, PROJECTIONS, 3, Prior(nuisance="drawn"), config.simulator)
    cases = {
        "one band": ([one], [instrument]),
        "three bands at once": ([three], [three_instrument]),
        "three bands one by one": (singles, three_instrument.per_band(3)),
    }
    render_systems(systems, np.arange(1), one, instrument, 0, "cpu")  # warm-up
    best = {(name, kind): 0.0 for name in cases for kind in ("render", "bank path")}
    for _ in range(args.repeats):
        for name, (configs, instruments) in cases.items():
            best[name, "render"] = max(
                best[name, "render"], _rate(lambda configs=configs: [_clean(systems, c) for c in configs], args.systems)
            )
            best[name, "bank path"] = max(
                best[name, "bank path"],
                _rate(
                    lambda configs=configs, instruments=instruments: [
                        render_systems(systems, np.arange(args.systems), c, i, 0, "cpu")
                        for c, i in zip(configs, instruments)
                    ],
                    args.systems,
                ),
            )
    together = _clean(systems, three)
    alike = all(torch.equal(together[:, b], _clean(systems, c)) for b, c in enumerate(singles))
    _report(best, alike, args)


def _clean(systems: dict, config) -> torch.Tensor:
    """The clean images of every system, one system's projections per call, ``(N * 8, [bands,] H, W)``."""
    per_image = {k: torch.as_tensor(np.repeat(systems[k], PROJECTIONS)) for k in (*RENDER_KEYS, *NUISANCE_FIELDS)}
    angles = [torch.as_tensor(systems[k].reshape(-1)) for k in ("inclination", "position_angle")]
    own = [slice(PROJECTIONS * i, PROJECTIONS * (i + 1)) for i in range(len(systems["inclination"]))]
    with torch.no_grad():
        return torch.cat(
            [render({k: v[s] for k, v in per_image.items()}, angles[0][s], angles[1][s], config, 140.0) for s in own]
        )


def _rate(work, n_systems: int) -> float:
    start = time.process_time()
    work()
    return n_systems * PROJECTIONS / (time.process_time() - start)


def _report(best: dict, alike: bool, args) -> None:
    one = best["one band", "render"], best["one band", "bank path"]
    print(
        f"{args.systems} systems x {PROJECTIONS} projections, 64x64, one thread, best of {args.repeats}; images per "
        "CPU-second "
        f"(an image: one view in all its bands). Load average {os.getloadavg()[0]:.1f}."
    )
    print(
        f"{'':26s} {'render':>10s} {'cost':>11s} {'bank path':>10s} {'cost':>11s}   (cost: CPU time per image against "
        "one band)"
    )
    for name in ("one band", "three bands at once", "three bands one by one"):
        rates = best[name, "render"], best[name, "bank path"]
        print(f"{name:26s} {rates[0]:10.1f} {one[0] / rates[0]:10.2f}x {rates[1]:10.1f} {one[1] / rates[1]:10.2f}x")
    for kind in ("render", "bank path"):
        saving = best["three bands at once", kind] / best["three bands one by one", kind]
        print(f"{kind}: three bands at once are {saving:.2f}x as fast as one by one")
    print(f"three bands at once give the one-band images bit for bit: {alike}")
    if args.out:
        record = {
            "systems": args.systems,
            "projections": PROJECTIONS,
            "repeats": args.repeats,
            "bit_identical": alike,
            "load_average": os.getloadavg()[0],
            "machine": platform.platform(),
            "torch": torch.__version__,
            "images_per_cpu_second": {f"{name} / {kind}": rate for (name, kind), rate in best.items()},
        }
        with open(args.out, "w") as handle:
            json.dump(record, handle, indent=1)


if __name__ == "__main__":
    main()
