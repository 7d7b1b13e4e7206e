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
from dataclasses import dataclass, field
from functools import partial

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
    bank = np.abs(np.random.default_rng(1).normal(size=(min(n_bank, batch_size), image_size, image_size))).astype(
        np.float32
    )
    start = time.perf_counter()
    done = 0
    while done < n_bank:
        n = min(batch_size, n_bank - done)
        similarity = (embed(np.repeat(target[None], n, axis=0)) * embed(bank[:n])).sum(1)
        done += n
    del similarity
    return time.perf_counter() - start


@dataclass
class BackendTiming:
    """One search backend at one bank size: building its index and one query's search [s]."""

    build_s: float
    search_s: float


@dataclass
class LatencyRow:
    """One bank size's timings [s]: the target's forward pass, each search backend, and the pairwise approach.

    ``pairwise_s`` is ``None`` when the pairwise cost was neither measured nor extrapolated (no smaller
    size measured); ``pairwise_extrapolated`` says whether it was extrapolated.
    """

    bank_images: int
    target_forward_s: float
    backends: dict[str, BackendTiming] = field(default_factory=dict)  # name -> timing, in the order timed
    pairwise_s: float | None = None
    pairwise_extrapolated: bool = False

    def query_s(self, backend: str) -> float:
        """One query's cost with ``backend``: the target's forward pass plus the search."""
        return self.target_forward_s + self.backends[backend].search_s

    def to_dict(self) -> dict:
        """The row as written to the JSON results (flat keys ``<backend>_build_s``, ``<backend>_search_s`` ...)."""
        row = {"bank_images": self.bank_images, "target_forward_s": self.target_forward_s}
        for name, timing in self.backends.items():
            row.update(
                {
                    f"{name}_build_s": timing.build_s,
                    f"{name}_search_s": timing.search_s,
                    f"{name}_query_s": self.query_s(name),
                }
            )
        if self.pairwise_s is not None:
            row.update(
                pairwise_s=self.pairwise_s,
                pairwise_extrapolated=self.pairwise_extrapolated,
                speedup_exact_vs_pairwise=self.pairwise_s / self.query_s("exact"),
            )
        return row


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000, 1_000_000], help="bank sizes (images)"
    )
    parser.add_argument("--dimension", type=int, default=SiameseConfig().embedding_size, help="embedding length")
    parser.add_argument("--image-size", type=int, default=64, help="image side in pixels (the default config's)")
    parser.add_argument("--top-k", type=int, default=200)
    parser.add_argument(
        "--images-per-system", type=int, default=8, help="projections per system (own-system exclusion)"
    )
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch and FAISS")
    parser.add_argument("--repeats", type=int, default=20, help="timed queries per size (median reported)")
    parser.add_argument(
        "--pairwise-max", type=int, default=10_000, help="largest bank size timed pairwise; larger ones extrapolated"
    )
    parser.add_argument(
        "--hnsw-max", type=int, default=100_000, help="largest bank size given an HNSW32 index (its build is slow)"
    )
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    return parser


def search_timings(n: int, args, forward_s: float) -> LatencyRow:
    """Build each backend's index over ``n`` random unit vectors and time one query's search."""
    vectors = unit_vectors(n, args.dimension, seed=n)
    system = np.arange(n) // args.images_per_system
    projection = np.arange(n) % args.images_per_system
    query = vectors[n // 2 : n // 2 + 1]
    excluded = [int(system[n // 2])]
    row = LatencyRow(n, forward_s)
    backends = [("exact", "exact", "Flat")]
    if faiss_available():
        backends.append(("faiss_flat", "faiss", "Flat"))
        if n <= args.hnsw_max:
            backends.append(("faiss_hnsw32", "faiss", "HNSW32"))
    for name, backend, factory in backends:
        start = time.perf_counter()
        index = EmbeddingIndex(vectors, system, projection, backend=backend, faiss_factory=factory, device="cpu")
        build_s = time.perf_counter() - start
        row.backends[name] = BackendTiming(
            build_s,
            median_seconds(partial(index.search, query, top_k=args.top_k, exclude_systems=excluded), args.repeats),
        )
        del index
    return row


def main() -> None:
    args = _parser().parse_args()
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
        row = search_timings(n, args, forward_s)
        if n <= args.pairwise_max:
            row.pairwise_s = pairwise_seconds(embed, target, n, args.image_size, batch_size=256)
            pairs_per_s = n / row.pairwise_s
        elif pairs_per_s is not None:
            row.pairwise_s, row.pairwise_extrapolated = n / pairs_per_s, True
        rows.append(row.to_dict())
        print(_line(row), flush=True)
    result = {
        "settings": vars(args),
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "processor": platform.processor(),
            "cpu_threads": args.threads,
        },
        "rows": rows,
    }
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(result, handle, indent=2)


def _line(row: LatencyRow) -> str:
    parts = [f"N={row.bank_images:>8d}", f"forward {1e3 * row.target_forward_s:.2f} ms"]
    for name, timing in row.backends.items():
        parts.append(f"{name} search {1e3 * timing.search_s:.2f} ms (build {timing.build_s:.2f} s)")
    if row.pairwise_s is not None:
        label = "extrapolated" if row.pairwise_extrapolated else "measured"
        speedup = row.pairwise_s / row.query_s("exact")
        parts.append(f"pairwise {row.pairwise_s:.2f} s ({label}); exact query {speedup:.0f}x faster")
    return " | ".join(parts)


if __name__ == "__main__":
    main()
