"""``protolib observe`` and ``protolib match``: an observation on the bank's grid, and its best matches."""

from __future__ import annotations

from ..runtime import ProtolibInputError, shown_path
from .common import (
    add_setting,
    beam_argument,
    check_figure_path,
    output_file,
    path_argument,
    refuse_overwriting_input,
    run_config,
    run_reporting_warnings,
    say,
)

__all__ = ["register_observe", "register_match", "preparation_notes", "observing_note"]


def add_real_file_options(p) -> None:
    """Options for what real files need: frequency, spectral index, recoverable scale, other sources."""
    p.add_argument(
        "--frequency",
        type=float,
        default=None,
        help="observed frequency in GHz (default: from the file's spectral axis)",
    )
    p.add_argument(
        "--spectral-index",
        type=float,
        default=None,
        help="dust spectral index alpha, S ~ nu^alpha, to bring fluxes to the bank's frequency "
        "(default 2 + the bank's opacity index beta: 3 for the built-in simulator)",
    )
    p.add_argument(
        "--max-scale",
        type=float,
        default=None,
        help="maximum recoverable scale of the observation in arcsec: larger scales are removed from the bank "
        "images as the interferometer removed them (default: 10 beam major axes; 0: no filtering)",
    )
    p.add_argument(
        "--mask-radius",
        type=float,
        default=None,
        help="blank everything further than this many arcsec from the centre (e.g. a companion)",
    )


def real_file_options(args) -> dict:
    """The real-file options as keyword arguments of :func:`~protolib.observation.prepare_observation`."""
    return {
        "frequency_ghz": args.frequency,
        "spectral_index": args.spectral_index,
        "max_scale_arcsec": args.max_scale,
        "mask_radius_arcsec": args.mask_radius,
    }


def preparation_notes(info: dict) -> str:
    """One line on the real-file steps: frequency, blanking, recoverable scale, sources."""
    observed = info.get("observed_frequency_ghz")
    frequency = (
        f"{observed:.2f} GHz ({info['frequency_source']}) -> bank {info['bank_frequency_ghz']:g} GHz, fluxes "
        f"x{info['frequency_factor']:.3f} (alpha = {info['spectral_index']:g})"
        if observed
        else f"frequency unknown, taken as the bank's {info['bank_frequency_ghz']:g} GHz"
    )
    scale = (
        f'scales above {info["max_scale_arcsec"]:.3g}" removed from the bank images ({info["max_scale_source"]})'
        if info.get("max_scale_arcsec")
        else "no interferometric filtering"
    )
    zeros = (
        f"; {100 * info['blanked_zero_fraction']:.0f}% of pixels were zero-valued blanking"
        if info.get("blanked_zero_fraction")
        else ""
    )
    return (
        f"Frequency {frequency}; {scale}; {len(info.get('compact_sources', []))} compact source(s) in the field{zeros}."
    )


def calibration_note(calibration: dict) -> str:
    """One line: how much the intervals were widened to be honest on the reference targets."""
    widened = {name: c for name, c in calibration.items() if c["widening"] > 1.0}
    n = next(iter(calibration.values()))["n_reference"]
    if not widened:
        return (
            f"Intervals as the matches give them: on {n} reference bank images seen like this target they already "
            "hold the truth as often as claimed."
        )
    from ..plots.style import parameter_words

    parts = ", ".join(
        f"{parameter_words(name)} x{c['widening']:g} "
        f"(95% coverage {c['raw_coverage_95']:.2f} -> {c['coverage_95']:.2f})"
        for name, c in widened.items()
    )
    return (
        f"Intervals in summary.csv widened about the median, so that on {n} reference bank images seen like this "
        "target "
        f"they hold the truth as often as claimed: {parts}."
    )


def observing_note(observing: dict) -> str:
    """One line: which observing settings were drawn, and how much they widened the 68% intervals."""
    from ..plots.style import parameter_words

    said = {
        "distance": f"distance {observing['distance_pc']:g} +- {observing['distance_error_pc']:g} pc",
        "flux_calibration": f"flux scale +-{100 * observing['flux_calibration']:.0f}% "
        f"({observing['flux_calibration_source']})",
        "recoverable_scale": (
            "recoverable scale {:.3g}-{:.3g}\" (from the map's negative bowl)".format(
                *observing["max_scale_range_arcsec"]
            )
            if observing.get("max_scale_range_source")
            else 'recoverable scale {:.3g}-{:.3g}" or none (not known: {:g}-{:g} beams, {:.0f}% unfiltered)'.format(
                *(observing["max_scale_range_arcsec"] or [0, 0]),
                *(observing["max_scale_range_beams"] or [0, 0]),
                100 * observing.get("no_filter_share", 0),
            )
        ),
    }
    widened = sorted(observing["parameters"].items(), key=lambda item: -item[1]["widening"])[:4]
    parts = ", ".join(
        f"{parameter_words(name)} x{p['widening']:.2f} (most from the "
        f"{max(p['by_source'], key=lambda s: p['by_source'][s]['widening']).replace('_', ' ')})"
        for name, p in widened
    )
    return (
        f"Observing uncertainties ({'; '.join(said[s] for s in observing['sources'])}): the match was repeated over "
        f"{len(observing['draws'])} draws and summary.csv pools them. 68% intervals widened most: {parts} "
        "(report.json, observing_uncertainty, has every parameter)."
    )


def _add_observation_options(p, prefix: str = "") -> None:
    p.add_argument(
        "--centre",
        "--center",
        dest="centre",
        default=None,
        help=f"{prefix}sky position to centre on, 'RA DEC' ('04:39:53.9 +26:03:09.4' or degrees); default: the "
        "emission peak",
    )
    p.add_argument(
        "--beam",
        nargs=3,
        type=float,
        metavar=("MAJ", "MIN", "PA"),
        default=None,
        help=f"{prefix}beam FWHM axes [arcsec] and PA [deg east of north], when the header has none (or to override "
        "it)",
    )
    p.add_argument(
        "--noise", type=float, default=None, help=f"{prefix}noise rms of the observation [Jy/beam] (default: estimated)"
    )
    add_real_file_options(p)


def register_observe(sub) -> None:
    p = sub.add_parser(
        "observe",
        help="put an observed FITS image on a bank's grid, as the pipeline sees it",
        description="Read an observed continuum image (FITS), centre it on the source, resample it onto the "
        "bank's grid in au (flux conserving), bring it to the bank's units and distance, and write "
        "the prepared image (FITS) and optionally a figure.",
    )
    p.add_argument("observation", type=path_argument, help="the observed image (FITS: 2-4 axes, Jy/beam or Jy/pixel)")
    p.add_argument("--distance", type=float, default=None, help="distance to the source in pc (required)")
    p.add_argument(
        "--bank",
        type=path_argument,
        default=None,
        help="bank whose grid to use (default: the configuration's bank, see --config)",
    )
    p.add_argument("--out", type=output_file(".fits"), required=True, help="prepared image to write (FITS)")
    p.add_argument(
        "--plot",
        type=output_file(".png"),
        default=None,
        help="also write a figure: original and prepared side by side (PNG, PDF...)",
    )
    _add_observation_options(p)
    p.set_defaults(handler=_observe)


def _check_observe_outputs(args) -> None:
    if args.distance is None:
        raise ProtolibInputError(
            f"{args.observation}: the distance to the source is missing; give it with --distance PC."
        )
    refuse_overwriting_input(args.out, [args.observation])
    if args.plot is not None:
        check_figure_path(args.plot)
        if args.plot.resolve() == args.out.resolve():
            raise ProtolibInputError(f"{args.plot}: --plot and --out name the same file; give the figure its own name.")


def _observe(args) -> None:
    from ..observation import prepare_observation
    from ..plots.observation import plot_prepared_observation
    from ..runtime import write_figure

    _check_observe_outputs(args)
    bank = args.bank if args.bank is not None else run_config(args).bank_path
    prepared = run_reporting_warnings(
        "observe",
        lambda: prepare_observation(
            args.observation,
            bank,
            args.distance,
            centre=args.centre,
            beam=beam_argument(args.beam, str(args.observation)),
            noise_rms_jy_beam=args.noise,
            **real_file_options(args),
        ),
    )
    prepared.write_fits(args.out)
    b = prepared.beam
    print(
        f"Wrote {args.out}: {prepared.grid.image_size}x{prepared.grid.image_size} px of "
        f"{prepared.grid.pixel_size_au:.3g} au, "
        f"centred on {prepared.centre.to_string('hmsdms', precision=2)}, fluxes x{prepared.flux_scale:.3f} "
        f"({prepared.distance_pc:g} -> {prepared.grid.distance_pc:g} pc), beam "
        f'{b.major_arcsec:.3g}"x{b.minor_arcsec:.3g}" '
        f"PA {b.position_angle_deg:.0f} deg{' (smoothed to contain the bank beam)' if prepared.smoothed else ''}, "
        f"noise {prepared.noise_rms_jy_beam * 1e3:.3g} mJy/beam."
    )
    print(preparation_notes(prepared.info()))
    if args.plot is not None:
        write_figure(plot_prepared_observation(prepared), args.plot)
        print(f"Wrote {args.plot}")


def register_match(sub) -> None:
    p = sub.add_parser(
        "match",
        help="match a target image to the bank and summarise its best matches' parameters",
        description="Find the bank images most similar to a target (an observation FITS file or a bank "
        "system) and write the matches, parameter summaries, a corner plot, a gallery and a report. "
        "How many matches, their weights, the search backend and the out-of-distribution limit "
        "come from the configuration's matching section.",
    )
    p.add_argument("--model", required=True, type=path_argument, help="trained Siamese network (RUN/siamese.pt)")
    p.add_argument("--bank", required=True, type=path_argument, help="bank file to search (.h5)")
    _add_match_target_options(p)
    _add_match_search_options(p)
    _add_observing_options(p)
    p.add_argument(
        "--posterior-estimate",
        action="store_true",
        help="also train a neural posterior estimate (sbi) on the bank at the observation's setup and put its "
        "intervals beside the matches' in report.json (about half a minute on a CPU; --target only); it is kept "
        "in npe_flows/ beside the model, so matching the same map again reads it",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
    p.add_argument(
        "--out",
        required=True,
        type=path_argument,
        help="folder for matches.csv, summary.csv, corner.png, gallery.png, report.json (and spectral_index.png "
        "for maps in several bands)",
    )
    p.set_defaults(handler=_match)


def _add_observing_options(p) -> None:
    """What is uncertain about an observation: its distance, flux scale and recoverable scale, and the physics the
    bank does not hold."""
    p.add_argument(
        "--distance-error",
        type=float,
        default=None,
        help="with --target: 1-sigma error of --distance in pc, carried into the intervals (default 0)",
    )
    p.add_argument(
        "--flux-calibration",
        type=float,
        default=None,
        help="with --target: 1-sigma fractional error of the map's flux scale, carried into the intervals "
        "(default: the band's nominal accuracy, 0.05 below 211 GHz, 0.10 to 373 GHz, 0.20 above; 0: exact)",
    )
    p.add_argument(
        "--observing-draws",
        type=int,
        default=None,
        help="with --target: repeat the match over this many draws of the distance, flux scale and (when not "
        "known) recoverable scale, and pool them (default 12; 0: take them as exact)",
    )
    p.add_argument(
        "--misspecification",
        type=path_argument,
        default=None,
        metavar="FILE",
        help="with --target: widen the calibrated intervals further by the terms in FILE (out_of_family.json from "
        "`protolib out-of-family`, or a JSON object of parameter -> term), for physics the bank does not hold",
    )


def _add_match_search_options(p) -> None:
    """How the bank is searched: how many matches, their weights, the backend and the search of an observation."""
    add_setting(p, "--top-k", key="matching.top_k", type=int, help="number of best matches (0: all above --threshold)")
    p.add_argument("--threshold", type=float, default=None, help="keep only matches with similarity at least this")
    add_setting(
        p,
        "--weight-temperature",
        key="matching.weight_temperature",
        type=float,
        help="weight matches by exp((s - s_best) / T) in the summaries and corner plot (null: equal weights)",
    )
    add_setting(
        p, "--backend", key="matching.backend", choices=["auto", "exact", "faiss"], help="nearest-neighbour search"
    )
    add_setting(
        p,
        "--search",
        key="matching.search",
        choices=["auto", "exhaustive", "tiered"],
        help="with --target: re-embed the whole bank at the observation's beam and noise, or re-rank a shortlist "
        "from the nearest pre-embedded resolution tier (auto: tiered from matching.tiered_above bank images)",
    )


def _add_match_target_options(p) -> None:
    """The target: an observation (one map per band) or a bank system; the observation's distance and preparation."""
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--target",
        type=path_argument,
        action="append",
        help="observation to match (FITS image); give it once per band for maps of one source in several bands "
        "(--target b6.fits --target b3.fits): each goes to the bank band nearest its frequency and they are "
        "matched jointly (embedded together by a band-dropout network, siamese.model.bands: all; a one-band "
        "network searches its own band)",
    )
    target.add_argument("--target-system", type=int, help="a bank system to match (its own system is never matched)")
    p.add_argument("--projection", type=int, default=0, help="projection of --target-system (default 0)")
    p.add_argument("--distance", type=float, help="distance to the observed source in pc (needed with --target)")
    _add_observation_options(p, "with --target: ")


def _match(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from ..pipelines.match import run_match

    config = run_config(args)
    report = run_reporting_warnings(
        "match",
        lambda: run_match(
            args.model,
            args.bank,
            args.out,
            target=args.target,
            target_system=args.target_system,
            projection=args.projection,
            distance_pc=args.distance,
            matching=config.matching,
            threshold=args.threshold,
            device=args.device,
            posterior=config.evaluation if args.posterior_estimate else None,
            distance_error_pc=args.distance_error,
            flux_calibration=args.flux_calibration,
            observing_draws=args.observing_draws,
            misspecification=args.misspecification,
            observation_options={
                "centre": args.centre,
                "beam": beam_argument(args.beam, _first(args.target)),
                "noise_rms_jy_beam": args.noise,
                **real_file_options(args),
            },
        ),
    )
    _print_match_report(args, report)


def _first(targets) -> str:
    return str(targets[0]) if targets else ""


def bands_note(bands: dict) -> str:
    """One line: the bands matched jointly, how they were searched (every band jointly by a band-dropout network, or
    one band by a one-band network, and which), and each band's reduced chi-square for the best match."""
    parts = ", ".join(f"{m['bank_band_ghz']:g} GHz {m['best_match_reduced_chi2']:.3g}" for m in bands["maps"])
    index = bands["spectral_index"]
    said = (
        ""
        if index["target_median"] is None
        else (
            f"; spectral index {index['bands_ghz'][0]:g}-{index['bands_ghz'][1]:g} GHz: target median "
            f"{index['target_median']:.2f} (spectral_index.png)"
        )
    )
    if bands.get("search") == "jointly":
        searched = (
            f"searched jointly in every band ({' + '.join(f'{f:g}' for f in bands['searched_bands_ghz'])} GHz) by the "
            "band-dropout network"
        )
    else:
        searched = (
            f"searched in {bands['searched_band_ghz']:g} GHz alone (a one-band network; its band is "
            f"{bands['reference_band_ghz']:g} GHz)"
        )
    return f"{len(bands['maps'])} bands matched jointly, {searched}; the best match's reduced chi-square by band: " + (
        f"{parts}{said}."
    )


def _print_match_report(args, report: dict) -> None:
    verdict, fit, overall = report["out_of_distribution"], report["goodness_of_fit"], report["verdict"]
    print(
        f"Wrote {report['n_matches']} matches and their summaries to {shown_path(args.out)}/ (best similarity "
        f"{report['best_similarity']:.3f})."
    )
    preparation = (report["inputs"].get("target") or {}).get("preparation")
    if preparation:
        print(preparation_notes(preparation))
    if report.get("bands"):
        print(bands_note(report["bands"]))
    if report.get("detection"):
        say("match", report["detection"]["message"], report["detection"]["detected"])
    if report.get("bank_non_detections"):
        missing = report["bank_non_detections"]
        print(
            f"The bank: {100 * missing['fraction']:.1f}% of {missing['images_checked']} of its images (drawn at "
            f"random) hold no source above {missing['threshold_sigma']:g} times its noise (they are matched like the "
            "others)."
        )
    say("match", verdict["message"], not verdict["is_out_of_distribution"])
    if fit is not None:
        say("match", fit["message"], fit["reproduces"])
        if (report.get("distribution") or {}).get("reproducing_matches") is not None:
            print(report["distribution"]["message"])
    if report.get("interval_calibration"):
        settings = report.get("settings", {})
        if settings.get("distribution_k") and settings.get("matches_searched", 0) > settings["distribution_k"]:
            print(
                f"The distributions are the best {settings['distribution_k']} of the {settings['matches_searched']} "
                "matches searched: "
                "the number whose calibrated intervals are narrowest on the reference images (report.json "
                "settings.k_scores)."
            )
        print(calibration_note(report["interval_calibration"]))
    if report.get("observing_uncertainty"):
        print(observing_note(report["observing_uncertainty"]))
    say("match", f"Verdict: {overall['message']}", overall["trusted"])
