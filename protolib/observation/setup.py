"""What bank a map needs: its field, pixel scale, band, beam and noise (``protolib bank-for``).

:func:`map_setup` reads a continuum map and derives the bank that fits it:

- the **field**: the largest square about the source whose pixels are observed (at least
  :data:`COVERED` of them), capped at :data:`MAX_FIELD_AU` (the prior's largest envelopes);
- the **pixel**: the beam's minor axis sampled by at least :data:`PIXELS_PER_BEAM` pixels, with the
  smallest image of :data:`IMAGE_SIZES` that holds the field at that sampling; where even the largest
  cannot, the field shrinks to what it holds (a long-baseline map: the disk, not the whole field);
- the **band, beam and noise** of the map, at the source's distance: the bank is rendered at the
  map's frequency (no flux scaling with an assumed spectral index) and observed with its beam.

:func:`common_setup` makes one setup serve several maps of a survey (its sharpest beam, lowest noise and
smallest field); :func:`band_setup` makes one bank in several bands for maps of one source at several
frequencies (each band at its map's beam and noise, on one pixel grid); :func:`fitted_setup` chooses
between them; and :meth:`MapSetup.shortfalls` says whether an existing bank can serve another map.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord

from ..instrument import Beam
from ..runtime import ProtolibInputError
from .fits import Observation, read_observation
from .prepare import centre_in_image, measured_noise_rms, usable_field_pixels

__all__ = [
    "MapSetup",
    "map_setup",
    "common_setup",
    "band_setup",
    "fitted_setup",
    "MAX_FIELD_AU",
    "MIN_FIELD_AU",
    "MIN_FIELD_BEAMS",
    "PIXELS_PER_BEAM",
    "IMAGE_SIZES",
    "COVERED",
    "TOLERANCES",
]

MAX_FIELD_AU = 20_000.0  # the largest field of a fitted bank [au]: the prior's envelopes reach 20,000 au
MIN_FIELD_AU = 100.0  # a smaller field means a distance in the wrong unit (the smallest disks are ~10 au)
MIN_FIELD_BEAMS = 4.0  # a usable field narrower than this many beam major axes holds nothing to match
PIXELS_PER_BEAM = 2.5  # the bank's pixel samples the beam's minor axis at least this finely (Nyquist: 2)
IMAGE_SIZES = (64, 128)  # bank image sizes, smallest first; 128 px costs 4x the rendering and training of 64 px
COVERED = 0.99  # the usable field: the largest square about the source with at least this fraction of pixels observed
TOLERANCES = {"distance": 0.10, "frequency": 0.05, "beam": 0.15, "field": 0.25, "noise": 2.0}
"""How far a map may be from a bank's setup and still be served by it (:meth:`MapSetup.shortfalls`):
distance and frequency within these fractions, a beam at most this fraction sharper than the bank's,
a usable field at most this fraction smaller than the bank's, a noise at most this factor below the
bank's (the match adds noise to bank images and widens their beam, but cannot take either away)."""


@dataclass
class MapSetup:
    """The bank that fits a map (or a survey's maps): what ``protolib bank-for`` builds."""

    distance_pc: float  # distance to the source(s)
    field_au: float  # side of the bank's field
    image_size: int  # pixels per side of the bank's images
    frequency_ghz: float  # the map's observing frequency: the bank is rendered in this band
    beam: Beam  # the map's restoring beam
    noise_rms_jy_beam: float  # the map's noise rms near the source
    usable_field_au: float  # the map's usable field about the source, before any cap
    limited_by: str  # what set the field: "the map", the cap, or the beam's sampling
    maps: list[str] = field(default_factory=list)  # the maps it was derived from
    # the source's position (RA, Dec) [deg]: maps of one source lie within a beam of it
    centre_icrs_deg: list[float] | None = None
    # a bank in several bands: each band's setup (this one: the reference band's)
    bands: list[MapSetup] = field(default_factory=list)

    @property
    def pixel_au(self) -> float:
        """Side of one bank pixel [au]."""
        return self.field_au / self.image_size

    def overrides(self) -> dict:
        """The configuration keys this setup sets (``simulator:`` and ``instrument:`` sections)."""

        def rounded(value: float, digits: int = 6) -> float:
            return float(f"{float(value):.{digits}g}")

        def seen(setup: MapSetup) -> dict:
            return {
                "beam_major_arcsec": rounded(setup.beam.major_arcsec),
                "beam_minor_arcsec": rounded(setup.beam.minor_arcsec),
                "beam_position_angle_deg": rounded(setup.beam.position_angle_deg, 4),
                "noise_rms_jy_beam": rounded(setup.noise_rms_jy_beam),
            }

        values = {
            "simulator": {
                "image_size": int(self.image_size),
                "field_of_view_au": rounded(self.field_au),
                "frequency_ghz": rounded(self.frequency_ghz),
            },
            "instrument": {"distance_pc": rounded(self.distance_pc), **seen(self)},
        }
        if self.bands:
            values["simulator"]["frequencies_ghz"] = [rounded(band.frequency_ghz) for band in self.bands]
            values["instrument"]["bands"] = [seen(band) for band in self.bands]
        return values

    def to_dict(self) -> dict:
        return asdict(self)  # the beam as a dict of its three fields, each band as a setup's dict

    @classmethod
    def from_dict(cls, data: dict) -> MapSetup:
        return cls(
            **{**data, "beam": Beam(**data["beam"]), "bands": [cls.from_dict(band) for band in data.get("bands", [])]}
        )

    def describe(self) -> str:
        """One line: field, pixels, band(s), beam(s) and noise."""
        bands = "; ".join(band.band_words() for band in self.bands) if self.bands else self.band_words()
        return (
            f'{self.field_au:,.0f} au field ({self.field_au / self.distance_pc:.3g}" at {self.distance_pc:g} pc; '
            f"{self.limited_by}) "
            f"in {self.image_size}x{self.image_size} px of {self.pixel_au:.3g} au, "
            f"{f'{len(self.bands)} bands: ' if self.bands else ''}"
            f"{bands}"
        )

    def band_words(self) -> str:
        """This setup's band, beam and noise, in words."""
        beam = self.beam
        return (
            f'{self.frequency_ghz:.1f} GHz, beam {beam.major_arcsec:.3g}"x{beam.minor_arcsec:.3g}" PA '
            f"{beam.position_angle_deg:.0f} "
            f"deg ({beam.major_arcsec * self.distance_pc:.3g} au), noise {self.noise_rms_jy_beam * 1e3:.3g} mJy/beam"
        )

    def shortfalls(self, other: MapSetup) -> list[str]:
        """Why a bank of this setup cannot serve the map of setup ``other``, one phrase each (empty: it can).

        A bank serves a map when they share the band and the distance (within :data:`TOLERANCES`), its
        beam is no coarser than the map's and its noise not much higher (the match brings bank images to
        the map's beam and noise, never the other way), and the map covers most of the bank's field. In
        several bands, each band of ``other`` is compared so with the bank's band of its frequency.
        """
        if self.bands or other.bands:
            return self._band_shortfalls(other)
        found = []
        for name, mine, theirs, unit in (
            ("distance", self.distance_pc, other.distance_pc, "pc"),
            ("frequency", self.frequency_ghz, other.frequency_ghz, "GHz"),
        ):
            if abs(theirs / mine - 1.0) > TOLERANCES[name]:
                found.append(
                    f"its {name} is {theirs:.4g} {unit}, the bank's {mine:.4g} {unit} (more than "
                    f"{100 * TOLERANCES[name]:.0f}% apart)"
                )
        mine_au, theirs_au = self.beam.major_arcsec * self.distance_pc, other.beam.major_arcsec * other.distance_pc
        if theirs_au < mine_au / (1.0 + TOLERANCES["beam"]):
            found.append(f"its beam ({theirs_au:.3g} au) is sharper than the bank's ({mine_au:.3g} au)")
        if other.noise_rms_jy_beam < self.noise_rms_jy_beam / TOLERANCES["noise"]:
            found.append(
                f"its noise ({other.noise_rms_jy_beam * 1e3:.3g} mJy/beam) is under 1/{TOLERANCES['noise']:g} of the "
                "bank's "
                f"({self.noise_rms_jy_beam * 1e3:.3g} mJy/beam)"
            )
        if other.usable_field_au < (1.0 - TOLERANCES["field"]) * self.field_au:
            found.append(
                f"it shows {other.usable_field_au:.0f} au about the source, under "
                f"{100 * (1 - TOLERANCES['field']):.0f}% of "
                f"the bank's {self.field_au:.0f} au field"
            )
        return found

    def _band_shortfalls(self, other: MapSetup) -> list[str]:
        """:meth:`shortfalls` band by band: each of ``other``'s bands against the bank's band of its frequency."""
        found, mine = [], self.bands or [self]
        for band in other.bands or [other]:
            near = [m for m in mine if abs(band.frequency_ghz / m.frequency_ghz - 1.0) <= TOLERANCES["frequency"]]
            if not near:
                found.append(
                    f"it has a band at {band.frequency_ghz:.4g} GHz, the bank's bands are "
                    f"{', '.join(f'{m.frequency_ghz:.4g}' for m in mine)} GHz"
                )
            else:
                found.extend(f"at {band.frequency_ghz:.4g} GHz {words}" for words in near[0].shortfalls(band))
        return found


def map_setup(
    path: str | Path | Observation,
    distance_pc: float,
    *,
    frequency_ghz: float | None = None,
    noise_rms_jy_beam: float | None = None,
    centre=None,
) -> MapSetup:
    """The bank setup that fits one map (see the module's description for how each part is chosen).

    Arguments:
        path: the map (a FITS file, or an :class:`~protolib.observation.Observation`).
        distance_pc: distance to the source [pc].
        frequency_ghz: the observed frequency, when the file does not give it.
        noise_rms_jy_beam: the map's noise rms, instead of estimating it.
        centre: the source's position (``"RA DEC"`` or a SkyCoord); default the emission peak.

    Raises:
        ProtolibInputError: no beam or frequency, a distance that makes the field absurd, or a usable
            field of fewer than :data:`MIN_FIELD_BEAMS` beams.
    """
    observation = path if isinstance(path, Observation) else read_observation(path)
    where = observation.path
    if not (isinstance(distance_pc, (int, float)) and math.isfinite(distance_pc) and distance_pc > 0):
        raise ProtolibInputError(f"{where}: the distance must be a positive number of pc, got {distance_pc!r}.")
    frequency = frequency_ghz or observation.frequency_ghz
    if not frequency or not (math.isfinite(frequency) and frequency > 0):
        raise ProtolibInputError(
            f"{where}: the file gives no observing frequency; give it with --frequency GHZ (the bank is "
            "rendered in the map's band)."
        )
    centre, (x, y) = centre_in_image(observation, centre)
    noise = noise_rms_jy_beam if noise_rms_jy_beam is not None else measured_noise_rms(observation, x, y)
    usable_au = (
        usable_field_pixels(observation.image_jy_beam, x, y, COVERED) * observation.pixel_scale_arcsec * distance_pc
    )
    beam = observation.beam
    _check_field(where, usable_au, beam, distance_pc)
    size, field_au, limited_by = _grid(usable_au, beam.minor_arcsec * distance_pc / PIXELS_PER_BEAM)
    return MapSetup(
        distance_pc=float(distance_pc),
        field_au=field_au,
        image_size=size,
        frequency_ghz=float(frequency),
        beam=beam,
        noise_rms_jy_beam=float(noise),
        usable_field_au=usable_au,
        limited_by=limited_by,
        maps=[str(where)],
        centre_icrs_deg=[float(centre.icrs.ra.deg), float(centre.icrs.dec.deg)],
    )


def _check_field(where: Path, usable_au: float, beam: Beam, distance_pc: float) -> None:
    """Refuse a field that shows the distance is wrong, or that holds too few beams to match."""
    if usable_au < MIN_FIELD_AU:
        raise ProtolibInputError(
            f"{where}: at {distance_pc:g} pc its usable field is only {usable_au:.3g} au across; is the "
            "distance in pc? (a protostar's disk alone is tens of au)"
        )
    beams = usable_au / (beam.major_arcsec * distance_pc)
    if beams < MIN_FIELD_BEAMS:
        raise ProtolibInputError(
            f"{where}: its usable field about the source ({usable_au:.0f} au) holds only {beams:.1f} beams of "
            f"{beam.major_arcsec * distance_pc:.0f} au; at least {MIN_FIELD_BEAMS:g} are needed to match "
            "a structure (is the source near the map's edge, or the map mostly blank?)."
        )


def _grid(usable_au: float, pixel_needed_au: float) -> tuple[int, float, str]:
    """Image size, field [au] and what limited the field, for a usable field and the pixel the beam needs."""
    field_au, limited_by = (
        (usable_au, "the map's usable field") if usable_au <= MAX_FIELD_AU else (MAX_FIELD_AU, "the 20,000 au cap")
    )
    for size in IMAGE_SIZES:
        if field_au / size <= pixel_needed_au:
            return size, field_au, limited_by
    size = IMAGE_SIZES[-1]
    return size, size * pixel_needed_au, f"{size} px sampling the beam with {PIXELS_PER_BEAM:g} px"


def common_setup(setups: list[MapSetup]) -> MapSetup:
    """One setup for maps of one survey: at their median distance, with their sharpest beam (in au), their
    lowest noise and their smallest field, so that the bank serves every map (:meth:`MapSetup.shortfalls`).

    Raises:
        ProtolibInputError: two maps in different bands, or at distances too far apart for one bank.
    """
    first = setups[0]
    distance = float(np.median([s.distance_pc for s in setups]))
    for other in setups:
        if abs(other.frequency_ghz / first.frequency_ghz - 1.0) > TOLERANCES["frequency"]:
            raise ProtolibInputError(
                f"{other.maps[0]} ({other.frequency_ghz:.4g} GHz) and {first.maps[0]} ({first.frequency_ghz:.4g} GHz) "
                "are in different bands and need different banks: build one for each (one --out each)."
            )
        if abs(other.distance_pc / distance - 1.0) > TOLERANCES["distance"]:
            raise ProtolibInputError(
                f"{other.maps[0]} at {other.distance_pc:g} pc is more than {100 * TOLERANCES['distance']:.0f}% from "
                f"the maps' median distance ({distance:g} pc); build it a bank of its own (another --out)."
            )
    sharpest = min(setups, key=lambda s: s.beam.major_arcsec * s.distance_pc)
    scale = sharpest.distance_pc / distance  # the same beam in au, seen at the bank's distance
    beam = Beam(
        sharpest.beam.major_arcsec * scale, sharpest.beam.minor_arcsec * scale, sharpest.beam.position_angle_deg
    )
    narrowest = min(setups, key=lambda s: s.field_au)
    size, field_au, limited_by = _grid(narrowest.field_au, beam.minor_arcsec * distance / PIXELS_PER_BEAM)
    return replace(
        sharpest,
        distance_pc=distance,
        beam=beam,
        field_au=field_au,
        image_size=size,
        limited_by=narrowest.limited_by if field_au == narrowest.field_au else limited_by,
        noise_rms_jy_beam=min(s.noise_rms_jy_beam for s in setups),
        usable_field_au=min(s.usable_field_au for s in setups),
        maps=[m for s in setups for m in s.maps],
    )


def fitted_setup(setups: list[MapSetup]) -> MapSetup:
    """The setup of the bank for ``setups``: maps in one band (a survey's) share :func:`common_setup`, as they always
    have; maps in several bands (one source's, one map per band) make a bank in those bands (:func:`band_setup`)."""
    first = setups[0]
    if all(abs(s.frequency_ghz / first.frequency_ghz - 1.0) <= TOLERANCES["frequency"] for s in setups):
        return common_setup(setups)
    return band_setup(setups)


def band_setup(setups: list[MapSetup]) -> MapSetup:
    """One bank in several bands for maps of one source, one map per band: each band at its map's beam and noise,
    on one pixel grid (the sharpest beam's sampling, the smallest field). The setup itself is the reference band's
    (the one nearest 230 GHz, what the simulator's ``frequency_ghz`` names); :attr:`MapSetup.bands` holds them all.

    Raises:
        ProtolibInputError: maps of different sources (centres further apart than a beam), two maps in one band,
            or distances too far apart.
    """
    ordered = sorted(setups, key=lambda s: s.frequency_ghz)
    for lower, upper in zip(ordered, ordered[1:]):
        if abs(upper.frequency_ghz / lower.frequency_ghz - 1.0) <= TOLERANCES["frequency"]:
            raise ProtolibInputError(
                f"{upper.maps[0]} ({upper.frequency_ghz:.4g} GHz) and {lower.maps[0]} ({lower.frequency_ghz:.4g} GHz) "
                "are two maps in one band; a bank in several bands takes one map of the source per band: give one."
            )
    _check_one_source(ordered)
    distance = float(np.median([s.distance_pc for s in ordered]))
    for other in ordered:
        if abs(other.distance_pc / distance - 1.0) > TOLERANCES["distance"]:
            raise ProtolibInputError(
                f"{other.maps[0]} at {other.distance_pc:g} pc is more than {100 * TOLERANCES['distance']:.0f}% from "
                f"the other maps' distance ({distance:g} pc); the maps of one source are at one distance: give one "
                "--distance."
            )
    sharpest = min(ordered, key=lambda s: s.beam.minor_arcsec * s.distance_pc)
    narrowest = min(ordered, key=lambda s: s.field_au)
    size, field_au, limited_by = _grid(
        narrowest.field_au, sharpest.beam.minor_arcsec * sharpest.distance_pc / PIXELS_PER_BEAM
    )
    limited_by = narrowest.limited_by if field_au == narrowest.field_au else limited_by

    def on_grid(band: MapSetup) -> MapSetup:
        scale = band.distance_pc / distance  # the same beam in au, seen at the bank's distance
        beam = Beam(band.beam.major_arcsec * scale, band.beam.minor_arcsec * scale, band.beam.position_angle_deg)
        return replace(band, distance_pc=distance, beam=beam, field_au=field_au, image_size=size, limited_by=limited_by)

    bands = [on_grid(band) for band in ordered]
    reference = min(bands, key=lambda s: abs(math.log(s.frequency_ghz / 230.0)))
    return replace(
        reference,
        bands=bands,
        maps=[m for s in ordered for m in s.maps],
        usable_field_au=min(s.usable_field_au for s in ordered),
    )


def _check_one_source(setups: list[MapSetup]) -> None:
    """Refuse maps whose sources (their emission peaks, or the centres given) lie further apart than the coarser map's
    beam."""
    first = setups[0]
    if first.centre_icrs_deg is None:
        return
    here = SkyCoord(*first.centre_icrs_deg, unit=u.deg)
    for other in setups[1:]:
        if other.centre_icrs_deg is None:
            continue
        apart = here.separation(SkyCoord(*other.centre_icrs_deg, unit=u.deg)).arcsec
        beam = max(first.beam.major_arcsec, other.beam.major_arcsec)
        if apart > beam:
            raise ProtolibInputError(
                f'{other.maps[0]} and {first.maps[0]} are centred {apart:.3g}" apart, more than a beam ({beam:.3g}"): '
                "maps of different sources cannot make one bank in several bands; build a bank for each (one --out "
                "each)."
            )
