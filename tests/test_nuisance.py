"""The nuisance physics, drawn per system: each choice does what its physics says, and the prior draws it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import DISK_ONLY, render_one

from protolib import physics
from protolib.bank import Bank, draw_systems, simulate_bank
from protolib.config import load_config
from protolib.parameters import NUISANCE_PARAMETERS, PARAMETERS, Prior
from protolib.runtime import ProtolibInputError
from protolib.simulator import NUISANCE_FIELDS, SimulatorConfig, envelope_mass, render

THIN = dict(disk_mass=1e-5, accretion_rate=1e-8, luminosity=10.0)  # optically thin at every frequency used here
SMALL = SimulatorConfig(image_size=32, field_of_view_au=600.0, envelope_samples=24, disk_samples=24)


def _config(**changes) -> SimulatorConfig:
    return SimulatorConfig(**{**SMALL.to_dict(), **changes})


def _flux(frequency_ghz: float, **system) -> float:
    return render_one(40.0, 20.0, _config(frequency_ghz=frequency_ghz), **{**THIN, **system}).sum()


def test_every_nuisance_parameter_is_a_listed_parameter_with_a_simulator_field():
    assert set(NUISANCE_FIELDS) == set(NUISANCE_PARAMETERS)
    defaults = SimulatorConfig()
    for name, field in NUISANCE_FIELDS.items():
        assert hasattr(defaults, field) and PARAMETERS[name].unit and PARAMETERS[name].description
        low, high = getattr(Prior(), name)
        assert low <= getattr(defaults, field) <= high, f"the fixed {name} lies outside its prior range"


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0])
def test_optically_thin_flux_scales_as_nu_to_the_two_plus_beta(beta):
    """In the Rayleigh-Jeans limit (30-45 GHz: h nu / k = 1.4-2.2 K against T >= 10 K) F ~ nu^(2 + beta)."""
    slope = math.log(_flux(45.0, opacity_beta=beta) / _flux(30.0, opacity_beta=beta)) / math.log(45.0 / 30.0)
    assert slope == pytest.approx(2.0 + beta, abs=0.06)


def test_beta_changes_the_flux_away_from_the_reference_frequency_only():
    """With kappa normalised at 230 GHz, F(beta = 2) / F(beta = 1) = (nu / 230 GHz) in the thin limit, at any
    temperature."""
    for frequency in (100.0, 230.0, 345.0):
        ratio = _flux(frequency, opacity_beta=2.0) / _flux(frequency, opacity_beta=1.0)
        assert ratio == pytest.approx(frequency / 230.0, rel=2e-3)


def test_thin_flux_is_proportional_to_the_opacity_normalisation():
    assert _flux(230.0, opacity_230ghz=0.04) / _flux(230.0, opacity_230ghz=0.01) == pytest.approx(4.0, rel=2e-3)


def test_temperature_law_normalisation_and_index():
    r = torch.tensor([100.0, 200.0, 400.0])
    t = physics.dust_temperature(r, torch.tensor(1.0), temperature_1lsun_k=30.0, index=0.5)
    assert t.tolist() == pytest.approx([30.0, 30.0 / 2**0.5, 15.0], rel=1e-6)
    # Rendered: in the Rayleigh-Jeans limit a thin source's flux follows its temperature (floor never reached at L = 10
    # Lsun).
    assert _flux(30.0, temperature_1lsun=50.0) / _flux(30.0, temperature_1lsun=25.0) == pytest.approx(2.0, rel=0.03)
    contrast = {}
    for index in (0.33, 0.6):  # face-on: brightness ~ T Sigma; a steeper law is warmer inside 100 au and colder outside
        image = render_one(0.0, 0.0, _config(frequency_ghz=30.0), **{**THIN, "temperature_index": index})
        contrast[index] = image[16, 17] / image[16, 21]  # ~30 au over ~110 au from the star
    assert contrast[0.6] / contrast[0.33] == pytest.approx((110.0 / 30.0) ** 0.27, rel=0.1)


def test_a_colder_midplane_darkens_an_edge_on_disk_more():
    config = SimulatorConfig(image_size=96, field_of_view_au=300.0, envelope_samples=32, disk_samples=96)
    disk = dict(disk_mass=0.1, disk_radius=100.0, disk_scale_height=8.0, luminosity=10.0, accretion_rate=1e-10)
    depth = {}
    for ratio in (1.0, 0.4):
        # PA 0: the midplane along the central columns
        image = render_one(90.0, 0.0, config, midplane_temperature_ratio=ratio, **disk)
        profile = image[56:62].mean(0)[28:68]  # across the midplane, about 55 au north of the star
        depth[ratio] = profile[19:21].mean() / profile.max()
    assert depth[1.0] > 0.95  # vertically isothermal: hardly a lane (what the README said of every bank disk)
    assert depth[0.4] < 0.8 * depth[1.0]
    # The vertical structure changes the temperature near the midplane only.
    z = torch.tensor([0.0, 1.5, 3.0, 6.0])
    factor = physics.disk_temperature_factor(z, torch.tensor(1.0), 0.3)
    assert factor[0].item() == pytest.approx(0.3) and 0.3 < factor[1].item() < 1.0 and factor[2:].tolist() == [1.0, 1.0]


@pytest.mark.parametrize("exponent", [1.0, 1.5, 2.0])
def test_a_curved_cavity_wall_widens_with_height_as_its_exponent_says(exponent):
    """The wall R(z) of ``in_cavity`` grows as z^(1 / b); b = 1 is a cone of the given half-angle at every radius."""
    radii = torch.logspace(0, 4, 4001, dtype=torch.float64)
    walls = []
    for height in (100.0, 400.0, 1600.0):
        inside = physics.in_cavity(radii, torch.full_like(radii, height), 20.0, exponent, reference_radius_au=1000.0)
        walls.append(radii[inside].max().item())  # the widest cylindrical radius still in the cavity at this height
    assert walls[1] / walls[0] == pytest.approx(4.0 ** (1.0 / exponent), rel=0.01)
    assert walls[2] / walls[1] == pytest.approx(4.0 ** (1.0 / exponent), rel=0.01)
    at_reference = physics.in_cavity(
        torch.tensor([math.sin(math.radians(19.9)), math.sin(math.radians(20.1))]) * 1000.0,
        torch.tensor([math.cos(math.radians(19.9)), math.cos(math.radians(20.1))]) * 1000.0,
        20.0,
        exponent,
    )
    assert at_reference.tolist() == [True, False]  # through the half-angle at the reference radius, whatever the shape


def test_cavity_contrast_and_outer_radius_set_the_envelope_mass():
    base = dict(stellar_mass=0.5, accretion_rate=1e-5, disk_radius=1e-3, cavity_angle=30.0)
    systems = {k: torch.tensor([v, v], dtype=torch.float64) for k, v in base.items()}
    empty = envelope_mass(
        {**systems, "cavity_contrast": torch.tensor([1.0, 1e-4], dtype=torch.float64)}, SimulatorConfig()
    )
    cone_fraction = 1.0 - math.cos(math.radians(30.0))  # solid angle of both cones over 4 pi
    assert (empty[1] / empty[0]).item() == pytest.approx(1.0 - cone_fraction, rel=0.02)
    radii = {
        **systems,
        "cavity_contrast": torch.tensor([1.0, 1.0], dtype=torch.float64),
        "envelope_outer_radius": torch.tensor([2000.0, 8000.0], dtype=torch.float64),
    }
    sizes = envelope_mass(radii, SimulatorConfig(envelope_mass_radius_au=1e5))
    assert (sizes[1] / sizes[0]).item() == pytest.approx((8000.0**1.5 - 1.0) / (2000.0**1.5 - 1.0), rel=0.02)
    # By default the mass is counted within 5000 au, or the outer radius when smaller, as in an aperture.
    within = envelope_mass(radii, SimulatorConfig())
    assert (within[1] / within[0]).item() == pytest.approx((5000.0**1.5 - 1.0) / (2000.0**1.5 - 1.0), rel=0.02)


@pytest.mark.parametrize("gamma, taper", [(1.0, 1.0), (0.5, 1.5), (1.3, 0.7), (0.3, 2.5)])
def test_tapered_disk_holds_its_mass_for_any_index_and_taper(gamma, taper):
    radius = torch.logspace(-3, 4, 6000, dtype=torch.float64)
    sigma_c = physics.disk_surface_density_norm(
        torch.tensor(0.05, dtype=torch.float64), torch.tensor(50.0, dtype=torch.float64), gamma, taper
    )
    x = radius / 50.0
    sigma = sigma_c * x ** (-gamma) * torch.exp(-(x**taper))
    mass = torch.trapezoid(2 * math.pi * radius * physics.AU_CM * sigma, radius * physics.AU_CM) / physics.MSUN_G
    assert mass.item() == pytest.approx(0.05, rel=0.01)


def test_a_larger_taper_cuts_the_disk_edge_more_sharply():
    face_on = {
        taper: render_one(0.0, 0.0, _config(), **{**THIN, "disk_mass": 1e-4, "disk_taper": taper})
        for taper in (0.7, 2.5)
    }
    # beyond ~150 au = 1.5 R_disk
    outer = {taper: image[16, 16 + 8 :].sum() / image[16, 16:].sum() for taper, image in face_on.items()}
    assert outer[2.5] < 0.5 * outer[0.7]


def test_missing_nuisance_values_are_the_configurations():
    params = {k: torch.tensor([float(v)], dtype=torch.float64) for k, v in DISK_ONLY.items()}
    angles = torch.tensor([50.0]), torch.tensor([10.0])
    config = _config(opacity_beta=1.7, disk_gamma=0.6, midplane_temperature_ratio=0.5, cavity_wall_exponent=1.5)
    implicit = render(params, *angles, config, 140.0)
    explicit = render(
        {**params, **{k: torch.tensor([v], dtype=torch.float64) for k, v in config.nuisance_values().items()}},
        *angles,
        SMALL,
        140.0,
    )
    assert torch.equal(implicit, explicit)


def test_the_prior_draws_nuisances_in_their_ranges_without_touching_the_physical_draws():
    drawn = Prior().sample(2000, np.random.default_rng(3), np.random.default_rng(4))
    fixed = Prior(nuisance="fixed").sample(
        2000, np.random.default_rng(3), np.random.default_rng(4), SimulatorConfig().nuisance_values()
    )
    for name in NUISANCE_PARAMETERS:
        low, high = getattr(Prior(), name)
        assert (
            drawn[name].min() >= low
            and drawn[name].max() <= high
            and np.ptp(drawn[name]) > 0.8 * (high - low) * (0.1 if PARAMETERS[name].log_scale else 1.0)
        )
        assert np.all(fixed[name] == SimulatorConfig().nuisance_values()[name])
    for name in ("stellar_mass", "accretion_rate", "disk_radius", "disk_mass", "luminosity", "age"):
        assert np.array_equal(drawn[name], fixed[name])
    assert np.allclose(drawn["temperature"], drawn["temperature_1lsun"] * drawn["luminosity"] ** 0.2)
    assert drawn["disk_radius"].max() > 400.0  # Class I disks of several hundred au are in the prior
    with pytest.raises(ProtolibInputError, match="nuisance"):
        Prior(nuisance="sometimes")
    with pytest.raises(ProtolibInputError, match="opacity_230ghz"):
        Prior(opacity_230ghz=(0.0, 0.02))


def test_an_anchored_opacity_law_ties_kappa_230_to_beta_and_leaves_every_other_draw_alone():
    independent = Prior().sample(2000, np.random.default_rng(3), np.random.default_rng(4))
    anchored = Prior(opacity_law="anchored").sample(2000, np.random.default_rng(3), np.random.default_rng(4))
    for name in independent:
        if name != "opacity_230ghz":
            assert np.array_equal(independent[name], anchored[name]), name
    kappa_1000 = anchored["opacity_230ghz"] / (230.0 / 1000.0) ** anchored["opacity_beta"]
    assert kappa_1000.min() >= 0.07 and kappa_1000.max() <= 0.14  # Beckwith's 0.1 cm^2/g, within a factor 1.4
    # grown grains (low beta) hold more opacity at 1.3 mm: kappa_230 falls with beta, as it does not when independent
    assert np.corrcoef(anchored["opacity_beta"], np.log(anchored["opacity_230ghz"]))[0, 1] < -0.9
    assert abs(np.corrcoef(independent["opacity_beta"], np.log(independent["opacity_230ghz"]))[0, 1]) < 0.1
    # a stored prior at the default law is as it was before the law existed (old banks stay current)
    assert "opacity_law" not in Prior().to_dict() and Prior(opacity_law="anchored").to_dict()["opacity_law"]
    with pytest.raises(ProtolibInputError, match="opacity_law"):
        Prior(opacity_law="beckwith")
    with pytest.raises(ProtolibInputError, match="opacity_1000ghz"):
        Prior(opacity_1000ghz=(0.0, 0.1))


def test_banks_store_the_nuisance_physics_and_fixed_banks_hold_the_same_systems(tmp_path):
    config = SimulatorConfig(image_size=16, envelope_samples=8, disk_samples=8)
    paths = {}
    for mode in ("drawn", "fixed"):
        paths[mode] = simulate_bank(
            tmp_path / f"{mode}.h5", 6, 2, seed=5, config=config, prior=Prior(nuisance=mode), progress=False
        )
    with Bank(paths["drawn"]) as drawn, Bank(paths["fixed"]) as fixed:
        assert drawn.nuisance_parameters == NUISANCE_PARAMETERS == fixed.nuisance_parameters
        assert "opacity_beta" not in drawn.physical_parameters and "disk_radius" in drawn.physical_parameters
        assert (
            drawn.parameter_info["opacity_230ghz"].unit == "cm2/g" and drawn.parameter_info["opacity_230ghz"].log_scale
        )
        assert np.ptp(drawn.parameters["opacity_beta"]) > 0 and np.ptp(fixed.parameters["opacity_beta"]) == 0
        assert np.array_equal(drawn.parameters["disk_radius"], fixed.parameters["disk_radius"])
        assert np.array_equal(drawn.inclination, fixed.inclination)
        assert not np.allclose(drawn.images[()], fixed.images[()])
        # The clean models re-rendered from the stored parameters are the bank's (noise aside).
        assert drawn.render_clean(1).shape == (2, 16, 16)
    systems = draw_systems(6, 2, 5, Prior(), config)
    assert np.array_equal(systems["opacity_beta"], Bank(paths["drawn"]).parameters["opacity_beta"])


def test_the_configurations_draw_the_nuisance_physics_and_a_bank_of_another_prior_is_remade():
    from protolib.pipelines.simulate import _bank_matches

    for name in ("default", "tiny"):
        assert load_config(name).prior.nuisance == "drawn"
    with pytest.raises(ProtolibInputError, match="prior"):
        load_config("tiny", {"prior": {"nusance": "fixed"}})
    fixed = load_config("tiny", {"prior": {"nuisance": "fixed"}})
    assert fixed.prior.nuisance == "fixed"

    class _Stored:
        images = np.zeros((fixed.bank.n_systems, fixed.bank.n_projections, 1, 1))
        attrs = {
            "simulator_config": __import__("json").dumps(fixed.simulator.to_dict()),
            "prior": __import__("json").dumps(Prior().to_dict()),
            "seed": fixed.bank.seed,
            **fixed.instrument.to_dict(),
        }

    assert not _bank_matches(_Stored(), fixed)  # a bank with drawn nuisances is not the fixed configuration's
    _Stored.attrs["prior"] = __import__("json").dumps(fixed.prior.to_dict())
    assert _bank_matches(_Stored(), fixed)


def test_the_shifted_bank_holds_the_fixed_banks_training_systems_and_the_drawn_banks_targets(tmp_path):
    from protolib.bank import bank_with_systems_from

    config = SimulatorConfig(image_size=16, envelope_samples=8, disk_samples=8)
    drawn = Bank(simulate_bank(tmp_path / "drawn.h5", 6, 2, seed=2, config=config, progress=False))
    fixed = Bank(
        simulate_bank(tmp_path / "fixed.h5", 6, 2, seed=2, config=config, prior=Prior(nuisance="fixed"), progress=False)
    )
    with drawn, fixed, Bank(bank_with_systems_from(fixed, drawn, [1, 4], tmp_path / "shifted.h5")) as shifted:
        for system, source in [(0, fixed), (1, drawn), (2, fixed), (4, drawn), (5, fixed)]:
            assert np.array_equal(shifted.load_images([system]), source.load_images([system]))
            assert all(shifted.parameters[n][system] == source.parameters[n][system] for n in shifted.parameters)
        # the fixed networks' bank, its test rows replaced
        assert shifted.identity["created"] == fixed.identity["created"]
        assert "systems [1, 4] from" in shifted.attrs["source"]
    other = Bank(simulate_bank(tmp_path / "other.h5", 6, 2, seed=3, config=config, progress=False))
    with other, Bank(tmp_path / "fixed.h5") as fixed, pytest.raises(ProtolibInputError, match="same seed"):
        bank_with_systems_from(fixed, other, [1], tmp_path / "bad.h5")
    assert not (tmp_path / "bad.h5").exists()


def test_concatenated_banks_keep_every_index_of_the_first_and_refuse_other_physics(tmp_path):
    from protolib.bank import concatenate_banks

    config = SimulatorConfig(image_size=16, envelope_samples=8, disk_samples=8)
    first = Bank(simulate_bank(tmp_path / "first.h5", 4, 2, seed=2, config=config, progress=False))
    second = Bank(simulate_bank(tmp_path / "second.h5", 3, 2, seed=3, config=config, progress=False))
    with first, second, Bank(concatenate_banks(first, second, tmp_path / "both.h5")) as both:
        assert both.n_systems == 7 and both.identity["created"] == first.identity["created"]
        assert np.array_equal(both.load_images([0, 3]), first.load_images([0, 3]))
        assert np.array_equal(both.load_images([4, 6]), second.load_images([0, 2]))
        for name in first.parameters:
            assert np.array_equal(both.parameters[name], np.r_[first.parameters[name], second.parameters[name]])
        assert np.array_equal(both.inclination[4:], second.inclination) and len(set(both.system_id)) == 7
        assert "systems 4-6 from" in both.attrs["source"]
        fixed = Bank(
            simulate_bank(
                tmp_path / "fixed.h5", 3, 2, seed=3, config=config, prior=Prior(nuisance="fixed"), progress=False
            )
        )
        with fixed, pytest.raises(ProtolibInputError, match="not rendered as"):
            concatenate_banks(first, fixed, tmp_path / "bad.h5")
    assert not (tmp_path / "bad.h5").exists()


def test_protolib_domain_shift_writes_the_three_cases_on_the_same_systems(tmp_path, monkeypatch, capsys):
    import json

    from protolib.cli import main

    monkeypatch.setenv("PROTOLIB_ARTIFACTS", str(tmp_path / "artifacts"))
    assert (
        main(["domain-shift", "--config", "tiny", "--methods", "random,pca,siamese", "--out", str(tmp_path / "shift")])
        == 0
    )
    printed = capsys.readouterr().out
    assert "68% coverage" in printed and "Goal" in printed
    report = json.loads((tmp_path / "shift" / "domain_shift.json").read_text())
    assert {(r["case"], r["method"]) for r in report["rows"]} == {
        (c, m) for c in ("no shift", "shift", "marginalised") for m in ("random", "pca", "siamese")
    }
    assert (tmp_path / "shift" / "domain_shift.png").stat().st_size > 0 and (
        tmp_path / "shift" / "nuisance.png"
    ).exists()
    assert {r["parameter"] for r in report["nuisance"]} == set(NUISANCE_PARAMETERS)
    assert report["figures"]["goal_met"] in ("met", "not met")
    with Bank(report["paths"]["shifted targets"]) as shifted, Bank(report["paths"]["fixed bank"]) as fixed:
        test = np.array(report["test_systems"])
        assert np.ptp(shifted.parameters["opacity_beta"][test]) > 0  # the targets carry drawn physics ...
        assert np.ptp(np.delete(shifted.parameters["opacity_beta"], test)) == 0  # ... the bank searched does not
        assert np.array_equal(shifted.parameters["disk_radius"], fixed.parameters["disk_radius"])  # the same systems
        # the tiny bank's 24, then 4 more test systems
        assert report["figures"]["n_test_systems"] == len(test) and (test >= 24).sum() == 4
        assert shifted.n_systems == fixed.n_systems == 28
