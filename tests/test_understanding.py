"""Attribution maps (integrated gradients, the randomisation sanity check), embedding maps (PCA, UMAP) and their
commands."""

import json
import sys

import numpy as np
import pytest
import torch
from conftest import open_small_bank

from protolib.attribution import (
    attribution_rank_correlation,
    detected_pairs,
    half_weight_radius,
    pair_attributions,
    pair_similarity,
    pick_pairs,
    randomisation_check_passes,
    randomised_copy,
)
from protolib.autoencoder import AutoencoderConfig, train_autoencoder
from protolib.cli import main
from protolib.embedding_maps import (
    PcaMap,
    UmapMap,
    embedding_map,
    image_parameters,
    map_smoothness,
)
from protolib.matching import Matcher
from protolib.plots.attribution import plot_pair_attributions
from protolib.plots.embedding_maps import plot_embedding_maps
from protolib.runtime import ProtolibInputError
from protolib.siamese import load_siamese, train_siamese
from protolib.splits import split_systems
from protolib.training import TrainingConfig


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    with open_small_bank(tmp_path_factory, 16, seed=2) as opened:
        yield opened


@pytest.fixture(scope="module")
def model_path(bank, tmp_path_factory):
    out = tmp_path_factory.mktemp("models")
    split = split_systems(bank.n_systems, (0.5, 0.25, 0.25), seed=0)
    quick = TrainingConfig(epochs=2, batch_systems=4, learning_rate=3e-3, num_threads=1)
    autoencoder = train_autoencoder(
        bank,
        out / "autoencoder.pt",
        split=split,
        model=AutoencoderConfig(channels=[4, 8], latent_size=8),
        training=quick,
        progress=False,
    )
    return train_siamese(bank, autoencoder, out / "siamese.pt", split=split, training=quick, progress=False)


@pytest.fixture(scope="module")
def model(model_path):
    return load_siamese(model_path, device="cpu")


@pytest.fixture(scope="module")
def prepared_observation(bank, tmp_path_factory):
    """System 3 of the bank as an ALMA-style FITS file at 150 pc, prepared onto the bank's grid by `protolib
    observe`."""
    from protolib.instrument import Beam
    from protolib.observation import write_observation_fits

    folder = tmp_path_factory.mktemp("observation")
    system = {name: float(values[3]) for name, values in bank.parameters.items()}
    fits_path = write_observation_fits(
        folder / "synthetic.fits",
        system,
        inclination_deg=60.0,
        position_angle_deg=30.0,
        distance_pc=150.0,
        pixel_arcsec=0.15,
        image_size=56,
        beam=Beam(0.5, 0.4, 20.0),
        noise_rms_jy_beam=1e-4,
        seed=1,
    )
    assert (
        main(
            [
                "observe",
                str(fits_path),
                "--distance",
                "150",
                "--bank",
                str(bank.path),
                "--out",
                str(folder / "prepared.fits"),
            ]
        )
        == 0
    )
    return folder / "prepared.fits"


def network_similarity(model, image_a, image_b, black: bool = False) -> float:
    """The pair's similarity computed directly from the network, optionally with both stretched images black."""
    (pixels_a, flux_a), (pixels_b, flux_b) = (
        model.preprocessing(torch.as_tensor(image[None], dtype=torch.float32)) for image in (image_a, image_b)
    )
    if black:
        pixels_a, pixels_b = torch.zeros_like(pixels_a), torch.zeros_like(pixels_b)
    with torch.no_grad():
        return float(pair_similarity(model, pixels_a, pixels_b, flux_a, flux_b)[0])


def test_attributions_sum_to_the_similarity_gained_from_black_images(bank, model):
    image_a, image_b = bank.images[0, 0], bank.images[5, 1]
    map_a, map_b = pair_attributions(model, image_a, image_b, steps=64)
    assert map_a.shape == map_b.shape == (bank.image_size, bank.image_size)
    gained = network_similarity(model, image_a, image_b) - network_similarity(model, image_a, image_b, black=True)
    assert map_a.sum() + map_b.sum() == pytest.approx(gained, abs=0.02 * abs(gained) + 2e-3)
    assert network_similarity(model, image_a, image_b) == pytest.approx(
        float(model.similarity(image_a[None], image_b[None])[0]), abs=1e-5
    )


def test_a_network_with_randomised_weights_attributes_differently(bank, model):
    pairs = [(bank.images[s, 0], bank.images[(s + 3) % bank.n_systems, 1]) for s in range(0, bank.n_systems, 4)]
    trained_vs_random, trained_vs_itself = [], []
    for image_a, image_b in pairs:
        trained = pair_attributions(model, image_a, image_b)
        randomised = pair_attributions(randomised_copy(model, seed=1), image_a, image_b)
        trained_vs_random.append(attribution_rank_correlation(np.r_[trained], np.r_[randomised]))
        trained_vs_itself.append(
            attribution_rank_correlation(np.r_[trained], np.r_[pair_attributions(model, image_a, image_b, steps=48)])
        )
    assert np.median(trained_vs_itself) > 0.95
    assert np.median(trained_vs_random) < 0.75, trained_vs_random  # about 0.5 here; 1 if randomising changed nothing
    assert randomisation_check_passes(trained_vs_random) and not randomisation_check_passes(trained_vs_itself)
    weights = [p for p in randomised_copy(model, seed=1).network.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(weights, model.network.parameters()))


def test_pair_figure_and_the_best_middle_and_worst_pairs(bank, model):
    picked = pick_pairs(np.array([0.5, 0.9, 0.1, 0.45]), np.array([0.5, 0.5, 0.5, 0.5]))
    assert picked == {"best": 0, "middle": 1, "worst": 2}
    map_a, map_b = pair_attributions(model, bank.images[0, 0], bank.images[1, 0], steps=8)
    fig = plot_pair_attributions(bank.images[0, 0], bank.images[1, 0], map_a, map_b, pixel_size_au=bank.pixel_size_au)
    image_axes = fig.axes[:4]
    assert len(image_axes[1].images) == 1 and image_axes[1].images[0].get_extent()[0] > 0  # east to the left


def test_smoothness_is_zero_for_a_coordinate_and_about_one_for_shuffled_values():
    rng = np.random.default_rng(0)
    coordinates = rng.uniform(size=(400, 2))
    assert map_smoothness(coordinates, coordinates[:, 0]) < 0.15
    # ranks: a monotonic transform changes nothing
    assert map_smoothness(coordinates, np.exp(3 * coordinates[:, 1])) < 0.15
    assert map_smoothness(coordinates, rng.permutation(coordinates[:, 0])) == pytest.approx(1.0, abs=0.1)
    assert map_smoothness(coordinates, coordinates[:, 0], max_points=200) < 0.2  # a subset of a large map


def test_pca_map_keeps_the_direction_of_largest_spread_and_the_figure_marks_the_observation(bank):
    rng = np.random.default_rng(1)
    embeddings = np.c_[10 * rng.normal(size=200), rng.normal(size=(200, 5))]
    pca = PcaMap.fit(embeddings)
    assert abs(pca.components[0, 0]) > 0.99 and pca.explained[0] > 0.8
    assert pca(embeddings[0]).shape == (2,)
    systems, projections = (
        np.repeat(np.arange(bank.n_systems), bank.n_projections),
        np.tile(np.arange(bank.n_projections), bank.n_systems),
    )
    colours = image_parameters(bank, systems, projections, ["disk_radius", "stellar_mass"])
    assert (
        set(colours) == {"disk_radius", "stellar_mass", "inclination"} and colours["inclination"].shape == systems.shape
    )
    coordinates = rng.normal(size=(len(systems), 2))
    fig = plot_embedding_maps(coordinates, colours, observation=np.zeros(2), smoothness={"disk_radius": 0.5})
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_xlabel() == "PC 1"]
    assert len(panels) == 3 and "smoothness 0.50" in panels[0].get_title()
    assert all(len(ax.collections) == 2 for ax in panels)


def test_umap_map_is_reproducible_and_keeps_what_the_network_learned(bank, model_path):
    embeddings = Matcher.from_model(model_path, bank, progress=False).embeddings
    colours = image_parameters(
        bank, embeddings.system, embeddings.projection, load_siamese(model_path, "cpu").checkpoint["parameter_names"]
    )
    first, again = embedding_map(embeddings.vectors, "umap", seed=3), UmapMap.fit(embeddings.vectors, seed=3)
    coordinates = first(embeddings.vectors)
    np.testing.assert_array_equal(coordinates, again(embeddings.vectors))
    assert coordinates.shape == (len(embeddings.vectors), 2) and first(embeddings.vectors[0]).shape == (2,)
    # the parameter the embedding orders best (measured in embedding space) stays ordered on the map, unlike shuffled
    # copies
    best = min(
        (name for name in colours if name != "inclination"),
        key=lambda name: map_smoothness(embeddings.vectors, colours[name]),
    )
    rng = np.random.default_rng(0)
    shuffled = [map_smoothness(coordinates, rng.permutation(colours[best])) for _ in range(5)]
    # about 0.6 against 0.9-1.1 here
    assert map_smoothness(coordinates, colours[best]) < min(shuffled) - 0.1, (
        best,
        shuffled,
    )


def test_umap_without_umap_learn_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)  # as if umap-learn were not installed
    with pytest.raises(ProtolibInputError, match=r'pip install "protolib\[maps\]"'):
        embedding_map(np.random.default_rng(0).normal(size=(10, 4)), "umap")


def test_embedding_map_command_writes_the_figure_and_the_smoothness(
    bank, model_path, prepared_observation, tmp_path, capsys
):
    out = tmp_path / "maps" / "umap.png"
    assert (
        main(
            [
                "embedding-map",
                "--model",
                str(model_path),
                "--bank",
                str(bank.path),
                "--out",
                str(out),
                "--method",
                "umap",
                "--observation",
                str(prepared_observation),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "maps" / "umap_smoothness.json").read_text())
    assert out.stat().st_size > 0 and report["method"] == "umap" and len(report["observation"]) == 2
    assert set(report["smoothness"]) == set(load_siamese(model_path, "cpu").checkpoint["parameter_names"]) | {
        "inclination"
    }
    assert all(0 <= value < 2 for value in report["smoothness"].values())
    assert "smoothness (0 smooth, 1 none)" in capsys.readouterr().out


def test_attribute_command_writes_three_pairs_their_sanity_check_and_the_observation(
    bank, model_path, prepared_observation, tmp_path, capsys
):
    out = tmp_path / "attribution"
    assert (
        main(
            [
                "attribute",
                "--model",
                str(model_path),
                "--bank",
                str(bank.path),
                "--out",
                str(out),
                "--steps",
                "8",
                "--observation",
                str(prepared_observation),
            ]
        )
        == 0
    )
    report = json.loads((out / "attribution.json").read_text())
    assert set(report["pairs"]) == {"best", "middle", "worst"}
    errors = {name: abs(pair["predicted"] - pair["target"]) for name, pair in report["pairs"].items()}
    assert errors["best"] <= errors["middle"] <= errors["worst"]
    for pair in report["pairs"].values():
        assert -1 <= pair["rank_correlation_trained_vs_randomised"] <= 1 and -1 <= pair["predicted"] <= 1 + 1e-6
        assert pair["images"][0]["system"] != pair["images"][1]["system"]
        assert all(
            image["system"] in set(load_siamese(model_path, "cpu").split.test.tolist()) for image in pair["images"]
        )
    assert report["observation"]["best_match"]["similarity"] <= 1 + 1e-6
    assert all(
        (out / f"{name}.png").stat().st_size > 0
        for name in ("pair_best", "pair_middle", "pair_worst", "observation_best_match")
    )
    printed = capsys.readouterr().out
    assert "best   pair: predicted" in printed
    assert isinstance(report["randomisation_check_passes"], bool) and "randomisation check: " in printed


@pytest.mark.parametrize("command", [["attribute", "--out", "OUT"], ["embedding-map", "--out", "OUT/map.png"]])
def test_understanding_commands_name_a_missing_model_file(bank, tmp_path, capsys, command):
    missing = tmp_path / "no_such_siamese.pt"
    command = [part.replace("OUT", str(tmp_path / "out")) for part in command]
    assert main([*command, "--model", str(missing), "--bank", str(bank.path)]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith(f"protolib {command[0]}: error:")
        and str(missing) in err
        and "train-siamese" in err
        and "\n" not in err
    )
    assert not (tmp_path / "out").exists()


def test_a_uniform_map_holds_half_its_weight_within_0_8_of_the_half_width():
    assert half_weight_radius(np.ones((64, 64)), 15.625) == pytest.approx(500 * np.sqrt(2 / np.pi), rel=0.01)
    centred = np.zeros((64, 64))
    centred[31:33, 31:33] = 1
    assert half_weight_radius(centred, 15.625) < 20


def test_only_pairs_of_two_detected_images_of_different_systems_are_explained():
    """A pair with a noise-only image would spread its attribution over the field like a uniform map."""
    rng = np.random.default_rng(0)
    images = 1e-4 * rng.standard_normal((4, 16, 16))  # noise of rms 1e-4
    images[[0, 1, 3], 8, 8] += 1e-2  # a source in images 0, 1 and 3; image 2 is noise alone
    first, second = np.triu_indices(4, 1)
    held_out = {"images": images, "first": first, "second": second, "system": np.array([0, 0, 1, 2])}
    rows = detected_pairs(held_out, 1e-4)
    assert {(int(first[k]), int(second[k])) for k in rows} == {(0, 3), (1, 3)}  # (0, 1): one system; 2: noise
    assert len(detected_pairs(held_out, 0.0)) == 5  # a noiseless bank: every pair of different systems
