"""Matching: exact and FAISS search agree, duplicates are found, own systems are excluded, caches are reused."""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest
from match_helpers import ProjectionEmbedder, fake_siamese_module, write_bank, write_fake_model

from protolib import matching
from protolib.bank import Bank
from protolib.cli import main
from protolib.matching import EmbeddingIndex, Matcher, check_out_of_distribution, faiss_available, pairwise_matches
from protolib.matching import embeddings as matching_embeddings
from protolib.runtime import ProtolibInputError

needs_faiss = pytest.mark.skipif(not faiss_available(), reason="faiss-cpu is not installed")


def unit_vectors(n, d, seed=0):
    v = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture
def bank(tmp_path):
    with Bank(write_bank(tmp_path / "bank.h5")) as b:
        yield b


@pytest.fixture
def matcher(bank):
    return Matcher.from_embed_function(ProjectionEmbedder(), bank, progress=False)


@needs_faiss
def test_exact_and_faiss_return_the_same_top_k():
    vectors = unit_vectors(5000, 32)
    system, projection = np.repeat(np.arange(1250), 4), np.tile(np.arange(4), 1250)
    queries = unit_vectors(6, 32, seed=1)
    exact = EmbeddingIndex(vectors, system, projection, backend="exact", chunk_rows=700)
    flat = EmbeddingIndex(vectors, system, projection, backend="faiss")
    excluded = [None, 3, None, 100, 7, None]
    for e, f in zip(
        exact.search(queries, top_k=50, exclude_systems=excluded),
        flat.search(queries, top_k=50, exclude_systems=excluded),
    ):
        assert np.array_equal(e.system * 4 + e.projection, f.system * 4 + f.projection)
        np.testing.assert_allclose(e.similarity, f.similarity, atol=1e-5)
    brute = vectors @ queries[0]
    np.testing.assert_allclose(exact.search(queries[:1], top_k=50)[0].similarity, np.sort(brute)[::-1][:50], atol=1e-5)


@needs_faiss
def test_approximate_faiss_index_finds_most_true_neighbours():
    vectors = unit_vectors(4000, 16)
    system, projection = np.arange(4000), np.zeros(4000, int)
    queries = unit_vectors(20, 16, seed=2)
    truth = EmbeddingIndex(vectors, system, projection, backend="exact").search(queries, top_k=10)
    hnsw = EmbeddingIndex(vectors, system, projection, backend="faiss", faiss_factory="HNSW32").search(
        queries, top_k=10
    )
    recall = np.mean([len(set(t.system) & set(h.system)) / 10 for t, h in zip(truth, hnsw)])
    assert recall >= 0.9


def test_planted_duplicate_is_found_first(bank, matcher):
    target = bank.load_images([7])[0, 2]
    matches = matcher.match(target, top_k=10)
    assert (matches.system[0], matches.projection[0]) == (7, 2)
    assert matches.similarity[0] == pytest.approx(1.0, abs=1e-5)
    assert np.all(np.diff(matches.similarity) <= 0)


def test_bank_target_never_matches_its_own_system(matcher):
    matches = matcher.match_system(7, projection=2, top_k=60)
    assert len(matches) == 60 and 7 not in matches.system
    excluded_by_hand = matcher.match(matcher.bank.load_images([7])[0, 2], top_k=60, exclude_system=7)
    assert np.array_equal(matches.system, excluded_by_hand.system)


@needs_faiss
def test_faiss_backend_also_excludes_own_system(bank):
    matcher = Matcher.from_embed_function(ProjectionEmbedder(), bank, progress=False, backend="faiss")
    matches = matcher.match_system(3, top_k=20)
    assert 3 not in matches.system and len(matches) == 20


def test_threshold_returns_every_match_above_it_and_only_those(matcher):
    vectors = matcher.embeddings.vectors
    query = vectors[5]
    expected = np.sum((vectors @ query >= 0.5) & (matcher.embeddings.system != 1))
    matches = matcher.match_system(1, projection=1, top_k=None, threshold=0.5)
    assert len(matches) == expected and np.all(matches.similarity >= 0.5)
    capped = matcher.match_system(1, projection=1, top_k=3, threshold=0.5)
    assert len(capped) == min(3, expected)


def test_bank_embeddings_are_cached_and_reused(bank, tmp_path):
    cache = tmp_path / "model.embeddings.npz"
    first_embedder = ProjectionEmbedder()
    first = Matcher.from_embed_function(first_embedder, bank, cache_path=cache, key={"model": "a"}, progress=False)
    assert first_embedder.images_embedded == 30 * 4 and cache.exists()
    second_embedder = ProjectionEmbedder()
    second = Matcher.from_embed_function(second_embedder, bank, cache_path=cache, key={"model": "a"}, progress=False)
    assert second_embedder.images_embedded == 0
    target = bank.load_images([4])[0, 0]
    assert np.array_equal(first.match(target).system, second.match(target).system)
    assert second_embedder.images_embedded == 1
    third_embedder = ProjectionEmbedder()
    Matcher.from_embed_function(third_embedder, bank, cache_path=cache, key={"model": "b"}, progress=False)
    assert third_embedder.images_embedded == 30 * 4
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_model_cache_lives_beside_the_model(bank, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "protolib.siamese", fake_siamese_module())
    model = write_fake_model(tmp_path / "siamese.pt")
    Matcher.from_model(model, bank, progress=False)
    caches = list(tmp_path.glob("siamese.embeddings-*.npz"))
    assert len(caches) == 1
    spy = []
    monkeypatch.setattr(matching_embeddings, "embed_bank", lambda *a, **k: spy.append(1))
    again = Matcher.from_model(model, bank, progress=False)
    assert spy == [] and len(again.match_system(0, top_k=5)) == 5


def test_caches_beside_a_model_stop_at_the_most_recent_few(bank, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "protolib.siamese", fake_siamese_module())
    model = write_fake_model(tmp_path / "siamese.pt")
    for noise in range(matching.MAX_CACHES + 3):  # one cache per observation transform
        Matcher.from_model(model, bank, transform=lambda images: images, transform_key={"noise": noise}, progress=False)
    caches = list(tmp_path.glob("siamese.embeddings-*.npz"))
    assert len(caches) == matching.MAX_CACHES
    assert len(list(tmp_path.glob("siamese.embeddings-*.npy"))) == matching.MAX_CACHES
    newest = Matcher.from_model(
        model, bank, transform=lambda images: images, transform_key={"noise": matching.MAX_CACHES + 2}, progress=False
    )
    assert newest.embeddings.path in caches


def test_out_of_distribution_target_is_flagged_with_numbers(bank, matcher):
    typical = matcher.check(matcher.match_system(2))
    assert not typical.is_out_of_distribution
    odd = np.zeros((16, 16), np.float32)
    odd[::2, ::2], odd[1::2, 1::2] = 5.0, -5.0
    verdict = matcher.check(matcher.match(odd))
    assert verdict.is_out_of_distribution
    assert "out of distribution" in verdict.message and f"{verdict.best_similarity:.3f}" in verdict.message
    assert f"{verdict.reference_percentiles[50]:.3f}" in verdict.message


def test_out_of_distribution_verdict_from_known_numbers():
    reference = np.linspace(0.80, 1.0, 101)
    low = check_out_of_distribution(matching.Matches(np.array([0.7]), np.array([0]), np.array([0])), reference)
    high = check_out_of_distribution(matching.Matches(np.array([0.95]), np.array([0]), np.array([0])), reference)
    assert low.is_out_of_distribution and low.fraction_of_bank_below == 0.0
    assert not high.is_out_of_distribution and high.fraction_of_bank_below == pytest.approx(0.75, abs=0.01)


def test_pairwise_reference_agrees_with_embedding_search(bank, matcher):
    embedder = ProjectionEmbedder()
    pairwise = pairwise_matches(
        lambda a, b: np.sum(embedder(a) * embedder(b), axis=1),
        bank.load_images([9])[0, 1],
        bank,
        top_k=15,
        exclude_system=9,
        batch_size=32,
    )
    fast = matcher.match_system(9, projection=1, top_k=15)
    assert np.array_equal(pairwise.system * 4 + pairwise.projection, fast.system * 4 + fast.projection)


def test_target_of_the_wrong_size_is_refused(matcher):
    with pytest.raises(ProtolibInputError, match="16x16 px"):
        matcher.match(np.zeros((32, 32)))
    with pytest.raises(ProtolibInputError, match="NaN"):
        matcher.match(np.full((16, 16), np.nan))
    with pytest.raises(ProtolibInputError, match="systems 0..29"):
        matcher.match_system(30)


def test_missing_faiss_gets_a_clear_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ProtolibInputError, match="pip install faiss-cpu"):
        EmbeddingIndex(unit_vectors(10, 4), np.arange(10), np.zeros(10), backend="faiss")


def test_model_trained_on_other_image_size_is_refused(bank, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "protolib.siamese", fake_siamese_module())
    model = write_fake_model(tmp_path / "siamese.pt", image_size=64)
    with pytest.raises(ProtolibInputError, match="trained on 64x64 px images but bank .* has 16x16"):
        Matcher.from_model(model, bank, progress=False)


def test_command_line_writes_every_output_for_a_bank_system(bank, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "protolib.siamese", fake_siamese_module())
    model = write_fake_model(tmp_path / "siamese.pt")
    out = tmp_path / "out"
    code = main(
        [
            "match",
            "--model",
            str(model),
            "--bank",
            str(bank.path),
            "--target-system",
            "5",
            "--top-k",
            "12",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "corner.png",
        "gallery.png",
        "matches.csv",
        "report.json",
        "summary.csv",
    ]
    rows = (out / "matches.csv").read_text().splitlines()
    assert (
        rows[0].startswith("rank,similarity,system,system_id,projection")
        and "stellar_mass" in rows[0]
        and len(rows) == 13
    )
    assert all(line.split(",")[2] != "5" for line in rows[1:])
    report = json.loads((out / "report.json").read_text())
    assert report["inputs"]["target"]["system"] == 5 and "is_out_of_distribution" in report["out_of_distribution"]
    assert "protolib" in report["versions"] and report["settings"]["top_k"] == 12
    assert report["settings"]["corner_parameters"] == ["stellar_mass", "disk_radius", "envelope_mass", "inclination"]
    assert "stellar_mass" in (out / "summary.csv").read_text()


def test_command_line_match_takes_its_settings_from_the_configuration(bank, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "protolib.siamese", fake_siamese_module())
    model = write_fake_model(tmp_path / "siamese.pt")
    config = tmp_path / "mine.yaml"
    config.write_text("name: mine\nmatching:\n  top_k: 7\n  weight_temperature: 0.05\n  limit_percentile: 50.0\n")
    common = ["match", "--model", str(model), "--bank", str(bank.path), "--target-system", "5", "--config", str(config)]

    def run(*extra):
        out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
        assert main([*common, *extra, "--out", str(out)]) == 0
        return json.loads((out / "report.json").read_text()), len((out / "matches.csv").read_text().splitlines()) - 1

    report, rows = run()
    assert rows == 7 and report["settings"]["top_k"] == 7 and report["settings"]["weight_temperature"] == 0.05
    assert report["out_of_distribution"]["limit_percentile"] == 50.0
    report, rows = run("--set", "matching.top_k=9", "--set", "matching.limit_percentile=2")
    assert rows == 9 and report["out_of_distribution"]["limit_percentile"] == 2.0
    report, rows = run("--set", "matching.top_k=9", "--top-k", "4")  # a named option wins over --set
    assert rows == 4


def test_command_line_refuses_an_unknown_configuration_key_in_one_line(bank, tmp_path, capsys):
    code = main(
        [
            "match",
            "--model",
            str(tmp_path / "m.pt"),
            "--bank",
            str(bank.path),
            "--target-system",
            "5",
            "--set",
            "matching.top_kk=3",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "top_kk" in err and "top_k" in err.replace("top_kk", "")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "{tmp}/nope.pt", "--bank", "{bank}", "--target-system", "1"], "nope.pt does not exist"),
        (["--model", "{model}", "--bank", "{tmp}/nobank.h5", "--target-system", "1"], "nobank.h5 does not exist"),
        (
            ["--model", "{model}", "--bank", "{bank}", "--target", "{tmp}/missing.fits", "--distance", "140"],
            "missing.fits",
        ),
        (["--model", "{model}", "--bank", "{bank}", "--target-system", "99"], "systems 0..29"),
        (
            ["--model", "{model}", "--bank", "{bank}", "--target", "{tmp}/garbage.fits", "--distance", "140"],
            "garbage.fits",
        ),
        (["--model", "{model}", "--bank", "{bank}", "--target", "{tmp}/garbage.fits"], "distance"),
        (["--model", "{model64}", "--bank", "{bank}", "--target-system", "1"], "trained on 64x64 px images"),
    ],
)
def test_command_line_bad_input_gets_one_clear_line(bank, tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.setitem(sys.modules, "protolib.siamese", fake_siamese_module())
    model = write_fake_model(tmp_path / "siamese.pt")
    model64 = write_fake_model(tmp_path / "siamese64.pt", image_size=64)
    (tmp_path / "garbage.fits").write_bytes(b"SIMPLE  = not really a FITS file")
    filled = [a.format(tmp=tmp_path, bank=bank.path, model=model, model64=model64) for a in args]
    assert main(["match", *filled, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("protolib match: error:") and message in err and "\n" not in err
    assert not (tmp_path / "out" / "report.json").exists()


def test_command_line_matches_a_synthetic_observation_fits(bank, tmp_path, monkeypatch, capsys):
    from protolib.instrument import Beam
    from protolib.observation import write_observation_fits

    monkeypatch.setitem(sys.modules, "protolib.siamese", fake_siamese_module())
    model = write_fake_model(tmp_path / "siamese.pt")
    system = {name: float(values[3]) for name, values in bank.parameters.items()}
    fits_path = write_observation_fits(
        tmp_path / "synthetic.fits",
        system,
        inclination_deg=60.0,
        position_angle_deg=30.0,
        distance_pc=150.0,
        pixel_arcsec=0.05,
        image_size=40,
        beam=Beam(0.35, 0.3, 20.0),
        noise_rms_jy_beam=1e-4,
        seed=1,
    )
    out = tmp_path / "out"
    assert (
        main(
            [
                "match",
                "--model",
                str(model),
                "--bank",
                str(bank.path),
                "--target",
                str(fits_path),
                "--distance",
                "150",
                "--top-k",
                "10",
                "--observing-draws",
                "4",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    preparation = report["inputs"]["target"]["preparation"]
    assert preparation["flux_scale"] == pytest.approx((150 / 140) ** 2)
    assert report["inputs"]["target"]["true_parameters_in_file"]
    summary = (out / "summary.csv").read_text().splitlines()
    stellar_mass = next(line for line in summary if line.startswith("stellar_mass,"))
    assert float(stellar_mass.split(",")[-1]) == pytest.approx(system["stellar_mass"], rel=1e-5)
    assert len(list(tmp_path.glob("siamese.embeddings-*.npz"))) == 1  # the observing draws' embeddings are not cached
    observing = report["observing_uncertainty"]  # the flux scale drawn (nominal); the file says the recoverable scale
    assert preparation["max_scale_source"] == "file" and observing["max_scale_range_arcsec"] is None
    assert observing["sources"] == ["flux_calibration"] and len(observing["draws"]) == 4
    assert observing["flux_calibration"] == 0.10 and "nominal" in observing["flux_calibration_source"]
    assert set(observing["parameters"]["stellar_mass"]["by_source"]) == {"flux_calibration"}
    assert len((out / "observing_draws.csv").read_text().splitlines()) == 1 + 4 * 10
    assert "(most from the flux calibration)" in capsys.readouterr().out  # in words, not the report's key

    exact = tmp_path / "exact"  # told the recoverable scale and no draws: the summaries are the nominal matches'
    assert (
        main(
            [
                "match",
                "--model",
                str(model),
                "--bank",
                str(bank.path),
                "--target",
                str(fits_path),
                "--distance",
                "150",
                "--top-k",
                "10",
                "--max-scale",
                "3",
                "--distance-error",
                "15",
                "--observing-draws",
                "0",
                "--out",
                str(exact),
            ]
        )
        == 0
    )
    report = json.loads((exact / "report.json").read_text())
    assert report["observing_uncertainty"] is None and not (exact / "observing_draws.csv").exists()

    # physics the bank does not hold: wider
    (tmp_path / "terms.json").write_text(json.dumps({"terms": {"stellar_mass": 2.0}}))
    wider = tmp_path / "wider"
    assert (
        main(
            [
                "match",
                "--model",
                str(model),
                "--bank",
                str(bank.path),
                "--target",
                str(fits_path),
                "--distance",
                "150",
                "--top-k",
                "10",
                "--max-scale",
                "3",
                "--observing-draws",
                "0",
                "--misspecification",
                str(tmp_path / "terms.json"),
                "--out",
                str(wider),
            ]
        )
        == 0
    )
    calibration = json.loads((wider / "report.json").read_text())["interval_calibration"]
    assert (
        calibration["stellar_mass"]["misspecification_term"] == 2.0
        and "misspecification_term" not in calibration["disk_mass"]
    )
    assert calibration["stellar_mass"]["widening"] == pytest.approx(
        2.0 * calibration["stellar_mass"]["calibration_widening"]
    )
    rows = {f: {r["parameter"]: r for r in csv.DictReader((f / "summary.csv").open())} for f in (exact, wider)}
    # in summary.csv
    assert float(rows[wider]["stellar_mass"]["widening"]) == 2.0 * float(rows[exact]["stellar_mass"]["widening"])
    # (stopped at the bank's range)
    assert float(rows[wider]["stellar_mass"]["p2_5"]) <= float(rows[exact]["stellar_mass"]["p2_5"])
    assert rows[wider]["disk_mass"]["p97_5"] == rows[exact]["disk_mass"]["p97_5"]
    (tmp_path / "bad.json").write_text(json.dumps({"terms": {"stellar_mass": 0.5}}))
    assert (
        main(
            [
                "match",
                "--model",
                str(model),
                "--bank",
                str(bank.path),
                "--target",
                str(fits_path),
                "--distance",
                "150",
                "--misspecification",
                str(tmp_path / "bad.json"),
                "--out",
                str(tmp_path / "bad"),
            ]
        )
        == 2
    )
    assert "bad.json: misspecification terms must be numbers from 1 to 10" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:.*too few negative pixels")
def test_observation_transform_is_reproducible_and_keys_its_own_cache(bank, tmp_path):
    from protolib.instrument import Beam
    from protolib.matching import matching_target
    from protolib.observation import write_observation_fits

    system = {name: float(values[3]) for name, values in bank.parameters.items()}
    fits_path = write_observation_fits(
        tmp_path / "synthetic.fits",
        system,
        inclination_deg=60.0,
        position_angle_deg=30.0,
        distance_pc=150.0,
        pixel_arcsec=0.05,
        image_size=40,
        beam=Beam(0.35, 0.3, 20.0),
        noise_rms_jy_beam=1e-4,
        seed=1,
    )
    first, second = (matching_target(fits_path, bank, 150.0) for _ in range(2))
    images = bank.load_images([0, 1]).reshape(-1, 16, 16)
    np.testing.assert_array_equal(first.transform(images), second.transform(images))
    assert first.transform_key == second.transform_key and first.image.shape == (16, 16)
    assert first.truths["stellar_mass"] == pytest.approx(system["stellar_mass"]) and first.truths["inclination"] == 60.0
    plain = Matcher.from_embed_function(
        ProjectionEmbedder(), bank, cache_path=tmp_path / "c.npz", key={"m": 1}, progress=False
    )
    seen = ProjectionEmbedder()
    like_obs = Matcher.from_embed_function(
        seen,
        bank,
        cache_path=tmp_path / "c.npz",
        key={"m": 1, "t": first.transform_key},
        transform=first.transform,
        progress=False,
    )
    assert seen.images_embedded == 120 and not np.allclose(plain.embeddings.vectors, like_obs.embeddings.vectors)


def test_the_distribution_takes_the_number_of_matches_whose_honest_intervals_are_narrowest(tmp_path):
    from protolib.matching import Matches
    from protolib.matching.calibration import choose_k_and_widening

    with Bank(write_bank(tmp_path / "big.h5", n_systems=120, n_projections=2)) as big:
        physical = list(big.physical_parameters)
        scaled = np.stack(
            [np.log10(big.parameters[n]) if n != "cavity_angle" else big.parameters[n] for n in physical], axis=1
        )
        scaled = (scaled - scaled.mean(0)) / scaled.std(0)
        rows = np.arange(0, 240, 5)  # 48 reference images

        def matches_by(order_key):
            found = []
            for row in rows:
                system = row // 2
                others = np.array([s for s in range(big.n_systems) if s != system])
                order = others[np.argsort(order_key(system, others), kind="stable")]
                found.append(Matches(np.linspace(1, 0, len(order)), order, np.zeros(len(order), dtype=int), system))
            return found

        # a perfect network
        near = matches_by(lambda system, others: np.linalg.norm(scaled[others] - scaled[system], axis=1))
        k, calibration, scores = choose_k_and_widening(big, rows, near, (10, 20, 50, 100))
        # its nearest matches say the most
        assert k == 10 and scores["10"] < scores["20"] < scores["50"] < scores["100"]
        assert all(c["coverage_95"] >= 0.95 - np.sqrt(0.95 * 0.05 / 48) for c in calibration.values())  # ... honestly
        # a useless one
        shuffled = matches_by(lambda system, others: np.random.default_rng(system).permutation(len(others)))
        _, _, flat = choose_k_and_widening(big, rows, shuffled, (10, 20, 50, 100))
        assert min(flat.values()) > 1.5 * scores["10"]  # no k makes a useless ranking as informative
