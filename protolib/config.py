"""Named run configurations (``configs/*.yaml``): one typed tree of every stage's settings.

A configuration has one section per pipeline stage, and each section is read into a dataclass
whose fields carry their units and reasons (``bank`` -> :class:`BankSettings`, ``prior`` ->
:class:`~protolib.parameters.Prior`, ``simulator`` ->
:class:`~protolib.simulator.SimulatorConfig`, ``matching`` -> :class:`~protolib.matching.MatchingSettings`,
and so on; :data:`SECTION_TYPES` lists them). Every section is checked when the file is loaded, by
the one validator :func:`~protolib.runtime.typed_settings`, so a typo fails at once, naming the key
and the known ones. The command line (``--config NAME --set SECTION.KEY=VALUE``) and the notebooks
(``PROTOLIB_CONFIG``, ``default`` when unset; the test suite runs them with ``tiny``) read the same
tree. Building artifacts from it is the pipelines' job (:mod:`protolib.pipelines`).
"""

from __future__ import annotations

import copy
import inspect
import io
import os
import re
import tokenize
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path

from .attribution import AttributionSettings
from .autoencoder import AutoencoderConfig
from .embedding_maps import EmbeddingMapSettings
from .evaluation import EvaluationSettings
from .images import AugmentationConfig, ImagePreprocessing
from .instrument import Instrument
from .matching import MatchingSettings
from .parameters import Prior
from .runtime import ProtolibInputError, load_yaml, plain_name, typed_settings
from .siamese import LossConfig, PairConfig, SiameseConfig
from .simulator import SimulatorConfig
from .target_similarity import TargetDefinition
from .training import TrainingConfig
from .tuning import TuneSettings

__all__ = [
    "RunConfig",
    "BankSettings",
    "SplitSettings",
    "AutoencoderSettings",
    "SiameseSettings",
    "SECTION_TYPES",
    "load_config",
    "config_from_data",
    "find_configs_dir",
    "apply_overrides",
    "stage_settings",
    "setting_type",
    "setting_help",
]


@dataclass
class BankSettings:
    """How many systems the configuration's bank holds, and its seed."""

    n_systems: int = 400  # systems (snapshots) in the bank
    n_projections: int = 8  # viewing angles per system, as the thesis banks had
    seed: int = 0  # one seed for parameters, viewing angles and noise

    def __post_init__(self):
        for name, least, expected in (
            ("n_systems", 1, "a bank needs at least one system"),
            ("n_projections", 1, "a bank needs at least one projection"),
            ("seed", 0, "a seed is a whole number >= 0"),
        ):
            value = getattr(self, name)
            if isinstance(value, int) and not least <= value < 2**63:
                raise ProtolibInputError(
                    f"bank.{name} = {value}: {expected} (and below 2**63); give one from {least} to 2**63 - 1."
                )


@dataclass
class SplitSettings:
    """Fractions of systems for training, validation and test, and the split's seed."""

    # of the bank's systems; a system's projections stay together
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0  # seed of the shuffle before the cut


IMAGE_SETTINGS = tuple(
    sorted(
        {f.name for f in fields(ImagePreprocessing)} - {"distance_pc", "pixels_per_beam", "flux_centre", "flux_spread"}
    )
)


@dataclass
class AutoencoderSettings:
    """The ``autoencoder:`` section: the keyword arguments of :func:`~protolib.autoencoder.train_autoencoder`."""

    model: AutoencoderConfig = field(default_factory=AutoencoderConfig)  # the network's shape
    images: dict = field(default_factory=dict)  # how images are stretched before the network (IMAGE_SETTINGS keys)
    # random rotations, flips, beam and noise jitter
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)  # epochs, batch size, learning rate, seed


@dataclass
class SiameseSettings:
    """The ``siamese:`` section: the keyword arguments of :func:`~protolib.siamese.train_siamese`."""

    model: SiameseConfig = field(default_factory=SiameseConfig)  # embedding and head sizes
    target: TargetDefinition = field(default_factory=TargetDefinition)  # the target similarity from parameters
    loss: LossConfig = field(default_factory=LossConfig)  # how predicted similarity is compared with the target
    pairs: PairConfig = field(default_factory=PairConfig)  # which pairs of images a batch trains on
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)  # as for the autoencoder
    training: TrainingConfig = field(default_factory=TrainingConfig)  # epochs, batch size, learning rate, seed


STAGE_PARTS = {"autoencoder": AutoencoderSettings, "siamese": SiameseSettings}

# Each section's dataclass. `name` is the configuration's name (its artifacts folder).
SECTION_TYPES = {
    "bank": BankSettings,
    "prior": Prior,
    "simulator": SimulatorConfig,
    "instrument": Instrument,
    "split": SplitSettings,
    "autoencoder": AutoencoderSettings,
    "siamese": SiameseSettings,
    "matching": MatchingSettings,
    "evaluation": EvaluationSettings,
    "tuning": TuneSettings,
    "attribution": AttributionSettings,
    "embedding_map": EmbeddingMapSettings,
}
SECTIONS = ("name", *SECTION_TYPES)


@dataclass
class RunConfig:
    """A whole configuration: where it came from and every stage's typed settings.

    ``sections`` keeps the file's sections as read (after overrides), for stages that apply further
    overrides of their own (:func:`stage_settings`).
    """

    name: str
    path: Path | None
    bank: BankSettings = field(default_factory=BankSettings)
    prior: Prior = field(default_factory=Prior)
    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)
    instrument: Instrument = field(default_factory=Instrument)
    split: SplitSettings = field(default_factory=SplitSettings)
    autoencoder: AutoencoderSettings = field(default_factory=AutoencoderSettings)
    siamese: SiameseSettings = field(default_factory=SiameseSettings)
    matching: MatchingSettings = field(default_factory=MatchingSettings)
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    tuning: TuneSettings = field(default_factory=TuneSettings)
    attribution: AttributionSettings = field(default_factory=AttributionSettings)
    embedding_map: EmbeddingMapSettings = field(default_factory=EmbeddingMapSettings)
    sections: dict = field(default_factory=dict)
    artifacts: Path | None = None  # where its bank and models live (None: artifacts/NAME, or $PROTOLIB_ARTIFACTS/NAME)

    @property
    def artifacts_dir(self) -> Path:
        """Where this configuration's bank, models and results live: ``artifacts`` when set, else a folder
        named after it under ``artifacts/`` (``PROTOLIB_ARTIFACTS`` overrides)."""
        if self.artifacts is not None:
            return Path(self.artifacts)
        root = os.environ.get("PROTOLIB_ARTIFACTS")
        base = Path(root) if root else _repository_root() / "artifacts"
        return base / self.name

    @property
    def bank_path(self) -> Path:
        return self.artifacts_dir / "bank.h5"

    def section(self, name: str) -> dict:
        """A section as written in the file (an empty dict when the configuration has none)."""
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


def _config_path(name_or_path: str | os.PathLike) -> Path:
    """The file of a configuration: a path as given, or a name looked up in the ``configs/`` folders."""
    path = Path(name_or_path)
    if path.suffix:
        return path
    configs = find_configs_dir()
    if configs is None:
        raise ProtolibInputError(
            f"No configs/ folder found to look up configuration {name_or_path!r}; pass a path to a YAML file."
        )
    path = configs / f"{name_or_path}.yaml"
    if not path.exists():  # a configs/ folder of the working directory without it: the repository's own configs
        path = next(
            (
                folder / f"{name_or_path}.yaml"
                for folder in _configs_dirs()
                if (folder / f"{name_or_path}.yaml").exists()
            ),
            path,
        )
    return path


def load_config(name_or_path: str | os.PathLike | None = None, overrides: dict | None = None) -> RunConfig:
    """Load a configuration by name (``configs/NAME.yaml``) or path.

    With no argument the name comes from ``PROTOLIB_CONFIG``, else ``default``. ``overrides`` is a
    nested dict (``{"bank": {"n_systems": 50}}``) applied on top of the file.
    """
    named = name_or_path or os.environ.get("PROTOLIB_CONFIG")
    if named is None and find_configs_dir() is None:  # installed without the repository: the built-in defaults
        return _config_from({}, Path("default"), None, overrides)
    path = _config_path(named or "default")
    if not path.exists():
        available = sorted(p.stem for p in path.parent.glob("*.yaml")) if path.parent.exists() else []
        raise ProtolibInputError(f"Configuration {path} does not exist (available: {available}).")
    if path.is_dir():
        raise ProtolibInputError(
            f"Configuration {path} is a folder; give a YAML file (e.g. {path / 'default.yaml'}) or a configuration "
            "name."
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ProtolibInputError(
            f"Configuration {path} is not a text file (it is binary); give a YAML configuration."
        ) from None
    data = load_yaml(text, str(path)) or {}
    if not isinstance(data, dict):
        raise ProtolibInputError(
            f"{path}: a configuration is a mapping of sections (bank:, simulator:, ...), not a {type(data).__name__}."
        )
    return _config_from(data, path, path, overrides)


def config_from_data(data: dict, path: Path) -> RunConfig:
    """The typed configuration of the sections ``data`` (a parsed YAML mapping), as if read from the file ``path``."""
    return _config_from(data, path, path, None)


def _config_from(data: dict, where: Path, path: Path | None, overrides: dict | None) -> RunConfig:
    """The typed configuration of the sections ``data`` with ``overrides`` on top (``where`` names it in messages)."""
    data = apply_overrides(data, overrides or {})
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ProtolibInputError(f"{where}: unknown section(s) {unknown}; known ones are {list(SECTIONS)}.")
    sections = {name: data.get(name) or {} for name in SECTION_TYPES if name in data}
    typed = {name: _typed_section(name, sections.get(name), f"{where} [{name}]") for name in SECTION_TYPES}
    later = {
        name: value
        for name, value in sections.items()
        if name not in ("bank", "prior", "simulator", "instrument", "split")
    }
    name = (
        plain_name(
            data["name"],
            f"{where}: name",
            "it names the configuration's folder of banks and models under artifacts/ (or $PROTOLIB_ARTIFACTS)",
        )
        if "name" in data
        else where.stem
    )
    return RunConfig(name=name, path=path, sections=later, **typed)


def _typed_section(name: str, values, where: str):
    """One section as its dataclass; a stage of several parts (``autoencoder``, ``siamese``) part by part."""
    if name in STAGE_PARTS:
        return STAGE_PARTS[name](**stage_settings_from(values, name, where))
    return typed_settings(SECTION_TYPES[name], values, where)


def stage_settings_from(section, stage: str, where: str) -> dict:
    """A learning stage's section (``autoencoder`` or ``siamese``) as ``{part: typed settings}``.

    The parts are the fields of :class:`AutoencoderSettings` or :class:`SiameseSettings`; ``images``
    stays a dict of :data:`IMAGE_SETTINGS` keys, because the bank fills in the rest of the preprocessing.
    """
    if section is None:
        section = {}
    if not isinstance(section, dict):
        raise ProtolibInputError(f"{where}: expected settings (KEY: VALUE lines), got {section!r}.")
    parts = {f.name: f for f in fields(STAGE_PARTS[stage])}
    unknown = set(section) - set(parts)
    if unknown:
        raise ProtolibInputError(f"{where}: unknown part(s) {sorted(unknown)}; known ones are {sorted(parts)}.")
    result = {}
    for name in parts:
        values = section.get(name) or {}
        if name == "images":
            if not isinstance(values, dict) or set(values) - set(IMAGE_SETTINGS):
                bad = sorted(set(values) - set(IMAGE_SETTINGS)) if isinstance(values, dict) else values
                raise ProtolibInputError(
                    f"{where[:-1]}.{name}]: unknown setting(s) {bad}; known ones are {list(IMAGE_SETTINGS)}."
                )
            result[name] = dict(values)
        else:
            cls = setting_type(STAGE_PARTS[stage], name)
            result[name] = typed_settings(cls, values, f"{where[:-1]}.{name}]")
    return result


def stage_settings(config: RunConfig, stage: str, overrides: dict | None = None) -> dict:
    """``config``'s ``autoencoder`` or ``siamese`` section with nested ``overrides`` on top, part by part."""
    section = apply_overrides(config.section(stage), overrides or {})
    return stage_settings_from(section, stage, f"{config.path} [{stage}]")


def apply_overrides(data: dict, overrides: dict) -> dict:
    """``data`` with the nested ``overrides`` merged in (a new dict; neither input changes)."""
    merged = copy.deepcopy(data)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = apply_overrides(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


@cache
def _field_comments(cls) -> dict:
    """Each field's comment in ``cls``'s source, its unit and reason: the comment on the field's line, or else the
    comment lines directly above it (where the line would be too long for both)."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    trailing = {
        token.start[0]: token.string.lstrip("# ").strip()
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT and token.line.strip()[:1] != "#"
    }
    comments, names, above = {}, {f.name for f in fields(cls)}, []
    for number, line in enumerate(source.splitlines(), 1):
        if line.strip().startswith("#"):
            above.append(line.strip().lstrip("# ").strip())
            continue
        match = re.match(r"\s*(\w+)\s*:", line)
        text = trailing.get(number) or " ".join(above)
        if match and match.group(1) in names and match.group(1) not in comments and text:
            comments[match.group(1)] = text
        above = []
    return comments


def setting_type(cls, name: str):
    """The dataclass (or plain type) of field ``name`` of the settings dataclass ``cls``."""
    import typing

    if cls in STAGE_PARTS.values() and name == "images":  # a dict of these preprocessing fields
        return ImagePreprocessing
    return typing.get_type_hints(cls)[name]


def setting_help(key: str) -> str:
    """The documentation of a dotted configuration key, e.g. ``"matching.top_k"``, from its field's comment."""
    cls, *parts = [SECTION_TYPES[key.split(".")[0]], *key.split(".")[1:]]
    for part in parts[:-1]:
        cls = setting_type(cls, part)
    return _field_comments(cls).get(parts[-1], "")
