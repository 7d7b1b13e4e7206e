"""The learning stages as configured runs: settings from a configuration, and checkpoints made once.

:func:`autoencoder_settings` and :func:`siamese_settings` give the ``autoencoder:`` and ``siamese:``
sections of a :class:`~protolib.config.RunConfig`, with overrides, as the keyword arguments of the
training functions. :func:`ensure_autoencoder` and
:func:`ensure_siamese` return a configuration's checkpoint, training it (through the same call as
``protolib train-autoencoder`` / ``train-siamese``) only when it is missing or was made from another
bank or other settings. The notebooks use these, so each runs alone in a fresh kernel.
"""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from pathlib import Path

from ..autoencoder import train_autoencoder
from ..config import stage_settings
from ..runtime import ProtolibInputError
from ..siamese import train_siamese
from ..splits import split_systems
from ..training import load_checkpoint

__all__ = ["autoencoder_settings", "siamese_settings", "ensure_autoencoder", "ensure_siamese", "run_split"]


def autoencoder_settings(config, overrides: dict | None = None) -> dict:
    """The ``autoencoder`` section as ``{"model", "images", "augmentation", "training"}`` settings.

    ``overrides`` is a nested dict on top of the section, e.g. ``{"model": {"use_flux": False}}``.
    """
    return stage_settings(config, "autoencoder", overrides)


def siamese_settings(config, overrides: dict | None = None) -> dict:
    """The ``siamese`` section as ``{"model", "target", "loss", "pairs", "augmentation", "training"}`` settings."""
    return stage_settings(config, "siamese", overrides)


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
    same_bank = {k: checkpoint["bank"].get(k) for k in ("shape", "seed", "created")} == {
        k: bank.identity[k] for k in ("shape", "seed", "created")
    }
    stored = checkpoint["config"]
    same_settings = all(
        _plain(v) == stored.get(k, checkpoint.get(k))
        for k, v in settings.items()
        if k not in ("images", "target", "model")
    )
    same_images = all(checkpoint.get("preprocessing", {}).get(k) == v for k, v in settings.get("images", {}).items())
    same_target = "target" not in settings or checkpoint.get("target") == _plain(settings["target"])
    model = {k: v for k, v in _plain(settings["model"]).items() if k != "image_size"}
    same_model = all(stored["model"].get(k) == v for k, v in model.items())
    return (
        same_bank
        and same_settings
        and same_images
        and same_target
        and same_model
        and checkpoint["split"] == split.to_dict()
    )


def ensure_autoencoder(
    config, bank, name: str = "autoencoder.pt", overrides: dict | None = None, progress: bool = True
) -> Path:
    """The configuration's autoencoder checkpoint in ``config.artifacts_dir``, trained when missing or stale."""
    path = config.artifacts_dir / name
    settings, split = autoencoder_settings(config, overrides), run_split(config, bank)
    if not _is_current(path, "autoencoder", bank, settings, split):
        train_autoencoder(bank, path, split=split, progress=progress, **settings)
    return path


def ensure_siamese(
    config,
    bank,
    autoencoder: str | Path,
    name: str = "siamese.pt",
    overrides: dict | None = None,
    progress: bool = True,
) -> Path:
    """The configuration's Siamese checkpoint in ``config.artifacts_dir``, trained when missing or stale."""
    path = config.artifacts_dir / name
    settings, split = siamese_settings(config, overrides), run_split(config, bank)
    fresh = _is_current(path, "siamese", bank, settings, split)
    source = Path(load_checkpoint(path)["autoencoder"]) if fresh else None
    if source is not None and (
        not source.exists()
        or source.resolve() != Path(autoencoder).resolve()
        or source.stat().st_mtime > path.stat().st_mtime
    ):
        fresh = False
    if not fresh:
        train_siamese(bank, autoencoder, path, split=split, progress=progress, **settings)
    return path
