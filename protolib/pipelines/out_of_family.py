"""Out-of-family physics as a configured run: the bank's held-out systems rendered with other physics, matched and
scored.

:func:`run_out_of_family` uses the configuration's bank and Siamese network (made when missing, as
every pipeline does), renders the same held-out systems (and the domain-shift comparison's added ones,
``evaluation.shift_test_systems``) with each of :data:`protolib.out_of_family.FAMILIES`' physics, and
scores the network's calibrated intervals on each set and on the bank's own. It learns a
misspecification term on one family and scores it on every set, and writes
``<artifacts>/out_of_family/out_of_family.json``. ``benchmarks/out_of_family.py`` runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..bank import Bank, bank_with_systems_from
from ..evaluation import EvaluationSettings, MethodEvaluation, Relevance, baseline_methods, evaluate_methods
from ..out_of_family import FAMILIES, IN_FAMILY, family_rows, misspecification_terms
from ..runtime import ProtolibInputError, write_json
from ..siamese import load_siamese
from .shift import with_more_targets
from .simulate import ensure_bank
from .train import ensure_autoencoder, ensure_siamese

__all__ = ["family_config", "run_out_of_family", "OutOfFamily"]


def family_config(config, family: str):
    """``config`` rendering with ``family``'s physics (:data:`~protolib.out_of_family.FAMILIES`), in its own artifacts
    folder."""
    if family not in FAMILIES:
        raise ProtolibInputError(f"Unknown out-of-family physics {family!r}; choose one of {list(FAMILIES)}.")
    return replace(
        config,
        name=f"{config.name}-{family.replace('_', '-')}",
        simulator=replace(config.simulator, **FAMILIES[family][1]),
    )


@dataclass
class OutOfFamily:
    """The network's figures on each test set, the term learnt and the rows of
    :func:`~protolib.out_of_family.family_rows`.

    Attributes:
        evaluations: test set (a family's name, or :data:`~protolib.out_of_family.IN_FAMILY`) -> the calibrated figures.
        calibration: the calibration's widening per parameter (chosen on the bank's own validation systems).
        learnt_on: the family the term was learnt on; ``terms``: the term per parameter.
        terms_own_physics: the term the bank's own test systems alone would ask (the calibration's own shortfall):
            the part of ``terms`` beyond it is the other physics'.
        rows: coverage and widths before and after the term, per test set and parameter.
        path: the JSON written.
    """

    evaluations: dict[str, MethodEvaluation]
    calibration: dict[str, float]
    learnt_on: str
    terms: dict[str, float]
    terms_own_physics: dict[str, float]
    rows: list[dict]
    path: Path


def _siamese_figures(model_path: Path, bank: Bank, settings: EvaluationSettings, test: np.ndarray):
    """The Siamese network's calibrated result on ``bank``'s systems ``test`` (its k and widening chosen on validation
    systems)."""
    model = load_siamese(model_path)
    methods = baseline_methods(model, bank, model.split.train, replace(settings, methods=["siamese"]))
    return evaluate_methods(methods, bank, Relevance.from_model(model), replace(model.split, test=test), settings)[
        "siamese"
    ]


def _family_figures(config, family: str, bank: Bank, model_path, settings: EvaluationSettings, test, progress: bool):
    """The network's figures on the ``test`` systems rendered with ``family``'s physics (its bank's systems, with as
    many more targets as the in-family ones)."""
    other_config = family_config(config, family)
    other = with_more_targets(
        other_config, ensure_bank(other_config, progress=progress), settings.shift_test_systems, progress
    )
    path = bank_with_systems_from(bank, other, test, other_config.artifacts_dir / "bank_out_of_family_targets.h5")
    other.close()
    with Bank(path) as targets:
        return _siamese_figures(model_path, targets, settings, test).figures(True)


def run_out_of_family(
    config, settings: EvaluationSettings | None = None, *, learn_on: str = "power_law_envelope", progress: bool = True
) -> OutOfFamily:
    """Score the configuration's network on its held-out systems rendered with each family's physics, and learn a term
    on ``learn_on``."""
    settings = settings or config.evaluation
    bank = ensure_bank(config, progress=progress)
    model_path = ensure_siamese(config, bank, ensure_autoencoder(config, bank, progress=progress), progress=progress)
    n_bank = bank.n_systems
    bank = with_more_targets(config, bank, settings.shift_test_systems, progress)
    test = np.r_[load_siamese(model_path).split.test, np.arange(n_bank, bank.n_systems)]
    own = _siamese_figures(model_path, bank, settings, test)
    evaluations, calibration = {IN_FAMILY: own.figures(True)}, dict(own.chosen_widening or {})
    for family in FAMILIES:
        evaluations[family] = _family_figures(config, family, bank, model_path, settings, test, progress)
    parameters = list(own.figures(True).parameters)
    table = own.figures(True).metrics["parameters"]
    spread = {n: table[n]["rms_error"] / table[n]["rms_error_over_prior_spread"] for n in parameters}
    terms = misspecification_terms(evaluations[learn_on], parameters, calibration)
    # what the bank's own systems alone ask
    own_terms = misspecification_terms(evaluations[IN_FAMILY], parameters, calibration)
    rows = family_rows(evaluations, parameters, calibration, terms, spread)
    out = config.artifacts_dir / "out_of_family" / "out_of_family.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(
        {
            "families": {k: v[0] for k, v in FAMILIES.items()},
            "learnt_on": learn_on,
            "calibration": calibration,
            "terms": terms,
            "terms_own_physics": own_terms,
            "test_systems": len(test),
            "rows": rows,
        },
        out,
        strict=True,
    )
    bank.close()
    return OutOfFamily(evaluations, calibration, learn_on, terms, own_terms, rows, out)
