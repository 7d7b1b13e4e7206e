"""The spectral index an astronomer measures between bands, checked on the simulator's images.

Between two frequencies the flux ratio gives the spectral index ``alpha = ln(S2/S1) / ln(nu2/nu1)``.
Optically thin dust at temperature ``T`` has ``S ~ kappa_nu B_nu(T)``: ``alpha = beta + alpha_Planck(T)``,
which is ``2 + beta`` in the Rayleigh-Jeans limit and less for cold dust; optically thick dust has
``S ~ B_nu(T)``: ``alpha = alpha_Planck(T)``, whatever ``beta`` (Beckwith et al. 1990).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import DISK_ONLY
from scipy.stats import spearmanr

from protolib import physics
from protolib.bank import Bank, simulate_bank
from protolib.instrument import Instrument
from protolib.parameters import Prior
from protolib.simulator import SimulatorConfig, render

BANDS_GHZ = [100.0, 230.0, 345.0]
SPAN = math.log(BANDS_GHZ[2] / BANDS_GHZ[0])


def isothermal_disk(
    beta: float, disk_mass: float, temperature_k: float = 20.0, disk_radius: float = 50.0
) -> np.ndarray:
    """A disk (no envelope to speak of) at one temperature everywhere, in the three bands, ``(3, H, W)`` [Jy/pixel]."""
    config = SimulatorConfig(
        image_size=32, field_of_view_au=400.0, envelope_samples=24, disk_samples=24, frequencies_ghz=BANDS_GHZ
    )
    params = {
        **DISK_ONLY,
        "disk_mass": disk_mass,
        "disk_radius": disk_radius,
        "opacity_beta": beta,
        "temperature_index": 0.0,
        "temperature_1lsun": temperature_k,
        "luminosity": 1.0,
    }
    systems = {k: torch.tensor([float(v)], dtype=torch.float64) for k, v in params.items()}
    with torch.no_grad():
        images = render(systems, torch.tensor([30.0]), torch.tensor([0.0]), config, 140.0)
    return images[0].numpy().astype(np.float64)


def spectral_index(flux: np.ndarray) -> float:
    """The index between the lowest and the highest band of fluxes ``(3, ...)`` summed over the rest."""
    total = flux.reshape(3, -1).sum(axis=1)
    return math.log(total[2] / total[0]) / SPAN


def planck_index(temperature_k: float) -> float:
    """``ln(B_nu2(T) / B_nu1(T)) / ln(nu2 / nu1)``: 2 in the Rayleigh-Jeans limit, less for cold dust."""
    t = torch.tensor(temperature_k, dtype=torch.float64)
    return (
        math.log(physics.planck_intensity(t, BANDS_GHZ[2]).item() / physics.planck_intensity(t, BANDS_GHZ[0]).item())
        / SPAN
    )


@pytest.mark.parametrize("beta", [0.5, 1.0, 1.7])
def test_optically_thin_dust_has_the_index_two_plus_beta_corrected_for_rayleigh_jeans(beta):
    alpha = spectral_index(isothermal_disk(beta, disk_mass=1e-5))
    assert alpha == pytest.approx(beta + planck_index(20.0), abs=2e-3)  # the exact Planck ratio at 20 K
    assert 2.0 + beta - alpha == pytest.approx(2.0 - planck_index(20.0), abs=2e-3)  # 0.26 below Rayleigh-Jeans at 20 K
    warm = spectral_index(isothermal_disk(beta, disk_mass=1e-5, temperature_k=1000.0))
    assert warm == pytest.approx(2.0 + beta, abs=0.01)  # hot dust: the Rayleigh-Jeans nu^(2 + beta)


def test_optically_thick_dust_flattens_the_index_to_the_planck_functions_whatever_beta():
    thin = {beta: spectral_index(isothermal_disk(beta, disk_mass=1e-5)) for beta in (0.5, 1.7)}
    thick = {beta: isothermal_disk(beta, disk_mass=0.5, disk_radius=20.0) for beta in (0.5, 1.7)}
    for beta, images in thick.items():
        centre = images[:, 15:17, 15:17]  # tau >> 1 at every frequency
        assert spectral_index(centre) == pytest.approx(planck_index(20.0), abs=2e-3)
        # the whole disk, thick at its centre: between
        assert planck_index(20.0) < spectral_index(images) < thin[beta] - 0.25
    assert spectral_index(thick[0.5]) < spectral_index(thick[1.7])  # its thin outskirts still feel beta


def test_beta_drawn_per_system_shows_in_the_index_of_a_three_band_bank(tmp_path):
    """Systems of steeper opacity laws have steeper spectra, whatever else each system draws (temperature law,
    disk profile, optical depth): the band ratio carries beta, which one band cannot."""
    path = tmp_path / "bands.h5"
    config = SimulatorConfig(
        image_size=32, field_of_view_au=1000.0, envelope_samples=16, disk_samples=16, frequencies_ghz=BANDS_GHZ
    )
    simulate_bank(
        path,
        30,
        1,
        seed=3,
        config=config,
        instrument=Instrument(beam_major_arcsec=0.0, beam_minor_arcsec=0.0, noise_rms_jy_beam=0.0),
        prior=Prior(nuisance="drawn"),
        progress=False,
    )
    with Bank(path) as bank:
        images = bank.load_images()[:, 0]  # (systems, bands, H, W)
        beta = bank.parameters["opacity_beta"]
    alpha = np.log(images[:, 2].sum(axis=(1, 2)) / images[:, 0].sum(axis=(1, 2))) / SPAN
    assert np.ptp(beta) > 1.0
    assert spearmanr(beta, alpha).statistic > 0.8
    assert np.all(alpha < 2.0 + beta + 0.01)  # never steeper than optically thin Rayleigh-Jeans dust
