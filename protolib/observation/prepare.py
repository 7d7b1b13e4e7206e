"""Preparing an observation for matching: :func:`prepare_observation` puts an observed image on the bank's grid.

The steps, in the order :func:`prepare_observation` takes them:

1. Read the file (:func:`~protolib.observation.read_observation`; zero-valued blanking is read as
   blank, :func:`~protolib.observation.blank_zero_regions`) and check the distance.
2. Centre on the emission peak, or on the ``centre`` given.
3. Estimate the noise rms (:func:`~protolib.observation.estimate_noise_rms`, within
   :data:`NOISE_BOX` pixels about the source) unless it is given.
4. Bring fluxes from the observed frequency to the bank's with ``S ~ nu^spectral_index``
   (:func:`frequency_scale`; refused beyond a factor :data:`MAX_FREQUENCY_RATIO`), and settle the
   maximum recoverable scale (``max_scale_arcsec``, else the file's ``PROTOLIB MAX_SCALE`` card, else
   :data:`MAX_SCALE_BEAMS` beam major axes, the assumption stated in the result). It is recorded for
   the transform, which removes larger scales from the bank images as the interferometer did from the sky.
5. Find the compact sources in the field (:func:`~protolib.observation.find_compact_sources`); when
   there is more than one, a warning gives their offsets and peaks, ``centre`` picks one and
   ``mask_radius_arcsec`` blanks everything further from it.
6. Resample onto the bank's grid in au at ``distance_pc``
   (:func:`~protolib.observation.resample_to_grid`, flux conserving). Fields smaller than the bank's
   are zero padded with a warning; less than half the bank's field is refused.
7. Smooth to a beam that contains the bank's where the observation is sharper than the bank;
   convert to Jy per resulting beam and scale fluxes by ``(distance_pc / bank_distance_pc) ** 2``.
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from astropy import units as u
from astropy.coordinates import SkyCoord

from ..instrument import Beam, convolve_beam, effective_beam_covariance, gaussian_solid_angle_pixels
from ..runtime import ProtolibInputError, shown_path
from .fits import MAX_SCALE_LIMIT_ARCSEC, Observation, checked_max_scale, plain_icrs, read_observation
from .noise import DETECTION_SIGMA, CompactSource, estimate_noise_rms, find_compact_sources
from .prepared import PreparedObservation, refuse_empty_target
from .regrid import BankGrid, resample_to_grid, sky_grid_wcs
from .resolution import common_beam_covariance
from .scale import estimate_max_scale

__all__ = [
    "prepare_observation",
    "centre_in_image",
    "measured_noise_rms",
    "usable_field_pixels",
    "frequency_scale",
    "MIN_FIELD_FRACTION",
    "NOISE_BOX",
    "MAX_FREQUENCY_RATIO",
    "MAX_SCALE_LIMIT_ARCSEC",
    "MAX_SCALE_BEAMS",
]

MIN_FIELD_FRACTION = 0.5  # refuse observations covering less than this fraction of the bank's field
NOISE_BOX = 1024  # the noise is estimated within this many pixels (per side) about the source
MAX_FREQUENCY_RATIO = 1.6  # beyond this ratio of observed to bank frequency, scaling the flux is refused
# assumed maximum recoverable scale, in beam major axes, when neither the user nor the file gives one
MAX_SCALE_BEAMS = 10.0


def prepare_observation(
    observation: Observation | str | Path,
    bank,
    distance_pc: float | None,
    *,
    centre: SkyCoord | str | None = None,
    beam: Beam | None = None,
    noise_rms_jy_beam: float | None = None,
    frequency_ghz: float | None = None,
    spectral_index: float | None = None,
    max_scale_arcsec: float | None = None,
    mask_radius_arcsec: float | None = None,
) -> PreparedObservation:
    """Put an observed image on the bank's grid, in the bank's units, at a resolution the bank can match.

    The steps (read, centre, noise, frequency and recoverable scale, compact sources, resampling,
    resolution and units) are listed in :mod:`protolib.observation.prepare`.

    Arguments:
        observation: an :class:`~protolib.observation.Observation` or a FITS path.
        bank: a :class:`~protolib.bank.Bank`, a path to one, or a :class:`~protolib.observation.BankGrid`.
        distance_pc: distance to the observed source [pc].
        centre: sky position to centre on (a SkyCoord or ``"RA DEC"``); default the emission peak.
        beam: the beam, when the file's header has none (or to override it).
        noise_rms_jy_beam: the observation's noise rms [Jy/beam], instead of estimating it.
        frequency_ghz: the observed frequency, instead of the file's spectral axis.
        spectral_index: dust spectral index ``alpha`` (``S ~ nu^alpha``) for the frequency scaling;
            default ``2 + beta`` with the bank's opacity index ``beta``.
        max_scale_arcsec: the maximum recoverable scale of the observation [arcsec]; ``0`` for none.
        mask_radius_arcsec: blank everything further than this from the centre (other sources).

    Returns:
        The :class:`~protolib.observation.PreparedObservation`; its
    :meth:`~protolib.observation.PreparedObservation.transform`
        matches bank images to it.

    Example:
        >>> prepared = prepare_observation("L1527.fits", "bank.h5", distance_pc=140)   # doctest: +SKIP
        >>> prepared.image_jy_beam.shape                                            # (64, 64)  # doctest: +SKIP
    """
    observation = _as_observation(observation, beam)
    distance_pc = _checked_distance(distance_pc, observation.path)
    grid = _as_grid(bank)
    _check_resolved(observation, grid, distance_pc)
    centre, (x, y) = centre_in_image(observation, centre)
    given = dict(noise_rms_jy_beam=noise_rms_jy_beam, frequency_ghz=frequency_ghz, spectral_index=spectral_index)
    noise_rms_jy_beam, frequency, scale = _map_settings(
        observation, grid, distance_pc, (x, y), given, (max_scale_arcsec, mask_radius_arcsec)
    )
    sources = _compact_sources(observation, grid, distance_pc, (centre, (x, y)), noise_rms_jy_beam, mask_radius_arcsec)
    image, placed, unit_factor = _on_grid_at_resolution(observation, grid, distance_pc, centre, mask_radius_arcsec)
    flux_scale = (distance_pc / grid.distance_pc) ** 2 * frequency["frequency_factor"]
    return PreparedObservation(
        image_jy_beam=(image * unit_factor * flux_scale).astype(np.float32),
        **placed,
        grid=grid,
        distance_pc=distance_pc,
        centre=centre,
        noise_rms_jy_beam=float(noise_rms_jy_beam * math.sqrt(unit_factor) * flux_scale),
        observed_noise_rms_jy_beam=float(noise_rms_jy_beam),
        **_as_read(observation),
        **frequency,
        **scale,
        mask_radius_arcsec=mask_radius_arcsec,
        sources=[source.to_dict(distance_pc) for source in sources],
    )


def _map_settings(observation: Observation, grid, distance_pc: float, pixel, given: dict, scales):
    """The map's noise rms (measured unless ``given``), its frequency settings (with a warning when the bank is not
    made for the map) and its maximum recoverable scale (``scales``: the one given, and the mask radius, checked)."""
    max_scale_arcsec, mask_radius_arcsec = scales
    noise = given["noise_rms_jy_beam"]
    if noise is None:
        noise = measured_noise_rms(observation, *pixel)
    _check_positive(
        observation.path, {"noise rms": noise, "frequency": given["frequency_ghz"], "mask radius": mask_radius_arcsec}
    )
    frequency = _frequency_settings(observation, grid, given["frequency_ghz"], given["spectral_index"])
    _warn_if_bank_does_not_fit(observation, grid, distance_pc, pixel, frequency)
    max_scale, source, estimate = _max_scale_setting(observation, max_scale_arcsec, pixel, noise)
    return noise, frequency, dict(max_scale_arcsec=max_scale, max_scale_source=source, max_scale_estimate=estimate)


def _compact_sources(observation: Observation, grid, distance_pc: float, centre, noise_rms: float, mask_radius):
    """The compact sources in the field, with a warning for those inside the bank's field and for spikes and blanks
    about the centre (``centre``: the sky position and its pixel)."""
    sky, pixel = centre
    sources = find_compact_sources(observation, noise_rms, sky)
    _warn_about_sources(observation.path, sources, distance_pc, grid.field_of_view_au, mask_radius)
    _warn_about_spikes_and_blanks(observation, pixel, noise_rms)
    return sources


def _on_grid_at_resolution(observation: Observation, grid, distance_pc: float, centre, mask_radius):
    """The map resampled onto the bank's grid (blanked beyond ``mask_radius``) and brought to a resolution common with
    the bank's: the image, its ``coverage``, ``beam`` and whether it was ``smoothed``, and the unit factor; refused
    when nothing is left to match."""
    resampled, coverage = _on_bank_grid(observation, grid, distance_pc, centre, mask_radius)
    image, working, unit_factor, smoothed = _at_common_resolution(resampled, observation, grid, distance_pc)
    working_beam = Beam.from_covariance_pixels(working, grid.pixel_arcsec)
    refuse_empty_target(
        image, coverage, working_beam, grid.pixel_arcsec, str(observation.path), _empty_hint(observation, mask_radius)
    )
    return image, dict(coverage=coverage.astype(np.float32), beam=working_beam, smoothed=smoothed), unit_factor


def _empty_hint(observation: Observation, mask_radius_arcsec: float | None) -> str:
    """What to change when nothing is left to match: the mask radius when one was given, else the centre."""
    if mask_radius_arcsec:
        return (
            f'--mask-radius {mask_radius_arcsec:g}" blanks nearly everything; give a radius of a few beams (the beam '
            "is "
            f'{observation.beam.major_arcsec:.3g}").'
        )
    return "The map holds no emission about the centre: check the file, and --centre."


def _as_observation(observation: Observation | str | Path, beam: Beam | None) -> Observation:
    """The observation (read from its file when it is a path), with ``beam`` in place of its own when given."""
    if not isinstance(observation, Observation):
        return read_observation(observation, beam=beam)
    if beam is not None:
        observation.beam = beam
    return observation


def _checked_distance(distance_pc, path: Path) -> float:
    """``distance_pc`` as a positive number of pc, or an error saying what is wrong with it."""
    if distance_pc is None:
        raise ProtolibInputError(f"{path}: the distance to the source is missing; give it in pc (e.g. --distance 146).")
    try:
        distance_pc = float(distance_pc)
    except (TypeError, ValueError):
        raise ProtolibInputError(f"{path}: the distance {distance_pc!r} is not a number of pc.") from None
    if not (math.isfinite(distance_pc) and distance_pc > 0):
        raise ProtolibInputError(f"{path}: the distance must be a positive number of pc, got {distance_pc}.")
    return distance_pc


def _as_grid(bank) -> BankGrid:
    """The grid of ``bank`` (a :class:`~protolib.bank.Bank`, a path to one, or a grid already)."""
    return bank if isinstance(bank, BankGrid) else BankGrid.from_bank(bank)


def _check_resolved(observation: Observation, grid: BankGrid, distance_pc: float) -> None:
    """Refuse a beam larger than the bank's field: the source would be unresolved at the bank's scale."""
    field_au = grid.field_of_view_au
    beam_au = observation.beam.major_arcsec * distance_pc
    if beam_au >= field_au:
        raise ProtolibInputError(
            f'{observation.path}: the beam ({observation.beam.major_arcsec:.3g}" = {beam_au:.0f} au at {distance_pc:g} '
            "pc) is larger than "
            f"the bank's field of view ({field_au:.0f} au); the source is unresolved at the bank's scale. `protolib "
            "bank-for "
            f"{observation.path} --distance {distance_pc:g} --out DIR` builds a bank made for this map."
        )


def centre_in_image(observation: Observation, centre=None) -> tuple[SkyCoord, tuple[float, float]]:
    """The centre (the emission peak by default) in ICRS, and its (column, row) in the image; refused outside it."""
    if centre is None:  # in ICRS whatever the map's frame (a galactic map's l, b must not be printed as RA, Dec)
        centre = plain_icrs(observation.peak_coordinate())
    else:
        centre = _parse_centre(centre, observation.path)
    x, y = observation.wcs.world_to_pixel(centre)
    ny, nx = observation.image_jy_beam.shape
    if not (np.isfinite(x) and np.isfinite(y) and -0.5 <= x <= nx - 0.5 and -0.5 <= y <= ny - 0.5):
        raise ProtolibInputError(f"{observation.path}: the centre {centre.to_string('hmsdms')} lies outside the image.")
    return centre, (x, y)


def _parse_centre(centre, path: Path) -> SkyCoord:
    """A SkyCoord, or ``"RA DEC"`` in sexagesimal hours and degrees or in decimal degrees, as a position."""
    if isinstance(centre, SkyCoord):
        return centre
    text = str(centre).strip()
    try:
        if re.search(r"[:hms]", text.split()[0] if text.split() else ""):
            return SkyCoord(text, unit=(u.hourangle, u.deg))
        return SkyCoord(text, unit=(u.deg, u.deg))
    except (ValueError, IndexError) as error:
        raise ProtolibInputError(
            f"{path}: cannot read the centre {centre!r} ({error}); give 'RA DEC' as '04:39:53.9 +26:03:09.4' or in "
            "degrees '69.97458 26.05261'."
        ) from None


def measured_noise_rms(observation: Observation, x: float, y: float) -> float:
    """The observation's noise rms [Jy/beam] from at most :data:`NOISE_BOX` x :data:`NOISE_BOX` pixels about the
    source at (column ``x``, row ``y``); an image too clean to be an observation (a model) is refused."""
    box, box_centre = _noise_box(observation.image_jy_beam, x, y)
    noise_rms_jy_beam = estimate_noise_rms(box, observation.beam, observation.pixel_scale_arcsec, centre=box_centre)
    row, col, _ = observation.source_peak()
    _check_not_noiseless(observation.path, noise_rms_jy_beam, abs(float(observation.image_jy_beam[row, col])))
    return noise_rms_jy_beam


def _noise_box(image: np.ndarray, x, y) -> tuple[np.ndarray, tuple[float, float]]:
    """At most :data:`NOISE_BOX` x :data:`NOISE_BOX` pixels of ``image`` about the source at (column ``x``, row ``y``),
    and the source's (column, row) within them."""
    ny, nx = image.shape
    row0 = int(np.clip(round(float(y)) - NOISE_BOX // 2, 0, max(0, ny - NOISE_BOX)))
    col0 = int(np.clip(round(float(x)) - NOISE_BOX // 2, 0, max(0, nx - NOISE_BOX)))
    return image[row0 : row0 + NOISE_BOX, col0 : col0 + NOISE_BOX], (float(x) - col0, float(y) - row0)


def _check_not_noiseless(path: Path, noise_rms_jy_beam: float, peak: float) -> None:
    """Refuse an estimated noise under a millionth of the source's ``peak`` (single-pixel spikes left out): a
    model image, whose noise must be given."""
    if not noise_rms_jy_beam > 1e-6 * peak:
        raise ProtolibInputError(
            f"{path}: the image looks noiseless (estimated noise rms {noise_rms_jy_beam:.3g} Jy/beam, under a "
            "millionth of "
            "its peak), as a model image would be; give the noise rms of the observation it stands for with --noise."
        )


def _check_positive(path: Path, values: dict[str, float | None]) -> None:
    """Refuse any of ``values`` (by name) that is given but not a positive number."""
    for name, value in values.items():
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ProtolibInputError(f"{path}: the {name} must be a positive number, got {value}.")


def _frequency_settings(
    observation: Observation, grid: BankGrid, frequency_ghz: float | None, spectral_index: float | None
) -> dict:
    """The observed frequency, its source, the spectral index and the flux factor to the bank's frequency."""
    path = observation.path
    alpha = grid.spectral_index if spectral_index is None else float(spectral_index)
    if not (math.isfinite(alpha) and -1.0 <= alpha <= 6.0):
        raise ProtolibInputError(
            f"{path}: the spectral index {spectral_index} is not a dust spectral index (between -1 and 6; thin dust: 2 "
            "+ beta, about 3-4)."
        )
    observed, source = (
        (float(frequency_ghz), "given") if frequency_ghz else (observation.frequency_ghz, observation.frequency_source)
    )
    if observed is None:
        warnings.warn(
            f"{path}: the file has no spectral axis to read the frequency from; assuming the bank's "
            f"{grid.frequency_ghz:g} GHz (give --frequency GHz if it differs).",
            stacklevel=3,
        )
        return {
            "observed_frequency_ghz": None,
            "frequency_source": "assumed the bank's",
            "spectral_index": alpha,
            "frequency_factor": 1.0,
        }
    factor = frequency_scale(observed, grid.frequency_ghz, alpha, str(path))
    return {
        "observed_frequency_ghz": observed,
        "frequency_source": source,
        "spectral_index": alpha,
        "frequency_factor": factor,
    }


def frequency_scale(observed_ghz: float, bank_ghz: float, spectral_index: float, where: str = "") -> float:
    """Factor that brings a dust-continuum flux from ``observed_ghz`` to ``bank_ghz``: ``(bank/observed)^alpha``.

    Dust emission scales as ``S ~ nu^alpha``, ``alpha = 2 + beta`` where the dust is optically thin
    and in the Rayleigh-Jeans limit. The scaling is refused beyond a frequency ratio of
    :data:`MAX_FREQUENCY_RATIO`: there an uncertainty of 0.5 in ``alpha`` alone changes the flux by
    more than 25%, and the optical depth and temperature structure no longer scale together.

    Raises:
        ProtolibInputError: the frequencies are too far apart.
    """
    ratio = bank_ghz / observed_ghz
    if max(ratio, 1.0 / ratio) > MAX_FREQUENCY_RATIO:
        raise ProtolibInputError(
            f"{where}: the observation is at {observed_ghz:.1f} GHz and the bank at {bank_ghz:.1f} GHz, a ratio of "
            f"{max(ratio, 1 / ratio):.2f}; scaling dust fluxes over more than a factor {MAX_FREQUENCY_RATIO} in "
            "frequency would be "
            "guesswork. Make a bank at the observed frequency (simulator.frequency_ghz in the configuration), or give "
            "--frequency if the header's frequency is wrong."
        )
    return float(ratio**spectral_index)


def _max_scale_setting(
    observation: Observation, max_scale_arcsec: float | None, centre_xy: tuple[float, float], noise_rms_jy_beam: float
) -> tuple[float | None, str, dict | None]:
    """The maximum recoverable scale [arcsec, observed] (``None``: no filtering), where it came from, and the map's own
    estimate when neither the user nor the file gave it. The value given and the file's card are checked alike
    (:func:`~protolib.observation.fits.checked_max_scale`); otherwise the negative bowl about the source is read
    (:func:`~protolib.observation.scale.estimate_max_scale`), and without one a default is assumed."""
    if max_scale_arcsec is not None:
        return (
            checked_max_scale(float(max_scale_arcsec), observation.beam.major_arcsec, str(observation.path)),
            "given",
            None,
        )
    if observation.max_scale_arcsec is not None:
        where = f"{observation.path}: the card PROTOLIB MAX_SCALE"
        return checked_max_scale(observation.max_scale_arcsec, observation.beam.major_arcsec, where), "file", None
    pixel = observation.pixel_scale_arcsec
    estimate = estimate_max_scale(
        observation.image_jy_beam,
        centre_xy,
        noise_rms=noise_rms_jy_beam,
        beam_major_px=observation.beam.major_arcsec / pixel,
        beam_minor_px=observation.beam.minor_arcsec / pixel,
        pixel_arcsec=pixel,
    )
    if estimate.range_arcsec is not None and estimate.range_arcsec[1] <= MAX_SCALE_LIMIT_ARCSEC:
        return estimate.max_scale_arcsec, f"estimated: {estimate.reason}", estimate.to_dict()
    return (
        MAX_SCALE_BEAMS * observation.beam.major_arcsec,
        f"assumed: {MAX_SCALE_BEAMS:g} beam major axes; give --max-scale",
        estimate.to_dict(),
    )


def _warn_about_sources(
    path: Path, sources: list[CompactSource], distance_pc: float, field_au: float, mask_radius: float | None
) -> None:
    """One warning naming every compact source but the one nearest the centre, when there are several."""
    if len(sources) < 2:
        return
    centred = min(sources, key=lambda s: s.separation_arcsec)
    half_field = 0.5 * field_au / distance_pc

    def where(s: CompactSource) -> str:
        if mask_radius and s.separation_arcsec > mask_radius:
            return "masked"
        if max(abs(s.east_arcsec), abs(s.north_arcsec)) < half_field:
            return "inside the bank's field: it is matched as part of the target"
        return "outside the bank's field"

    described = "; ".join(
        f'{s.separation_arcsec:.1f}" ({s.separation_arcsec * distance_pc:.0f} au) away, {s.east_arcsec:+.1f}" east '
        f'{s.north_arcsec:+.1f}" north, peak {s.peak_jy_beam * 1e3:.3g} mJy/beam ({s.signal_to_noise:.0f} sigma), '
        f"{where(s)}"
        for s in sources
        if s is not centred
    )
    warnings.warn(
        f"{shown_path(path)}: {len(sources)} compact sources above {DETECTION_SIGMA:g} sigma in the field. Centred on "
        f"{centred.coordinate.to_string('hmsdms', precision=2)} (peak {centred.peak_jy_beam * 1e3:.3g} mJy/beam); "
        f"the other{'s' if len(sources) > 2 else ''}: {described}. Pick a source with --centre 'RA DEC'; "
        "--mask-radius ARCSEC blanks everything further from the centre.",
        stacklevel=3,
    )


def usable_field_pixels(image: np.ndarray, x: float, y: float, covered: float = 0.99, most: int = 4097) -> float:
    """Side [pixels] of the largest square centred on (column ``x``, row ``y``) whose pixels are at least the
    fraction ``covered`` observed (finite); the map's edges count as unobserved. Only ``most`` pixels a side
    about the source are looked at (so a huge map costs no more than a large one)."""
    row, col = int(round(float(y))), int(round(float(x)))
    row0, col0 = max(0, row - most // 2), max(0, col - most // 2)
    observed = np.isfinite(image[row0 : row0 + most, col0 : col0 + most])
    row, col = row - row0, col - col0
    ny, nx = observed.shape
    integral = np.pad(np.cumsum(np.cumsum(observed, 0, dtype=np.int32), 1, dtype=np.int32), ((1, 0), (1, 0)))
    best = 0
    for half in range(1, max(nx, ny)):
        top, bottom, left, right = row - half, row + half + 1, col - half, col + half + 1
        inside = (
            integral[min(max(bottom, 0), ny), min(max(right, 0), nx)]
            - integral[min(max(top, 0), ny), min(max(right, 0), nx)]
            - integral[min(max(bottom, 0), ny), min(max(left, 0), nx)]
            + integral[min(max(top, 0), ny), min(max(left, 0), nx)]
        )
        if inside < covered * (2 * half + 1) ** 2:
            break
        best = 2 * half + 1
    return float(best)


BANK_FIT_BEAMS = 6.0  # a bank fits a map when its field holds at least this many of the map's beams,
BANK_FIT_FIELD = 3.0  # the map shows at most this many times the bank's field about the source,
BANK_FIT_SHARPER = 1.5  # and the map's beam is at most this many times sharper than the bank's


def _warn_if_bank_does_not_fit(
    observation: Observation, grid: BankGrid, distance_pc: float, source: tuple[float, float], frequency: dict
) -> None:
    """One warning, with the numbers, when ``grid``'s bank is not made for this map (its field, beam or band),
    naming the ``protolib bank-for`` command that would build one that is."""
    field_au, beam_au = grid.field_of_view_au, observation.beam.major_arcsec * distance_pc
    bank_beam_au = grid.beam.major_arcsec * grid.distance_pc if grid.beam is not None else 0.0
    usable_au = usable_field_pixels(observation.image_jy_beam, *source) * observation.pixel_scale_arcsec * distance_pc
    reasons = []
    if field_au < BANK_FIT_BEAMS * beam_au:
        reasons.append(
            f"the bank's {field_au:.0f} au field holds only {field_au / beam_au:.1f} of the map's {beam_au:.0f} au "
            "beams"
        )
    if usable_au > BANK_FIT_FIELD * field_au:
        reasons.append(f"the map shows {usable_au:.0f} au about the source, the bank {field_au:.0f} au")
    if bank_beam_au > BANK_FIT_SHARPER * beam_au:
        reasons.append(
            f"the map's beam ({beam_au:.3g} au) is {bank_beam_au / beam_au:.1f} times sharper than the bank's and is "
            "smoothed to it"
        )
    observed = frequency["observed_frequency_ghz"]
    if observed and abs(observed / grid.frequency_ghz - 1.0) > 0.1:
        reasons.append(
            f"the map is at {observed:.0f} GHz and the bank at {grid.frequency_ghz:.0f} GHz, so fluxes are scaled with "
            f"an assumed spectral index of {frequency['spectral_index']:g}"
        )
    if reasons:
        warnings.warn(
            f"{shown_path(observation.path)}: the bank is not made for this map: {'; '.join(reasons)}. `protolib "
            "bank-for "
            f"{shown_path(observation.path)} --distance {distance_pc:g} --out DIR` builds a bank and networks that "
            "are.",
            stacklevel=3,
        )


def _warn_if_faint(observation: Observation, noise_rms_jy_beam: float) -> None:
    """A warning when the brightest pixel (single-pixel spikes left out) is under 5 times the noise: no source,
    or a noise peak as centre."""
    row, col, _ = observation.source_peak()
    peak = float(observation.image_jy_beam[row, col])
    if noise_rms_jy_beam > 0 and peak < 5.0 * noise_rms_jy_beam:
        warnings.warn(
            f"{shown_path(observation.path)}: the brightest pixel is only {peak / noise_rms_jy_beam:.1f} times the "
            "noise rms; the source may be "
            "undetected or the centre a noise peak. Give the source's position (--centre / centre=).",
            stacklevel=3,
        )


def _warn_about_spikes_and_blanks(
    observation: Observation, source: tuple[float, float], noise_rms_jy_beam: float
) -> None:
    """The warnings about the source: too faint (:func:`_warn_if_faint`), single-pixel spikes brighter than the source
    (passed over when centring, but matched as
    data if they lie in the field), and one when blanked pixels lie within a beam of the source (their flux
    is missing from the target, and the bank images are blanked alike)."""
    _warn_if_faint(observation, noise_rms_jy_beam)
    image, path = observation.image_jy_beam, observation.path
    _, _, spikes = observation.source_peak()
    if spikes:
        row, col = spikes[0]
        where = observation.wcs.pixel_to_world(col, row).to_string("hmsdms", precision=2)
        warnings.warn(
            f"{path}: {len(spikes)} single-pixel spike(s) brighter than the source (not extended over the beam, so not "
            "sky "
            f"emission), the brightest {image[row, col] / noise_rms_jy_beam:.0f} times the noise at {where} (pixel "
            f"x={col}, "
            f"y={row}); they were passed over when centring. Blank them (NaN) in the file if they lie near the source.",
            stacklevel=3,
        )
    fwhm = observation.beam_fwhm_pixels
    x, y = (float(v) for v in source)
    half = int(math.ceil(fwhm))
    r0, c0 = max(0, int(round(y)) - half), max(0, int(round(x)) - half)
    patch = image[r0 : int(round(y)) + half + 1, c0 : int(round(x)) + half + 1]
    rows, cols = np.mgrid[r0 : r0 + patch.shape[0], c0 : c0 + patch.shape[1]]
    near = np.hypot(rows - y, cols - x) <= fwhm
    blanked = int(np.sum(near & ~np.isfinite(patch)))
    if blanked:
        warnings.warn(
            f"{path}: {blanked} of the {int(near.sum())} pixels within a beam FWHM of the source centre are blanked "
            "(NaN); "
            "the flux there is missing from the target (the bank images are blanked the same way when matched). Use a "
            "map "
            "without blanks on the source if there is one.",
            stacklevel=3,
        )


def _on_bank_grid(
    observation: Observation, grid: BankGrid, distance_pc: float, centre: SkyCoord, mask_radius_arcsec: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """The observed image resampled onto the bank's grid about ``centre`` (its pixels seen at ``distance_pc``),
    and its coverage; refused below :data:`MIN_FIELD_FRACTION` of the field, masked beyond ``mask_radius_arcsec``."""
    path, size, field_au = observation.path, grid.image_size, grid.field_of_view_au
    # bank pixel seen at the observed distance
    target_wcs = sky_grid_wcs(centre, size, grid.pixel_size_au / distance_pc)
    resampled, coverage = resample_to_grid(observation.image_jy_beam, observation.wcs, target_wcs, (size, size))
    covered = float(coverage.mean())
    if covered < MIN_FIELD_FRACTION:
        raise ProtolibInputError(
            f"{shown_path(path)}: the observation covers only {100 * covered:.0f}% of the bank's {field_au:.0f} au "
            "field "
            f'({field_au / distance_pc:.2f}" at {distance_pc:g} pc); at least {100 * MIN_FIELD_FRACTION:.0f}% is '
            "needed. "
            f"Check the distance and centre, or build a bank made for this map: `protolib bank-for {shown_path(path)} "
            "--distance "
            f"{distance_pc:g} --out DIR`."
        )
    if mask_radius_arcsec:  # after the field check: what the user masks is not missing data
        resampled, coverage = resample_to_grid(
            _blank_beyond(observation, centre, mask_radius_arcsec), observation.wcs, target_wcs, (size, size)
        )
    elif covered < 1.0 - 1e-3:
        warnings.warn(
            f"{path}: the observation covers {100 * covered:.1f}% of the bank's {field_au:.0f} au field; "
            f"{100 * (1 - covered):.1f}% of the prepared image is zero padding (see its coverage).",
            stacklevel=3,
        )
    return resampled, coverage


def _blank_beyond(observation: Observation, centre: SkyCoord, radius_arcsec: float) -> np.ndarray:
    """The observation's image with every pixel further than ``radius_arcsec`` from ``centre`` blanked (NaN)."""
    image = observation.image_jy_beam
    x, y = (float(v) for v in observation.wcs.world_to_pixel(centre))
    half = int(math.ceil(1.5 * radius_arcsec / observation.pixel_scale_arcsec)) + 2  # only pixels this near can be kept
    r0, r1 = max(0, int(round(y)) - half), min(image.shape[0], int(round(y)) + half + 1)
    c0, c1 = max(0, int(round(x)) - half), min(image.shape[1], int(round(x)) + half + 1)
    kept = np.full(image.shape, np.nan)
    if r0 < r1 and c0 < c1:
        rows, cols = np.mgrid[r0:r1, c0:c1]
        separation = observation.wcs.pixel_to_world(cols, rows).separation(centre).to_value(u.arcsec)
        kept[r0:r1, c0:c1] = np.where(separation <= radius_arcsec, image[r0:r1, c0:c1], np.nan)
    return kept


def _at_common_resolution(
    resampled: np.ndarray, observation: Observation, grid: BankGrid, distance_pc: float
) -> tuple[np.ndarray, np.ndarray, float, bool]:
    """The resampled image at a resolution that contains the bank's: ``(image, working covariance [pixels^2],
    Jy/observed beam -> Jy/working beam factor, whether it was smoothed)``.

    The resolution is the beam plus the pixels. Observed pixels are samples of the beam-convolved sky;
    the histospline takes them as pixel means (a box of the source pixel taken away) and the target
    pixel averages over its own box, each box taken as a Gaussian of the same variance (side^2 / 12).
    """
    pixel_arcsec_obs = grid.pixel_size_au / distance_pc  # bank pixel seen at the observed distance
    observed = observation.beam.covariance_pixels(pixel_arcsec_obs)
    source_pixel = observation.pixel_scale_arcsec / pixel_arcsec_obs  # in target pixels
    effective = observed + (1.0 - source_pixel**2) / 12.0 * np.eye(2)
    working = effective
    if grid.beam is not None:
        working = common_beam_covariance(effective, effective_beam_covariance(grid.beam, grid.pixel_arcsec))
    smoothing = working - effective
    smoothed = bool(np.abs(smoothing).max() > 1e-6 * np.trace(working))
    image = convolve_beam(torch.as_tensor(resampled), smoothing).numpy() if smoothed else resampled
    # Jy/observed beam -> Jy/working beam
    unit_factor = gaussian_solid_angle_pixels(working) / gaussian_solid_angle_pixels(observed)
    return image, working, unit_factor, smoothed


def _as_read(observation: Observation) -> dict:
    """The fields of a :class:`~protolib.observation.PreparedObservation` that are the observation's as read."""
    return {
        "observed_beam": observation.beam,
        "source_path": str(observation.path),
        "object_name": observation.object_name,
        "true_parameters": dict(observation.true_parameters),
        "original": observation,
        "blanked_zero_fraction": observation.blanked_zero_fraction,
    }
