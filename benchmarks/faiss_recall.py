"""Recall@k of FAISS inverted-list (IVF) indexes against exact search, with their settings and query time.

Matching a bank too large for exact search uses :class:`protolib.matching.EmbeddingIndex` with
``backend="faiss"``, an ``IVF<nlist>,Flat`` index and ``faiss_parameters="nprobe=<n>"``. This measures,
for each ``nlist`` and ``nprobe``, the fraction of the exact top-k (own system excluded, as in real
queries) that the index returns, and the query time.

The embeddings imitate a bank's: each system is a random direction on the unit sphere and its
projections scatter around it (``--spread``), so neighbours cluster by system as trained
embeddings do. Queries are bank images, their own system excluded.

Usage::

    python benchmarks/faiss_recall.py --images 200000 --out benchmarks/faiss_recall.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from protolib.matching import EmbeddingIndex


def clustered_embeddings(n_images: int, projections: int, dimension: int, spread: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_images // projections, 1, dimension), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=-1, keepdims=True)
    vectors = (
        centres + spread * rng.standard_normal((len(centres), projections, dimension), dtype=np.float32)
    ).reshape(-1, dimension)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200_000, help="bank images")
    parser.add_argument("--projections", type=int, default=8, help="images per system")
    parser.add_argument("--dimension", type=int, default=32, help="embedding size")
    parser.add_argument(
        "--spread", type=float, default=0.15, help="scatter of a system's projections around its direction"
    )
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--nlist", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--nprobe", type=int, nargs="+", default=[1, 4, 16, 64, 256])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    vectors = clustered_embeddings(args.images, args.projections, args.dimension, args.spread, seed=0)
    system, projection = np.arange(len(vectors)) // args.projections, np.arange(len(vectors)) % args.projections
    rows = np.random.default_rng(1).choice(len(vectors), args.queries, replace=False)
    queries, excluded = vectors[rows], system[rows].tolist()
    exact = EmbeddingIndex(vectors, system, projection, backend="exact")
    tick = time.perf_counter()
    truth = [
        set((m.system * args.projections + m.projection).tolist())
        for m in exact.search(queries, top_k=args.top_k, exclude_systems=excluded)
    ]
    results = [
        {
            "index": "exact",
            "settings": "",
            "recall": 1.0,
            "ms_per_query": 1e3 * (time.perf_counter() - tick) / args.queries,
        }
    ]
    for nlist in args.nlist:
        for nprobe in (n for n in args.nprobe if n <= nlist):
            tick = time.perf_counter()
            index = EmbeddingIndex(
                vectors,
                system,
                projection,
                backend="faiss",
                faiss_factory=f"IVF{nlist},Flat",
                faiss_parameters=f"nprobe={nprobe}",
            )
            build = time.perf_counter() - tick
            tick = time.perf_counter()
            found = index.search(queries, top_k=args.top_k, exclude_systems=excluded)
            seconds = time.perf_counter() - tick
            recall = np.mean(
                [
                    len(t & set((m.system * args.projections + m.projection).tolist())) / args.top_k
                    for t, m in zip(truth, found)
                ]
            )
            results.append(
                {
                    "index": f"IVF{nlist},Flat",
                    "settings": f"nprobe={nprobe}",
                    "recall": float(recall),
                    "ms_per_query": 1e3 * seconds / args.queries,
                    "build_seconds": build,
                }
            )
    report = {
        "images": args.images,
        "projections": args.projections,
        "dimension": args.dimension,
        "spread": args.spread,
        "queries": args.queries,
        "top_k": args.top_k,
        "threads": args.threads,
        "machine": platform.processor() or platform.machine(),
        "results": results,
    }
    print(
        f"recall@{args.top_k} against exact search, {args.images} images of dimension {args.dimension}, {args.queries} "
        "queries"
    )
    for r in results:
        print(f"  {r['index']:>14} {r['settings']:>10}  recall {r['recall']:.3f}  {r['ms_per_query']:.2f} ms/query")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(report, handle, indent=1)


if __name__ == "__main__":
    main()
