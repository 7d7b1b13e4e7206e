"""The prepared observation, the product of :func:`~protolib.observation.prepare_observation`, and its FITS file.

:class:`PreparedObservation` holds the image on the bank's grid, what was done to it and the transform
that matches bank images to it; :meth:`PreparedObservation.write_fits` writes it (``protolib observe
--out``) and :func:`read_prepared_observation` reads it back.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning

from .. import __version__
from ..instrument import Beam
from ..runtime import ProtolibInputError, atomic_path
from .fits import (
    DEG_ARCSEC,
    PREPARED_CARD,
    Observation,
    card_number,
    checked_max_scale,
    is_prepared,
    true_parameters_from_header,
)
from .regrid import BankGrid, sky_grid_wcs
from .resolution import ResolutionMatch

__all__ = [
    "PreparedObservation",
    "read_prepared_observation",
    "prepared_file",
    "refuse_empty_target",
    "MIN_TARGET_BEAMS",
]


PREPARED_COMMENTS = (
    "Prepared by protolib observe: resampled onto the bank grid (flux conserving), centred",
    "on the source, fluxes scaled to the bank distance; the sky scale (CDELT, BMAJ) is the",
    "one the source would have at DIST_BNK. NOISE_RMS: noise here; OBS_*: the observed",
    "beam and rms; BANK_*: the bank's. SMOOTHED: smoothed to a beam containing the bank's.",
    "Extension COVERAGE: fraction of each pixel with observed data (the rest is zero).",
    "Fluxes are brought to BANK_FREQ by FREQ_FACTOR = (BANK_FREQ/OBS_FREQ)^SPEC_INDEX; bank",
    "images are matched to it with scales above MAX_SCALE removed (interferometric filtering).",
)  # the COMMENT cards of a prepared observation's header, in order


@dataclass
class PreparedObservation:
    """An observation on the bank's grid, as the pipeline sees it (see the conventions of :mod:`protolib.observation`).

    ``image_jy_beam`` is ``(N, N)``, rows north, columns west, in Jy per :attr:`beam` with the source at
    the bank's distance; ``coverage`` is the fraction of each pixel holding observed data (the rest is
    zero padding). ``noise_rms_jy_beam`` is the noise in ``image_jy_beam``.
    """

    image_jy_beam: np.ndarray
    coverage: np.ndarray
    beam: Beam
    noise_rms_jy_beam: float
    grid: BankGrid
    distance_pc: float
    centre: SkyCoord
    observed_beam: Beam
    observed_noise_rms_jy_beam: float
    smoothed: bool
    source_path: str = ""
    object_name: str = ""
    true_parameters: dict[str, float] = field(default_factory=dict)
    original: Observation | None = None
    observed_frequency_ghz: float | None = None  # None: the file did not say (taken as the bank's)
    frequency_source: str = ""  # how the frequency was found
    spectral_index: float = 3.0  # dust spectral index used to bring fluxes to the bank's frequency
    frequency_factor: float = 1.0  # (bank frequency / observed)^spectral_index, applied to the image and noise
    max_scale_arcsec: float | None = None  # maximum recoverable scale, at the observed distance (None: no filtering)
    max_scale_source: str = ""  # "given", "file", "estimated: ..." (the map's negative bowl) or the assumption made
    # the negative bowl's estimate (ScaleEstimate.to_dict) when neither user nor file gave it
    max_scale_estimate: dict | None = None
    blanked_zero_fraction: float = 0.0  # fraction of the file's pixels that were zero-valued blanking
    mask_radius_arcsec: float | None = None  # everything further than this from the centre was blanked
    # compact sources in the field (CompactSource.to_dict), brightest first
    sources: list[dict] = field(default_factory=list)

    def __repr__(self) -> str:
        n, b = self.grid.image_size, self.beam
        return (
            f"PreparedObservation({Path(self.source_path).name!r} at {self.distance_pc:g} pc -> {n}x{n} px of "
            f'{self.grid.pixel_size_au:.3g} au at {self.grid.distance_pc:g} pc; beam {b.major_arcsec:.3g}"x'
            f'{b.minor_arcsec:.3g}" PA {b.position_angle_deg:.0f} deg; noise {self.noise_rms_jy_beam:.3g} Jy/beam; '
            f"{100 * self.padded_fraction:.1f}% padded)"
        )

    @property
    def flux_scale(self) -> float:
        """Factor applied to fluxes to move the source to the bank's distance: ``(d / d_bank)^2``."""
        return (self.distance_pc / self.grid.distance_pc) ** 2

    @property
    def padded_fraction(self) -> float:
        """Fraction of the bank's field with no observed data (zero padded)."""
        return float(1.0 - self.coverage.mean())

    @property
    def total_flux_jy(self) -> float:
        """Total flux in the prepared image [Jy], at the bank's distance."""
        pixel = self.grid.pixel_arcsec
        beam_pixels = self.beam.solid_angle_sr / (pixel * math.pi / 180.0 / 3600.0) ** 2
        return float(self.image_jy_beam.sum() / beam_pixels)

    def transform(self) -> ResolutionMatch:
        """The transform that brings bank images to this observation's resolution, units and noise."""
        return ResolutionMatch(
            self.beam,
            self.grid.pixel_arcsec,
            bank_beam=self.grid.beam,
            noise_rms_jy_beam=self.noise_rms_jy_beam,
            bank_noise_rms_jy_beam=self.grid.noise_rms_jy_beam,
            coverage=self.coverage if self.coverage.min() < 1.0 - 1e-6 else None,
            max_scale_arcsec=self.max_scale_at_bank_arcsec,
        )

    @property
    def max_scale_at_bank_arcsec(self) -> float | None:
        """The maximum recoverable scale seen at the bank's distance (its size in au is kept)."""
        if not self.max_scale_arcsec:
            return None
        return self.max_scale_arcsec * self.distance_pc / self.grid.distance_pc

    def info(self) -> dict:
        """What the preparation did, as plain data (for ``report.json``)."""
        observed = self.observed_beam
        return {
            "object": self.object_name,
            "centre": self.centre.to_string("hmsdms", precision=2),
            "beam_arcsec_at_bank_distance": [
                self.beam.major_arcsec,
                self.beam.minor_arcsec,
                self.beam.position_angle_deg,
            ],
            "observed_beam_arcsec": [observed.major_arcsec, observed.minor_arcsec, observed.position_angle_deg],
            "noise_rms_jy_beam": self.noise_rms_jy_beam,
            "observed_noise_rms_jy_beam": self.observed_noise_rms_jy_beam,
            "flux_scale": self.flux_scale,
            "smoothed_to_bank_beam": self.smoothed,
            "padded_fraction": self.padded_fraction,
            "observed_frequency_ghz": self.observed_frequency_ghz,
            "frequency_source": self.frequency_source,
            "bank_frequency_ghz": self.grid.frequency_ghz,
            "spectral_index": self.spectral_index,
            "frequency_factor": self.frequency_factor,
            "max_scale_arcsec": self.max_scale_arcsec,
            "max_scale_source": self.max_scale_source,
            "max_scale_estimate": self.max_scale_estimate,
            "blanked_zero_fraction": self.blanked_zero_fraction,
            "mask_radius_arcsec": self.mask_radius_arcsec,
            "compact_sources": list(self.sources),
        }

    def to_header(self) -> fits.Header:
        """A FITS header for the prepared image: its WCS at the bank's distance and what was done."""
        header = sky_grid_wcs(self.centre, self.grid.image_size, self.grid.pixel_arcsec).to_header()
        header["BUNIT"] = ("Jy/beam", "for BMAJ/BMIN/BPA, source moved to DIST_BNK")
        header["BMAJ"] = (self.beam.major_arcsec / DEG_ARCSEC, "[deg] resolution at the bank's distance")
        header["BMIN"] = (self.beam.minor_arcsec / DEG_ARCSEC, "[deg]")
        header["BPA"] = (self.beam.position_angle_deg, "[deg] east of north")
        header["OBJECT"] = self.object_name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", VerifyWarning)  # long comments are shortened; values are kept
            for key, (value, comment) in self._cards().items():
                header[f"HIERARCH {key}"] = (value, comment)
        for line in PREPARED_COMMENTS:
            header["COMMENT"] = line
        return header

    def _cards(self) -> dict:
        """The ``PROTOLIB`` cards: what was done, the observation's own settings, and the bank's."""
        cards = {
            PREPARED_CARD: (True, "made by protolib observe; never prepare again"),
            "PROTOLIB VERSION": (__version__, "software"),
            "PROTOLIB SOURCE": (Path(self.source_path).name, "observed file"),
            "PROTOLIB BANK": (Path(self.grid.name).name, "bank file"),
            "PROTOLIB DIST_OBS": (self.distance_pc, "[pc] observed source"),
            "PROTOLIB DIST_BNK": (self.grid.distance_pc, "[pc] bank"),
            "PROTOLIB PIX_AU": (self.grid.pixel_size_au, "[au] pixel side"),
            "PROTOLIB FLUX_SCALE": (self.flux_scale, "(DIST_OBS/DIST_BNK)^2"),
            "PROTOLIB NOISE_RMS": (self.noise_rms_jy_beam, "[Jy/beam] here"),
            "PROTOLIB OBS_RMS": (self.observed_noise_rms_jy_beam, "[Jy/beam] observed"),
            "PROTOLIB OBS_BMAJ": (self.observed_beam.major_arcsec, "[arcsec]"),
            "PROTOLIB OBS_BMIN": (self.observed_beam.minor_arcsec, "[arcsec]"),
            "PROTOLIB OBS_BPA": (self.observed_beam.position_angle_deg, "[deg]"),
            "PROTOLIB SMOOTHED": (self.smoothed, "to contain bank beam"),
            "PROTOLIB PADDED": (self.padded_fraction, "fraction padded"),
            "PROTOLIB CENTRE_RA": (self.centre.icrs.ra.deg, "[deg]"),
            "PROTOLIB CENTRE_DEC": (self.centre.icrs.dec.deg, "[deg]"),
            **self._setup_cards(),
        }
        for key, value in self.true_parameters.items():
            cards[f"PROTOLIB TRUE {key.upper()}"] = (value, "true")
        return cards

    def _setup_cards(self) -> dict:
        """The cards of the bank's setup and of the map's frequency, recoverable scale, blanking and sources."""
        cards = {}
        if self.grid.beam is not None:
            cards["PROTOLIB BANK_BMAJ"] = (self.grid.beam.major_arcsec, "[arcsec]")
            cards["PROTOLIB BANK_BMIN"] = (self.grid.beam.minor_arcsec, "[arcsec]")
            cards["PROTOLIB BANK_BPA"] = (self.grid.beam.position_angle_deg, "[deg]")
        cards["PROTOLIB BANK_RMS"] = (self.grid.noise_rms_jy_beam, "[Jy/beam]")
        cards["PROTOLIB BANK_FREQ"] = (self.grid.frequency_ghz, "[GHz] bank")
        cards["PROTOLIB BANK_BETA"] = (self.grid.opacity_beta, "bank opacity index")
        cards["PROTOLIB OBS_FREQ"] = (
            self.observed_frequency_ghz if self.observed_frequency_ghz else 0.0,
            "[GHz] 0: unknown",
        )
        cards["PROTOLIB SPEC_INDEX"] = (self.spectral_index, "S ~ nu^index")
        cards["PROTOLIB FREQ_FACTOR"] = (self.frequency_factor, "applied to flux")
        cards["PROTOLIB MAX_SCALE"] = (self.max_scale_arcsec or 0.0, "[arcsec] observed; 0: none")
        cards["PROTOLIB ZERO_BLANK"] = (self.blanked_zero_fraction, "zero-blanked fraction")
        cards["PROTOLIB N_SOURCES"] = (len(self.sources), "compact sources found")
        if self.mask_radius_arcsec:
            cards["PROTOLIB MASK_RAD"] = (self.mask_radius_arcsec, "[arcsec] blanked beyond")
        return cards

    def write_fits(self, path: str | Path) -> Path:
        """Write the prepared image (primary HDU) and its coverage (extension ``COVERAGE``), atomically."""
        header = self.to_header()
        hdus = fits.HDUList(
            [
                fits.PrimaryHDU(self.image_jy_beam.astype(np.float32), header=header),
                fits.ImageHDU(self.coverage.astype(np.float32), name="COVERAGE"),
            ]
        )
        with atomic_path(path) as tmp:
            hdus.writeto(tmp, overwrite=True)
        return Path(path)


def read_prepared_observation(path: str | Path) -> PreparedObservation:
    """Read a file written by :meth:`PreparedObservation.write_fits` (``protolib observe --out``).

    Every ``PROTOLIB`` card is checked as the option that set it was (positive distances, noise and
    beam, a recoverable scale of 0 or between the beam and a degree); a file whose image holds no data
    is refused (:func:`refuse_empty_target`).
    """
    path = Path(path)
    header, image, coverage = _prepared_hdus(path)
    number = lambda key, default=None: card_number(header, key, path, default)  # noqa: E731
    positive = _positive_cards(path, number)
    beam = Beam(positive["BMAJ"] * DEG_ARCSEC, positive["BMIN"] * DEG_ARCSEC, number("BPA", 0.0))
    observed_beam = _beam_from_header(header, "OBS_", path)
    max_scale = checked_max_scale(
        number("PROTOLIB MAX_SCALE", 0.0),
        observed_beam.major_arcsec if observed_beam else 0.0,
        f"{path}: the card PROTOLIB MAX_SCALE",
    )
    prepared = PreparedObservation(
        image_jy_beam=image,
        coverage=coverage,
        beam=beam,
        noise_rms_jy_beam=positive["PROTOLIB NOISE_RMS"],
        grid=_grid_from_header(header, image.shape[-1], path),
        distance_pc=positive["PROTOLIB DIST_OBS"],
        centre=SkyCoord(number("PROTOLIB CENTRE_RA", 0.0) * u.deg, number("PROTOLIB CENTRE_DEC", 0.0) * u.deg),
        observed_beam=observed_beam,
        observed_noise_rms_jy_beam=positive["PROTOLIB OBS_RMS"],
        smoothed=bool(header.get("PROTOLIB SMOOTHED", False)),
        source_path=str(header.get("PROTOLIB SOURCE", "")),
        object_name=str(header.get("OBJECT", "")),
        true_parameters=true_parameters_from_header(header, path),
        observed_frequency_ghz=number("PROTOLIB OBS_FREQ", 0.0) or None,
        spectral_index=number("PROTOLIB SPEC_INDEX", 3.0),
        frequency_factor=number("PROTOLIB FREQ_FACTOR", 1.0),
        max_scale_arcsec=max_scale,
        max_scale_source="file",
        blanked_zero_fraction=number("PROTOLIB ZERO_BLANK", 0.0),
        mask_radius_arcsec=number("PROTOLIB MASK_RAD", 0.0) or None,
    )
    refuse_empty_target(prepared.image_jy_beam, prepared.coverage, prepared.beam, prepared.grid.pixel_arcsec, str(path))
    return prepared


def _prepared_hdus(path: Path) -> tuple[fits.Header, np.ndarray, np.ndarray]:
    """The header, image and coverage of a prepared observation's file, refused in one line when it is not one (not
    FITS, no ``PROTOLIB`` cards, not one square image)."""
    try:
        with fits.open(path, memmap=False) as hdul:
            header = hdul[0].header.copy()
            image = np.asarray(hdul[0].data, dtype=np.float32)
            coverage = (
                np.asarray(hdul["COVERAGE"].data, dtype=np.float32) if "COVERAGE" in hdul else np.ones_like(image)
            )
    except (OSError, ValueError, TypeError) as error:
        raise ProtolibInputError(f"{path}: not a readable FITS file ({error}).") from None
    if not is_prepared(header):
        raise ProtolibInputError(
            f"{path}: not a prepared observation (no PROTOLIB cards); make one with `protolib observe`."
        )
    if image.ndim != 2 or image.shape[0] != image.shape[1] or coverage.shape != image.shape:
        raise ProtolibInputError(
            f"{path}: a prepared observation is one square image (and a COVERAGE of its shape); this one is "
            f"{image.shape}. Prepare it again with `protolib observe`."
        )
    return header, image, coverage


POSITIVE_CARDS = (
    "PROTOLIB NOISE_RMS",
    "PROTOLIB DIST_OBS",
    "PROTOLIB OBS_RMS",
    "PROTOLIB PIX_AU",
    "PROTOLIB DIST_BNK",
    "BMAJ",
    "BMIN",
)  # cards a prepared observation cannot do without, each a positive number


def _positive_cards(path: Path, number) -> dict[str, float]:
    """The :data:`POSITIVE_CARDS` (``number``: a card's value), each refused unless a positive number."""
    positive = {key: number(key) for key in POSITIVE_CARDS}
    for key, value in positive.items():
        if value is None or not value > 0:
            raise ProtolibInputError(
                f"{path}: the card {key} is {'missing' if value is None else f'{value:g}'}; it must be a positive "
                "number. Prepare the file again with `protolib observe`."
            )
    return positive


def prepared_file(path: str | Path) -> bool:
    """Whether ``path`` is a FITS file written by ``protolib observe`` (its primary header says so); ``False`` for
    any file that cannot be read (reading it as an observation then says why)."""
    try:
        return is_prepared(fits.getheader(path, 0))
    except Exception:  # noqa: BLE001 - any file astropy cannot read is not a prepared observation
        return False


MIN_TARGET_BEAMS = 1.0  # a target needs observed, non-zero data over at least this many beam areas


def refuse_empty_target(
    image: np.ndarray, coverage: np.ndarray, beam: Beam, pixel_arcsec: float, where: str, hint: str = ""
) -> None:
    """Refuse a target with (almost) nothing to match: observed data over less than :data:`MIN_TARGET_BEAMS` beam
    area, or an image that is zero (or not finite) everywhere. Matching it would give perfect-looking
    scores (every bank image, blanked the same way, looks alike) for no information.

    Arguments:
        image, coverage: ``(N, N)`` the target on the bank's grid and the observed fraction of each pixel.
        beam: its beam; ``pixel_arcsec``: the grid's pixel side; ``where``: the file, for the message;
            ``hint``: what to change (e.g. a larger ``--mask-radius``).
    """
    beam_pixels = beam.solid_angle_sr / (pixel_arcsec * math.pi / 180.0 / 3600.0) ** 2
    observed = float(np.sum(np.where(np.isfinite(coverage), coverage, 0.0)))
    finite = np.isfinite(image)
    if observed < MIN_TARGET_BEAMS * beam_pixels or not finite.any() or not np.any(image[finite] != 0.0):
        state = (
            f"observed data cover only {observed:.3g} pixel(s), under one beam ({beam_pixels:.3g} pixels)"
            if observed < MIN_TARGET_BEAMS * beam_pixels
            else "every pixel is zero or blank"
        )
        raise ProtolibInputError(
            f"{where}: nothing to match on the bank's grid: {state}. {hint or 'Check the file and the centre.'}"
        )


def _beam_from_header(header: fits.Header, prefix: str, path: Path) -> Beam | None:
    """The beam of the ``PROTOLIB <prefix>BMAJ/BMIN/BPA`` cards [arcsec, deg] (``None`` when absent), checked like
    ``--beam``."""
    if f"PROTOLIB {prefix}BMAJ" not in header:
        return None
    major, minor, angle = (
        card_number(header, f"PROTOLIB {prefix}{axis}", path, 0.0) for axis in ("BMAJ", "BMIN", "BPA")
    )
    if not (major > 0 and minor > 0):
        raise ProtolibInputError(
            f"{path}: the cards PROTOLIB {prefix}BMAJ/BMIN = {major:g}, {minor:g} are not a beam (positive FWHM "
            "axes in arcsec). Prepare the file again with `protolib observe`."
        )
    return Beam(major, minor, angle)


def _grid_from_header(header: fits.Header, image_size: int, path: Path) -> BankGrid:
    """The bank's grid as a prepared observation's header describes it (``PROTOLIB`` cards)."""
    number = lambda key, default=None: card_number(header, key, path, default)  # noqa: E731
    return BankGrid(
        image_size=image_size,
        pixel_size_au=number("PROTOLIB PIX_AU"),
        distance_pc=number("PROTOLIB DIST_BNK"),
        beam=_beam_from_header(header, "BANK_", path),
        noise_rms_jy_beam=number("PROTOLIB BANK_RMS", 0.0),
        name=str(header.get("PROTOLIB BANK", "")),
        frequency_ghz=number("PROTOLIB BANK_FREQ", 230.0),
        opacity_beta=number("PROTOLIB BANK_BETA", 1.0),
    )
