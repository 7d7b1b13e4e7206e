"""The domain-shift comparison as a configured run: a fixed-physics twin of a configuration, trained and evaluated.

:func:`fixed_physics_config` is a configuration's twin whose prior holds the nuisance physics at the
simulator's values (its own artifacts folder, ``<name>-fixed-physics``); :func:`run_domain_shift`
makes both banks and both pairs of networks (each only when missing or stale), then evaluates every
method in the three cases of :mod:`protolib.domain_shift` on the same test systems, and writes
``domain_shift.json`` (the figures, every case's rows, the nuisance parameters' constraints),
``domain_shift.png`` and ``nuisance.png`` to ``<artifacts>/domain_shift/``. ``protolib domain-shift``
runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..bank import Bank, bank_with_systems_from
from ..domain_shift import CASES, nuisance_rows, shift_figures, shift_rows
from ..evaluation import EvaluationSettings, MethodResult, Relevance, baseline_methods, evaluate_methods
from ..plots_evaluation import domain_shift_plot, nuisance_constraint_plot
from ..runtime import ProtolibInputError, output_folder, write_figure, write_json
from ..siamese import load_siamese
from .evaluate import evaluation_settings
from .simulate import ensure_bank
from .train import ensure_autoencoder, ensure_siamese

__all__ = ["fixed_physics_config", "run_domain_shift", "DomainShift"]


def fixed_physics_config(config):
    """``config`` with its nuisance physics fixed at the simulator's values, in its own artifacts folder."""
    return replace(config, name=f"{config.name}-fixed-physics", prior=replace(config.prior, nuisance="fixed"))


@dataclass
class DomainShift:
    """The three cases of :mod:`protolib.domain_shift`, every method in each, and where they came from.

    Attributes:
        cases: case -> method -> :class:`~protolib.evaluation.MethodResult`.
        parameters: the physical parameters evaluated (and calibrated) in every case.
        nuisance: the nuisance parameters, evaluated in the marginalised case.
        figures: :func:`~protolib.domain_shift.shift_figures`.
        paths: the banks and networks used, by role.
        test_systems: the systems every case is scored on (their indices in both banks).
    """

    cases: dict[str, dict[str, MethodResult]]
    parameters: list[str]
    nuisance: list[str]
    figures: dict
    paths: dict[str, Path]
    test_systems: np.ndarray


def _networks(config, progress: bool) -> tuple[Bank, Path]:
    bank = ensure_bank(config, progress=progress)
    autoencoder = ensure_autoencoder(config, bank, progress=progress)
    return bank, ensure_siamese(config, bank, autoencoder, progress=progress)


def _evaluate(model_path: Path, bank: Bank, settings: EvaluationSettings, extra: list[str]) -> dict[str, MethodResult]:
    model = load_siamese(model_path)
    methods = baseline_methods(model, bank, model.split.train, settings)
    return evaluate_methods(methods, bank, Relevance.from_model(model), model.split, settings, extra_parameters=extra)


def run_domain_shift(config, settings: EvaluationSettings | None = None, *, progress: bool = True, out_dir: str | Path | None = None) -> DomainShift:
    """Make (or reuse) the drawn- and fixed-physics banks and networks, and evaluate the three cases.

    ``config`` is the configuration with drawn nuisance physics (the book's); its twin
    :func:`fixed_physics_config` is trained the same way. The shifted targets are the fixed bank's test
    systems rendered with drawn physics: the drawn bank's own test systems (same seed, same systems).
    The products go to ``out_dir`` (default ``<artifacts>/domain_shift``), published together.
    """
    if config.prior.nuisance != "drawn":
        raise ProtolibInputError(f"The domain-shift comparison starts from a configuration that draws its nuisance physics; "
                                 f"{config.name} has prior.nuisance = {config.prior.nuisance!r}.")
    settings = settings or evaluation_settings(config)
    drawn_bank, drawn_model = _networks(config, progress)
    fixed_config = fixed_physics_config(config)
    fixed_bank, fixed_model = _networks(fixed_config, progress)
    split = load_siamese(fixed_model).split
    if not np.array_equal(split.test, load_siamese(drawn_model).split.test):
        raise ProtolibInputError("The fixed- and drawn-physics networks hold out different test systems; give both the same split settings.")
    shifted_path = bank_with_systems_from(fixed_bank, drawn_bank, split.test, fixed_config.artifacts_dir / "bank_shifted_targets.h5")
    nuisance = drawn_bank.nuisance_parameters
    parameters = [*drawn_bank.physical_parameters, "inclination"]
    with Bank(shifted_path) as shifted:
        cases = {"no shift": _evaluate(fixed_model, fixed_bank, settings, []),
                 "shift": _evaluate(fixed_model, shifted, settings, []),
                 "marginalised": _evaluate(drawn_model, drawn_bank, settings, nuisance)}
    figures = shift_figures(cases, parameters, nuisance=nuisance)
    paths = {"drawn bank": drawn_bank.path, "drawn network": drawn_model, "fixed bank": fixed_bank.path, "fixed network": fixed_model,
             "shifted targets": shifted_path}
    paths["out"] = Path(out_dir) if out_dir is not None else config.artifacts_dir / "domain_shift"
    result = DomainShift({c: cases[c] for c in CASES}, parameters, nuisance, figures, paths, np.asarray(split.test))
    _write_products(result, paths["out"])
    return result


def _write_products(result: DomainShift, out_dir: Path) -> None:
    """``domain_shift.json`` and the two figures, published together in ``out_dir``."""
    marginalised = result.cases["marginalised"].get("siamese")
    with output_folder(out_dir) as staging:
        if "siamese" in result.cases["no shift"]:
            write_figure(domain_shift_plot(result.cases, result.parameters), staging / "domain_shift.png", dpi=110, bbox_inches="tight")
        if marginalised is not None and result.nuisance:
            write_figure(nuisance_constraint_plot(marginalised, result.nuisance), staging / "nuisance.png", dpi=110, bbox_inches="tight")
        write_json({"figures": result.figures, "paths": {k: str(v) for k, v in result.paths.items()},
                    "test_systems": result.test_systems.tolist(), "rows": shift_rows(result.cases, result.parameters),
                    "nuisance": nuisance_rows(marginalised, result.nuisance) if marginalised is not None else []},
                   staging / "domain_shift.json", strict=True)
