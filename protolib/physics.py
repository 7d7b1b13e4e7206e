"""Physical ingredients of the protostar model: envelope, disk, temperature and dust emission.

All functions work on ``torch`` tensors (any shape, broadcasting) so that whole batches of images
are evaluated at once on the CPU or a GPU. Lengths are in au unless a name says otherwise; densities
in g cm^-3; the conversions to cgs are done here, once.

References:
    Ulrich (1976) ApJ 210, 377; Terebey, Shu & Cassen (1984) ApJ 286, 529 -- rotating infall.
    Lynden-Bell & Pringle (1974) MNRAS 168, 603; Andrews et al. (2009) ApJ 700, 1502 -- disk.
    Motte & André (2001) A&A 365, 440 -- envelope dust temperature.
    Beckwith et al. (1990) AJ 99, 924 -- millimetre dust opacity.
    Dartois, Dutrey & Guilloteau (2003) A&A 399, 773 -- a disk's warm surface over a colder midplane.
    Whitney et al. (2003) ApJ 591, 1049 -- curved (power-law) outflow cavity walls.
"""

from __future__ import annotations

import math

import torch
from astropy import constants as const
from astropy import units as u

__all__ = [
    "AU_CM",
    "MSUN_G",
    "G_CGS",
    "YEAR_S",
    "LSUN_ERG_S",
    "RSUN_CM",
    "ulrich_mu0",
    "envelope_shape",
    "envelope_density",
    "disk_scale_height",
    "disk_surface_density_norm",
    "disk_surface_density",
    "disk_density",
    "disk_temperature_factor",
    "in_cavity",
    "dust_temperature",
    "dust_opacity",
    "planck_intensity",
    "expm1",
    "accretion_luminosity",
]

AU_CM = float(u.au.to(u.cm))
MSUN_G = float(const.M_sun.cgs.value)
G_CGS = float(const.G.cgs.value)
YEAR_S = float(u.yr.to(u.s))
LSUN_ERG_S = float(const.L_sun.cgs.value)
RSUN_CM = float(const.R_sun.cgs.value)
H_CGS = float(const.h.cgs.value)
K_B_CGS = float(const.k_B.cgs.value)
C_CGS = float(const.c.cgs.value)


def ulrich_mu0(r_over_rc: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    r"""Cosine of the initial polar angle of the infall streamline through ``(r, mu)``.

    Solves :math:`\mu_0^3 + \mu_0 (r/R_c - 1) - \mu\, r/R_c = 0` (Ulrich 1976) in closed form and
    returns the root in [0, 1] with the sign of ``mu``. The hyperbolic and trigonometric forms of
    the cubic's solution are used so that the result is accurate in single precision everywhere.

    Arguments:
        r_over_rc: radius in units of the centrifugal radius, positive.
        mu: cosine of the polar angle from the rotation axis, in [-1, 1].

    Returns:
        ``mu0``, same shape as the broadcast inputs.
    """
    x = r_over_rc
    mu_abs = mu.abs().clamp(min=1e-6, max=1.0)
    p = x - 1.0
    q = -mu_abs * x
    p_safe = torch.where(p.abs() < 1e-6, torch.full_like(p, 1e-6), p)
    outside = p_safe > 0
    # Points all on one side of the centrifugal radius (as :func:`envelope_mass` passes them) need one form only.
    if bool(outside.all()):
        root = _root_beyond(p_safe, q)
    elif not bool(outside.any()):
        root = _root_within(p_safe, q)
    else:
        root = torch.where(outside, _root_beyond(p_safe, q), _root_within(p_safe, q))
    return torch.copysign(root.clamp(0.0, 1.0), mu)


def _root_beyond(p_safe: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """:func:`ulrich_mu0`'s root beyond the centrifugal radius (``x > 1``): the single real root, hyperbolic-sine
    form."""
    scale_out = 2.0 * torch.sqrt(p_safe.clamp(min=1e-6) / 3.0)
    arg_out = (1.5 * q / p_safe.clamp(min=1e-6)) * torch.sqrt(3.0 / p_safe.clamp(min=1e-6))
    return -scale_out * torch.sinh(torch.asinh(arg_out) / 3.0)


def _root_within(p_safe: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """:func:`ulrich_mu0`'s root within the centrifugal radius (``x < 1``): the trigonometric form (three real
    roots, the largest taken) or the hyperbolic-cosine form."""
    neg_p = (-p_safe).clamp(min=1e-6)
    scale_in = 2.0 * torch.sqrt(neg_p / 3.0)
    arg_in = (1.5 * (-q) / neg_p) * torch.sqrt(3.0 / neg_p)
    root_trig = scale_in * torch.cos(torch.acos(arg_in.clamp(max=1.0)) / 3.0)
    root_cosh = scale_in * torch.cosh(torch.acosh(arg_in.clamp(min=1.0)) / 3.0)
    return torch.where(arg_in <= 1.0, root_trig, root_cosh)


def envelope_shape(r_over_rc: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    r"""Angular and flattening factor of the Ulrich envelope (dimensionless, 2^-1/2 far from the star).

    .. math::
        f = \left(1 + \frac{\mu}{\mu_0}\right)^{-1/2}
            \left(\frac{\mu}{\mu_0} + \frac{2\mu_0^2 R_c}{r}\right)^{-1}

    It depends on ``|mu|`` only; ``|mu|`` is kept above 1e-3 so the integrable singularity of the
    model at the centrifugal radius in the midplane stays finite.
    """
    x = r_over_rc.clamp(min=1e-6)
    mu_safe = mu.abs().clamp(min=1e-3, max=1.0)
    mu0 = ulrich_mu0(x, mu_safe).clamp(min=1e-6)
    ratio = (mu_safe / mu0).clamp(min=1e-6)
    return (1.0 + ratio).rsqrt() / (ratio + 2.0 * mu0**2 / x)


def envelope_density(
    r_au: torch.Tensor,
    mu: torch.Tensor,
    *,
    infall_rate_msun_yr: torch.Tensor,
    stellar_mass_msun: torch.Tensor,
    centrifugal_radius_au: torch.Tensor,
    cavity_half_angle_deg: torch.Tensor,
    cavity_contrast: float | torch.Tensor = 1e-3,
    inner_radius_au: float = 1.0,
    outer_radius_au: float | torch.Tensor = 5000.0,
    shape: torch.Tensor | None = None,
    cavity_wall_exponent: float | torch.Tensor = 1.0,
    cavity_reference_radius_au: float = 1000.0,
) -> torch.Tensor:
    r"""Density of a rotating, infalling envelope with bipolar outflow cavities [g cm^-3].

    .. math::
        \rho = \frac{\dot M}{4\pi\sqrt{G M r^3}}\, f(r / R_c, \mu)

    with ``f`` from :func:`envelope_shape` (computed here unless given, e.g. from a lookup table).
    Inside the outflow cavities (:func:`in_cavity`: a cone of half-opening ``cavity_half_angle_deg``
    about the rotation axis, or a curved wall through that angle at ``cavity_reference_radius_au``)
    the density is multiplied by ``cavity_contrast``; outside ``[inner_radius_au, outer_radius_au]``
    it is zero. The per-system arguments broadcast against ``r_au``.

    References:
        Ulrich (1976) ApJ 210, 377, eq. 8; Terebey, Shu & Cassen (1984).
    """
    if shape is None:
        shape = envelope_shape(r_au / centrifugal_radius_au, mu)
    mdot_g_s = infall_rate_msun_yr * (MSUN_G / YEAR_S)
    gm = G_CGS * stellar_mass_msun * MSUN_G
    # rho0 = Mdot / (4 pi sqrt(G M r^3)), written to stay inside float32's range.
    prefactor = (mdot_g_s / (4.0 * math.pi)) * torch.rsqrt(gm)
    rho = prefactor * (r_au * AU_CM).clamp(min=1.0).pow(-1.5) * shape
    height = r_au * mu
    cylindrical = r_au * (1.0 - mu * mu).clamp(min=0.0).sqrt()
    cavity = in_cavity(cylindrical, height, cavity_half_angle_deg, cavity_wall_exponent, cavity_reference_radius_au)
    rho = torch.where(cavity, rho * cavity_contrast, rho)
    inside = (r_au >= inner_radius_au) & (r_au <= outer_radius_au)
    return torch.where(inside, rho, torch.zeros_like(rho))


def in_cavity(
    cylindrical_au: torch.Tensor,
    height_au: torch.Tensor,
    half_angle_deg: torch.Tensor | float,
    wall_exponent: torch.Tensor | float = 1.0,
    reference_radius_au: float = 1000.0,
) -> torch.Tensor:
    r"""Whether points ``(R, z)`` lie inside the bipolar outflow cavities (boolean, broadcast shape).

    The cavity wall is :math:`|z| = z_0 (R / R_0)^b` (Whitney et al. 2003), through the point at
    distance ``reference_radius_au`` from the star and ``half_angle_deg`` from the axis
    (:math:`R_0 = r_0 \sin\theta`, :math:`z_0 = r_0 \cos\theta`). ``b = 1`` is a cone of that
    half-opening angle at every radius; ``b > 1`` a curved wall, whose width grows with height as
    :math:`R \propto |z|^{1/b}`: wider than the cone inside ``r_0``, narrower beyond.
    Compared in logarithms, so that very small and very large radii stay in float32's range.
    """
    theta = torch.deg2rad(torch.as_tensor(half_angle_deg, dtype=height_au.dtype, device=height_au.device))
    log_r0 = math.log(reference_radius_au)
    log_z0 = log_r0 + torch.log(torch.cos(theta))
    log_cyl0 = log_r0 + torch.log(torch.sin(theta))
    log_z = torch.log(height_au.abs().clamp(min=1e-6))
    log_cyl = torch.log(cylindrical_au.clamp(min=1e-6))
    return (log_z > log_z0 + wall_exponent * (log_cyl - log_cyl0)) & (height_au != 0)


def disk_scale_height(radius_au: torch.Tensor, scale_height_100au: torch.Tensor, flaring: float = 0.25) -> torch.Tensor:
    r"""Gas scale height :math:`H(R) = H_{100} (R / 100\,\mathrm{au})^{1+\psi}` [au]."""
    x = radius_au.clamp(min=1e-3) / 100.0
    if flaring == 0.25:
        return scale_height_100au * x * torch.sqrt(torch.sqrt(x))  # x^1.25, several times faster than pow
    return scale_height_100au * x.pow(1.0 + flaring)


def disk_surface_density_norm(
    disk_mass_msun: torch.Tensor,
    disk_radius_au: torch.Tensor,
    gamma: float | torch.Tensor = 1.0,
    taper: float | torch.Tensor | None = None,
) -> torch.Tensor:
    r""":math:`\Sigma_c` [g cm^-2] such that the tapered power law holds ``disk_mass_msun``.

    For :math:`\Sigma = \Sigma_c (R/R_c)^{-\gamma} \exp[-(R/R_c)^{\tau}]`,
    :math:`M_\mathrm{disk} = 2\pi \Sigma_c R_c^2\, \Gamma((2 - \gamma)/\tau) / \tau`; the self-similar
    taper :math:`\tau = 2 - \gamma` (``taper=None``) gives :math:`2\pi \Sigma_c R_c^2 / (2 - \gamma)`
    (Andrews et al. 2009, eq. 2).
    """
    rc_cm = disk_radius_au * AU_CM
    if taper is None:
        return disk_mass_msun * MSUN_G * (2.0 - gamma) / (2.0 * math.pi * rc_cm**2)
    gamma_t = torch.as_tensor(gamma, dtype=torch.float64)
    taper_t = torch.as_tensor(taper, dtype=torch.float64)
    shape = (taper_t / torch.exp(torch.lgamma((2.0 - gamma_t) / taper_t))).to(
        dtype=torch.as_tensor(rc_cm).dtype, device=torch.as_tensor(rc_cm).device
    )
    return disk_mass_msun * MSUN_G * shape / (2.0 * math.pi * rc_cm**2)


def disk_surface_density(
    radius_au: torch.Tensor,
    *,
    disk_mass_msun: torch.Tensor,
    disk_radius_au: torch.Tensor,
    gamma: float | torch.Tensor = 1.0,
    inner_radius_au: float = 1.0,
    taper: float | torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Tapered power-law surface density :math:`\Sigma(R) = \Sigma_c (R/R_c)^{-\gamma} \exp[-(R/R_c)^{\tau}]`
    [g cm^-2], zero inside ``inner_radius_au``.

    ``taper`` is the outer taper's exponent :math:`\tau` (``None``: the self-similar :math:`2 - \gamma` of a
    viscous disk); a larger :math:`\tau` cuts the disk off more sharply. :math:`\Sigma_c` is set by the
    disk mass (:func:`disk_surface_density_norm`).

    References:
        Lynden-Bell & Pringle (1974); Andrews et al. (2009) ApJ 700, 1502.
    """
    sigma_c = disk_surface_density_norm(disk_mass_msun, disk_radius_au, gamma, taper)
    x = radius_au.clamp(min=inner_radius_au) / disk_radius_au
    exponent = (2.0 - gamma) if taper is None else taper
    if isinstance(gamma, float) and isinstance(exponent, float) and gamma == 1.0 and exponent == 1.0:
        sigma = sigma_c * torch.exp(-x) / x
    else:
        log_x = torch.log(x)
        sigma = sigma_c * torch.exp(-gamma * log_x - torch.exp(exponent * log_x))
    return sigma * (radius_au >= inner_radius_au)


def disk_density(
    radius_au: torch.Tensor,
    height_au: torch.Tensor,
    *,
    disk_mass_msun: torch.Tensor,
    disk_radius_au: torch.Tensor,
    scale_height_100au: torch.Tensor,
    gamma: float | torch.Tensor = 1.0,
    flaring: float = 0.25,
    inner_radius_au: float = 1.0,
    taper: float | torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Density of a flared disk with a tapered power-law surface density [g cm^-3].

    .. math::
        \rho(R, z) = \frac{\Sigma(R)}{\sqrt{2\pi} H} e^{-z^2 / 2H^2}

    with :math:`\Sigma` from :func:`disk_surface_density` and :math:`H` from :func:`disk_scale_height`.

    References:
        Lynden-Bell & Pringle (1974); Andrews et al. (2009) ApJ 700, 1502.
    """
    sigma = disk_surface_density(
        radius_au,
        disk_mass_msun=disk_mass_msun,
        disk_radius_au=disk_radius_au,
        gamma=gamma,
        inner_radius_au=inner_radius_au,
        taper=taper,
    )
    h_au = disk_scale_height(radius_au.clamp(min=inner_radius_au), scale_height_100au, flaring)
    return sigma / (math.sqrt(2.0 * math.pi) * AU_CM) / h_au * torch.exp(-0.5 * (height_au / h_au) ** 2)


def dust_temperature(
    r_au: torch.Tensor,
    luminosity_lsun: torch.Tensor,
    floor_k: float = 10.0,
    ceiling_k: float = 1500.0,
    temperature_1lsun_k: float | torch.Tensor = 38.0,
    index: float | torch.Tensor = 0.4,
) -> torch.Tensor:
    r"""Dust temperature :math:`T = T_0\,(L/L_\odot)^{0.2} (r/100\,\mathrm{au})^{-q}` [K].

    Heating by the central source in the optically thin far-infrared limit (Motte & André 2001:
    :math:`T_0 = 38` K, :math:`q = 0.4`, the defaults), with a floor for external heating and a
    ceiling at dust sublimation.
    """
    t = temperature_1lsun_k * luminosity_lsun.pow(0.2) * torch.exp(-index * torch.log(r_au.clamp(min=1e-3) / 100.0))
    return t.clamp(min=floor_k, max=ceiling_k)


def disk_temperature_factor(
    height_au: torch.Tensor,
    scale_height_au: torch.Tensor,
    midplane_ratio: float | torch.Tensor,
    surface_heights: float = 3.0,
) -> torch.Tensor:
    r"""A disk's vertical temperature structure: the ratio of the local to the surface layer's temperature.

    .. math::
        \frac{T(z)}{T_\mathrm{surface}} = 1 + (f - 1) \cos^4\left(\frac{\pi |z|}{2 z_q}\right)
        \quad (|z| < z_q), \qquad 1 \text{ above}

    with :math:`f` = ``midplane_ratio`` the midplane's temperature over the surface's and
    :math:`z_q` = ``surface_heights`` scale heights (Dartois et al. 2003; the form of Williams & Best
    2014, with their :math:`\delta = 2`). ``f = 1`` is a vertically isothermal disk.
    """
    z_q = surface_heights * scale_height_au
    phase = (0.5 * math.pi * height_au.abs() / z_q).clamp(max=0.5 * math.pi)
    cos2 = torch.cos(phase).square()
    return 1.0 + (midplane_ratio - 1.0) * cos2.square()


def dust_opacity(
    frequency_ghz: float, beta: float | torch.Tensor = 1.0, kappa_230ghz: float | torch.Tensor | None = None
):
    r"""Dust opacity per gram of gas [cm^2 g^-1].

    With ``kappa_230ghz``: :math:`\kappa_\nu = \kappa_{230} (\nu / 230\,\mathrm{GHz})^\beta`, normalised at
    1.3 mm, so that a change of ``beta`` leaves the 1.3 mm opacity alone. Without it, Beckwith et al.'s
    :math:`0.1 (\nu / 1000\,\mathrm{GHz})^\beta` (0.023 at 230 GHz for ``beta = 1``).

    References:
        Beckwith et al. (1990) AJ 99, 924.
    """
    if kappa_230ghz is None:
        return 0.1 * (frequency_ghz / 1000.0) ** beta
    return kappa_230ghz * (frequency_ghz / 230.0) ** beta


def planck_intensity(temperature_k: torch.Tensor, frequency_ghz: float) -> torch.Tensor:
    r"""Planck function :math:`B_\nu(T)` [erg s^-1 cm^-2 Hz^-1 sr^-1]."""
    nu = frequency_ghz * 1e9
    h_nu_over_k = H_CGS * nu / K_B_CGS
    return (2.0 * H_CGS * nu**3 / C_CGS**2) / expm1(h_nu_over_k / temperature_k)


def expm1(x: torch.Tensor) -> torch.Tensor:
    """``exp(x) - 1``, accurate near zero also inside ``torch.compile`` (whose CPU kernels compute ``expm1`` as
    ``exp(x) - 1``, which loses every digit below ``|x|`` ~ 1e-7 in single precision): there a series below 0.05."""
    if not torch.compiler.is_compiling():
        return torch.expm1(x)
    series = x * (1.0 + x * (0.5 + x * (1.0 / 6.0 + x * (1.0 / 24.0 + x * (1.0 / 120.0)))))
    return torch.where(x.abs() < 0.05, series, torch.exp(x) - 1.0)


def accretion_luminosity(stellar_mass_msun, accretion_rate_msun_yr, stellar_radius_rsun=3.0):
    r"""Accretion luminosity :math:`L_\mathrm{acc} = G M \dot M / R_\star` [Lsun].

    About 100 Lsun for 1 Msun accreting 1e-5 Msun/yr onto a 3 Rsun protostar. Works on numpy arrays
    and tensors alike.
    """
    mdot = accretion_rate_msun_yr * MSUN_G / YEAR_S
    return G_CGS * stellar_mass_msun * MSUN_G * mdot / (stellar_radius_rsun * RSUN_CM) / LSUN_ERG_S
