"""Observed images: read interferometric FITS maps, put them on the bank's grid, match the bank to them.

Conventions (PHYSICS.md):

- Prepared images are arrays ``(north, west)`` on the bank's grid: the bank's pixel size in au and its
  field of view, centred on the source, shown north up and east left by ``imshow(origin="lower")``.
- **Distance.** A prepared image shows the source *moved to the bank's distance*: the au grid is fixed,
  surface brightness is unchanged, so fluxes scale by ``(distance_pc / bank_distance_pc) ** 2`` and the
  beam keeps its size in au (its size in arcsec scales by ``distance_pc / bank_distance_pc``).
  Prepared images are in Jy/beam for *that* beam (:attr:`PreparedObservation.beam`), which is what the
  bank images are turned into by :class:`ResolutionMatch`.
- **Resolution.** The prepared image and the matched bank images share one resolution, the
  observation's beam (plus the pixel boxes of resampling, see :func:`prepare_observation`), or, where the bank's beam
  is larger along some direction, the smallest beam that contains both: the observation is then smoothed
  to it as well, since the bank cannot be sharpened.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning
from astropy.stats import sigma_clipped_stats
from astropy.wcs import WCS, WCSSUB_SPECTRAL, FITSFixedWarning
from astropy.wcs.utils import proj_plane_pixel_scales
from scipy import ndimage
from scipy.interpolate import RectBivariateSpline

from . import __version__
from .instrument import FWHM_TO_SIGMA, Beam, Instrument, beam_noise, convolve_beam
from .parameters import PARAMETERS
from .runtime import ProtolibInputError, atomic_path
from .simulator import SimulatorConfig, render

__all__ = [
    "Observation",
    "BankGrid",
    "PreparedObservation",
    "ResolutionMatch",
    "read_observation",
    "prepare_observation",
    "read_prepared_observation",
    "resample_to_grid",
    "common_beam_covariance",
    "effective_beam_covariance",
    "convolve_gaussian",
    "sky_grid_wcs",
    "estimate_noise_rms",
    "CompactSource",
    "find_compact_sources",
    "blank_zero_regions",
    "frequency_scale",
    "write_observation_fits",
    "plot_prepared_observation",
]

DEG_ARCSEC = 3600.0
MIN_FIELD_FRACTION = 0.5  # refuse observations covering less than this fraction of the bank's field
MIN_BEAM_VARIANCE = 1e-9  # [pixel^2] the least variance of a beam covariance (a sub-pixel beam sampled at pixel centres has 0)
MIN_IMAGE_PIXELS = 16  # an image smaller than this (per side) holds too little to centre, measure the noise and resample
NOISE_BOX = 1024  # the noise is estimated within this many pixels (per side) about the source
NOISE_BEAMS = 300  # the noise is measured on the emission-free pixels nearest the source, this many beam areas of them
MAX_FREQUENCY_RATIO = 1.6  # beyond this ratio of observed to bank frequency, scaling the flux is refused
DETECTION_SIGMA = 5.0  # compact sources are reported above this many times the local noise
MAX_SCALE_LIMIT_ARCSEC = 3600.0  # a "maximum recoverable scale" beyond a degree is a mistake (0 means no filtering)
MAX_SCALE_BEAMS = 10.0  # assumed maximum recoverable scale, in beam major axes, when neither the user nor the file gives one


@dataclass
class Observation:
    """An observed image as read from a FITS file, in Jy/beam.

    ``image_jy_beam`` is 2-D and indexed like :attr:`wcs` (``[y, x]`` pixel), NaN where blanked;
    ``wcs`` is the celestial part of the file's WCS. ``true_parameters`` holds the physical parameters
    of a synthetic observation written by :func:`write_observation_fits` (empty for real data).

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
        return (f"Observation({self.path.name!r}: {nx}x{ny} px of {self.pixel_scale_arcsec:.3g}\", beam "
                f"{self.beam.major_arcsec:.3g}\"x{self.beam.minor_arcsec:.3g}\" PA {self.beam.position_angle_deg:.0f} deg, "
                f"object {self.object_name!r})")

    @property
    def pixel_scale_arcsec(self) -> float:
        """Geometric mean pixel side [arcsec]."""
        scales = proj_plane_pixel_scales(self.wcs) * DEG_ARCSEC
        return float(math.sqrt(scales[0] * scales[1]))

    def peak_coordinate(self) -> SkyCoord:
        """Sky position of the brightest pixel, refined by a 2-D quadratic fit to the log of its 3 x 3
        neighbourhood (exact for a Gaussian peak of any orientation)."""
        data = np.where(np.isfinite(self.image_jy_beam), self.image_jy_beam, -np.inf)
        row, col = np.unravel_index(int(np.argmax(data)), data.shape)
        return self.wcs.pixel_to_world(*_refine_peak(data, row, col))


def _refine_peak(data: np.ndarray, row: int, col: int) -> tuple[float, float]:
    """(column, row) of the peak near pixel (row, col), to a fraction of a pixel."""
    if not (1 <= row < data.shape[0] - 1 and 1 <= col < data.shape[1] - 1):
        return float(col), float(row)
    patch = data[row - 1 : row + 2, col - 1 : col + 2]
    if not (np.isfinite(patch).all() and (patch > 0).all()):
        return float(col), float(row)
    dy, dx = np.mgrid[-1:2, -1:2]
    design = np.stack([np.ones(9), dx.ravel(), dy.ravel(), dx.ravel() ** 2, dx.ravel() * dy.ravel(), dy.ravel() ** 2], axis=1)
    _, bx, by, cxx, cxy, cyy = np.linalg.lstsq(design, np.log(patch.ravel()), rcond=None)[0]
    hessian = np.array([[2 * cxx, cxy], [cxy, 2 * cyy]])
    if np.any(np.linalg.eigvalsh(hessian) >= 0):
        return float(col), float(row)
    offset = np.linalg.solve(hessian, -np.array([bx, by]))
    offset = np.clip(offset, -1.0, 1.0)
    return float(col + offset[0]), float(row + offset[1])


# ---------------------------------------------------------------------------------------------
# Reading FITS files.

_JY_BEAM = re.compile(r"^(m|u|µ)?jy(/beam|/bm|beam-1|/beam_area|/bea)$")
_JY_PIXEL = re.compile(r"^(m|u|µ)?jy(/pixel|/pix|pixel-1|pix-1|/px)$")
_PREFIX = {None: 1.0, "m": 1e-3, "u": 1e-6, "µ": 1e-6}


def _parse_bunit(bunit: str | None, path: Path) -> tuple[str, float]:
    """``("beam" | "pixel", factor to Jy)`` from a BUNIT string."""
    text = (bunit or "").strip().lower().replace(" ", "").replace("**", "").replace("^", "")
    text = text.replace("/beam-1", "beam-1")
    for kind, pattern in (("beam", _JY_BEAM), ("pixel", _JY_PIXEL)):
        match = pattern.match(text)
        if match:
            return kind, _PREFIX[match.group(1)]
    raise ProtolibInputError(
        f"{path}: BUNIT = {bunit!r} is not a unit protolib reads; it needs Jy/beam (or mJy/beam) or Jy/pixel. "
        "Convert the image (e.g. from K) to Jy/beam first, or fix the BUNIT card."
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
                f"{path}: BMAJ = {header['BMAJ']!r}, BMIN = {header['BMIN']!r} is not a beam size (FWHM axes in degrees, both "
                "positive); fix the header, or give the beam with --beam MAJ MIN PA (arcsec, arcsec, deg).")
        try:
            angle = float(header.get("BPA", 0.0))
        except (TypeError, ValueError):
            angle = math.nan
        if not math.isfinite(angle):
            raise ProtolibInputError(f"{path}: BPA = {header.get('BPA')!r} is not a position angle (degrees east of north); "
                                     "fix the header, or give the beam with --beam MAJ MIN PA.")
        return Beam(major, minor, angle)
    if "BEAMS" in hdul and hdul["BEAMS"].data is not None and len(hdul["BEAMS"].data):
        row = hdul["BEAMS"].data[0]
        return Beam(float(row["BMAJ"]), float(row["BMIN"]), float(row["BPA"]))
    return None


def _image_hdu(hdul: fits.HDUList, path: Path):
    for hdu in hdul:
        if isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)) and hdu.data is not None and hdu.data.ndim >= 2:
            return hdu
    raise ProtolibInputError(
        f"{path}: no image data (no HDU holds an array of 2 or more axes). protolib needs a continuum image, "
        "as exported by CASA exportfits or GILDAS."
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
                f"{path}: no pixel scale for axis {axis} ({wcs.wcs.ctype[axis - 1]}): the header has neither CDELT{axis} nor a "
                f"CD{axis}_j matrix. Add the pixel size in degrees (e.g. CDELT{axis} = -8.3e-6 for 0.03\" pixels).")
    for axis in (wcs.wcs.lng + 1, wcs.wcs.lat + 1):  # the cards themselves: astropy may read a NaN card as a default
        for card in (f"CRVAL{axis}", f"CRPIX{axis}", f"CDELT{axis}", *(f"CD{axis}_{j}" for j in range(1, wcs.naxis + 1)),
                     *(f"PC{axis}_{j}" for j in range(1, wcs.naxis + 1))):
            if card in header:
                try:
                    finite = math.isfinite(float(header[card]))
                except (TypeError, ValueError):
                    finite = False
                if not finite:
                    raise ProtolibInputError(f"{path}: the header card {card} = {header[card]!r} is not a finite number; fix the header.")
    celestial = wcs.celestial
    matrix = celestial.pixel_scale_matrix
    reference = np.asarray(celestial.wcs.crval, dtype=float)
    if not (np.all(np.isfinite(matrix)) and np.all(np.isfinite(reference)) and np.all(np.isfinite(celestial.wcs.crpix))):
        raise ProtolibInputError(f"{path}: the celestial WCS holds NaN or infinite values (CRVAL, CRPIX, CDELT, CD or PC); "
                                 "fix the header.")
    if abs(float(np.linalg.det(matrix))) <= 0.0:
        raise ProtolibInputError(f"{path}: the celestial pixel scale matrix (CDELT x PC, or CD) is singular: pixels of no size.")


def _check_stokes(header: fits.Header, wcs: WCS, path: Path) -> None:
    """Refuse a plane of polarised intensity (Stokes Q, U, V or a cross-hand correlation): the bank is total intensity."""
    names = {2: "Q", 3: "U", 4: "V", -3: "RL", -4: "LR", -7: "XY", -8: "YX"}
    for axis, ctype in enumerate(wcs.wcs.ctype):
        if ctype.strip().upper() == "STOKES":
            value = int(round(float(wcs.wcs.crval[axis]) + (1.0 - float(wcs.wcs.crpix[axis])) * float(wcs.wcs.cdelt[axis])))
            if value in names:
                raise ProtolibInputError(f"{path}: the image is Stokes {names[value]}, not total intensity (Stokes I); "
                                         "protolib matches dust continuum intensity.")


def _check_beam_sampling(beam: Beam, pixel_arcsec: float, shape: tuple[int, int], path: Path) -> None:
    """Refuse a beam that spans less than a tenth of a pixel or more than the image: the pixel scale or the beam is wrong."""
    pixels = beam.major_arcsec / pixel_arcsec
    if not 0.1 <= pixels <= max(shape):
        raise ProtolibInputError(
            f"{path}: the beam ({beam.major_arcsec:.3g}\" FWHM) spans {pixels:.3g} pixels of {pixel_arcsec:.3g}\" in a "
            f"{shape[1]} x {shape[0]} image; the header's pixel scale (CDELT/CD) or its beam (BMAJ, or --beam) is wrong.")


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
    source = f"spectral axis {ctype}" if is_frequency else f"velocity axis {ctype} with rest frequency {wcs.wcs.restfrq / 1e9:.4g} GHz"
    return ghz, source


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
            f"{max(ratio, 1 / ratio):.2f}; scaling dust fluxes over more than a factor {MAX_FREQUENCY_RATIO} in frequency would be "
            "guesswork. Make a bank at the observed frequency (simulator.frequency_ghz in the configuration), or give "
            "--frequency if the header's frequency is wrong."
        )
    return float(ratio**spectral_index)


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
    with hdul:
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="File may have been truncated")
                hdu = _image_hdu(hdul, path)
                data = hdu.data
        except (OSError, ValueError, TypeError) as error:  # astropy reads the data only here; a short file fails now
            raise ProtolibInputError(f"{path}: the file is truncated or damaged: its data do not fill the image the header "
                                     f"describes ({str(error)[:120]}). Export it again.") from None
        header = hdu.header.copy()
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
        others = [h for h in hdul if h is not hdu and isinstance(h, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU))
                  and h.header.get("NAXIS", 0) >= 2]
        if others:
            warnings.warn(f"{path}: the file holds {len(others) + 1} images; using the first ({hdu.name or 'PRIMARY'}, "
                          f"{'x'.join(str(n) for n in data.shape)}). Write the image you mean into a file of its own.", stacklevel=2)
        plane = _celestial_plane(data, full_wcs, path)
        header_beam = _header_beam(header, hdul, path) if beam is None else None
        if beam is not None:
            with contextlib.suppress(ProtolibInputError):
                header_beam = _header_beam(header, hdul, path)
        frequency_ghz, frequency_source = _observed_frequency(header, full_wcs)
    if min(plane.shape) < MIN_IMAGE_PIXELS:
        raise ProtolibInputError(f"{path}: the image is only {plane.shape[1]} x {plane.shape[0]} pixels, too small to prepare; "
                                 f"protolib needs at least {MIN_IMAGE_PIXELS} pixels a side (the source and the noise about it).")
    infinite = np.isinf(plane)
    if infinite.any():
        plane = np.where(infinite, np.nan, plane)
        warnings.warn(f"{path}: {int(infinite.sum())} infinite pixel(s) (+inf or -inf) were blanked (read as NaN); they are "
                      "not data.", stacklevel=2)
    if not np.isfinite(plane).any():
        raise ProtolibInputError(f"{path}: every pixel is NaN or blank; there is no data to prepare.")
    kind, to_jy = _parse_bunit(header.get("BUNIT"), path) if header.get("BUNIT") else ("beam", 1.0)
    if not header.get("BUNIT"):
        warnings.warn(f"{path}: no BUNIT card; assuming Jy/beam.", stacklevel=2)
    if header_beam is None and beam is None:
        raise ProtolibInputError(
            f"{path}: the header has no beam (BMAJ, BMIN, BPA); pass it with --beam MAJ MIN PA (arcsec, arcsec, deg) "
            "or beam=Beam(...)."
        )
    if header_beam is None:
        warnings.warn(f"{path}: the header has no beam (BMAJ/BMIN/BPA); using the beam given, {beam}.", stacklevel=2)
    elif beam is not None and not np.allclose(
        [beam.major_arcsec, beam.minor_arcsec], [header_beam.major_arcsec, header_beam.minor_arcsec], rtol=1e-3
    ):
        warnings.warn(f"{path}: using the beam given, {beam}, instead of the header's {header_beam}.", stacklevel=2)
    beam = beam or header_beam
    wcs = full_wcs.celestial
    image = plane * to_jy
    if kind == "pixel":
        pixel_sr = float(np.prod(proj_plane_pixel_scales(wcs))) * (math.pi / 180.0) ** 2
        image = image * (beam.solid_angle_sr / pixel_sr)
    pixel_arcsec = float(np.sqrt(np.prod(proj_plane_pixel_scales(wcs)))) * DEG_ARCSEC
    _check_beam_sampling(beam, pixel_arcsec, plane.shape, path)
    image, zero_fraction = blank_zero_regions(image, beam.solid_angle_sr / (pixel_arcsec * math.pi / 180.0 / 3600.0) ** 2)
    if not np.isfinite(image).any():
        raise ProtolibInputError(f"{path}: every pixel is NaN or zero-valued blanking; there is no data to prepare.")
    truth = {key[len("PROTOLIB TRUE ") :].lower(): float(value) for key, value in header.items() if key.startswith("PROTOLIB TRUE ")}
    max_scale = header.get("PROTOLIB MAX_SCALE")
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
        max_scale_arcsec=float(max_scale) if max_scale is not None else None,
        true_parameters=truth,
    )


# ---------------------------------------------------------------------------------------------
# The bank's grid, and resampling onto it.


@dataclass(frozen=True)
class BankGrid:
    """What an observation must be prepared to: the bank's pixel grid, distance, beam and noise."""

    image_size: int  # pixels per side
    pixel_size_au: float  # pixel side
    distance_pc: float  # distance at which the bank's systems are seen
    beam: Beam | None  # the bank's beam (None: images in Jy/pixel, no beam)
    noise_rms_jy_beam: float = 0.0  # noise already in the bank images
    name: str = ""  # where the grid came from (the bank file)
    frequency_ghz: float = 230.0  # frequency the bank's images are rendered at
    opacity_beta: float = 1.0  # the bank's dust opacity index (kappa ~ nu^beta)

    @property
    def spectral_index(self) -> float:
        """Dust spectral index consistent with the bank's opacity law: ``2 + beta`` (optically thin, Rayleigh-Jeans)."""
        return 2.0 + self.opacity_beta

    @property
    def field_of_view_au(self) -> float:
        return self.image_size * self.pixel_size_au

    @property
    def pixel_arcsec(self) -> float:
        """Pixel side at the bank's distance [arcsec]."""
        return self.pixel_size_au / self.distance_pc

    @classmethod
    def from_bank(cls, bank) -> "BankGrid":
        """The grid of a :class:`~protolib.bank.Bank` (an open bank or a path to one)."""
        from .bank import Bank

        if not isinstance(bank, Bank):
            with Bank(bank) as opened:
                return cls.from_bank(opened)
        if bank.unit not in ("Jy/beam", "Jy/pixel") or not math.isfinite(bank.pixel_size_au):
            raise ProtolibInputError(
                f"Bank {bank.path}: images in {bank.unit!r} with pixel size {bank.pixel_size_au} au; observations can "
                "only be prepared for banks in Jy/beam or Jy/pixel with a known pixel size (banks made by `protolib simulate`)."
            )
        instrument = bank.instrument
        simulator = bank.simulator_config
        return cls(
            image_size=bank.image_size,
            pixel_size_au=bank.pixel_size_au,
            distance_pc=instrument.distance_pc,
            beam=instrument.beam if bank.unit == "Jy/beam" else None,
            noise_rms_jy_beam=instrument.noise_rms_jy_beam if bank.unit == "Jy/beam" else 0.0,
            name=str(bank.path),
            frequency_ghz=float(bank.attrs.get("frequency_ghz", simulator.frequency_ghz if simulator else 230.0)),
            opacity_beta=float(simulator.opacity_beta) if simulator else 1.0,
        )


def sky_grid_wcs(centre: SkyCoord, image_size: int, pixel_arcsec: float) -> WCS:
    """A square TAN grid about ``centre``: north up, east left (``CDELT1 < 0``), centre between the middle pixels."""
    centre = centre.icrs
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [centre.ra.deg, centre.dec.deg]
    wcs.wcs.crpix = [(image_size + 1) / 2.0, (image_size + 1) / 2.0]
    wcs.wcs.cdelt = [-pixel_arcsec / DEG_ARCSEC, pixel_arcsec / DEG_ARCSEC]
    wcs.wcs.cunit = ["deg", "deg"]
    wcs.wcs.radesys = "ICRS"
    wcs.pixel_shape = (image_size, image_size)
    return wcs


def _box_integrals(table: np.ndarray, x0, x1, y0, y1, smooth: bool = False) -> np.ndarray:
    """Integral of a pixelised image over boxes ``[x0, x1] x [y0, y1]`` (pixel edges at integers).

    ``table`` is the summed-area table, ``(ny + 1, nx + 1)``. By default the cumulative integral is
    bilinear inside each pixel (the image piecewise constant), exact for any box. With ``smooth`` it
    is the bicubic interpolating spline of the table instead: the image is then the smooth
    *histospline* whose integral over every source pixel is that pixel's value (Schoenberg 1973), so
    flux is still conserved exactly over whole pixels while a box smaller than a source pixel sees a
    smooth surface, not a step. A spline of the table is used rather than an interpolation of the
    image because only it keeps every pixel's flux.
    """
    ny, nx = table.shape[0] - 1, table.shape[1] - 1
    if smooth and min(nx, ny) >= 3:
        spline = RectBivariateSpline(np.arange(ny + 1.0), np.arange(nx + 1.0), table, kx=3, ky=3, s=0)

        def cumulative(x, y):
            return spline.ev(np.clip(y, 0.0, ny), np.clip(x, 0.0, nx))

        return cumulative(x1, y1) - cumulative(x0, y1) - cumulative(x1, y0) + cumulative(x0, y0)

    def cumulative(x, y):
        x = np.clip(x, 0.0, nx)
        y = np.clip(y, 0.0, ny)
        i = np.minimum(np.floor(x).astype(np.int64), nx - 1)
        j = np.minimum(np.floor(y).astype(np.int64), ny - 1)
        fx, fy = x - i, y - j
        s00, s01 = table[j, i], table[j, i + 1]
        s10, s11 = table[j + 1, i], table[j + 1, i + 1]
        return s00 + fx * (s01 - s00) + fy * (s10 - s00) + fx * fy * (s11 - s10 - s01 + s00)

    return cumulative(x1, y1) - cumulative(x0, y1) - cumulative(x1, y0) + cumulative(x0, y0)


def resample_to_grid(
    image: np.ndarray, source_wcs: WCS, target_wcs: WCS, shape: tuple[int, int], subdivisions: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Resample a surface-brightness image onto another sky grid, conserving flux.

    Each target pixel gets the mean of the source image over the pixel's footprint, the source being
    the smooth surface whose mean over each of its pixels is that pixel's value (a histospline, see
    :func:`_box_integrals`), so pixels finer than the source's show no steps. The footprint of each target pixel (or of each of its
    ``subdivisions x subdivisions`` sub-cells) is mapped into the source's pixel coordinates through
    both WCSs (any projection) and integrated exactly with a summed-area table. When the two grids are
    aligned (no rotation between them, the usual case) one cell per pixel is exact; rotated grids are
    integrated over 8 x 8 sub-cells per pixel, each taken as an aligned box of the cell's area (grids
    within about 0.01 degree of each other, e.g. two projections about nearby centres, count as aligned). Flux is
    thus conserved for target pixels coarser *and* finer than the source's.

    Arguments:
        image: the source surface brightness ``(ny, nx)``, indexed like ``source_wcs``; NaN for no data.
        source_wcs, target_wcs: 2-D celestial WCSs.
        shape: ``(rows, columns)`` of the target grid.
        subdivisions: sub-cells per target pixel side (default: 1 for aligned grids, else 8).

    Returns:
        ``(image, coverage)``, both ``shape``: the mean surface brightness in each target pixel (zero
        where there is no data) and the fraction of each target pixel covered by valid source data.
    """
    valid = np.isfinite(image)
    rows, cols = shape

    def corners(m: int):
        v, w = np.meshgrid(np.arange(rows * m + 1) / m - 0.5, np.arange(cols * m + 1) / m - 0.5, indexing="ij")
        world = target_wcs.pixel_to_world(w, v)
        x, y = source_wcs.world_to_pixel(world)
        return np.asarray(x) + 0.5, np.asarray(y) + 0.5  # pixel k spans [k, k + 1]

    def boxes(x, y):
        quad = [(x[:-1, :-1], y[:-1, :-1]), (x[:-1, 1:], y[:-1, 1:]), (x[1:, 1:], y[1:, 1:]), (x[1:, :-1], y[1:, :-1])]
        area = 0.5 * np.abs(sum(xa * yb - xb * ya for (xa, ya), (xb, yb) in zip(quad, quad[1:] + quad[:1])))
        xs, ys = np.stack([q[0] for q in quad]), np.stack([q[1] for q in quad])
        x_lo, x_hi, y_lo, y_hi = xs.min(0), xs.max(0), ys.min(0), ys.max(0)
        shrink = np.sqrt(area / np.maximum((x_hi - x_lo) * (y_hi - y_lo), 1e-300))
        xc, yc, hw, hh = 0.5 * (x_lo + x_hi), 0.5 * (y_lo + y_hi), 0.5 * (x_hi - x_lo) * shrink, 0.5 * (y_hi - y_lo) * shrink
        return (xc - hw, xc + hw, yc - hh, yc + hh), area, shrink

    x, y = corners(1)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ProtolibInputError("The bank's grid falls outside the observation's projection; check the centre.")
    box, area, shrink = boxes(x, y)
    m = subdivisions or (1 if np.all(np.abs(shrink - 1.0) < 1e-4) else 8)
    if m > 1:
        x, y = corners(m)
        box, area, _ = boxes(x, y)
    # Crop the source to the region the grid touches, then integrate.
    i0 = int(max(0, math.floor(np.nanmin(x)) - 1)), int(min(image.shape[1], math.ceil(np.nanmax(x)) + 1))
    j0 = int(max(0, math.floor(np.nanmin(y)) - 1)), int(min(image.shape[0], math.ceil(np.nanmax(y)) + 1))
    total = np.zeros((rows, cols))
    covered = np.zeros((rows, cols))
    pixel_area = area.reshape(rows, m, cols, m).sum(axis=(1, 3))
    if i0[1] > i0[0] and j0[1] > j0[0]:
        crop = (slice(j0[0], j0[1]), slice(i0[0], i0[1]))
        for values, out, smooth in ((np.where(valid, image, 0.0)[crop], total, True), (valid[crop].astype(np.float64), covered, False)):
            table = np.zeros((values.shape[0] + 1, values.shape[1] + 1))
            table[1:, 1:] = values.cumsum(0).cumsum(1)
            x_lo, x_hi, y_lo, y_hi = box
            integral = _box_integrals(table, x_lo - i0[0], x_hi - i0[0], y_lo - j0[0], y_hi - j0[0], smooth=smooth)
            out += integral.reshape(rows, m, cols, m).sum(axis=(1, 3))
    return total / pixel_area, np.clip(covered / pixel_area, 0.0, 1.0)


def estimate_noise_rms(image: np.ndarray, beam: Beam, pixel_arcsec: float, *, centre: tuple[float, float] | None = None) -> float:
    """Noise rms per pixel of an interferometric image [its unit], from the emission-free pixels near the source.

    The usual hand measurement, made automatic: find the emission, leave it out, and take the rms of
    what is left, near the source.

    1. The image is split into a smooth part (smoothed to twice the beam) and a residual; the residual
       keeps most of the noise and none of the smooth emission, so faint envelopes do not count as noise.
    2. Emission is where the smooth part exceeds 3 times its own noise (positive or negative: negative
       bowls of missing flux too), widened by a beam; the noise is re-estimated without it, and the
       mask redrawn, until it settles.
    3. The rms is taken over the :data:`NOISE_BEAMS` beam areas of emission-free pixels nearest
       ``centre``: primary-beam-corrected maps grow noisier away from the phase centre, and the noise
       that matters is the source's.
    4. The residual's rms is divided by what the same steps give for simulated noise correlated on
       ``beam`` (the part of the noise the smoothing takes away), so the result is the rms of the noise.

    Arguments:
        image: ``(ny, nx)``, NaN where blanked.
        beam: the image's beam; ``pixel_arcsec``: its pixel side.
        centre: ``(column, row)`` of the source (default: the image centre).

    Returns:
        The noise rms. When emission covers nearly the whole map (fewer than 30 beam areas free of it)
        the rms of the residual over the whole map is returned with a warning: pass the rms if you know it.
    """
    valid = np.isfinite(image)
    covariance = beam.covariance_pixels(pixel_arcsec)
    beam_area = _solid_angle_pixels(covariance)
    smoothing = 4.0 * covariance  # twice the beam's FWHM
    weight = convolve_gaussian(torch.as_tensor(valid.astype(np.float64)), smoothing).numpy()
    keep = valid & (weight > 0.5)
    if keep.sum() < 4:
        keep = valid

    def split(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        filled = np.where(valid, values, 0.0)
        smooth = convolve_gaussian(torch.as_tensor(filled), smoothing).numpy() / np.maximum(weight, 1e-12)
        return smooth, filled - smooth

    noise = beam_noise(image.shape, beam, pixel_arcsec, np.random.default_rng(0)).numpy().astype(np.float64)
    noise_smooth, noise_residual = split(noise)
    smooth_fraction = float(noise_smooth[keep].std() / noise[keep].std())  # smooth part's rms per unit noise
    residual_fraction = float(noise_residual[keep].std() / noise[keep].std())
    smooth, residual = split(image)
    ny, nx = image.shape
    col, row = centre if centre is not None else ((nx - 1) / 2.0, (ny - 1) / 2.0)
    distance = np.hypot(*np.meshgrid(np.arange(ny) - row, np.arange(nx) - col, indexing="ij"))
    widen = np.hypot(*np.mgrid[-3:4, -3:4]) <= 3
    widen_by = max(1, int(round(beam.major_arcsec / pixel_arcsec / 3.0)))
    n_wanted = int(NOISE_BEAMS * beam_area)
    sigma = float(sigma_clipped_stats(residual[keep], sigma=3.0, maxiters=10, stdfunc="mad_std")[2]) / residual_fraction
    for _ in range(6):
        emission = np.abs(smooth) > 3.0 * sigma * smooth_fraction
        emission = ndimage.binary_dilation(emission, structure=widen, iterations=widen_by)
        free = keep & ~emission
        if free.sum() < 30 * beam_area:
            warnings.warn(f"emission covers nearly the whole map (under 30 beam areas free of it); the noise estimate "
                          f"({sigma:.3g}) may be high: pass the rms if you know it (--noise).", stacklevel=3)
            return sigma
        nearest = np.flatnonzero(free.ravel())[np.argsort(distance.ravel()[free.ravel()], kind="stable")[:n_wanted]]
        values = residual.ravel()[nearest]
        updated = float(sigma_clipped_stats(values, sigma=4.0, maxiters=5, stdfunc="std")[2]) / residual_fraction
        if abs(updated - sigma) < 1e-3 * sigma:
            return updated
        sigma = updated
    return sigma


@dataclass(frozen=True)
class CompactSource:
    """A compact source found in an observation (see :func:`find_compact_sources`).

    Offsets are from the centre the observation is prepared about: east and north [arcsec], on the sky.
    """

    coordinate: SkyCoord
    east_arcsec: float
    north_arcsec: float
    peak_jy_beam: float
    signal_to_noise: float

    @property
    def separation_arcsec(self) -> float:
        return float(math.hypot(self.east_arcsec, self.north_arcsec))

    def to_dict(self, distance_pc: float | None = None) -> dict:
        """Plain data for reports (offsets also in au at ``distance_pc``)."""
        row = {"ra_deg": float(self.coordinate.icrs.ra.deg), "dec_deg": float(self.coordinate.icrs.dec.deg),
               "position": self.coordinate.to_string("hmsdms", precision=2),
               "east_arcsec": self.east_arcsec, "north_arcsec": self.north_arcsec,
               "separation_arcsec": self.separation_arcsec, "peak_jy_beam": self.peak_jy_beam,
               "signal_to_noise": self.signal_to_noise}
        if distance_pc:
            row["separation_au"] = self.separation_arcsec * distance_pc
        return row


def _plain_icrs(coordinate: SkyCoord) -> SkyCoord:
    """The position in ICRS with no other frame attributes (an FK5 file's equinox would make offsets refuse)."""
    icrs = coordinate.icrs
    return SkyCoord(icrs.ra, icrs.dec, frame="icrs")


def find_compact_sources(
    observation: Observation, noise_rms_jy_beam: float, centre: SkyCoord, *, threshold_sigma: float = DETECTION_SIGMA
) -> list[CompactSource]:
    """Compact sources in an observation above ``threshold_sigma`` times the local noise, brightest first.

    A source is a local maximum of the image minus its smooth part (the image smoothed to three
    beams), so the peaks of extended emission are not counted as sources, while a binary or a
    neighbour a few beams away is. The threshold is applied against the local noise (the robust rms
    of that residual in rings one beam wide about the phase centre, never below ``noise_rms_jy_beam``'s
    share of it), so the noisier edges of primary-beam-corrected maps give no false sources, and against the image itself
    (the peak must exceed ``threshold_sigma * noise_rms_jy_beam``). Peaks within two beams of a brighter
    one count as part of it.

    Arguments:
        observation: the image as read.
        noise_rms_jy_beam: the noise rms near the source.
        centre: offsets are measured from here.
        threshold_sigma: detection threshold in noise rms.
    """
    image = observation.image_jy_beam
    valid = np.isfinite(image)
    pixel = observation.pixel_scale_arcsec
    covariance = observation.beam.covariance_pixels(pixel)
    smoothing = 9.0 * covariance
    weight = convolve_gaussian(torch.as_tensor(valid.astype(np.float64)), smoothing).numpy()
    filled = np.where(valid, image, 0.0)
    residual = filled - convolve_gaussian(torch.as_tensor(filled), smoothing).numpy() / np.maximum(weight, 1e-12)
    noise = beam_noise(image.shape, observation.beam, pixel, np.random.default_rng(0)).numpy().astype(np.float64)
    noise_residual = noise - convolve_gaussian(torch.as_tensor(noise * valid), smoothing).numpy() / np.maximum(weight, 1e-12)
    inside = valid & (weight > 0.5)
    if inside.sum() < 4:
        return []
    floor = noise_rms_jy_beam * float(noise_residual[inside].std() / noise[inside].std())
    # The local noise: robust rms in rings one beam wide about the phase centre (the reference pixel),
    # since primary-beam correction makes the noise grow with the distance from it.
    ref_col, ref_row = (float(v) - 1.0 for v in observation.wcs.wcs.crpix)
    radius = np.hypot(*np.meshgrid(np.arange(image.shape[0]) - ref_row, np.arange(image.shape[1]) - ref_col, indexing="ij"))
    ring = np.floor(radius / (observation.beam.major_arcsec / pixel)).astype(np.int64)
    local = np.full(image.shape, floor)
    for k in np.unique(ring[inside]):
        members = inside & (ring == k)
        if members.sum() >= 20 * _solid_angle_pixels(covariance):  # inner rings, mostly source, keep the floor
            rms = float(sigma_clipped_stats(residual[members], sigma=3.0, maxiters=5, stdfunc="mad_std")[2])
            local[ring == k] = max(floor, rms)
    size = max(3, int(round(observation.beam.major_arcsec / pixel)) | 1)
    peaks = (residual == ndimage.maximum_filter(np.where(inside, residual, -np.inf), size=size)) & inside
    peaks &= (residual > threshold_sigma * local) & (filled > threshold_sigma * noise_rms_jy_beam)
    rows, cols = np.nonzero(peaks)
    order = np.argsort(-filled[rows, cols])
    kept: list[tuple[int, int]] = []
    separation = 2.0 * observation.beam.major_arcsec / pixel
    for k in order:
        if all(math.hypot(rows[k] - r, cols[k] - c) > separation for r, c in kept):
            kept.append((int(rows[k]), int(cols[k])))
    sources = []
    for r, c in kept:
        coordinate = observation.wcs.pixel_to_world(*_refine_peak(np.where(valid, image, -np.inf), r, c))
        east, north = _plain_icrs(centre).spherical_offsets_to(_plain_icrs(coordinate))
        sources.append(CompactSource(coordinate, float(east.to_value(u.arcsec)), float(north.to_value(u.arcsec)),
                                     float(image[r, c]), float(image[r, c] / noise_rms_jy_beam)))
    return sources


def common_beam_covariance(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The smallest Gaussian covariance containing both ``first`` and ``second`` (equal to ``first``
    when it already contains ``second``): ``second`` is whitened, eigenvalues below one are raised to one.
    """
    lower = np.linalg.cholesky(second)
    inverse = np.linalg.inv(lower)
    values, vectors = np.linalg.eigh(inverse @ first @ inverse.T)
    raised = vectors @ np.diag(np.maximum(values, 1.0)) @ vectors.T
    common = lower @ raised @ lower.T
    return 0.5 * (common + common.T)


def convolve_gaussian(images: torch.Tensor, covariance: np.ndarray) -> torch.Tensor:
    """Convolve images ``(..., H, W)`` with a unit-integral Gaussian of ``covariance`` [pixels^2].

    ``covariance`` is in (column, row) = (west, north) pixel coordinates, as
    :meth:`~protolib.instrument.Beam.covariance_pixels` gives it; covariances add exactly. The images
    are zero padded by three widths before the FFT, so nothing wraps around. A zero covariance
    returns the images unchanged.
    """
    covariance = np.asarray(covariance, dtype=float)
    if not np.any(np.abs(covariance) > 1e-12):
        return images
    pad = int(math.ceil(3.0 * math.sqrt(max(covariance[0, 0], covariance[1, 1]))))
    height, width = images.shape[-2:]
    if abs(covariance[0, 1]) <= 1e-9 * math.sqrt(covariance[0, 0] * covariance[1, 1]):  # separable: two small matrix products
        rows = _gaussian_matrix(height, covariance[1, 1], pad).to(images.device, images.dtype)
        cols = _gaussian_matrix(width, covariance[0, 0], pad).to(images.device, images.dtype)
        return rows @ images @ cols.T
    shape = (height + 2 * pad, width + 2 * pad)
    ky = torch.fft.fftfreq(shape[0], dtype=torch.float64)[:, None]
    kx = torch.fft.rfftfreq(shape[1], dtype=torch.float64)[None, :]
    cxx, cxy, cyy = covariance[0, 0], covariance[0, 1], covariance[1, 1]
    transfer = torch.exp(-2.0 * math.pi**2 * (cxx * kx**2 + 2.0 * cxy * kx * ky + cyy * ky**2)).to(images.device, images.dtype)
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    result = torch.fft.irfft2(torch.fft.rfft2(padded) * transfer, s=shape)
    return result[..., pad : pad + height, pad : pad + width]


@functools.lru_cache(maxsize=64)
def _gaussian_matrix(n: int, variance: float, pad: int) -> torch.Tensor:
    """``(n, n)`` matrix of the 1-D convolution :func:`convolve_gaussian` applies along one axis.

    Column ``j`` is the response to a unit impulse at ``j``, computed with the same zero-padded FFT and
    the same Fourier-space Gaussian, so the separable path gives what the 2-D FFT gives, in a matrix
    product that costs far less when the kernel is wide (a recoverable scale many times the image).
    """
    size = n + 2 * pad
    transfer = torch.exp(-2.0 * math.pi**2 * variance * torch.fft.rfftfreq(size, dtype=torch.float64) ** 2)
    impulses = torch.zeros((n, size), dtype=torch.float64)
    impulses[torch.arange(n), pad + torch.arange(n)] = 1.0
    responses = torch.fft.irfft(torch.fft.rfft(impulses) * transfer, n=size)[:, pad : pad + n]  # (impulse j, position i)
    return responses.T.contiguous()


def effective_beam_covariance(beam: Beam, pixel_arcsec: float) -> np.ndarray:
    """The covariance [pixels^2] that :func:`~protolib.instrument.convolve_beam` really applies.

    Fitted to the transfer function of a convolved point source at low spatial frequencies, where a
    Gaussian of covariance ``C`` has ``-ln |T(k)| = 2 pi^2 k^T C k``. It equals the nominal beam for a
    Fourier-space Gaussian and includes the pixel (``+1/12``) for a pixel-integrated kernel, so the
    transform matches however the bank's beam was applied, even for beams of about a pixel.
    """
    nominal = beam.covariance_pixels(pixel_arcsec)
    n = max(64, 2 * int(math.ceil(8.0 * math.sqrt(max(nominal[0, 0], nominal[1, 1])))) + 1)
    point = torch.zeros((n, n), dtype=torch.float64)
    point[n // 2, n // 2] = 1.0
    kernel = convolve_beam(point, beam, pixel_arcsec).numpy()
    transfer = np.abs(np.fft.fft2(np.fft.ifftshift(kernel)))
    ky, kx = np.meshgrid(np.fft.fftfreq(n), np.fft.fftfreq(n), indexing="ij")
    use = (np.hypot(kx, ky) < 0.2) & (transfer > 0.05) & (np.hypot(kx, ky) > 0)
    design = np.stack([kx[use] ** 2, 2 * kx[use] * ky[use], ky[use] ** 2], axis=1)
    cxx, cxy, cyy = np.linalg.lstsq(design, -np.log(transfer[use]) / (2 * math.pi**2), rcond=None)[0]
    # A beam much narrower than a pixel, sampled at pixel centres, is a delta function: its covariance
    # is zero, and the fit gives +-1e-15. Eigenvalues are kept at least MIN_BEAM_VARIANCE, so that
    # the covariance stays positive definite whatever the rounding.
    values, vectors = np.linalg.eigh(np.array([[cxx, cxy], [cxy, cyy]]))
    return vectors @ np.diag(np.maximum(values, MIN_BEAM_VARIANCE)) @ vectors.T


def _solid_angle_pixels(covariance: np.ndarray) -> float:
    """Solid angle of a Gaussian beam of ``covariance`` [pixels^2]: ``2 pi sqrt(det C)``."""
    return 2.0 * math.pi * math.sqrt(max(np.linalg.det(covariance), 0.0))


# ---------------------------------------------------------------------------------------------
# The bank-to-observation transform.


class ResolutionMatch:
    """Bring bank images to an observation's resolution, units and noise: the transform used for matching.

    Images ``(..., H, W)`` in the bank's unit (Jy/beam for the bank's beam, or Jy/pixel) are convolved
    with the Gaussian that turns the bank's beam into ``target_beam`` (the covariance difference),
    converted to Jy per ``target_beam``, given extra noise correlated on the target beam so that the
    total noise rms is ``noise_rms_jy_beam`` (the bank's own noise, smoothed, counts towards it), and
    multiplied by ``coverage`` (zero where the observation was padded).

    ``target_beam`` must contain the bank's beam (the bank cannot be sharpened);
    :func:`prepare_observation` guarantees it by smoothing the observation where needed.

    With ``max_scale_arcsec`` the transform also removes what an interferometer does not recover:
    emission on scales larger than its maximum recoverable scale. The filter is a Gaussian high-pass
    taper in the uv plane, ``1 - exp(-pi^2 theta^2 q^2 / (4 ln 2))`` for a maximum recoverable scale
    ``theta`` and a spatial frequency ``q``: the image minus itself smoothed by a circular Gaussian of
    FWHM ``theta``. A Gaussian source of FWHM ``theta_s`` keeps the fraction
    ``theta^2 / (theta^2 + theta_s^2)`` of its peak, so a compact disk keeps nearly all of it and an
    envelope as large as ``theta`` half. It stands for the missing short baselines of a real array
    without knowing them; the zero-spacing flux is removed entirely, as in an interferometer.

    Arguments:
        target_beam: the observation's resolution, at the bank's distance.
        pixel_arcsec: the bank's pixel side at the bank's distance.
        bank_beam: the bank images' beam (``None`` for images in Jy/pixel).
        noise_rms_jy_beam: total noise rms wanted [Jy/target beam].
        bank_noise_rms_jy_beam: noise rms already in the bank images [Jy/bank beam].
        coverage: ``(H, W)`` fraction of each pixel with observed data, or ``None``.
        max_scale_arcsec: the maximum recoverable scale at the bank's distance (``None``: no filtering).

    Attributes:
        bank_noise_rms_jy_beam: the bank's own noise after the transform [Jy/target beam]; it
            counts towards the noise of a residual between the observation and a transformed bank image.

    Example:
        >>> prepared = prepare_observation("obs.fits", "bank.h5", distance_pc=146)  # doctest: +SKIP
        >>> transform = prepared.transform()                                      # doctest: +SKIP
        >>> matched = transform(torch.as_tensor(bank.load_images([0, 1])[:, 0]), np.random.default_rng(0))  # doctest: +SKIP
        >>> matched.shape                      # (2, H, W), Jy/beam at the observation's resolution  # doctest: +SKIP
    """

    def __init__(
        self,
        target_beam: Beam,
        pixel_arcsec: float,
        *,
        bank_beam: Beam | None,
        noise_rms_jy_beam: float = 0.0,
        bank_noise_rms_jy_beam: float = 0.0,
        coverage: np.ndarray | None = None,
        max_scale_arcsec: float | None = None,
    ):
        self.target_beam = target_beam
        self.max_scale_arcsec = float(max_scale_arcsec) if max_scale_arcsec else None
        fwhm_pixels = self.max_scale_arcsec / float(pixel_arcsec) if self.max_scale_arcsec else 0.0
        self.max_scale_covariance = (fwhm_pixels * FWHM_TO_SIGMA) ** 2 * np.eye(2) if fwhm_pixels else None
        self.bank_beam = bank_beam
        self.pixel_arcsec = float(pixel_arcsec)
        target = target_beam.covariance_pixels(pixel_arcsec)
        bank = effective_beam_covariance(bank_beam, pixel_arcsec) if bank_beam is not None else np.zeros((2, 2))
        kernel = target - bank
        smallest = float(np.linalg.eigvalsh(kernel)[0])
        if smallest < -1e-6 * float(np.trace(target)):
            raise ProtolibInputError(
                f"The target beam {target_beam} is smaller than the bank's beam {bank_beam} along some direction; a bank "
                "cannot be sharpened. Prepare the observation with prepare_observation(), which smooths it to a common beam."
            )
        values, vectors = np.linalg.eigh(kernel)
        self.kernel_covariance = vectors @ np.diag(np.clip(values, 0.0, None)) @ vectors.T
        nominal = bank_beam.covariance_pixels(pixel_arcsec) if bank_beam is not None else None
        self.unit_factor = _solid_angle_pixels(target) / (_solid_angle_pixels(nominal) if bank_beam is not None else 1.0)
        smoothed_bank_noise = 0.0
        if bank_beam is not None:  # noise correlated on the bank's beam, smoothed to the target's, in Jy/target beam
            smoothed_bank_noise = bank_noise_rms_jy_beam * self.unit_factor * (np.linalg.det(bank) / np.linalg.det(target)) ** 0.25
        self.noise_rms_jy_beam = float(noise_rms_jy_beam)
        self.bank_noise_rms_jy_beam = float(smoothed_bank_noise)
        self.added_noise_rms_jy_beam = math.sqrt(max(0.0, noise_rms_jy_beam**2 - smoothed_bank_noise**2))
        self.coverage = None if coverage is None else torch.as_tensor(np.asarray(coverage, dtype=np.float32))

    def __call__(self, images, rng: np.random.Generator | None = None):
        """Matched images, same shape and type (tensor or numpy) as ``images``; no noise when ``rng`` is ``None``."""
        as_numpy = isinstance(images, np.ndarray)
        x = torch.as_tensor(np.asarray(images, dtype=np.float32)) if as_numpy else images
        x = convolve_gaussian(x, self.kernel_covariance) * self.unit_factor  # (..., H, W)
        if self.max_scale_covariance is not None:
            x = x - convolve_gaussian(x, self.max_scale_covariance)
        if rng is not None and self.added_noise_rms_jy_beam > 0:
            noise = beam_noise(tuple(x.shape), self.target_beam, self.pixel_arcsec, rng).to(x)
            x = x + self.added_noise_rms_jy_beam * noise
        if self.coverage is not None:
            x = x * self.coverage.to(x)
        return x.numpy() if as_numpy else x

    def __repr__(self) -> str:
        scale = f", scales above {self.max_scale_arcsec:.3g}\" removed" if self.max_scale_arcsec else ""
        return (f"ResolutionMatch(bank beam {self.bank_beam} -> {self.target_beam}, "
                f"noise {self.noise_rms_jy_beam:.3g} Jy/beam, {self.pixel_arcsec:.4g}\"/px{scale})")


# ---------------------------------------------------------------------------------------------
# Preparing an observation.


@dataclass
class PreparedObservation:
    """An observation on the bank's grid, as the pipeline sees it (see the module's conventions).

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
    max_scale_source: str = ""  # "given", "file" or the assumption made
    blanked_zero_fraction: float = 0.0  # fraction of the file's pixels that were zero-valued blanking
    mask_radius_arcsec: float | None = None  # everything further than this from the centre was blanked
    sources: list[dict] = field(default_factory=list)  # compact sources in the field (CompactSource.to_dict), brightest first

    def __repr__(self) -> str:
        n, b = self.grid.image_size, self.beam
        return (f"PreparedObservation({Path(self.source_path).name!r} at {self.distance_pc:g} pc -> {n}x{n} px of "
                f"{self.grid.pixel_size_au:.3g} au at {self.grid.distance_pc:g} pc; beam {b.major_arcsec:.3g}\"x"
                f"{b.minor_arcsec:.3g}\" PA {b.position_angle_deg:.0f} deg; noise {self.noise_rms_jy_beam:.3g} Jy/beam; "
                f"{100 * self.padded_fraction:.1f}% padded)")

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
            "beam_arcsec_at_bank_distance": [self.beam.major_arcsec, self.beam.minor_arcsec, self.beam.position_angle_deg],
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
        cards = {
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
        }
        if self.grid.beam is not None:
            cards["PROTOLIB BANK_BMAJ"] = (self.grid.beam.major_arcsec, "[arcsec]")
            cards["PROTOLIB BANK_BMIN"] = (self.grid.beam.minor_arcsec, "[arcsec]")
            cards["PROTOLIB BANK_BPA"] = (self.grid.beam.position_angle_deg, "[deg]")
        cards["PROTOLIB BANK_RMS"] = (self.grid.noise_rms_jy_beam, "[Jy/beam]")
        cards["PROTOLIB BANK_FREQ"] = (self.grid.frequency_ghz, "[GHz] bank")
        cards["PROTOLIB BANK_BETA"] = (self.grid.opacity_beta, "bank opacity index")
        cards["PROTOLIB OBS_FREQ"] = (self.observed_frequency_ghz if self.observed_frequency_ghz else 0.0, "[GHz] 0: unknown")
        cards["PROTOLIB SPEC_INDEX"] = (self.spectral_index, "S ~ nu^index")
        cards["PROTOLIB FREQ_FACTOR"] = (self.frequency_factor, "applied to flux")
        cards["PROTOLIB MAX_SCALE"] = (self.max_scale_arcsec or 0.0, "[arcsec] observed; 0: none")
        cards["PROTOLIB ZERO_BLANK"] = (self.blanked_zero_fraction, "zero-blanked fraction")
        cards["PROTOLIB N_SOURCES"] = (len(self.sources), "compact sources found")
        if self.mask_radius_arcsec:
            cards["PROTOLIB MASK_RAD"] = (self.mask_radius_arcsec, "[arcsec] blanked beyond")
        for key, value in self.true_parameters.items():
            cards[f"PROTOLIB TRUE {key.upper()}"] = (value, "true")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", VerifyWarning)  # long comments are shortened; values are kept
            for key, (value, comment) in cards.items():
                header[f"HIERARCH {key}"] = (value, comment)
        header["COMMENT"] = "Prepared by protolib observe: resampled onto the bank grid (flux conserving), centred"
        header["COMMENT"] = "on the source, fluxes scaled to the bank distance; the sky scale (CDELT, BMAJ) is the"
        header["COMMENT"] = "one the source would have at DIST_BNK. NOISE_RMS: noise here; OBS_*: the observed"
        header["COMMENT"] = "beam and rms; BANK_*: the bank's. SMOOTHED: smoothed to a beam containing the bank's."
        header["COMMENT"] = "Extension COVERAGE: fraction of each pixel with observed data (the rest is zero)."
        header["COMMENT"] = "Fluxes are brought to BANK_FREQ by FREQ_FACTOR = (BANK_FREQ/OBS_FREQ)^SPEC_INDEX; bank"
        header["COMMENT"] = "images are matched to it with scales above MAX_SCALE removed (interferometric filtering)."
        return header

    def write_fits(self, path: str | Path) -> Path:
        """Write the prepared image (primary HDU) and its coverage (extension ``COVERAGE``), atomically."""
        header = self.to_header()
        hdus = fits.HDUList([
            fits.PrimaryHDU(self.image_jy_beam.astype(np.float32), header=header),
            fits.ImageHDU(self.coverage.astype(np.float32), name="COVERAGE"),
        ])
        with atomic_path(path) as tmp:
            hdus.writeto(tmp, overwrite=True)
        return Path(path)


def _as_grid(bank) -> BankGrid:
    return bank if isinstance(bank, BankGrid) else BankGrid.from_bank(bank)


def _parse_centre(centre, path: Path) -> SkyCoord:
    if isinstance(centre, SkyCoord):
        return centre
    text = str(centre).strip()
    try:
        if re.search(r"[:hms]", text.split()[0] if text.split() else ""):
            return SkyCoord(text, unit=(u.hourangle, u.deg))
        return SkyCoord(text, unit=(u.deg, u.deg))
    except (ValueError, IndexError) as error:
        raise ProtolibInputError(
            f"{path}: cannot read the centre {centre!r} ({error}); give 'RA DEC' as '04:39:53.9 +26:03:09.4' or in degrees '69.97458 26.05261'."
        ) from None


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

    Steps: read the file (:func:`read_observation`); centre on the emission peak (or ``centre``);
    estimate the noise rms (:func:`estimate_noise_rms`, within :data:`NOISE_BOX` pixels about the
    source) unless given; resample onto the bank's grid in au at
    ``distance_pc`` (:func:`resample_to_grid`, flux conserving); smooth to a beam that contains the
    bank's where the observation is sharper than the bank; convert to Jy per resulting beam and scale
    fluxes by ``(distance_pc / bank_distance_pc) ** 2``. Fields smaller than the bank's are zero padded
    with a warning; less than half the bank's field is refused.

    Real files: zero-valued blanking is read as blank (:func:`blank_zero_regions`). Fluxes are brought
    from the observed frequency to the bank's with ``S ~ nu^spectral_index`` (:func:`frequency_scale`;
    refused beyond a factor :data:`MAX_FREQUENCY_RATIO`). Compact sources in the field are found
    (:func:`find_compact_sources`); when there is more than one, a warning gives their offsets and
    peaks, ``centre`` picks one and ``mask_radius_arcsec`` blanks everything further from it. The
    maximum recoverable scale (``max_scale_arcsec``, else the file's ``PROTOLIB MAX_SCALE`` card, else
    :data:`MAX_SCALE_BEAMS` beam major axes, the assumption stated in the result) is recorded for the
    transform, which removes larger scales from the bank images as the interferometer did from the sky.

    Arguments:
        observation: an :class:`Observation` or a FITS path.
        bank: a :class:`~protolib.bank.Bank`, a path to one, or a :class:`BankGrid`.
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
        The :class:`PreparedObservation`; its :meth:`~PreparedObservation.transform` matches bank images to it.

    Example:
        >>> prepared = prepare_observation("L1527.fits", "bank.h5", distance_pc=140)   # doctest: +SKIP
        >>> prepared.image_jy_beam.shape                                            # (64, 64)  # doctest: +SKIP
    """
    if not isinstance(observation, Observation):
        observation = read_observation(observation, beam=beam)
    elif beam is not None:
        observation.beam = beam
    path = observation.path
    if distance_pc is None:
        raise ProtolibInputError(f"{path}: the distance to the source is missing; give it in pc (e.g. --distance 146).")
    try:
        distance_pc = float(distance_pc)
    except (TypeError, ValueError):
        raise ProtolibInputError(f"{path}: the distance {distance_pc!r} is not a number of pc.") from None
    if not (math.isfinite(distance_pc) and distance_pc > 0):
        raise ProtolibInputError(f"{path}: the distance must be a positive number of pc, got {distance_pc}.")
    grid = _as_grid(bank)
    field_au = grid.field_of_view_au
    beam_au = observation.beam.major_arcsec * distance_pc
    if beam_au >= field_au:
        raise ProtolibInputError(
            f"{path}: the beam ({observation.beam.major_arcsec:.3g}\" = {beam_au:.0f} au at {distance_pc:g} pc) is larger than "
            f"the bank's field of view ({field_au:.0f} au); the source is unresolved at the bank's scale. Use a bank with a larger field."
        )
    image = observation.image_jy_beam
    if centre is None:  # in ICRS whatever the map's frame (a galactic map's l, b must not be printed as RA, Dec)
        centre = _plain_icrs(observation.peak_coordinate())
    else:
        centre = _parse_centre(centre, path)
    x, y = observation.wcs.world_to_pixel(centre)
    ny, nx = image.shape
    if not (np.isfinite(x) and np.isfinite(y) and -0.5 <= x <= nx - 0.5 and -0.5 <= y <= ny - 0.5):
        raise ProtolibInputError(f"{path}: the centre {centre.to_string('hmsdms')} lies outside the image.")
    if noise_rms_jy_beam is None:  # from at most NOISE_BOX x NOISE_BOX pixels about the source
        row0 = int(np.clip(round(float(y)) - NOISE_BOX // 2, 0, max(0, ny - NOISE_BOX)))
        col0 = int(np.clip(round(float(x)) - NOISE_BOX // 2, 0, max(0, nx - NOISE_BOX)))
        box = image[row0 : row0 + NOISE_BOX, col0 : col0 + NOISE_BOX]
        noise_rms_jy_beam = estimate_noise_rms(box, observation.beam, observation.pixel_scale_arcsec,
                                               centre=(float(x) - col0, float(y) - row0))
        if not noise_rms_jy_beam > 1e-6 * float(np.nanmax(np.abs(box))):
            raise ProtolibInputError(
                f"{path}: the image looks noiseless (estimated noise rms {noise_rms_jy_beam:.3g} Jy/beam, under a millionth of "
                "its peak), as a model image would be; give the noise rms of the observation it stands for with --noise.")
    for name, value in (("noise rms", noise_rms_jy_beam), ("frequency", frequency_ghz), ("mask radius", mask_radius_arcsec)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ProtolibInputError(f"{path}: the {name} must be a positive number, got {value}.")
    frequency = _frequency_settings(observation, grid, frequency_ghz, spectral_index)
    max_scale, max_scale_source = _max_scale_setting(observation, max_scale_arcsec)
    sources = find_compact_sources(observation, noise_rms_jy_beam, centre)
    _warn_about_sources(path, sources, distance_pc, field_au, mask_radius_arcsec)
    peak = float(np.nanmax(image))
    if noise_rms_jy_beam > 0 and peak < 5.0 * noise_rms_jy_beam:
        warnings.warn(
            f"{path}: the brightest pixel is only {peak / noise_rms_jy_beam:.1f} times the noise rms; the source may be "
            "undetected or the centre a noise peak. Give the source's position (--centre / centre=).", stacklevel=2)

    size = grid.image_size
    pixel_arcsec_obs = grid.pixel_size_au / distance_pc  # bank pixel seen at the observed distance
    target_wcs = sky_grid_wcs(centre, size, pixel_arcsec_obs)
    resampled, coverage = resample_to_grid(image, observation.wcs, target_wcs, (size, size))
    covered = float(coverage.mean())
    if covered < MIN_FIELD_FRACTION:
        raise ProtolibInputError(
            f"{path}: the observation covers only {100 * covered:.0f}% of the bank's {field_au:.0f} au field "
            f"({field_au / distance_pc:.2f}\" at {distance_pc:g} pc); at least {100 * MIN_FIELD_FRACTION:.0f}% is needed. "
            "Check the distance and centre, or use a bank with a smaller field."
        )
    if mask_radius_arcsec:  # after the field check: what the user masks is not missing data
        resampled, coverage = resample_to_grid(_blank_beyond(observation, centre, mask_radius_arcsec), observation.wcs,
                                               target_wcs, (size, size))
    elif covered < 1.0 - 1e-3:
        warnings.warn(
            f"{path}: the observation covers {100 * covered:.1f}% of the bank's {field_au:.0f} au field; "
            f"{100 * (1 - covered):.1f}% of the prepared image is zero padding (see its coverage).", stacklevel=2)

    # Resolution: the beam, plus the pixels. Observed pixels are samples of the beam-convolved sky; the
    # histospline takes them as pixel means (a box of the source pixel taken away) and the target pixel
    # averages over its own box, each box taken as a Gaussian of the same variance (side^2 / 12).
    observed = observation.beam.covariance_pixels(pixel_arcsec_obs)
    source_pixel = observation.pixel_scale_arcsec / pixel_arcsec_obs  # in target pixels
    effective = observed + (1.0 - source_pixel**2) / 12.0 * np.eye(2)
    working = effective
    if grid.beam is not None:
        working = common_beam_covariance(effective, effective_beam_covariance(grid.beam, grid.pixel_arcsec))
    smoothing = working - effective
    smoothed = bool(np.abs(smoothing).max() > 1e-6 * np.trace(working))
    image = resampled
    if smoothed:
        image = convolve_gaussian(torch.as_tensor(resampled), smoothing).numpy()
    unit_factor = _solid_angle_pixels(working) / _solid_angle_pixels(observed)  # Jy/observed beam -> Jy/working beam
    flux_scale = (distance_pc / grid.distance_pc) ** 2 * frequency["frequency_factor"]
    working_beam = Beam.from_covariance_pixels(working, grid.pixel_arcsec)
    return PreparedObservation(
        image_jy_beam=(image * unit_factor * flux_scale).astype(np.float32),
        coverage=coverage.astype(np.float32),
        beam=working_beam,
        noise_rms_jy_beam=float(noise_rms_jy_beam * math.sqrt(unit_factor) * flux_scale),
        grid=grid,
        distance_pc=distance_pc,
        centre=centre,
        observed_beam=observation.beam,
        observed_noise_rms_jy_beam=float(noise_rms_jy_beam),
        smoothed=smoothed,
        source_path=str(path),
        object_name=observation.object_name,
        true_parameters=dict(observation.true_parameters),
        original=observation,
        **frequency,
        max_scale_arcsec=max_scale,
        max_scale_source=max_scale_source,
        blanked_zero_fraction=observation.blanked_zero_fraction,
        mask_radius_arcsec=mask_radius_arcsec,
        sources=[source.to_dict(distance_pc) for source in sources],
    )


def _frequency_settings(observation: Observation, grid: BankGrid, frequency_ghz: float | None, spectral_index: float | None) -> dict:
    """The observed frequency, its source, the spectral index and the flux factor to the bank's frequency."""
    path = observation.path
    alpha = grid.spectral_index if spectral_index is None else float(spectral_index)
    if not (math.isfinite(alpha) and -1.0 <= alpha <= 6.0):
        raise ProtolibInputError(f"{path}: the spectral index {spectral_index} is not a dust spectral index (between -1 and 6; thin dust: 2 + beta, about 3-4).")
    observed, source = (float(frequency_ghz), "given") if frequency_ghz else (observation.frequency_ghz, observation.frequency_source)
    if observed is None:
        warnings.warn(f"{path}: the file has no spectral axis to read the frequency from; assuming the bank's "
                      f"{grid.frequency_ghz:g} GHz (give --frequency GHz if it differs).", stacklevel=3)
        return {"observed_frequency_ghz": None, "frequency_source": "assumed the bank's", "spectral_index": alpha,
                "frequency_factor": 1.0}
    factor = frequency_scale(observed, grid.frequency_ghz, alpha, str(path))
    return {"observed_frequency_ghz": observed, "frequency_source": source, "spectral_index": alpha, "frequency_factor": factor}


def _max_scale_setting(observation: Observation, max_scale_arcsec: float | None) -> tuple[float | None, str]:
    """The maximum recoverable scale [arcsec, observed] (``None``: no filtering) and where it came from."""
    if max_scale_arcsec is not None:
        if not (math.isfinite(max_scale_arcsec) and max_scale_arcsec >= 0):
            raise ProtolibInputError(f"{observation.path}: the maximum recoverable scale must be 0 (none) or a positive number of arcsec, got {max_scale_arcsec}.")
        beam = observation.beam.major_arcsec
        if max_scale_arcsec and not beam <= max_scale_arcsec <= MAX_SCALE_LIMIT_ARCSEC:
            raise ProtolibInputError(
                f"{observation.path}: a maximum recoverable scale of {max_scale_arcsec:g}\" is "
                + (f"smaller than the beam ({beam:.3g}\"): nothing would be left" if max_scale_arcsec < beam else
                   f"beyond {MAX_SCALE_LIMIT_ARCSEC:g}\" (give 0 for no filtering)") + ".")
        return (float(max_scale_arcsec) or None), "given"
    if observation.max_scale_arcsec is not None:
        return (observation.max_scale_arcsec or None), "file"
    return MAX_SCALE_BEAMS * observation.beam.major_arcsec, f"assumed: {MAX_SCALE_BEAMS:g} beam major axes (give --max-scale)"


def _warn_about_sources(path: Path, sources: list[CompactSource], distance_pc: float, field_au: float, mask_radius: float | None) -> None:
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
        f"{s.separation_arcsec:.1f}\" ({s.separation_arcsec * distance_pc:.0f} au) away, {s.east_arcsec:+.1f}\" east "
        f"{s.north_arcsec:+.1f}\" north, peak {s.peak_jy_beam * 1e3:.3g} mJy/beam ({s.signal_to_noise:.0f} sigma), {where(s)}"
        for s in sources if s is not centred)
    warnings.warn(f"{path}: {len(sources)} compact sources above {DETECTION_SIGMA:g} sigma in the field. Centred on "
                  f"{centred.coordinate.to_string('hmsdms', precision=2)} (peak {centred.peak_jy_beam * 1e3:.3g} mJy/beam); "
                  f"the other{'s' if len(sources) > 2 else ''}: {described}. Pick a source with --centre 'RA DEC'; "
                  "--mask-radius ARCSEC blanks everything further from the centre.", stacklevel=3)


def _blank_beyond(observation: Observation, centre: SkyCoord, radius_arcsec: float) -> np.ndarray:
    """The observation's image with every pixel further than ``radius_arcsec`` from ``centre`` blanked (NaN)."""
    ny, nx = observation.image_jy_beam.shape
    rows, cols = np.mgrid[0:ny, 0:nx]
    separation = observation.wcs.pixel_to_world(cols, rows).separation(centre).to_value(u.arcsec)
    return np.where(separation <= radius_arcsec, observation.image_jy_beam, np.nan)


def read_prepared_observation(path: str | Path) -> PreparedObservation:
    """Read a file written by :meth:`PreparedObservation.write_fits` (``protolib observe --out``)."""
    path = Path(path)
    try:
        with fits.open(path, memmap=False) as hdul:
            header = hdul[0].header.copy()
            image = np.asarray(hdul[0].data, dtype=np.float32)
            coverage = np.asarray(hdul["COVERAGE"].data, dtype=np.float32) if "COVERAGE" in hdul else np.ones_like(image)
    except (OSError, ValueError, TypeError) as error:
        raise ProtolibInputError(f"{path}: not a readable FITS file ({error}).") from None
    if "PROTOLIB DIST_BNK" not in header:
        raise ProtolibInputError(f"{path}: not a prepared observation (no PROTOLIB cards); make one with `protolib observe`.")

    def beam_from(prefix: str) -> Beam | None:
        if f"PROTOLIB {prefix}BMAJ" not in header:
            return None
        return Beam(header[f"PROTOLIB {prefix}BMAJ"], header[f"PROTOLIB {prefix}BMIN"], header[f"PROTOLIB {prefix}BPA"])

    grid = BankGrid(
        image_size=image.shape[-1],
        pixel_size_au=float(header["PROTOLIB PIX_AU"]),
        distance_pc=float(header["PROTOLIB DIST_BNK"]),
        beam=beam_from("BANK_"),
        noise_rms_jy_beam=float(header.get("PROTOLIB BANK_RMS", 0.0)),
        name=str(header.get("PROTOLIB BANK", "")),
        frequency_ghz=float(header.get("PROTOLIB BANK_FREQ", 230.0)),
        opacity_beta=float(header.get("PROTOLIB BANK_BETA", 1.0)),
    )
    truth = {k[len("PROTOLIB TRUE ") :].lower(): float(v) for k, v in header.items() if k.startswith("PROTOLIB TRUE ")}
    return PreparedObservation(
        image_jy_beam=image,
        coverage=coverage,
        beam=Beam(header["BMAJ"] * DEG_ARCSEC, header["BMIN"] * DEG_ARCSEC, header["BPA"]),
        noise_rms_jy_beam=float(header["PROTOLIB NOISE_RMS"]),
        grid=grid,
        distance_pc=float(header["PROTOLIB DIST_OBS"]),
        centre=SkyCoord(header["PROTOLIB CENTRE_RA"] * u.deg, header["PROTOLIB CENTRE_DEC"] * u.deg),
        observed_beam=beam_from("OBS_"),
        observed_noise_rms_jy_beam=float(header["PROTOLIB OBS_RMS"]),
        smoothed=bool(header["PROTOLIB SMOOTHED"]),
        source_path=str(header.get("PROTOLIB SOURCE", "")),
        object_name=str(header.get("OBJECT", "")),
        true_parameters=truth,
        observed_frequency_ghz=float(header.get("PROTOLIB OBS_FREQ", 0.0)) or None,
        spectral_index=float(header.get("PROTOLIB SPEC_INDEX", 3.0)),
        frequency_factor=float(header.get("PROTOLIB FREQ_FACTOR", 1.0)),
        max_scale_arcsec=float(header.get("PROTOLIB MAX_SCALE", 0.0)) or None,
        max_scale_source="file",
        blanked_zero_fraction=float(header.get("PROTOLIB ZERO_BLANK", 0.0)),
        mask_radius_arcsec=float(header.get("PROTOLIB MASK_RAD", 0.0)) or None,
    )


# ---------------------------------------------------------------------------------------------
# Writing a synthetic observation.


def write_observation_fits(
    path: str | Path,
    system: dict[str, float],
    *,
    inclination_deg: float,
    position_angle_deg: float,
    distance_pc: float,
    pixel_arcsec: float,
    image_size: int,
    beam: Beam,
    noise_rms_jy_beam: float,
    seed: int = 0,
    phase_centre: SkyCoord | None = None,
    source_offset_arcsec: tuple[float, float] = (0.0, 0.0),
    frequency_ghz: float = 230.0,
    object_name: str = "protolib synthetic",
    config: SimulatorConfig | None = None,
    include_model: bool = True,
) -> Path:
    """Write one simulated system as an ALMA-style continuum FITS image, atomically.

    The image is rendered with :func:`~protolib.simulator.render` at ``distance_pc``, convolved with
    ``beam`` and given beam-correlated noise (:meth:`~protolib.instrument.Instrument.observe`). The
    header is what CASA ``exportfits`` writes: 4 axes (RA---SIN, DEC--SIN, FREQ, STOKES), BUNIT Jy/beam,
    BMAJ/BMIN/BPA [deg], RESTFRQ, OBJECT, TELESCOP; the true parameters are ``HIERARCH PROTOLIB TRUE
    <NAME>`` cards (with the viewing angles and distance). With ``include_model`` the clean model
    [Jy/pixel] is stored in an extension named ``MODEL``.

    Arguments:
        path: the FITS file to write.
        system: physical parameters of one system (names as in :data:`~protolib.parameters.PARAMETERS`;
            those :func:`~protolib.simulator.render` needs must be present).
        inclination_deg, position_angle_deg: viewing angles (0 face-on; PA of the disk's major axis east of north).
        distance_pc: distance to the system.
        pixel_arcsec: pixel side; ``image_size``: pixels per side.
        beam: restoring beam; ``noise_rms_jy_beam``: thermal noise.
        seed: noise seed.
        phase_centre: the image's reference position (default RA 04:39:53.9, Dec +26:03:09.8).
        source_offset_arcsec: the source's (east, north) offset from the phase centre (rounded to whole pixels).
        frequency_ghz: observing frequency (also the simulator's).
        config: sampling settings for the renderer (its size, field and frequency are replaced).
    """
    phase_centre = phase_centre or SkyCoord("04h39m53.9s", "+26d03m09.8s", frame="icrs")
    field_au = image_size * pixel_arcsec * distance_pc
    base = config or SimulatorConfig(envelope_samples=32, disk_samples=24, oversample=1)
    render_config = SimulatorConfig(**{**base.to_dict(), "image_size": int(image_size), "field_of_view_au": field_au,
                                       "frequency_ghz": frequency_ghz})
    east, north = source_offset_arcsec
    source = phase_centre.spherical_offsets_by(east * u.arcsec, north * u.arcsec)
    needed = ("stellar_mass", "accretion_rate", "disk_radius", "disk_mass", "luminosity", "disk_scale_height", "cavity_angle")
    missing = [k for k in needed if k not in system]
    if missing:
        raise ProtolibInputError(f"{path}: the system lacks parameter(s) {missing} needed to render it.")
    with torch.no_grad():
        tensors = {k: torch.tensor([float(system[k])]) for k in needed}
        instrument = Instrument(distance_pc=distance_pc, beam_major_arcsec=beam.major_arcsec, beam_minor_arcsec=beam.minor_arcsec,
                                beam_position_angle_deg=beam.position_angle_deg, noise_rms_jy_beam=noise_rms_jy_beam)
        pixel_au = render_config.pixel_size_au
        # The source sits off the reference pixel: render on a padded grid about the source, then crop
        # (whole-pixel offsets, so the model is not resampled).
        ref = sky_grid_wcs(phase_centre, image_size, pixel_arcsec)
        x, y = ref.world_to_pixel(source)
        centre_pixel = (image_size - 1) / 2.0
        shift_cols, shift_rows = int(round(float(x) - centre_pixel)), int(round(float(y) - centre_pixel))
        pad = max(abs(shift_cols), abs(shift_rows))
        padded_config = SimulatorConfig(**{**render_config.to_dict(), "image_size": image_size + 2 * pad,
                                          "field_of_view_au": (image_size + 2 * pad) * pixel_au})
        clean = render(tensors, torch.tensor([float(inclination_deg)]), torch.tensor([float(position_angle_deg)]),
                       padded_config, distance_pc)
        clean = clean[:, pad - shift_rows : pad - shift_rows + image_size, pad - shift_cols : pad - shift_cols + image_size]
        source = ref.pixel_to_world(centre_pixel + shift_cols, centre_pixel + shift_rows)
        observed = instrument.observe(clean.contiguous(), pixel_au, np.random.default_rng(seed))[0].numpy()
    header = fits.Header()
    wcs_header = ref.to_header()
    header["NAXIS"] = 4
    header["BMAJ"], header["BMIN"], header["BPA"] = beam.major_arcsec / DEG_ARCSEC, beam.minor_arcsec / DEG_ARCSEC, beam.position_angle_deg
    header["BTYPE"] = "Intensity"
    header["OBJECT"] = object_name
    header["BUNIT"] = ("Jy/beam", "Brightness (pixel) unit")
    header["RADESYS"] = "ICRS"
    for axis, (ctype, crval, cdelt, crpix, cunit) in enumerate([
        ("RA---SIN", phase_centre.icrs.ra.deg, -pixel_arcsec / DEG_ARCSEC, wcs_header["CRPIX1"], "deg"),
        ("DEC--SIN", phase_centre.icrs.dec.deg, pixel_arcsec / DEG_ARCSEC, wcs_header["CRPIX2"], "deg"),
        ("FREQ", frequency_ghz * 1e9, 2e9, 1.0, "Hz"),
        ("STOKES", 1.0, 1.0, 1.0, ""),
    ], start=1):
        header[f"CTYPE{axis}"], header[f"CRVAL{axis}"], header[f"CDELT{axis}"] = ctype, crval, cdelt
        header[f"CRPIX{axis}"], header[f"CUNIT{axis}"] = crpix, cunit
    header["RESTFRQ"] = (frequency_ghz * 1e9, "Rest Frequency (Hz)")
    header["SPECSYS"] = "LSRK"
    header["TELESCOP"] = "ALMA"
    header["INSTRUME"] = "ALMA"
    header["ORIGIN"] = f"protolib {__version__} (synthetic observation)"
    truth = {**{k: float(v) for k, v in system.items()}, "inclination": float(inclination_deg),
             "position_angle": float(position_angle_deg), "distance_pc": float(distance_pc),
             "noise_rms_jy_beam": float(noise_rms_jy_beam), "source_ra": source.icrs.ra.deg, "source_dec": source.icrs.dec.deg}
    units = {**{name: p.unit for name, p in PARAMETERS.items()}, "inclination": "deg", "position_angle": "deg",
             "source_ra": "deg", "source_dec": "deg"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VerifyWarning)
        for key, value in truth.items():
            header[f"HIERARCH PROTOLIB TRUE {key.upper()}"] = (value, f"[{units[key]}]" if units.get(key) else "")
    header["COMMENT"] = "Synthetic observation written by protolib; PROTOLIB TRUE cards hold the true values."
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VerifyWarning)
        header["HIERARCH PROTOLIB MAX_SCALE"] = (0.0, "[arcsec] no interferometric filtering")
    hdus = [fits.PrimaryHDU(observed.astype(np.float32)[None, None], header=header)]
    if include_model:
        model_header = ref.to_header()
        model_header["BUNIT"] = "Jy/pixel"
        model_header["COMMENT"] = "Clean model (no beam, no noise) of the primary image."
        hdus.append(fits.ImageHDU(clean[0].numpy().astype(np.float32), header=model_header, name="MODEL"))
    with atomic_path(path) as tmp:
        fits.HDUList(hdus).writeto(tmp, overwrite=True)
    return Path(path)


# ---------------------------------------------------------------------------------------------
# The figure.


def _scale_bar_au(field_au: float) -> float:
    target = field_au / 4.0
    return float(min((b for b in (10, 20, 50, 100, 200, 500, 1000, 2000, 5000)), key=lambda b: abs(b - target)))


def plot_prepared_observation(prepared: PreparedObservation, *, cmap: str = "inferno"):
    """The original observation beside the prepared image, north up, east left; returns the figure.

    Both panels have axes in au from the centre (the original at the observed distance, the prepared
    image at the bank's), a scale bar in au and the beam drawn in the lower left.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Ellipse

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), layout="constrained")
    field_au = prepared.grid.field_of_view_au
    half = 0.75 * field_au  # the original is shown over 1.5 bank fields

    def decorate(ax, beam_au_major, beam_au_minor, pa, half_width, title):
        bar = _scale_bar_au(2 * half_width)
        x0, y0 = half_width * 0.9, -half_width * 0.85
        ax.plot([x0 - bar, x0], [y0, y0], color="white", lw=2)  # x axis runs east to the left: bar drawn leftwards
        ax.text(x0 - bar / 2, y0 + half_width * 0.04, f"{bar:g} au", color="white", ha="center", va="bottom", fontsize=9)
        ax.add_patch(Ellipse((-half_width * 0.8, -half_width * 0.8), beam_au_minor, beam_au_major, angle=-pa,
                             facecolor="none", edgecolor="white", lw=1.5))
        ax.set_xlim(half_width, -half_width)
        ax.set_ylim(-half_width, half_width)
        ax.set_xlabel("offset east [au]")
        ax.set_ylabel("offset north [au]")
        ax.set_title(title, fontsize=10)

    original = prepared.original
    if original is not None:
        x, y = original.wcs.world_to_pixel(prepared.centre)
        scales = proj_plane_pixel_scales(original.wcs) * DEG_ARCSEC * prepared.distance_pc  # au per pixel
        ny, nx = original.image_jy_beam.shape
        cols_au = (np.arange(nx) - float(x)) * scales[0]
        rows_au = (np.arange(ny) - float(y)) * scales[1]
        east_sign = -1.0 if original.wcs.wcs.get_pc()[0, 0] * original.wcs.wcs.cdelt[0] < 0 else 1.0
        extent = [east_sign * (cols_au[0] - scales[0] / 2), east_sign * (cols_au[-1] + scales[0] / 2),
                  rows_au[0] - scales[1] / 2, rows_au[-1] + scales[1] / 2]
        im = axes[0].imshow(original.image_jy_beam * 1e3, origin="lower", extent=extent, cmap=cmap, interpolation="nearest")
        fig.colorbar(im, ax=axes[0], label="mJy/beam (observed)", shrink=0.85)
        ob = original.beam
        decorate(axes[0], ob.major_arcsec * prepared.distance_pc, ob.minor_arcsec * prepared.distance_pc, ob.position_angle_deg,
                 half, f"{Path(prepared.source_path).name} at {prepared.distance_pc:g} pc")
    else:
        axes[0].set_axis_off()
    half_bank = field_au / 2
    extent = [half_bank, -half_bank, -half_bank, half_bank]
    im = axes[1].imshow(prepared.image_jy_beam * 1e3, origin="lower", extent=extent, cmap=cmap, interpolation="nearest")
    fig.colorbar(im, ax=axes[1], label="mJy/beam (at bank distance)", shrink=0.85)
    b = prepared.beam
    d_bank = prepared.grid.distance_pc
    decorate(axes[1], b.major_arcsec * d_bank, b.minor_arcsec * d_bank, b.position_angle_deg, half_bank,
             f"prepared: {prepared.grid.image_size}x{prepared.grid.image_size} px, {prepared.grid.pixel_size_au:.3g} au/px, "
             f"at {d_bank:g} pc")
    return fig
