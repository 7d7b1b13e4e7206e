"""Physical parameters of a protostellar system, their units, and the prior of the built-in bank."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from .physics import accretion_luminosity
from .runtime import ProtolibInputError
from .simulator import SimulatorConfig

__all__ = [
    "Parameter",
    "PARAMETERS",
    "PARAMETER_NAMES",
    "PHYSICAL_PARAMETERS",
    "NUISANCE_PARAMETERS",
    "VIEWING_PARAMETERS",
    "Prior",
    "sample_viewing",
]


@dataclass(frozen=True)
class Parameter:
    """One physical parameter: its name, unit, meaning and whether it spans decades (log-scaled)."""

    name: str
    unit: str
    description: str
    log_scale: bool = True
    label: str = ""
    # a modelling choice of the simulator (opacity, temperature law, ...), not a property asked for
    nuisance: bool = False

    @property
    def axis_label(self) -> str:
        """A label for a plot axis, ``log10`` included where the parameter is log-scaled."""
        text = f"{self.label or self.name} [{self.unit}]"
        return f"log10 {text}" if self.log_scale else text


PARAMETERS: dict[str, Parameter] = {
    p.name: p
    for p in [
        Parameter("stellar_mass", "Msun", "protostellar mass", label="M*"),
        Parameter("accretion_rate", "Msun/yr", "envelope infall rate", label="Mdot"),
        Parameter("disk_radius", "au", "disk (centrifugal) radius", label="R_disk"),
        Parameter("disk_mass", "Msun", "disk mass", label="M_disk"),
        Parameter(
            "envelope_mass",
            "Msun",
            "envelope mass within 5000 au (simulator.envelope_mass_radius_au) or the outer radius if smaller",
            label="M_env",
        ),
        Parameter("luminosity", "Lsun", "total luminosity (stellar + accretion)", label="L"),
        Parameter("temperature", "K", "dust temperature at 100 au", label="T_100"),
        Parameter("age", "yr", "time since protostar formation", label="age"),
        Parameter("disk_scale_height", "au", "disk gas scale height at 100 au", label="H_100"),
        Parameter("cavity_angle", "deg", "outflow cavity half-opening angle", log_scale=False, label="theta_cav"),
        # The nuisance physics (simulator.NUISANCE_FIELDS): drawn per system by the prior, or fixed.
        Parameter(
            "opacity_beta", "1", "dust opacity index, kappa ~ nu^beta", log_scale=False, label="beta", nuisance=True
        ),
        Parameter(
            "opacity_230ghz", "cm2/g", "dust opacity at 230 GHz per gram of gas", label="kappa_230", nuisance=True
        ),
        Parameter(
            "temperature_1lsun",
            "K",
            "dust temperature at 100 au for 1 Lsun (T = T_0 L^0.2 (r/100 au)^-q)",
            log_scale=False,
            label="T_0",
            nuisance=True,
        ),
        Parameter(
            "temperature_index", "1", "radial index q of the temperature law", log_scale=False, label="q", nuisance=True
        ),
        Parameter(
            "midplane_temperature_ratio",
            "1",
            "disk midplane over surface-layer temperature",
            log_scale=False,
            label="T_mid/T_surf",
            nuisance=True,
        ),
        Parameter(
            "disk_gamma",
            "1",
            "disk surface-density index, Sigma ~ R^-gamma",
            log_scale=False,
            label="gamma",
            nuisance=True,
        ),
        Parameter(
            "disk_taper",
            "1",
            "exponent of the disk's outer taper, exp[-(R/R_disk)^taper]",
            log_scale=False,
            label="taper",
            nuisance=True,
        ),
        Parameter(
            "cavity_wall_exponent",
            "1",
            "cavity wall shape z ~ R^b: 1 a cone, > 1 curved",
            log_scale=False,
            label="b_cav",
            nuisance=True,
        ),
        Parameter(
            "cavity_contrast",
            "1",
            "density inside the outflow cavities over the envelope's",
            label="cavity contrast",
            nuisance=True,
        ),
        Parameter("envelope_outer_radius", "au", "envelope outer radius", label="R_env", nuisance=True),
    ]
}
PARAMETER_NAMES: list[str] = list(PARAMETERS)
NUISANCE_PARAMETERS: list[str] = [n for n, p in PARAMETERS.items() if p.nuisance]

OPACITY_LAWS = ("independent", "anchored")
"""How a system's dust opacity at 230 GHz is drawn (:attr:`Prior.opacity_law`)."""
OPACITY_LAW_DEFAULTS = {"opacity_law": "independent", "opacity_1000ghz": [0.07, 0.14]}
"""The opacity law's settings at their defaults (left out of a stored prior)."""


def _range_or_nan(value) -> tuple[float, float]:
    """``value`` as a ``(low, high)`` pair of floats, or NaNs where it is not two numbers."""
    pair = value if isinstance(value, (list, tuple)) and len(value) == 2 else (math.nan, math.nan)
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pair):
        return float(pair[0]), float(pair[1])
    return math.nan, math.nan


PHYSICAL_PARAMETERS: list[str] = [n for n, p in PARAMETERS.items() if not p.nuisance]
VIEWING_PARAMETERS: dict[str, Parameter] = {
    "inclination": Parameter("inclination", "deg", "0 face-on, 90 edge-on", log_scale=False),
    "position_angle": Parameter("position_angle", "deg", "disk major axis, east of north", log_scale=False),
}


# the prior's ranges of physical parameters [low, high]; all but the cavity angle log-uniform
PHYSICAL_RANGES = (
    "stellar_mass_msun",
    "accretion_rate_msun_yr",
    "disk_radius_au",
    "disk_to_star_mass_ratio",
    "disk_scale_height_100au",
    "cavity_angle_deg",
)


@dataclass
class Prior:
    """The prior of the built-in bank: independent draws, then physical couplings and cuts.

    Drawn independently (log-uniform unless said otherwise): stellar mass, infall rate, disk radius,
    disk-to-star mass ratio, disk scale height at 100 au, cavity half-angle (uniform), and an
    accretion-history factor (log-normal) relating the present infall rate to the mean past one.
    Derived, so that the bank has nature's degeneracies:

    - ``luminosity = L_star + L_acc``, ``L_star = 1 Lsun (M/Msun)^2``,
      ``L_acc = G M (eta Mdot) / R_star`` with ``eta`` of the infall reaching the star;
    - ``temperature = T_0 (L/Lsun)^0.2`` at 100 au, ``T_0`` = ``temperature_1lsun`` (38 K: Motte & André 2001);
    - ``age = M / <Mdot>``, the mean past accretion rate being ``Mdot`` times the history factor;
    - ``envelope_mass`` integrates the envelope density (set by Mdot, M and R_disk) over the model
      volume (computed by the simulator).

    Systems older than ``max_age_yr`` or younger than ``min_age_yr`` are redrawn (Class 0/I).

    The nuisance physics (:data:`NUISANCE_PARAMETERS`: dust opacity, temperature law, disk profile,
    cavity shape, envelope extent) is drawn per system from the ranges below when ``nuisance`` is
    ``"drawn"`` (uniform, or log-uniform for the log-scaled ``opacity_230ghz``, ``cavity_contrast``
    and ``envelope_outer_radius``), independently of the rest and from its own random stream, so a
    bank with fixed nuisances has the same systems; with ``"fixed"`` every system takes the
    simulator's values. The ranges and their sources are in ``book/bank_format.md``.
    """

    stellar_mass_msun: tuple[float, float] = (0.05, 3.0)  # [Msun], log-uniform: brown-dwarf mass to intermediate mass
    accretion_rate_msun_yr: tuple[float, float] = (1e-7, 1e-4)  # envelope infall rate [Msun/yr], log-uniform
    # centrifugal (disk) radius [au], log-uniform; Class I disks reach several hundred au
    disk_radius_au: tuple[float, float] = (5.0, 500.0)
    disk_to_star_mass_ratio: tuple[float, float] = (3e-3, 0.3)  # disk mass over stellar mass, log-uniform
    disk_scale_height_100au: tuple[float, float] = (3.0, 12.0)  # disk scale height at 100 au [au], log-uniform
    cavity_angle_deg: tuple[float, float] = (10.0, 35.0)  # cavity half-opening angle [deg], uniform
    history_factor_dex: float = 0.3  # spread of the mean past over the present infall rate [dex], log-normal
    accretion_efficiency: float = 0.5  # fraction of the infall reaching the star (sets the accretion luminosity)
    stellar_radius_rsun: float = 3.0  # protostellar radius [Rsun] in L_acc = G M Mdot / R
    min_age_yr: float = 1e4  # systems younger than this are redrawn [yr]
    max_age_yr: float = 1e6  # systems older than this are redrawn [yr] (Class 0/I lifetimes)
    # "drawn": each system draws its nuisance physics from the ranges below; "fixed": the simulator's values
    nuisance: str = "drawn"
    # dust opacity index beta, uniform: grown grains (< 1) to ISM dust (1.7-2)
    opacity_beta: tuple[float, float] = (0.5, 2.0)
    # dust opacity at 230 GHz [cm^2 per g of gas], log-uniform: OH94 to Beckwith
    opacity_230ghz: tuple[float, float] = (0.005, 0.03)
    # how kappa_230 is drawn: "independent" of beta (from opacity_230ghz), or "anchored" at 1000 GHz
    # (from opacity_1000ghz, then kappa_230 = kappa_1000 (230/1000)^beta, Beckwith et al. 1990: grown grains
    # raise the mm opacity as they lower beta, while the submm opacity changes less)
    opacity_law: str = "independent"
    # dust opacity at 1000 GHz [cm^2 per g of gas] for opacity_law "anchored", log-uniform: Beckwith's 0.1 x/÷ 1.4
    opacity_1000ghz: tuple[float, float] = (0.07, 0.14)
    # T at 100 au for 1 Lsun [K], uniform (38 K: Motte & Andre 2001)
    temperature_1lsun: tuple[float, float] = (25.0, 55.0)
    # radial index q of T ~ r^-q, uniform: envelopes 0.33-0.4, disks to 0.6
    temperature_index: tuple[float, float] = (0.33, 0.6)
    # disk midplane over surface temperature, uniform (DM Tau: 0.4-0.7; 1: isothermal)
    midplane_temperature_ratio: tuple[float, float] = (0.4, 1.0)
    disk_gamma: tuple[float, float] = (0.3, 1.5)  # surface-density index, uniform (Andrews et al. 2009, 2010: 0.4-1.1)
    disk_taper: tuple[float, float] = (0.7, 2.5)  # outer taper exponent, uniform: 2 - gamma (viscous) to sharper edges
    cavity_wall_exponent: tuple[float, float] = (1.0, 2.0)  # cavity wall z ~ R^b, uniform: cones (1) to paraboloids (2)
    # cavity over envelope density, log-uniform (an assumption: few measurements)
    cavity_contrast: tuple[float, float] = (1e-4, 1e-1)
    # envelope outer radius [au], log-uniform (Motte & Andre 2001)
    envelope_outer_radius: tuple[float, float] = (1500.0, 20000.0)
    extra: dict = field(default_factory=dict)  # free-form notes kept with the prior in a bank's provenance

    def __post_init__(self):
        if self.nuisance not in ("drawn", "fixed"):
            raise ProtolibInputError(f"prior.nuisance is 'drawn' or 'fixed', got {self.nuisance!r}.")
        if self.opacity_law not in OPACITY_LAWS:
            raise ProtolibInputError(f"prior.opacity_law is 'independent' or 'anchored', got {self.opacity_law!r}.")
        for name in (*PHYSICAL_RANGES, *NUISANCE_PARAMETERS, "opacity_1000ghz"):
            value = getattr(self, name)
            log_scale = PARAMETERS[name].log_scale if name in NUISANCE_PARAMETERS else name != "cavity_angle_deg"
            low, high = _range_or_nan(value)
            if not (math.isfinite(low) and math.isfinite(high) and low <= high) or (log_scale and low <= 0):
                raise ProtolibInputError(
                    f"prior.{name} must be a range [low, high] with low <= high"
                    f"{' and low > 0 (it is drawn log-uniform)' if log_scale else ''}; got {value!r}."
                )
        for name in ("history_factor_dex", "accretion_efficiency", "stellar_radius_rsun", "min_age_yr", "max_age_yr"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0
                or (value == 0 and name != "history_factor_dex")
            ):
                raise ProtolibInputError(f"prior.{name} must be a positive number, got {value!r}.")
        if self.min_age_yr >= self.max_age_yr:
            raise ProtolibInputError(
                f"prior.min_age_yr ({self.min_age_yr:g}) must be below prior.max_age_yr ({self.max_age_yr:g})."
            )

    def sample(
        self,
        n_systems: int,
        rng: np.random.Generator,
        nuisance_rng: np.random.Generator | None = None,
        fixed: dict[str, float] | None = None,
    ) -> dict[str, np.ndarray]:
        """Draw ``n_systems`` systems; returns a dict of float64 arrays (``envelope_mass`` excluded).

        Arguments:
            n_systems: systems to draw.
            rng: the physical parameters' random stream.
            nuisance_rng: the nuisance physics' own stream (default ``default_rng(0)``), so that drawing
                them leaves the physical draws alone.
            fixed: the nuisance values of systems when ``nuisance`` is ``"fixed"`` (default: the
                simulator's defaults, :meth:`~protolib.simulator.SimulatorConfig.nuisance_values`).

        Example:
            >>> draws = Prior().sample(4, np.random.default_rng(0))
            >>> sorted(draws)[:3]
            ['accretion_rate', 'age', 'cavity_angle']
        """
        chunks: list[dict[str, np.ndarray]] = []
        have = 0
        while have < n_systems:
            draw = self._draw(max(2 * (n_systems - have), 16), rng)
            keep = (draw["age"] >= self.min_age_yr) & (draw["age"] <= self.max_age_yr)
            chunks.append({k: v[keep] for k, v in draw.items()})
            have += int(keep.sum())
        systems = {k: np.concatenate([c[k] for c in chunks])[:n_systems] for k in chunks[0]}
        systems.update(self.sample_nuisance(n_systems, nuisance_rng or np.random.default_rng(0), fixed))
        systems["temperature"] = systems["temperature_1lsun"] * systems["luminosity"] ** 0.2
        return systems

    def sample_nuisance(
        self, n_systems: int, rng: np.random.Generator, fixed: dict[str, float] | None = None
    ) -> dict[str, np.ndarray]:
        """The nuisance physics of ``n_systems`` systems: drawn from the ranges, or ``fixed`` (``nuisance: fixed``)."""
        if self.nuisance == "fixed":
            values = {**SimulatorConfig().nuisance_values(), **(fixed or {})}
            return {name: np.full(n_systems, float(values[name])) for name in NUISANCE_PARAMETERS}
        anchored = self.opacity_law == "anchored"
        draws = {}
        for name in NUISANCE_PARAMETERS:
            # the anchored law takes kappa_230's draws (the same stream, so every other draw is unchanged)
            low, high = self.opacity_1000ghz if anchored and name == "opacity_230ghz" else getattr(self, name)
            if PARAMETERS[name].log_scale:
                draws[name] = 10 ** rng.uniform(np.log10(low), np.log10(high), n_systems)
            else:
                draws[name] = rng.uniform(low, high, n_systems)
        if anchored:
            draws["opacity_230ghz"] = draws["opacity_230ghz"] * (230.0 / 1000.0) ** draws["opacity_beta"]
        return draws

    def _draw(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        def log_uniform(bounds):
            return 10 ** rng.uniform(np.log10(bounds[0]), np.log10(bounds[1]), n)

        stellar_mass = log_uniform(self.stellar_mass_msun)
        accretion_rate = log_uniform(self.accretion_rate_msun_yr)
        disk_radius = log_uniform(self.disk_radius_au)
        disk_mass = stellar_mass * log_uniform(self.disk_to_star_mass_ratio)
        scale_height = log_uniform(self.disk_scale_height_100au)
        cavity = rng.uniform(*self.cavity_angle_deg, n)
        history = 10 ** rng.normal(0.0, self.history_factor_dex, n)
        l_acc = accretion_luminosity(stellar_mass, self.accretion_efficiency * accretion_rate, self.stellar_radius_rsun)
        luminosity = stellar_mass**2 + l_acc
        return {
            "stellar_mass": stellar_mass,
            "accretion_rate": accretion_rate,
            "disk_radius": disk_radius,
            "disk_mass": disk_mass,
            "luminosity": luminosity,
            "age": stellar_mass / (accretion_rate * history),
            "disk_scale_height": scale_height,
            "cavity_angle": cavity,
        }

    def to_dict(self) -> dict:
        """The prior's settings as plain data (stored in a bank's provenance). The opacity law's settings are left
        out at their defaults, so that a bank made before they existed is still recognised as current."""
        values = asdict(self)
        for name, default in OPACITY_LAW_DEFAULTS.items():
            if (list(values[name]) if isinstance(values[name], tuple) else values[name]) == default:
                del values[name]
        return values


def sample_viewing(n_systems: int, n_projections: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Viewing angles per projection: isotropic orientations (cos i uniform), PA uniform in [0, 180).

    Returns:
        ``inclination`` and ``position_angle`` in degrees, each ``(n_systems, n_projections)``.
    """
    cos_i = rng.uniform(0.0, 1.0, (n_systems, n_projections))
    return {
        "inclination": np.degrees(np.arccos(cos_i)),
        "position_angle": rng.uniform(0.0, 180.0, (n_systems, n_projections)),
    }
