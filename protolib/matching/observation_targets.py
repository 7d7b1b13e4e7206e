"""Observations as matching targets: an observation on the bank's grid, with the transform that sees the bank like it.

:func:`matching_target` makes one from a FITS file: prepared with
:func:`protolib.observation.prepare_observation` (an :class:`~protolib.observation.Observation` read, then a
:class:`~protolib.observation.PreparedObservation` on the bank's grid), or read as it is when ``protolib observe
--out`` prepared it already (:func:`read_observation_target`). Either gives an :class:`ObservationTarget`, the type
an observation has from here on; its ``transform_key`` keys the bank's embedding cache.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..bank import Bank
from ..runtime import ProtolibInputError
from .embeddings import ImageTransform

__all__ = ["ObservationTarget", "ObservationTransform", "matching_target", "read_observation_target"]


@dataclass
class ObservationTarget:
    """An observation prepared for matching (see :func:`matching_target`).

    Attributes:
        image: ``(H, W)`` the observation on the bank's grid [Jy/beam at the bank's distance].
        transform: bank images ``(N, H, W)`` to the observation's resolution, units and noise.
        transform_key: plain data describing ``transform`` (keys the embedding cache).
        info: what the preparation did (beam, noise, flux scale, padding), for the report.
        truths: the true parameters when the file is a synthetic observation, else ``None``.
        resolution: the noise-free part of ``transform`` (for residuals and the goodness of fit).
        noise_rms_jy_beam: the noise rms of ``image``.
        coverage: ``(H, W)`` fraction of each pixel holding observed data.
    """

    image: np.ndarray
    transform: ImageTransform
    transform_key: dict
    info: dict
    truths: dict | None
    resolution: Any = None
    noise_rms_jy_beam: float = 0.0
    coverage: np.ndarray | None = None


def matching_target(
    path: str | Path, bank: Bank, distance_pc: float | None, *, noise_seed: int = 0, flux_factor: float = 1.0, **options
) -> ObservationTarget:
    """An observation FITS file prepared onto the bank's grid, with the transform that sees the bank like it.

    Uses :func:`protolib.observation.prepare_observation` (``options``: its ``centre``, ``beam`` and
    ``noise_rms_jy_beam``); the bank's noise is topped up to the observation's, each bank row's
    from a generator seeded by ``(noise_seed, row)`` (:class:`ObservationTransform`), so the cached
    embeddings are reproducible and a row re-embedded alone is what the whole bank's embedding gave.
    ``flux_factor`` multiplies the map's fluxes and noise (a draw of its flux-calibration error,
    :mod:`~protolib.matching.observing`).

    Raises:
        ProtolibInputError: the file is missing, the distance is not given, or the image cannot be
            prepared onto the bank's grid.
    """
    from ..observation import prepare_observation, prepared_file

    path = Path(path)
    if not path.exists():
        raise ProtolibInputError(f"Target file {path} does not exist.")
    if prepared_file(path):  # written by `protolib observe`: used as it is, never prepared twice
        given = sorted(PREPARATION_OPTIONS.get(name, name) for name, value in options.items() if value is not None)
        if given:
            raise ProtolibInputError(
                f"{path} was prepared already by `protolib observe`; {', '.join(given)} cannot be applied to it "
                "again. Give them to `protolib observe` with the original observation, or match this file without them."
            )
        return read_observation_target(path, bank, noise_seed=noise_seed, distance_pc=distance_pc)
    if distance_pc is None or not distance_pc > 0:
        raise ProtolibInputError(f"Matching the observation {path} needs its distance in pc (e.g. --distance 140).")
    prepared = prepare_observation(path, bank, distance_pc, **options)
    if flux_factor != 1.0:
        prepared = replace(
            prepared,
            image_jy_beam=(prepared.image_jy_beam * flux_factor).astype(np.float32),
            noise_rms_jy_beam=prepared.noise_rms_jy_beam * flux_factor,
        )
    return _observation_target(prepared, bank, noise_seed)


def read_observation_target(
    path: str | Path, bank: Bank, *, noise_seed: int = 0, distance_pc: float | None = None
) -> ObservationTarget:
    """An observation already prepared onto ``bank``'s grid (``protolib observe --out``), ready for matching.

    ``distance_pc``, when given, must be the distance it was prepared at.

    Raises:
        ProtolibInputError: the file is missing, is not a prepared observation, was prepared for
            another setup (grid, distance, beam or frequency) than the bank's, or at another distance.
    """
    from ..observation import BankGrid, read_prepared_observation

    path = Path(path)
    if not path.exists():
        raise ProtolibInputError(
            f"Observation file {path} does not exist. Prepare one with `protolib observe OBS.fits --out {path}`."
        )
    prepared = read_prepared_observation(path)
    if distance_pc is not None and not math.isclose(float(distance_pc), prepared.distance_pc, rel_tol=1e-6):
        raise ProtolibInputError(
            f"{path} was prepared for a source at {prepared.distance_pc:g} pc, not {distance_pc:g} pc; prepare the "
            "original observation again with `protolib observe --distance`, or leave --distance out."
        )
    _check_same_setup(path, prepared.grid, BankGrid.from_bank(bank), bank.path)
    return _observation_target(prepared, bank, noise_seed)


def _check_same_setup(path: Path, prepared, bank_grid, bank_path) -> None:
    """Refuse a prepared observation whose grid (``prepared``, from its cards) is not ``bank_grid``: image and pixel
    size, the bank's distance, beam and frequency."""

    def beam(grid):
        return (grid.beam.major_arcsec, grid.beam.minor_arcsec) if grid.beam is not None else (0.0, 0.0)

    pairs = {
        "image size [px]": (prepared.image_size, bank_grid.image_size),
        "pixel size [au]": (prepared.pixel_size_au, bank_grid.pixel_size_au),
        "distance [pc]": (prepared.distance_pc, bank_grid.distance_pc),
        "frequency [GHz]": (prepared.frequency_ghz, bank_grid.frequency_ghz),
        "beam major axis [arcsec]": (beam(prepared)[0], beam(bank_grid)[0]),
        "beam minor axis [arcsec]": (beam(prepared)[1], beam(bank_grid)[1]),
    }
    differ = [
        f"{name} {a:.4g} against {b:.4g}"
        for name, (a, b) in pairs.items()
        if not math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-9)
    ]
    if differ:
        raise ProtolibInputError(
            f"{path} was prepared for another bank than {bank_path} ({'; '.join(differ)}); prepare the original "
            f"observation again with `protolib observe --bank {bank_path}`."
        )


PREPARATION_OPTIONS = {
    "centre": "--centre",
    "beam": "--beam",
    "noise_rms_jy_beam": "--noise",
    "frequency_ghz": "--frequency",
    "spectral_index": "--spectral-index",
    "max_scale_arcsec": "--max-scale",
    "mask_radius_arcsec": "--mask-radius",
}


class ObservationTransform:
    """Bank images seen like an observation (its :class:`~protolib.observation.ResolutionMatch`), with noise seeded by
    bank row.

    Called with ``rows`` (each image's bank row, ``system * n_projections + projection``), as the
    bank's embedding and the gallery do, each image's noise comes from its own generator seeded by
    ``(seed, row)``: a bank row gets the same noise whatever batch, order or subset it is transformed
    in, so a shortlist embedded again later (:class:`~protolib.matching.TieredMatcher`) is exactly what
    embedding the whole bank gave. Without ``rows``, the noise comes from one generator seeded by
    ``seed``, drawn on from call to call.

    Attributes:
        resolution: the noise-free part and the noise level (``target_beam``, ``noise_rms_jy_beam``).
        seed: the noise seed.
    """

    seeded_by_row = True  # embed_bank passes each image's bank row

    def __init__(self, resolution, seed: int = 0):
        self.resolution, self.seed = resolution, int(seed)
        self._rng = np.random.default_rng(self.seed)

    def __call__(self, images: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """``images`` ``(N, H, W)`` at the observation's resolution, units and noise; ``rows``: their bank rows
        ``(N,)``."""
        if rows is None:
            return self.resolution(images, self._rng)
        rows = np.asarray(rows, dtype=np.int64).ravel()
        if len(rows) != len(images):
            raise ProtolibInputError(f"{len(images)} images but {len(rows)} bank rows to seed their noise.")
        return self.resolution(images, [np.random.default_rng([self.seed, int(row)]) for row in rows])

    def __repr__(self) -> str:
        return f"ObservationTransform({self.resolution!r}, noise seeded by bank row from seed {self.seed})"


def _observation_target(prepared, bank: Bank, noise_seed: int) -> ObservationTarget:
    """The :class:`ObservationTarget` of a :class:`~protolib.observation.PreparedObservation` for ``bank``."""
    resolution = prepared.transform()
    transform = ObservationTransform(resolution, noise_seed)
    beam = prepared.beam
    coverage = (
        None
        if resolution.coverage is None
        else hashlib.sha256(np.ascontiguousarray(prepared.coverage).tobytes()).hexdigest()
    )
    key = {
        "beam_arcsec": [beam.major_arcsec, beam.minor_arcsec, beam.position_angle_deg],
        "noise_rms_jy_beam": prepared.noise_rms_jy_beam,
        "coverage_sha256": coverage,
        "noise_seed": noise_seed,
        "max_scale_arcsec": resolution.max_scale_arcsec,
        "noise": "seeded by bank row",
    }
    truths = {
        k: v
        for k, v in prepared.true_parameters.items()
        if k in bank.parameters or k in ("inclination", "position_angle")
    }
    return ObservationTarget(
        prepared.image_jy_beam,
        transform,
        key,
        prepared.info(),
        truths or None,
        resolution,
        prepared.noise_rms_jy_beam,
        prepared.coverage,
    )
