"""Physical parameters of a protostellar system, their units, and the prior of the built-in bank."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .physics import accretion_luminosity

__all__ = ["Parameter", "PARAMETERS", "PARAMETER_NAMES", "VIEWING_PARAMETERS", "Prior", "sample_viewing"]


@dataclass(frozen=True)
class Parameter:
    """One physical parameter: its name, unit, meaning and whether it spans decades (log-scaled)."""

    name: str
    unit: str
    description: str
    log_scale: bool = True
    label: str = ""

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
        Parameter("envelope_mass", "Msun", "envelope mass within the model's outer radius", label="M_env"),
        Parameter("luminosity", "Lsun", "total luminosity (stellar + accretion)", label="L"),
        Parameter("temperature", "K", "dust temperature at 100 au", label="T_100"),
        Parameter("age", "yr", "time since protostar formation", label="age"),
        Parameter("disk_scale_height", "au", "disk gas scale height at 100 au", label="H_100"),
        Parameter("cavity_angle", "deg", "outflow cavity half-opening angle", log_scale=False, label="theta_cav"),
    ]
}
PARAMETER_NAMES: list[str] = list(PARAMETERS)
VIEWING_PARAMETERS: dict[str, Parameter] = {
    "inclination": Parameter("inclination", "deg", "0 face-on, 90 edge-on", log_scale=False),
    "position_angle": Parameter("position_angle", "deg", "disk major axis, east of north", log_scale=False),
}


@dataclass
class Prior:
    """The prior of the built-in bank: independent draws, then physical couplings and cuts.

    Drawn independently (log-uniform unless said otherwise): stellar mass, infall rate, disk radius,
    disk-to-star mass ratio, disk scale height at 100 au, cavity half-angle (uniform), and an
    accretion-history factor (log-normal) relating the present infall rate to the mean past one.
    Derived, so that the bank has nature's degeneracies:

    - ``luminosity = L_star + L_acc``, ``L_star = 1 Lsun (M/Msun)^2``,
      ``L_acc = G M (eta Mdot) / R_star`` with ``eta`` of the infall reaching the star;
    - ``temperature = 38 K (L/Lsun)^0.2`` at 100 au (Motte & André 2001);
    - ``age = M / <Mdot>``, the mean past accretion rate being ``Mdot`` times the history factor;
    - ``envelope_mass`` integrates the envelope density (set by Mdot, M and R_disk) over the model
      volume (computed by the simulator).

    Systems older than ``max_age_yr`` or younger than ``min_age_yr`` are redrawn (Class 0/I).
    """

    stellar_mass_msun: tuple[float, float] = (0.05, 3.0)
    accretion_rate_msun_yr: tuple[float, float] = (1e-7, 1e-4)
    disk_radius_au: tuple[float, float] = (5.0, 300.0)
    disk_to_star_mass_ratio: tuple[float, float] = (3e-3, 0.3)
    disk_scale_height_100au: tuple[float, float] = (3.0, 12.0)
    cavity_angle_deg: tuple[float, float] = (10.0, 35.0)
    history_factor_dex: float = 0.3
    accretion_efficiency: float = 0.5
    stellar_radius_rsun: float = 3.0
    min_age_yr: float = 1e4
    max_age_yr: float = 1e6
    extra: dict = field(default_factory=dict)

    def sample(self, n_systems: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Draw ``n_systems`` systems; returns a dict of float64 arrays (``envelope_mass`` excluded).

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
        return {k: np.concatenate([c[k] for c in chunks])[:n_systems] for k in chunks[0]}

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
            "temperature": 38.0 * luminosity**0.2,
            "age": stellar_mass / (accretion_rate * history),
            "disk_scale_height": scale_height,
            "cavity_angle": cavity,
        }

    def to_dict(self) -> dict:
        """The prior's settings as plain data (stored in a bank's provenance)."""
        return asdict(self)


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
