"""Small, fast stand-ins for the matching tests: a synthetic bank file and a fixed embedding function."""

from __future__ import annotations

import types
from pathlib import Path

import h5py
import numpy as np
import torch

from protolib.bank import write_bank_attributes, write_bank_tables
from protolib.instrument import Instrument
from protolib.parameters import Prior, sample_viewing


def write_bank(path: Path, n_systems: int = 30, n_projections: int = 4, size: int = 16, seed: int = 0) -> Path:
    """A valid protolib bank of noisy Gaussian blobs (each system's projections alike), written fast."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] - (size - 1) / 2
    centre = rng.uniform(-2, 2, (n_systems, 1, 2, 1, 1))
    width = rng.uniform(1.5, 4.0, (n_systems, 1, 1, 1)) * rng.uniform(0.7, 1.0, (n_systems, n_projections, 1, 1))
    amplitude = rng.uniform(0.5, 2.0, (n_systems, 1, 1, 1))
    r2 = (x - centre[:, :, 0]) ** 2 + (y - centre[:, :, 1]) ** 2
    images = amplitude * np.exp(-0.5 * r2 / width**2) + 0.05 * rng.normal(size=(n_systems, n_projections, size, size))
    parameters = Prior().sample(n_systems, rng)
    parameters["envelope_mass"] = 10 ** rng.uniform(-1, 0.5, n_systems)
    viewing = sample_viewing(n_systems, n_projections, rng)
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=images.astype("f4")).attrs["unit"] = "Jy/beam"
        write_bank_tables(f, viewing, parameters)
        write_bank_attributes(
            f, seed=seed, config=None, instrument=Instrument(), prior=None, source="test", pixel_size_au=10.0
        )
    return path


class ProjectionEmbedder:
    """Images (N, H, W) -> L2-normalised random projections (N, D); counts the images it embeds."""

    def __init__(self, size: int = 16, dimension: int = 24, seed: int = 0):
        self.matrix = np.random.default_rng(seed).normal(size=(size * size, dimension)).astype(np.float32)
        self.calls = 0
        self.images_embedded = 0

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.images_embedded += len(images)
        vectors = np.asarray(images, dtype=np.float32).reshape(len(images), -1) @ self.matrix
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def fake_siamese_module(image_size: int = 16, dimension: int = 24):
    """A stand-in for ``protolib.siamese`` honouring its contract (load_siamese -> model with embed_images).

    Every other name is the real module's, so modules first imported while the stand-in is installed
    (``protolib.config``, which imports the Siamese settings) still find what they import.
    """
    import protolib.siamese as real

    embedder = ProjectionEmbedder(image_size, dimension)

    class FakeSiamese:
        def __init__(self, path):
            data = torch.load(path, weights_only=False)
            self.checkpoint = data
            self.embedder = ProjectionEmbedder(data["image_size"], dimension)

        def embed_images(self, images, batch_size=256, progress=False):
            return self.embedder(images)

        def similarity(self, images_a, images_b):
            return np.sum(self.embedder(images_a) * self.embedder(images_b), axis=1)

    module = types.ModuleType("protolib.siamese")
    module.__dict__.update({name: value for name, value in vars(real).items() if not name.startswith("__")})
    module.load_siamese = FakeSiamese
    module.embedder = embedder
    return module


def write_fake_model(path: Path, image_size: int = 16) -> Path:
    torch.save(
        {
            "image_size": image_size,
            "config": {},
            "bank": {},
            "split": {},
            "parameter_names": [],
            "target": {"parameters": ["stellar_mass", "disk_radius", "envelope_mass"]},
        },
        path,
    )
    return path
