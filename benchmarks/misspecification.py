"""Does sbi's misspecification test flag the misfits that the image-space verdict flags? (issue 27)

For each bank folder given (``bank.h5`` and ``siamese.pt``), ``--n`` synthetic targets of each kind
(plain systems from the bank's prior; a binary, an off-centre clump, a ring, spiral arms, a streamer:
:mod:`protolib.misfits`) in each peak-S/N bin are embedded with the Siamese network. Two tests that
look at the embedding alone then judge each one:

- ``sbi.diagnostics.calc_misspecification_mmd``: the maximum mean discrepancy between the target's
  embedding and the bank's, against its distribution when a bank image is taken as the target
  (``--shuffles`` permutations; flagged at p < ``--alpha``);
- the matcher's own out-of-distribution check (``Matcher.check``): the target's best similarity below
  the 5th percentile of the bank images' own best similarities.

It prints the fraction flagged per kind and bin for each test, beside which the verdict's rates
(``benchmarks/verdict_rates.py``, the same targets: same seed and n) can be read.

    python benchmarks/misspecification.py artifacts/default [--n 16] [--seed 0] [--out misspecification.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from protolib.bank import Bank
from protolib.matching import Matcher
from protolib.misfits import KINDS, SNR_BINS, targets_for_bank


def mmd_p_value(target: np.ndarray, bank_vectors: np.ndarray, *, shuffles: int, seed: int) -> float:
    """sbi's MMD misspecification p-value of one embedding ``(D,)`` against the bank's ``(N, D)``."""
    from sbi.diagnostics import calc_misspecification_mmd

    torch.manual_seed(seed)
    p_value, _ = calc_misspecification_mmd(
        torch.as_tensor(target[None]),
        torch.as_tensor(bank_vectors),
        mode="x_space",
        n_shuffle=shuffles,
        max_samples=1000,
    )
    return float(p_value)


def rates(folder: Path, n: int, seed: int, shuffles: int, alpha: float) -> list[dict]:
    rows = []
    with Bank(folder / "bank.h5") as bank:
        matcher = Matcher.from_model(folder / "siamese.pt", bank, progress=False)
        vectors = np.asarray(matcher.embeddings.vectors, dtype=np.float32)
        vectors = vectors[np.random.default_rng(seed).permutation(len(vectors))[:2000]]
        cells = [(kind, lo, hi) for kind in KINDS for lo, hi in SNR_BINS]
        for kind, lo, hi in tqdm(cells, desc="targets", unit="set"):
            targets = targets_for_bank(bank, kind, n, snr=(lo, hi), seed=seed)
            embedded = matcher.embed(targets.images)
            for i, (image, vector) in enumerate(zip(targets.images, embedded)):
                p_value = mmd_p_value(vector, vectors, shuffles=shuffles, seed=seed + i)
                ood = matcher.check(matcher.match(image, top_k=20)).is_out_of_distribution
                rows.append(
                    {
                        "kind": kind,
                        "snr_bin": f"{lo:g}-{hi:g}",
                        "mmd_p": p_value,
                        "mmd_flagged": p_value < alpha,
                        "ood_flagged": bool(ood),
                    }
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="folders holding bank.h5 and siamese.pt")
    parser.add_argument("--n", type=int, default=16, help="targets per kind and S/N bin")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shuffles", type=int, default=500, help="permutations of the MMD test's null distribution")
    parser.add_argument("--alpha", type=float, default=0.05, help="flagged below this p-value")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the machine is shared: one thread per process waits least
    results = {}
    for folder in map(Path, args.folders):
        start = time.perf_counter()
        rows = rates(folder, args.n, args.seed, args.shuffles, args.alpha)
        results[str(folder)] = {"rows": rows, "seconds": time.perf_counter() - start}
        print(
            f"\n{folder} ({time.perf_counter() - start:.0f} s): fraction flagged, MMD test (p < {args.alpha}) / "
            "out-of-distribution check"
        )
        bins = list(dict.fromkeys(r["snr_bin"] for r in rows))
        print("| kind | " + " | ".join(f"S/N {b}" for b in bins) + " |\n|---|" + "---|" * len(bins))
        for kind in dict.fromkeys(r["kind"] for r in rows):
            cells = []
            for b in bins:
                mine = [r for r in rows if r["kind"] == kind and r["snr_bin"] == b]
                cells.append(
                    f"{np.mean([r['mmd_flagged'] for r in mine]):.2f} / {np.mean([r['ood_flagged'] for r in mine]):.2f}"
                )
            print(f"| {kind} | " + " | ".join(cells) + " |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
