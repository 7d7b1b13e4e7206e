"""The ``protolib`` command line: one sub-command per pipeline step, over :mod:`protolib.pipelines`.

- :mod:`~protolib.cli.simulation`: ``simulate``, ``import-thesis``, ``simulate-observation``;
- :mod:`~protolib.cli.learning`: ``train-autoencoder``, ``train-siamese``, ``tune``;
- :mod:`~protolib.cli.observations`: ``observe``, ``match``;
- :mod:`~protolib.cli.fitted`: ``bank-for``, a bank and networks made for a map;
- :mod:`~protolib.cli.results`: ``evaluate``, ``attribute``, ``embedding-map``;
- :mod:`~protolib.cli.common`: what they share, among it the options that set configuration keys.

Every sub-command takes ``--config`` and ``--set SECTION.KEY=VALUE``. User mistakes raise
:class:`~protolib.runtime.ProtolibInputError` and are printed as one line, without a traceback;
``--debug`` shows the traceback.
"""

from __future__ import annotations

import sys

from ..runtime import ProtolibInputError
from .common import ProtolibParser, add_config_options, one_line
from .fitted import register_bank_for
from .learning import register_train_autoencoder, register_train_siamese, register_tune
from .observations import register_match, register_observe
from .results import (
    register_attribute,
    register_domain_shift,
    register_embedding_map,
    register_evaluate,
    register_out_of_family,
)
from .simulation import register_import_thesis, register_simulate, register_simulate_observation

__all__ = ["main", "build_parser"]

REGISTRY = [
    register_simulate,
    register_import_thesis,
    register_train_autoencoder,
    register_train_siamese,
    register_observe,
    register_simulate_observation,
    register_bank_for,
    register_match,
    register_evaluate,
    register_domain_shift,
    register_out_of_family,
    register_attribute,
    register_embedding_map,
    register_tune,
]


def build_parser() -> ProtolibParser:
    """The whole command line; every sub-command gets ``--config`` and ``--set``."""
    from .. import __version__

    parser = ProtolibParser(prog="protolib", description="Match images of protostellar systems to a simulated bank.")
    parser.add_argument("--version", action="version", version=f"protolib {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ProtolibParser)
    for register in REGISTRY:
        register(sub)
    for command in sub.choices.values():
        add_config_options(command)
    return parser


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a batch system's time limit, ``kill``), turned into an exception so that clean-up runs."""


_TERMINATION = {"caught": False, "repeating": False}
REPEAT_SIGTERM_S = 3.0  # a SIGTERM whose exception was lost is delivered again after this long


def _on_sigterm(signum, frame):
    """Raise :class:`_Terminated` where the main thread is, and make sure it is not lost.

    Python drops an exception raised while it runs a finaliser or a weak-reference callback
    ("Exception ignored in ..."), and a signal can land there: the run would then go on as if never
    told to stop. So until the exception has reached the command's handler, the signal is sent
    again every :data:`REPEAT_SIGTERM_S` seconds; once caught, a repeated SIGTERM is ignored so that
    clean-up is not interrupted.
    """
    if _TERMINATION["caught"]:
        return
    if not _TERMINATION["repeating"]:
        _TERMINATION["repeating"] = True
        _repeat_sigterm()
    raise _Terminated()


def _repeat_sigterm() -> None:
    import os
    import signal
    import threading
    import time

    def repeat():
        for _ in range(20):
            time.sleep(REPEAT_SIGTERM_S)
            if _TERMINATION["caught"]:
                return
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=repeat, name="protolib-sigterm", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command; returns the exit status (0 done, 2 refused input, 130 interrupted, 143 terminated).

    A refused input, and any failure to write an output (a full disk, a read-only folder), is one
    line on stderr: ``protolib COMMAND: error: ...``. SIGINT and SIGTERM stop the run with the
    previous outputs intact (every product is written under a temporary name and renamed).
    """
    import signal

    command = "protolib"
    try:
        if _in_main_thread():
            signal.signal(signal.SIGTERM, _on_sigterm)
        parser = build_parser()
        args = parser.parse_args(argv)
        command = f"protolib {args.command}" if getattr(args, "command", None) else command
        if not getattr(args, "handler", None):
            parser.print_help()
            return 2
        return _run_handler(args, command)
    except KeyboardInterrupt as interrupt:
        _TERMINATION["caught"] = True
        terminated = isinstance(interrupt, _Terminated)
        print(
            f"{command}: {'terminated (SIGTERM)' if terminated else 'interrupted'} before it started; nothing was "
            "written.",
            file=sys.stderr,
        )
        return 143 if terminated else 130


def _close_progress_bars() -> None:
    """End any progress bar's line, so that an error is printed on a line of its own."""
    tqdm_module = sys.modules.get("tqdm.std")
    if tqdm_module is not None:
        for bar in list(getattr(tqdm_module.tqdm, "_instances", [])):
            bar.close()


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _run_handler(args, command: str) -> int:
    finished = False
    try:
        args.handler(args)
        finished = True
    except (ProtolibInputError, OSError) as error:  # the user's input, or a file-system failure: one line
        if args.debug:
            raise
        from ..runtime import describe_os_error

        _close_progress_bars()
        message = str(error) if isinstance(error, ProtolibInputError) else describe_os_error(error)
        print(f"{command}: error: {one_line(message)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        _TERMINATION["caught"] = True
        terminated = isinstance(interrupt, _Terminated)
        print(
            f"{command}: {'terminated (SIGTERM)' if terminated else 'interrupted'}; the previous outputs are as they "
            "were "
            "(a training can be continued with --resume).",
            file=sys.stderr,
        )
        return 143 if terminated else 130
    finally:
        distributed = sys.modules.get("protolib.distributed")
        if distributed is not None:  # never imported: no process group was started (and torch may be half-imported)
            distributed.stop(wait=finished)
    return 0


if __name__ == "__main__":
    sys.exit(main())
