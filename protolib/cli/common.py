"""What every ``protolib`` sub-command shares: argument types, configuration options and messages.

Options that set a configuration value are declared with :func:`add_setting`, naming the dotted
key they set (``"matching.top_k"``). Their default is the configuration's value, so the command line
cannot drift from it; ``tests/test_architecture.py`` checks that every such key exists in the
configuration tree with the option's type. Every sub-command also takes ``--config NAME`` and
``--set SECTION.KEY=VALUE``; :func:`run_config` loads the configuration with both applied.

The options are declared on :mod:`argparse` by hand rather than derived by a library such as
jsonargparse: deriving them at start-up would import the whole configuration tree, and with it
torch, for ``protolib --help``; and protolib's errors are one line naming the user's input, which
argparse gives through :class:`ProtolibParser`.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ..runtime import ProtolibInputError

__all__ = [
    "ProtolibParser",
    "path_argument",
    "output_file",
    "seed_argument",
    "add_setting",
    "add_config_options",
    "run_config",
    "parse_set",
    "setting_overrides",
    "one_line",
    "say",
    "run_reporting_warnings",
    "beam_argument",
    "refuse_overwriting_input",
    "check_figure_path",
    "SETTING_PREFIX",
]

SETTING_PREFIX = "setting:"  # argparse destination of an option that sets a configuration key


class ProtolibParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, like protolib's own: ``protolib CMD: error: ...``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def path_argument(text: str) -> Path:
    """A path argument; an empty one (``--out ''``) would mean the current folder, and is refused."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; give a file or folder name")
    return Path(text)


def output_file(example_suffix: str):
    """The type of an option naming one output file: a path that does not end with ``/`` (which names a folder)."""

    def argument(text: str) -> Path:
        path = path_argument(text)
        if text.endswith("/") or Path(text).name in ("", ".", ".."):
            raise argparse.ArgumentTypeError(
                f"{text!r} names a folder, but this is a file; give a file name, e.g. "
                f"{text.rstrip('/') or '.'}/out{example_suffix}"
            )
        return path

    return argument


def seed_argument(text: str) -> int:
    """A random seed: a whole number >= 0 (numpy's generators take no negative seeds)."""
    from ..runtime import MAX_SEED

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid seed {text!r}: give a whole number >= 0") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"invalid seed {value}: give a whole number >= 0 (and at most 2**63 - 1)")
    return value


def add_setting(p, *flags: str, key: str, help: str, **options) -> None:
    """An option that sets configuration key ``key`` (``SECTION.KEY`` or ``SECTION.PART.KEY``); default: the
    configuration's."""
    if options.get("action") is None and "choices" not in options:
        options.setdefault("metavar", flags[0].lstrip("-").upper().replace("-", "_"))
    p.add_argument(
        *flags, dest=SETTING_PREFIX + key, default=None, help=f"{help} (default: the configuration's {key})", **options
    )


def add_config_options(p) -> None:
    """``--config`` and ``--set``, which every sub-command takes."""
    p.add_argument(
        "--config",
        default=None,
        help="configuration name (configs/NAME.yaml) or YAML path (default: $PROTOLIB_CONFIG or 'default')",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        dest="set",
        help="override any configuration setting, e.g. --set matching.top_k=50 (repeatable; values read as YAML)",
    )


def parse_set(items: list[str] | None) -> dict:
    """``["autoencoder.model.latent_size=16", ...]`` as a nested dict (values read as YAML)."""
    from ..runtime import load_yaml

    result: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ProtolibInputError(f"--set expects SECTION.KEY=VALUE (e.g. siamese.loss.kind=mse), got {item!r}.")
        node = result
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ProtolibInputError(f"--set {item!r}: {part} is a setting, not a section.")
        node[leaf] = load_yaml(value, f"--set {item!r}: the value")
    return result


def setting_overrides(args) -> dict:
    """The options declared with :func:`add_setting` that were given, as nested configuration overrides."""
    result: dict = {}
    for dest, value in vars(args).items():
        if dest.startswith(SETTING_PREFIX) and value is not None:
            node = result
            *parents, leaf = dest[len(SETTING_PREFIX) :].split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
    return result


def run_config(args):
    """The configuration named by ``--config``, with ``--set`` and then the named options on top."""
    from ..config import apply_overrides, load_config

    return load_config(args.config, apply_overrides(parse_set(args.set), setting_overrides(args)))


def one_line(message: str, limit: int = 600) -> str:
    """A message on one line: libraries (wcslib, PyYAML, torch) put context on further lines."""
    text = " ".join(message.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def say(command: str, message: str, good: bool) -> None:
    """A finding on stdout, or, when it is a warning, on stderr as ``protolib COMMAND: warning: ...``."""
    if good:
        print(message)
    else:
        print(f"protolib {command}: warning: {one_line(message.removeprefix('WARNING: '))}", file=sys.stderr)


def run_reporting_warnings(command: str, action):
    """Run ``action()``, printing each warning as one line ``protolib COMMAND: warning: ...``."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return action()
        finally:
            seen = set()
            for item in caught:
                if issubclass(item.category, UserWarning) and str(item.message) not in seen:
                    seen.add(str(item.message))
                    print(f"protolib {command}: warning: {one_line(str(item.message))}", file=sys.stderr)


def beam_argument(values, where: str):
    """``--beam MAJ MIN PA`` as a :class:`~protolib.instrument.Beam` (``None`` when not given)."""
    from ..instrument import Beam

    if values is None:
        return None
    major, minor, pa = values
    if not (major > 0 and minor > 0 and math.isfinite(major) and math.isfinite(minor) and math.isfinite(pa)):
        raise ProtolibInputError(
            f"{where}: --beam needs finite, positive FWHM axes in arcsec and a finite PA in degrees "
            f"(MAJ MIN PA), got {major} {minor} {pa}."
        )
    return Beam(major, minor, pa)


def refuse_overwriting_input(out: Path, inputs) -> None:
    """Refuse an output path that is one of the inputs (the input would be lost)."""
    if out.exists():
        for given in inputs:
            if given is not None and Path(given).exists() and Path(given).resolve() == out.resolve():
                raise ProtolibInputError(
                    f"{out}: --out is the input file itself, which would be overwritten; write elsewhere."
                )


def check_figure_path(path: Path) -> None:
    """Refuse a figure path matplotlib cannot write, before any work is done."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backend_bases import FigureCanvasBase

    suffix = path.suffix.lstrip(".").lower() or "png"
    formats = FigureCanvasBase.get_supported_filetypes()
    if path.is_dir():
        raise ProtolibInputError(f"{path} is a folder; give a figure file name, e.g. {path / 'figure.png'}.")
    if suffix not in formats:
        raise ProtolibInputError(
            f"{path}: matplotlib cannot write .{suffix} figures; use one of {', '.join(sorted(formats))}."
        )
