"""The learning stages as configured runs: settings from a YAML config, and artifacts made once.

:func:`autoencoder_settings` and :func:`siamese_settings` read the ``autoencoder:`` and ``siamese:``
sections of a :class:`~protolib.config.RunConfig` into typed settings. :func:`ensure_autoencoder` and
:func:`ensure_siamese` return a configuration's checkpoint, training it (through the same call as
``protolib train-autoencoder`` / ``train-siamese``) only when it is missing or was made from another
bank or other settings. The notebooks use these, so each runs alone in a fresh kernel.
"""

from __future__ import annotations

from dataclasses import asdict, fields, is_dataclass
from pathlib import Path

from ..autoencoder import AutoencoderConfig, train_autoencoder
from ..images import AugmentationConfig, ImagePreprocessing
from ..runtime import ProtolibInputError, typed_settings
from ..siamese import LossConfig, PairConfig, SiameseConfig, train_siamese
from ..splits import split_systems
from ..targets import TargetDefinition
from ..training import TrainingConfig, load_checkpoint

__all__ = ["autoencoder_settings", "siamese_settings", "ensure_autoencoder", "ensure_siamese", "run_split"]

IMAGE_SETTINGS = {f.name for f in fields(ImagePreprocessing)} - {"distance_pc", "pixels_per_beam", "flux_centre", "flux_spread"}
AUTOENCODER_PARTS = {"model": AutoencoderConfig, "images": dict, "augmentation": AugmentationConfig, "training": TrainingConfig}
SIAMESE_PARTS = {"model": SiameseConfig, "target": TargetDefinition, "loss": LossConfig, "pairs": PairConfig,
                 "augmentation": AugmentationConfig, "training": TrainingConfig}


def _settings(config, stage: str, parts: dict, overrides: dict | None) -> dict:
    from ..config import apply_overrides

    section = apply_overrides(config.section(stage), overrides or {})
    unknown = set(section) - set(parts)
    if unknown:
        raise ProtolibInputError(f"{config.path} [{stage}]: unknown part(s) {sorted(unknown)}; known ones are {sorted(parts)}.")
    result = {}
    for name, cls in parts.items():
        values = section.get(name) or {}
        if cls is dict:
            if set(values) - IMAGE_SETTINGS:
                raise ProtolibInputError(f"{config.path} [{stage}.{name}]: unknown setting(s) {sorted(set(values) - IMAGE_SETTINGS)}; "
                                         f"known ones are {sorted(IMAGE_SETTINGS)}.")
            result[name] = dict(values)
        else:
            result[name] = typed_settings(cls, values, f"{config.path} [{stage}.{name}]")
    return result


def autoencoder_settings(config, overrides: dict | None = None) -> dict:
    """The ``autoencoder`` section as ``{"model", "images", "augmentation", "training"}`` settings.

    ``overrides`` is a nested dict on top of the section, e.g. ``{"model": {"use_flux": False}}``.
    """
    return _settings(config, "autoencoder", AUTOENCODER_PARTS, overrides)


def siamese_settings(config, overrides: dict | None = None) -> dict:
    """The ``siamese`` section as ``{"model", "target", "loss", "pairs", "augmentation", "training"}`` settings."""
    return _settings(config, "siamese", SIAMESE_PARTS, overrides)


def run_split(config, bank):
    """The configuration's split of ``bank``'s systems into train, validation and test."""
    return split_systems(bank.n_systems, tuple(config.split.fractions), config.split.seed)


def _plain(value):
    return asdict(value) if is_dataclass(value) else value


def _is_current(path: Path, kind: str, bank, settings: dict, split) -> bool:
    if not path.exists():
        return False
    try:
        checkpoint = load_checkpoint(path, kind)
    except ProtolibInputError:
        return False
    same_bank = {k: checkpoint["bank"].get(k) for k in ("shape", "seed", "created")} == {k: bank.identity[k] for k in ("shape", "seed", "created")}
    stored = checkpoint["config"]
    same_settings = all(_plain(v) == stored.get(k, checkpoint.get(k)) for k, v in settings.items() if k not in ("images", "target", "model"))
    same_images = all(checkpoint.get("preprocessing", {}).get(k) == v for k, v in settings.get("images", {}).items())
    same_target = "target" not in settings or checkpoint.get("target") == _plain(settings["target"])
    model = {k: v for k, v in _plain(settings["model"]).items() if k != "image_size"}
    same_model = all(stored["model"].get(k) == v for k, v in model.items())
    return same_bank and same_settings and same_images and same_target and same_model and checkpoint["split"] == split.to_dict()


def ensure_autoencoder(config, bank, name: str = "autoencoder.pt", overrides: dict | None = None, progress: bool = True) -> Path:
    """The configuration's autoencoder checkpoint in ``config.artifacts_dir``, trained when missing or stale."""
    path = config.artifacts_dir / name
    settings, split = autoencoder_settings(config, overrides), run_split(config, bank)
    if not _is_current(path, "autoencoder", bank, settings, split):
        train_autoencoder(bank, path, split=split, progress=progress, **settings)
    return path


def ensure_siamese(config, bank, autoencoder: str | Path, name: str = "siamese.pt", overrides: dict | None = None, progress: bool = True) -> Path:
    """The configuration's Siamese checkpoint in ``config.artifacts_dir``, trained when missing or stale."""
    path = config.artifacts_dir / name
    settings, split = siamese_settings(config, overrides), run_split(config, bank)
    fresh = _is_current(path, "siamese", bank, settings, split)
    source = Path(load_checkpoint(path)["autoencoder"]) if fresh else None
    if source is not None and (not source.exists() or source.resolve() != Path(autoencoder).resolve() or source.stat().st_mtime > path.stat().st_mtime):
        fresh = False
    if not fresh:
        train_siamese(bank, autoencoder, path, split=split, progress=progress, **settings)
    return path
