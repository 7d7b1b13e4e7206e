"""A synthetic observation: :func:`write_observation_fits` writes one simulated system as an ALMA-style FITS image.

The file is what CASA ``exportfits`` writes, so that it reads as a real observation does, and it
carries the system's true parameters (``PROTOLIB TRUE <NAME>`` cards) to check a match against.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning
from astropy.wcs import WCS

from .. import __version__
from ..instrument import Beam, Instrument
from ..parameters import PARAMETERS
from ..runtime import ProtolibInputError, atomic_path
from ..simulator import NUISANCE_FIELDS, RENDER_KEYS, SimulatorConfig, render
from .fits import DEG_ARCSEC, TRUE_CARD
from .regrid import sky_grid_wcs

__all__ = ["write_observation_fits"]

RENDER_PARAMETERS = RENDER_KEYS


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
            those :func:`~protolib.simulator.render` needs must be present; nuisance physics it carries,
            such as ``opacity_beta``, is used, the rest is ``config``'s).
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
    render_config = _sky_render_config(config, image_size, pixel_arcsec, distance_pc, frequency_ghz)
    east, north = source_offset_arcsec
    source = phase_centre.spherical_offsets_by(east * u.arcsec, north * u.arcsec)
    missing = [k for k in RENDER_PARAMETERS if k not in system]
    if missing:
        raise ProtolibInputError(f"{path}: the system lacks parameter(s) {missing} needed to render it.")
    ref = sky_grid_wcs(phase_centre, image_size, pixel_arcsec)
    with torch.no_grad():
        clean, source = _render_at_whole_pixel(
            system, (inclination_deg, position_angle_deg), distance_pc, render_config, ref, source, image_size
        )
        observed = _observe(clean, render_config, distance_pc, beam, noise_rms_jy_beam, seed)
    header = _exportfits_header(ref, phase_centre, pixel_arcsec, beam, frequency_ghz, object_name)
    _add_true_cards(header, system, (inclination_deg, position_angle_deg), distance_pc, noise_rms_jy_beam, source)
    hdus = [fits.PrimaryHDU(observed.astype(np.float32)[None, None], header=header)]
    if include_model:
        hdus.append(_model_hdu(ref, clean[0]))
    with atomic_path(path) as tmp:
        fits.HDUList(hdus).writeto(tmp, overwrite=True)
    return Path(path)


def _sky_render_config(
    config: SimulatorConfig | None, image_size: int, pixel_arcsec: float, distance_pc: float, frequency_ghz: float
) -> SimulatorConfig:
    """The renderer's settings for a map of ``image_size`` pixels of ``pixel_arcsec`` at ``distance_pc``: ``config``'s
    sampling (or the bank's defaults) with the map's size, field [au] and frequency."""
    field_au = image_size * pixel_arcsec * distance_pc
    base = config or SimulatorConfig(envelope_samples=32, disk_samples=24, oversample=1)
    return SimulatorConfig(
        **{
            **base.to_dict(),
            "image_size": int(image_size),
            "field_of_view_au": field_au,
            "frequency_ghz": frequency_ghz,
        }
    )


def _observe(
    clean: torch.Tensor, config: SimulatorConfig, distance_pc: float, beam: Beam, noise_rms_jy_beam: float, seed: int
) -> np.ndarray:
    """The clean model ``(1, N, N)`` [Jy/pixel] convolved with ``beam`` and given beam-correlated noise of ``seed``:
    the map ``(N, N)`` [Jy/beam]."""
    instrument = Instrument(
        distance_pc=distance_pc,
        beam_major_arcsec=beam.major_arcsec,
        beam_minor_arcsec=beam.minor_arcsec,
        beam_position_angle_deg=beam.position_angle_deg,
        noise_rms_jy_beam=noise_rms_jy_beam,
    )
    return instrument.observe(clean.contiguous(), config.pixel_size_au, np.random.default_rng(seed))[0].numpy()


def _render_at_whole_pixel(
    system: dict[str, float],
    viewing: tuple[float, float],
    distance_pc: float,
    config: SimulatorConfig,
    ref: WCS,
    source: SkyCoord,
    image_size: int,
) -> tuple[torch.Tensor, SkyCoord]:
    """The clean model [Jy/pixel] ``(1, N, N)`` on ``ref``'s grid with the source at the whole pixel nearest
    ``source``, and that pixel's position.

    The source sits off the reference pixel: it is rendered on a padded grid about the source, then
    cropped (whole-pixel offsets, so the model is not resampled). ``viewing`` is (inclination,
    position angle) [deg].
    """
    tensors = {k: torch.tensor([float(system[k])]) for k in (*RENDER_PARAMETERS, *NUISANCE_FIELDS) if k in system}
    pixel_au = config.pixel_size_au
    x, y = ref.world_to_pixel(source)
    centre_pixel = (image_size - 1) / 2.0
    shift_cols, shift_rows = int(round(float(x) - centre_pixel)), int(round(float(y) - centre_pixel))
    pad = max(abs(shift_cols), abs(shift_rows))
    padded_config = SimulatorConfig(
        **{
            **config.to_dict(),
            "image_size": image_size + 2 * pad,
            "field_of_view_au": (image_size + 2 * pad) * pixel_au,
        }
    )
    inclination_deg, position_angle_deg = viewing
    clean = render(
        tensors,
        torch.tensor([float(inclination_deg)]),
        torch.tensor([float(position_angle_deg)]),
        padded_config,
        distance_pc,
    )
    clean = clean[:, pad - shift_rows : pad - shift_rows + image_size, pad - shift_cols : pad - shift_cols + image_size]
    return clean, ref.pixel_to_world(centre_pixel + shift_cols, centre_pixel + shift_rows)


def _exportfits_header(
    ref: WCS, phase_centre: SkyCoord, pixel_arcsec: float, beam: Beam, frequency_ghz: float, object_name: str
) -> fits.Header:
    """The header CASA ``exportfits`` writes for a continuum image on ``ref``'s grid: 4 axes (RA---SIN,
    DEC--SIN, FREQ, STOKES), BUNIT Jy/beam, BMAJ/BMIN/BPA [deg], RESTFRQ, OBJECT, TELESCOP."""
    header = fits.Header()
    wcs_header = ref.to_header()
    header["NAXIS"] = 4
    header["BMAJ"], header["BMIN"], header["BPA"] = (
        beam.major_arcsec / DEG_ARCSEC,
        beam.minor_arcsec / DEG_ARCSEC,
        beam.position_angle_deg,
    )
    header["BTYPE"] = "Intensity"
    header["OBJECT"] = object_name
    header["BUNIT"] = ("Jy/beam", "Brightness (pixel) unit")
    header["RADESYS"] = "ICRS"
    for axis, (ctype, crval, cdelt, crpix, cunit) in enumerate(
        [
            ("RA---SIN", phase_centre.icrs.ra.deg, -pixel_arcsec / DEG_ARCSEC, wcs_header["CRPIX1"], "deg"),
            ("DEC--SIN", phase_centre.icrs.dec.deg, pixel_arcsec / DEG_ARCSEC, wcs_header["CRPIX2"], "deg"),
            ("FREQ", frequency_ghz * 1e9, 2e9, 1.0, "Hz"),
            ("STOKES", 1.0, 1.0, 1.0, ""),
        ],
        start=1,
    ):
        header[f"CTYPE{axis}"], header[f"CRVAL{axis}"], header[f"CDELT{axis}"] = ctype, crval, cdelt
        header[f"CRPIX{axis}"], header[f"CUNIT{axis}"] = crpix, cunit
    header["RESTFRQ"] = (frequency_ghz * 1e9, "Rest Frequency (Hz)")
    header["SPECSYS"] = "LSRK"
    header["TELESCOP"] = "ALMA"
    header["INSTRUME"] = "ALMA"
    header["ORIGIN"] = f"protolib {__version__} (synthetic observation)"
    return header


def _add_true_cards(
    header: fits.Header,
    system: dict[str, float],
    viewing: tuple[float, float],
    distance_pc: float,
    noise_rms_jy_beam: float,
    source: SkyCoord,
) -> None:
    """Write the true parameters, viewing angles (inclination, position angle) [deg], distance, noise and
    source position as ``PROTOLIB TRUE`` cards, with ``PROTOLIB MAX_SCALE`` 0: no interferometric filtering."""
    inclination_deg, position_angle_deg = viewing
    truth = {
        **{k: float(v) for k, v in system.items()},
        "inclination": float(inclination_deg),
        "position_angle": float(position_angle_deg),
        "distance_pc": float(distance_pc),
        "noise_rms_jy_beam": float(noise_rms_jy_beam),
        "source_ra": source.icrs.ra.deg,
        "source_dec": source.icrs.dec.deg,
    }
    units = {
        **{name: p.unit for name, p in PARAMETERS.items()},
        "inclination": "deg",
        "position_angle": "deg",
        "source_ra": "deg",
        "source_dec": "deg",
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VerifyWarning)
        for key, value in truth.items():
            header[f"HIERARCH {TRUE_CARD}{key.upper()}"] = (value, f"[{units[key]}]" if units.get(key) else "")
    header["COMMENT"] = "Synthetic observation written by protolib; PROTOLIB TRUE cards hold the true values."
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VerifyWarning)
        header["HIERARCH PROTOLIB MAX_SCALE"] = (0.0, "[arcsec] no interferometric filtering")


def _model_hdu(ref: WCS, clean: torch.Tensor) -> fits.ImageHDU:
    """The clean model ``(N, N)`` [Jy/pixel] on ``ref``'s grid, as the extension ``MODEL``."""
    model_header = ref.to_header()
    model_header["BUNIT"] = "Jy/pixel"
    model_header["COMMENT"] = "Clean model (no beam, no noise) of the primary image."
    return fits.ImageHDU(clean.numpy().astype(np.float32), header=model_header, name="MODEL")
