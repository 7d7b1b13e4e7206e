"""Understanding a trained network: ``protolib attribute`` and ``protolib embedding-map`` as runs.

:func:`run_attribution` draws attribution maps of held-out pairs (and of an observation against its
best match) with their sanity check, and :func:`run_embedding_map` draws the bank's embeddings on a
2-D map; both write their figures and a JSON report. The pieces they compose live in
:mod:`protolib.attribution` and :mod:`protolib.embedding_maps`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..attribution import (
    MAX_STEPS,
    attribution_rank_correlation,
    detected_pairs,
    pair_attributions,
    pick_pairs,
    randomisation_check_passes,
    randomised_copy,
)
from ..bank import Bank
from ..distributions import match_images
from ..embedding_maps import embedding_map, image_parameters, map_smoothness
from ..matching import Matcher, read_observation_target
from ..plots.attribution import plot_pair_attributions
from ..plots.embedding_maps import plot_embedding_maps
from ..runtime import ProtolibInputError, output_folder, write_figure, write_json
from ..siamese import SiameseModel, evaluate_similarity, load_siamese_with_its_bank

__all__ = ["run_attribution", "run_embedding_map"]


def run_attribution(
    model_path: str | Path,
    bank_path: str | Path,
    out_dir: str | Path,
    *,
    observation: str | Path | None = None,
    steps: int = 32,
    seed: int = 0,
    device: str | None = "cpu",
) -> dict:
    """What ``protolib attribute`` does: attribution maps of the best, middle and worst held-out pairs, and their
    sanity check.

    Among pairs of different test systems of the model's split (:func:`~protolib.siamese.evaluate_similarity`,
    at most 250 systems drawn with ``seed``) whose images both hold a source above the bank's noise
    (:func:`~protolib.attribution.detected_pairs`), the pairs :func:`~protolib.attribution.pick_pairs` picks are
    drawn to ``pair_best.png``, ``pair_middle.png`` and ``pair_worst.png``; each pair's maps are compared with those of
    :func:`~protolib.attribution.randomised_copy` (seeded by ``seed``) by
    :func:`~protolib.attribution.attribution_rank_correlation`. With ``observation``
    (a file written by ``protolib observe --out``), ``observation_best_match.png`` shows it against its
    best match, seen at the observation's beam and noise.

    Returns:
        The report written to ``attribution.json``: per pair its images (system, projection), ``predicted`` and
        ``target`` similarity and ``rank_correlation_trained_vs_randomised``, ``randomisation_check_passes``
        (:func:`~protolib.attribution.randomisation_check_passes`); with an observation, its best match.
    """
    out_dir = Path(out_dir)
    if not 1 <= steps <= MAX_STEPS:
        raise ProtolibInputError(f"--steps must be between 1 and {MAX_STEPS}, got {steps}.")
    model, bank = load_siamese_with_its_bank(model_path, bank_path, device)
    with bank, output_folder(out_dir, "attribute") as staging:  # the products of one run, published together
        if observation is not None:
            read_observation_target(observation, bank)  # a wrong file is refused before any work
        held_out = evaluate_similarity(model, bank, model.split.test, seed=seed)
        between = detected_pairs(held_out, bank.instrument.noise_rms_jy_beam)
        if len(between) == 0:
            raise ProtolibInputError(
                f"Model {model_path} has fewer than two test systems with a source above the bank's noise; attribution "
                "maps need pairs of different systems, each detected."
            )
        report = {
            "model": str(Path(model_path).resolve()),
            "bank": str(bank.path.resolve()),
            "steps": steps,
            "seed": seed,
            "pairs": _pair_attributions(model, bank, held_out, between, steps, seed, staging),
        }
        report["randomisation_check_passes"] = randomisation_check_passes(
            pair["rank_correlation_trained_vs_randomised"] for pair in report["pairs"].values()
        )
        if observation is not None:
            report["observation"] = _observation_attribution(
                model, model_path, bank, observation, steps, staging / "observation_best_match.png"
            )
        write_json(report, staging / "attribution.json")
    return report


def _observation_attribution(model: SiameseModel, model_path, bank, observation, steps: int, figure_path: Path) -> dict:
    """Draw a prepared observation against its best match in ``bank`` with their attribution maps; returns the match."""
    target = read_observation_target(observation, bank)
    matcher = Matcher.from_model(
        model_path, bank, transform=target.transform, transform_key=target.transform_key, progress=False
    )
    best = matcher.match(target.image, top_k=1)
    best_image = target.transform(match_images(bank, best))[0]
    system, projection, similarity = int(best.system[0]), int(best.projection[0]), float(best.similarity[0])
    write_figure(
        plot_pair_attributions(
            target.image,
            best_image,
            *pair_attributions(model, target.image, best_image, steps=steps),
            pixel_size_au=bank.pixel_size_au,
            titles=("observation", f"best match (system {system})"),
        ),
        figure_path,
    )
    return {
        "file": str(Path(observation).resolve()),
        "best_match": {"system": system, "projection": projection, "similarity": similarity},
    }


def _pair_attributions(
    model: SiameseModel, bank, held_out: dict, between: np.ndarray, steps: int, seed: int, staging: Path
) -> dict:
    """The best, middle and worst held-out pairs (rows ``between`` of ``held_out``): figures in ``staging``, and their
    report."""
    first, second, system = held_out["first"], held_out["second"], held_out["system"]
    randomised = randomised_copy(model, seed)
    pairs = {}
    for name, k in pick_pairs(held_out["predicted"][between], held_out["target"][between]).items():
        k = between[k]
        images = [held_out["images"][first[k]], held_out["images"][second[k]]]
        maps = pair_attributions(model, *images, steps=steps)
        random_maps = pair_attributions(randomised, *images, steps=steps)
        predicted, target = float(held_out["predicted"][k]), float(held_out["target"][k])
        write_figure(
            plot_pair_attributions(
                *images,
                *maps,
                pixel_size_au=bank.pixel_size_au,
                suptitle=f"{name} pair: predicted {predicted:.2f}, target {target:.2f}",
            ),
            staging / f"pair_{name}.png",
        )
        pairs[name] = {
            "images": [
                {"system": int(system[i]), "projection": int(i % bank.n_projections)} for i in (first[k], second[k])
            ],
            "predicted": predicted,
            "target": target,
            "rank_correlation_trained_vs_randomised": attribution_rank_correlation(np.r_[maps], np.r_[random_maps]),
        }
    return pairs


def run_embedding_map(
    model_path: str | Path,
    bank_path: str | Path,
    out_path: str | Path,
    *,
    method: str = "pca",
    observation: str | Path | None = None,
    seed: int = 0,
) -> dict:
    """Map a bank's embeddings under a trained model, coloured by parameter, and write the figure and its smoothness.

    What ``protolib embedding-map`` does: the bank's cached embeddings (:meth:`~protolib.matching.Matcher.from_model`)
    mapped by :func:`~protolib.embedding_maps.embedding_map`, one panel per parameter the model was trained on and one
    for inclination,
    an observation prepared by ``protolib observe`` marked as a star; the figure goes to ``out_path`` and
    :func:`~protolib.embedding_maps.map_smoothness` of each quantity to ``<out_path stem>_smoothness.json`` beside it.

    Returns:
        The report written to the JSON file: ``method``, ``seed``, ``n_images``, ``smoothness`` ``{name: value}``
        and ``observation`` (its map coordinates, or ``None``).
    """
    out_path = Path(out_path)
    with Bank(bank_path) as bank:
        matcher = Matcher.from_model(model_path, bank, progress=False)
        target = read_observation_target(observation, bank) if observation is not None else None
        embeddings = matcher.embeddings
        colours = image_parameters(
            bank, embeddings.system, embeddings.projection, matcher.checkpoint.get("parameter_names")
        )
    projection = embedding_map(embeddings.vectors, method, seed)
    coordinates = projection(embeddings.vectors)
    marked = projection(matcher.embed(target.image)[0]) if target is not None else None
    smoothness = {name: map_smoothness(coordinates, values, seed=seed) for name, values in colours.items()}
    write_figure(
        plot_embedding_maps(
            coordinates, colours, observation=marked, smoothness=smoothness, axis_name=projection.axis_name
        ),
        out_path,
    )
    report = {
        "method": method,
        "seed": seed,
        "n_images": len(coordinates),
        "smoothness": smoothness,
        "observation": None if marked is None else [float(x) for x in marked],
    }
    write_json(report, out_path.with_name(f"{out_path.stem}_smoothness.json"))
    return report
