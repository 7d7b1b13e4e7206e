"""`protolib match` with a band-dropout network (``siamese.model.bands: all``): maps in several bands embedded jointly.

What a user relies on: two maps are embedded and searched in both bands at once (not in one band, as a one-band
network does), the report and the console say so, one map is embedded in its own band, and tiered matching,
which embeds one band, is refused in one line.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from test_bands_matching import setup, write_map  # noqa: F401  (the bank and maps of three bands)

from protolib.autoencoder import AutoencoderConfig, train_autoencoder
from protolib.bank import Bank
from protolib.cli import main
from protolib.matching import MatchingSettings, matching_target
from protolib.pipelines.match import run_match
from protolib.runtime import ProtolibInputError
from protolib.siamese import SiameseConfig, load_siamese, train_siamese
from protolib.splits import split_systems
from protolib.training import TrainingConfig

pytestmark = pytest.mark.filterwarnings("ignore:.*too few negative pixels", "ignore:.*records no observing setup")

QUICK = TrainingConfig(epochs=1, batch_systems=4, learning_rate=3e-3, patience=10, num_threads=1)


@pytest.fixture(scope="module")
def band_network(setup) -> dict:  # noqa: F811
    """The autoencoder on the bank's 230 GHz band and a band-dropout network on its three bands (one epoch each)."""
    folder = setup["folder"]
    split = split_systems(40, (0.6, 0.2, 0.2), seed=0)
    with Bank(setup["bank"], 230) as b6:
        autoencoder = train_autoencoder(
            b6,
            folder / "ae.pt",
            split=split,
            model=AutoencoderConfig(channels=[4, 8], latent_size=8),
            training=QUICK,
            progress=False,
        )
    with Bank(setup["bank"]) as bank:
        model = train_siamese(
            bank,
            autoencoder,
            folder / "bands.pt",
            model=SiameseConfig(embedding_size=6, hidden_size=16, bands="all"),
            training=QUICK,
            progress=False,
        )
    return {**setup, "model": model}


def matched(band_network, out, *targets, **options) -> dict:
    common = dict(distance_pc=140.0, matching=MatchingSettings(top_k=20), observing_draws=0, progress=False)
    target = list(targets) if len(targets) > 1 else targets[0]
    return run_match(band_network["model"], band_network["bank"], out, target=target, **{**common, **options})


def test_two_maps_are_searched_jointly_in_both_bands_and_the_report_says_so(band_network, tmp_path, capsys):
    maps = band_network["maps"]
    out = tmp_path / "joint"
    argv = ["match", "--model", str(band_network["model"]), "--bank", str(band_network["bank"])]
    argv += ["--target", str(maps[230.0]), "--target", str(maps[100.0]), "--distance", "140", "--top-k", "20"]
    assert main([*argv, "--observing-draws", "2", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "2 bands matched jointly, searched jointly in every band (100 + 230 GHz) by the band-dropout network" in said
    report = json.loads((out / "report.json").read_text())
    bands = report["bands"]
    assert bands["search"] == "jointly" and bands["searched_bands_ghz"] == [100.0, 230.0]
    assert all(m["searched"] for m in bands["maps"]) and report["settings"]["embedded_bands_ghz"] == [100.0, 230.0]
    assert {"gallery.png", "spectral_index.png", "observing_draws.csv"} <= set(report["files"])
    assert report["goodness_of_fit"] is not None and report["verdict"]["message"]
    # the B6 map alone, with the same network, is another query: its matches are not the joint ones
    alone = matched(band_network, tmp_path / "b6", maps[230.0])
    assert alone["settings"]["embedded_bands_ghz"] == [230.0] and "bands" not in alone
    joint_rows = (out / "matches.csv").read_text().splitlines()[1:]
    alone_rows = (tmp_path / "b6" / "matches.csv").read_text().splitlines()[1:]
    assert joint_rows != alone_rows


def test_the_joint_query_is_the_networks_embedding_of_both_maps_not_of_one(band_network):
    model = load_siamese(band_network["model"], "cpu")
    with Bank(band_network["bank"]) as bank:
        prepared = {}
        for frequency in (100.0, 230.0):
            with bank.band(frequency) as band:
                prepared[frequency] = matching_target(band_network["maps"][frequency], band, 140.0).image
    both = np.stack([prepared[100.0], prepared[230.0]])[None]
    joint = model.embed_bands(both, [100.0, 230.0])
    b6 = model.embed_bands(both[:, 1:], [230.0])
    assert joint.shape == b6.shape == (1, 6) and not np.allclose(joint, b6, atol=1e-3)


def test_one_map_is_embedded_in_its_own_band_by_a_band_network(band_network, tmp_path):
    report = matched(band_network, tmp_path / "b3", band_network["maps"][100.0])
    assert report["settings"]["embedded_bands_ghz"] == [100.0] and report["bank"]["band_ghz"] == 100.0
    assert "bands" not in report and report["n_matches"] == 20


def test_tiered_matching_is_refused_for_a_band_network_in_one_line(band_network, tmp_path):
    maps = band_network["maps"]
    with pytest.raises(ProtolibInputError) as refused:
        matched(band_network, tmp_path / "tiered", maps[230.0], maps[100.0], matching=MatchingSettings(search="tiered"))
    assert "\n" not in str(refused.value)
    assert re.search(r"band-dropout network .* tiered matching .* matching.search: exhaustive", str(refused.value))


def test_bank_for_trains_a_band_network_when_asked_and_match_embeds_the_maps_jointly(setup, tmp_path, capsys):  # noqa: F811
    maps = [setup["maps"][230.0], setup["maps"][100.0]]
    out = tmp_path / "my-source"
    small = ["--config", "tiny", "--set", "bank.n_systems=10", "--set", "siamese.model.bands=all", "--quiet"]
    small += ["--set", "autoencoder.training.epochs=1", "--set", "siamese.training.epochs=1"]
    assert main(["bank-for", *map(str, maps), "--distance", "140", "--out", str(out), *small]) == 0
    assert load_siamese(out / "siamese.pt", "cpu").frequencies_ghz == [100.0, 230.0]
    capsys.readouterr()
    argv = ["match", "--model", str(out / "siamese.pt"), "--bank", str(out / "bank.h5"), "--distance", "140"]
    argv += ["--target", str(maps[0]), "--target", str(maps[1]), "--top-k", "5", "--observing-draws", "0"]
    assert main([*argv, "--out", str(tmp_path / "matched")]) == 0
    assert "searched jointly in every band (100 + 230 GHz)" in capsys.readouterr().out


def test_a_bank_system_is_matched_in_the_reference_band_by_a_band_network(band_network, tmp_path):
    common = dict(matching=MatchingSettings(top_k=10), progress=False)
    report = run_match(band_network["model"], band_network["bank"], tmp_path / "system", target_system=3, **common)
    assert report["bank"]["band_ghz"] == 230.0 and report["n_matches"] == 10
    assert "embedded_bands_ghz" not in report["settings"]
