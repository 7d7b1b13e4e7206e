"""The bank's grid, and resampling an observed image onto it: :class:`BankGrid`, :func:`sky_grid_wcs`,
:func:`resample_to_grid`.

Resampling conserves flux: each target pixel gets the mean of the source image over its footprint,
the source being the smooth *histospline* whose mean over each of its pixels is that pixel's value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from astropy.coordinates import SkyCoord
from astropy.wcs import WCS
from scipy.interpolate import RectBivariateSpline

from ..instrument import Beam
from ..runtime import ProtolibInputError
from .fits import DEG_ARCSEC

__all__ = ["BankGrid", "sky_grid_wcs", "resample_to_grid"]


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
    def from_bank(cls, bank) -> BankGrid:
        """The grid of a :class:`~protolib.bank.Bank` (an open bank or a path to one)."""
        from ..bank import Bank

        if not isinstance(bank, Bank):
            with Bank(bank) as opened:
                return cls.from_bank(opened)
        if bank.unit not in ("Jy/beam", "Jy/pixel") or not math.isfinite(bank.pixel_size_au):
            raise ProtolibInputError(
                f"Bank {bank.path}: images in {bank.unit!r} with pixel size {bank.pixel_size_au} au; observations can "
                "only be prepared for banks in Jy/beam or Jy/pixel with a known pixel size (banks made by `protolib "
                "simulate`)."
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
    :func:`_box_integrals`), so pixels finer than the source's show no steps. The footprint of each target pixel (or of
    each of its
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
    rows, cols = shape
    x, y = _cell_corners(source_wcs, target_wcs, shape, 1)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ProtolibInputError("The bank's grid falls outside the observation's projection; check the centre.")
    box, area, shrink = _aligned_boxes(x, y)
    m = subdivisions or (1 if np.all(np.abs(shrink - 1.0) < 1e-4) else 8)
    if m > 1:
        x, y = _cell_corners(source_wcs, target_wcs, shape, m)
        box, area, _ = _aligned_boxes(x, y)
    total, covered = _integrate_boxes(image, box, (x, y), shape, m)
    pixel_area = area.reshape(rows, m, cols, m).sum(axis=(1, 3))
    return total / pixel_area, np.clip(covered / pixel_area, 0.0, 1.0)


def _cell_corners(source_wcs: WCS, target_wcs: WCS, shape: tuple[int, int], m: int) -> tuple[np.ndarray, np.ndarray]:
    """Corners of the ``m x m`` sub-cells of every target pixel, in source pixel coordinates where pixel ``k`` spans
    ``[k, k + 1]``;
    each ``(rows * m + 1, columns * m + 1)``."""
    rows, cols = shape
    v, w = np.meshgrid(np.arange(rows * m + 1) / m - 0.5, np.arange(cols * m + 1) / m - 0.5, indexing="ij")
    world = target_wcs.pixel_to_world(w, v)
    x, y = source_wcs.world_to_pixel(world)
    return np.asarray(x) + 0.5, np.asarray(y) + 0.5


def _aligned_boxes(x: np.ndarray, y: np.ndarray):
    """Each cell of the corner grids ``x, y`` as an aligned box of the cell's area.

    Returns ``((x_lo, x_hi, y_lo, y_hi), area, shrink)``: the boxes, the cells' areas [source pixels]
    and the factor by which each cell's bounding box was shrunk to its area (1 for aligned grids).
    """
    quad = [(x[:-1, :-1], y[:-1, :-1]), (x[:-1, 1:], y[:-1, 1:]), (x[1:, 1:], y[1:, 1:]), (x[1:, :-1], y[1:, :-1])]
    area = 0.5 * np.abs(sum(xa * yb - xb * ya for (xa, ya), (xb, yb) in zip(quad, quad[1:] + quad[:1])))
    xs, ys = np.stack([q[0] for q in quad]), np.stack([q[1] for q in quad])
    x_lo, x_hi, y_lo, y_hi = xs.min(0), xs.max(0), ys.min(0), ys.max(0)
    shrink = np.sqrt(area / np.maximum((x_hi - x_lo) * (y_hi - y_lo), 1e-300))
    xc, yc, hw, hh = (
        0.5 * (x_lo + x_hi),
        0.5 * (y_lo + y_hi),
        0.5 * (x_hi - x_lo) * shrink,
        0.5 * (y_hi - y_lo) * shrink,
    )
    return (xc - hw, xc + hw, yc - hh, yc + hh), area, shrink


def _integrate_boxes(image: np.ndarray, box, corners, shape: tuple[int, int], m: int) -> tuple[np.ndarray, np.ndarray]:
    """The integrals of ``image`` (smooth) and of its valid-pixel mask (as pixels) over the boxes, summed per target
    pixel.

    The source is cropped to the region the grid's ``corners`` touch first; both results are ``shape``.
    """
    rows, cols = shape
    x, y = corners
    valid = np.isfinite(image)
    i0 = int(max(0, math.floor(np.nanmin(x)) - 1)), int(min(image.shape[1], math.ceil(np.nanmax(x)) + 1))
    j0 = int(max(0, math.floor(np.nanmin(y)) - 1)), int(min(image.shape[0], math.ceil(np.nanmax(y)) + 1))
    total = np.zeros((rows, cols))
    covered = np.zeros((rows, cols))
    if i0[1] > i0[0] and j0[1] > j0[0]:
        crop = (slice(j0[0], j0[1]), slice(i0[0], i0[1]))
        for values, out, smooth in (
            (np.where(valid, image, 0.0)[crop], total, True),
            (valid[crop].astype(np.float64), covered, False),
        ):
            table = np.zeros((values.shape[0] + 1, values.shape[1] + 1))
            table[1:, 1:] = values.cumsum(0).cumsum(1)
            x_lo, x_hi, y_lo, y_hi = box
            integral = _box_integrals(table, x_lo - i0[0], x_hi - i0[0], y_lo - j0[0], y_hi - j0[0], smooth=smooth)
            out += integral.reshape(rows, m, cols, m).sum(axis=(1, 3))
    return total, covered
