"""Reading an observed continuum image from a FITS file: :class:`Observation` and :func:`read_observation`.

Every common layout is read: 2, 3 or 4 axes (degenerate frequency, velocity or Stokes axes in any
order), any celestial projection astropy knows, pixel scales from CDELT or a CD/PC matrix, BUNIT in
Jy/beam, mJy/beam or Jy/pixel, the beam from BMAJ/BMIN/BPA or a CASA BEAMS table, zero-valued
blanking (:func:`blank_zero_regions`) and the observed frequency from the spectral axis. A broken
file or header is refused with a message that names the file and says how to fix it.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS, WCSSUB_SPECTRAL, FITSFixedWarning
from astropy.wcs.utils import proj_plane_pixel_scales
from scipy import ndimage

from ..instrument import Beam
from ..runtime import ProtolibInputError

__all__ = [
    "Observation",
    "read_observation",
    "blank_zero_regions",
    "refine_peak",
    "is_spike",
    "source_peak",
    "plain_icrs",
    "true_parameters_from_header",
    "DEG_ARCSEC",
    "MIN_IMAGE_PIXELS",
    "parse_brightness_unit",
    "TRUE_CARD",
    "PREPARED_CARD",
    "MAX_SCALE_LIMIT_ARCSEC",
    "card_number",
    "checked_max_scale",
    "is_prepared",
    "available_memory_bytes",
    "IMAGE_WORKING_COPIES",
]

DEG_ARCSEC = 3600.0
# an image smaller than this (per side) holds too little to centre, measure the noise and resample
MIN_IMAGE_PIXELS = 16
TRUE_CARD = "PROTOLIB TRUE "  # header cards holding the true parameters of a synthetic observation
PREPARED_CARD = "PROTOLIB PREPARED"  # the card that marks an image written by ``protolib observe``
MAX_SCALE_LIMIT_ARCSEC = 3600.0  # a "maximum recoverable scale" beyond a degree is a mistake (0 means no filtering)


@dataclass
class Observation:
    """An observed image as read from a FITS file, in Jy/beam.

    ``image_jy_beam`` is 2-D and indexed like :attr:`wcs` (``[y, x]`` pixel), NaN where blanked;
    ``wcs`` is the celestial part of the file's WCS. ``true_parameters`` holds the physical parameters
    of a synthetic observation written by :func:`~protolib.observation.write_observation_fits` (empty for real data).

    ``frequency_ghz`` is the observed frequency (``None`` when the file does not say) and
    ``frequency_source`` how it was found. ``blanked_zero_fraction`` is the fraction of pixels that
    were exact zeros outside the observed region (primary-beam-corrected NOEMA and some CASA maps
    blank with 0.0) and are now NaN. ``max_scale_arcsec`` is the maximum recoverable scale the file
    declares (``0``: no interferometric filtering, as in protolib's synthetic observations).
    """

    path: Path
    image_jy_beam: np.ndarray
    wcs: WCS
    beam: Beam
    header: fits.Header
    object_name: str = ""
    frequency_ghz: float | None = None
    frequency_source: str = ""
    blanked_zero_fraction: float = 0.0
    max_scale_arcsec: float | None = None
    true_parameters: dict[str, float] = field(default_factory=dict)

    def __repr__(self) -> str:
        ny, nx = self.image_jy_beam.shape
        return (
            f'Observation({self.path.name!r}: {nx}x{ny} px of {self.pixel_scale_arcsec:.3g}", beam '
            f'{self.beam.major_arcsec:.3g}"x{self.beam.minor_arcsec:.3g}" PA {self.beam.position_angle_deg:.0f} deg, '
            f"object {self.object_name!r})"
        )

    @property
    def pixel_scale_arcsec(self) -> float:
        """Geometric mean pixel side [arcsec]."""
        scales = proj_plane_pixel_scales(self.wcs) * DEG_ARCSEC
        return float(math.sqrt(scales[0] * scales[1]))

    @property
    def beam_fwhm_pixels(self) -> float:
        """The beam's FWHM in pixels (geometric mean of its axes)."""
        return math.sqrt(self.beam.major_arcsec * self.beam.minor_arcsec) / self.pixel_scale_arcsec

    def source_peak(self) -> tuple[int, int, list[tuple[int, int]]]:
        """``(row, column)`` of the brightest pixel that is not a single-pixel spike, and the spikes passed over
        (:func:`source_peak`); kept until the image or the beam changes."""
        key = (id(self.image_jy_beam), self.image_jy_beam.shape, self.beam_fwhm_pixels)
        cached = self.__dict__.get("_source_peak")
        if cached is None or cached[0] != key:
            cached = (key, source_peak(self.image_jy_beam, self.beam_fwhm_pixels))
            self.__dict__["_source_peak"] = cached
        return cached[1]

    def peak_coordinate(self) -> SkyCoord:
        """Sky position of the brightest pixel that is extended over the beam (a single hot pixel is passed
        over, :func:`source_peak`), refined by a 2-D quadratic fit to the log of its 3 x 3 neighbourhood
        (exact for a Gaussian peak of any orientation)."""
        row, col, _ = self.source_peak()
        data = np.where(np.isfinite(self.image_jy_beam), self.image_jy_beam, -np.inf)
        return self.wcs.pixel_to_world(*refine_peak(data, row, col))


SPIKE_FRACTION = 0.15  # a pixel whose beam-weighted surroundings hold less than this fraction of it is a spike
SPIKE_MIN_FWHM_PIXELS = 1.7  # below this beam FWHM [pixels], a real point source looks like a spike: no test


def is_spike(image: np.ndarray, row: int, col: int, fwhm_pixels: float) -> bool:
    """Whether pixel (row, col) of ``image`` is a single-pixel spike (a hot pixel, a cosmic ray, a glitch).

    Everything an interferometer images is seen through its beam, so real emission is extended over
    it: the beam-weighted mean of a real peak's neighbours (the pixel itself left out) is 30-50% of its
    value for a beam of 1.7 pixels or more. A pixel whose neighbours hold under :data:`SPIKE_FRACTION`
    of it is not sky emission. Maps whose beam spans under :data:`SPIKE_MIN_FWHM_PIXELS` pixels cannot
    tell them apart: nothing is a spike there.
    """
    value = image[row, col]
    if fwhm_pixels < SPIKE_MIN_FWHM_PIXELS or not (np.isfinite(value) and value > 0):
        return False
    half = int(math.ceil(1.5 * fwhm_pixels))
    r0, c0 = max(0, row - half), max(0, col - half)
    patch = image[r0 : row + half + 1, c0 : col + half + 1]
    dy, dx = np.mgrid[r0 - row : r0 - row + patch.shape[0], c0 - col : c0 - col + patch.shape[1]]
    weight = np.exp(-4.0 * math.log(2.0) * (dx**2 + dy**2) / fwhm_pixels**2)
    weight[(dy == 0) & (dx == 0)] = 0.0
    weight = np.where(np.isfinite(patch), weight, 0.0)
    if weight.sum() <= 0:
        return True
    around = float(np.sum(weight * np.where(np.isfinite(patch), patch, 0.0)) / weight.sum())
    return around < SPIKE_FRACTION * float(value)


def source_peak(
    image: np.ndarray, fwhm_pixels: float, candidates: int = 64, rounds: int = 8
) -> tuple[int, int, list[tuple[int, int]]]:
    """``(row, column)`` of the brightest pixel of ``image`` that is not a spike (:func:`is_spike`), and the
    spikes, brightest first, that were brighter.

    The ``candidates`` brightest pixels are tested, then the next ones, for at most ``rounds`` rounds;
    when every one is a spike the brightest pixel is returned. Only a few hundred pixels are looked
    at closely, so a map of any size costs one pass.
    """
    data = np.where(np.isfinite(image), image, -np.inf).ravel()
    first = int(np.argmax(data))
    spikes: list[tuple[int, int]] = []
    for _ in range(rounds):
        k = min(candidates, data.size)
        top = np.argpartition(-data, k - 1)[:k]
        for index in top[np.argsort(-data[top], kind="stable")]:
            if not np.isfinite(data[index]):  # no pixel left but spikes
                break
            row, col = (int(v) for v in np.unravel_index(int(index), image.shape))
            if not is_spike(image, row, col, fwhm_pixels):
                return row, col, spikes
            spikes.append((row, col))
        data[top] = -np.inf
    row, col = (int(v) for v in np.unravel_index(first, image.shape))
    return row, col, spikes


def refine_peak(data: np.ndarray, row: int, col: int) -> tuple[float, float]:
    """(column, row) of the peak near pixel (row, col) of ``data`` ``(ny, nx)``, to a fraction of a pixel.

    A 2-D quadratic is fitted to the log of the 3 x 3 neighbourhood (exact for a Gaussian peak); at the
    border, or where a neighbour is blank or not positive, the pixel itself is returned.
    """
    if not (1 <= row < data.shape[0] - 1 and 1 <= col < data.shape[1] - 1):
        return float(col), float(row)
    patch = data[row - 1 : row + 2, col - 1 : col + 2]
    if not (np.isfinite(patch).all() and (patch > 0).all()):
        return float(col), float(row)
    dy, dx = np.mgrid[-1:2, -1:2]
    design = np.stack(
        [np.ones(9), dx.ravel(), dy.ravel(), dx.ravel() ** 2, dx.ravel() * dy.ravel(), dy.ravel() ** 2], axis=1
    )
    _, bx, by, cxx, cxy, cyy = np.linalg.lstsq(design, np.log(patch.ravel()), rcond=None)[0]
    hessian = np.array([[2 * cxx, cxy], [cxy, 2 * cyy]])
    if np.any(np.linalg.eigvalsh(hessian) >= 0):
        return float(col), float(row)
    offset = np.linalg.solve(hessian, -np.array([bx, by]))
    offset = np.clip(offset, -1.0, 1.0)
    return float(col + offset[0]), float(row + offset[1])


def plain_icrs(coordinate: SkyCoord) -> SkyCoord:
    """The position in ICRS with no other frame attributes (an FK5 file's equinox would make offsets refuse)."""
    icrs = coordinate.icrs
    return SkyCoord(icrs.ra, icrs.dec, frame="icrs")


def true_parameters_from_header(header: fits.Header, path: str | Path = "") -> dict[str, float]:
    """The true parameters a synthetic observation declares (``PROTOLIB TRUE <NAME>`` cards), by lower-case name;
    a card that is not a finite number is refused, naming ``path``."""
    return {
        key[len(TRUE_CARD) :].lower(): card_number(header, key, path) for key in header if key.startswith(TRUE_CARD)
    }


def card_number(header: fits.Header, key: str, path: str | Path = "", default: float | None = None) -> float | None:
    """The header card ``key`` as a finite number (``default`` when the card is absent); any other value is
    refused in one line naming ``path`` and the card."""
    if key not in header:
        return default
    value = header[key]
    try:
        number = float(value) if not isinstance(value, str) else float(value.strip())
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number):
        raise ProtolibInputError(
            f"{path}: the header card {key} = {value!r} is not a finite number; fix the card or remove it."
        )
    return number


def checked_max_scale(value: float, beam_major_arcsec: float, where: str) -> float | None:
    """A maximum recoverable scale [arcsec] checked the same way wherever it comes from (``--max-scale`` or a
    file's ``PROTOLIB MAX_SCALE`` card, named in ``where``): 0 means no filtering (``None``); otherwise it must
    lie between the beam's major axis and :data:`MAX_SCALE_LIMIT_ARCSEC`."""
    if not (math.isfinite(value) and value >= 0):
        raise ProtolibInputError(
            f"{where}: the maximum recoverable scale must be 0 (none) or a positive number of arcsec, got {value:g}."
        )
    if value and not beam_major_arcsec <= value <= MAX_SCALE_LIMIT_ARCSEC:
        raise ProtolibInputError(
            f'{where}: a maximum recoverable scale of {value:g}" is '
            + (
                f'smaller than the beam ({beam_major_arcsec:.3g}"): nothing would be left'
                if value < beam_major_arcsec
                else f'beyond {MAX_SCALE_LIMIT_ARCSEC:g}" (give 0 for no filtering)'
            )
            + "."
        )
    return float(value) or None


def is_prepared(header: fits.Header) -> bool:
    """Whether ``header`` is that of an image written by ``protolib observe`` (already on a bank's grid)."""
    return PREPARED_CARD in header or "PROTOLIB DIST_BNK" in header


# ---------------------------------------------------------------------------------------------
# The header's cards and axes.

_FLUX_PREFIXES = {"": "", "u": "u", "µ": "u", "n": "n", "k": "k"}  # prefixes of JY or jy that are not ambiguous
_PER_BEAM, _PER_PIXEL = u.Jy / u.beam, u.Jy / u.pix


def parse_brightness_unit(bunit: str, where: str) -> tuple[str, float]:
    """``("beam" | "pixel", factor to Jy)`` from a BUNIT string, read by astropy, case-sensitively.

    ``MJy/beam`` is mega-jansky and ``mJy/beam`` milli-jansky per beam. CASA and GILDAS write units in
    capitals (``JY/BEAM``) and some pipelines in lower case (``jy/beam``); those are read too, unless a
    prefix makes them ambiguous (``MJY/BEAM``: milli or mega?). ``bm``, ``BEAM``, ``pixel``, ``PIX`` are
    read as ``beam`` and ``pix``. Anything that is not a flux density per beam or per pixel (K, MJy/sr,
    Jy) is refused: ``where`` (the file) and the card are named, with how to fix it.
    """
    text = str(bunit).strip().replace("**", "").replace("^", "")
    text = re.sub(r"(?i)/(beam|pixel|pix)-1$", r" \1-1", text)  # "Jy/beam-1": a common slip for Jy beam-1
    text = re.sub(r"(?i)(?<=[/ .])(bm|beam_area|beam|bea)(?=(-1)?$)", "beam", text)
    text = re.sub(r"(?i)(?<=[/ .])(pixel|pix|px)(?=(-1)?$)", "pix", text)
    match = re.match(r"^([A-Za-zµ]?)(JY|jy)(?=[/ .]|$)", text)
    if match:  # all capitals or all lower case: only an unambiguous prefix is read
        prefix = match.group(1).lower()
        if prefix == "m":
            raise ProtolibInputError(
                f"{where}: BUNIT = {bunit!r} is ambiguous: written in "
                f"{'capitals' if match.group(2) == 'JY' else 'lower case'}, "
                "its M may be milli- or mega-jansky; write BUNIT = 'mJy/beam' (milli) or 'MJy/beam' (mega)."
            )
        text = _FLUX_PREFIXES.get(prefix, match.group(1)) + "Jy" + text[match.end() :]
    unit = None
    for form in ("fits", "generic"):
        try:
            unit = u.Unit(text, format=form)
            break
        except (ValueError, TypeError):
            continue
    for kind, per in (("beam", _PER_BEAM), ("pixel", _PER_PIXEL)):
        if unit is not None and unit.is_equivalent(per):
            factor = float(unit.to(per))
            if math.isfinite(factor) and factor > 0:
                return kind, factor
    raise ProtolibInputError(
        f"{where}: BUNIT = {bunit!r} is not a unit protolib reads; it needs a flux density per beam (Jy/beam, "
        "mJy/beam...) or "
        "per pixel (Jy/pixel). Convert the image (e.g. from K or MJy/sr) to Jy/beam first, or fix the BUNIT card."
    )


def _header_beam(header: fits.Header, hdul: fits.HDUList, path: Path | None = None) -> Beam | None:
    """The beam from BMAJ/BMIN/BPA [deg], or from a CASA BEAMS table [arcsec]; ``None`` when absent.

    A BMAJ or BMIN that is present but not a positive number is an error naming ``path`` (a broken
    header, not a missing beam).
    """
    if "BMAJ" in header and "BMIN" in header:
        try:
            major, minor = float(header["BMAJ"]) * DEG_ARCSEC, float(header["BMIN"]) * DEG_ARCSEC
        except (TypeError, ValueError):
            major = minor = math.nan
        if not (math.isfinite(major) and math.isfinite(minor) and major > 0 and minor > 0):
            raise ProtolibInputError(
                f"{path}: BMAJ = {header['BMAJ']!r}, BMIN = {header['BMIN']!r} is not a beam size (FWHM axes in "
                "degrees, both "
                "positive); fix the header, or give the beam with --beam MAJ MIN PA (arcsec, arcsec, deg)."
            )
        try:
            angle = float(header.get("BPA", 0.0))
        except (TypeError, ValueError):
            angle = math.nan
        if not math.isfinite(angle):
            raise ProtolibInputError(
                f"{path}: BPA = {header.get('BPA')!r} is not a position angle (degrees east of north); "
                "fix the header, or give the beam with --beam MAJ MIN PA."
            )
        return Beam(major, minor, angle)
    if "BEAMS" in hdul:
        return _table_beam(hdul["BEAMS"], path)
    return None


def _table_beam(table, path: Path | None) -> Beam | None:
    """The first beam of a CASA ``BEAMS`` table [arcsec, deg] (``None`` when it has no rows), refused when it
    lacks the BMAJ, BMIN or BPA column or its axes are not positive numbers."""
    try:
        data = table.data
        names = [name.upper() for name in (data.columns.names if data is not None else [])]
        if data is None or not len(data):
            return None
        row = data[0]
        values = {name: float(row[names.index(name)]) if name in names else None for name in ("BMAJ", "BMIN", "BPA")}
    except (TypeError, ValueError, AttributeError, IndexError, KeyError) as error:
        raise ProtolibInputError(
            f"{path}: the BEAMS table cannot be read ({error}); fix it, or give the beam with --beam MAJ MIN PA "
            "(arcsec, arcsec, deg)."
        ) from None
    missing = [name for name, value in values.items() if value is None]
    if missing:
        raise ProtolibInputError(
            f"{path}: the BEAMS table has no {', '.join(missing)} column; give the beam with --beam MAJ MIN PA "
            "(arcsec, arcsec, deg), or add BMAJ, BMIN, BPA cards to the header."
        )
    major, minor, angle = values["BMAJ"], values["BMIN"], values["BPA"]
    if not (math.isfinite(major) and math.isfinite(minor) and major > 0 and minor > 0 and math.isfinite(angle)):
        raise ProtolibInputError(
            f"{path}: the BEAMS table gives BMAJ = {major:g}, BMIN = {minor:g}, BPA = {angle:g}, not a beam "
            "(FWHM axes in arcsec, both positive, and a finite angle); fix it, or give the beam with --beam MAJ MIN PA."
        )
    return Beam(major, minor, angle)


def _image_hdu(hdul: fits.HDUList, path: Path):
    """The first HDU holding an image (an array of 2 or more axes), checked to fit in memory before it is read."""
    for hdu in hdul:
        if isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)) and len(_image_shape(hdu.header)) >= 2:
            _check_fits_in_memory(hdu.header, path)
            if hdu.data is not None and hdu.data.ndim >= 2:
                return hdu
    tables = [
        hdu.name or f"HDU {k}" for k, hdu in enumerate(hdul) if isinstance(hdu, (fits.BinTableHDU, fits.TableHDU))
    ]
    held = f"it holds only table(s) ({', '.join(tables)})" if tables else "no HDU holds an array of 2 or more axes"
    raise ProtolibInputError(
        f"{path}: no image data ({held}). protolib needs a continuum image, as exported by CASA exportfits or GILDAS."
    )


def _image_shape(header: fits.Header) -> tuple[int, ...]:
    """The image's axis lengths as the header declares them (``ZNAXISn`` for a compressed image), without reading it."""
    prefix = "ZNAXIS" if "ZNAXIS" in header else "NAXIS"
    try:
        return tuple(int(header[f"{prefix}{k}"]) for k in range(1, int(header.get(prefix, 0)) + 1))
    except (KeyError, TypeError, ValueError):
        return ()


def available_memory_bytes() -> int | None:
    """The memory this machine can still give a process [bytes] (``MemAvailable``), ``None`` when it cannot be told."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


IMAGE_WORKING_COPIES = 6  # the image is held, as 8-byte numbers, about this many times while it is read and prepared


def _check_fits_in_memory(header: fits.Header, path: Path) -> None:
    """Refuse, before reading it, an image whose decompressed data would not fit in the memory left.

    A compressed FITS file of a few MB can expand to many GB; the size is the product of its axes
    (``NAXISn``, or ``ZNAXISn``) times the bytes per value (``BITPIX``/``ZBITPIX``), and reading and
    preparing it holds it in double precision about :data:`IMAGE_WORKING_COPIES` times.
    """
    shape = _image_shape(header)
    n_values = math.prod(shape)
    bits = abs(int(header.get("ZBITPIX", header.get("BITPIX", 32)) or 32))
    need = n_values * (bits // 8 + 8 * IMAGE_WORKING_COPIES)
    free = available_memory_bytes()
    if free is not None and need > free:
        raise ProtolibInputError(
            f"{path}: the image is {' x '.join(str(n) for n in shape)} values ({n_values * bits / 8 / 1e9:.3g} GB as "
            "stored, "
            f"decompressed); reading and preparing it needs about {need / 1e9:.3g} GB, but only {free / 1e9:.3g} GB of "
            "memory is "
            "free. Cut out the region about the source first (e.g. CASA imsubimage, or astropy's Cutout2D)."
        )


def _check_pixel_scale(header: fits.Header, wcs: WCS, path: Path) -> None:
    """Refuse a header whose celestial axes have no usable pixel scale or reference.

    Without CDELT or CD astropy takes 1 degree per pixel; a NaN card, or a CD matrix of zeros, gives
    a grid of NaN or of no size. Each would later ask for absurd amounts of memory.
    """
    for axis in (wcs.wcs.lng + 1, wcs.wcs.lat + 1):
        cards = [f"CDELT{axis}", *(f"CD{axis}_{j}" for j in range(1, wcs.naxis + 1))]
        if not any(card in header for card in cards):
            raise ProtolibInputError(
                f"{path}: no pixel scale for axis {axis} ({wcs.wcs.ctype[axis - 1]}): the header has neither "
                f"CDELT{axis} nor a "
                f'CD{axis}_j matrix. Add the pixel size in degrees (e.g. CDELT{axis} = -8.3e-6 for 0.03" pixels).'
            )
    for axis in (wcs.wcs.lng + 1, wcs.wcs.lat + 1):  # the cards themselves: astropy may read a NaN card as a default
        for card in (
            f"CRVAL{axis}",
            f"CRPIX{axis}",
            f"CDELT{axis}",
            *(f"CD{axis}_{j}" for j in range(1, wcs.naxis + 1)),
            *(f"PC{axis}_{j}" for j in range(1, wcs.naxis + 1)),
        ):
            if card in header:
                try:
                    finite = math.isfinite(float(header[card]))
                except (TypeError, ValueError):
                    finite = False
                if not finite:
                    raise ProtolibInputError(
                        f"{path}: the header card {card} = {header[card]!r} is not a finite number; fix the header."
                    )
    celestial = wcs.celestial
    matrix = celestial.pixel_scale_matrix
    reference = np.asarray(celestial.wcs.crval, dtype=float)
    if not (
        np.all(np.isfinite(matrix)) and np.all(np.isfinite(reference)) and np.all(np.isfinite(celestial.wcs.crpix))
    ):
        raise ProtolibInputError(
            f"{path}: the celestial WCS holds NaN or infinite values (CRVAL, CRPIX, CDELT, CD or PC); fix the header."
        )
    if abs(float(np.linalg.det(matrix))) <= 0.0:
        raise ProtolibInputError(
            f"{path}: the celestial pixel scale matrix (CDELT x PC, or CD) is singular: pixels of no size."
        )


def _check_stokes(header: fits.Header, wcs: WCS, path: Path) -> None:
    """Refuse a plane of polarised intensity (Stokes Q, U, V or a cross-hand correlation): the bank is total
    intensity."""
    names = {2: "Q", 3: "U", 4: "V", -3: "RL", -4: "LR", -7: "XY", -8: "YX"}
    for axis, ctype in enumerate(wcs.wcs.ctype):
        if ctype.strip().upper() == "STOKES":
            value = int(
                round(float(wcs.wcs.crval[axis]) + (1.0 - float(wcs.wcs.crpix[axis])) * float(wcs.wcs.cdelt[axis]))
            )
            if value in names:
                raise ProtolibInputError(
                    f"{path}: the image is Stokes {names[value]}, not total intensity (Stokes I); "
                    "protolib matches dust continuum intensity."
                )


def _check_beam_sampling(beam: Beam, pixel_arcsec: float, shape: tuple[int, int], path: Path) -> None:
    """Refuse a beam that spans less than a tenth of a pixel or more than the image: the pixel scale or the beam is
    wrong."""
    pixels = beam.major_arcsec / pixel_arcsec
    if not 0.1 <= pixels <= max(shape):
        raise ProtolibInputError(
            f'{path}: the beam ({beam.major_arcsec:.3g}" FWHM) spans {pixels:.3g} pixels of {pixel_arcsec:.3g}" in a '
            f"{shape[1]} x {shape[0]} image; the header's pixel scale (CDELT/CD) or its beam (BMAJ, or --beam) is "
            "wrong."
        )


def _celestial_plane(data: np.ndarray, wcs: WCS, path: Path) -> np.ndarray:
    """The 2-D celestial plane of ``data``, all other axes being of length one."""
    n_axes = data.ndim
    celestial = sorted([wcs.wcs.lng, wcs.wcs.lat])
    index = []
    for fits_axis in reversed(range(n_axes)):
        length = data.shape[n_axes - 1 - fits_axis]
        if fits_axis in celestial:
            index.append(slice(None))
        elif length == 1:
            index.append(0)
        else:
            name = wcs.wcs.ctype[fits_axis] if fits_axis < wcs.naxis else f"axis {fits_axis + 1}"
            raise ProtolibInputError(
                f"{path}: the image has {length} planes along its {name or 'axis ' + str(fits_axis + 1)} axis; "
                "protolib needs a continuum image (one plane). Collapse the cube first (e.g. CASA immoments)."
            )
    return np.asarray(data[tuple(index)], dtype=np.float64)


def blank_zero_regions(image: np.ndarray, beam_area_pixels: float) -> tuple[np.ndarray, float]:
    """``image`` with zero-valued blanking set to NaN, and the fraction of pixels so blanked.

    Primary-beam-corrected NOEMA (GILDAS) maps, and some CASA exports, mark pixels that were never
    observed with exactly 0.0 rather than NaN. A connected region (8-neighbour) of exact zeros is taken
    as blanking when it touches the image border or covers at least four beam areas: thermal noise
    never gives exact zeros over a region that size, while a real pixel that happens to be 0.0 inside
    the data (an isolated pixel, a short run) is kept as data. An image with no negative pixel at all
    is a noiseless model, not an observation: its zeros are sky and are kept.

    Arguments:
        image: ``(ny, nx)``, NaN where already blanked.
        beam_area_pixels: the beam's solid angle in pixels.
    """
    zeros = image == 0.0
    if not zeros.any() or not (image < 0).any():
        return image, 0.0
    labels, n = ndimage.label(zeros, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    blank = sizes >= 4.0 * beam_area_pixels
    blank[border] = True
    blank[0] = False
    mask = blank[labels]
    if not mask.any():
        return image, 0.0
    return np.where(mask, np.nan, image), float(mask.mean())


def _observed_frequency(header: fits.Header, wcs: WCS) -> tuple[float | None, str]:
    """The observed frequency [GHz] and how it was found, from the spectral axis.

    A frequency axis (``FREQ``, ``FREQ-LSR``... in any ``CUNIT``) gives its value at the image's plane;
    a velocity axis (``VRAD``, ``VOPT``, ``VELO-LSR``...) is converted with the rest frequency
    (``RESTFRQ``/``RESTFREQ``) by wcslib. ``RESTFRQ`` alone is not used: in continuum maps made beside
    line cubes it is often a line's frequency (CO 2-1 at 230.538 GHz in a 224.6 GHz continuum map).
    """
    spec = wcs.wcs.spec
    if spec < 0:
        return None, ""
    ctype = wcs.wcs.ctype[spec]
    spectral = wcs.sub([WCSSUB_SPECTRAL])
    is_frequency = ctype.upper().startswith("FREQ")
    if not is_frequency:
        if not wcs.wcs.restfrq > 0:
            return None, ""
        try:
            spectral.wcs.sptr("FREQ-???")
        except Exception:  # wcslib raises several kinds for axes it cannot convert
            return None, ""
    value = float(spectral.pixel_to_world_values(0)) * u.Unit(spectral.wcs.cunit[0] or "Hz")
    ghz = value.to_value(u.GHz)
    if not (math.isfinite(ghz) and ghz > 0):
        return None, ""
    source = (
        f"spectral axis {ctype}"
        if is_frequency
        else f"velocity axis {ctype} with rest frequency {wcs.wcs.restfrq / 1e9:.4g} GHz"
    )
    return ghz, source


# ---------------------------------------------------------------------------------------------
# Reading a file.


def read_observation(path: str | Path, *, beam: Beam | None = None) -> Observation:
    """Read an observed image from a FITS file, in Jy/beam.

    Accepts 2, 3 or 4 axes (degenerate frequency, velocity or Stokes axes in any order), any celestial
    projection astropy knows (SIN, TAN, ARC...), pixel scales from CDELT or a CD/PC matrix, BUNIT in
    Jy/beam, mJy/beam or Jy/pixel, and blanked pixels: NaN, or regions of exact zeros outside the
    observed field (:func:`blank_zero_regions`). The frequency comes from the spectral axis
    (:func:`_observed_frequency`).

    Arguments:
        path: the FITS file.
        beam: the restoring beam, when the header has none (BMAJ/BMIN/BPA) or to override it. A header
            without a beam is an error unless ``beam`` is given (then a warning).

    Returns:
        The :class:`Observation`.

    Raises:
        ProtolibInputError: for a file that is not FITS, has no image, no celestial WCS, only NaN, or
            no beam; the message names the file.
    """
    path = Path(path)
    with _open_fits(path) as hdul:
        hdu, data = _image_data(hdul, path)
        header = hdu.header.copy()
        _refuse_prepared(header, path)
        full_wcs = _celestial_wcs(header, path)
        _warn_about_other_images(hdul, hdu, data, path)
        plane = _celestial_plane(data, full_wcs, path)
        header_beam = _header_beam_unless_given(header, hdul, path, beam)
        frequency_ghz, frequency_source = _observed_frequency(header, full_wcs)
    plane = _finite_plane(plane, path)
    kind, to_jy = _brightness_unit(header, path)
    beam = _chosen_beam(beam, header_beam, path)
    wcs = full_wcs.celestial
    image, zero_fraction = _in_jy_beam(plane * to_jy, kind, wcs, beam, path)
    max_scale = card_number(header, "PROTOLIB MAX_SCALE", path)
    if max_scale is not None:
        max_scale = checked_max_scale(max_scale, beam.major_arcsec, f"{path}: the card PROTOLIB MAX_SCALE") or 0.0
    return Observation(
        path=path,
        image_jy_beam=image,
        wcs=wcs,
        beam=beam,
        header=header,
        object_name=str(header.get("OBJECT", "")),
        frequency_ghz=frequency_ghz,
        frequency_source=frequency_source,
        blanked_zero_fraction=zero_fraction,
        max_scale_arcsec=max_scale,
        true_parameters=true_parameters_from_header(header, path),
    )


def _refuse_prepared(header: fits.Header, path: Path) -> None:
    """Refuse an image written by ``protolib observe``: preparing it again would scale its fluxes and widen its beam
    twice."""
    if is_prepared(header):
        raise ProtolibInputError(
            f"{path}: this image was written by `protolib observe` (card {PREPARED_CARD}): it is already on a bank's "
            "grid, its "
            "fluxes scaled and its beam widened; preparing it again would do both twice. Give the original "
            "observation, or "
            f"match this file as it is with `protolib match --target {path}` (no --distance, --centre or --beam "
            "needed)."
        )


def _open_fits(path: Path) -> fits.HDUList:
    """The file, opened and silently fixed where the FITS standard allows; an error naming it when it is no FITS
    file."""
    if not path.is_file():
        raise ProtolibInputError(f"{path}: no such file.")
    try:
        with warnings.catch_warnings():  # a short file is reported below, in one line
            warnings.filterwarnings("ignore", message="File may have been truncated")
            hdul = fits.open(path, memmap=False)
            hdul.verify("silentfix")
    except (OSError, ValueError, TypeError) as error:
        reason = str(error).split(",")[0].split(". ")[0]
        raise ProtolibInputError(f"{path}: not a FITS file, or a damaged one ({reason}).") from None
    return hdul


def _image_data(
    hdul: fits.HDUList, path: Path
) -> tuple[fits.PrimaryHDU | fits.ImageHDU | fits.CompImageHDU, np.ndarray]:
    """The first image HDU and its data; astropy reads the data only here, so a short file fails now."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="File may have been truncated")
            hdu = _image_hdu(hdul, path)
            data = hdu.data
    except ProtolibInputError:
        raise
    except (OSError, ValueError, TypeError) as error:
        raise ProtolibInputError(
            f"{path}: the file is truncated or damaged: its data do not fill the image the header "
            f"describes ({str(error)[:120]}). Export it again."
        ) from None
    return hdu, data


def _celestial_wcs(header: fits.Header, path: Path) -> WCS:
    """The header's full WCS, refused when it has no usable celestial axes or is a polarised plane."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            full_wcs = WCS(header, fix=True)
        except Exception as error:  # astropy raises several kinds for broken WCS headers
            raise ProtolibInputError(f"{path}: the header's WCS cannot be read ({error}).") from None
    if not full_wcs.has_celestial or full_wcs.wcs.lng < 0 or full_wcs.wcs.lat < 0:
        raise ProtolibInputError(
            f"{path}: no celestial WCS (CTYPE1/CTYPE2 such as RA---SIN/DEC--SIN with CRVAL, CRPIX and CDELT or CD). "
            "protolib needs sky coordinates to find the pixel scale and orientation."
        )
    _check_pixel_scale(header, full_wcs, path)
    _check_stokes(header, full_wcs, path)
    return full_wcs


def _warn_about_other_images(hdul: fits.HDUList, hdu, data: np.ndarray, path: Path) -> None:
    """A warning when the file holds more images than the one read (``hdu``, holding ``data``)."""
    others = [
        h
        for h in hdul
        if h is not hdu
        and isinstance(h, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU))
        and h.header.get("NAXIS", 0) >= 2
        and not _is_protolib_model(h)
    ]
    if others:
        warnings.warn(
            f"{path}: the file holds {len(others) + 1} images; using the first ({hdu.name or 'PRIMARY'}, "
            f"{'x'.join(str(n) for n in data.shape)}). Write the image you mean into a file of its own.",
            stacklevel=3,
        )


def _is_protolib_model(hdu) -> bool:
    """The clean-model extension that ``protolib simulate-observation`` writes beside the image (not a second image)."""
    return hdu.name == "MODEL" and "Clean model (no beam, no noise) of the primary image." in str(
        hdu.header.get("COMMENT", "")
    )


def _header_beam_unless_given(header: fits.Header, hdul: fits.HDUList, path: Path, beam: Beam | None) -> Beam | None:
    """The header's beam; when a ``beam`` is given, a broken beam in the header does not matter (``None``)."""
    if beam is None:
        return _header_beam(header, hdul, path)
    with contextlib.suppress(ProtolibInputError):
        return _header_beam(header, hdul, path)
    return None


def _finite_plane(plane: np.ndarray, path: Path) -> np.ndarray:
    """``plane`` with infinite pixels blanked (with a warning); refused when too small or without data."""
    if min(plane.shape) < MIN_IMAGE_PIXELS:
        raise ProtolibInputError(
            f"{path}: the image is only {plane.shape[1]} x {plane.shape[0]} pixels, too small to prepare; "
            f"protolib needs at least {MIN_IMAGE_PIXELS} pixels a side (the source and the noise about it)."
        )
    infinite = np.isinf(plane)
    if infinite.any():
        plane = np.where(infinite, np.nan, plane)
        warnings.warn(
            f"{path}: {int(infinite.sum())} infinite pixel(s) (+inf or -inf) were blanked (read as NaN); they are "
            "not data.",
            stacklevel=3,
        )
    finite = plane[np.isfinite(plane)]
    if not finite.size:
        raise ProtolibInputError(f"{path}: every pixel is NaN or blank; there is no data to prepare.")
    if float(finite.min()) == float(finite.max()):
        raise ProtolibInputError(
            f"{path}: every pixel that is not blank holds the same value ({float(finite[0]):g}); there is no "
            "image to prepare. Check that the right plane or extension was exported."
        )
    return plane


def _brightness_unit(header: fits.Header, path: Path) -> tuple[str, float]:
    """``("beam" | "pixel", factor to Jy)`` from BUNIT; Jy/beam, with a warning, when the header has none."""
    kind, to_jy = parse_brightness_unit(header.get("BUNIT"), str(path)) if header.get("BUNIT") else ("beam", 1.0)
    if not header.get("BUNIT"):
        warnings.warn(f"{path}: no BUNIT card; assuming Jy/beam.", stacklevel=3)
    return kind, to_jy


def _chosen_beam(beam: Beam | None, header_beam: Beam | None, path: Path) -> Beam:
    """The beam given, else the header's; a warning when the one given replaces or stands in for the header's."""
    if header_beam is None and beam is None:
        raise ProtolibInputError(
            f"{path}: the header has no beam (BMAJ, BMIN, BPA); pass it with --beam MAJ MIN PA (arcsec, arcsec, deg) "
            "or beam=Beam(...)."
        )
    if header_beam is None:
        warnings.warn(f"{path}: the header has no beam (BMAJ/BMIN/BPA); using the beam given, {beam}.", stacklevel=3)
    elif beam is not None and not np.allclose(
        [beam.major_arcsec, beam.minor_arcsec], [header_beam.major_arcsec, header_beam.minor_arcsec], rtol=1e-3
    ):
        warnings.warn(f"{path}: using the beam given, {beam}, instead of the header's {header_beam}.", stacklevel=3)
    return beam or header_beam


def _in_jy_beam(image: np.ndarray, kind: str, wcs: WCS, beam: Beam, path: Path) -> tuple[np.ndarray, float]:
    """The image [Jy] in Jy/beam, with zero-valued blanking set to NaN, and the fraction so blanked."""
    if kind == "pixel":
        pixel_sr = float(np.prod(proj_plane_pixel_scales(wcs))) * (math.pi / 180.0) ** 2
        image = image * (beam.solid_angle_sr / pixel_sr)
    pixel_arcsec = float(np.sqrt(np.prod(proj_plane_pixel_scales(wcs)))) * DEG_ARCSEC
    _check_beam_sampling(beam, pixel_arcsec, image.shape, path)
    image, zero_fraction = blank_zero_regions(
        image, beam.solid_angle_sr / (pixel_arcsec * math.pi / 180.0 / 3600.0) ** 2
    )
    if not np.isfinite(image).any():
        raise ProtolibInputError(f"{path}: every pixel is NaN or zero-valued blanking; there is no data to prepare.")
    return image, zero_fraction
