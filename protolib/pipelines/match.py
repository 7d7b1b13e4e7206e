"""The match stage: one target (an observation or a bank system) matched against a bank, with its report.

:func:`run_match` is what ``protolib match`` does: it prepares the target, matches it with a trained
Siamese network (:class:`~protolib.matching.Matcher`), judges the matches in embedding space and in
image space (:func:`~protolib.matching.fit_matches`), and writes the products with
:func:`write_match_report`. :func:`matching_settings` reads the ``matching:`` section of a run
configuration.
"""

from __future__ import annotations

import platform
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .. import __version__
from ..bank import Bank
from ..distributions import (
    ParameterSummary,
    match_images,
    match_rows,
    prior_parameters,
    similarity_weights,
    summarise,
    write_csv,
)
from ..evaluation import EvaluationSettings
from ..goodness_of_fit import DETECTION_SIGMA, Detection, detection, non_detection_fraction
from ..matching import (
    BandTargets,
    Matcher,
    Matches,
    MatchingSettings,
    ObservationTarget,
    TieredMatcher,
    apply_transform,
    fit_matches,
    map_bands,
    match_parameters,
    prepare_band_targets,
    prepare_observation_target,
    spectral_indices,
    truth_parameters,
)
from ..matching.observing import (
    OBSERVING_DRAWS,
    ObservingDraws,
    ObservingUncertainty,
    observing_uncertainty,
    widening_by_source,
)
from ..npe import observation_posterior
from ..observation import prepared_file
from ..out_of_family import read_terms, with_terms
from ..plots.corner import plot_corner
from ..plots.gallery import plot_band_gallery, plot_gallery, plot_spectral_index
from ..runtime import ProtolibInputError, output_folder, typed_settings, write_figure, write_json

__all__ = ["matching_settings", "run_match", "write_match_report"]


def matching_settings(config) -> MatchingSettings:
    """The configuration's matching settings (defaults where its ``matching:`` section is silent)."""
    return typed_settings(MatchingSettings, config.section("matching"), f"{config.path} [matching]")


def run_match(
    model_path: str | Path,
    bank_path: str | Path,
    out_dir: str | Path,
    *,
    target: str | Path | Sequence[str | Path] | None = None,
    target_system: int | None = None,
    projection: int = 0,
    distance_pc: float | None = None,
    top_k: int | None = 200,
    threshold: float | None = None,
    weight_temperature: float | None = None,
    backend: str = "auto",
    device: str | None = None,
    progress: bool = True,
    observation_options: dict | None = None,
    limit_percentile: float = 5.0,
    matching: MatchingSettings | None = None,
    posterior_estimate: bool = False,
    posterior_settings: EvaluationSettings | None = None,
    distance_error_pc: float | None = None,
    flux_calibration: float | None = None,
    observing_draws: int | None = None,
    misspecification: str | Path | Mapping[str, float] | None = None,
) -> dict:
    """Match one target (an observation FITS file or a bank system) and write every product to ``out_dir``.

    What ``protolib match`` does: ``matches.csv``, ``summary.csv``, ``corner.png``, ``gallery.png``
    and ``report.json`` (see :func:`write_match_report`). The corner plot shows the parameters the
    network's target similarity was computed from, and the inclination. ``observation_options`` go to
    :func:`~protolib.matching.prepare_observation_target` (``centre``, ``beam``, ``noise_rms_jy_beam``).
    ``limit_percentile`` is the out-of-distribution limit of :meth:`~protolib.matching.Matcher.check`.
    ``matching`` chooses how an observation is searched (:attr:`~protolib.matching.MatchingSettings.search`:
    the whole bank re-embedded at its beam and noise, or a shortlist from the nearest resolution tier
    re-ranked, :class:`~protolib.matching.TieredMatcher`); without it, exhaustively.
    ``posterior_estimate``: for an observation, also train the neural posterior estimate of
    :func:`~protolib.npe.observation_posterior` and put its intervals in ``report.json``
    (``posterior_estimate``), beside the matches', with ``posterior_settings`` (the ``evaluation:``
    section's ``npe_max_epochs``, ``npe_samples``, ``widening_candidates`` and ``seed``; default: their defaults).
    ``distance_error_pc``, ``flux_calibration`` (default: the band's nominal error) and an unknown recoverable
    scale enter an observation's intervals: the match is repeated over ``observing_draws`` draws of them (default
    12; 0: none) and pooled (:mod:`~protolib.matching.observing`; ``summary.csv`` and ``corner.png`` then describe
    the pooled matches, ``observing_draws.csv`` lists them, ``report.json`` ``observing_uncertainty`` says what each
    widened).
    ``misspecification``: per-parameter terms (or the ``out_of_family.json`` holding them,
    :func:`~protolib.out_of_family.read_terms`) that widen an observation's calibrated intervals further, for physics
    the
    bank does not hold (:mod:`protolib.out_of_family`); ``report.json`` records each in ``calibration``.
    ``target`` may be maps of one source in several bands (a list), matched jointly: see :func:`_match_bands`.
    Returns the report written to ``report.json``.
    """
    target = _checked_target(
        model_path, target, target_system, top_k, threshold, observation_options, posterior_estimate
    )
    terms = read_terms(misspecification) if isinstance(misspecification, (str, Path)) else dict(misspecification or {})
    with Bank(bank_path) as bank, output_folder(out_dir, "match") as staging:
        report = _match_into(
            staging,
            model_path,
            bank,
            target,
            target_system,
            projection,
            distance_pc,
            top_k,
            threshold,
            weight_temperature,
            dict(backend=backend, device=device, progress=progress),
            observation_options,
            limit_percentile,
            matching,
            posterior_estimate,
            posterior_settings,
            dict(
                distance_error_pc=distance_error_pc,
                flux_calibration=flux_calibration,
                n_draws=observing_draws,
                misspecification=terms,
            ),
        )
        # a bank rewritten meanwhile: refused, so the report never names a file it does not come from
        bank.check_unchanged()
        return report


def _checked_target(model_path, target, target_system, top_k, threshold, observation_options, posterior_estimate):
    """``target`` as given for one map (a path) or none, as a list for several maps (a list of one is that one map),
    with :func:`run_match`'s arguments checked (:func:`_check_arguments`, and for several maps
    :func:`_check_band_options`)."""
    if target is not None and not isinstance(target, (str, Path)):
        targets = list(target)
        target = None if not targets else targets[0] if len(targets) == 1 else targets
    _check_arguments(model_path, target, target_system, top_k, threshold)
    if isinstance(target, list):
        _check_band_options(observation_options or {}, posterior_estimate)
    return target


def _check_band_options(observation_options: dict, posterior_estimate: bool) -> None:
    """Refuse, in one line, settings that describe one map when several are matched jointly."""
    said = {
        "beam": "--beam",
        "noise_rms_jy_beam": "--noise",
        "frequency_ghz": "--frequency",
        "max_scale_arcsec": "--max-scale",
    }
    given = [flag for key, flag in said.items() if observation_options.get(key) is not None]
    if given:
        raise ProtolibInputError(
            f"{', '.join(given)} describe{'s' if len(given) == 1 else ''} one map, and several --target maps are "
            "matched jointly, each with its own header's beam, noise and frequency; leave them out, or match each map "
            "alone."
        )
    if posterior_estimate:
        raise ProtolibInputError(
            "--posterior-estimate takes one map; it is not made for several --target maps yet: match the map "
            "of one band with it."
        )


def _check_arguments(model_path, target, target_system, top_k, threshold) -> None:
    """Refuse, in one line, arguments :func:`run_match` cannot use, before any file is opened."""
    if (target is None) == (target_system is None):
        raise ProtolibInputError("Give exactly one target: an observation file or a bank system.")
    if top_k is not None and top_k < 1:
        raise ProtolibInputError(
            f"--top-k must be 0 (all above --threshold) or a positive number of matches, got {top_k}."
        )
    if threshold is not None and not (isinstance(threshold, (int, float)) and -1.0 <= threshold <= 1.0):
        raise ProtolibInputError(
            f"--threshold must be a similarity between -1 and 1 (the cosine of two embeddings), got {threshold}."
        )
    if not Path(model_path).exists():
        raise ProtolibInputError(
            f"Model file {model_path} does not exist. Train one first (notebook 03 or `protolib train-siamese`)."
        )


@dataclass
class _Searched:
    """A target searched: its matcher and matches, the image searched, its truths and description, the bank the report
    reads (a band of several: the searched one), and for an observation its preparation, observing draws and flux
    tolerance (one per band for maps in several bands, ``bands``)."""

    matcher: Matcher
    matches: Matches
    image: np.ndarray
    truths: dict | None
    described: dict
    bank: Bank
    observation: ObservationTarget | None = None
    pooled: ObservingDraws | None = None
    flux_tolerance: float | list = 0.0
    bands: BandTargets | None = None

    def close(self) -> None:
        """Close the bands of a bank of several that were opened for this target."""
        if self.bands is not None:
            self.bands.close()
        elif self.bank.band_index is not None:
            self.bank.close()


def _one_band(bank: Bank, target, observation_options: dict | None) -> Bank:
    """``bank`` when it has one band; else its band nearest the map ``target``'s frequency (``--frequency``, else the
    file's),
    or for a bank system (``target`` ``None``) its reference band, the networks' (opened anew: close it)."""
    if bank.n_bands == 1:
        return bank
    if target is None:
        return bank.band(float(bank.attrs["frequency_ghz"]))
    given = (observation_options or {}).get("frequency_ghz")
    return (
        bank.band(given)
        if given
        else bank.band(map_bands([target], bank, (observation_options or {}).get("centre"))[0].band_ghz)
    )


def _match_into(
    out_dir: Path,
    model_path,
    bank: Bank,
    target,
    target_system,
    projection,
    distance_pc,
    top_k,
    threshold,
    weight_temperature,
    options: dict,
    observation_options: dict | None,
    limit_percentile: float = 5.0,
    matching: MatchingSettings | None = None,
    posterior_estimate: bool = False,
    posterior_settings: EvaluationSettings | None = None,
    observing: dict | None = None,
) -> dict:
    """The body of :func:`run_match`, writing into the staging folder ``out_dir``."""
    inputs = {"model": str(Path(model_path).resolve()), "bank": str(Path(bank.path).resolve())}
    search = (model_path, matching, options, top_k, threshold, observing or {})
    if isinstance(target, list):
        searched = _match_bands(bank, target, distance_pc, observation_options, *search)
    else:
        # a bank of several bands: the map's (a bank system: the networks')
        band = _one_band(bank, target, observation_options)
        try:
            if target_system is not None:
                found = _match_bank_system(model_path, band, target_system, projection, top_k, threshold, options)
                searched = _Searched(*found, band)
            else:
                searched = _match_observation(band, target, distance_pc, observation_options, *search)
        except BaseException:
            if band is not bank:
                band.close()
            raise
    inputs["target"] = searched.described
    try:
        return _judge_and_report(
            out_dir,
            searched,
            inputs,
            top_k,
            threshold,
            weight_temperature,
            limit_percentile,
            posterior_estimate,
            posterior_settings,
            observing,
            options,
        )
    finally:
        searched.close()


def _match_observation(
    bank: Bank,
    target,
    distance_pc,
    observation_options,
    model_path,
    matching,
    options,
    top_k,
    threshold,
    observing: dict,
    observation: ObservationTarget | None = None,
) -> _Searched:
    """An observation prepared (unless ``observation`` is), searched, and matched again at draws of its observing
    settings."""
    if observation is None:
        observation = prepare_observation_target(target, bank, distance_pc, **(observation_options or {}))
    matcher = _observation_matcher(model_path, bank, observation, matching, options)
    image, truths = observation.image, observation.truths
    matches = matcher.match(image, top_k=top_k, threshold=threshold)
    described = {
        "file": str(Path(target).resolve()),
        "distance_pc": distance_pc,
        "preparation": observation.info,
        "true_parameters_in_file": truths is not None,
    }
    uncertainty = _observing_uncertainty(target, distance_pc, observation.info, observing)
    flux_tolerance = 2.0 * uncertainty.flux_calibration  # the image-space fit may rescale a match within 2 sigma
    pooled = None
    if uncertainty.sources:
        pooled = _observing_draws(
            model_path, bank, target, uncertainty, observation_options, matching, options, top_k, threshold
        )
    return _Searched(matcher, matches, image, truths, described, bank, observation, pooled, flux_tolerance)


def _match_bands(
    bank: Bank,
    targets: list,
    distance_pc,
    observation_options,
    model_path,
    matching,
    options,
    top_k,
    threshold,
    observing: dict,
) -> _Searched:
    """Maps of one source in several bands, matched jointly: each is prepared in the bank's band nearest its frequency,
    with
    its own beam, noise and recoverable scale (:func:`~protolib.matching.prepare_band_targets`); the one in the band the
    networks were trained on (else the nearest) is searched and drawn as one map is; the image-space fit, the verdict
    and
    the calibration's references then use every band, each with its own flux tolerance (``matches.csv`` gains
    ``reduced_chi2_<band>`` columns, ``report.json`` ``bands``, ``gallery.png`` a row per band, and
    ``spectral_index.png``
    is written: :func:`write_match_report`)."""
    bands = prepare_band_targets(targets, bank, distance_pc, **(observation_options or {}))
    try:
        path = bands.maps[bands.search].path
        searched = _match_observation(
            bands.banks[bands.search],
            path,
            distance_pc,
            observation_options,
            model_path,
            matching,
            options,
            top_k,
            threshold,
            observing,
            observation=bands.targets[bands.search],
        )
        tolerances = [
            2.0 * _observing_uncertainty(m.path, distance_pc, t.info, dict(observing, n_draws=0)).flux_calibration
            for m, t in zip(bands.maps, bands.targets)
        ]
    except BaseException:
        bands.close()
        raise
    described = {
        **searched.described,
        "files": [str(m.path.resolve()) for m in bands.maps],
        "bands_ghz": bands.frequencies_ghz,
        "searched_band_ghz": bands.frequencies_ghz[bands.search],
        "reference_band_ghz": bands.reference_ghz,
    }
    return replace(searched, described=described, flux_tolerance=tolerances, bands=bands)


def _judge_and_report(
    out_dir: Path,
    searched: _Searched,
    inputs: dict,
    top_k,
    threshold,
    weight_temperature,
    limit_percentile,
    posterior_estimate,
    posterior_settings,
    observing,
    options,
) -> dict:
    """The matches judged (embedding check, image-space fit and calibration, detection) and the report written."""
    matcher, bank, observation, bands = searched.matcher, searched.bank, searched.observation, searched.bands
    _refuse_no_matches(searched.matches, threshold, bank)
    verdict = matcher.check(searched.matches, limit_percentile=limit_percentile)
    fit = fit_matches(
        matcher,
        searched.image if bands is None else bands.images(),
        searched.matches,
        observation=observation,
        flux_tolerance=searched.flux_tolerance,
        bands=bands,
    )
    matches, pooled, fit = _distribution_matches(searched.matches, searched.pooled, fit)
    bank_noise = bank.instrument.noise_rms_jy_beam if bank.unit == "Jy/beam" else 0.0
    noise = observation.noise_rms_jy_beam if observation is not None else bank_noise
    found = detection(searched.image, noise) if noise > 0 else None
    settings = _match_settings(
        matcher, top_k, threshold, searched.flux_tolerance, len(searched.matches), len(matches), fit
    )
    trained_on = (matcher.checkpoint.get("target") or {}).get("parameters") or []
    corner_parameters = [p for p in trained_on if p in bank.parameters] + ["inclination"] if trained_on else None
    fitted = (
        {}
        if fit is None
        else {
            "reduced_chi2": fit.reduced_chi2,
            "fit_verdict": fit.verdict,
            "gallery_residuals": fit.residuals,
            "calibration": with_terms(
                fit.calibration, (observing or {}).get("misspecification") if observation else None
            ),
        }
    )
    if bands is not None:
        fitted.update(bands=bands, reduced_chi2_by_band=fit.reduced_chi2_by_band)
    report = write_match_report(
        out_dir,
        bank,
        matches,
        searched.image,
        verdict=verdict,
        truths=searched.truths,
        weight_temperature=weight_temperature,
        inputs=inputs,
        settings=settings,
        corner_parameters=corner_parameters,
        match_image_transform=matcher.transform,
        detected=found,
        observing=pooled,
        bank_non_detections=bank_non_detections(bank, bank_noise) if bank_noise > 0 else None,
        **fitted,
    )
    # beside the matches, in the same report (rewritten in the staging folder)
    if posterior_estimate and observation is not None:
        report["posterior_estimate"] = observation_posterior(
            matcher, searched.image, settings=posterior_settings, progress=options.get("progress", False)
        )
        write_json(report, out_dir / "report.json", strict=True, allow_nan=False)
    return report


def _match_settings(matcher: Matcher, top_k, threshold, flux_tolerance, searched: int, kept: int, fit) -> dict:
    """The report's ``settings``: how the target was searched and how many matches form the distribution."""
    return {
        "top_k": top_k,
        "threshold": threshold,
        "backend": matcher.index.backend,
        "device": str(matcher.index.device),
        "embedding_cache": str(matcher.embeddings.path) if matcher.embeddings.path else None,
        "search": "tiered" if isinstance(matcher, TieredMatcher) else "exhaustive",
        "fit_flux_tolerance": flux_tolerance,
        "matches_searched": searched,
        "distribution_k": kept,
        "k_scores": None if fit is None else fit.k_scores,
        **({"tier": str(matcher.tier), "shortlist": matcher.shortlist} if isinstance(matcher, TieredMatcher) else {}),
    }


def _corner_label(observing: ObservingDraws | None) -> str:
    """The corner plot's name for the matches: with observing draws, the matches of every draw pooled (so they can
    number as many as the bank's images without being the prior)."""
    return "best matches" if observing is None else f"best matches of {len(observing.matches)} observing draws, pooled"


def _distribution_matches(matches: Matches, pooled: ObservingDraws | None, fit):
    """The matches, observing draws and fit cut to the ``k`` best matches the calibration chose
    (:func:`~protolib.matching.fit_matches`):
    the distribution, ``matches.csv`` and the gallery are theirs; the verdict has already looked at every match
    searched."""
    if fit is None or fit.k is None or fit.k >= len(matches):
        return matches, pooled, fit
    k = fit.k
    if pooled is not None:
        pooled = ObservingDraws(pooled.uncertainty, pooled.draws, [m.head(k) for m in pooled.matches])
    by_band = None if fit.reduced_chi2_by_band is None else fit.reduced_chi2_by_band[:, :k]
    return (
        matches.head(k),
        pooled,
        replace(fit, reduced_chi2=fit.reduced_chi2[:k], residuals=fit.residuals[:k], reduced_chi2_by_band=by_band),
    )


def _observing_uncertainty(target, distance_pc: float, preparation: dict, observing: dict) -> ObservingUncertainty:
    """The uncertainty of the observation's distance, flux scale and (when neither the user nor the file gave it)
    recoverable scale, with the band's nominal flux-calibration error unless one is given."""
    frequency = preparation.get("observed_frequency_ghz") or preparation.get("bank_frequency_ghz")
    # prepared by `observe`: its distance and recoverable scale are fixed, only its flux scale is uncertain
    if prepared_file(target):
        return observing_uncertainty(
            1.0,
            frequency_ghz=frequency,
            flux_calibration=observing.get("flux_calibration"),
            n_draws=0,
            source=str(target),
        )
    return observing_uncertainty(
        distance_pc,
        distance_error_pc=observing.get("distance_error_pc"),
        flux_calibration=observing.get("flux_calibration"),
        frequency_ghz=frequency,
        beam_major_arcsec=preparation["observed_beam_arcsec"][0],
        max_scale_known=preparation.get("max_scale_source") in ("given", "file"),
        estimated_scale=preparation.get("max_scale_estimate")
        if str(preparation.get("max_scale_source", "")).startswith("estimated")
        else None,
        n_draws=OBSERVING_DRAWS if observing.get("n_draws") is None else observing["n_draws"],
        source=str(target),
    )


def _observing_draws(
    model_path,
    bank: Bank,
    target,
    uncertainty: ObservingUncertainty,
    observation_options: dict | None,
    matching: MatchingSettings | None,
    options: dict,
    top_k,
    threshold,
) -> ObservingDraws:
    """The observation matched again at each draw of its uncertain settings (prepared, re-embedded and searched like
    the nominal match; the draws' bank embeddings are not cached, and the preparation's warnings, said once for the
    nominal match, are not repeated)."""
    found, draws = [], uncertainty.draws()
    quiet = dict(options, progress=False)
    for draw in tqdm(draws, desc="Observing draws", unit="draw", disable=not options.get("progress", True)):
        settings = dict(observation_options or {})
        if draw.max_scale_arcsec is not None:
            settings["max_scale_arcsec"] = draw.max_scale_arcsec
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            observation = prepare_observation_target(
                target, bank, draw.distance_pc, flux_factor=draw.flux_factor, **settings
            )
        matcher = _observation_matcher(model_path, bank, observation, matching, quiet, cache=False)
        found.append(matcher.match(observation.image, top_k=top_k, threshold=threshold))
    return ObservingDraws(uncertainty, draws, found)


def _refuse_no_matches(matches: Matches, threshold: float | None, bank: Bank) -> None:
    """Refuse a target left with no match: nothing above ``threshold``, or a bank with no other image."""
    if len(matches.similarity):
        return
    if threshold is not None:
        raise ProtolibInputError(
            f"No bank image reaches a similarity of {threshold:g} (--threshold); lower it, or give --top-k instead."
        )
    raise ProtolibInputError(
        f"Bank {bank.path} holds no image to match the target against; a bank system is matched against the "
        "other systems, so the bank needs at least two."
    )


def bank_non_detections(bank: Bank, noise_rms_jy_beam: float, most: int = 2000, seed: int = 0) -> dict:
    """The fraction of the bank's images with no source above :data:`~protolib.goodness_of_fit.DETECTION_SIGMA` times
    its noise, from at most ``most`` images drawn at random (seeded). They stay in the bank, and a target
    like them is told it holds no detection."""
    n_images = bank.n_systems * bank.n_projections
    rows = np.sort(np.random.default_rng(seed).choice(n_images, size=min(most, n_images), replace=False))
    images = bank.images_at(rows // bank.n_projections, rows % bank.n_projections)
    return {
        "fraction": non_detection_fraction(images, noise_rms_jy_beam),
        "images_checked": int(len(rows)),
        "threshold_sigma": DETECTION_SIGMA,
    }


def _observation_matcher(
    model_path, bank: Bank, observation, matching: MatchingSettings | None, options: dict, cache: bool = True
) -> Matcher:
    """The matcher for an observation: tiered when ``matching`` says so for this bank's size, else exhaustive
    (its bank embeddings cached beside the model when ``cache``)."""
    if matching is not None and matching.tiered(bank.n_systems * bank.n_projections):
        return TieredMatcher.from_model(model_path, bank, transform=observation.transform, settings=matching, **options)
    return Matcher.from_model(
        model_path,
        bank,
        transform=observation.transform,
        transform_key=observation.transform_key,
        cache=cache,
        **options,
    )


def _match_bank_system(model_path, bank: Bank, system: int, projection: int, top_k, threshold, options: dict):
    """A bank system's matches (never from its own system): the matcher, the matches, the target image, its true
    parameters and the report's description of the target."""
    if not 0 <= system < bank.n_systems or not 0 <= projection < bank.n_projections:
        raise ProtolibInputError(
            f"Bank {bank.path} has systems 0..{bank.n_systems - 1} and projections 0..{bank.n_projections - 1}; "
            f"got system {system}, projection {projection}."
        )
    if bank.n_systems < 2:
        raise ProtolibInputError(
            f"Bank {bank.path} has one system; a bank system is matched against the other systems, so --target-system "
            "needs a bank of at least two (or match an observation with --target)."
        )
    matcher = Matcher.from_model(model_path, bank, **options)
    matches = matcher.match_system(system, projection, top_k=top_k, threshold=threshold)
    image = bank.images[system, projection]
    truths = truth_parameters(bank, system, projection)
    described = {
        "system": system,
        "projection": projection,
        "system_id": int(bank.system_id[system]),
        "part_of_model_split": matcher.training_part(system),
    }
    return matcher, matches, image, truths, described


def write_match_report(
    out_dir: str | Path,
    bank: Bank,
    matches: Matches,
    target_image: np.ndarray,
    *,
    verdict,
    truths: Mapping[str, float] | None = None,
    weight_temperature: float | None = None,
    inputs: Mapping | None = None,
    settings: Mapping | None = None,
    n_gallery: int = 11,
    corner_parameters: Sequence[str] | None = None,
    match_image_transform=None,
    reduced_chi2: np.ndarray | None = None,
    fit_verdict=None,
    gallery_residuals: np.ndarray | None = None,
    calibration: Mapping[str, dict] | None = None,
    detected: Detection | None = None,
    bank_non_detections: Mapping | None = None,
    observing: ObservingDraws | None = None,
    bands: BandTargets | None = None,
    reduced_chi2_by_band: np.ndarray | None = None,
) -> dict:
    """Write ``matches.csv``, ``summary.csv``, ``corner.png``, ``gallery.png`` and ``report.json`` (last) to
    ``out_dir``, atomically.

    Arguments:
        out_dir: the folder (created when missing).
        bank: the bank searched.
        matches: the target's best matches; ``target_image``: ``(H, W)`` the target as matched.
        verdict: the :class:`~protolib.matching.OutOfDistributionCheck` of the matches.
        truths: the target's true parameters, when it is simulated; ``inputs``, ``settings``: recorded as given.
        weight_temperature: weight matches by similarity with this temperature (``None``: equal weights).
        n_gallery: matches shown in the gallery.
        corner_parameters: the corner plot's parameters (default: every bank parameter and the
            inclination); ``summary.csv`` always has them all.
        match_image_transform: shows the matches in the gallery as the network saw them (e.g. at an
            observation's beam and noise).
        reduced_chi2: ``(n_matches,)`` each match's reduced chi-square against the target (a column of
            ``matches.csv``); ``fit_verdict``: the :class:`~protolib.goodness_of_fit.FitVerdict`;
            ``gallery_residuals``: the gallery matches' residual maps in noise units (a row under each).
        calibration: name -> the calibration of :func:`~protolib.matching.reference_calibration`;
            ``summary.csv`` then holds the calibrated (widened) ranges, and ``report.json`` the calibration.
        detected: the target's :class:`~protolib.goodness_of_fit.Detection` (``None``: a noiseless bank); an undetected
            target is never trusted. ``bank_non_detections``: :func:`bank_non_detections`.
        observing: the target matched at draws of its uncertain observing settings: ``summary.csv`` and ``corner.png``
    then pool
            them, ``observing_draws.csv`` lists them, ``report.json`` says what each widened
    (``observing_uncertainty``).
        bands, reduced_chi2_by_band: a target in several bands and each band's chi-square ``(bands, n_matches)``:
    :func:`_band_products`.

    Returns:
        The report (as written to ``report.json``).
    """
    out_dir = Path(out_dir)
    if len(matches) == 0:
        raise ProtolibInputError("No matches to report: lower the similarity threshold or raise --top-k.")
    prior = prior_parameters(bank)
    described = matches if observing is None else observing.pooled()[0]
    samples = match_parameters(bank, described)
    weights = _summary_weights(described, observing, weight_temperature)
    summaries = _write_tables(
        out_dir,
        bank,
        matches,
        samples,
        prior,
        weights,
        truths,
        calibration,
        reduced_chi2,
        None if bands is None else dict(zip(bands.labels, reduced_chi2_by_band)),
    )
    observing_report = (
        None if observing is None else _observing_report(out_dir, bank, observing, matches, samples, weights)
    )
    corner_parameters = list(corner_parameters or [*bank.physical_parameters, "inclination"])
    figures = {
        "corner.png": plot_corner(
            samples,
            prior,
            weights=weights,
            truths=truths,
            parameter_info=bank.parameter_info,
            parameters=corner_parameters,
            label=_corner_label(observing),
        )
    }
    bands_report = _galleries(
        figures,
        bank,
        matches.head(n_gallery) if bands is None else matches,
        target_image,
        match_image_transform,
        gallery_residuals,
        reduced_chi2,
        bands,
        reduced_chi2_by_band,
    )
    for name, fig in figures.items():
        write_figure(fig, out_dir / name, dpi=110)
    files = ["matches.csv", "summary.csv", *figures, "report.json"] + (
        [] if observing is None else ["observing_draws.csv"]
    )
    report = _report(
        bank,
        matches,
        summaries,
        verdict,
        fit_verdict,
        calibration,
        detected,
        bank_non_detections,
        inputs=dict(inputs or {}),
        settings=dict(settings or {}, weight_temperature=weight_temperature, corner_parameters=corner_parameters),
        files=sorted(files),
        observing=observing_report,
        **({} if bands is None else {"bands": bands_report}),
    )
    write_json(report, out_dir / "report.json", strict=True, allow_nan=False)
    return report


def _galleries(
    figures: dict,
    bank: Bank,
    shown: Matches,
    target_image,
    transform,
    residuals,
    reduced_chi2,
    bands: BandTargets | None,
    by_band,
) -> dict | None:
    """Add the gallery of the matches ``shown`` to ``figures`` (for a target in several bands, the matches' figures of
    :func:`_band_products`, and return the report's ``bands``)."""
    if bands is None:
        figures["gallery.png"] = _gallery(
            bank,
            shown,
            target_image,
            transform,
            residuals,
            None if reduced_chi2 is None else reduced_chi2[: len(shown)],
        )
        return None
    band_figures, said = _band_products(bank, bands, shown, residuals, reduced_chi2, by_band)
    figures.update(band_figures)
    return said


def _summary_weights(
    matches: Matches, observing: ObservingDraws | None, weight_temperature: float | None
) -> np.ndarray | None:
    """The summaries' weight of each match: by similarity with ``weight_temperature``, and the same total for each
    observing draw (``None``: equal weights)."""
    weights = None if weight_temperature is None else similarity_weights(matches.similarity, weight_temperature)
    if observing is None:
        return weights
    draw_weights = observing.pooled()[1]
    if weights is not None:  # similarity weights within each draw, each draw's total kept
        draw = observing.draw_of_each_match()
        totals = np.bincount(draw, weights=weights)
        draw_weights = weights / totals[draw] / len(totals)
    return draw_weights


def _observing_report(
    out_dir: Path, bank: Bank, observing: ObservingDraws, matches: Matches, pooled_samples: dict, pooled_weights
) -> dict:
    """Write ``observing_draws.csv`` (every draw's matches, with the draw's settings) and return the report's
    ``observing_uncertainty``: the settings' uncertainty, the draws, and how much each widened each interval."""
    rows = []
    for i, (draw, found) in enumerate(zip(observing.draws, observing.matches)):
        rows += [{"draw": i, **asdict(draw), **row} for row in match_rows(bank, found)]
    write_csv(rows, out_dir / "observing_draws.csv")
    names = [*bank.physical_parameters, "inclination"]
    weights = np.full(len(pooled_samples[names[0]]), 1.0) if pooled_weights is None else pooled_weights
    widening = widening_by_source(
        observing.uncertainty,
        observing.draws,
        [match_parameters(bank, m) for m in observing.matches],
        match_parameters(bank, matches),
        pooled_samples,
        weights,
        names,
        bank.parameter_info,
    )
    return {**observing.uncertainty.to_dict(), "draws": [asdict(d) for d in observing.draws], "parameters": widening}


def _write_tables(
    out_dir: Path,
    bank: Bank,
    matches: Matches,
    samples: dict,
    prior: dict,
    weights,
    truths,
    calibration,
    reduced_chi2,
    by_band: Mapping[str, np.ndarray] | None = None,
) -> list[ParameterSummary]:
    """Write ``matches.csv`` (one row per match, with its reduced chi-square when known, and each band's, ``by_band``:
    band
    label -> ``(n_matches,)``) and ``summary.csv`` (the summaries, widened as calibrated when ``calibration`` is given);
    return the summaries."""
    widening = None if calibration is None else {name: c["widening"] for name, c in calibration.items()}
    summaries = summarise(
        samples, weights=weights, prior=prior, truths=truths, parameter_info=bank.parameter_info, widening=widening
    )
    rows = match_rows(bank, matches)
    if reduced_chi2 is not None:
        for i, (row, value) in enumerate(zip(rows, reduced_chi2)):
            row["reduced_chi2"] = float(value)
            row.update({f"reduced_chi2_{label}": float(values[i]) for label, values in (by_band or {}).items()})
    write_csv(rows, out_dir / "matches.csv")
    write_csv(summaries, out_dir / "summary.csv")
    return summaries


def _gallery(bank: Bank, shown: Matches, target_image: np.ndarray, transform, residuals, reduced_chi2):
    """The gallery figure of the matches ``shown``, as the network saw them through ``transform`` (the same noise as
    in the embedding, when seeded by row; ``None``: as in the bank), captioned with their system and inclination
    [deg]."""
    images = match_images(bank, shown)
    if transform is not None:
        images = apply_transform(transform, images, shown.system * bank.n_projections + shown.projection)
    inclination = bank.inclination[shown.system, shown.projection]
    return plot_gallery(
        target_image,
        images,
        shown.similarity,
        captions=[f"system {s}, i = {i:.0f} deg" for s, i in zip(shown.system, inclination)],
        pixel_size_au=bank.pixel_size_au if np.isfinite(bank.pixel_size_au) else None,
        residuals=residuals,
        reduced_chi2=reduced_chi2,
        unit="Jy/beam" if transform is not None else bank.unit,
    )


BAND_GALLERY_MATCHES = 6  # matches shown in a gallery of several bands (two rows per band)
SPECTRAL_INDEX_MATCHES = 4  # best matches shown beside the target's spectral index


def _band_products(
    bank: Bank,
    bands: BandTargets,
    matches: Matches,
    residuals: np.ndarray,
    reduced_chi2: np.ndarray,
    by_band: np.ndarray,
) -> tuple[dict, dict]:
    """The figures of a target in several bands (``gallery.png``: every band of each match and its residuals;
    ``spectral_index.png``) and the report's ``bands``: each map, its band, whether it was searched, and its reduced
    chi-square for the best match (the lowest joint one) and over the distribution's matches; the spectral indices."""
    shown = matches.head(BAND_GALLERY_MATCHES)
    rows = shown.system * bank.n_projections + shown.projection
    images = np.stack(
        [
            apply_transform(t.transform, b.images_at(shown.system, shown.projection), rows)
            for t, b in zip(bands.targets, bands.banks)
        ],
        axis=1,
    )
    inclination = bank.inclination[shown.system, shown.projection]
    captions = [f"system {s}, i = {i:.0f} deg" for s, i in zip(shown.system, inclination)]
    gallery = plot_band_gallery(
        bands.images(),
        images,
        shown.similarity,
        band_names=[f"{f:g} GHz" for f in bands.frequencies_ghz],
        residuals=residuals[: len(shown)],
        reduced_chi2=reduced_chi2[: len(shown)],
        reduced_chi2_by_band=by_band[:, : len(shown)],
        searched=bands.search,
        captions=captions,
        pixel_size_au=bank.pixel_size_au if np.isfinite(bank.pixel_size_au) else None,
    )
    best = matches.head(SPECTRAL_INDEX_MATCHES)
    target_index, match_index = spectral_indices(bands, best.system, best.projection)
    index = plot_spectral_index(
        target_index.alpha,
        match_index.alpha,
        low_ghz=target_index.low_ghz,
        high_ghz=target_index.high_ghz,
        beam_arcsec=float(np.sqrt(target_index.beam.major_arcsec * target_index.beam.minor_arcsec)),
        captions=[f"#{k + 1} system {s}" for k, s in enumerate(best.system)],
        sigma=target_index.sigma,
    )
    k = int(np.argmin(reduced_chi2))
    maps = [
        {
            "file": str(m.path.resolve()),
            "observed_frequency_ghz": m.observed_ghz,
            "bank_band_ghz": m.band_ghz,
            "searched": b == bands.search,
            "noise_rms_jy_beam": t.noise_rms_jy_beam,
            "beam_arcsec": [
                t.resolution.target_beam.major_arcsec,
                t.resolution.target_beam.minor_arcsec,
                t.resolution.target_beam.position_angle_deg,
            ],
            "best_match_reduced_chi2": float(by_band[b, k]),
            "median_reduced_chi2": float(np.median(by_band[b])),
            "preparation": t.info,
        }
        for b, (m, t) in enumerate(zip(bands.maps, bands.targets))
    ]
    said = {
        "frequencies_ghz": bands.frequencies_ghz,
        "reference_band_ghz": bands.reference_ghz,
        "searched_band_ghz": bands.frequencies_ghz[bands.search],
        "best_match_rank": k + 1,
        "maps": maps,
        "joint_reduced_chi2": "each band's chi-square in its own noise, summed over the bands' used pixels and divided "
        "by their number",
        "spectral_index": {
            "bands_ghz": [target_index.low_ghz, target_index.high_ghz],
            "sigma": target_index.sigma,
            "common_beam_arcsec": [target_index.beam.major_arcsec, target_index.beam.minor_arcsec],
            "target_median": _finite_or_none(target_index.median()),
            "best_matches_median": [_finite_or_none(v) for v in match_index.median()],
        },
    }
    return {"gallery.png": gallery, "spectral_index.png": index}, said


def _finite_or_none(value) -> float | None:
    return float(value) if np.isfinite(value) else None


def _report(
    bank: Bank,
    matches: Matches,
    summaries: list[ParameterSummary],
    verdict,
    fit_verdict,
    calibration,
    detected,
    non_detections,
    *,
    inputs: dict,
    settings: dict,
    files: list[str],
    observing: dict | None = None,
    **more,
) -> dict:
    """The contents of ``report.json``: inputs, settings, the bank, both verdicts, the calibration, the observing
    uncertainties, the summaries, the versions of protolib and its dependencies, the files written, and ``more``
    (``bands``)."""
    return {
        "inputs": inputs,
        "settings": settings,
        "bank": bank.identity,
        "n_matches": len(matches),
        "best_similarity": float(matches.similarity[0]),
        "out_of_distribution": verdict.to_dict(),
        "goodness_of_fit": None if fit_verdict is None else fit_verdict.to_dict(),
        "interval_calibration": None if calibration is None else dict(calibration),
        "observing_uncertainty": observing,
        "detection": None if detected is None else detected.to_dict(),
        "bank_non_detections": None if non_detections is None else dict(non_detections),
        "verdict": _overall_verdict(verdict, fit_verdict, detected),
        "summary": [asdict(s) for s in summaries],
        "versions": _versions(__version__, platform.python_version()),
        "files": files,
        **more,
    }


def _overall_verdict(embedding_check, fit_verdict, detected=None) -> dict:
    """Both checks in one: the distributions are to be trusted only when both pass, and a source is detected."""
    in_distribution = not embedding_check.is_out_of_distribution
    reproduces = None if fit_verdict is None else bool(fit_verdict.reproduces)
    seen = detected is None or detected.detected
    trusted = in_distribution and reproduces is not False and seen
    if not seen:
        message = "No source detected in the target: do not read the distributions as the target's."
    elif trusted:
        message = "Both checks pass: the best matches are typical in embedding space" + (
            " and reproduce the target in image space." if reproduces else " (no image-space check: noiseless bank)."
        )
    elif in_distribution:
        message = (
            "The embedding check passes but the image-space check does not: the network finds the bank's nearest "
            "images, but none reproduces the target. Do not read the distributions as the target's."
        )
    else:
        message = "The target is out of distribution in embedding space" + (
            " and no bank image reproduces it." if reproduces is False else "; read the distributions with caution."
        )
    return {
        "trusted": trusted,
        "embedding_in_distribution": in_distribution,
        "image_reproduced": reproduces,
        "detected": seen,
        "message": message,
    }


def _versions(protolib_version: str, python_version: str) -> dict:
    import importlib.metadata as metadata

    versions = {"protolib": protolib_version, "python": python_version}
    for package in ("numpy", "torch", "h5py", "corner", "matplotlib", "faiss-cpu", "astropy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions
