"""Maps of one source in several bands, each prepared in the bank's band nearest in frequency, for one joint match.

:func:`prepare_band_targets` checks that the maps fit the bank (one source, one map per band, every
frequency near a bank band), prepares each in its band (:func:`~protolib.matching.matching_target`
with the band's beam and noise, :meth:`~protolib.bank.Bank.band`) and says how they are searched. A
band-dropout network (``siamese.model.bands: all``) embeds every map jointly (``joint``,
:class:`~protolib.matching.BandMatcher`); a one-band network embeds the bank's reference band (the one
it was trained on), so the map in that band, or else the map in the band nearest it, is searched
alone. The image-space fit and the verdict use every band either way
(:func:`~protolib.matching.fit_matches` with ``bands``).

A map up to 5% from its band (:data:`~protolib.bank.BAND_TOLERANCE`) is brought to it with the bank's
fixed spectral index ``2 + β`` (:func:`~protolib.observation.frequency_scale`), not with each match's
own index between its bands. Measured (``benchmarks/band_frequency_offset.py``, results in
``benchmarks/results/band_frequency_offset.json``): over a bank with drawn physics (total-flux indices
2.3–3.7, 5th to 95th percentile), the flux error this leaves at the full 5% offset is at most 3.8% (95th
percentile; 4.3% for the worst image) in every band, below the flux calibration's own 1-sigma error (5% in B3, 10%
in B6 and B7) and half or less of the image-space fit's tolerance (2 sigma), which absorbs it; a map 1%
from its band, the usual case, is off by under 1%. The error it puts in the B3-B6 spectral index a
band-dropout network sees is 0.045 (95th percentile). So each match's own index is not used: it would change
the fit by less than its flux tolerance everywhere it can apply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord

from ..bank import BAND_TOLERANCE, Bank
from ..runtime import ProtolibInputError
from .observation_targets import ObservationTarget, matching_target

__all__ = ["BandTargets", "MapBand", "map_bands", "prepare_band_targets", "band_label", "spectral_indices"]


def band_label(frequency_ghz: float) -> str:
    """A band's name in files and columns: ``230GHz``, ``97.5GHz``."""
    return f"{frequency_ghz:g}GHz"


@dataclass
class MapBand:
    """One map and the bank band it is matched in.

    Attributes:
        path: the map's FITS file.
        observed_ghz: its frequency (the file's spectral axis); ``band_ghz``: the bank band nearest it.
        centre: the source's position in it (the emission peak, or the centre given); ``beam_arcsec``: its beam's major
            axis.
    """

    path: Path
    observed_ghz: float
    band_ghz: float
    centre: SkyCoord | None = None
    beam_arcsec: float = 0.0


@dataclass
class BandTargets:
    """The maps of one source prepared for a joint match, in increasing frequency (:func:`prepare_band_targets`).

    Attributes:
        maps: each map and its bank band.
        targets: each map prepared in its band (:class:`~protolib.matching.ObservationTarget`).
        banks: each band of the bank, opened as a one-band bank (:meth:`~protolib.bank.Bank.band`); closed by
            :meth:`close`.
        search: the index of the map that is searched by a one-band network (the reference band's, else the
            nearest band's), and whose observing settings a joint search draws.
        reference_ghz: the bank's reference band, the one its one-band networks were trained on.
        joint: whether every map is embedded and searched jointly (a band-dropout network), else the map
            ``search`` alone.
    """

    maps: list[MapBand]
    targets: list[ObservationTarget]
    banks: list[Bank]
    search: int
    reference_ghz: float
    labels: list[str] = field(default_factory=list)
    joint: bool = False

    def __post_init__(self):
        self.labels = [band_label(m.band_ghz) for m in self.maps]

    @property
    def searched_ghz(self) -> list[float]:
        """The bands embedded and searched: every map's when joint, else the searched map's [GHz]."""
        return self.frequencies_ghz if self.joint else [self.frequencies_ghz[self.search]]

    def searched(self, images: np.ndarray) -> np.ndarray:
        """Images of the maps' bands ``(N, bands, H, W)`` as the network embeds them: all of them when joint, else
        the searched band's ``(N, H, W)``."""
        return images if self.joint else images[:, self.search]

    @property
    def frequencies_ghz(self) -> list[float]:
        """The bank bands of the maps, increasing [GHz]."""
        return [m.band_ghz for m in self.maps]

    def images(self) -> np.ndarray:
        """``(bands, H, W)`` the prepared maps."""
        return np.stack([t.image for t in self.targets])

    def load_images(self, systems, projections) -> np.ndarray:
        """``(n, bands, H, W)`` the bank's images of the maps' bands."""
        return np.stack([bank.images_at(systems, projections) for bank in self.banks], axis=1)

    def close(self) -> None:
        for bank in self.banks:
            bank.close()


def map_bands(paths, bank: Bank, centre=None, reference_ghz: float | None = None) -> list[MapBand]:
    """Each map's bank band, in increasing frequency, refused in one line each for: a frequency no bank band is near
    (within :data:`~protolib.bank.BAND_TOLERANCE`; the bank's bands are named), two maps for one band, and maps of
    different sources (centres further apart than the coarser map's beam). ``centre``: the source's position when
    given."""
    bands = bank.frequencies_ghz
    found = []
    for path in map(Path, paths):
        if not path.exists():
            raise ProtolibInputError(f"Target file {path} does not exist.")
        observed, position, beam = _map_frequency_and_centre(path, centre)
        nearest = min(bands, key=lambda b: abs(math.log(b / observed)))
        if abs(nearest / observed - 1.0) > BAND_TOLERANCE:
            raise ProtolibInputError(
                f"{path} is at {observed:.4g} GHz, and bank {bank.path} has no band within {100 * BAND_TOLERANCE:.0f}% "
                f"of it (its bands: {', '.join(f'{b:g}' for b in bands)} GHz); match it with a bank in its band "
                "(`protolib bank-for` with the maps of every band), or leave it out."
            )
        found.append(MapBand(path, observed, nearest, position, beam))
    found.sort(key=lambda m: m.band_ghz)
    for lower, upper in zip(found, found[1:]):
        if lower.band_ghz == upper.band_ghz:
            raise ProtolibInputError(
                f"{lower.path} ({lower.observed_ghz:.4g} GHz) and {upper.path} ({upper.observed_ghz:.4g} GHz) are two "
                "maps "
                f"for the bank's {lower.band_ghz:g} GHz band; a joint match takes one map per band: give one."
            )
    _check_one_source(found)
    return found


def _map_frequency_and_centre(path: Path, centre) -> tuple[float, SkyCoord | None, float]:
    """A map's frequency [GHz], its source's position and its beam's major axis [arcsec] (0 when the file has no
    beam)."""
    from ..observation import prepared_file, read_observation, read_prepared_observation
    from ..observation.prepare import centre_in_image

    if prepared_file(path):  # prepared by `observe` for one band: its grid names the band
        prepared = read_prepared_observation(path)
        return (
            prepared.grid.frequency_ghz,
            prepared.centre,
            prepared.beam.major_arcsec * prepared.grid.distance_pc / prepared.distance_pc,
        )
    observation = read_observation(path)
    if not observation.frequency_ghz:
        raise ProtolibInputError(
            f"{path}: the file has no spectral axis to read its frequency from, and a joint match puts each map in "
            "the bank band nearest its frequency; add the frequency to the header (CRVAL3 of a FREQ axis, or RESTFRQ), "
            "or, "
            "matching this map alone, give --frequency GHZ."
        )
    position, _ = centre_in_image(observation, centre)
    beam = observation.beam.major_arcsec if observation.beam is not None else 0.0
    return float(observation.frequency_ghz), position, beam


def _check_one_source(maps: list[MapBand]) -> None:
    """Refuse maps whose sources lie further apart than the coarser map's beam."""
    first = maps[0]
    for other in maps[1:]:
        if first.centre is None or other.centre is None:
            continue
        apart = first.centre.separation(other.centre).to(u.arcsec).value
        beam = max(first.beam_arcsec, other.beam_arcsec)
        if beam > 0 and apart > beam:
            raise ProtolibInputError(
                f'{other.path} and {first.path} are centred {apart:.3g}" apart, more than a beam ({beam:.3g}"): maps '
                "of "
                "different sources are not matched jointly; match each alone (or give --centre if they are one source)."
            )


def prepare_band_targets(
    paths, bank: Bank, distance_pc: float | None, *, joint: bool = False, **options
) -> BandTargets:
    """The maps ``paths`` of one source, each prepared in the band of ``bank`` (opened whole) nearest its frequency.

    ``options`` go to :func:`~protolib.matching.matching_target` for every map (``centre``,
    ``spectral_index``, ``mask_radius_arcsec``). The bands are opened as one-band banks; close them with
    :meth:`BandTargets.close`. ``joint``: the maps are embedded jointly (a band-dropout network); each band's
    bank noise is then seeded apart (the searched map's as one map's, the others' by their position), since the
    bands of a real source are observed separately and one noise pattern in every band would be a shared
    structure the network could read.

    Raises:
        ProtolibInputError: the refusals of :func:`map_bands`, or a map that cannot be prepared.
    """
    reference = float(bank.attrs.get("frequency_ghz", bank.frequencies_ghz[0]))
    maps = map_bands(paths, bank, options.get("centre"))
    search = min(range(len(maps)), key=lambda i: abs(math.log(maps[i].band_ghz / reference)))
    banks, targets = [], []
    try:
        for i, band in enumerate(maps):
            banks.append(bank.band(band.band_ghz))
            seed = i + 1 if joint and i != search else 0
            targets.append(matching_target(band.path, banks[-1], distance_pc, noise_seed=seed, **options))
    except BaseException:
        for opened in banks:
            opened.close()
        raise
    return BandTargets(maps, targets, banks, search, reference, joint=joint)


def spectral_indices(bands: BandTargets, systems, projections):
    """The spectral-index maps (:func:`~protolib.observation.spectral_index_map`) of the target and of bank images,
    between
    the lowest and the highest band, at their common beam, where both bands are above 3 times the target's noise.

    The bank images (``systems``, ``projections``) are seen as the target is in each band, without noise (the
    transform's noise-free part), and cut with the target's noise, so that their maps and the target's cover
    alike. Returns ``(target's, the images')``: :class:`~protolib.observation.SpectralIndexMap` of ``(H, W)`` and ``(n,
    H, W)``.
    """
    from ..observation import spectral_index_map

    low, high = bands.targets[0], bands.targets[-1]
    setting = dict(
        low_ghz=bands.frequencies_ghz[0],
        high_ghz=bands.frequencies_ghz[-1],
        low_beam=low.resolution.target_beam,
        high_beam=high.resolution.target_beam,
        pixel_arcsec=low.resolution.pixel_arcsec,
        low_noise_jy_beam=low.noise_rms_jy_beam,
        high_noise_jy_beam=high.noise_rms_jy_beam,
    )
    target = spectral_index_map(low.image, high.image, **setting)
    models = [
        t.resolution(np.asarray(bank.images_at(systems, projections), dtype=np.float32), None)
        for t, bank in ((low, bands.banks[0]), (high, bands.banks[-1]))
    ]
    return target, spectral_index_map(models[0], models[1], **setting)
