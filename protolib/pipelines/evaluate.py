"""The evaluation as configured runs: ``protolib evaluate``, and the comparison of target similarities and losses.

:func:`run_evaluation` (with the configuration's ``evaluation:`` section, ``config.evaluation``) evaluates
every method of :mod:`protolib.evaluation` (and the neural posterior estimate of :mod:`protolib.npe`) on a
trained network's test systems and writes the run's products: ``metrics.json``, ``headline.md`` and the
figures of :mod:`protolib.plots.evaluation`.
:func:`compare_variants` trains (or reuses) one Siamese network per variant of
:data:`~protolib.evaluation.VARIANTS` and scores each on the same test targets.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

from ..bank import Bank
from ..evaluation import (
    NPE_METHODS,
    VARIANTS,
    EvaluationSettings,
    MethodResult,
    Relevance,
    baseline_methods,
    evaluate_methods,
    evaluation_cost,
    headline_table,
    siamese_method,
)
from ..npe import NPE_CACHE_FOLDER, add_npe_result, sbi_available
from ..plots import evaluation as plots
from ..runtime import (
    ProtolibInputError,
    atomic_path,
    check_memory,
    check_output,
    describe_bytes,
    output_folder,
    write_figure,
    write_json,
)
from ..siamese import load_siamese, load_siamese_with_its_bank
from .train import ensure_siamese, run_split, siamese_settings

__all__ = ["run_evaluation", "evaluation_plan", "compare_variants", "evaluation_report"]


def run_evaluation(
    model_path: str | Path,
    bank_path: str | Path,
    out_dir: str | Path,
    settings: EvaluationSettings | None = None,
    *,
    device: str | None = None,
    announce=print,
) -> dict:
    """What ``protolib evaluate`` does: evaluate every method on the model's test systems and write the results.

    Before any work, ``announce`` is given the estimated time and peak memory (:func:`evaluation_plan`);
    an evaluation that would not fit in the machine's available memory is refused.

    Writes ``metrics.json`` (every figure per method and per parameter, at the configured ``k`` and
    corrected), ``coverage.png``, ``recovery.png`` (the Siamese network's recovered against true
    values, or the last method's), ``rank_histograms.png``, ``tarp.png`` and ``headline.md`` to ``out_dir``.

    Returns:
        The contents of ``metrics.json``.
    """
    settings = settings or EvaluationSettings()
    _check_methods_can_run(settings)
    model_path, out_dir = Path(model_path), check_output(out_dir, folder=True, command="evaluate")
    model, bank = load_siamese_with_its_bank(model_path, bank_path, device)
    split = model.split
    announce(evaluation_plan(bank, split, settings, len(model.checkpoint.get("parameter_names") or [])))
    methods = baseline_methods(model, bank, split.train, settings)
    relevance = Relevance.from_model(model)
    results = evaluate_methods(methods, bank, relevance, split, settings)
    add_npe_result(
        results, bank, split, relevance, settings, model=model, cache_dir=model_path.parent / NPE_CACHE_FOLDER
    )
    report = evaluation_report(results, model, bank, settings, model_path=model_path, bank_path=bank_path)
    # a bank rewritten meanwhile: refused, so metrics.json never names a file it does not come from
    bank.check_unchanged()
    _write_products(out_dir, results, report)
    return report


def evaluation_plan(bank: Bank, split, settings: EvaluationSettings, n_parameters: int) -> str:
    """One line with the estimated time and peak memory of the evaluation
    (:func:`~protolib.evaluation.evaluation_cost`),
    refused in one line, naming the settings to change, when the memory exceeds what the machine has available."""
    memory, seconds = evaluation_cost(bank, split, settings, n_parameters)
    per_system = bank.n_projections if settings.projection is None else 1
    targets, references = (len(split.test) + len(split.validation)) * per_system, len(split.train) * bank.n_projections
    check_memory(
        memory,
        f"Ranking {references} reference images for each of {targets} test and validation images",
        "evaluate one projection of each system (--projection 0), or a bank with fewer systems",
    )
    duration = f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"
    return (
        f"evaluate: {targets} target images x {references} reference images per method: about {duration} "
        f"(not counting the neural posterior estimates' training), peak memory about {describe_bytes(memory)}."
    )


def evaluation_report(
    results: dict[str, MethodResult],
    model,
    bank: Bank,
    settings: EvaluationSettings,
    *,
    model_path: str | Path,
    bank_path: str | Path,
) -> dict:
    """The contents of ``metrics.json``: the inputs, the settings, the targets and every method's figures
    (:meth:`MethodResult.to_json`)."""
    split = model.split
    return {
        "inputs": {
            "model": str(Path(model_path).resolve()),
            "bank": str(Path(bank_path).resolve()),
            "target": model.checkpoint["target"],
            "loss": model.checkpoint["config"]["loss"],
        },
        "settings": asdict(settings),
        "targets": {
            "systems": split.test.tolist(),
            "projection": settings.projection,
            "n_targets": int(len(split.test) * (bank.n_projections if settings.projection is None else 1)),
            "reference_systems": int(len(split.train)),
        },
        "methods": {name: result.to_json() for name, result in results.items()},
    }


def _check_methods_can_run(settings: EvaluationSettings) -> None:
    """Refuse, before any work, an evaluation whose only methods are neural posterior estimates when ``sbi`` is
    missing (with other methods, the estimates are left out with a warning)."""
    if settings.methods and all(name in NPE_METHODS for name in settings.methods) and not sbi_available():
        raise ProtolibInputError(
            f"--methods {','.join(settings.methods)} needs the sbi package, which is not installed: pip install "
            "'protolib[posterior]', or add a matching method (e.g. --methods siamese,npe)."
        )
    if not settings.methods:
        raise ProtolibInputError("--methods is empty; name at least one method (e.g. --methods siamese).")


def _write_products(out_dir: Path, results: dict[str, MethodResult], report: dict) -> None:
    """The figures, ``headline.md`` and ``metrics.json`` of one evaluation, published together in ``out_dir``."""
    main = results.get("siamese") or list(results.values())[-1]
    figures = {
        "coverage.png": plots.plot_coverage(results),
        "recovery.png": plots.plot_recovery(main.evaluation),
        "rank_histograms.png": plots.plot_rank_histograms(main.evaluation),
        "tarp.png": plots.plot_tarp(results),
    }
    with output_folder(out_dir, "evaluate") as staging:  # the products of one run, published together
        for name, fig in figures.items():
            write_figure(fig, staging / name, dpi=110, bbox_inches="tight")
        with atomic_path(staging / "headline.md") as tmp:
            tmp.write_text(
                headline_table(results)
                + "\n\nCorrected (k chosen on validation systems):\n\n"
                + headline_table(results, corrected=True)
                + "\n"
            )
        write_json(report, staging / "metrics.json", strict=True)


def compare_variants(
    config,
    bank: Bank,
    autoencoder: str | Path,
    variants: dict[str, tuple[str, dict]] | None = None,
    settings: EvaluationSettings | None = None,
    *,
    progress: bool = False,
) -> dict[str, MethodResult]:
    """Train (or reuse) one Siamese network per variant and evaluate each on the same test targets.

    Every variant is scored against the same relevance, the configuration's own target similarity
    (so a cosine-trained network is not judged by the cosine it was taught). Networks are made by
    :func:`~protolib.pipelines.train.ensure_siamese` in ``config.artifacts_dir``, with the configuration's
    epochs, or ``settings.variant_epochs`` (then as ``<file>_e<epochs>.pt``, beside the full ones).

    Returns:
        variant name -> the ``"siamese"`` :class:`~protolib.evaluation.MethodResult` of
        :func:`~protolib.evaluation.evaluate_methods`, with its checkpoint as ``path``.
    """
    settings = settings or config.evaluation
    variants = VARIANTS if variants is None else variants
    split = run_split(config, bank)
    relevance = Relevance.fit(siamese_settings(config)["target"], bank, split.train)
    epochs = settings.variant_epochs
    results = {}
    for name, (file_name, overrides) in variants.items():
        if epochs:
            file_name, overrides = f"{Path(file_name).stem}_e{epochs}.pt", {"training": {"epochs": epochs}, **overrides}
        path = ensure_siamese(config, bank, autoencoder, name=file_name, overrides=overrides, progress=progress)
        result = evaluate_methods([siamese_method(load_siamese(path))], bank, relevance, split, settings)["siamese"]
        results[name] = replace(result, path=path)
    return results
