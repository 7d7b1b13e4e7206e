"""The band-dropout Siamese network on a tiny three-band bank: any subset of bands embeds, one band as before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from protolib.autoencoder import AutoencoderConfig, train_autoencoder
from protolib.band_siamese import BandDropout, augment_bands
from protolib.bank import Bank, simulate_bank
from protolib.images import AugmentationConfig
from protolib.instrument import Beam, Instrument
from protolib.parameters import Prior
from protolib.runtime import ProtolibInputError
from protolib.siamese import SiameseConfig, load_siamese, train_siamese
from protolib.simulator import SimulatorConfig
from protolib.splits import split_systems
from protolib.training import TrainingConfig

OLD_CHECKPOINT = Path(__file__).parent / "data" / "siamese_before_bands.pt"
"""A Siamese network written by protolib before band dropout (commit 139e936) on a bank of 8 systems x 2 projections
of 16 px (simulate_bank(seed=3, config=SimulatorConfig(image_size=16, envelope_samples=8, disk_samples=8))), with
its optimiser state removed to keep it small; ``OLD_EMBEDDING`` is what it gave for that bank's image [0, 0]."""

SAMPLING = dict(image_size=16, envelope_samples=8, disk_samples=8)
BANDS = [100.0, 230.0, 345.0]
INSTRUMENT = Instrument(
    bands=[
        {"beam_major_arcsec": 0.6, "beam_minor_arcsec": 0.5, "noise_rms_jy_beam": 3e-5},
        {},
        {"beam_major_arcsec": 0.2, "beam_minor_arcsec": 0.2, "noise_rms_jy_beam": 3e-4},
    ]
)
SMALL = AutoencoderConfig(channels=[4, 8], latent_size=8)
DROPOUT = SiameseConfig(embedding_size=6, hidden_size=16, bands="all")


def quick(**changes) -> TrainingConfig:
    return TrainingConfig(
        **{"epochs": 2, "batch_systems": 3, "learning_rate": 3e-3, "patience": 10, "num_threads": 1, **changes}
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A three-band bank of 10 systems, the autoencoder on its 230 GHz band and a band-dropout network on all bands."""
    folder = tmp_path_factory.mktemp("band_siamese")
    path = folder / "three.h5"
    simulate_bank(
        path,
        10,
        2,
        seed=4,
        config=SimulatorConfig(**SAMPLING, frequencies_ghz=BANDS),
        instrument=INSTRUMENT,
        prior=Prior(nuisance="drawn"),
        progress=False,
    )
    split = split_systems(10, (0.6, 0.2, 0.2), seed=0)
    with Bank(path, 230) as b6:
        autoencoder = train_autoencoder(
            b6, folder / "ae.pt", split=split, model=SMALL, training=quick(), progress=False
        )
    with Bank(path) as bank:
        siamese = train_siamese(
            bank, autoencoder, folder / "siamese.pt", model=DROPOUT, training=quick(), progress=False
        )
    return {"bank": path, "autoencoder": autoencoder, "siamese": siamese, "split": split, "folder": folder}


def test_a_dropout_network_embeds_every_subset_of_bands_as_unit_vectors(trained):
    model = load_siamese(trained["siamese"], "cpu")
    assert model.frequencies_ghz == BANDS and model.checkpoint["config"]["model"]["bands"] == "all"
    with Bank(trained["bank"]) as bank:
        images = bank.load_images(trained["split"].test)  # (n, P, 3, 16, 16)
    images = images.reshape(-1, 3, 16, 16)
    everything = model.embed_images(images)
    b6 = model.embed_images(images[:, 1])
    assert everything.shape == b6.shape == (len(images), 6)
    for subset in ([1], [0, 1], [1, 2], [0, 2], [2], [0, 1, 2]):
        vectors = model.embed_bands(images[:, subset], [BANDS[i] for i in subset], batch_size=3)
        assert vectors.shape == (len(images), 6) and vectors.dtype == np.float32
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(model.embed_bands(images[:, [1]], [231.0]), b6, atol=1e-6)
    np.testing.assert_allclose(model.embed_bands(images, BANDS), everything, atol=1e-6)
    # the order the bands are given in does not matter; a missing band is not a blank one
    np.testing.assert_allclose(
        model.embed_bands(images[:, [2, 0]], [345, 100]), model.embed_bands(images[:, [0, 2]], [100, 345]), atol=1e-6
    )
    blank = images.copy()
    blank[:, 0] = 0
    assert not np.allclose(model.embed_bands(blank, BANDS), model.embed_bands(images[:, 1:], BANDS[1:]), atol=1e-4)


def test_bands_the_network_lacks_or_gives_twice_are_refused_in_one_line(trained):
    model = load_siamese(trained["siamese"], "cpu")
    images = np.zeros((2, 2, 16, 16), dtype=np.float32)
    with pytest.raises(ProtolibInputError, match="no band of the network"):
        model.embed_bands(images, [230, 44])
    with pytest.raises(ProtolibInputError, match="Two images were given for the 230 GHz band"):
        model.embed_bands(images, [230, 232])
    with pytest.raises(ProtolibInputError, match="Expected images of shape"):
        model.embed_bands(images, [230])


def test_a_one_band_network_embeds_band_images_through_its_own_band(trained, tmp_path):
    with Bank(trained["bank"], 230) as b6:
        path = train_siamese(
            b6,
            trained["autoencoder"],
            tmp_path / "siamese.pt",
            model=SiameseConfig(embedding_size=6, hidden_size=16),
            training=quick(epochs=1),
            progress=False,
        )
        one = b6.load_images([0, 1]).reshape(-1, 16, 16)
    model = load_siamese(path, "cpu")
    assert "bands" not in model.checkpoint and "bands" not in model.checkpoint["config"]["model"]
    with Bank(trained["bank"]) as bank:
        three = bank.load_images([0, 1]).reshape(-1, 3, 16, 16)
    np.testing.assert_array_equal(model.embed_bands(three, BANDS), model.embed_images(one))
    np.testing.assert_array_equal(model.embed_bands(three[:, [1, 2]], [230, 345]), model.embed_images(one))
    with pytest.raises(ProtolibInputError, match="no band of the images given"):
        model.embed_bands(three[:, [0, 2]], [100, 345])


def test_band_dropout_training_is_seeded(trained, tmp_path):
    with Bank(trained["bank"]) as bank:
        again = train_siamese(
            bank, trained["autoencoder"], tmp_path / "again.pt", model=DROPOUT, training=quick(), progress=False
        )
    first, second = load_siamese(trained["siamese"], "cpu"), load_siamese(again, "cpu")
    for name, value in first.network.state_dict().items():
        torch.testing.assert_close(value, second.network.state_dict()[name], rtol=0, atol=0)
    assert first.checkpoint["bands"] == second.checkpoint["bands"]


def test_before_training_the_reference_band_alone_is_embedded_as_by_the_pretrained_encoder(trained, tmp_path):
    """The widened encoder starts from the one-band encoder: the reference band's weights, zeros elsewhere."""
    with Bank(trained["bank"]) as bank:
        untrained = train_siamese(
            bank,
            trained["autoencoder"],
            tmp_path / "untrained.pt",
            model=DROPOUT,
            training=quick(epochs=1, learning_rate=0.0),
            progress=False,
        )
        images = bank.load_images([0]).reshape(-1, 3, 16, 16)
    model = load_siamese(untrained, "cpu")
    from protolib.autoencoder import load_autoencoder

    pretrained = load_autoencoder(trained["autoencoder"], "cpu")
    with torch.no_grad():
        band = model.network.encoder(
            *model.preprocessing(torch.as_tensor(images), torch.tensor([[False, True, False]] * 2))
        )
        one = pretrained.network.encoder(*pretrained.preprocessing(torch.as_tensor(images[:, 1])))
    torch.testing.assert_close(band, one, rtol=1e-5, atol=1e-5)


def test_a_dropout_network_needs_a_bank_of_several_bands(trained, tmp_path):
    with Bank(trained["bank"], 230) as b6, pytest.raises(ProtolibInputError, match="was opened as one band"):
        train_siamese(b6, trained["autoencoder"], tmp_path / "s.pt", model=DROPOUT, training=quick(), progress=False)
    with pytest.raises(ProtolibInputError, match="bands must be 'reference' or 'all'"):
        SiameseConfig(bands="some")
    assert SiameseConfig(bands="reference").to_dict() == SiameseConfig().to_dict()


def test_band_dropout_keeps_at_least_one_band_and_the_reference_alone_at_its_share():
    dropout = BandDropout(3, 1, keep=0.5, reference_alone=0.25)
    present = dropout.draw(20000, torch.Generator().manual_seed(0)).numpy()
    assert present.any(1).all()
    alone = (present.sum(1) == 1) & present[:, 1]
    # the share shown alone, plus the subsets that kept the reference band only by chance (0.75 x 1/8)
    assert abs(alone.mean() - (0.25 + 0.75 * 0.125 + 0.75 * 0.125 / 3)) < 0.02
    np.testing.assert_array_equal(dropout.draw(7, None), dropout.draw(7, None))


def test_bands_are_turned_alike_and_noised_apart():
    images = torch.zeros(2, 3, 16, 16)
    images[:, :, 3, 5] = 1.0
    beams = [Beam(0.6, 0.5, 0.0), Beam(0.25, 0.25, 0.0), Beam(0.2, 0.2, 0.0)]
    turned = augment_bands(
        images,
        AugmentationConfig(rotate=False, beam_jitter=0.0, noise_jitter=0.0),
        torch.Generator().manual_seed(1),
        beams=beams,
        pixel_arcsec=0.05,
        noise_rms=[0.0] * 3,
    )
    assert all(torch.equal(turned[:, 0], turned[:, b]) for b in (1, 2))
    noised = augment_bands(
        torch.zeros(2, 3, 16, 16),
        AugmentationConfig(rotate=False, flip=False, beam_jitter=0.0, noise_jitter=1.0),
        torch.Generator().manual_seed(1),
        beams=beams,
        pixel_arcsec=0.05,
        noise_rms=[1.0, 1.0, 1.0],
    )
    assert not torch.allclose(noised[:, 1], noised[:, 2])


def test_a_siamese_checkpoint_written_before_bands_loads_and_embeds_as_it_did():
    data = torch.load(OLD_CHECKPOINT, map_location="cpu", weights_only=True)
    model = load_siamese(OLD_CHECKPOINT, "cpu")
    assert model.frequencies_ghz == [230.0]
    np.testing.assert_allclose(model.embed_images(data["test_image"].numpy()), data["test_embedding"], atol=1e-6)


def test_the_bank_embedded_in_a_subset_of_bands_is_cached_per_subset(trained, tmp_path):
    from protolib.matching.band_embeddings import band_bank_embeddings

    model_path = tmp_path / "siamese.pt"
    model_path.write_bytes(Path(trained["siamese"]).read_bytes())
    model = load_siamese(model_path, "cpu")
    with Bank(trained["bank"]) as bank:
        images = bank.load_images([2]).reshape(-1, 3, 16, 16)

        def embedded(bands, transforms=None, key="as held"):
            return band_bank_embeddings(
                model, bank, model_path, bands_ghz=bands, key={"transform": key}, transforms=transforms, progress=False
            )

        b6, b3b6 = embedded([230]), embedded([100, 230])
        assert b6.path != b3b6.path and b6.vectors.shape == b3b6.vectors.shape == (20, 6)
        np.testing.assert_allclose(b6.vectors[4:6], model.embed_bands(images[:, [1]], [230]), atol=1e-6)
        np.testing.assert_allclose(b3b6.vectors[4:6], model.embed_bands(images[:, :2], [100, 230]), atol=1e-6)
        np.testing.assert_array_equal(embedded([230, 100]).vectors, b3b6.vectors)  # read from its cache
        doubled = embedded([100, 230], [lambda x: 2 * x, None], key="B3 doubled")
        np.testing.assert_allclose(
            doubled.vectors[4:6], model.embed_bands(images[:, :2] * [[[[2]], [[1]]]], [100, 230]), atol=1e-5
        )


def test_the_network_sees_each_band_s_log_flux_and_the_spectral_index_of_every_pair_present():
    from protolib.band_siamese import BandPreprocessing, n_band_inputs
    from protolib.images import ImagePreprocessing

    prep = BandPreprocessing([ImagePreprocessing(stretch="asinh") for _ in BANDS], BANDS, 1)
    images = torch.ones(2, 3, 8, 8) * torch.tensor([1.0, (230 / 100) ** 3, (345 / 100) ** 3])[None, :, None, None]
    np.testing.assert_allclose(prep.spectral_indices(images).numpy(), 3.0, rtol=1e-5)  # F ~ nu^3 for every pair
    pixels, numbers = prep(images, torch.tensor([[True, True, True], [False, True, True]]))
    assert pixels.shape == (2, 6, 8, 8) and numbers.shape == (2, n_band_inputs(3)) == (2, 9)
    np.testing.assert_allclose(numbers[0, 3:6].numpy(), 3.0, rtol=1e-5)  # centre 0, spread 1: the index itself
    np.testing.assert_allclose(numbers[1, 3:6].numpy(), [0.0, 0.0, 3.0], rtol=1e-5)  # pairs with 100 GHz absent
    assert numbers[1, 0] == 0 and pixels[1, 0].abs().sum() == 0 and pixels[1, 3].sum() == 0 and pixels[1, 4].all()
    assert BandPreprocessing.from_dict(prep.to_dict()) == prep
