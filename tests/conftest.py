"""Shared fixtures: a renderer for one hand-chosen system, and tiny banks."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

from protolib.bank import Bank, simulate_bank
from protolib.simulator import SimulatorConfig, render

torch.set_num_threads(2)

# no envelope to speak of
DISK_ONLY = dict(
    stellar_mass=0.5,
    accretion_rate=1e-10,
    disk_radius=100.0,
    disk_mass=0.01,
    luminosity=1.0,
    disk_scale_height=5.0,
    cavity_angle=20.0,
)


def render_one(
    inclination: float, position_angle: float, config: SimulatorConfig, distance_pc: float = 140.0, **overrides
) -> np.ndarray:
    """Render one system (``DISK_ONLY`` with ``overrides``) as a numpy image in Jy/pixel."""
    params = {**DISK_ONLY, **overrides}
    systems = {k: torch.tensor([float(v)], dtype=torch.float64) for k, v in params.items()}
    image = render(
        systems, torch.tensor([float(inclination)]), torch.tensor([float(position_angle)]), config, distance_pc
    )
    return image[0].numpy().astype(np.float64)


def image_moments(image: np.ndarray, pixel_size_au: float = 1.0):
    """Axis ratio and position angle (deg east of north, in [0, 180)) of an image's second moments.

    Rows run north and columns west, so east = -column offset.
    """
    n_rows, n_cols = image.shape
    north = (np.arange(n_rows) - (n_rows - 1) / 2)[:, None] * pixel_size_au
    east = -(np.arange(n_cols) - (n_cols - 1) / 2)[None, :] * pixel_size_au
    w = image / image.sum()
    mn, me = (w * north).sum(), (w * east).sum()
    cnn = (w * (north - mn) ** 2).sum()
    cee = (w * (east - me) ** 2).sum()
    cne = (w * (north - mn) * (east - me)).sum()
    values, vectors = np.linalg.eigh(np.array([[cee, cne], [cne, cnn]]))
    major = vectors[:, 1]  # (east, north) of the largest eigenvalue
    pa = np.degrees(np.arctan2(major[0], major[1])) % 180.0
    return float(np.sqrt(values[0] / values[1])), float(pa)


@pytest.fixture
def fine_config() -> SimulatorConfig:
    return SimulatorConfig(image_size=64, field_of_view_au=600.0, envelope_samples=32, disk_samples=32)


def open_small_bank(tmp_path_factory, n_systems: int, seed: int):
    """A 16x16-pixel bank of ``n_systems`` x 2 projections for learning tests (seconds to make), opened."""
    path = tmp_path_factory.mktemp("bank") / "bank.h5"
    simulate_bank(
        path,
        n_systems,
        2,
        seed=seed,
        config=SimulatorConfig(image_size=16, envelope_samples=8, disk_samples=8),
        progress=False,
    )
    return Bank(path)
