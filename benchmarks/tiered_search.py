"""A new observation against a large bank: tiered matching (shortlist, then re-rank) against exhaustive re-embedding.

Two measurements, in one run, on this machine:

1. **Recall.** Synthetic observations of the configuration's bank (test systems seen through a
   random elliptical beam 1-8 times the bank's and a peak signal-to-noise of 10-300, noise seeded by
   row) are matched exhaustively (the whole bank re-embedded through each observation's transform:
   the reference) and by tiered matching. Reported: the recall of the top k, ``|tiered & exhaustive| / k``,
   for several k and shortlist sizes, and the seconds per observation of each, once the tiers are
   embedded (their one-off cost is reported apart).
2. **Time at scale.** One new observation against 10^5 and 10^6 bank images: the tier's embeddings
   are random unit vectors of the network's dimension (search cost does not depend on what they
   encode), the shortlist's images are real bank images read from the bank file (rows taken modulo
   its size) and embedded with the trained network. The exhaustive reference at that scale is the
   bank size over the exhaustive embedding rate measured in part 1, marked as extrapolated.

Needs the configuration's bank and Siamese network (``make book`` makes them; the benchmark trains
them otherwise, as the notebooks do).

Usage::

    python benchmarks/tiered_search.py --config default --out benchmarks/results/tiered_search.json
    python benchmarks/tiered_search.py --config tiny --targets 5 --sizes 10000   # a quick look
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

from protolib.bank import Bank
from protolib.config import load_config
from protolib.instrument import Beam
from protolib.matching import (
    EmbeddingIndex,
    Matcher,
    ObservationTransform,
    TieredMatcher,
    nearest_tier,
    resolution_tiers,
    tier_embeddings,
)
from protolib.observation import ResolutionMatch
from protolib.observation.regrid import BankGrid
from protolib.pipelines.simulate import ensure_bank
from protolib.pipelines.train import ensure_autoencoder, ensure_siamese, run_split
from protolib.siamese import load_siamese


def random_observation(bank: Bank, rng: np.random.Generator, seed: int) -> ObservationTransform:
    """A transform like a new observation's: elliptical beam 1-8x the bank's, peak S/N 10-300 for a typical system."""
    grid = BankGrid.from_bank(bank)
    base = grid.beam.major_arcsec
    major = base * math.exp(rng.uniform(0.0, math.log(8.0)))
    beam = Beam(major, max(base, major * rng.uniform(0.6, 1.0)), rng.uniform(0, 180))
    noise_free = ResolutionMatch(
        beam, grid.pixel_arcsec, bank_beam=grid.beam, bank_noise_rms_jy_beam=grid.noise_rms_jy_beam
    )
    sample = bank.images_at(np.arange(min(64, bank.n_systems)), np.zeros(min(64, bank.n_systems), dtype=int))
    peak = float(np.median(noise_free(sample).reshape(len(sample), -1).max(axis=1)))
    noise = max(peak / math.exp(rng.uniform(math.log(10.0), math.log(300.0))), noise_free.bank_noise_rms_jy_beam)
    resolution = ResolutionMatch(
        beam,
        grid.pixel_arcsec,
        bank_beam=grid.beam,
        noise_rms_jy_beam=noise,
        bank_noise_rms_jy_beam=grid.noise_rms_jy_beam,
    )
    return ObservationTransform(resolution, seed)


def recall(found, truth, k: int) -> float:
    return len(set(zip(found.system[:k], found.projection[:k])) & set(zip(truth.system[:k], truth.projection[:k]))) / k


def measure_recall(model, bank, tiers, systems, ks, shortlists, model_key, rng) -> dict:
    """Recall of the tiered top k against exhaustive re-embedding, and the seconds per observation of each.

    The noise floor is the recall of exhaustive matching against itself with the bank's noise drawn
    from another seed: how much of the top k is set by the noise realisation alone.
    """
    embed = lambda images: model.embed_images(images, progress=False)  # noqa: E731
    tier_cache, recalls = {}, {f"k={k},shortlist={s}": [] for k in ks for s in shortlists if s >= k}
    recalls.update({f"k={k},noise_floor": [] for k in ks})
    times = {"exhaustive_s": [], "tiered_s": []}
    tier_seconds = 0.0
    for system in systems:
        transform = random_observation(bank, rng, seed=0)  # protolib match's noise seed (matching_targets' noise_seed)
        target = transform(bank.images_at([system], [0]), rows=np.array([system * bank.n_projections]))[0]
        tier = nearest_tier(tiers, transform.resolution.target_beam, transform.resolution.noise_rms_jy_beam)
        if tier not in tier_cache:
            start = time.perf_counter()
            tier_cache[tier] = tier_embeddings(embed, bank, tier, model_key=model_key, cache_path=None, progress=False)
            tier_seconds += time.perf_counter() - start
        start = time.perf_counter()
        truth = Matcher.from_embed_function(embed, bank, transform=transform, progress=False).match(
            target, top_k=max(ks), exclude_system=system
        )
        times["exhaustive_s"].append(time.perf_counter() - start)
        other = ObservationTransform(transform.resolution, seed=1)
        floor = Matcher.from_embed_function(embed, bank, transform=other, progress=False).match(
            target, top_k=max(ks), exclude_system=system
        )
        for k in ks:
            recalls[f"k={k},noise_floor"].append(recall(floor, truth, k))
        for shortlist in shortlists:
            matcher = TieredMatcher(embed, bank, tier_cache[tier], tier, transform=transform, shortlist=shortlist)
            start = time.perf_counter()
            found = matcher.match(target, top_k=max(ks), exclude_system=system)
            if shortlist == max(shortlists):
                times["tiered_s"].append(time.perf_counter() - start)
            for k in ks:
                if shortlist >= k:
                    recalls[f"k={k},shortlist={shortlist}"].append(recall(found, truth, k))
    return {
        "recall": {name: {"mean": float(np.mean(v)), "min": float(np.min(v))} for name, v in recalls.items()},
        "seconds_per_observation": {name: float(np.median(v)) for name, v in times.items()},
        "tiers_embedded": len(tier_cache),
        "tier_embedding_s": tier_seconds,
        "exhaustive_images_per_s": bank.n_systems * bank.n_projections / float(np.median(times["exhaustive_s"])),
    }


def measure_scale(model, bank, tiers, sizes, shortlist, top_k, rng) -> dict:
    """Seconds for one new observation against ``sizes`` bank images (synthetic tier vectors, real shortlist images)."""
    embed = lambda images: model.embed_images(images, progress=False)  # noqa: E731
    dimension = embed(bank.images_at([0], [0])).shape[1]
    out = {}
    for size in sizes:
        vectors = rng.standard_normal((size, dimension), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        index = EmbeddingIndex(
            vectors, np.arange(size) // bank.n_projections, np.arange(size) % bank.n_projections, backend="exact"
        )
        transform = random_observation(bank, rng, seed=7)
        tier = nearest_tier(tiers, transform.resolution.target_beam, transform.resolution.noise_rms_jy_beam)
        target = transform(bank.images_at([1], [0]), rows=np.array([bank.n_projections]))[0]
        n_rows = bank.n_systems * bank.n_projections
        steps = {}
        start = time.perf_counter()
        query = embed(target[None])
        steps["embed_target_s"] = time.perf_counter() - start
        start = time.perf_counter()
        [candidates] = index.search(query, top_k=shortlist)
        steps["search_s"] = time.perf_counter() - start
        rows = (candidates.system * bank.n_projections + candidates.projection) % n_rows
        start = time.perf_counter()
        matcher = TieredMatcher(
            embed, bank, _dummy_embeddings(bank, dimension), tier, transform=transform, shortlist=shortlist
        )
        similarity = matcher.embed_rows(rows // bank.n_projections, rows % bank.n_projections) @ query[0]
        np.argsort(-similarity)[:top_k]
        steps["re_embed_and_re_rank_s"] = time.perf_counter() - start
        out[str(size)] = {**steps, "total_s": sum(steps.values())}
        del index, vectors
    return out


def _dummy_embeddings(bank, dimension):
    from protolib.matching import BankEmbeddings

    n = bank.n_systems * bank.n_projections
    vectors = np.zeros((n, dimension), dtype=np.float32)
    vectors[:, 0] = 1.0
    return BankEmbeddings(
        vectors,
        np.repeat(np.arange(bank.n_systems), bank.n_projections),
        np.tile(np.arange(bank.n_projections), bank.n_systems),
        np.ones(8, dtype=np.float32),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="default")
    parser.add_argument("--targets", type=int, default=20, help="synthetic observations for the recall")
    parser.add_argument("--k", type=int, nargs="+", default=[20, 50, 200], help="top k whose recall is measured")
    parser.add_argument("--shortlists", type=int, nargs="+", default=[200, 500, 1000], help="shortlist sizes")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="bank sizes for the timing")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--beam-factors", type=float, nargs="+", default=None, help="tier beams (default: the configuration's)"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(args.config)
    rng = np.random.default_rng(0)
    with ensure_bank(config) as bank:
        model_path = ensure_siamese(config, bank, ensure_autoencoder(config, bank))
        model = load_siamese(model_path)
        settings = config.matching
        tiers = resolution_tiers(bank, args.beam_factors or settings.tier_beam_factors, settings.tier_peak_snr)
        test = run_split(config, bank).test
        systems = rng.choice(test, min(args.targets, len(test)), replace=False)
        result = {
            "machine": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "processor": platform.processor() or platform.machine(),
            },
            "bank": {
                "path": str(bank.path),
                "images": bank.n_systems * bank.n_projections,
                "image_size": bank.image_size,
            },
            "tiers": [str(t) for t in tiers],
            "recall": measure_recall(
                model, bank, tiers, systems, args.k, args.shortlists, {"model": str(model_path)}, rng
            ),
            "scale": measure_scale(model, bank, tiers, args.sizes, settings.shortlist, settings.top_k, rng),
        }
    rate = result["recall"]["exhaustive_images_per_s"]
    for size, steps in result["scale"].items():
        steps["exhaustive_extrapolated_s"] = int(size) / rate
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
