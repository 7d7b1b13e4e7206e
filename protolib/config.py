"""Named run configurations (``configs/*.yaml``) and the artifacts they produce.

A configuration has one section per pipeline stage. ``bank``, ``simulator``, ``instrument`` and
``split`` are read into typed objects here; later stages read their own sections from
:attr:`RunConfig.sections`. The notebooks pick the configuration named by the environment variable
``PROTOLIB_CONFIG`` (``default`` when unset); the test suite runs them with ``tiny``.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .instrument import Instrument
from .runtime import ProtolibInputError, typed_settings
from .simulator import SimulatorConfig

__all__ = ["RunConfig", "BankSettings", "SplitSettings", "load_config", "ensure_bank", "find_configs_dir", "apply_overrides"]


@dataclass
class BankSettings:
    """How many systems the configuration's bank holds, and its seed."""

    n_systems: int = 400  # systems (snapshots) in the bank
    n_projections: int = 8  # viewing angles per system, as the thesis banks had
    seed: int = 0  # one seed for parameters, viewing angles and noise


@dataclass
class SplitSettings:
    """Fractions of systems for training, validation and test, and the split's seed."""

    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0


@dataclass
class RunConfig:
    """A whole configuration: where it came from and every stage's settings."""

    name: str
    path: Path | None
    bank: BankSettings = field(default_factory=BankSettings)
    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)
    instrument: Instrument = field(default_factory=Instrument)
    split: SplitSettings = field(default_factory=SplitSettings)
    sections: dict = field(default_factory=dict)

    @property
    def artifacts_dir(self) -> Path:
        """Where this configuration's bank, models and results live (``PROTOLIB_ARTIFACTS`` overrides)."""
        root = os.environ.get("PROTOLIB_ARTIFACTS")
        base = Path(root) if root else _repository_root() / "artifacts"
        return base / self.name

    @property
    def bank_path(self) -> Path:
        return self.artifacts_dir / "bank.h5"

    def section(self, name: str) -> dict:
        """A later stage's settings (an empty dict when the configuration has none)."""
        return copy.deepcopy(self.sections.get(name, {}))


def _repository_root() -> Path:
    configs = find_configs_dir()
    return configs.parent if configs is not None else Path.cwd()


def _configs_dirs() -> list[Path]:
    here = Path.cwd().resolve()
    candidates = [here, *here.parents, Path(__file__).resolve().parent.parent]
    return [c / "configs" for c in candidates if (c / "configs").is_dir() and any((c / "configs").glob("*.yaml"))]


def find_configs_dir() -> Path | None:
    """The ``configs/`` folder: beside the working directory, above it, or beside the package.

    A named configuration missing from this folder is also looked up in the others (so a ``configs/``
    of your own, e.g. with ``tuned.yaml``, does not hide the repository's ``default``).
    """
    folders = _configs_dirs()
    return folders[0] if folders else None


SECTIONS = ("name", "bank", "simulator", "instrument", "split", "autoencoder", "siamese", "matching", "evaluation", "tuning")


def _typed(cls, values: dict, where: str):
    return typed_settings(cls, values, where)


def load_config(name_or_path: str | os.PathLike | None = None, overrides: dict | None = None) -> RunConfig:
    """Load a configuration by name (``configs/NAME.yaml``) or path.

    With no argument the name comes from ``PROTOLIB_CONFIG``, else ``default``. ``overrides`` is a
    nested dict (``{"bank": {"n_systems": 50}}``) applied on top of the file.
    """
    name_or_path = name_or_path or os.environ.get("PROTOLIB_CONFIG") or "default"
    path = Path(name_or_path)
    if not path.suffix:
        configs = find_configs_dir()
        if configs is None:
            raise ProtolibInputError(f"No configs/ folder found to look up configuration {name_or_path!r}; pass a path to a YAML file.")
        path = configs / f"{name_or_path}.yaml"
        if not path.exists():  # a configs/ folder of the working directory without it: the repository's own configs
            path = next((folder / f"{name_or_path}.yaml" for folder in _configs_dirs() if (folder / f"{name_or_path}.yaml").exists()), path)
    if not path.exists():
        available = sorted(p.stem for p in path.parent.glob("*.yaml")) if path.parent.exists() else []
        raise ProtolibInputError(f"Configuration {path} does not exist (available: {available}).")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
        raise ProtolibInputError(f"{path} is not valid YAML{line}: {getattr(error, 'problem', None) or error}.") from None
    if not isinstance(data, dict):
        raise ProtolibInputError(f"{path}: a configuration is a mapping of sections (bank:, simulator:, ...), not a {type(data).__name__}.")
    data = apply_overrides(data, overrides or {})
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ProtolibInputError(f"{path}: unknown section(s) {unknown}; known ones are {list(SECTIONS)}.")
    for name in SECTIONS[1:]:
        if name in data and data[name] is not None and not isinstance(data[name], dict):
            raise ProtolibInputError(f"{path} [{name}]: expected settings (KEY: VALUE lines), got {data[name]!r}.")
    return RunConfig(
        name=str(data.pop("name", path.stem)),
        path=path,
        bank=_typed(BankSettings, data.pop("bank", {}), f"{path} [bank]"),
        simulator=_typed(SimulatorConfig, data.pop("simulator", {}), f"{path} [simulator]"),
        instrument=_typed(Instrument, data.pop("instrument", {}), f"{path} [instrument]"),
        split=_typed(SplitSettings, data.pop("split", {}), f"{path} [split]"),
        sections=data,
    )


def apply_overrides(data: dict, overrides: dict) -> dict:
    """``data`` with the nested ``overrides`` merged in (a new dict; neither input changes)."""
    merged = copy.deepcopy(data)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = apply_overrides(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def ensure_bank(config: RunConfig, progress: bool = True):
    """The configuration's bank: opened when it exists and matches the configuration, else simulated.

    A bank made with other settings (size, seed, simulator, instrument) is rebuilt, so a notebook
    never silently uses a stale bank.
    """
    from .bank import Bank, simulate_bank

    path = config.bank_path
    if path.exists():
        bank = Bank(path)
        if _bank_matches(bank, config):
            return bank
        bank.close()
    simulate_bank(
        path,
        config.bank.n_systems,
        config.bank.n_projections,
        seed=config.bank.seed,
        config=config.simulator,
        instrument=config.instrument,
        progress=progress,
    )
    return Bank(path)


def _bank_matches(bank, config: RunConfig) -> bool:
    same_shape = bank.images.shape[:2] == (config.bank.n_systems, config.bank.n_projections)
    same_sim = json.loads(bank.attrs.get("simulator_config", "{}")) == json.loads(json.dumps(config.simulator.to_dict()))
    same_inst = all(abs(float(bank.attrs.get(k, float("nan"))) - float(v)) < 1e-12 for k, v in config.instrument.to_dict().items())
    return same_shape and same_sim and same_inst and int(bank.attrs.get("seed", -1)) == config.bank.seed
