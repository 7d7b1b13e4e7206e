"""Query latency of matching against bank size: exact and FAISS search versus the thesis's pairwise approach.

A query is one forward pass of the Siamese network for the target plus a nearest-neighbour search
over the bank's cached embeddings (top-k with the target's own system excluded). The thesis instead
ran the network on every (target, bank image) pair: two forward passes per bank image. Its cost is
measured directly up to ``--pairwise-max`` bank images (images held in memory, which favours it) and
extrapolated linearly above, marked as such.

The embeddings are random unit vectors (search cost does not depend on what they encode); the network
is the Siamese architecture of ``protolib.siamese`` at its default size, untrained (speed does not
depend on the weights).

Usage::

    python benchmarks/matching_latency.py --threads 2 --out benchmarks/matching_latency.json
    python benchmarks/matching_latency.py --sizes 1000 10000 --dimension 32 --image-size 64
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from protolib.autoencoder import AutoencoderConfig
from protolib.images import ImagePreprocessing
from protolib.matching import EmbeddingIndex, faiss_available
from protolib.siamese import SiameseConfig, SiameseNetwork


def unit_vectors(n: int, dimension: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, dimension), dtype=np.float32)
    for start in range(0, n, 1 << 18):
        block = rng.standard_normal((min(1 << 18, n - start), dimension), dtype=np.float32)
        out[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def median_seconds(function, repeats: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def network(image_size: int):
    net = SiameseNetwork(AutoencoderConfig(image_size=image_size), SiameseConfig()).eval()
    preprocessing = ImagePreprocessing()

    def embed(images: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return net(*preprocessing(torch.as_tensor(images)))

    return embed


def pairwise_seconds(embed, target: np.ndarray, n_bank: int, image_size: int, batch_size: int) -> float:
    """Seconds to score ``n_bank`` bank images against the target, two forward passes per pair."""
    bank = np.abs(np.random.default_rng(1).normal(size=(min(n_bank, batch_size), image_size, image_size))).astype(np.float32)
    start = time.perf_counter()
    done = 0
    while done < n_bank:
        n = min(batch_size, n_bank - done)
        similarity = (embed(np.repeat(target[None], n, axis=0)) * embed(bank[:n])).sum(1)
        done += n
    del similarity
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000, 1_000_000], help="bank sizes (images)")
    parser.add_argument("--dimension", type=int, default=SiameseConfig().embedding_size, help="embedding length")
    parser.add_argument("--image-size", type=int, default=64, help="image side in pixels (the default config's)")
    parser.add_argument("--top-k", type=int, default=200)
    parser.add_argument("--images-per-system", type=int, default=8, help="projections per system (own-system exclusion)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch and FAISS")
    parser.add_argument("--repeats", type=int, default=20, help="timed queries per size (median reported)")
    parser.add_argument("--pairwise-max", type=int, default=10_000, help="largest bank size timed pairwise; larger ones extrapolated")
    parser.add_argument("--hnsw-max", type=int, default=100_000, help="largest bank size given an HNSW32 index (its build is slow)")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    if faiss_available():
        import faiss

        faiss.omp_set_num_threads(args.threads)
    embed = network(args.image_size)
    target = np.abs(np.random.default_rng(0).normal(size=(args.image_size, args.image_size))).astype(np.float32)
    forward_s = median_seconds(lambda: embed(target[None]), args.repeats)
    pairs_per_s = None
    rows = []
    for n in args.sizes:
        vectors = unit_vectors(n, args.dimension, seed=n)
        system = np.arange(n) // args.images_per_system
        projection = np.arange(n) % args.images_per_system
        query = vectors[n // 2 : n // 2 + 1]
        excluded = [int(system[n // 2])]
        row = {"bank_images": n, "target_forward_s": forward_s}
        backends = [("exact", "exact", "Flat")]
        if faiss_available():
            backends.append(("faiss_flat", "faiss", "Flat"))
            if n <= args.hnsw_max:
                backends.append(("faiss_hnsw32", "faiss", "HNSW32"))
        for name, backend, factory in backends:
            start = time.perf_counter()
            index = EmbeddingIndex(vectors, system, projection, backend=backend, faiss_factory=factory, device="cpu")
            row[f"{name}_build_s"] = time.perf_counter() - start
            row[f"{name}_search_s"] = median_seconds(lambda: index.search(query, top_k=args.top_k, exclude_systems=excluded), args.repeats)
            row[f"{name}_query_s"] = forward_s + row[f"{name}_search_s"]
            del index
        if n <= args.pairwise_max:
            row["pairwise_s"] = pairwise_seconds(embed, target, n, args.image_size, batch_size=256)
            row["pairwise_extrapolated"] = False
            pairs_per_s = n / row["pairwise_s"]
        elif pairs_per_s is not None:
            row["pairwise_s"] = n / pairs_per_s
            row["pairwise_extrapolated"] = True
        if "pairwise_s" in row:
            row["speedup_exact_vs_pairwise"] = row["pairwise_s"] / row["exact_query_s"]
        rows.append(row)
        print(_line(row), flush=True)
    result = {
        "settings": vars(args),
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "processor": platform.processor(),
                    "cpu_threads": args.threads},
        "rows": rows,
    }
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(result, handle, indent=2)


def _line(row: dict) -> str:
    parts = [f"N={row['bank_images']:>8d}", f"forward {1e3 * row['target_forward_s']:.2f} ms"]
    for name in ("exact", "faiss_flat", "faiss_hnsw32"):
        if f"{name}_search_s" in row:
            parts.append(f"{name} search {1e3 * row[f'{name}_search_s']:.2f} ms (build {row[f'{name}_build_s']:.2f} s)")
    if "pairwise_s" in row:
        label = "extrapolated" if row["pairwise_extrapolated"] else "measured"
        parts.append(f"pairwise {row['pairwise_s']:.2f} s ({label}); exact query {row['speedup_exact_vs_pairwise']:.0f}x faster")
    return " | ".join(parts)


if __name__ == "__main__":
    main()
