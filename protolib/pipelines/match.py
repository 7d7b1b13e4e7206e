"""The match stage: one target (an observation or a bank system) matched against a bank, with its report.

:func:`run_match` is what ``protolib match`` does. It reads as the pipeline: one call into one room per
step, each step taking the products of the steps before it.

1. :func:`prepare_target` (:mod:`protolib.observation`, through :func:`~protolib.matching.matching_target`): a
   FITS file is read (an :class:`~protolib.observation.Observation`), put on the bank's grid (a
   :class:`~protolib.observation.PreparedObservation`) and given the transform that sees the bank like it (an
   :class:`~protolib.matching.ObservationTarget`); maps of one source in several bands become a
   :class:`~protolib.matching.BandTargets`; a bank system is its own image. Returns a :class:`MatchTarget`.
2. :func:`search_target` (:class:`~protolib.matching.Matcher`): the bank's nearest images in embedding space, at
   the observation's settings and at draws of its uncertain ones, and the out-of-distribution check. Returns a
   :class:`Searched` (its :class:`~protolib.matching.Matches` and
   :class:`~protolib.matching.observing.ObservingDraws`).
3. :func:`fit_target` (:func:`~protolib.matching.fit_matches`): every match against the target in image space,
   judged on reference targets seen like it, and whether the target holds a source. Returns a :class:`Fitted`
   (holding the :class:`~protolib.matching.MatchFit`).
4. :func:`calibrate_intervals` (:func:`~protolib.matching.calibration.choose_k_and_widening`): on the same
   references, how many matches form the distribution and how much its intervals must be widened to hold the truth
   as often as they claim, with the misspecification terms (:mod:`protolib.out_of_family`). Returns a
   :class:`Calibration`.
5. :func:`summarise_matches` (:mod:`protolib.distributions`): the distribution's parameters, what each observing
   uncertainty widened, the bands' spectral indices, and the neural posterior estimate beside them
   (:mod:`protolib.npe`). Returns the :class:`MatchResult`.
6. :func:`write_match_report`: every product (``matches.csv``, ``summary.csv``, ``observing_draws.csv``, the
   figures and ``report.json``), written in this one place from the :class:`MatchResult`.

The settings come typed, once: ``matching`` is the configuration's :class:`~protolib.matching.MatchingSettings`
(``config.matching``), ``posterior`` its :class:`~protolib.evaluation.EvaluationSettings` (``config.evaluation``).
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
from ..instrument import Beam
from ..matching import (
    BandMatcher,
    BandTargets,
    Matcher,
    Matches,
    MatchFit,
    MatchingSettings,
    ObservationTarget,
    TieredMatcher,
    apply_transform,
    embeds_bands,
    fit_matches,
    map_bands,
    match_parameters,
    matching_target,
    prepare_band_targets,
    spectral_indices,
    truth_parameters,
)
from ..matching.calibration import K_CANDIDATES, choose_k_and_widening
from ..matching.fit import choose_matches, reduced_chi2_of_matches
from ..matching.observing import (
    OBSERVING_DRAWS,
    ObservingDraws,
    ObservingUncertainty,
    observing_uncertainty,
    widening_by_source,
)
from ..npe import NPE_CACHE_FOLDER, observation_posterior
from ..observation import prepared_file
from ..out_of_family import read_terms, with_terms
from ..plots.corner import plot_corner
from ..plots.gallery import plot_band_gallery, plot_gallery, plot_spectral_index
from ..runtime import (
    ProtolibInputError,
    available_cores,
    output_folder,
    share_work,
    start_worker,
    write_figure,
    write_json,
)
from ..statistics import weighted_percentile

__all__ = [
    "run_match",
    "run_matches",
    "MatchRequest",
    "MatchTarget",
    "Searched",
    "Fitted",
    "Calibration",
    "MatchResult",
    "prepare_target",
    "search_target",
    "fit_target",
    "calibrate_intervals",
    "summarise_matches",
    "write_match_report",
    "bank_non_detections",
]

N_GALLERY = 11  # matches shown in the gallery of one band


def run_match(
    model_path: str | Path,
    bank_path: str | Path,
    out_dir: str | Path,
    *,
    target: str | Path | Sequence[str | Path] | None = None,
    target_system: int | None = None,
    projection: int = 0,
    distance_pc: float | None = None,
    matching: MatchingSettings | None = None,
    threshold: float | None = None,
    device: str | None = None,
    progress: bool = True,
    observation_options: dict | None = None,
    posterior: EvaluationSettings | None = None,
    distance_error_pc: float | None = None,
    flux_calibration: float | None = None,
    observing_draws: int | None = None,
    misspecification: str | Path | Mapping[str, float] | None = None,
) -> dict:
    """Match one target (an observation FITS file or a bank system) and write every product to ``out_dir``.

    What ``protolib match`` does: ``matches.csv``, ``summary.csv``, ``corner.png``, ``gallery.png``
    and ``report.json`` (see :func:`write_match_report`). The corner plot shows the parameters the
    network's target similarity was computed from, and the inclination. ``matching``: the configuration's
    ``matching:`` section (``config.matching``; default: its defaults): how many matches (``top_k``, 0: all above
    ``threshold``), their weights, the search backend, the out-of-distribution limit, and how an observation is
    searched (:attr:`~protolib.matching.MatchingSettings.search`: the whole bank re-embedded at its beam and noise,
    or a shortlist from the nearest resolution tier re-ranked, :class:`~protolib.matching.TieredMatcher`).
    ``observation_options`` go to :func:`~protolib.matching.matching_target` (``centre``, ``beam``,
    ``noise_rms_jy_beam``, ...).
    ``posterior``: for an observation, also train the neural posterior estimate of
    :func:`~protolib.npe.observation_posterior` with these settings (``config.evaluation``: its ``npe_max_epochs``,
    ``npe_samples``, ``widening_candidates`` and ``seed``) and put its intervals in ``report.json``
    (``posterior_estimate``), beside the matches' (``None``: none).
    ``distance_error_pc``, ``flux_calibration`` (default: the band's nominal error) and an unknown recoverable
    scale enter an observation's intervals: the match is repeated over ``observing_draws`` draws of them (default
    12; 0: none) and pooled (:mod:`~protolib.matching.observing`; ``summary.csv`` and ``corner.png`` then describe
    the pooled matches, ``observing_draws.csv`` lists them, ``report.json`` ``observing_uncertainty`` says what each
    widened).
    ``misspecification``: per-parameter terms (or the ``out_of_family.json`` holding them,
    :func:`~protolib.out_of_family.read_terms`) that widen an observation's calibrated intervals further, for physics
    the bank does not hold (:mod:`protolib.out_of_family`); ``report.json`` records each in ``calibration``.
    ``target`` may be maps of one source in several bands (a list), matched jointly: see :func:`prepare_target`.
    Returns the report written to ``report.json``.
    """
    request = MatchRequest(
        Path(model_path),
        _one_or_several(target),
        target_system,
        projection,
        distance_pc,
        matching or MatchingSettings(),
        threshold,
        device,
        progress,
        dict(observation_options or {}),
        dict(distance_error_pc=distance_error_pc, flux_calibration=flux_calibration, n_draws=observing_draws),
        misspecification,
        posterior,
    )
    with Bank(bank_path) as bank, output_folder(out_dir, "match") as staging:
        report = _match_into(staging, bank, request)
        # a bank rewritten meanwhile: refused, so the report never names a file it does not come from
        bank.check_unchanged()
        return report


def run_matches(jobs: Sequence[Mapping], *, workers: int | None = None) -> list[dict]:
    """Several independent matches side by side, one process per core: each job is :func:`run_match`'s arguments
    (a mapping with ``model_path``, ``bank_path``, ``out_dir`` and any of its keywords); the reports come back in
    the jobs' order.

    One match keeps about one core busy (its transforms, its small network and its neural posterior estimate do
    not spread over threads), so the sources of a survey, or one source against two banks, run on a laptop's
    cores in about the time of one per core. This process takes jobs from the first on while ``workers - 1``
    others start and take them from the last (:func:`~protolib.runtime.share_work`); every process runs torch on
    one thread, so they do not compete. Each match is the one :func:`run_match` gives (its own seeds); warnings a
    worker's match gives are given again here, once each. ``workers``: processes in all (default: one per core, at
    most one per job); 1 runs the jobs here, one after the other.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import torch

    jobs = [dict(job) for job in jobs]
    if workers is not None and workers < 1:
        raise ProtolibInputError(f"run_matches needs at least one worker process (got workers={workers}).")
    workers = min(len(jobs), workers or available_cores())
    if workers <= 1:
        return [run_match(**job) for job in jobs]
    reports, previous = [None] * len(jobs), torch.get_num_threads()
    pool = ProcessPoolExecutor(workers - 1, mp_context=multiprocessing.get_context("spawn"), initializer=start_worker)
    try:
        torch.set_num_threads(1)
        for index, report in share_work(
            list(range(len(jobs))),
            lambda i: run_match(**jobs[i]),
            lambda i: pool.submit(_worker_match, jobs[i]),
            workers - 1,
        ):
            reports[index] = _given_warnings(report)
    finally:
        torch.set_num_threads(previous)
        pool.shutdown(wait=True, cancel_futures=True)
    return reports


def _worker_match(job: dict) -> tuple[dict, list]:
    """One :func:`run_matches` job in a worker: the report and the warnings it gave, ``(category, message)``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = run_match(**job)
    return report, list(dict.fromkeys((w.category, str(w.message)) for w in caught))


def _given_warnings(done) -> dict:
    """A report of :func:`run_matches`: a worker's ``(report, warnings)`` with its warnings given here, or this
    process's report as it is."""
    if isinstance(done, dict):
        return done
    report, caught = done
    for category, message in caught:
        warnings.warn(message, category, stacklevel=3)
    return report


def _match_into(out_dir: Path, bank: Bank, request: MatchRequest) -> dict:
    """The pipeline's steps, writing into the staging folder ``out_dir``."""
    target = prepare_target(bank, request)
    try:
        searched = search_target(target, request)
        fitted = fit_target(target, searched, request.matching.distribution)
        calibration = calibrate_intervals(
            target, searched, fitted, request.misspecification, request.matching.distribution
        )
        result = summarise_matches(target, searched, fitted, calibration, request)
        return write_match_report(out_dir, result)
    finally:
        target.close()


# ---------------------------------------------------------------------------------------------
# What is asked


@dataclass
class MatchRequest:
    """What ``protolib match`` is asked: the model, the target, how to search it, and what is uncertain about it.

    Attributes:
        target: the observation's FITS file, a list of maps of one source in several bands, or ``None`` for
            ``target_system`` (with its ``projection``).
        matching: the configuration's :class:`~protolib.matching.MatchingSettings`.
        threshold: keep only matches at least this similar (``None``: ``matching.top_k`` of them).
        device, progress: where the network runs, and whether progress bars are shown.
        observation_options: :func:`~protolib.matching.matching_target`'s options (``centre``, ``beam``, ...).
        observing: the observation's ``distance_error_pc``, ``flux_calibration`` and ``n_draws``.
        misspecification: parameter -> the term that widens its calibrated interval further (or the file holding
            them, read when the request is made).
        posterior: the settings of the neural posterior estimate beside the matches (``None``: none).
    """

    model_path: Path
    target: Path | list | None
    target_system: int | None
    projection: int
    distance_pc: float | None
    matching: MatchingSettings
    threshold: float | None
    device: str | None
    progress: bool
    observation_options: dict
    observing: dict
    misspecification: str | Path | Mapping[str, float] | None = None
    posterior: EvaluationSettings | None = None

    @property
    def options(self) -> dict:
        """The :class:`~protolib.matching.Matcher`'s options: its search backend, device and progress bars."""
        return dict(backend=self.matching.backend, device=self.device, progress=self.progress)

    @property
    def top_k(self) -> int | None:
        """How many matches are kept (``None``: all above :attr:`threshold`)."""
        return self.matching.top_k or None

    def __post_init__(self) -> None:
        """Refuse, in one line, what cannot be matched, before the bank is opened; read the misspecification terms."""
        _check_arguments(self.model_path, self.target, self.target_system, self.top_k, self.threshold)
        if isinstance(self.target, list):
            _check_band_options(self.observation_options, self.posterior is not None)
        self.misspecification = _terms(self.misspecification)


def _one_or_several(target):
    """``target`` as given for one map (a path) or none, as a list for several maps (a list of one is that one map)."""
    if target is not None and not isinstance(target, (str, Path)):
        targets = list(target)
        target = None if not targets else targets[0] if len(targets) == 1 else targets
    return target


def _terms(misspecification) -> dict:
    """The misspecification terms: read from their file, or as given."""
    if isinstance(misspecification, (str, Path)):
        return read_terms(misspecification)
    return dict(misspecification or {})


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
            f"Model file {model_path} does not exist. Train one first with `protolib train-siamese` "
            "or by running chapter 03 (notebooks/03_siamese_wsml.ipynb)."
        )


# ---------------------------------------------------------------------------------------------
# 1. prepare


@dataclass
class MatchTarget:
    """A target ready to be searched (:func:`prepare_target`).

    Attributes:
        image: ``(H, W)`` the image searched: the observation on the bank's grid, or the bank system's image.
        truths: the target's true parameters, when it is simulated (``None``: a real observation).
        described: the report's description of the target (``inputs.target``).
        bank: the bank searched (of a bank in several bands, the band the map is prepared in); ``bank_file``: the
            bank file named on the command line.
        observation: the :class:`~protolib.matching.ObservationTarget` searched (``None``: a bank system);
            ``path``: its file.
        bands: the maps of one source in several bands, matched jointly (``None``: one map).
        system: ``(system, projection)`` of a bank system.
        uncertainty: the observation's uncertain observing settings; ``flux_tolerance``: how far the image-space
            fit may rescale a match's fluxes (one per band for several maps).
        embedded_bands_ghz: the bands a band-dropout network (``siamese.model.bands: all``) embeds the target in,
            every map's (``None``: a one-band network, which embeds its own band); ``bands_bank``: then the bank
            opened whole, whose images it embeds in those bands.
    """

    image: np.ndarray
    truths: dict | None
    described: dict
    bank: Bank
    bank_file: str
    observation: ObservationTarget | None = None
    path: Path | None = None
    bands: BandTargets | None = None
    system: tuple[int, int] | None = None
    uncertainty: ObservingUncertainty | None = None
    flux_tolerance: float | list = 0.0
    embedded_bands_ghz: list[float] | None = None
    bands_bank: Bank | None = None

    @property
    def fitted_image(self) -> np.ndarray:
        """The image the matches are fitted to: ``(H, W)``, or every band's ``(bands, H, W)``."""
        return self.image if self.bands is None else self.bands.images()

    @property
    def searched_image(self) -> np.ndarray:
        """The image embedded and searched: ``(H, W)``, or every band's ``(bands, H, W)`` when searched jointly."""
        return self.bands.images() if self.bands is not None and self.bands.joint else self.image

    @property
    def searched_observations(self) -> list[ObservationTarget]:
        """The prepared maps embedded: every band's when searched jointly, else the searched one."""
        return self.bands.targets if self.bands is not None and self.bands.joint else [self.observation]

    def close(self) -> None:
        """Close the bands of a bank of several that were opened for this target."""
        if self.bands is not None:
            self.bands.close()
        elif self.bank.band_index is not None:
            self.bank.close()


def prepare_target(bank: Bank, request: MatchRequest) -> MatchTarget:
    """The target made ready to search: an observation prepared onto the bank's grid (in a bank of several bands, the
    band nearest its frequency), maps in several bands each in its own band (:func:`_band_target`), or a bank system
    (in a bank of several bands, the networks' reference band). With a band-dropout network, an observation is
    embedded in its own band and maps in several bands in all of theirs (``embedded_bands_ghz``)."""
    band_network = request.target_system is None and bank.n_bands > 1 and embeds_bands(request.model_path)
    if isinstance(request.target, list):
        return _band_target(bank, request, band_network)
    band = _one_band(bank, request.target, request.observation_options)
    bank_file = str(Path(bank.path).resolve())
    try:
        if request.target_system is not None:
            return _system_target(band, request.target_system, request.projection, bank_file)
        target = _observation_target(band, request.target, request, bank_file)
    except BaseException:
        if band is not bank:
            band.close()
        raise
    if band_network:
        target = replace(target, embedded_bands_ghz=[float(band.frequencies_ghz[0])], bands_bank=bank)
    return target


def _observation_target(
    bank: Bank, path, request: MatchRequest, bank_file: str, observation: ObservationTarget | None = None
) -> MatchTarget:
    """An observation prepared (unless ``observation`` is) onto ``bank``'s grid, with its uncertain observing settings
    (the image-space fit may rescale a match within 2 sigma of its flux calibration)."""
    if observation is None:
        observation = matching_target(path, bank, request.distance_pc, **request.observation_options)
    described = {
        "file": str(Path(path).resolve()),
        "distance_pc": request.distance_pc,
        "preparation": observation.info,
        "true_parameters_in_file": observation.truths is not None,
    }
    uncertainty = _observing_uncertainty(path, request.distance_pc, observation.info, request.observing)
    return MatchTarget(
        observation.image,
        observation.truths,
        described,
        bank,
        bank_file,
        observation,
        Path(path),
        uncertainty=uncertainty,
        flux_tolerance=2.0 * uncertainty.flux_calibration,
    )


def _band_target(bank: Bank, request: MatchRequest, band_network: bool) -> MatchTarget:
    """Maps of one source in several bands, matched jointly: each is prepared in the bank's band nearest its frequency,
    with its own beam, noise and recoverable scale (:func:`~protolib.matching.prepare_band_targets`). A band-dropout
    network (``band_network``) embeds and searches them jointly; a one-band network searches the one in the band it
    was trained on (else the nearest). That map's observing settings are drawn as one map's; the image-space fit, the
    verdict and the calibration's references use every band, each with its own flux tolerance (``matches.csv``
    gains ``reduced_chi2_<band>`` columns, ``report.json`` ``bands``, ``gallery.png`` a row per band, and
    ``spectral_index.png`` is written)."""
    bands = prepare_band_targets(
        request.target, bank, request.distance_pc, joint=band_network, **request.observation_options
    )
    try:
        searched = _observation_target(
            bands.banks[bands.search],
            bands.maps[bands.search].path,
            request,
            str(Path(bank.path).resolve()),
            observation=bands.targets[bands.search],
        )
        exact = dict(request.observing, n_draws=0)
        tolerances = [
            2.0 * _observing_uncertainty(m.path, request.distance_pc, t.info, exact).flux_calibration
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
        "searched_bands_ghz": bands.searched_ghz,
        "reference_band_ghz": bands.reference_ghz,
    }
    joint = dict(embedded_bands_ghz=bands.frequencies_ghz, bands_bank=bank) if band_network else {}
    return replace(searched, described=described, flux_tolerance=tolerances, bands=bands, **joint)


def _system_target(bank: Bank, system: int, projection: int, bank_file: str) -> MatchTarget:
    """A bank system's image as the target, with its true parameters (it is matched against the other systems)."""
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
    described = {"system": system, "projection": projection, "system_id": int(bank.system_id[system])}
    image, truths = bank.images[system, projection], truth_parameters(bank, system, projection)
    return MatchTarget(image, truths, described, bank, bank_file, system=(system, projection))


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


# ---------------------------------------------------------------------------------------------
# 2. search


@dataclass
class Searched:
    """A target searched (:func:`search_target`): the matcher, the matches, the observation's matches at each draw of
    its uncertain observing settings (``None``: none), and the out-of-distribution check
    (:class:`~protolib.matching.OutOfDistributionCheck`)."""

    matcher: Matcher
    matches: Matches
    draws: ObservingDraws | None
    verdict: object


def search_target(target: MatchTarget, request: MatchRequest) -> Searched:
    """The bank's images nearest the target in embedding space (never its own system, for a bank system), the
    observation matched again at draws of its observing settings, and the out-of-distribution check."""
    top_k, threshold = request.top_k, request.threshold
    if target.system is not None:
        matcher = Matcher.from_model(request.model_path, target.bank, **request.options)
        matches = matcher.match_system(*target.system, top_k=top_k, threshold=threshold)
    else:
        matcher = _observation_matcher(
            request.model_path, target, target.searched_observations, request.matching, request.options
        )
        matches = matcher.match(target.searched_image, top_k=top_k, threshold=threshold)
    draws = None
    if target.uncertainty is not None and target.uncertainty.sources:
        draws = _observing_draws(target, request)
    _refuse_no_matches(matches, threshold, target.bank)
    verdict = matcher.check(matches, limit_percentile=request.matching.limit_percentile)
    return Searched(matcher, matches, draws, verdict)


def _observation_matcher(
    model_path, target: MatchTarget, observations: list, matching: MatchingSettings, options: dict, cache: bool = True
) -> Matcher:
    """The matcher for an observation (``observations``: the prepared maps embedded, :attr:`MatchTarget.
    searched_observations`): tiered when ``matching`` says so for this bank's size, else exhaustive (its bank
    embeddings cached beside the model when ``cache``); a band-dropout network's embeds the maps' bands jointly
    (:func:`_band_matcher`)."""
    bank = target.bank
    if target.embedded_bands_ghz is not None:
        return _band_matcher(model_path, target, observations, matching, dict(options, cache=cache))
    observation = observations[0]
    if matching.tiered(bank.n_systems * bank.n_projections):
        return TieredMatcher.from_model(model_path, bank, transform=observation.transform, settings=matching, **options)
    return Matcher.from_model(
        model_path,
        bank,
        transform=observation.transform,
        transform_key=observation.transform_key,
        cache=cache,
        **options,
    )


def _band_matcher(model_path, target: MatchTarget, observations: list, matching: MatchingSettings, options: dict):
    """The :class:`~protolib.matching.BandMatcher` of a band-dropout network: the whole bank embedded in the target's
    bands, each through its map's transform (cached per subset of bands and transforms). Tiered matching embeds one
    band and is refused for it, in one line."""
    bank = target.bank
    if matching.tiered(bank.n_systems * bank.n_projections):
        raise ProtolibInputError(
            f"Model {model_path} is a band-dropout network (siamese.model.bands: all), and tiered matching "
            f"(matching.search: {matching.search}, bank of {bank.n_systems * bank.n_projections} images) searches one "
            "band; set matching.search: exhaustive to embed the bank in the maps' bands, or match with a one-band "
            "network."
        )
    searched = 0 if len(observations) == 1 else target.bands.search
    return BandMatcher.from_model(
        model_path,
        bank,
        bands_bank=target.bands_bank,
        bands_ghz=target.embedded_bands_ghz,
        transforms=[o.transform for o in observations],
        transform_keys=[o.transform_key for o in observations],
        transform=observations[searched].transform,
        **options,
    )


def _observing_draws(target: MatchTarget, request: MatchRequest) -> ObservingDraws:
    """The observation matched again at each draw of its uncertain settings (prepared, re-embedded and searched like
    the nominal match; the draws' bank embeddings are not cached, and the preparation's warnings, said once for the
    nominal match, are not repeated)."""
    found, draws = [], target.uncertainty.draws()
    quiet = dict(request.options, progress=False)
    factors = _band_flux_factors(target, draws)
    for draw, flux_factors in tqdm(
        zip(draws, factors), total=len(draws), desc="Observing draws", unit="draw", disable=not request.progress
    ):
        settings = dict(request.observation_options)
        if draw.max_scale_arcsec is not None:
            settings["max_scale_arcsec"] = draw.max_scale_arcsec
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            observations = _drawn_observations(target, draw, flux_factors, settings, request.observation_options)
        matcher = _observation_matcher(request.model_path, target, observations, request.matching, quiet, False)
        image = observations[0].image if len(observations) == 1 else np.stack([o.image for o in observations])
        found.append(matcher.match(image, top_k=request.top_k, threshold=request.threshold))
    return ObservingDraws(target.uncertainty, draws, found)


def _drawn_observations(target: MatchTarget, draw, flux_factors, settings: dict, nominal: dict) -> list:
    """The maps searched, prepared again at one observing draw: the searched map at the draw's distance, flux scale
    and recoverable scale (``settings``); searched jointly, every other map at the draw's distance (one source), its
    own flux scale (``flux_factors``) and its nominal recoverable scale (``nominal``), with its own noise seed."""
    if target.bands is None or not target.bands.joint:
        return [matching_target(target.path, target.bank, draw.distance_pc, flux_factor=draw.flux_factor, **settings)]
    bands = target.bands
    return [
        matching_target(
            m.path,
            bank,
            draw.distance_pc,
            flux_factor=float(factor),
            noise_seed=t.transform.seed,
            **(settings if b == bands.search else nominal),
        )
        for b, (m, bank, t, factor) in enumerate(zip(bands.maps, bands.banks, bands.targets, flux_factors))
    ]


def _band_flux_factors(target: MatchTarget, draws: list) -> np.ndarray:
    """``(draws, bands)`` each map's flux-scale factor at each draw: the searched map's the draw's; searched jointly,
    every other map's drawn apart (log-normal in its own calibration error, half its fit tolerance, seeded by band):
    the bands' flux scales are calibrated separately, and their ratio, the spectral index, is uncertain with them."""
    searched = np.array([[d.flux_factor] for d in draws])
    if target.bands is None or not target.bands.joint:
        return searched
    bands, seed = target.bands, target.uncertainty.seed
    factors = np.ones((len(draws), len(bands.maps)))
    for b, tolerance in enumerate(target.flux_tolerance):
        z = np.random.default_rng([seed, b + 1]).standard_normal(len(draws))
        factors[:, b] = searched[:, 0] if b == bands.search else np.exp(np.log1p(tolerance / 2.0) * z)
    return factors


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


# ---------------------------------------------------------------------------------------------
# 3. fit


@dataclass
class Fitted:
    """The matches against the target in image space (:func:`fit_target`): the
    :class:`~protolib.matching.MatchFit` (``None``: a noiseless bank target, nothing to judge a residual by), the
    target's :class:`~protolib.goodness_of_fit.Detection`, and the share of bank images with no source
    (:func:`bank_non_detections`)."""

    fit: MatchFit | None
    detected: Detection | None
    bank_non_detections: dict | None


def fit_target(target: MatchTarget, searched: Searched, rule: str = "similarity") -> Fitted:
    """Every match's reduced chi-square against the target and the image-space verdict, on reference targets seen
    like it (:func:`~protolib.matching.fit_matches`; the gallery's residuals are of the first matches by ``rule``,
    :attr:`~protolib.matching.MatchingSettings.distribution`); whether the target, and the bank's images, hold a
    source."""
    fit = fit_matches(
        searched.matcher,
        target.fitted_image,
        searched.matches,
        observation=target.observation,
        flux_tolerance=target.flux_tolerance,
        bands=target.bands,
        rule=rule,
    )
    bank = target.bank
    bank_noise = bank.instrument.noise_rms_jy_beam if bank.unit == "Jy/beam" else 0.0
    noise = target.observation.noise_rms_jy_beam if target.observation is not None else bank_noise
    return Fitted(
        fit,
        detection(target.image, noise) if noise > 0 else None,
        bank_non_detections(bank, bank_noise) if bank_noise > 0 else None,
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


# ---------------------------------------------------------------------------------------------
# 4. calibrate


@dataclass
class Calibration:
    """How the distribution is drawn and its intervals widened (:func:`calibrate_intervals`).

    Attributes:
        k: how many of the best matches form the distribution (``None``: every match searched).
        k_scores: every ``k`` tried -> the mean calibrated half-width on the references.
        widening: parameter -> the widening that makes its intervals honest on the references, with the coverage
            before and after, and any misspecification term (``None``: no calibration, a noiseless bank target).
        rule: how the matches are chosen, for the target and its references alike
            (:attr:`~protolib.matching.MatchingSettings.distribution`).
    """

    k: int | None = None
    k_scores: dict | None = None
    widening: dict | None = None
    rule: str = "similarity"


def calibrate_intervals(
    target: MatchTarget, searched: Searched, fitted: Fitted, terms: dict, rule: str = "similarity"
) -> Calibration:
    """On the image-space fit's reference targets, whose true parameters are known, their matches chosen by ``rule``
    as the target's are: the number of matches whose calibrated intervals are narrowest, and the widening that makes
    them hold the truth as often as they claim (:func:`~protolib.matching.calibration.choose_k_and_widening`); for an
    observation, each widened further by its misspecification term (:func:`~protolib.out_of_family.with_terms`)."""
    fit = fitted.fit
    if fit is None:
        return Calibration()
    k, widening, scores = choose_k_and_widening(
        searched.matcher.bank,
        fit.reference_rows,
        fit.reference_matches,
        K_CANDIDATES,
        reference_chi2=fit.reference_reduced_chi2,
        rule=rule,
        beams=fit.independent_beams,
    )
    return Calibration(k, scores, with_terms(widening, terms if target.observation is not None else None), rule)


# ---------------------------------------------------------------------------------------------
# 5. summarise


@dataclass
class MatchResult:
    """Everything ``protolib match`` writes (:func:`write_match_report`), from :func:`summarise_matches`.

    Attributes:
        target, searched, fitted, calibration: the steps' products.
        matches, draws, fit: the distribution's: the ``calibration.k`` best matches, each observing draw's, and their
            image-space fit (the verdicts have looked at every match searched).
        samples, weights, prior, summaries: the distribution's parameters, their weights, the bank's prior, and
            each parameter's summary (widened as calibrated).
        observing: the report's ``observing_uncertainty`` (``None``: no observing draws).
        bands: the report's ``bands`` (``None``: one map); ``spectral_indices``: the best matches shown beside the
            target's spectral index, the target's and theirs (:func:`~protolib.matching.spectral_indices`).
        posterior: the neural posterior estimate beside the matches (``None``: not asked for).
        inputs, settings: the report's.
        chosen: how the distribution's matches were chosen (:class:`ChosenMatches`).
    """

    target: MatchTarget
    searched: Searched
    fitted: Fitted
    calibration: Calibration
    matches: Matches
    draws: ObservingDraws | None
    fit: MatchFit | None
    samples: dict
    weights: np.ndarray | None
    prior: dict
    summaries: list[ParameterSummary]
    observing: dict | None
    bands: dict | None
    spectral_indices: tuple | None
    posterior: dict | None
    inputs: dict
    settings: dict
    chosen: ChosenMatches | None = None


def summarise_matches(
    target: MatchTarget, searched: Searched, fitted: Fitted, calibration: Calibration, request: MatchRequest
) -> MatchResult:
    """The distribution (the matches chosen by the calibration's rule, :func:`_distribution`, pooled over the
    observing draws) summarised per parameter, widened as calibrated; what each observing uncertainty widened; the
    bands' spectral indices; the neural posterior estimate."""
    bank = target.bank
    chosen = _distribution(target, searched, fitted.fit, calibration, request)
    matches, draws, fit = chosen.matches, chosen.draws, chosen.fit
    described = matches if draws is None else draws.pooled()[0]
    samples = match_parameters(bank, described)
    fit_weights = chosen.weights if draws is None else chosen.draw_weights
    weights = _summary_weights(described, draws, request.matching.weight_temperature, fit_weights)
    prior = prior_parameters(bank)
    widening = None if calibration.widening is None else {n: c["widening"] for n, c in calibration.widening.items()}
    summaries = summarise(
        samples,
        weights=weights,
        prior=prior,
        truths=target.truths,
        parameter_info=bank.parameter_info,
        widening=widening,
    )
    bands, indices = (None, None) if target.bands is None else _bands_summary(target.bands, matches, fit)
    return MatchResult(
        *(target, searched, fitted, calibration, matches, draws, fit, samples, weights, prior, summaries),
        observing=None if draws is None else _observing_widening(bank, draws, matches, samples, weights),
        bands=bands,
        spectral_indices=indices,
        posterior=_posterior(target, searched, request),
        inputs=_inputs(target, searched, request),
        settings=_settings(target, searched, calibration, request, len(matches)),
        chosen=chosen,
    )


def _posterior(target: MatchTarget, searched: Searched, request: MatchRequest) -> dict | None:
    """For an observation, when asked: the neural posterior estimate trained on the bank as its matcher sees it
    (:func:`~protolib.npe.observation_posterior`), whose intervals the report puts beside the matches'."""
    if request.posterior is None or target.observation is None:
        return None
    return observation_posterior(
        searched.matcher,
        target.image,
        settings=request.posterior,
        progress=request.progress,
        cache_dir=Path(request.model_path).parent / NPE_CACHE_FOLDER,
    )


@dataclass
class ChosenMatches:
    """The matches that form the distribution (:func:`_distribution`).

    Attributes:
        matches, draws, fit: the chosen matches in the rule's order, each observing draw's, and their image-space fit.
        weights: the rule's weight of each of ``matches`` (``None``: equal); ``draw_weights``: of each draw's match,
            pooled (``None``: equal).
        similarity_rank: ``(n,)`` each match's rank by similarity among those searched (1: the most similar).
        rule: the rule (:attr:`~protolib.matching.MatchingSettings.distribution`).
    """

    matches: Matches
    draws: ObservingDraws | None
    fit: MatchFit | None
    weights: np.ndarray | None
    draw_weights: np.ndarray | None
    similarity_rank: np.ndarray
    rule: str


def _distribution(
    target: MatchTarget, searched: Searched, fit: MatchFit | None, calibration: Calibration, request: MatchRequest
) -> ChosenMatches:
    """The matches, observing draws and fit the calibration's rule chooses
    (:func:`~protolib.matching.fit.choose_matches`, ``matching.distribution``: by default the ``k`` most similar, as
    measured there; or chosen by their image-space fit, ``k`` and the widening then calibrated on references chosen
    the same way): the distribution, ``matches.csv`` and the gallery are theirs; the verdicts have already looked at
    every match searched. Under a fit rule, each observing draw's matches are chosen by their fit to the map as that
    draw prepares it (:func:`_draw_reduced_chi2`)."""
    matches, draws, rule = searched.matches, searched.draws, calibration.rule
    if fit is None:
        return ChosenMatches(matches, draws, None, None, None, matches.rank, rule)
    keep, weights = choose_matches(fit.reduced_chi2, rule, calibration.k, fit.independent_beams)
    draw_weights = None
    if draws is not None:
        draws, draw_weights = _draws_chosen(target, request, draws, calibration, fit.independent_beams)
    by_band = None if fit.reduced_chi2_by_band is None else fit.reduced_chi2_by_band[:, keep]
    cut = replace(
        fit,
        reduced_chi2=fit.reduced_chi2[keep],
        excess=None if fit.excess is None else fit.excess[keep],
        residuals=fit.residuals[: len(keep)],  # the gallery's, already in the rule's order
        reduced_chi2_by_band=by_band,
    )
    return ChosenMatches(matches.take(keep), draws, cut, weights, draw_weights, keep + 1, rule)


def _draws_chosen(target: MatchTarget, request: MatchRequest, draws: ObservingDraws, calibration: Calibration, beams):
    """Each observing draw's matches chosen by the rule (the first ``k`` by similarity; or by their fit to the map as
    the draw prepares it), and their pooled weights (``None``: equal)."""
    rule, k = calibration.rule, calibration.k
    if rule == "similarity":
        return ObservingDraws(draws.uncertainty, draws.draws, [m.head(k) if k else m for m in draws.matches]), None
    chosen, weights = [], []
    for found, chi2 in zip(draws.matches, _draw_reduced_chi2(target, request, draws)):
        keep, w = choose_matches(chi2, rule, k, beams)
        chosen.append(found.take(keep))
        weights.append(np.ones(len(keep)) if w is None else w)
    pooled = None if all(w is None for w in weights) or rule == "fit_rank" else np.concatenate(weights)
    return ObservingDraws(draws.uncertainty, draws.draws, chosen), pooled


def _draw_reduced_chi2(target: MatchTarget, request: MatchRequest, draws: ObservingDraws) -> list[np.ndarray]:
    """Each observing draw's matches' reduced chi-squares against the map prepared as that draw sees it (its distance,
    flux scale and recoverable scale; for maps in several bands, the searched band's), as the nominal matches are
    fitted to the nominal map."""
    tolerance = target.flux_tolerance if target.bands is None else target.flux_tolerance[target.bands.search]
    found = []
    for draw, matches in zip(draws.draws, draws.matches):
        settings = dict(request.observation_options)
        if draw.max_scale_arcsec is not None:
            settings["max_scale_arcsec"] = draw.max_scale_arcsec
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # said once, for the nominal match
            observation = matching_target(
                target.path, target.bank, draw.distance_pc, flux_factor=draw.flux_factor, **settings
            )
        found.append(reduced_chi2_of_matches(target.bank, observation, matches, tolerance))
    return found


def _summary_weights(
    matches: Matches,
    observing: ObservingDraws | None,
    weight_temperature: float | None,
    fit_weights: np.ndarray | None = None,
) -> np.ndarray | None:
    """The summaries' weight of each match: by similarity with ``weight_temperature``, times the distribution rule's
    ``fit_weights`` (``fit_weight``: by the tempered fit), and the same total for each observing draw (``None``:
    equal weights)."""
    weights = None if weight_temperature is None else similarity_weights(matches.similarity, weight_temperature)
    if fit_weights is not None:
        weights = fit_weights if weights is None else weights * fit_weights
        weights = weights / weights.sum()
    if observing is None:
        return weights
    draw_weights = observing.pooled()[1]
    if weights is not None:  # similarity weights within each draw, each draw's total kept
        draw = observing.draw_of_each_match()
        totals = np.bincount(draw, weights=weights)
        draw_weights = weights / totals[draw] / len(totals)
    return draw_weights


def _observing_widening(bank: Bank, draws: ObservingDraws, matches: Matches, pooled_samples: dict, pooled_weights):
    """The report's ``observing_uncertainty``: the settings' uncertainty, the draws, and how much each widened each
    interval."""
    names = [*bank.physical_parameters, "inclination"]
    weights = np.full(len(pooled_samples[names[0]]), 1.0) if pooled_weights is None else pooled_weights
    widening = widening_by_source(
        draws.uncertainty,
        draws.draws,
        [match_parameters(bank, m) for m in draws.matches],
        match_parameters(bank, matches),
        pooled_samples,
        weights,
        names,
        bank.parameter_info,
    )
    return {**draws.uncertainty.to_dict(), "draws": [asdict(d) for d in draws.draws], "parameters": widening}


BAND_GALLERY_MATCHES = 6  # matches shown in a gallery of several bands (two rows per band)
SPECTRAL_INDEX_MATCHES = 4  # best matches shown beside the target's spectral index


def _bands_summary(bands: BandTargets, matches: Matches, fit: MatchFit) -> tuple[dict, tuple]:
    """The report's ``bands`` for a target in several bands: how they were searched (``search``: "jointly", every
    band by a band-dropout network, or "one band", a one-band network's, ``searched_bands_ghz``), each map, its band,
    whether it was searched, and its reduced chi-square for the best match (the lowest joint one) and over the
    distribution's matches; the spectral indices of the target and of its best matches. Returns it, and the best
    matches with both spectral indices."""
    best = matches.head(SPECTRAL_INDEX_MATCHES)
    target_index, match_index = spectral_indices(bands, best.system, best.projection)
    k = int(np.argmin(fit.reduced_chi2))
    said = {
        "frequencies_ghz": bands.frequencies_ghz,
        "search": "jointly" if bands.joint else "one band",
        "network": "band-dropout (siamese.model.bands: all)" if bands.joint else "one band",
        "searched_bands_ghz": bands.searched_ghz,
        "reference_band_ghz": bands.reference_ghz,
        "searched_band_ghz": bands.frequencies_ghz[bands.search],
        "best_match_rank": k + 1,
        "maps": _band_maps(bands, fit.reduced_chi2_by_band, k),
        "joint_reduced_chi2": "each band's chi-square in its own noise, summed over the bands' used pixels and divided "
        "by their number",
        "frequency_scaling": "each map brought to its band with the bank's fixed spectral index (maps' "
        "preparation.spectral_index), not each match's own: at the 5% from its band a map may be, that is off by under "
        "4% for the bank's images, below every band's flux calibration (benchmarks/band_frequency_offset.py)",
        "spectral_index": {
            "bands_ghz": [target_index.low_ghz, target_index.high_ghz],
            "sigma": target_index.sigma,
            "common_beam_arcsec": [target_index.beam.major_arcsec, target_index.beam.minor_arcsec],
            "target_median": _finite_or_none(target_index.median()),
            "best_matches_median": [_finite_or_none(v) for v in match_index.median()],
        },
    }
    return said, (best, target_index, match_index)


def _band_maps(bands: BandTargets, by_band: np.ndarray, k: int) -> list[dict]:
    """The report's ``bands.maps``: each map, its band, whether it was searched, its noise and beam, and its reduced
    chi-square for the best match ``k`` and over the distribution's matches."""
    return [
        {
            "file": str(m.path.resolve()),
            "observed_frequency_ghz": m.observed_ghz,
            "bank_band_ghz": m.band_ghz,
            "searched": bands.joint or b == bands.search,
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


def _inputs(target: MatchTarget, searched: Searched, request: MatchRequest) -> dict:
    """The report's ``inputs``: the model, the bank and the target (a bank system: whether the model trained on it)."""
    described = target.described
    if target.system is not None:
        described = {**described, "part_of_model_split": searched.matcher.training_part(target.system[0])}
    return {"model": str(request.model_path.resolve()), "bank": target.bank_file, "target": described}


def _settings(target: MatchTarget, searched: Searched, calibration: Calibration, request: MatchRequest, kept: int):
    """The report's ``settings``: how the target was searched, how many matches form the distribution, their weights
    and the corner plot's parameters (those the network's target similarity was computed from, and the
    inclination)."""
    matcher = searched.matcher
    tiered = isinstance(matcher, TieredMatcher)
    trained_on = (matcher.checkpoint.get("target") or {}).get("parameters") or []
    corner = [p for p in trained_on if p in target.bank.parameters] + ["inclination"] if trained_on else None
    return {
        "top_k": request.top_k,
        "threshold": request.threshold,
        "backend": matcher.index.backend,
        "device": str(matcher.index.device),
        "embedding_cache": str(matcher.embeddings.path) if matcher.embeddings.path else None,
        "search": "tiered" if tiered else "exhaustive",
        "fit_flux_tolerance": target.flux_tolerance,
        "matches_searched": len(searched.matches),
        "distribution_rule": calibration.rule,
        "distribution_k": kept,
        "k_scores": calibration.k_scores,
        **({"tier": str(matcher.tier), "shortlist": matcher.shortlist} if tiered else {}),
        # a band-dropout network: the bands it embedded the target and the bank in
        **({"embedded_bands_ghz": matcher.bands_ghz} if isinstance(matcher, BandMatcher) else {}),
        "weight_temperature": request.matching.weight_temperature,
        "corner_parameters": corner or [*target.bank.physical_parameters, "inclination"],
    }


# ---------------------------------------------------------------------------------------------
# 6. report


def write_match_report(out_dir: str | Path, result: MatchResult) -> dict:
    """Write every product of a match to ``out_dir``: ``matches.csv`` (one row per match of the distribution, with its
    reduced chi-square, and each band's), ``summary.csv`` (the summaries, widened as calibrated),
    ``observing_draws.csv`` (every draw's matches, with the draw's settings), the figures (:func:`_figures`) and
    ``report.json`` (last).

    Returns:
        The report (as written to ``report.json``).
    """
    out_dir = Path(out_dir)
    bank = result.target.bank
    write_csv(_match_rows(result), out_dir / "matches.csv")
    write_csv(result.summaries, out_dir / "summary.csv")
    files = ["matches.csv", "summary.csv", "report.json"]
    if result.draws is not None:
        rows = []
        for i, (draw, found) in enumerate(zip(result.draws.draws, result.draws.matches)):
            rows += [{"draw": i, **asdict(draw), **row} for row in match_rows(bank, found)]
        write_csv(rows, out_dir / "observing_draws.csv")
        files.append("observing_draws.csv")
    figures = _figures(result)
    for name, fig in figures.items():
        write_figure(fig, out_dir / name, dpi=110)
    report = _report(result, sorted(files + list(figures)))
    write_json(report, out_dir / "report.json", strict=True, allow_nan=False)
    return report


def _match_rows(result: MatchResult) -> list[dict]:
    """``matches.csv``'s rows: each match of the distribution in the rule's order (``rank``), how it was chosen
    (``chosen_by``, its ``similarity_rank`` among those searched and its ``weight``), and when fitted its reduced
    chi-square, each band's, and whether it ``reproduces`` the target
    (:meth:`~protolib.matching.MatchFit.reproducing`)."""
    rows = match_rows(result.target.bank, result.matches)
    chosen, fit = result.chosen, result.fit
    if chosen is not None:
        weights = np.ones(len(rows)) if chosen.weights is None else chosen.weights / np.max(chosen.weights)
        for row, rank, weight in zip(rows, chosen.similarity_rank, weights):
            row.update(chosen_by=chosen.rule, similarity_rank=int(rank), weight=float(weight))
    if fit is not None:
        labels = [] if result.target.bands is None else result.target.bands.labels
        for i, (row, value, reproduces) in enumerate(zip(rows, fit.reduced_chi2, fit.reproducing())):
            row.update(reduced_chi2=float(value), reproduces=bool(reproduces))
            row.update(
                {f"reduced_chi2_{label}": float(fit.reduced_chi2_by_band[b, i]) for b, label in enumerate(labels)}
            )
    return rows


def _figures(result: MatchResult) -> dict:
    """Every figure of a match: ``corner.png`` (the distribution over the bank's prior), ``gallery.png`` (the best
    matches as the network saw them, with their residuals) and, for maps in several bands, ``spectral_index.png``."""
    bank, target = result.target.bank, result.target
    figures = {
        "corner.png": plot_corner(
            result.samples,
            result.prior,
            weights=result.weights,
            truths=target.truths,
            parameter_info=bank.parameter_info,
            parameters=result.settings["corner_parameters"],
            label=_corner_label(result.draws),
        )
    }
    if target.bands is not None:
        figures.update(_band_figures(bank, target.bands, result.matches, result.fit, result.spectral_indices))
        return figures
    shown = result.matches.head(N_GALLERY)
    fit = result.fit
    figures["gallery.png"] = _gallery(
        bank,
        shown,
        target.image,
        result.searched.matcher.transform,
        None if fit is None else fit.residuals,
        None if fit is None else fit.reduced_chi2[: len(shown)],
        _target_beam_au(target),
    )
    return figures


def _target_beam_au(target: MatchTarget) -> tuple[float, float, float] | None:
    """The target's beam for the gallery (:meth:`~protolib.instrument.Beam.in_au` at the bank's distance): the
    observation's beam on the bank's grid, or the bank's own for a bank system (``None`` without one)."""
    bank = target.bank
    if target.observation is not None:
        return _band_beam_au(target.observation, bank)
    return bank.instrument.beam.in_au(bank.instrument.distance_pc) if bank.instrument.beam_major_arcsec > 0 else None


def _band_beam_au(target: ObservationTarget, bank: Bank) -> tuple[float, float, float]:
    """One map's beam on the bank's grid, in au at the bank's distance (:meth:`~protolib.instrument.Beam.in_au`)."""
    return Beam(*target.transform_key["beam_arcsec"]).in_au(bank.instrument.distance_pc)


def _corner_label(observing: ObservingDraws | None) -> str:
    """The corner plot's name for the matches: with observing draws, the matches of every draw pooled (so they can
    number as many as the bank's images without being the prior)."""
    return "best matches" if observing is None else f"best matches of {len(observing.matches)} observing draws, pooled"


def _gallery(bank: Bank, shown: Matches, target_image: np.ndarray, transform, residuals, reduced_chi2, beam_au=None):
    """The gallery figure of the matches ``shown``, as the network saw them through ``transform`` (the same noise as
    in the embedding, when seeded by row; ``None``: as in the bank), captioned with their system and inclination
    [deg]; the target's panel shows its beam ``beam_au`` (:func:`_target_beam_au`)."""
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
        crop_to_source=True,
        beam_au=beam_au,
    )


def _band_figures(bank: Bank, bands: BandTargets, matches: Matches, fit: MatchFit, indices) -> dict:
    """The figures of a target in several bands: ``gallery.png``, every band of each match and its residuals, and
    ``spectral_index.png``, the target's spectral index beside its best matches'."""
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
    gallery = plot_band_gallery(
        bands.images(),
        images,
        shown.similarity,
        band_names=[f"{f:g} GHz" for f in bands.frequencies_ghz],
        residuals=fit.residuals[: len(shown)],
        reduced_chi2=fit.reduced_chi2[: len(shown)],
        reduced_chi2_by_band=fit.reduced_chi2_by_band[:, : len(shown)],
        searched=None if bands.joint else bands.search,  # searched jointly: every band, none marked
        captions=[f"system {s}, i = {i:.0f} deg" for s, i in zip(shown.system, inclination)],
        pixel_size_au=bank.pixel_size_au if np.isfinite(bank.pixel_size_au) else None,
        beam_au=[_band_beam_au(t, b) for t, b in zip(bands.targets, bands.banks)],
    )
    best, target_index, match_index = indices
    index = plot_spectral_index(
        target_index.alpha,
        match_index.alpha,
        low_ghz=target_index.low_ghz,
        high_ghz=target_index.high_ghz,
        beam_arcsec=float(np.sqrt(target_index.beam.major_arcsec * target_index.beam.minor_arcsec)),
        captions=[f"#{k + 1} system {s}" for k, s in enumerate(best.system)],
        sigma=target_index.sigma,
    )
    return {"gallery.png": gallery, "spectral_index.png": index}


def _report(result: MatchResult, files: list[str]) -> dict:
    """The contents of ``report.json``: inputs, settings, the bank, both verdicts, the calibration, the observing
    uncertainties, the summaries, the versions of protolib and its dependencies, the files written, and for maps in
    several bands ``bands``, for a posterior estimate ``posterior_estimate``."""
    searched, fitted, fit_verdict = result.searched, result.fitted, None if result.fit is None else result.fit.verdict
    report = {
        "inputs": result.inputs,
        "settings": result.settings,
        "bank": result.target.bank.identity,
        "n_matches": len(result.matches),
        "best_similarity": float(result.matches.similarity[0]),
        "out_of_distribution": searched.verdict.to_dict(),
        "goodness_of_fit": None if fit_verdict is None else fit_verdict.to_dict(),
        "distribution": _distribution_report(result),
        "interval_calibration": None if result.calibration.widening is None else dict(result.calibration.widening),
        "observing_uncertainty": result.observing,
        "detection": None if fitted.detected is None else fitted.detected.to_dict(),
        "bank_non_detections": fitted.bank_non_detections,
        "verdict": _overall_verdict(searched.verdict, fit_verdict, fitted.detected),
        "summary": [asdict(s) for s in result.summaries],
        "versions": _versions(__version__, platform.python_version()),
        "files": files,
    }
    if result.bands is not None:
        report["bands"] = result.bands
    if result.posterior is not None:
        report["posterior_estimate"] = result.posterior
    return report


def _distribution_report(result: MatchResult) -> dict:
    """The report's ``distribution``: the rule that chose its matches, how many, and (fitted) how many of them reproduce
    the target by the verdict's tests of the residual's size, their median reduced chi-square, and where the
    best-fitting match searched ranks by similarity."""
    chosen, fit = result.chosen, result.fit
    said = {"rule": result.calibration.rule, "matches": len(result.matches)}
    if fit is None or chosen is None:
        return {**said, "reproducing_matches": None, "message": "No image-space fit: the matches are not fitted."}
    weights = np.ones(len(fit.reduced_chi2)) if chosen.weights is None else chosen.weights
    searched_chi2 = result.fitted.fit.reduced_chi2
    reproducing = int(np.count_nonzero(fit.reproducing()))
    best_rank = int(np.argmin(searched_chi2)) + 1
    return {
        **said,
        "effective_matches": float(weights.sum() ** 2 / np.sum(weights**2)),
        "reproducing_matches": reproducing,
        "median_reduced_chi2": float(weighted_percentile(fit.reduced_chi2, [50.0], weights)[0]),
        "best_fit_similarity_rank": best_rank,
        "message": f"{reproducing} of the distribution's {len(result.matches)} matches (chosen by {said['rule']}) "
        f"reproduce the target as the verdict asks of the best; the best-fitting of the {len(searched_chi2)} matches "
        f"searched ranks {best_rank} by similarity.",
    }


def _finite_or_none(value) -> float | None:
    return float(value) if np.isfinite(value) else None


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
