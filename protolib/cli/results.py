"""``protolib evaluate``, ``domain-shift``, ``attribute`` and ``embedding-map``: how well matching works, and what the
network looks at."""

from __future__ import annotations

from ..runtime import ProtolibInputError, shown_path
from .common import (
    add_setting,
    check_figure_path,
    output_file,
    path_argument,
    run_config,
    run_reporting_warnings,
    seed_argument,
)

__all__ = [
    "register_evaluate",
    "register_domain_shift",
    "register_out_of_family",
    "register_attribute",
    "register_embedding_map",
]


def _add_model_and_bank(p, bank_help: str) -> None:
    p.add_argument("--model", required=True, type=path_argument, help="trained Siamese network (RUN/siamese.pt)")
    p.add_argument("--bank", required=True, type=path_argument, help=bank_help)


def register_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="evaluate matching on held-out systems against baselines",
        description="Match every test system of the model's split against the training systems with the Siamese "
        "network and the baselines (random, pixel chi-square, PCA, autoencoder), beside the neural posterior "
        "estimates (npe, npe_end_to_end) where the methods list them; write OUT/metrics.json "
        "(similarity, retrieval, parameter recovery, calibration per method and parameter) and figures.",
    )
    _add_model_and_bank(p, "the bank the network was trained on (.h5)")
    p.add_argument(
        "--out", required=True, type=path_argument, help="folder for metrics.json, headline.md and the figures"
    )
    add_setting(p, "--top-k", key="evaluation.top_k", type=int, help="matches per target")
    add_setting(
        p,
        "--projection",
        key="evaluation.projection",
        type=int,
        help="evaluate one projection of each test system (null: all)",
    )
    add_setting(
        p,
        "--methods",
        key="evaluation.methods",
        type=lambda s: s.split(","),
        help="comma-separated subset of random,pixel,pca,autoencoder,siamese,npe,npe_end_to_end",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when present)")

    p.set_defaults(handler=_evaluate)


def _evaluate(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from ..pipelines.evaluate import run_evaluation

    settings = run_config(args).evaluation
    report = run_reporting_warnings(
        "evaluate", lambda: run_evaluation(args.model, args.bank, args.out, settings, device=args.device)
    )
    print(
        f"Evaluated {len(report['methods'])} methods on {report['targets']['n_targets']} test images; wrote "
        f"{args.out}/metrics.json."
    )
    print((args.out / "headline.md").read_text())


def register_domain_shift(sub) -> None:
    p = sub.add_parser(
        "domain-shift",
        help="what a bank of fixed physics gets wrong on systems of other physics, and what drawing it buys",
        description="Make (or reuse) the configuration's bank and networks and those of its fixed-physics twin "
        "(artifacts/NAME-fixed-physics: prior.nuisance = fixed), then evaluate every method on the same test "
        "systems with no shift, under the shift and marginalised; write domain_shift.json, domain_shift.png "
        "and nuisance.png to OUT (default artifacts/NAME/domain_shift) and print the Siamese network's table.",
    )
    p.add_argument(
        "--out", type=path_argument, default=None, help="folder for the products (default: artifacts/NAME/domain_shift)"
    )
    add_setting(p, "--top-k", key="evaluation.top_k", type=int, help="matches per target")
    add_setting(
        p,
        "--methods",
        key="evaluation.methods",
        type=lambda s: s.split(","),
        help="comma-separated subset of random,pixel,pca,autoencoder,siamese",
    )

    p.set_defaults(handler=_domain_shift)


def _domain_shift(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from ..domain_shift import GOAL_COVERAGE, GOAL_ERROR, shift_table
    from ..pipelines.shift import run_domain_shift

    config = run_config(args)
    settings = config.evaluation
    result = run_reporting_warnings("domain-shift", lambda: run_domain_shift(config, settings, out_dir=args.out))
    if "siamese" in result.cases["no shift"]:
        print(shift_table(result.cases, result.parameters, figures="coverage"))
        print(shift_table(result.cases, result.parameters, figures="error"))
    figures = result.figures
    print(
        f"Image-constrained: {figures['constrained']}. Goal (marginalised: coverage within {GOAL_COVERAGE} of "
        "nominal, errors "
        f"at most {GOAL_ERROR:.0%} above the no-shift ones): {figures['goal_met']}; worst coverage offset "
        f"{figures['worst_offset_marginalised']:.2f} (fixed-physics bank: {figures['worst_offset_shift']:.2f}), "
        "error ratio "
        f"{figures['error_ratio_marginalised']:.2f}. Wrote {result.paths.get('out', '')}".rstrip()
        + "."
    )


def register_out_of_family(sub) -> None:
    p = sub.add_parser(
        "out-of-family",
        help="how honest the intervals stay under physics the bank does not hold, and a term that keeps them so",
        description="Render the configuration's held-out systems (and domain-shift's added ones) with physics outside "
        "the bank's family (a static power-law envelope; external heating), score the Siamese network's "
        "calibrated intervals on each and on the bank's own systems, learn a misspecification term per "
        "parameter on one family, and write artifacts/NAME/out_of_family/out_of_family.json "
        "(give it to `protolib match --misspecification`).",
    )
    p.add_argument(
        "--learn-on",
        default="power_law_envelope",
        help="the family the term is learnt on (power_law_envelope, external_heating)",
    )

    p.set_defaults(handler=_out_of_family)


def _out_of_family(args) -> None:
    from ..out_of_family import FAMILIES, IN_FAMILY, family_table
    from ..pipelines.out_of_family import run_out_of_family

    if args.learn_on not in FAMILIES:
        raise ProtolibInputError(f"--learn-on must be one of {list(FAMILIES)}, got {args.learn_on!r}.")
    result = run_reporting_warnings(
        "out-of-family", lambda: run_out_of_family(run_config(args), learn_on=args.learn_on)
    )
    for family in (IN_FAMILY, *FAMILIES):
        print(
            f"{family}: coverage 68% / 95% and 68% half-width over the prior's spread, before and after the term\n"
            f"{family_table(result.rows, family)}\n"
        )
    print(f"Terms learnt on {args.learn_on}; wrote {shown_path(result.path)}.")


def register_attribute(sub) -> None:
    p = sub.add_parser(
        "attribute",
        help="attribution maps of held-out pairs (and an observation), with their sanity check",
        description="Draw integrated-gradient attribution maps of the best, middle and worst held-out pairs of the "
        "model's test systems (OUT/pair_best.png, pair_middle.png, pair_worst.png), compare them with "
        "a network of randomised weights, and write OUT/attribution.json.",
    )
    _add_model_and_bank(p, "the bank the network was trained on (.h5)")
    p.add_argument("--out", required=True, type=path_argument, help="folder for the figures and attribution.json")
    p.add_argument(
        "--observation",
        type=path_argument,
        default=None,
        help="a prepared observation (FITS from `protolib observe --out`): also draw it against its best match",
    )
    add_setting(p, "--steps", key="attribution.steps", type=int, help="steps of the integrated-gradients path")
    add_setting(
        p,
        "--seed",
        key="attribution.seed",
        type=seed_argument,
        help="seed of the randomised network and of the test-system subset",
    )
    add_setting(p, "--device", key="attribution.device", help="cpu, cuda, cuda:1 ...")

    p.set_defaults(handler=_attribute)


def _attribute(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from ..attribution import RANDOMISATION_LIMIT
    from ..pipelines.understand import run_attribution

    settings = run_config(args).attribution
    if settings.steps < 1:
        raise ProtolibInputError(f"--steps must be at least 1, got {settings.steps}.")
    report = run_reporting_warnings(
        "attribute",
        lambda: run_attribution(
            args.model,
            args.bank,
            args.out,
            observation=args.observation,
            steps=settings.steps,
            seed=settings.seed,
            device=settings.device,
        ),
    )
    for name, pair in report["pairs"].items():
        print(
            f"{name:6s} pair: predicted {pair['predicted']:.2f}, target {pair['target']:.2f}, "
            f"rank correlation trained vs randomised {pair['rank_correlation_trained_vs_randomised']:.2f}"
        )
    print(
        f"randomisation check: {'passes' if report['randomisation_check_passes'] else 'fails'} (median rank "
        "correlation "
        f"below {RANDOMISATION_LIMIT:g} passes: the maps depend on what the network learnt)"
    )
    if "observation" in report:
        best = report["observation"]["best_match"]
        print(
            f"observation: best match system {best['system']}, projection {best['projection']}, similarity "
            f"{best['similarity']:.3f}"
        )
    print(f"Wrote the figures and attribution.json to {args.out}/.")


def register_embedding_map(sub) -> None:
    p = sub.add_parser(
        "embedding-map",
        help="the bank's embeddings on a 2-D map, coloured by each parameter",
        description="Project the bank's embeddings to 2-D (PCA or UMAP), one panel per parameter the model was "
        "trained on and one for inclination, an observation optionally marked; write the figure "
        "and <OUT stem>_smoothness.json (0: the parameter varies smoothly across the map, 1: no trace).",
    )
    _add_model_and_bank(p, "bank whose embeddings to map (.h5)")
    p.add_argument("--out", required=True, type=output_file(".png"), help="figure to write (PNG, PDF ...)")
    add_setting(
        p,
        "--method",
        key="embedding_map.method",
        choices=["pca", "umap"],
        help="projection (umap needs protolib[maps])",
    )
    p.add_argument(
        "--observation",
        type=path_argument,
        default=None,
        help="a prepared observation (FITS from `protolib observe --out`) to mark",
    )
    add_setting(
        p,
        "--seed",
        key="embedding_map.seed",
        type=seed_argument,
        help="seed of the UMAP layout and of the smoothness measure",
    )

    p.set_defaults(handler=_embedding_map)


def _embedding_map(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from ..pipelines.understand import run_embedding_map

    check_figure_path(args.out)
    settings = run_config(args).embedding_map
    report = run_reporting_warnings(
        "embedding-map",
        lambda: run_embedding_map(
            args.model,
            args.bank,
            args.out,
            method=settings.method,
            observation=args.observation,
            seed=settings.seed,
        ),
    )
    print(
        f"Wrote {args.out} ({report['method']} map of {report['n_images']} bank images); smoothness (0 smooth, 1 "
        "none): " + ", ".join(f"{name} {value:.2f}" for name, value in report["smoothness"].items())
    )
