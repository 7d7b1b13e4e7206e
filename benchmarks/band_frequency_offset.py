"""What scaling a map from its frequency to its bank band with a fixed spectral index costs, against the flux scale.

A map is matched in the bank band nearest its frequency, up to :data:`~protolib.bank.BAND_TOLERANCE` (5%)
away, its fluxes brought to the band with ``(band / observed)^alpha`` where ``alpha = 2 + beta`` of the
bank's fixed opacity law (:func:`protolib.observation.frequency_scale`). A match whose own spectral index
``alpha_m`` differs is then off by ``(band / observed)^(alpha_m - alpha)`` in that band. This measures
that factor over the bank's images (drawn nuisance physics, so β from 0.5 to 2 and optically thick
cores; noiseless, so that a faint image's index is its dust's, not its noise's), each image's
``alpha_m`` the total-flux index between the band and its nearest neighbour band, at frequency offsets
of 1%, 2.5% and 5%, beside the flux calibration each band's fit already allows (1 sigma,
:func:`~protolib.matching.observing.default_flux_calibration`, and the image-space fit's tolerance, 2
sigma). It also gives the error the same offset puts in the spectral index between two bands that a
band-dropout network sees (the offset's ``log`` over the bands' ``log`` ratio).

    python benchmarks/band_frequency_offset.py [--systems 120] [--out benchmarks/results/band_frequency_offset.json]

A few seconds on one CPU core (the bank: the tiny configuration's sampling, 32 px, in 100, 230 and 345 GHz).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from protolib.bank import Bank, simulate_bank
from protolib.instrument import Instrument
from protolib.matching.observing import default_flux_calibration
from protolib.parameters import Prior
from protolib.simulator import SimulatorConfig

BANDS_GHZ = [100.0, 230.0, 345.0]
OFFSETS = [0.01, 0.025, 0.05]


def spectral_indices(bank_path: Path) -> np.ndarray:
    """``(images, bands)`` each image's total-flux spectral index between each band and its nearest neighbour band."""
    with Bank(bank_path) as bank:
        flux = bank.load_images(np.arange(bank.n_systems)).sum(axis=(-1, -2))  # (N, P, B)
    flux = np.maximum(flux.reshape(-1, len(BANDS_GHZ)), 1e-30)
    log_nu = np.log(BANDS_GHZ)
    pair = [(0, 1), (0, 1), (1, 2)]  # 100: 100-230; 230: 100-230 (the nearer in log); 345: 230-345
    return np.stack([np.log(flux[:, j] / flux[:, i]) / (log_nu[j] - log_nu[i]) for i, j in pair], axis=1)


def measure(alpha: np.ndarray, fixed_alpha: float) -> dict:
    """Per band and offset: the percentiles of the flux error ``|(1 + offset)^(alpha_m - alpha) - 1|`` and of the
    spectral-index error a network sees, beside the band's flux calibration."""
    out = {}
    for b, band in enumerate(BANDS_GHZ):
        calibration = default_flux_calibration(band)
        rows = []
        for offset in OFFSETS:
            error = np.abs((1.0 + offset) ** (alpha[:, b] - fixed_alpha) - 1.0)
            index_error = np.abs(alpha[:, b] - fixed_alpha) * np.log1p(offset) / np.log(230.0 / 100.0)
            rows.append(
                {
                    "offset": offset,
                    "flux_error_median": float(np.median(error)),
                    "flux_error_95": float(np.percentile(error, 95)),
                    "flux_error_max": float(error.max()),
                    "index_error_b3_b6_95": float(np.percentile(index_error, 95)),
                }
            )
        out[f"{band:g}"] = {
            "flux_calibration_1sigma": calibration,
            "fit_flux_tolerance": 2.0 * calibration,
            "alpha_percentiles_5_50_95": np.percentile(alpha[:, b], [5, 50, 95]).tolist(),
            "offsets": rows,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", type=int, default=120)
    parser.add_argument("--out", default="benchmarks/results/band_frequency_offset.json")
    args = parser.parse_args()
    config = SimulatorConfig(image_size=32, envelope_samples=24, disk_samples=16, frequencies_ghz=BANDS_GHZ)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        path = simulate_bank(
            Path(folder) / "bank.h5",
            args.systems,
            2,
            seed=5,
            config=config,
            instrument=Instrument(noise_rms_jy_beam=0.0),
            prior=Prior(nuisance="drawn"),
            progress=False,
        )
        alpha = spectral_indices(path)
    fixed = 2.0 + config.opacity_beta
    results = {
        "what": __doc__.splitlines()[0],
        "command": f"python benchmarks/band_frequency_offset.py --systems {args.systems}",
        "images": int(len(alpha)),
        "fixed_spectral_index": fixed,
        "bands": measure(alpha, fixed),
        "seconds": round(time.perf_counter() - start, 1),
        "python": platform.python_version(),
    }
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
