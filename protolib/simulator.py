"""Render protostellar systems (envelope, disk, cavities) as millimetre dust-continuum images.

The renderer casts one ray per (sub-)pixel through the model and integrates the emission with its
optical depth, front to back. Each ray carries two sets of samples: one spaced by ``sinh`` about the
ray's closest approach to the star (for the smooth envelope) and one spaced by ``sinh`` about the
ray's crossing of the disk midplane, with a scale of one local scale height divided by
``cos(inclination)`` (so a disk a few au thick is resolved at any inclination). The two sets are
merged in depth order for the radiative transfer.

Sky conventions (PHYSICS.md): image arrays are ``(..., north, west)``: row index increases to the
north and column index to the **west**, so that ``imshow(origin="lower")`` shows north up, east left,
as FITS does with a negative ``CDELT1``. Position angle is east of north; inclination 0 is face-on.
"""

from __future__ import annotations

import functools
import math
import threading
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import physics
from .runtime import ProtolibInputError

__all__ = [
    "SimulatorConfig",
    "render",
    "settle_compile",
    "COMPILE_FROM_IMAGES",
    "envelope_mass",
    "pixel_offsets_au",
    "NUISANCE_FIELDS",
    "RENDER_KEYS",
]

NUISANCE_FIELDS = {
    "opacity_beta": "opacity_beta",
    "opacity_230ghz": "opacity_230ghz",
    "temperature_1lsun": "temperature_1lsun_k",
    "temperature_index": "temperature_index",
    "midplane_temperature_ratio": "midplane_temperature_ratio",
    "disk_gamma": "disk_gamma",
    "disk_taper": "disk_taper",
    "cavity_wall_exponent": "cavity_wall_exponent",
    "cavity_contrast": "cavity_contrast",
    "envelope_outer_radius": "envelope_outer_radius_au",
}
"""The nuisance physics: each per-system parameter (as in :data:`~protolib.parameters.PARAMETERS`) -> the
:class:`SimulatorConfig` field that holds its value for systems that do not carry their own."""

RENDER_KEYS = (
    "stellar_mass",
    "accretion_rate",
    "disk_radius",
    "disk_mass",
    "luminosity",
    "disk_scale_height",
    "cavity_angle",
)
"""The physical parameters :func:`render` needs for every system (the nuisance ones are optional)."""

ENVELOPE_LAWS = ("collapse", "power_law")
OUT_OF_FAMILY_DEFAULTS = {"envelope_law": "collapse", "envelope_power_index": 2.0, "external_temperature_k": 0.0}
"""The out-of-family physics' settings (:mod:`protolib.out_of_family`) at the bank's own physics: left out of stored
settings."""
ARCSEC_RAD = math.pi / (180.0 * 3600.0)
MAX_FIELD_OF_VIEW_AU = 1e6  # a larger field is a unit mistake (and overflows single precision in the renderer)
JANSKY_CGS = 1e-23
COMPILE_SETTINGS = ("auto", "true", "false")
COMPILE_FROM_IMAGES = 50_000
"""``compile: auto`` compiles the renderer's kernels for banks of this many images or more (benchmarks/README.md:
a process's compilation, from torch's on-disk cache, costs what a few thousand images take to render)."""
# more frequencies than an interferometer's receivers give is a mistake (and each costs a radiative transfer)
MAX_BANDS = 16


@dataclass
class SimulatorConfig:
    """How images are rendered. Every field can be set from a YAML config or the command line."""

    image_size: int = 64  # pixels per side of the bank images
    field_of_view_au: float = 1000.0  # side of the image, in au
    # observing frequency (230 GHz = 1.3 mm); with frequencies_ghz, the band nearest it (the reference band)
    frequency_ghz: float = 230.0
    # several bands at once, increasing [GHz], e.g. [100, 230, 345]; null: one band
    frequencies_ghz: list[float] | None = None
    # The nuisance physics: the values for systems that do not draw their own (prior.nuisance: fixed).
    opacity_beta: float = 1.0  # dust opacity index, kappa ~ nu^beta (Beckwith et al. 1990)
    # dust opacity at 230 GHz [cm^2 per g of gas]: Beckwith et al.'s 0.1 (nu/1000 GHz)^beta
    opacity_230ghz: float = 0.023
    temperature_1lsun_k: float = 38.0  # dust temperature at 100 au for 1 Lsun [K], T ~ L^0.2 (Motte & Andre 2001)
    temperature_index: float = 0.4  # radial index q of the temperature law, T ~ r^-q (Motte & Andre 2001)
    midplane_temperature_ratio: float = 1.0  # disk midplane over surface-layer temperature (1: vertically isothermal)
    envelope_outer_radius_au: float = 5000.0  # envelope extent [au]
    # envelope_mass counts the envelope within this radius of the star, or its outer radius if smaller [au]
    envelope_mass_radius_au: float = 5000.0
    cavity_contrast: float = 1e-3  # density inside the outflow cavities relative to the envelope
    cavity_wall_exponent: float = 1.0  # cavity wall z ~ R^b: 1 a cone, 1.5-2 a curved wall (Whitney et al. 2003)
    # where the cavity's half-opening angle is measured [au] (a cone: everywhere)
    cavity_reference_radius_au: float = 1000.0
    # Physics outside the bank's family, for test sets only (chapter 06b, benchmarks/out_of_family.py): no bank uses
    # them.
    # "collapse": the rotating infall (Ulrich 1976); "power_law": a static rho ~ r^-index
    envelope_law: str = "collapse"
    envelope_power_index: float = 2.0  # the power-law envelope's index (2: the singular isothermal sphere, Shu 1977)
    # external heating: T = (T_law^4 + T_ext^4)^(1/4) (0: none; the ISRF gives 10-20 K)
    external_temperature_k: float = 0.0
    disk_gamma: float = 1.0  # surface density power-law index, Sigma ~ R^-gamma
    disk_taper: float = 1.0  # outer taper exp[-(R/R_c)^taper] (1 = 2 - gamma: the self-similar disk for gamma = 1)
    inner_radius_au: float = 1.0  # dust sublimation radius [au]: no dust inside
    disk_flaring: float = 0.25  # H ~ R^(1 + flaring)
    disk_extent: float = 6.0  # the disk is followed out to this many disk radii
    envelope_samples: int = 32  # line-of-sight samples for the envelope
    disk_samples: int = 24  # line-of-sight samples through the disk
    oversample: int = 1  # rays per pixel along each axis (pixel-averaged intensity)
    # rays x line-of-sight samples per batch: ~1 MB arrays that stay in a CPU core's cache (a GPU wants ~5e7)
    batch_elements: int = 250_000
    # fused kernels (torch.compile) on the CPU: "true", "false", or "auto": for banks of COMPILE_FROM_IMAGES images
    # or more
    compile: str | bool = "auto"

    def __post_init__(self):
        self._check_image_and_physics()
        self._check_out_of_family()
        self._check_sampling()
        if self.frequencies_ghz is not None:
            self._settle_bands()

    def _check_image_and_physics(self) -> None:
        """Refuse an image size outside 8-4096 pixels, a physical setting that is not a positive number, and a field
        larger than :data:`MAX_FIELD_OF_VIEW_AU`."""
        if not (isinstance(self.image_size, int) and 8 <= self.image_size <= 4096):
            raise ProtolibInputError(
                f"The image size must be at least 8 pixels a side (the networks halve it several times) "
                f"and at most 4096, got {self.image_size}."
            )
        for name in (
            "field_of_view_au",
            "frequency_ghz",
            "envelope_outer_radius_au",
            "inner_radius_au",
            "opacity_230ghz",
            "temperature_1lsun_k",
            "midplane_temperature_ratio",
            "cavity_contrast",
            "cavity_wall_exponent",
            "cavity_reference_radius_au",
            "disk_taper",
            "envelope_mass_radius_au",
        ):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ProtolibInputError(f"The simulator's {name} must be a positive number, got {value!r}.")
        if self.field_of_view_au > MAX_FIELD_OF_VIEW_AU:
            raise ProtolibInputError(
                f"The simulator's field_of_view_au must be at most {MAX_FIELD_OF_VIEW_AU:g} au (5 pc, beyond any "
                f"protostar's envelope), got {self.field_of_view_au:g}."
            )

    def _check_out_of_family(self) -> None:
        """Refuse an envelope law that is not one of :data:`ENVELOPE_LAWS`, a power-law index outside (0, 3) and an
        external temperature outside 0-100 K."""
        if self.envelope_law not in ENVELOPE_LAWS:
            raise ProtolibInputError(
                f"The simulator's envelope_law must be one of {list(ENVELOPE_LAWS)}, got {self.envelope_law!r}."
            )
        if not (0.0 < self.envelope_power_index < 3.0) or not (0.0 <= self.external_temperature_k <= 100.0):
            raise ProtolibInputError(
                f"The simulator's envelope_power_index must lie in (0, 3) (a finite mass) and its "
                f"external_temperature_k in [0, 100] K, got {self.envelope_power_index} and "
                f"{self.external_temperature_k}."
            )

    def _check_sampling(self) -> None:
        """Make ``compile`` one of :data:`COMPILE_SETTINGS` (YAML's true and false as words) and refuse fewer than one
        line-of-sight sample or ray per pixel."""
        if isinstance(self.compile, bool):  # YAML's and --set's true and false
            self.compile = "true" if self.compile else "false"
        if self.compile not in COMPILE_SETTINGS:
            raise ProtolibInputError(
                f"The simulator's compile must be one of {list(COMPILE_SETTINGS)}, got {self.compile!r}."
            )
        if self.envelope_samples < 1 or self.disk_samples < 1 or self.oversample < 1:
            raise ProtolibInputError(
                "The simulator's envelope_samples, disk_samples and oversample must be at least 1."
            )

    def _settle_bands(self) -> None:
        """Check ``frequencies_ghz`` and make the settings canonical: one band is ``frequency_ghz`` alone (a one-band
        bank then is the same file however it was asked for), and with several ``frequency_ghz`` is the band nearest
        it."""
        bands = self.frequencies_ghz
        if (
            not isinstance(bands, (list, tuple))
            or not 1 <= len(bands) <= MAX_BANDS
            or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in bands
            )
        ):
            raise ProtolibInputError(
                f"The simulator's frequencies_ghz must be a list of 1 to {MAX_BANDS} positive frequencies in GHz, "
                f"e.g. [100, 230, 345], got {bands!r}."
            )
        if any(b <= a for a, b in zip(bands, bands[1:])):
            raise ProtolibInputError(
                f"The simulator's frequencies_ghz must increase, each band once, got {list(bands)}; "
                "write them in increasing order."
            )
        bands = [float(v) for v in bands]
        self.frequency_ghz = min(bands, key=lambda v: abs(math.log(v / self.frequency_ghz)))
        self.frequencies_ghz = bands if len(bands) > 1 else None

    @property
    def bands_ghz(self) -> tuple[float, ...]:
        """The frequencies rendered [GHz], increasing: ``frequencies_ghz``, or ``frequency_ghz`` alone."""
        return tuple(self.frequencies_ghz) if self.frequencies_ghz else (float(self.frequency_ghz),)

    @property
    def reference_band(self) -> int:
        """The index in :attr:`bands_ghz` of ``frequency_ghz``: the band a one-band reader of a multi-band bank sees."""
        return self.bands_ghz.index(float(self.frequency_ghz))

    def to_dict(self) -> dict:
        """The configuration as plain data (stored in banks and checkpoints).

        ``frequencies_ghz`` is left out for one band, and the out-of-family test physics
        (:data:`OUT_OF_FAMILY_DEFAULTS`) where it is the bank's own, so that a bank records its settings
        as before those existed, and a bank made then is still recognised as current.
        """
        values = asdict(self)
        if values["frequencies_ghz"] is None:
            del values["frequencies_ghz"]
        for name, default in OUT_OF_FAMILY_DEFAULTS.items():
            if values[name] == default:
                del values[name]
        del values["compile"]  # how the images are computed, not what they are (they agree to float rounding)
        return values

    def nuisance_values(self) -> dict[str, float]:
        """The fixed nuisance physics as per-system parameters: name (:data:`NUISANCE_FIELDS`) -> value."""
        return {name: float(getattr(self, field)) for name, field in NUISANCE_FIELDS.items()}

    @property
    def pixel_size_au(self) -> float:
        """Side of one pixel in au."""
        return self.field_of_view_au / self.image_size


def pixel_offsets_au(image_size: int, field_of_view_au: float) -> np.ndarray:
    """Pixel-centre offsets from the image centre along one axis [au], ``(image_size,)``."""
    pixel = field_of_view_au / image_size
    return (np.arange(image_size) - (image_size - 1) / 2.0) * pixel


def _asinh(x: torch.Tensor) -> torch.Tensor:
    """``asinh`` through ``log`` and ``sqrt``, several times faster than ``torch.asinh`` on CPUs."""
    return torch.copysign(torch.log(x.abs() + torch.sqrt(x * x + 1.0)), x)


def _sinh_samples(centre, scale, lower, upper, n):
    """``n`` samples on ``[lower, upper]`` equally spaced in ``u = asinh((s - centre) / scale)``.

    Returns the positions ``s`` and weights ``ds`` (``(..., n)``), and ``u_lower``, ``du`` so that
    other positions can be located among the samples without a search (:func:`_samples_below`).
    """
    u_lo = _asinh((lower - centre) / scale)
    u_hi = _asinh((upper - centre) / scale)
    fraction = (torch.arange(n, dtype=centre.dtype, device=centre.device) + 0.5) / n
    du = (u_hi - u_lo) / n
    u = u_lo.unsqueeze(-1) + fraction * (u_hi - u_lo).unsqueeze(-1)
    grow = torch.exp(u)
    s = centre.unsqueeze(-1) + scale.unsqueeze(-1) * (0.5 * (grow - 1.0 / grow))  # sinh(u)
    ds = scale.unsqueeze(-1) * (0.5 * (grow + 1.0 / grow)) * du.unsqueeze(-1)  # cosh(u) du
    return s, ds, u_lo, du


def _disk_window(q, p2, sin_i, cos_i, disk_radius, scale_height, outer_radius, config):
    """The depth interval where a ray can meet the disk, its midplane crossing and sampling scale."""
    r_max = config.disk_extent * disk_radius
    z_max = 4.0 * physics.disk_scale_height(r_max, scale_height, config.disk_flaring)
    cos_safe = cos_i.clamp(min=1e-6)
    # Slab |Z| < z_max, with Z = q sin i + s cos i.
    lo = (-z_max - q * sin_i) / cos_safe
    hi = (z_max - q * sin_i) / cos_safe
    # Cylinder R < r_max: A s^2 + B s + C < 0.
    a = sin_i**2
    b = -2.0 * q * sin_i * cos_i
    c = p2 - (q * sin_i) ** 2 - r_max**2
    disc = b**2 - 4.0 * a * c
    a_safe = a.clamp(min=1e-12)
    sqrt_disc = disc.clamp(min=0.0).sqrt()
    cyl_lo = torch.where(a > 1e-12, (-b - sqrt_disc) / (2.0 * a_safe), torch.full_like(q, -1e30))
    cyl_hi = torch.where(a > 1e-12, (-b + sqrt_disc) / (2.0 * a_safe), torch.full_like(q, 1e30))
    hits_cylinder = torch.where(a > 1e-12, disc > 0, c < 0)
    s_out = outer_radius.expand_as(lo)
    lo = torch.maximum(torch.maximum(lo, cyl_lo), -s_out)
    hi = torch.minimum(torch.minimum(hi, cyl_hi), s_out)
    valid = hits_cylinder & (hi > lo)
    hi = torch.where(valid, hi, lo + 1.0)
    crossing = (-q * sin_i / cos_safe).clamp(min=-1e30, max=1e30)
    centre = torch.minimum(torch.maximum(crossing, lo), hi)
    radius_at_centre = (p2 + centre**2 - (q * sin_i + centre * cos_i) ** 2).clamp(min=0.0).sqrt()
    height = physics.disk_scale_height(
        radius_at_centre.clamp(min=config.inner_radius_au), scale_height, config.disk_flaring
    )
    scale = torch.minimum((height / cos_safe), hi - lo).clamp(min=1e-3)
    return lo, hi, centre, scale, valid


def render(
    systems: dict[str, torch.Tensor],
    inclination_deg: torch.Tensor,
    position_angle_deg: torch.Tensor,
    config: SimulatorConfig,
    distance_pc: float,
) -> torch.Tensor:
    """Render clean (no beam, no noise) images of a batch of systems, in Jy per pixel, in every band of ``config``.

    The geometry (rays, samples, densities, temperatures) is computed once per system; only the
    opacity and the Planck function, and the radiative transfer, are repeated per band.

    Arguments:
        systems: per-image physical parameters, each ``(B,)``: ``stellar_mass`` [Msun],
            ``accretion_rate`` [Msun/yr], ``disk_radius`` [au], ``disk_mass`` [Msun],
            ``luminosity`` [Lsun], ``disk_scale_height`` [au], ``cavity_angle`` [deg]; and optionally
            the nuisance physics of :data:`NUISANCE_FIELDS` (``opacity_beta``, ``disk_gamma``, ...),
            each ``(B,)``, where a name is missing the configuration's value.
        inclination_deg: ``(B,)``, 0 face-on, 90 edge-on.
        position_angle_deg: ``(B,)``, of the disk's major axis, east of north.
        config: image size, field of view, sampling and band(s).
        distance_pc: distance to the source; sets the flux per pixel.

    Returns:
        ``(B, image_size, image_size)`` float32 tensor in Jy/pixel for one band, rows to the north,
        columns to the west; ``(B, n_bands, image_size, image_size)`` for several (``config.bands_ghz``).
    """
    device = inclination_deg.device
    dtype = torch.float32
    n_sub = config.image_size * config.oversample
    offsets = torch.as_tensor(pixel_offsets_au(n_sub, config.field_of_view_au), dtype=dtype, device=device)
    north = offsets[:, None].expand(n_sub, n_sub).reshape(-1)
    east = -offsets[None, :].expand(n_sub, n_sub).reshape(-1)
    systems = _with_nuisance(systems, config, inclination_deg.shape[0], device)
    compiled = config.compile == "true" and device.type == "cpu" and _KERNELS["available"]
    try:
        intensity = _intensity(systems, inclination_deg, position_angle_deg, (east, north), config, compiled)
    except (
        Exception
    ) as error:  # a compiler that fails (none installed, an unsupported platform): the eager kernels instead
        if not compiled:
            raise
        _stop_compiling(error)
        intensity = _intensity(systems, inclination_deg, position_angle_deg, (east, north), config, False)
    n_images, n_bands = inclination_deg.shape[0], len(config.bands_ghz)
    intensity = intensity.reshape(n_images, n_bands, n_sub, n_sub)
    if config.oversample > 1:
        intensity = F.avg_pool2d(intensity, config.oversample)
    pixel_arcsec = config.pixel_size_au / distance_pc
    pixel_sr = (pixel_arcsec * ARCSEC_RAD) ** 2
    return (intensity[:, 0] if n_bands == 1 else intensity) * pixel_sr


_KERNELS = {"available": True, "active": threading.local(), "compiled": {}}
"""The renderer's kernels: whether torch.compile works in this process, whether :func:`render` now runs the
compiled kernels in this thread (``config.compile``), and the compiled functions, compiled on first use."""


def _fused(function):
    """``function`` (a pure elementwise chain) compiled while :func:`render` runs compiled kernels, else as it is.

    ``dynamic=True``: the numbers of images, rays and rays meeting the disk vary from call to call and must
    not recompile. torch keeps what it compiles on disk (``TORCHINDUCTOR_CACHE_DIR``, by default under the
    temporary folder), so that a later process compiles from the cache in seconds.
    """
    if not getattr(_KERNELS["active"], "on", False):
        return function
    if function not in _KERNELS["compiled"]:
        _KERNELS["compiled"][function] = torch.compile(function, dynamic=True)
    return _KERNELS["compiled"][function]


def _stop_compiling(error: Exception) -> None:
    """Render with the eager kernels from now on in this process, saying why once."""
    import warnings

    _KERNELS["available"] = False
    warnings.warn(
        f"torch.compile failed ({type(error).__name__}: {str(error)[:300]}); rendering with the eager kernels "
        "(set simulator.compile: false to skip trying).",
        RuntimeWarning,
        stacklevel=3,
    )


def _intensity(systems, inclination_deg, position_angle_deg, offsets, config, compiled: bool) -> torch.Tensor:
    """Specific intensity [Jy/sr] of every ray of every image and band, ``(B, n_bands, rays)``; ``compiled``:
    with the compiled kernels (:func:`_fused`)."""
    device, dtype = inclination_deg.device, torch.float32
    east, north = offsets
    n_images, n_rays, n_bands = inclination_deg.shape[0], north.numel(), len(config.bands_ghz)
    # Ray n_rays - 1 - k passes through the point opposite ray k (pixel offsets are symmetric about the
    # centre): the first half of the rays, rendered in both directions, make the whole image.
    half = (n_rays + 1) // 2
    rays_per_batch = max(1, config.batch_elements // (config.envelope_samples + config.disk_samples))
    images_per_batch = max(1, rays_per_batch // half)
    rays_per_batch = min(half, rays_per_batch)
    intensity = torch.empty(n_images, n_bands, n_rays, dtype=dtype, device=device)
    systems = {k: v.to(device=device, dtype=dtype) for k, v in systems.items()}  # once, not per batch
    inclination_deg, position_angle_deg = inclination_deg.to(dtype), position_angle_deg.to(dtype)
    _KERNELS["active"].on = compiled
    try:
        for start in range(0, n_images, images_per_batch):
            sl = slice(start, start + images_per_batch)
            chunk = {k: v[sl] for k, v in systems.items()}
            angles = inclination_deg[sl], position_angle_deg[sl]
            for first in range(0, half, rays_per_batch):
                rays = slice(first, min(half, first + rays_per_batch))
                mirrored = torch.arange(first, min(rays.stop, n_rays // 2), device=device)
                for band, (near, far) in enumerate(_render_rays(chunk, *angles, east[rays], north[rays], config)):
                    intensity[sl, band, rays] = near
                    intensity[sl, band, n_rays - 1 - mirrored] = far[:, : mirrored.numel()]
    finally:
        _KERNELS["active"].on = False
    return intensity


def settle_compile(config: SimulatorConfig, n_images: int, device: torch.device | str | None = None) -> SimulatorConfig:
    """``config`` with its ``compile`` setting settled for rendering ``n_images`` images on ``device`` at once:
    ``"auto"`` becomes ``"true"`` on a CPU from :data:`COMPILE_FROM_IMAGES` images, else ``"false"``.

    A bank settles it once, for all its images, so that the same settings give the same bank whatever
    the number of worker processes (the compiled kernels agree with the eager ones to float rounding only).
    """
    from dataclasses import replace

    on_cpu = device is None or torch.device(device).type == "cpu"
    wanted = config.compile == "true" or (config.compile == "auto" and n_images >= COMPILE_FROM_IMAGES)
    return replace(config, compile="true" if wanted and on_cpu else "false")


def _with_nuisance(systems: dict, config: SimulatorConfig, n: int, device, needed=RENDER_KEYS) -> dict:
    """``systems`` with every nuisance parameter it lacks set to the configuration's value, ``(n,)`` each."""
    missing = [k for k in needed if k not in systems]
    if missing:
        raise ProtolibInputError(f"render() needs the parameters {missing} of every system (it has {sorted(systems)}).")
    filled = {k: torch.as_tensor(v) for k, v in systems.items()}
    for name, value in config.nuisance_values().items():
        if name not in filled:
            filled[name] = torch.full((n,), value, dtype=torch.float64, device=device)
    return filled


@functools.lru_cache(maxsize=8)
def _envelope_shape_table(device: torch.device) -> torch.Tensor:
    """:func:`physics.envelope_shape` tabulated on ``log10(r/Rc)`` x ``|mu|``, ``(1, 1, n_mu, n_x)``."""
    log_x = torch.linspace(_TABLE_LOG_X[0], _TABLE_LOG_X[1], _TABLE_SIZE[1], dtype=torch.float64)
    mu = torch.linspace(0.0, 1.0, _TABLE_SIZE[0], dtype=torch.float64)
    table = physics.envelope_shape(10.0 ** log_x[None, :], mu[:, None])
    return table.to(device=device, dtype=torch.float32)[None, None]


_TABLE_LOG_X = (-4.0, 4.0)
_TABLE_SIZE = (513, 2049)


def _envelope_shape(geometry, param, config) -> torch.Tensor:
    """The envelope's density over the spherical infall's ``r^-1.5`` law at a sample set: bilinear
    interpolation in the envelope-shape table at ``geometry["grid"]`` (:func:`_set_geometry`), or the
    out-of-family power law's ``norm * r^(1.5 - p)`` (:class:`SimulatorConfig`)."""
    if "power_law_norm" in param:  # an out-of-family test set's static envelope: no rotation, rho ~ r^-p
        return param["power_law_norm"] * torch.exp((1.5 - config.envelope_power_index) * geometry["log_r"])
    grid = geometry["grid"]
    table = _envelope_shape_table(grid.device)
    values = F.grid_sample(table, grid.reshape(1, 1, -1, 2), mode="bilinear", padding_mode="border", align_corners=True)
    return values.reshape(grid.shape[:-1])


def _set_geometry(ray, s, param, config) -> dict:
    """A sample set's geometry (:func:`_geometry`) at the positions ``s`` along the rays ``(q, p2, sin i,
    cos i)``, with the height ``z`` above the midplane and, for the collapse's envelope, the coordinates
    ``grid`` of the shape table (:func:`_envelope_shape`). A fused kernel (:func:`_fused`)."""
    q, p2, sin_i, cos_i = ray
    z = q.unsqueeze(-1) * sin_i + s * cos_i
    geometry = _geometry(p2.unsqueeze(-1) + s * s, z, param, config)
    geometry["z"] = z
    if "power_law_norm" not in param:
        log10_x = geometry["log_r"] * (1.0 / math.log(10.0)) - torch.log10(param["disk_radius"])
        gx = (log10_x - _TABLE_LOG_X[0]) * (2.0 / (_TABLE_LOG_X[1] - _TABLE_LOG_X[0])) - 1.0
        gy = (z.abs() / geometry["r"]).clamp(max=1.0) * 2.0 - 1.0  # |mu|
        geometry["grid"] = torch.stack([gx, gy], dim=-1)
    return geometry


def _geometry(r2, z, param, config) -> dict:
    """What the terms of one sample set share at samples of squared distance ``r2`` from the star and
    height ``z`` above the midplane, computed once: the distance ``r`` and its logarithm, the cylindrical
    radius, the disk's scale height there, whether the sample lies in the disk region (0 or 1), and the
    disk's vertical profile ``exp(-z^2 / 2 H^2)``."""
    r = r2.sqrt()
    cylindrical = (r2 - z * z).clamp(min=0.0).sqrt()
    height = physics.disk_scale_height(
        cylindrical.clamp(min=config.inner_radius_au), param["disk_scale_height"], config.disk_flaring
    )
    z_over_height = z / height
    return {
        "r": r,
        "log_r": torch.log(r.clamp(min=1e-3)),
        "cylindrical": cylindrical,
        "height": height,
        "within": (cylindrical < config.disk_extent * param["disk_radius"]).to(z.dtype),
        "vertical": torch.exp(-0.5 * z_over_height * z_over_height),
    }


def _temperature(param, geometry):
    """Dust temperature [K] at the samples: :func:`physics.dust_temperature`'s law of each system (from
    ``log_temperature_100au``, the logarithm of its temperature at 100 au), times the disk's vertical
    structure (:func:`physics.disk_temperature_factor`) inside the disk region, where ``param`` holds a
    ``midplane_temperature_ratio`` (:func:`_render_rays` leaves it out where every system's is 1)."""
    temperature = torch.exp(
        param["log_temperature_100au"] - param["temperature_index"] * (geometry["log_r"] - math.log(100.0))
    )
    if "midplane_temperature_ratio" in param:
        factor = physics.disk_temperature_factor(geometry["z"], geometry["height"], param["midplane_temperature_ratio"])
        temperature = temperature * (1.0 + (factor - 1.0) * geometry["within"])
    if "external_temperature_k" in param:  # an out-of-family test set's external heating (SimulatorConfig)
        temperature = (temperature**4 + param["external_temperature_k"] ** 4) ** 0.25
    return temperature.clamp(10.0, 1500.0)


def _power_law_norm(outer_radius_au: torch.Tensor, config: SimulatorConfig) -> torch.Tensor:
    """The factor that gives a static ``rho ~ r^-p`` envelope (``config.envelope_power_index``) the mass
    of the collapse's spherical ``r^-1.5`` law within :func:`envelope_mass`'s aperture, written as
    ``norm * r^(1.5 - p)`` times the collapse's ``r^-1.5``: the two envelopes then hold about the same
    mass where the bank measures it, and differ in how it is spread (an out-of-family test's point)."""
    p = config.envelope_power_index
    outer = outer_radius_au.clamp(max=config.envelope_mass_radius_au)
    inner = config.inner_radius_au
    collapse = (outer**1.5 - inner**1.5) / 1.5
    power_law = (outer ** (3.0 - p) - inner ** (3.0 - p)) / (3.0 - p)
    return collapse / power_law


def _envelope_column(ds, shape, geometry, param, config):
    """Envelope density times path length at the samples [g cm^-3 au], with ``shape`` from
    :func:`_envelope_shape`; ``param`` holds each system's ``envelope_density_1au``, the density of a
    spherical infall at 1 au."""
    r, z = geometry["r"], geometry["z"]
    inside = ((r >= config.inner_radius_au) & (r <= param["envelope_outer_radius"])).to(r.dtype)
    in_cavity = physics.in_cavity(
        geometry["cylindrical"],
        z,
        param["cavity_angle"],
        param["cavity_wall_exponent"],
        config.cavity_reference_radius_au,
    )
    # 0 outside the envelope, the contrast in a cavity
    present = torch.where(in_cavity, param["cavity_contrast"] * inside, inside)
    return param["envelope_density_1au"] * torch.exp(-1.5 * geometry["log_r"]) * shape * present * ds  # r^-1.5


def _midplane_window(geometry):
    """Smooth weight, one in the disk's midplane and zero above it or beyond the disk region.

    It splits the envelope's density between the two sample sets: ``window`` on the disk samples,
    which resolve the midplane, and ``1 - window`` on the envelope samples. The sum is exact.
    """
    return geometry["vertical"] * geometry["within"]


def _render_rays(systems, inclination_deg, position_angle_deg, east, north, config):
    """Specific intensity [Jy/sr] along each ray and along its mirror image through the star, ``(B, R)`` each,
    one such pair per band of ``config``.

    The model is unchanged by inversion through the star (its axisymmetry and the mirror symmetry of its
    midplane together), so the ray through the sky offset ``-p`` meets the density and temperature of the
    ray through ``p`` at the same samples, in the opposite order: the physics is evaluated once for the
    pair and only the radiative transfer (:func:`_transfer`) runs in each direction. The geometry is the
    same in every band: only the opacity and the Planck function differ (:func:`_in_band`).
    """
    incl = torch.deg2rad(inclination_deg)[:, None, None]
    pa = torch.deg2rad(position_angle_deg)[:, None, None]
    sin_i, cos_i = torch.sin(incl), torch.cos(incl)
    param = {k: v[:, None, None] for k, v in systems.items()}
    # Sky offset along the disk's minor axis; the rotation axis is n = cos i (line of sight) + sin i (minor axis).
    q = -torch.cos(pa[..., 0]) * east + torch.sin(pa[..., 0]) * north  # (B, R)
    p2 = (east**2 + north**2)[None, :]  # (1, R)
    mdot_g_s = param["accretion_rate"] * (physics.MSUN_G / physics.YEAR_S)
    # rho0 = Mdot / (4 pi sqrt(G M r^3)) at r = 1 au, then scaled by r^-1.5 (r in au).
    param["envelope_density_1au"] = (
        mdot_g_s
        / (4.0 * math.pi)
        * torch.rsqrt(physics.G_CGS * physics.MSUN_G * param["stellar_mass"])
        * physics.AU_CM**-1.5
    )
    param["log_temperature_100au"] = torch.log(param["temperature_1lsun"] * param["luminosity"].pow(0.2))
    if config.external_temperature_k > 0:
        param["external_temperature_k"] = torch.full_like(param["luminosity"], config.external_temperature_k)
    if config.envelope_law == "power_law":
        param["power_law_norm"] = _power_law_norm(param["envelope_outer_radius"], config)
    if not bool((param["midplane_temperature_ratio"] != 1.0).any()):
        del param["midplane_temperature_ratio"]  # vertically isothermal disks (_temperature)
    ray = (q, p2, sin_i, cos_i)
    envelope, disk = _envelope_samples(ray, param, config), _disk_samples(ray, param, config)
    meeting = disk[4]
    below = (
        _fused(_samples_below)(envelope[0], disk[3], disk[0].shape[-1]),
        _fused(_samples_below)(disk[0], tuple(meeting.meeting(v) for v in envelope[3]), envelope[0].shape[-1]),
    )
    results = []
    for frequency_ghz in config.bands_ghz:
        kappa_au = physics.dust_opacity(frequency_ghz, param["opacity_beta"], param["opacity_230ghz"]) * physics.AU_CM
        results.append(
            _transfer(
                _in_band(envelope, kappa_au, frequency_ghz), _in_band(disk, kappa_au, frequency_ghz), below, meeting
            )
        )
    return results


def _in_band(samples, kappa_au, frequency_ghz):
    """A sample set (:func:`_envelope_samples`, :func:`_disk_samples`) in one band: ``(s, dtau, source, spacing)``.

    ``dtau = kappa_nu x column`` and the source ``B_nu(T)`` [Jy/sr], on the rays that meet the set (the
    disk's: ``(1, M, n)``, :class:`_MeetingRays`; the envelope's: every ray).
    """
    s, column, temperature, spacing, where = samples
    dtau, source = _fused(_band_terms)(column, temperature, where.kappa(kappa_au), frequency_ghz)
    return s, dtau, source, spacing


def _band_terms(column, temperature, kappa_au, frequency_ghz: float):
    """``dtau = kappa_nu x column`` and the source ``B_nu(T)`` [Jy/sr]: a fused kernel (:func:`_fused`)."""
    return kappa_au * column, physics.planck_intensity(temperature, frequency_ghz) / JANSKY_CGS


class _AllRays:
    """The ``where`` of a sample set that every ray meets (the envelope's): nothing to select or scatter."""

    @staticmethod
    def kappa(kappa_au):
        return kappa_au

    def __call__(self, x):
        return x


def _envelope_samples(ray, param, config):
    """The envelope's sample set along each ray: sinh-spaced about the closest approach to the star, out to
    each system's outer radius. Returns ``(s, column, temperature, spacing, where)``, the band-free parts
    of a set (:func:`_in_band`)."""
    q, p2, sin_i, cos_i = ray
    r_out = param["envelope_outer_radius"][..., 0]  # (B, 1)
    s_max = (r_out**2 - p2).clamp(min=1.0).sqrt()  # (B, R)
    impact = p2.sqrt().clamp(min=config.inner_radius_au)
    # (B, R, Ne)
    s, ds, u_lo, du = _fused(_sinh_samples)(torch.zeros_like(impact), impact, -s_max, s_max, config.envelope_samples)
    geometry = _fused(_set_geometry)(ray, s, param, config)
    column, temperature = _fused(_envelope_terms)(ds, _envelope_shape(geometry, param, config), geometry, param, config)
    spacing = (torch.zeros_like(u_lo), impact.expand_as(u_lo), u_lo, du)
    return s, column, temperature, spacing, _AllRays()


def _envelope_terms(ds, shape, geometry, param, config):
    """The envelope set's column (less the part the disk set's samples hold, :func:`_midplane_window`) and
    temperature: a fused kernel (:func:`_fused`)."""
    column = _envelope_column(ds, shape, geometry, param, config) * (1.0 - _midplane_window(geometry))
    return column, _temperature(param, geometry)


class _MeetingRays:
    """The ``where`` of the disk's sample set: computed on the ``M`` rays that meet the disk's region,
    ``(1, M, ...)``, and given back on every ray, ``(B, R, ...)``, zero where a ray misses it."""

    def __init__(self, valid: torch.Tensor):
        self.valid = valid
        self.image, self.index = valid.nonzero(as_tuple=True)  # (M,) each

    def meeting(self, x):
        """``(B or 1, R or 1, ...)`` -> ``(1, M, ...)``: the values of the rays that meet the disk."""
        return x.expand(*self.valid.shape, *x.shape[2:])[self.image, self.index].unsqueeze(0)

    def kappa(self, kappa_au):
        return self.meeting(kappa_au)

    def meeting_images(self, values: dict) -> dict:
        """Per-image values, ``(B, 1, 1)`` each, on the rays that meet the disk, ``(1, M, 1)`` each: gathered in one
        lookup (a few dozen small torch operations fewer per batch than one :meth:`meeting` each)."""
        picked = torch.stack([v.reshape(-1) for v in values.values()])[:, self.image]  # (names, M), rows contiguous
        return {name: row.reshape(1, -1, 1) for name, row in zip(values, picked)}

    def __call__(self, x, fill=0.0):
        """``(1, M, ...)`` -> ``(B, R, ...)``, ``fill`` where a ray misses the disk."""
        whole = torch.full((*self.valid.shape, *x.shape[2:]), fill, dtype=x.dtype, device=x.device)
        whole[self.image, self.index] = x[0]
        return whole


def _disk_samples(ray, param, config):
    """The disk's sample set along each ray: sinh-spaced about the midplane crossing, inside the disk's
    bounding region, holding the disk and the envelope's midplane (where its centrifugal-barrier sheet
    lies). Returns ``(s, column, temperature, spacing, where)``, the band-free parts of a set (:func:`_in_band`).

    Only the rays that meet the disk's region are sampled (often under half of them): ``column`` and
    ``temperature`` are theirs, ``(1, M, Nd)``; the others get an empty set (``dtau = 0``) from ``where``.
    """
    q, p2, sin_i, cos_i = ray
    lo, hi, centre, scale, valid = _disk_window(
        q,
        p2,
        sin_i[..., 0],
        cos_i[..., 0],
        param["disk_radius"][..., 0],
        param["disk_scale_height"][..., 0],
        param["envelope_outer_radius"][..., 0],
        config,
    )
    where = _MeetingRays(valid)
    meeting = where.meeting
    # (1, M, Nd)
    s, ds, u_lo, du = _fused(_sinh_samples)(
        meeting(centre), meeting(scale), meeting(lo), meeting(hi), config.disk_samples
    )
    param = where.meeting_images(param)
    geometry = _fused(_set_geometry)(tuple(meeting(v) for v in ray), s, param, config)
    column, temperature = _fused(_disk_terms)(ds, _envelope_shape(geometry, param, config), geometry, param, config)
    return s, column, temperature, (centre, scale, where(u_lo), where(du, 1.0)), where


def _disk_terms(ds, shape, geometry, param, config):
    """The disk set's column (the disk and the envelope near the midplane, :func:`_midplane_window`) and
    temperature: a fused kernel (:func:`_fused`)."""
    sigma = physics.disk_surface_density(
        geometry["cylindrical"],
        disk_mass_msun=param["disk_mass"],
        disk_radius_au=param["disk_radius"],
        gamma=param["disk_gamma"],
        inner_radius_au=config.inner_radius_au,
        taper=param["disk_taper"],
    )
    # physics.disk_density
    rho = sigma * geometry["vertical"] / (geometry["height"] * (math.sqrt(2.0 * math.pi) * physics.AU_CM))
    column = rho * ds + _envelope_column(ds, shape, geometry, param, config) * _midplane_window(geometry)
    return column, _temperature(param, geometry)


def _transfer(envelope, disk, below, meeting):
    """Radiative transfer through two sample sets of each ray, merged in depth, seen from either end.

    Each set is ``(s, dtau, source, spacing)`` (:func:`_in_band`): the envelope's ``(B, R, n)`` on every
    ray, the disk's ``(1, M, n)`` on the ``M`` rays that meet it (``meeting``, :class:`_MeetingRays`: the
    other rays have no disk sample, so its transfer runs on those rays only). Every sample is dimmed by
    the optical depth nearer the observer: at larger ``s`` for the ray itself, at smaller ``s`` for its
    mirror image. ``below`` holds, for each set, how many samples of the other lie behind each of its own
    (:func:`_samples_below`, the disk's on its own rays): the same in every band, so found once.

    Returns:
        the specific intensity of the ray and of its mirror image, each ``(B, R)``.
    """
    (_, envelope_dtau, envelope_source, _), (_, disk_dtau, disk_source, _) = envelope, disk
    envelope_sums, disk_sums = _partial_sums(envelope_dtau), _partial_sums(disk_dtau)
    # the disk's depths on every ray (none on a ray that misses it), the envelope's on the disk's rays
    disk_depths = _depths_at(tuple(meeting(x) for x in disk_sums), below[0])
    envelope_depths = _depths_at(tuple(meeting.meeting(x) for x in envelope_sums), below[1])
    near, far = _fused(_emission)(envelope_dtau, envelope_source, envelope_sums, disk_depths)
    disk_near, disk_far = _fused(_emission)(disk_dtau, disk_source, disk_sums, envelope_depths)
    return near + meeting(disk_near), far + meeting(disk_far)


def _depths_at(sums, index):
    """The partial sums ``(in_front, behind)`` of one set (:func:`_partial_sums`) at the positions ``index`` of the
    other set's samples among its own (:func:`_samples_below`)."""
    in_front, behind = sums
    return (
        torch.gather(in_front.expand(*index.shape[:-1], -1), -1, index),
        torch.gather(behind.expand(*index.shape[:-1], -1), -1, index),
    )


def _emission(dtau, source, own_sums, other_depths):
    """What one sample set's samples add to the intensity of the ray and of its mirror image, each ``(B, R)``:
    each sample's emission dimmed by the depth in front of it, its own set's (``own_sums``, from
    :func:`_partial_sums`) and the other's (``other_depths``, toward the ray's end and its start). A fused
    kernel (:func:`_fused`)."""
    (in_front, behind), (other_front, other_back) = own_sums, other_depths
    emitted = source * -physics.expm1(-dtau)
    near = emitted * torch.exp(-(in_front[..., 1:] + other_front))
    far = emitted * torch.exp(-(behind[..., :-1] + other_back))
    return near.sum(-1), far.sum(-1)


def _partial_sums(dtau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``sum_{m >= k} dtau_m`` and ``sum_{m < k} dtau_m`` for ``k = 0 .. n``, each ``(..., n + 1)``.

    Entry ``k + 1`` of the first is the optical depth in front of sample ``k`` from its own set, entry
    ``k`` of the second the depth behind it; both are what :func:`_samples_below` positions of the other
    set are looked up in. Each is summed in its own direction, so that a small depth is never the
    difference of two large ones (optically thick disks).
    """
    zero = torch.zeros_like(dtau[..., :1])
    in_front = torch.cat([torch.flip(torch.cumsum(torch.flip(dtau, [-1]), -1), [-1]), zero], dim=-1)
    behind = torch.cat([zero, torch.cumsum(dtau, -1)], dim=-1)
    return in_front, behind


def _samples_below(s_query, spacing, n):
    """How many samples of a set spaced as by :func:`_sinh_samples` (``spacing`` its ``(centre, scale,
    u_lo, du)``, ``n`` samples) lie behind (smaller ``s`` than) each of ``s_query``; exact, without sorting
    the two sets together. ``(..., n_query)`` int64."""
    centre, scale, u_lo, du = spacing
    u = _asinh((s_query - centre.unsqueeze(-1)) / scale.unsqueeze(-1))
    position = (u - u_lo.unsqueeze(-1)) / du.clamp(min=1e-12).unsqueeze(-1) + 0.5
    return torch.nan_to_num(torch.floor(position), nan=0.0).clamp(0, n).long()


def envelope_mass(
    systems: dict[str, torch.Tensor], config: SimulatorConfig, n_radii: int = 400, n_angles: int = 200
) -> torch.Tensor:
    """Envelope mass [Msun] within ``config.envelope_mass_radius_au`` of the star (or the system's outer
    radius, when smaller), cavities included, ``(B,)``.

    A fixed radius, as observers quote envelope masses within an aperture: integrated to each
    system's outer radius instead (thousands of au beyond an interferometer's field, and drawn per
    system), the mass would be set by a radius no image of the inner envelope constrains. Integrates
    the envelope density on a grid logarithmic in radius and uniform in ``cos(theta)`` (midpoint
    rule; ``n_angles`` cells over one hemisphere, the other its mirror image), which converges to better than a per
    cent at the default resolution. Each system's own
    outer radius, cavity shape and contrast are used where it carries them.
    """
    device = systems["stellar_mass"].device
    dtype = torch.float64
    needed = ("stellar_mass", "accretion_rate", "disk_radius", "cavity_angle")
    systems = _with_nuisance(systems, config, systems["stellar_mass"].shape[0], device, needed)
    mu_mid = 1.0 - (torch.arange(n_angles, dtype=dtype, device=device) + 0.5) / n_angles
    dmu = 2.0 / n_angles  # both hemispheres: the density is even in mu (the midplane's mirror symmetry)
    masses = [
        _envelope_mass_of(systems, i, config, mu_mid, n_radii) * dmu / physics.MSUN_G
        for i in range(systems["stellar_mass"].shape[0])
    ]
    return torch.tensor(masses, dtype=torch.float64)


def _envelope_mass_of(systems: dict, i: int, config: SimulatorConfig, mu_mid: torch.Tensor, n_radii: int) -> float:
    """:func:`envelope_mass` of system ``i`` per unit of ``mu`` [g]: the density on the grid of radii, those
    within the centrifugal radius and those beyond it evaluated apart (each side needs one form of the Ulrich
    streamline's root, :func:`physics.ulrich_mu0`, where the whole grid would need all three)."""
    dtype, device = mu_mid.dtype, mu_mid.device
    outer = min(float(systems["envelope_outer_radius"][i]), config.envelope_mass_radius_au)
    log_r = torch.linspace(math.log(config.inner_radius_au), math.log(outer), n_radii + 1, dtype=dtype, device=device)
    r_mid = torch.exp(0.5 * (log_r[1:] + log_r[:-1]))
    dr = torch.exp(log_r[1:]) - torch.exp(log_r[:-1])
    centrifugal = systems["disk_radius"][i].to(dtype)
    within = int(((r_mid / centrifugal).clamp(min=1e-6) - 1.0 <= -1e-6).sum())  # r_mid increases
    rho = torch.cat(
        [
            physics.envelope_density(
                part[:, None],
                mu_mid[None, :],
                infall_rate_msun_yr=systems["accretion_rate"][i].to(dtype),
                stellar_mass_msun=systems["stellar_mass"][i].to(dtype),
                centrifugal_radius_au=centrifugal,
                cavity_half_angle_deg=systems["cavity_angle"][i].to(dtype),
                cavity_contrast=systems["cavity_contrast"][i].to(dtype),
                inner_radius_au=config.inner_radius_au,
                outer_radius_au=outer,
                cavity_wall_exponent=systems["cavity_wall_exponent"][i].to(dtype),
                cavity_reference_radius_au=config.cavity_reference_radius_au,
            )
            for part in (r_mid[:within], r_mid[within:])
            if part.numel()
        ]
    )
    volume = 2.0 * math.pi * (r_mid * physics.AU_CM) ** 2 * (dr * physics.AU_CM)
    # numpy's sum: the same bits whatever the number of torch threads (parallel banks rely on it).
    return float(np.sum((rho * volume[:, None]).cpu().numpy()))
