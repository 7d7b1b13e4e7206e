"""The image bank: one HDF5 file of simulated (or imported) images with their physical parameters.

Schema (``format = "protolib-bank"``, ``schema_version = 1``)::

    /images                     float32 (n_systems, n_projections, height, width), chunked by systems;
                                attrs: unit ("Jy/beam" or "Jy/pixel"), axes ("system, projection, north, west")
    /parameters/<name>          float64 (n_systems,); attrs: unit, description, log_scale
    /viewing/inclination        float64 (n_systems, n_projections) [deg], 0 face-on
    /viewing/position_angle     float64 (n_systems, n_projections) [deg], east of north
    /system_id                  int64 (n_systems,): identifier of each system (snapshot)
    attrs on /:                 format, schema_version, protolib_version, created (UTC, ISO 8601),
                                seed, pixel_size_au, field_of_view_au, distance_pc, frequency_ghz,
                                beam_major_arcsec, beam_minor_arcsec, beam_position_angle_deg,
                                noise_rms_jy_beam, simulator_config (JSON), prior (JSON), source

A bank in several bands (``simulator.frequencies_ghz``) has one more axis and one more table::

    /images                     float32 (n_systems, n_projections, n_bands, height, width), chunked by systems
                                and bands; attrs: axes ("system, projection, band, north, west")
    /bands/frequency_ghz        float64 (n_bands,), increasing [GHz]
    /bands/<beam or noise key>  float64 (n_bands,): beam_major_arcsec, beam_minor_arcsec,
                                beam_position_angle_deg, noise_rms_jy_beam of each band

and its root attributes describe its reference band (the one nearest the simulator's
``frequency_ghz``), so that its setup reads as a one-band bank's. A bank of one band has no band
axis and no ``/bands``, as before several bands existed. ``Bank(path, frequency_ghz=...)`` and
:meth:`Bank.band` open one band of either as a one-band bank.

Rows of an image run north, columns west (``imshow(origin="lower")`` shows north up, east left).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

from . import __version__
from .instrument import BAND_SETTINGS, Instrument
from .parameters import NUISANCE_PARAMETERS, PARAMETERS, Parameter, Prior, sample_viewing
from .runtime import (
    ProtolibInputError,
    atomic_path,
    default_device,
    share_work,
    shown_path,
    start_worker,
    system_rng,
    typed_settings,
)
from .simulator import NUISANCE_FIELDS, RENDER_KEYS, SimulatorConfig, envelope_mass, render, settle_compile

__all__ = [
    "Bank",
    "check_same_setup",
    "setup_difference",
    "SETUP_TOLERANCE",
    "bank_with_systems_from",
    "concatenate_banks",
    "simulate_bank",
    "check_beam_fits_field",
    "write_simulated_bank",
    "draw_systems",
    "render_systems",
    "import_thesis_snapshots",
    "THESIS_DATASETS",
    "write_bank_tables",
    "write_bank_attributes",
    "BAND_SETTINGS",
    "BAND_TOLERANCE",
]

FORMAT = "protolib-bank"
SCHEMA_VERSION = 1
IMAGE_CHECK_BYTES = 4 * 2**30  # banks up to this size have every pixel checked for NaN and inf when opened
# (path, size, mtime) of bank files whose pixels passed, so reopening one does not read it again
_PIXELS_CHECKED: set = set()


BAND_TOLERANCE = 0.05
"""A band is selected (:meth:`Bank.band`) by a frequency within this fraction of its own; farther, it is refused."""


IMAGES_IN_MEMORY_BYTES = 2**28
"""A bank whose images take at most this many bytes (256 MiB: 8,000 images of 128 x 128 pixels) keeps them in memory
once read: matching reads a few hundred scattered images per target and per reference image, and h5py reads
scattered rows of a file hundreds of times slower than numpy indexes an array."""


class Bank:
    """A bank of images and parameters, read lazily from its HDF5 file.

    Example:
        >>> bank = Bank("bank.h5")                      # doctest: +SKIP
        >>> bank.images.shape                           # (systems, projections, height, width)
        >>> bank.parameters["disk_radius"]              # numpy array, one value per system [au]
        >>> bank.load_images([0, 5, 7])                 # numpy (3, P, H, W)

    A bank in several bands holds images ``(systems, projections, bands, height, width)``;
    ``Bank(path, frequency_ghz=230)``, or ``bank.band(230)``, opens its 230 GHz band as a one-band bank
    (images ``(systems, projections, height, width)``, that band's frequency, beam and noise), which
    every reader of one-band banks takes as it is.
    """

    def __init__(self, path: str | Path, frequency_ghz: float | None = None):
        self.path = Path(path)
        self._file = self._open_checked()
        self.images: h5py.Dataset = self._file["images"]
        self._held: np.ndarray | None = None  # the images, once read, of a bank small enough to hold (load_images)
        self._read_tables()
        try:
            self._select_band(frequency_ghz)
            self._validate()
        except ProtolibInputError:
            self._file.close()
            raise

    def _open_checked(self) -> h5py.File:
        """The bank file, open for reading; refused in one line when it is missing, a folder, not HDF5, not a bank,
        or not laid out as the schema says (:func:`_check_structure`)."""
        if not self.path.exists():
            raise ProtolibInputError(
                f"Bank file {self.path} does not exist. Make one with `protolib simulate --out {self.path}`."
            )
        if self.path.is_dir():
            raise ProtolibInputError(f"{self.path} is a folder, not a bank file; give the .h5 file inside it.")
        self._opened = _file_identity(self.path)  # what the file was when opened (check_unchanged)
        try:
            file = h5py.File(self.path, "r")
        except OSError as error:
            raise ProtolibInputError(f"Bank file {self.path} is not a readable HDF5 file ({error}).") from None
        if file.attrs.get("format") != FORMAT or "images" not in file:
            file.close()
            raise ProtolibInputError(
                f"{self.path} is an HDF5 file but not a protolib bank (no 'format = {FORMAT}' attribute or no "
                "/images dataset). Banks are written by `protolib simulate` or `protolib import-thesis`."
            )
        try:
            _check_structure(file, self.path)
        except ProtolibInputError:
            file.close()
            raise
        return file

    def _read_tables(self) -> None:
        """Read the parameters (the built-in ones first, in their order) with their units, the viewing angles, the
        system identifiers and the root attributes; the images stay in the file."""
        stored = list(self._file["parameters"])
        ordered = [n for n in PARAMETERS if n in stored] + [n for n in stored if n not in PARAMETERS]
        self.parameters: dict[str, np.ndarray] = {name: self._file["parameters"][name][()] for name in ordered}
        self.parameter_info: dict[str, Parameter] = {
            name: Parameter(
                name,
                str(ds.attrs.get("unit", "")),
                str(ds.attrs.get("description", "")),
                bool(ds.attrs.get("log_scale", True)),
                PARAMETERS[name].label if name in PARAMETERS else "",
            )
            for name, ds in ((n, self._file["parameters"][n]) for n in ordered)
        }
        self.inclination: np.ndarray = self._file["viewing/inclination"][()]
        self.position_angle: np.ndarray = self._file["viewing/position_angle"][()]
        self.system_id: np.ndarray = self._file["system_id"][()]
        self.attrs: dict = {k: _plain(v) for k, v in self._file.attrs.items()}

    def _validate(self) -> None:
        """Refuse NaN or infinite parameters, viewing angles and pixels, and log-scaled parameters <= 0.

        Viewing angles that are NaN for every image mean "unknown" (banks imported from the thesis's
        files), and are accepted.

        Such values train networks to NaN and give tables of NaN, so they are refused where the data
        enter, with the dataset and the count. Images are checked in chunks of systems (all of them up
        to :data:`IMAGE_CHECK_BYTES`; beyond, an evenly spaced sample of systems, so that opening a
        huge bank stays quick; training then stops on the first non-finite loss).
        """
        self._check_tables()
        self._check_pixels()

    def _check_tables(self) -> None:
        """Refuse NaN or infinite parameters and viewing angles (but angles unknown throughout), log-scaled
        parameters <= 0 and inclinations outside 0-180 deg."""
        tables = {f"parameters/{n}": v for n, v in self.parameters.items()}
        tables.update({"viewing/inclination": self.inclination, "viewing/position_angle": self.position_angle})
        for name, values in tables.items():
            values = np.asarray(values, dtype=np.float64)
            if name.startswith("viewing/") and np.isnan(values).all():
                continue  # angles unknown for the whole bank (an imported one): recorded as NaN throughout
            bad = ~np.isfinite(values)
            if bad.any():
                systems = np.unique(np.nonzero(bad)[0])
                raise ProtolibInputError(
                    f"{self.path}: {name} holds {int(bad.sum())} NaN or infinite value(s) (system(s) "
                    f"{_first(systems)}); "
                    "re-render or remove those systems."
                )
        for name, info in self.parameter_info.items():
            values = self.parameters[name]
            if info.log_scale and np.any(values <= 0):
                systems = np.nonzero(values <= 0)[0]
                raise ProtolibInputError(
                    f"{self.path}: parameters/{name} is log-scaled and must be positive, but {len(systems)} value(s) "
                    "are <= 0 "
                    f"(system(s) {_first(systems)}); fix or remove those systems."
                )
        if np.isfinite(self.inclination).all() and (np.any(self.inclination < 0) or np.any(self.inclination > 180)):
            raise ProtolibInputError(f"{self.path}: viewing/inclination holds angles outside 0-180 deg.")

    def _check_pixels(self) -> None:
        """Refuse NaN or infinite pixels, and a bank without one positive pixel, in every system (or an evenly spaced
        sample of systems, beyond :data:`IMAGE_CHECK_BYTES`); a file that passed is not read again."""
        stat = self.path.stat()
        checked = (str(self.path.resolve()), stat.st_size, stat.st_mtime_ns)
        if checked in _PIXELS_CHECKED:  # this file, unchanged, passed the pixel scan in this process already
            return
        n = self.n_systems
        step = max(1, math.ceil(self.images.nbytes / IMAGE_CHECK_BYTES))
        systems = np.arange(0, n, step)
        count, where, brightest = 0, [], -np.inf
        for chunk, images in self.iter_batches(systems, max(1, int(2**26 // max(1, _system_bytes(self.images))))):
            bad = ~np.isfinite(images)
            brightest = max(brightest, float(np.max(np.where(bad, -np.inf, images))))
            if bad.any():
                count += int(bad.sum())
                where.extend(chunk[np.any(bad.reshape(len(chunk), -1), axis=1)].tolist())
        if count:
            checked = "" if step == 1 else f" in the {len(systems)} systems checked of {n}"
            raise ProtolibInputError(
                f"{self.path}: images holds {count} NaN or infinite pixel(s){checked} (system(s) "
                f"{_first(np.array(where))}); "
                "re-render or remove those systems."
            )
        if not brightest > 0:
            raise ProtolibInputError(
                f"{self.path}: no image of the bank has a positive pixel (all zero or negative); "
                "it holds no emission to match."
            )
        _PIXELS_CHECKED.add(checked)

    def _select_band(self, frequency_ghz: float | None) -> None:
        """Read one band of the file as a one-band bank (``frequency_ghz``: the band nearest it), or all (``None``)."""
        self.band_index: int | None = None
        if frequency_ghz is None:
            return
        bands = self.frequencies_ghz
        if not (isinstance(frequency_ghz, (int, float)) and math.isfinite(frequency_ghz) and frequency_ghz > 0):
            raise ProtolibInputError(
                f"{self.path}: a band is chosen by a positive frequency in GHz, got {frequency_ghz!r}."
            )
        if not all(math.isfinite(b) for b in bands):
            raise ProtolibInputError(
                f"{self.path}: the bank records no frequency (an imported bank), so no band of "
                f"{frequency_ghz:g} GHz can be chosen; open it without one."
            )
        index = int(np.argmin([abs(math.log(b / frequency_ghz)) for b in bands]))
        if abs(bands[index] / frequency_ghz - 1.0) > BAND_TOLERANCE:
            raise ProtolibInputError(
                f"{self.path}: the bank has no band within {100 * BAND_TOLERANCE:.0f}% of {frequency_ghz:g} GHz (its "
                f"band(s): {', '.join(f'{b:g}' for b in bands)} GHz); choose one of those, or make a bank in that band."
            )
        if self.images.ndim == 5:
            self.band_index = index
            self.images = _BandImages(self._file["images"], index)
            table = self._file["bands"]
            self.attrs.update({key: float(table[key][index]) for key in BAND_SETTINGS if key in table})
            self.attrs["frequency_ghz"] = bands[index]

    @property
    def frequencies_ghz(self) -> tuple[float, ...]:
        """The bands' frequencies [GHz], increasing; one (NaN when unknown: an imported bank) for a one-band bank or
        band."""
        if self.band_index is None and "bands" in self._file:
            return tuple(float(v) for v in self._file["bands/frequency_ghz"][()])
        return (float(self.attrs.get("frequency_ghz", float("nan"))),)

    @property
    def n_bands(self) -> int:
        """How many bands the images hold (1: no band axis)."""
        return len(self.frequencies_ghz)

    @property
    def band_instruments(self) -> list[Instrument]:
        """The instrument of each band (its beam and noise), in :attr:`frequencies_ghz` order."""
        if self.n_bands == 1:
            return [self.instrument]
        table = self._file["bands"]
        return [
            Instrument(
                **{**self.instrument.to_dict(), **{key: float(table[key][i]) for key in BAND_SETTINGS if key in table}}
            )
            for i in range(self.n_bands)
        ]

    def band(self, frequency_ghz: float) -> Bank:
        """The band nearest ``frequency_ghz`` (within :data:`BAND_TOLERANCE`) as a one-band bank, opened anew (close it
        too).

        Its images are ``(systems, projections, height, width)`` and its attributes, instrument and setup
        are that band's, so that whatever reads one-band banks (training, matching) reads it unchanged.
        """
        return Bank(self.path, frequency_ghz)

    @property
    def n_systems(self) -> int:
        return int(self.images.shape[0])

    @property
    def n_projections(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def pixel_size_au(self) -> float:
        return float(self.attrs.get("pixel_size_au", float("nan")))

    @property
    def unit(self) -> str:
        return str(self.images.attrs.get("unit", ""))

    @property
    def instrument(self) -> Instrument:
        """The instrument the bank's images were seen through."""
        keys = Instrument().to_dict().keys()
        return Instrument(**{k: float(self.attrs[k]) for k in keys if k in self.attrs})

    @property
    def simulator_config(self) -> SimulatorConfig | None:
        """The simulator settings the bank was rendered with (``None`` for an imported bank), checked as a
        configuration's are;
        for one band of several (:meth:`band`), the settings that render that band alone, as a one-band bank's."""
        text = self.attrs.get("simulator_config")
        config = (
            typed_settings(SimulatorConfig, json.loads(text), f"{self.path}: the bank's simulator_config")
            if text
            else None
        )
        if config is not None and self.band_index is not None:
            config = replace(config, frequency_ghz=self.frequencies_ghz[0], frequencies_ghz=None)
        return config

    @property
    def identity(self) -> dict:
        """What identifies this bank in a model checkpoint: path, shape, seed, creation time."""
        identity = {
            "path": str(self.path.resolve()),
            "shape": list(self.images.shape),
            "seed": self.attrs.get("seed"),
            "created": self.attrs.get("created"),
            "protolib_version": self.attrs.get("protolib_version"),
        }
        if self.band_index is not None:
            identity["band_ghz"] = self.frequencies_ghz[0]
        return identity

    @property
    def file_state(self) -> dict:
        """The bank file's size and modification time: a bank rewritten in place gets new embeddings."""
        stat = self.path.stat()
        return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}

    def check_unchanged(self) -> None:
        """Refuse, in one line, a bank file replaced or rewritten since this bank was opened.

        A run reads the file it opened; a bank rewritten in place meanwhile (another ``simulate
        --out`` of the same path) would leave the run's report naming a file that no longer holds what
        was matched. Runs call this before they publish their products.
        """
        now = _file_identity(self.path) if self.path.exists() else None
        if now != self._opened:
            raise ProtolibInputError(
                f"{self.path}: the bank file was {'removed' if now is None else 'replaced or rewritten'} while this "
                "run read it, so its results would name a bank they do not come from; nothing was written. Run "
                "again once the bank is no longer being written."
            )

    @property
    def setup(self) -> dict:
        """The observing setup the bank's images were made for, as a checkpoint records it (:func:`check_same_setup`).

        Image size [px], pixel scale [au/px], field [au], frequency [GHz], distance [pc], beam FWHM
        axes [arcsec] and position angle [deg], image unit, and the names of the physical parameters.
        Values a bank does not record (an imported one's field or frequency) are NaN; so are an imported thesis
        bank's beam and distance, which its snapshots do not say (its zero beam means "not recorded").
        """
        number = {key: float(self.attrs.get(key, float("nan"))) for key in SETUP_NUMBERS}
        if str(self.attrs.get("source", "")).startswith("thesis snapshots"):
            number.update(
                {
                    key: float("nan")
                    for key in ("distance_pc", "beam_major_arcsec", "beam_minor_arcsec", "beam_position_angle_deg")
                }
            )
        setup = {
            "image_size": self.image_size,
            **number,
            "unit": self.unit,
            "parameters": list(self.physical_parameters),
        }
        if self.n_bands > 1:
            setup["frequencies_ghz"] = list(self.frequencies_ghz)
        return setup

    def parameter_table(self, names: list[str] | None = None) -> np.ndarray:
        """Parameters as a ``(n_systems, n_names)`` float64 array, in ``names`` order."""
        names = list(self.parameters) if names is None else names
        missing = [n for n in names if n not in self.parameters]
        if missing:
            raise ProtolibInputError(
                f"Bank {self.path} has no parameter(s) {missing}; it has {sorted(self.parameters)}."
            )
        return np.stack([self.parameters[n] for n in names], axis=1)

    def load_images(self, systems=None) -> np.ndarray:
        """Images of the given systems (all when ``None``) as a numpy array ``(n, P, H, W)`` (``(n, P, bands, H, W)``
        for a bank of several bands opened whole).

        Indices may be in any order and repeat; reads are done in sorted order, chunk-friendly.
        """
        if systems is None:
            return self.images[()]
        systems = np.asarray(systems, dtype=np.int64)
        if self.images.nbytes <= IMAGES_IN_MEMORY_BYTES:  # h5py reads scattered rows slowly: hold a small bank's images
            if self._held is None:
                self._held = self.images[()]
            return self._held[systems]
        order = np.argsort(systems, kind="stable")
        unique, inverse = np.unique(systems[order], return_inverse=True)
        block = self.images[unique]
        result = np.empty((len(systems), *self.images.shape[1:]), dtype=self.images.dtype)
        result[order] = block[inverse]
        return result

    def images_at(self, systems, projections) -> np.ndarray:
        """The images ``(n, H, W)`` of the given (system, projection) pairs, read system by system."""
        systems = np.asarray(systems, dtype=np.int64)
        projections = np.asarray(projections, dtype=np.int64)
        if systems.size == 0:
            return np.zeros((0, *self.images.shape[2:]), dtype=self.images.dtype)
        unique, inverse = np.unique(systems, return_inverse=True)
        return self.load_images(unique)[inverse, projections]

    @property
    def physical_parameters(self) -> list[str]:
        """The bank's parameters other than the nuisance physics (:data:`~protolib.parameters.NUISANCE_PARAMETERS`):
        what the summaries and the evaluation report by default. The nuisance ones stay in :attr:`parameters`."""
        return [n for n in self.parameters if n not in NUISANCE_PARAMETERS]

    @property
    def nuisance_parameters(self) -> list[str]:
        """The nuisance physics the bank stores (empty for banks made before it was drawn per system)."""
        return [n for n in self.parameters if n in NUISANCE_PARAMETERS]

    def iter_batches(self, systems, batch_size: int = 64) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(system_indices, images)`` in batches of whole systems, without loading the bank."""
        systems = np.asarray(systems)
        for start in range(0, len(systems), batch_size):
            chunk = systems[start : start + batch_size]
            yield chunk, self.load_images(chunk)

    def render_clean(self, system: int, device=None) -> np.ndarray:
        """Re-render every projection of one simulated system without beam and noise [Jy/pixel], ``(P, H, W)``
        (``(P, bands, H, W)`` for a bank of several bands opened whole)."""
        config = self.simulator_config
        if config is None:
            raise ProtolibInputError(
                f"{self.path} was not made by the protolib simulator; its clean models cannot be rendered."
            )
        device = default_device(device)
        n_proj = self.n_projections
        params = {
            k: torch.full((n_proj,), float(self.parameters[k][system]), dtype=torch.float64, device=device)
            for k in (*RENDER_KEYS, *NUISANCE_FIELDS)
            if k in self.parameters
        }
        with torch.no_grad():
            clean = render(
                params,
                torch.as_tensor(self.inclination[system], device=device),
                torch.as_tensor(self.position_angle[system], device=device),
                config,
                self.instrument.distance_pc,
            )
        return clean.cpu().numpy()

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        n, p, h, w = (*self.images.shape[:2], *self.images.shape[-2:])
        bands = (
            ""
            if self.n_bands == 1
            else f" in {self.n_bands} bands ({', '.join(f'{b:g}' for b in self.frequencies_ghz)} GHz)"
        )
        return (
            f"Bank({shown_path(self.path)!r}: {n} systems x {p} projections of {h}x{w} px{bands}, "
            f"{self.pixel_size_au:.3g} au/px, "
            f"{self.unit})"
        )


class _BandImages:
    """One band of a multi-band bank's ``/images``, read as a one-band bank's ``(systems, projections, H, W)`` dataset.

    It answers what readers of ``Bank.images`` ask of an h5py dataset (shape, dtype, nbytes, chunks,
    attrs, and indexing by systems and projections), reading only its band from the file.
    """

    ndim = 4

    def __init__(self, dataset: h5py.Dataset, band: int):
        self.dataset, self.band = dataset, band
        n, p, _, h, w = dataset.shape
        self.shape = (n, p, h, w)
        self.dtype, self.attrs = dataset.dtype, dataset.attrs
        self.chunks = None if dataset.chunks is None else (*dataset.chunks[:2], *dataset.chunks[3:])

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key) or len(key) > 4:
            raise IndexError("a band of a bank's images is indexed by system, projection, row and column (no ellipsis)")
        key = key + (slice(None),) * max(0, 2 - len(key))
        return self.dataset[(*key[:2], self.band, *key[2:])]


def _file_identity(path: Path) -> tuple:
    """The file's device, inode, size and modification time: any rewrite or replacement changes one of them."""
    stat = path.stat()
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


SETUP_NUMBERS = (
    "pixel_size_au",
    "field_of_view_au",
    "frequency_ghz",
    "distance_pc",
    "beam_major_arcsec",
    "beam_minor_arcsec",
    "beam_position_angle_deg",
)
SETUP_TOLERANCE = 1e-3
"""Relative difference below which two setups' numbers are the same (config files and FITS headers round them)."""
_SETUP_WORDS = {
    "pixel_size_au": ("pixel scale", "au/px"),
    "field_of_view_au": ("field", "au"),
    "frequency_ghz": ("frequency", "GHz"),
    "distance_pc": ("distance", "pc"),
    "beam_major_arcsec": ("beam major axis", "arcsec"),
    "beam_minor_arcsec": ("beam minor axis", "arcsec"),
    "beam_position_angle_deg": ("beam position angle", "deg"),
}


def setup_difference(recorded: dict, bank: Bank) -> str | None:
    """The first way ``bank``'s setup (:attr:`Bank.setup`) differs from ``recorded`` (another bank's), in words;
    ``None`` when alike.

    Numbers differ when their relative difference exceeds :data:`SETUP_TOLERANCE` (0.1%); a number
    either side does not record (NaN, or absent from an older checkpoint) is not compared. A beam
    position angle is compared modulo 180 deg, within 0.1 deg, and only for elliptical beams. The
    physical parameters must be the same names (the nuisance physics may differ); the unit must be the same.
    """
    mine = bank.setup
    for key in ("image_size", *SETUP_NUMBERS):
        a, b = recorded.get(key), mine[key]
        if not isinstance(a, (int, float)) or isinstance(a, bool) or not (math.isfinite(a) and math.isfinite(b)):
            continue
        if key == "beam_position_angle_deg":
            circular = all(
                math.isclose(m.get("beam_major_arcsec", 0), m.get("beam_minor_arcsec", 0), rel_tol=SETUP_TOLERANCE)
                for m in (recorded, mine)
            )
            if circular or abs((a - b + 90) % 180 - 90) <= 0.1:
                continue
        elif math.isclose(a, b, rel_tol=SETUP_TOLERANCE, abs_tol=0.0 if key != "image_size" else 0.5):
            continue
        word, unit = _SETUP_WORDS.get(key, ("image size", "px"))
        return f"{word} {a:.4g} {unit} against {b:.4g} {unit}"
    for key in ("unit", "parameters"):
        a, b = recorded.get(key), mine[key]
        if a is not None and (sorted(a) if key == "parameters" else a) != (sorted(b) if key == "parameters" else b):
            return f"{'image unit' if key == 'unit' else 'physical parameters'} {a} against {b}"
    return None


def check_same_setup(checkpoint: dict, bank: Bank, model: str | Path) -> None:
    """Refuse, in one line naming both values, a model whose training bank had another setup than ``bank``.

    ``checkpoint`` is the model's: its ``setup`` is its training bank's :attr:`Bank.setup`. A network
    trained at one pixel scale, field, frequency, beam or distance sees different images in another
    bank, and its matches there mean nothing. Tolerances: :func:`setup_difference`. The model's own
    bank (same shape and creation time) passes at once; a checkpoint of an older protolib records no
    setup and is then checked against nothing but its image size, with a warning.
    """
    import warnings

    trained_on = checkpoint.get("bank") if isinstance(checkpoint.get("bank"), dict) else {}
    if all(trained_on.get(k) == bank.identity[k] for k in ("shape", "created")):
        return
    recorded = checkpoint.get("setup")
    if not isinstance(recorded, dict):
        warnings.warn(
            f"Model {model} records no observing setup (an older checkpoint); only its image size is checked against "
            f"bank {bank.path}. Train it again to have pixel scale, beam and frequency checked.",
            stacklevel=2,
        )
        return
    difference = setup_difference(recorded, bank)
    if difference is not None:
        raise ProtolibInputError(
            f"Model {model} was trained on a bank of another setup than bank {bank.path}: {difference} "
            "(model's first); its matches there would mean nothing. Use the model trained for this bank's setup, "
            "or make a bank and model for it (`protolib bank-for`)."
        )


# pixels: larger bank images are refused when a bank is opened (a crafted file could ask for terabytes)
MAX_IMAGE_SIDE = 4096


def _check_structure(f: h5py.File, path: Path) -> None:
    """Refuse, in one line, a bank file whose layout is not the schema's (see the module docstring).

    Checked before anything is read: every dataset is present, stored in this file (no external
    links, soft links, external raw storage or virtual datasets, which would read other files),
    real-valued and of the right shape, and the attributes the pipeline uses are numbers.
    """
    version = f.attrs.get("schema_version", SCHEMA_VERSION)
    if not isinstance(version, (int, np.integer)) or int(version) > SCHEMA_VERSION:
        raise ProtolibInputError(
            f"{path}: bank schema version {version!r} is newer than this protolib reads "
            f"({SCHEMA_VERSION}); upgrade protolib."
        )
    # first: testing `name in f` follows links
    _refuse_data_elsewhere(f, ("images", "parameters", "viewing", "system_id", "bands"), path)
    required = ["images", "parameters", "viewing/inclination", "viewing/position_angle", "system_id"]
    for name in required:
        if name not in f:
            raise ProtolibInputError(
                f"{path}: the bank has no /{name}; it is incomplete or not written by protolib "
                "(see `protolib simulate` / `protolib import-thesis`)."
            )
    datasets = _own_datasets(f, path)
    _check_shapes(datasets, path)
    _check_bands(f, datasets["images"], path)
    _check_attributes(f, path, datasets["images"].shape[-1])


def _refuse_data_elsewhere(f: h5py.File, names, path: Path) -> None:
    """Refuse, in one line, any of ``names`` in ``f`` whose data lie in another file.

    The one check of HDF5 files protolib reads (banks, the thesis's snapshots): soft and external
    links, external raw storage and virtual datasets would read other files (``/etc/passwd`` as
    pixels). Links are tested first, without following them; names absent from ``f`` are skipped.
    """
    for name in names:
        link = f.get(name, getlink=True)
        if link is not None and not isinstance(link, h5py.HardLink):
            raise ProtolibInputError(
                f"{path}: /{name} is a {type(link).__name__} to elsewhere; the file must hold its own data "
                "(links could read any file): copy the data into it."
            )
    for name in names:
        item = f.get(name)
        if isinstance(item, h5py.Dataset) and (item.is_virtual or item.id.get_create_plist().get_external_count() > 0):
            raise ProtolibInputError(
                f"{path}: /{name} keeps its data outside this file (external or virtual storage), which "
                "could read any file; write the data into the file itself."
            )


def _own_datasets(f: h5py.File, path: Path) -> dict:
    """The bank's datasets by name, each checked to be a real-valued dataset stored in this file."""
    datasets = {
        "images": f["images"],
        "system_id": f["system_id"],
        "viewing/inclination": f["viewing/inclination"],
        "viewing/position_angle": f["viewing/position_angle"],
    }
    datasets.update({f"parameters/{n}": f["parameters"][n] for n in f["parameters"]})
    if "bands" in f:
        if not isinstance(f["bands"], h5py.Group):
            raise ProtolibInputError(f"{path}: /bands is a dataset, not the bands' table (a group of datasets).")
        datasets.update({f"bands/{n}": f["bands"][n] for n in f["bands"]})
    _refuse_data_elsewhere(f, list(datasets), path)
    for name, dataset in datasets.items():
        if not isinstance(dataset, h5py.Dataset):
            raise ProtolibInputError(f"{path}: /{name} is a group, not a dataset.")
        if dataset.dtype.kind not in "fiu":
            raise ProtolibInputError(f"{path}: /{name} holds {dataset.dtype} values, not real numbers.")
    return datasets


def _check_shapes(datasets: dict, path: Path) -> None:
    """Images of (systems, projections, side, side), and every other dataset of the shape they make it."""
    images = datasets["images"]
    if images.ndim not in (4, 5) or min(images.shape[:-2]) < 1 or images.shape[-2] != images.shape[-1]:
        raise ProtolibInputError(
            f"{path}: /images has shape {images.shape}; a bank holds (systems >= 1, projections >= 1, "
            "side, side) images, or (systems, projections, bands, side, side) in several bands."
        )
    if not 8 <= images.shape[-1] <= MAX_IMAGE_SIDE:
        raise ProtolibInputError(
            f"{path}: /images are {images.shape[-1]} pixels a side; protolib works with 8 to {MAX_IMAGE_SIDE}."
        )
    n, p = images.shape[:2]
    expected = {"system_id": (n,), "viewing/inclination": (n, p), "viewing/position_angle": (n, p)}
    expected.update({name: (n,) for name in datasets if name.startswith("parameters/")})
    for name, shape in expected.items():
        if datasets[name].shape != shape:
            raise ProtolibInputError(
                f"{path}: /{name} has shape {datasets[name].shape}, but the bank's images make it {shape}."
            )
    if len(np.unique(datasets["system_id"][()])) != n:
        raise ProtolibInputError(f"{path}: /system_id repeats identifiers; each system needs its own.")


def _check_bands(f: h5py.File, images, path: Path) -> None:
    """Images with a band axis have the ``/bands`` table (increasing positive frequencies, one row per band, and
    each band's beam and noise of the signs the instrument's take); images without one have none."""
    if images.ndim == 4:
        if "bands" in f:
            raise ProtolibInputError(
                f"{path}: the bank has a /bands table but its images have no band axis; the file is damaged."
            )
        return
    if "bands" not in f or "frequency_ghz" not in f["bands"]:
        raise ProtolibInputError(
            f"{path}: /images has a band axis but the bank has no /bands/frequency_ghz; the file is damaged "
            "or was not written by protolib."
        )
    n_bands = images.shape[2]
    for name in f["bands"]:
        values = np.asarray(f["bands"][name][()], dtype=np.float64)
        if values.shape != (n_bands,):
            raise ProtolibInputError(
                f"{path}: /bands/{name} has shape {values.shape}, but the images hold {n_bands} bands."
            )
        signed = values > 0 if name == "frequency_ghz" else values >= 0 if name != "beam_position_angle_deg" else True
        if not (np.all(np.isfinite(values)) and np.all(signed)):
            raise ProtolibInputError(
                f"{path}: /bands/{name} holds {values.tolist()}, not finite numbers of the sign it needs; "
                "the file is damaged."
            )
    frequencies = f["bands/frequency_ghz"][()]
    if np.any(np.diff(frequencies) <= 0):
        raise ProtolibInputError(
            f"{path}: /bands/frequency_ghz is {frequencies.tolist()}, not increasing; the file is damaged."
        )


_ATTRIBUTE_SIGNS = {
    "pixel_size_au": " > 0",
    "field_of_view_au": " > 0",
    "distance_pc": " > 0",
    "frequency_ghz": " > 0",
    "beam_major_arcsec": " >= 0",
    "beam_minor_arcsec": " >= 0",
    "beam_position_angle_deg": "",
    "noise_rms_jy_beam": " >= 0",
}
"""The bank's numeric root attributes and the sign each must have ("": any finite number); an unknown (NaN) pixel
size is accepted (an imported bank)."""


def _check_attributes(f: h5py.File, path: Path, side: int) -> None:
    """The numeric attributes are numbers of the right sign, agree with each other, and the JSON ones parse."""
    for key, sign in _ATTRIBUTE_SIGNS.items():
        if key in f.attrs:
            _check_number_attribute(f, path, key, sign)
    _check_field_is_pixels(f, path, side)
    _check_json_attributes(f, path)


def _check_number_attribute(f: h5py.File, path: Path, key: str, sign: str) -> None:
    """Refuse a numeric attribute that is not a number, not finite, or not of its ``sign`` (``_ATTRIBUTE_SIGNS``)."""
    try:
        value = float(f.attrs[key])
    except (TypeError, ValueError):
        raise ProtolibInputError(f"{path}: the bank attribute {key} = {f.attrs[key]!r} is not a number.") from None
    if key == "pixel_size_au" and math.isnan(value):
        return  # unknown (an imported bank)
    signed = {" > 0": value > 0, " >= 0": value >= 0, "": True}[sign]
    if not (math.isfinite(value) and signed):
        raise ProtolibInputError(
            f"{path}: the bank attribute {key} = {value} must be a finite number{sign}; the file is "
            "damaged or was not written by protolib."
        )


def _check_field_is_pixels(f: h5py.File, path: Path, side: int) -> None:
    """Refuse a field of view that is not the pixel size times the ``side`` pixels (within 1%)."""
    fov, pixel = f.attrs.get("field_of_view_au"), f.attrs.get("pixel_size_au")
    if (
        fov is not None
        and pixel is not None
        and math.isfinite(float(pixel))
        and abs(float(pixel) * side - float(fov)) > 0.01 * float(fov)
    ):
        raise ProtolibInputError(
            f"{path}: the bank's pixel size ({float(pixel):g} au) times its {side} pixels is not its field of "
            f"view ({float(fov):g} au); the attributes disagree."
        )


def _check_json_attributes(f: h5py.File, path: Path) -> None:
    """Refuse a ``simulator_config`` or ``prior`` attribute that is not JSON, or simulator settings that are not a
    configuration's."""
    for key in ("simulator_config", "prior"):
        if key in f.attrs:
            try:
                values = json.loads(_plain(f.attrs[key]))
            except (TypeError, ValueError):
                raise ProtolibInputError(f"{path}: the bank attribute {key} is not valid JSON.") from None
            if key == "simulator_config":  # checked at opening as a configuration's simulator: section is
                typed_settings(SimulatorConfig, values, f"{path}: the bank's simulator_config")


def _brightest_finite(out, systems: np.ndarray, images: np.ndarray) -> float:
    """The brightest pixel of a block of rendered ``images``, after refusing NaN or infinite pixels (before the bank
    replaces ``out``)."""
    bad = ~np.isfinite(images)
    if bad.any():
        where = systems[np.any(bad.reshape(len(systems), -1), axis=1)]
        raise ProtolibInputError(
            f"{out}: the simulator rendered {int(bad.sum())} NaN or infinite pixel(s) (system(s) "
            f"{_first(where)}); the settings are outside what it can render. Check the simulator, "
            "instrument and prior settings; the previous bank is kept."
        )
    return float(images.max())


def _check_written(tmp: Path, out) -> None:
    """The bank just written to ``tmp`` checked as opening ``out`` will check it, before it replaces ``out``."""
    with h5py.File(tmp, "r") as f:
        _check_structure(f, Path(out))


def _first(indices: np.ndarray, n: int = 5) -> str:
    shown = ", ".join(str(int(i)) for i in indices[:n])
    return shown + (f" and {len(indices) - n} more" if len(indices) > n else "")


def _system_bytes(images) -> int:
    return int(np.prod(images.shape[1:])) * images.dtype.itemsize


def _plain(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def bank_with_systems_from(base: Bank, other: Bank, systems, out: str | Path) -> Path:
    """A copy of ``base`` in which the images and parameters of ``systems`` are ``other``'s, written to ``out``
    atomically.

    For the domain-shift comparison: the fixed-physics bank, its test systems replaced by the same
    systems rendered with drawn nuisance physics (banks of one seed hold the same systems seen the
    same ways, :func:`draw_systems`). Both banks must have the same shape, pixels and instrument, and
    the replaced systems the same viewing angles; every other row, and the provenance, stay ``base``'s
    (``source`` records the replacement).
    """
    systems = np.asarray(systems, dtype=np.int64)
    _refuse_band_views(base, other)
    if base.images.shape != other.images.shape or abs(base.pixel_size_au - other.pixel_size_au) > 1e-9:
        raise ProtolibInputError(
            f"{other.path} ({other.images.shape}, {other.pixel_size_au:g} au/px) does not match {base.path} "
            f"({base.images.shape}, {base.pixel_size_au:g} au/px); make both with the same bank and simulator settings."
        )
    if not (
        np.allclose(base.inclination[systems], other.inclination[systems])
        and set(other.parameters) >= set(base.parameters)
    ):
        raise ProtolibInputError(
            f"Systems {systems.tolist()[:5]}... of {other.path} are not seen as in {base.path}, or it lacks some of "
            "its "
            "parameters; make both banks with the same seed."
        )
    with atomic_path(out, expected_bytes=base.path.stat().st_size) as tmp:
        shutil.copyfile(base.path, tmp)
        with h5py.File(tmp, "r+") as f:
            for system in systems:
                f["images"][system] = other.images[system]
            for name in base.parameters:
                values = f["parameters"][name][()]
                values[systems] = other.parameters[name][systems]
                f["parameters"][name][...] = values
            f.attrs["source"] = f"{base.attrs.get('source', '')}; systems {systems.tolist()} from {other.path}"
    return Path(out)


def concatenate_banks(first: Bank, second: Bank, out: str | Path) -> Path:
    """One bank holding ``first``'s systems, then ``second``'s, written to ``out`` atomically.

    For more test systems than a bank holds out (the domain-shift comparison): ``second``'s systems
    get the indices ``first.n_systems ...``, and every index of ``first`` keeps its meaning, so a
    network's split into training, validation and test systems still holds. Both banks must have the
    same projections, pixels, instrument, simulator settings and parameters; the provenance is
    ``first``'s, and ``source`` records the addition.
    """
    _refuse_band_views(first, second)
    _refuse_unlike_banks(first, second)
    n_first, n_all = first.n_systems, first.n_systems + second.n_systems
    with atomic_path(out, expected_bytes=first.path.stat().st_size + second.path.stat().st_size) as tmp:
        with h5py.File(tmp, "w") as f:
            images = f.create_dataset(
                "images", (n_all, *first.images.shape[1:]), dtype="f4", chunks=first.images.chunks
            )
            images.attrs.update(dict(first.images.attrs))
            for offset, bank in ((0, first), (n_first, second)):
                for start in range(0, bank.n_systems, 64):
                    stop = min(bank.n_systems, start + 64)
                    images[offset + start : offset + stop] = bank.images[start:stop]
            _write_concatenated_tables(f, first, second)
            f.attrs.update(first._file.attrs)
            f.attrs["source"] = (
                f"{first.attrs.get('source', '')}; systems {n_first}-{n_all - 1} from {second.path} (seed "
                f"{second.attrs.get('seed')})"
            )
            if "bands" in first._file:
                first._file.copy(first._file["bands"], f, "bands")
    return Path(out)


def _refuse_unlike_banks(first: Bank, second: Bank) -> None:
    """Refuse, in one line, a ``second`` bank that cannot follow ``first``: other projections or pixels, or another
    simulator, prior, instrument or parameters."""
    if first.images.shape[1:] != second.images.shape[1:] or abs(first.pixel_size_au - second.pixel_size_au) > 1e-9:
        raise ProtolibInputError(
            f"{second.path} ({second.images.shape[1:]}, {second.pixel_size_au:g} au/px) cannot follow {first.path} "
            f"({first.images.shape[1:]}, {first.pixel_size_au:g} au/px); make both with the same bank and simulator "
            "settings."
        )
    same = [
        first.attrs.get(k) == second.attrs.get(k) for k in ("simulator_config", "prior", *first.instrument.to_dict())
    ]
    if not all(same) or list(first.parameters) != list(second.parameters):
        raise ProtolibInputError(
            f"{second.path} was not rendered as {first.path} was (simulator, prior, instrument or parameters differ); "
            "make both with one configuration."
        )


def _write_concatenated_tables(f: h5py.File, first: Bank, second: Bank) -> None:
    """The viewing angles, system identifiers (``second``'s after ``first``'s largest) and parameters of ``first``
    then ``second``, with ``first``'s units and scales."""
    viewing = {
        name: np.concatenate([getattr(first, name), getattr(second, name)])
        for name in ("inclination", "position_angle")
    }
    viewing["system_id"] = np.r_[first.system_id, first.system_id.max() + 1 + second.system_id]
    write_bank_tables(
        f, viewing, {name: np.r_[first.parameters[name], second.parameters[name]] for name in first.parameters}
    )
    # imported or older banks: their own units and scales, not today's
    for name, info in first.parameter_info.items():
        f["parameters"][name].attrs.update(unit=info.unit, description=info.description, log_scale=info.log_scale)


def _refuse_band_views(*banks: Bank) -> None:
    """Files are combined whole: refuse a bank opened as one band of several (:meth:`Bank.band`)."""
    for bank in banks:
        if bank.band_index is not None:
            raise ProtolibInputError(
                f"{bank.path} was opened as one band of several; banks are combined whole: open it without a band."
            )


def draw_systems(
    n_systems: int, n_projections: int, seed: int, prior: Prior | None = None, config: SimulatorConfig | None = None
) -> dict[str, np.ndarray]:
    """Draw the physical parameters and viewing angles of a bank (no images), reproducibly.

    Returns a dict with every parameter ``(n_systems,)`` except ``envelope_mass`` (computed by
    :func:`render_systems`), and ``inclination``, ``position_angle`` ``(n_systems, n_projections)``.
    The nuisance physics comes from its own random stream (or ``config``'s values when the prior
    fixes it), so banks with drawn and with fixed nuisances hold the same systems seen the same ways.
    """
    prior = prior or Prior()
    rng = np.random.default_rng([int(seed), 0])
    fixed = (config or SimulatorConfig()).nuisance_values()
    systems = prior.sample(n_systems, rng, np.random.default_rng([int(seed), 3]), fixed)
    systems.update(sample_viewing(n_systems, n_projections, np.random.default_rng([int(seed), 1])))
    return systems


def render_systems(
    systems: dict[str, np.ndarray],
    indices: np.ndarray,
    config: SimulatorConfig,
    instrument: Instrument,
    seed: int,
    device: torch.device | str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Render every projection of the systems ``indices``; returns images and envelope masses.

    Noise for system ``i`` comes from :func:`protolib.runtime.system_rng` (``seed``, ``i``), so the
    result does not depend on how systems are grouped into calls. When ``systems`` holds only some
    rows of a bank, its ``system_index`` array gives each row's index in the whole bank. In several
    bands each band is seen through its own beam and noise (:meth:`Instrument.per_band`).

    Returns:
        ``(len(indices), P, H, W)`` float32 images in the instrument's unit (``(len(indices), P, bands, H, W)``
        in several bands), and ``(len(indices),)`` envelope masses [Msun].
    """
    device = default_device(device)
    indices = np.asarray(indices)
    n_proj = systems["inclination"].shape[1]
    per_system = {
        k: torch.as_tensor(systems[k][indices], device=device) for k in (*RENDER_KEYS, *NUISANCE_FIELDS) if k in systems
    }
    per_image = {k: v.repeat_interleave(n_proj) for k, v in per_system.items()}
    inclination = torch.as_tensor(systems["inclination"][indices].reshape(-1), device=device)
    position_angle = torch.as_tensor(systems["position_angle"][indices].reshape(-1), device=device)
    instruments = instrument.per_band(len(config.bands_ghz))
    images = []
    with torch.no_grad():
        for j, i in enumerate(indices):
            # One system per call: the result is then the same however systems are grouped.
            own = slice(j * n_proj, (j + 1) * n_proj)
            clean = render(
                {k: v[own] for k, v in per_image.items()},
                inclination[own],
                position_angle[own],
                config,
                instrument.distance_pc,
            )
            noise_index = int(systems["system_index"][i]) if "system_index" in systems else int(i)
            images.append(_observe_system(clean, instruments, config, seed, noise_index))
        images = np.stack(images)
        masses = envelope_mass({k: v.to("cpu") for k, v in per_system.items()}, config).numpy()
    return images.astype(np.float32), masses


def _observe_system(
    clean: torch.Tensor, instruments: list[Instrument], config: SimulatorConfig, seed: int, noise_index: int
) -> np.ndarray:
    """One system's clean projections [Jy/pixel] seen through each band's beam and noise, the noise drawn from the
    system's own stream (:func:`protolib.runtime.system_rng`): ``(P, H, W)``, or ``(P, bands, H, W)`` in several
    bands."""
    clean = clean.cpu().reshape(clean.shape[0], len(instruments), *clean.shape[-2:])
    bands = [
        seen.observe(
            clean[:, band].contiguous(),
            config.pixel_size_au,
            system_rng(seed, noise_index, stream=_noise_stream(band, config)),
        )
        for band, seen in enumerate(instruments)
    ]
    return (bands[0] if len(bands) == 1 else torch.stack(bands, dim=1)).numpy()


def _noise_stream(band: int, config: SimulatorConfig) -> int:
    """The random stream of a band's noise: the reference band's is a one-band bank's (2), so that band of a bank
    in several bands is, pixel for pixel, the one-band bank of the same seed; the others have streams of their own."""
    return 2 if band == config.reference_band else 1002 + band


def check_beam_fits_field(config: SimulatorConfig, instrument: Instrument) -> None:
    """Refuse, before any rendering, a beam wider than the field of view: it would be convolved with a kernel of
    more pixels than the image (a field of 1e-9 au asks for terabytes), and nothing of the source would be seen."""
    beam = instrument.beam
    if beam is None:
        return
    beam_au = beam.major_arcsec * instrument.distance_pc
    if beam_au > config.field_of_view_au:
        pixels = beam_au / (config.field_of_view_au / config.image_size)
        raise ProtolibInputError(
            f"The instrument's beam ({beam.major_arcsec:g}\" = {beam_au:.3g} au at {instrument.distance_pc:g} pc) is "
            "wider than the "
            f"simulator's field of view ({config.field_of_view_au:g} au; the beam would span {pixels:.3g} of its "
            f"{config.image_size} "
            "pixels); set simulator.field_of_view_au (--fov) to at least a few beams, or instrument.beam_major_arcsec "
            "to a smaller beam."
        )


def simulate_bank(
    out: str | Path,
    n_systems: int,
    n_projections: int = 8,
    *,
    seed: int = 0,
    config: SimulatorConfig | None = None,
    instrument: Instrument | None = None,
    prior: Prior | None = None,
    systems_per_batch: int = 8,
    device: torch.device | str | None = None,
    progress: bool = True,
    threads: int | None = 1,
    workers: int = 1,
) -> Path:
    """Simulate a bank and write it to ``out`` (HDF5), atomically.

    The file appears only when complete: an interrupted run leaves any previous ``out`` untouched.
    The same arguments give the same file contents, bit for bit (apart from the creation time),
    whatever ``threads`` and however the systems are grouped.

    ``threads`` is the number of torch threads used while rendering on the CPU (restored afterwards;
    ``None``: torch's setting). One is the default: on a machine shared with other jobs a second
    thread loses more to waiting than it gains (benchmarks/README.md, "The bank command"); use
    processes for parallelism: ``workers > 1`` renders on that many local processes of ``threads``
    threads each, this one and ``workers - 1`` others (a standard-library process pool: a Dask cluster
    costs more to start and to gather shards than a bank of thousands of images takes to render;
    :func:`protolib.cluster.simulate_bank_parallel` is for clusters). The file is the same whatever ``workers``.

    Example:
        >>> simulate_bank("bank.h5", n_systems=100, n_projections=8, seed=1)  # doctest: +SKIP
    """
    config = config or SimulatorConfig()
    instrument = instrument or Instrument()
    prior = prior or Prior()
    _refuse_impossible_bank(n_systems, n_projections, config, instrument)
    systems = draw_systems(n_systems, n_projections, seed, prior, config)
    # the compiled kernels for a large bank, in every worker
    rendering = settle_compile(config, n_systems * n_projections, device)
    chunks = [
        np.arange(start, min(n_systems, start + systems_per_batch)) for start in range(0, n_systems, systems_per_batch)
    ]
    written = dict(seed=seed, config=config, instrument=instrument, prior=prior, progress=progress)
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        if workers > 1 and default_device(device).type == "cpu":
            _write_with_workers(out, systems, chunks, workers, threads or 1, compile=rendering.compile, **written)
        else:
            blocks = ((idx, *render_systems(systems, idx, rendering, instrument, seed, device)) for idx in chunks)
            write_simulated_bank(out, systems, blocks, **written)
    finally:
        torch.set_num_threads(previous)
    return Path(out)


def _refuse_impossible_bank(n_systems: int, n_projections: int, config: SimulatorConfig, instrument: Instrument):
    """Refuse, before anything is drawn, a bank of no system or projection, and a beam of any band wider than the
    field (:func:`check_beam_fits_field`)."""
    if n_systems < 1 or n_projections < 1:
        raise ProtolibInputError(
            f"A bank needs at least one system and one projection (got {n_systems} and {n_projections})."
        )
    # an instrument.bands list of another length is refused here
    for seen in instrument.per_band(len(config.bands_ghz)):
        check_beam_fits_field(config, seen)


def _render_block(task: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Worker task of :func:`_write_with_workers`: the images and envelope masses of one block of systems."""
    rows, config, instrument, seed, compile = task
    return render_systems(
        rows,
        np.arange(len(rows["system_index"])),
        SimulatorConfig(**config, compile=compile),
        Instrument(**instrument),
        seed,
        "cpu",
    )


def _write_with_workers(out, systems: dict, chunks: list, workers: int, threads: int, compile: str, **written) -> None:
    """Render ``chunks`` of systems on this process and ``workers - 1`` local worker processes into the bank ``out``;
    ``compile``: the simulator's setting, settled (:func:`~protolib.simulator.settle_compile`).

    This process renders too, from the first chunk on, while the worker processes start (each imports torch
    and protolib, seconds that a bank of a few thousand images would otherwise wait through with a core
    idle); the workers take chunks from the end. A chunk's images do not depend on which process rendered
    it (one system per call, one torch thread, noise from the system's own stream), so the file is the same.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    rendering = replace(written["config"], compile=compile)
    settings = (written["config"].to_dict(), written["instrument"].to_dict(), written["seed"], compile)

    def here(idx):
        return render_systems(systems, idx, rendering, written["instrument"], written["seed"], "cpu")

    def task(idx):
        return ({**{k: v[idx] for k, v in systems.items()}, "system_index": idx}, *settings)

    pool = ProcessPoolExecutor(
        workers - 1, mp_context=multiprocessing.get_context("spawn"), initializer=start_worker, initargs=(threads,)
    )

    def submit(idx):
        return pool.submit(_render_block, task(idx))

    try:
        blocks = ((idx, *result) for idx, result in share_work(chunks, here, submit, 2 * (workers - 1)))
        write_simulated_bank(out, systems, blocks, **written)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def write_simulated_bank(
    out,
    systems: dict,
    blocks,
    *,
    seed: int,
    config: SimulatorConfig,
    instrument: Instrument,
    prior: Prior,
    progress: bool = True,
    description: str = "Simulating bank",
) -> None:
    """Write a bank atomically from drawn ``systems`` and ``blocks`` of ``(indices, images, envelope_masses)``.

    The blocks may come from this process (:func:`simulate_bank`) or from shards rendered elsewhere
    (:func:`protolib.cluster.simulate_bank_parallel`): the file is the same either way. In several
    bands the images have a band axis (chunked one band at a time, so one band reads alone) and the
    bank a ``/bands`` table (see the module's schema).
    """
    n_systems, n_projections = systems["inclination"].shape
    size, n_bands = config.image_size, len(config.bands_ghz)
    with atomic_path(
        out, expected_bytes=n_systems * n_projections * (n_bands * size * size * 4 + 16) + 8 * 10 * n_systems
    ) as tmp:
        with h5py.File(tmp, "w") as f:
            images = _create_images(f, n_systems, n_projections, config, instrument)
            env_mass = _write_blocks(out, images, blocks, description, progress)
            tables = {**systems, "envelope_mass": env_mass}
            write_bank_tables(f, tables, {k: v for k, v in tables.items() if k in PARAMETERS})
            write_bank_attributes(
                f, seed=seed, config=config, instrument=instrument, prior=prior, source="protolib simulator"
            )
        _check_written(tmp, out)


def _create_images(
    f: h5py.File, n_systems: int, n_projections: int, config: SimulatorConfig, instrument: Instrument
) -> h5py.Dataset:
    """A simulated bank's empty ``/images``, chunked by about a MiB of whole systems (and by band, in several)."""
    size, n_bands = config.image_size, len(config.bands_ghz)
    bands = (n_bands,) if n_bands > 1 else ()
    chunk_systems = max(1, min(n_systems, (1 << 20) // (n_projections * size * size * 4)))
    images = f.create_dataset(
        "images",
        (n_systems, n_projections, *bands, size, size),
        dtype="f4",
        chunks=(chunk_systems, n_projections, *(1 for _ in bands), size, size),
    )
    images.attrs["unit"] = instrument.unit
    images.attrs["axes"] = "system, projection, band, north, west" if bands else "system, projection, north, west"
    return images


def _write_blocks(out, images: h5py.Dataset, blocks, description: str, progress: bool) -> np.ndarray:
    """Write the ``blocks`` of ``(indices, images, envelope_masses)`` into ``images``; returns the envelope masses.

    Refused, before the bank replaces ``out``: a NaN or infinite pixel, and a bank without one positive pixel.
    """
    n_systems, n_projections = images.shape[:2]
    env_mass = np.zeros(n_systems)
    bar = tqdm(total=n_systems * n_projections, unit="img", desc=description, disable=not progress)
    brightest = -np.inf
    for idx, block_images, block_mass in blocks:
        brightest = max(brightest, _brightest_finite(out, idx, block_images))
        images[idx[0] : idx[-1] + 1] = block_images
        env_mass[idx] = block_mass
        bar.update(len(idx) * n_projections)
    bar.close()
    if not brightest > 0:
        raise ProtolibInputError(
            f"{out}: every rendered image is zero or negative; the bank would hold no emission to "
            "match. Check the simulator and prior settings."
        )
    return env_mass


def _write_band_table(f: h5py.File, config: SimulatorConfig, instrument: Instrument) -> None:
    """A bank's ``/bands`` table: each band's frequency, beam and noise (banks in several bands only)."""
    group = f.create_group("bands")
    group.create_dataset("frequency_ghz", data=np.asarray(config.bands_ghz, dtype="f8")).attrs["unit"] = "GHz"
    seen = instrument.per_band(len(config.bands_ghz))
    for key in BAND_SETTINGS:
        group.create_dataset(key, data=np.asarray([getattr(band, key) for band in seen], dtype="f8"))
        group[key].attrs["unit"] = "Jy/beam" if key.startswith("noise") else "deg" if key.endswith("deg") else "arcsec"


def write_bank_tables(f: h5py.File, viewing: dict, parameters: dict) -> None:
    """Write a bank's ``/parameters`` (with units), ``/viewing`` angles and ``/system_id`` into the open file ``f``."""
    group = f.create_group("parameters")
    for name in [n for n in PARAMETERS if n in parameters] + [n for n in parameters if n not in PARAMETERS]:
        ds = group.create_dataset(name, data=np.asarray(parameters[name], dtype="f8"))
        info = PARAMETERS.get(name, Parameter(name, "", ""))
        ds.attrs.update(unit=info.unit, description=info.description, log_scale=info.log_scale)
    view = f.create_group("viewing")
    for name in ("inclination", "position_angle"):
        ds = view.create_dataset(name, data=np.asarray(viewing[name], dtype="f8"))
        ds.attrs["unit"] = "deg"
    f.create_dataset(
        "system_id", data=np.asarray(viewing.get("system_id", np.arange(len(viewing["inclination"]))), dtype="i8")
    )


def write_bank_attributes(
    f,
    *,
    seed,
    config: SimulatorConfig | None,
    instrument: Instrument,
    prior: Prior | None,
    source: str,
    pixel_size_au=None,
):
    """Write a bank's provenance attributes (format, schema, version, seed, simulator, prior, instrument, pixel size)
    into ``f``,
    and the ``/bands`` table of a bank in several bands (whose root attributes are then its reference band's)."""
    f.attrs["format"] = FORMAT
    f.attrs["schema_version"] = SCHEMA_VERSION
    f.attrs["protolib_version"] = __version__
    f.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    f.attrs["seed"] = -1 if seed is None else int(seed)
    f.attrs["source"] = source
    if config is not None:
        f.attrs["pixel_size_au"] = config.pixel_size_au
        f.attrs["field_of_view_au"] = config.field_of_view_au
        f.attrs["frequency_ghz"] = config.frequency_ghz
        f.attrs["simulator_config"] = json.dumps(config.to_dict())
        if len(config.bands_ghz) > 1:
            _write_band_table(f, config, instrument)
        # the root's setup is the reference band's
        instrument = instrument.per_band(len(config.bands_ghz))[config.reference_band]
    else:
        f.attrs["pixel_size_au"] = float("nan") if pixel_size_au is None else float(pixel_size_au)
    for key, value in instrument.single().to_dict().items():
        f.attrs[key] = float(value)
    if prior is not None:
        f.attrs["prior"] = json.dumps(prior.to_dict())


# ---------------------------------------------------------------------------------------------
# The thesis's own layout: one HDF5 file per snapshot.

THESIS_DATASETS: dict[str, str] = {
    "mass": "stellar_mass",
    "accretion_rate": "accretion_rate",
    "disk_size": "disk_radius",
    "Envelope_mass": "envelope_mass",
    "luminosity": "luminosity",
    "temperature": "temperature",
    "age": "age",
}


@dataclass
class ImportReport:
    """What :func:`import_thesis_snapshots` did: files imported and files skipped, with reasons."""

    imported: list[str]
    skipped: dict[str, str]


def import_thesis_snapshots(
    folder: str | Path,
    out: str | Path,
    *,
    n_projections: int = 8,
    pixel_size_au: float | None = None,
    on_error: str = "raise",
    progress: bool = True,
) -> ImportReport:
    """Convert a folder of the thesis's per-snapshot HDF5 files into one protolib bank.

    Each file must hold ``intensity_projection_1`` ... ``intensity_projection_{n_projections}``
    (2-D images, all of one shape) and the scalar datasets of :data:`THESIS_DATASETS`
    (``mass``, ``accretion_rate``, ``disk_size``, ``Envelope_mass``, ``luminosity``,
    ``temperature``, ``age``). Viewing angles are unknown in that layout and stored as NaN.

    Arguments:
        folder: the folder of ``*.h5`` / ``*.hdf5`` files (sorted by name; the system id is the index).
        out: the bank to write.
        pixel_size_au: the images' pixel size, if known (stored in the bank).
        on_error: ``"raise"`` stops at the first bad file with a message naming it and the problem;
            ``"skip"`` leaves bad files out and reports each in the returned :class:`ImportReport`.
    """
    folder = Path(folder)
    files = _snapshot_files(folder, out, n_projections, pixel_size_au)
    images, params, imported, skipped = _read_thesis_snapshots(files, n_projections, on_error, progress)
    if not images:
        raise ProtolibInputError(f"None of the {len(files)} files in {folder} could be imported: {skipped}")
    _write_imported_bank(out, images, params, imported, folder, pixel_size_au)
    return ImportReport(imported=imported, skipped=skipped)


def _snapshot_files(folder: Path, out, n_projections: int, pixel_size_au: float | None) -> list[Path]:
    """The folder's snapshot files, sorted by name, once the import's arguments are checked (``out`` must not be
    one of them: it would be overwritten)."""
    if not folder.is_dir():
        raise ProtolibInputError(f"{folder} is not a folder of snapshot files.")
    if n_projections < 1:
        raise ProtolibInputError(f"--projections must be at least 1, got {n_projections}.")
    if pixel_size_au is not None and not (math.isfinite(pixel_size_au) and pixel_size_au > 0):
        raise ProtolibInputError(f"--pixel-size-au must be a positive number of au, got {pixel_size_au}.")
    files = sorted([*folder.glob("*.h5"), *folder.glob("*.hdf5")])
    if not files:
        raise ProtolibInputError(f"No .h5 or .hdf5 files in {folder}.")
    if Path(out).exists() and any(Path(out).resolve() == f.resolve() for f in files):
        raise ProtolibInputError(
            f"{out}: --out is one of the snapshot files being imported, which would be overwritten; write elsewhere."
        )
    return files


def _write_imported_bank(
    out, images: list, params: dict, imported: list[str], folder: Path, pixel_size_au: float | None
) -> None:
    """Write the snapshots' images and parameters as a bank, atomically: viewing angles unknown (NaN), unit
    "arbitrary", no beam or noise, and the snapshot files' names in ``/source_files``."""
    n, n_projections = len(images), images[0].shape[0]
    shape = images[0].shape
    viewing = {
        "inclination": np.full((n, n_projections), np.nan),
        "position_angle": np.full((n, n_projections), np.nan),
        "system_id": np.arange(n),
    }
    stacked = np.stack(images).astype("f4")
    with atomic_path(out, expected_bytes=stacked.nbytes + 64 * n * (n_projections + 16)) as tmp:
        with h5py.File(tmp, "w") as f:
            ds = f.create_dataset("images", data=stacked, chunks=(1, n_projections, *shape[1:]))
            ds.attrs["unit"] = "arbitrary"
            ds.attrs["axes"] = "system, projection, north, west"
            write_bank_tables(f, viewing, {k: np.array(v) for k, v in params.items()})
            f.create_dataset("source_files", data=np.array([Path(p).name for p in imported], dtype="S"))
            write_bank_attributes(
                f,
                seed=None,
                config=None,
                instrument=Instrument(beam_major_arcsec=0.0, noise_rms_jy_beam=0.0),
                prior=None,
                source=f"thesis snapshots from {folder}",
                pixel_size_au=pixel_size_au,
            )
        _check_written(tmp, out)


def _read_thesis_snapshots(files: list[Path], n_projections: int, on_error: str, progress: bool):
    """Every snapshot's images and parameters: ``(image stacks, {parameter: values}, files imported, {file: why
    skipped})``."""
    images, params, imported, skipped = [], {v: [] for v in THESIS_DATASETS.values()}, [], {}
    shape = None
    for path in tqdm(files, desc="Importing snapshots", disable=not progress):
        try:
            stack, values = _read_thesis_snapshot(path, n_projections)
            if shape is not None and stack.shape != shape:
                raise ProtolibInputError(
                    f"{path}: images are {stack.shape[1:]} pixels but earlier files had {shape[1:]}."
                )
        except ProtolibInputError as error:
            if on_error != "skip":
                raise
            skipped[str(path)] = str(error)
            continue
        shape = stack.shape
        images.append(stack)
        for key, value in values.items():
            params[key].append(value)
        imported.append(str(path))
    return images, params, imported, skipped


def _read_thesis_snapshot(path: Path, n_projections: int) -> tuple[np.ndarray, dict[str, float]]:
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise ProtolibInputError(f"{path}: not a readable HDF5 file ({error}).") from None
    with handle as f:
        names = [f"intensity_projection_{k}" for k in range(1, n_projections + 1)]
        _refuse_data_elsewhere(f, [*names, *THESIS_DATASETS], path)
        missing = [n for n in [*names, *THESIS_DATASETS] if n not in f]
        if missing:
            raise ProtolibInputError(f"{path}: missing dataset(s) {', '.join(missing)}.")
        stack = np.stack([np.asarray(f[n][()], dtype=np.float32) for n in names])
        if stack.ndim != 3:
            raise ProtolibInputError(f"{path}: intensity projections must be 2-D images, got shape {stack.shape[1:]}.")
        values = {}
        for key, name in THESIS_DATASETS.items():
            value = np.asarray(f[key][()], dtype=np.float64)
            if value.size != 1 or not math.isfinite(float(value.reshape(-1)[0])):
                raise ProtolibInputError(f"{path}: dataset {key} must be one finite number, got {value!r}.")
            values[name] = float(value.reshape(-1)[0])
    return stack, values
