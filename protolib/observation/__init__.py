"""Observed images: read interferometric FITS maps, put them on the bank's grid, match the bank to them.

Submodules, in the order an observation travels through them:

- :mod:`~protolib.observation.fits`: reading a FITS file into an :class:`Observation` (headers, WCS,
  Stokes and spectral axes, pixel scale, beam cards, zero-valued blanking, frequency).
- :mod:`~protolib.observation.regrid`: the bank's grid (:class:`BankGrid`, :func:`sky_grid_wcs`) and
  flux-conserving resampling onto it (:func:`resample_to_grid`, the histospline).
- :mod:`~protolib.observation.noise`: the noise rms (:func:`estimate_noise_rms`) and the compact
  sources in the field (:func:`find_compact_sources`).
- :mod:`~protolib.observation.resolution`: the bank-to-observation transform (:class:`ResolutionMatch`)
  and the common beam of two resolutions; the convolution itself is
  :func:`protolib.instrument.convolve_beam`.
- :mod:`~protolib.observation.prepared`: the product, :class:`PreparedObservation`, and its FITS file
  (:func:`read_prepared_observation`).
- :mod:`~protolib.observation.prepare`: the steps that make it, :func:`prepare_observation`.
- :mod:`~protolib.observation.spectral_index`: the spectral index of two maps at a common beam
  (:func:`spectral_index_map`).
- :mod:`~protolib.observation.synthetic`: a simulated system written as an observation
  (:func:`write_observation_fits`).

Its figure, the map before and after preparation, is :func:`protolib.plots.observation.plot_prepared_observation`.

Which type holds an observation, on its way to ``protolib match``:

1. :class:`Observation`: the FITS file as read (its own grid, units, beam and frequency).
2. :class:`PreparedObservation`: on the bank's grid (a :class:`BankGrid`, the bank's, not the
   observation's), at the bank's distance and frequency; what ``protolib observe --out`` writes.
3. :class:`~protolib.matching.ObservationTarget` (:func:`protolib.matching.matching_target`): ready to match,
   with the transform that sees the bank like it (a :class:`ResolutionMatch`, the beam, recoverable scale and
   coverage, with noise seeded by bank row: :class:`~protolib.matching.ObservationTransform`).

The pipeline's own steps (:mod:`protolib.pipelines.match`) then hold a ``MatchTarget`` (the target and what is
uncertain about it), its matches and their verdicts.

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

from ..instrument import MIN_BEAM_VARIANCE, effective_beam_covariance
from .fits import (
    DEG_ARCSEC,
    MIN_IMAGE_PIXELS,
    Observation,
    blank_zero_regions,
    is_prepared,
    plain_icrs,
    read_observation,
    refine_peak,
    true_parameters_from_header,
)
from .noise import DETECTION_SIGMA, NOISE_BEAMS, CompactSource, estimate_noise_rms, find_compact_sources
from .prepare import (
    MAX_FREQUENCY_RATIO,
    MAX_SCALE_BEAMS,
    MAX_SCALE_LIMIT_ARCSEC,
    MIN_FIELD_FRACTION,
    NOISE_BOX,
    frequency_scale,
    prepare_observation,
)
from .prepared import PreparedObservation, prepared_file, read_prepared_observation, refuse_empty_target
from .regrid import BankGrid, resample_to_grid, sky_grid_wcs
from .resolution import ResolutionMatch, common_beam_covariance
from .spectral_index import SPECTRAL_INDEX_SIGMA, SpectralIndexMap, spectral_index_map
from .synthetic import write_observation_fits

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
    "sky_grid_wcs",
    "estimate_noise_rms",
    "CompactSource",
    "find_compact_sources",
    "blank_zero_regions",
    "frequency_scale",
    "write_observation_fits",
    "SpectralIndexMap",
    "spectral_index_map",
    "SPECTRAL_INDEX_SIGMA",
    "refine_peak",
    "plain_icrs",
    "true_parameters_from_header",
    "DEG_ARCSEC",
    "MIN_FIELD_FRACTION",
    "MIN_BEAM_VARIANCE",
    "MIN_IMAGE_PIXELS",
    "NOISE_BOX",
    "NOISE_BEAMS",
    "MAX_FREQUENCY_RATIO",
    "DETECTION_SIGMA",
    "MAX_SCALE_LIMIT_ARCSEC",
    "is_prepared",
    "prepared_file",
    "refuse_empty_target",
    "MAX_SCALE_BEAMS",
]
