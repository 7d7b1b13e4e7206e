"""Where computations run, how random seeds are derived, and how artifacts are written safely."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where a device is needed, so that `protolib --help` and errors stay fast
    import torch

__all__ = [
    "default_device",
    "system_rng",
    "atomic_path",
    "output_folder",
    "run_lock",
    "check_output",
    "write_figure",
    "write_json",
    "ProtolibInputError",
    "describe_os_error",
    "interruptible",
    "available_memory_bytes",
    "check_memory",
    "describe_bytes",
    "remove_stale_temporaries",
    "typed_settings",
    "plain_json",
    "plain_name",
    "shown_path",
    "rounded",
    "load_yaml",
    "checked_seed",
    "MAX_SEED",
]


class ProtolibInputError(ValueError):
    """A problem with the user's input (a file, a value): the message says what and how to fix it."""


def plain_name(name, what: str, purpose: str) -> str:
    """``name`` when it is a plain name (letters, digits, ``_``, ``-``, ``.``; no ``..``), else one line naming
    ``what``.

    The one check of names that become file or folder names (a configuration's ``name``, ``tune
    --config-name``): a name that is a path (``../x``, ``/etc/x``) would write outside the folder
    meant for it. ``purpose`` says where the name goes.
    """
    text = str(name) if isinstance(name, (str, int)) and not isinstance(name, bool) else ""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", text) or ".." in text:
        raise ProtolibInputError(
            f"{what} {name!r}: give a plain name (letters, digits, '_', '-', '.'), not a path; {purpose}."
        )
    return text


def load_yaml(text: str, where: str):
    """``text`` read as YAML, safely (no ``!!python`` tags), with ``1e6`` and ``1e-3`` read as numbers as a
    person means them (plain YAML 1.1 reads them as text); a syntax error or a tag is one line naming ``where``."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*\.?[0-9_]*|\.[0-9_]+)[eE][-+]?[0-9]+$"),
        list("-+0123456789."),
    )
    try:
        return yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader with one more number format
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        tag = " (tags such as !!python/... are never read: they could run code)" if "tag" in str(problem) else ""
        raise ProtolibInputError(f"{where} is not valid YAML{line}: {' '.join(str(problem).split())}{tag}.") from None


def _type_problem(value, hint) -> str | None:
    """Why ``value`` is not of the annotated type ``hint`` (``None`` when it is, or the type is not checked)."""
    import types
    import typing

    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        problems = [_type_problem(value, option) for option in options]
        return None if any(p is None for p in problems) else problems[0]
    if hint is type(None):
        return None if value is None else "is not null"
    if hint is bool:
        return None if isinstance(value, bool) else "is not true or false"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "is not a whole number"
    if hint is float:
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "is not a number"
    if hint is str:
        return None if isinstance(value, str) else "is not text"
    if origin in (list, tuple) or hint in (list, tuple):
        return None if isinstance(value, (list, tuple)) else "is not a list"
    return None


MAX_SEED = 2**63 - 1  # numpy and torch take seeds up to this


def checked_seed(value, where: str) -> int:
    """``value`` as a random seed, a whole number from 0 to :data:`MAX_SEED`; anything else is one line naming ``where``
    (the one check of seeds, from the command line, a configuration or a checkpoint)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise ProtolibInputError(f"{where} = {value!r}: a seed is a whole number from 0 to 2**63 - 1.")
    return value


def typed_settings(cls, values, where: str):
    """``cls(**values)`` for a settings dataclass, after checking every key and every value's type.

    The one validator of configuration sections: an unknown key is named with the known ones, and a
    value of the wrong type (``epochs: abc``) is named with the field, in one line.
    """
    import dataclasses
    import typing

    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ProtolibInputError(
            f"{where}: expected settings (KEY: VALUE lines), got {type(values).__name__} {values!r}."
        )
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ProtolibInputError(f"{where}: unknown setting(s) {unknown}; known ones are {sorted(known)}.")
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - annotations that cannot be resolved are simply not checked
        hints = {}
    for name, value in values.items():
        problem = _type_problem(value, hints.get(name))
        if problem:
            raise ProtolibInputError(f"{where}: {name} = {value!r} {problem}.")
        if (name == "seed" or name.endswith("_seed")) and value is not None:
            checked_seed(value, f"{where}: {name}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:
        raise ProtolibInputError(f"{where}: {error}") from None


def interruptible(function, *args, poll_s: float = 0.2, **kwargs):
    """``function(*args, **kwargs)``, run so that SIGINT and SIGTERM stop the program within ``poll_s`` seconds.

    Python acts on a signal only between steps of Python code, so one long call into compiled code
    (numpy's SVD of a large matrix takes tens of seconds) would delay Ctrl-C or a batch system's
    SIGTERM until it returns. Here the call runs in a forked child process (which sees the arguments
    without copying them) and sends its result back; the parent waits in steps of ``poll_s`` seconds,
    so the signal acts at once, and the child is killed. Keep the result small: it is pickled.
    Where processes cannot be forked, or outside the main thread, ``function`` is simply called.

    Raises:
        ProtolibInputError: the child ended without a result (killed, e.g. for memory).
    """
    import multiprocessing
    import threading

    if (
        threading.current_thread() is not threading.main_thread()
        or "fork" not in multiprocessing.get_all_start_methods()
    ):
        return function(*args, **kwargs)
    receive, send = multiprocessing.get_context("fork").Pipe(duplex=False)
    child = multiprocessing.get_context("fork").Process(
        target=_run_and_send, args=(send, function, args, kwargs), daemon=True
    )
    child.start()
    send.close()
    try:
        while not receive.poll(poll_s):
            if not child.is_alive() and not receive.poll(0):
                raise ProtolibInputError(
                    f"A long computation ({getattr(function, '__name__', function)}) ended without a result (its "
                    f"process exited with {child.exitcode}, killed for memory?); give it less to do."
                )
        kind, value = receive.recv()
    except EOFError:
        raise ProtolibInputError(
            f"A long computation ({getattr(function, '__name__', function)}) ended without a result; "
            "give it less to do."
        ) from None
    finally:
        if child.is_alive():
            child.kill()
        child.join()
        receive.close()
    if kind == "error":
        raise value
    return value


def _run_and_send(send, function, args, kwargs) -> None:
    """In :func:`interruptible`'s child: run, and send ``("value", result)`` or ``("error", exception)``.

    Signals are the parent's to handle: the child ignores Ctrl-C and dies quietly on SIGTERM.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        result = ("value", function(*args, **kwargs))
    except Exception as error:  # noqa: BLE001 - handed to the parent
        result = ("error", error)
    send.send(result)
    send.close()


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform says, else the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def start_worker(threads: int = 1) -> None:
    """A worker process's start (a process pool's ``initializer``): torch on ``threads`` threads, and Ctrl-C left to
    the parent, which stops the pool."""
    import signal

    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)


def share_work(tasks: list, here, submit, in_flight: int) -> Iterator[tuple]:
    """``(task, result)`` for every task, in the order they are done: run ``here`` (a function of the task) from the
    first task on, or handed to worker processes (``submit``: a function of the task returning a future) from the
    last, ``in_flight`` at a time so that none waits for work.

    Written here rather than taken from :mod:`concurrent.futures`: its executors leave the calling process idle while
    its workers start and run, and a worker process costs seconds to start (torch and protolib imported), which a
    few tasks on a laptop's two cores would wait through with one core idle.
    """
    waiting, pending = list(tasks), []
    while waiting or pending:
        while waiting and len(pending) < in_flight:
            task = waiting.pop()
            pending.append((task, submit(task)))
        done = [item for item in pending if item[1].done()]
        for item in done:
            pending.remove(item)
            yield item[0], item[1].result()
        if done:
            continue
        if waiting:
            task = waiting.pop(0)
            yield task, here(task)
        else:
            task, future = pending.pop(0)
            yield task, future.result()


def available_memory_bytes() -> int | None:
    """The memory this machine can still give a run [bytes] (``MemAvailable``: free memory and what the kernel can
    reclaim).

    From ``psutil`` when it is installed, else ``/proc/meminfo``; ``None`` where neither tells.
    """
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def describe_bytes(n: float) -> str:
    """``n`` bytes in words a user reads at a glance: ``"3.2 GB"``, ``"410 MB"``."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n / 1e3:.3g} kB"


def check_memory(need_bytes: float, what: str, advice: str) -> None:
    """Refuse, in one line, a run whose estimated peak memory ``need_bytes`` exceeds the machine's available memory.

    ``what`` names the run and what makes it large (``"simulate: 32000 x 32000 rays per image"``);
    ``advice`` names the setting to change. Better refused at once than killed for memory an hour in,
    after other programs on the machine were pushed to swap.
    """
    available = available_memory_bytes()
    if available is not None and need_bytes > available:
        raise ProtolibInputError(
            f"{what} needs about {describe_bytes(need_bytes)} of memory, more than the {describe_bytes(available)} "
            f"this machine has available; {advice}."
        )


def default_device(device: str | torch.device | None = None) -> torch.device:
    """The device to compute on: the one asked for, else CUDA when present, else the CPU.

    The environment variable ``PROTOLIB_DEVICE`` (``cpu``, ``cuda``, ``cuda:1``) overrides the
    automatic choice.
    """
    import torch

    where = "--device"
    if device is None and os.environ.get("PROTOLIB_DEVICE"):
        device, where = os.environ["PROTOLIB_DEVICE"], "PROTOLIB_DEVICE"
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ProtolibInputError(f"{where} = {device!r} is not a device; use cpu, cuda or cuda:N.") from None
    if chosen.type not in ("cpu", "cuda"):
        raise ProtolibInputError(f"{where} = {device!r}: protolib runs on cpu or cuda, not {chosen.type}.")
    if chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ProtolibInputError(
                f"{where} = {device!r}, but this torch ({torch.__version__}) sees no CUDA device; use cpu."
            )
        if chosen.index is not None and chosen.index >= count:
            raise ProtolibInputError(
                f"{where} = {device!r}, but there are only {count} CUDA device(s) (cuda:0..cuda:{count - 1})."
            )
    return chosen


def system_rng(seed: int, system_index: int, stream: int = 0) -> np.random.Generator:
    """A random generator for one system, derived from the bank seed and the system's index.

    Deriving per system (rather than drawing from one stream in order) makes a system's noise the
    same however the bank is split into batches or workers.
    """
    return np.random.default_rng([int(seed), int(system_index), int(stream)])


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_HOST = socket.gethostname().replace(".", "-") or "host"


def describe_os_error(error: OSError, path: str | os.PathLike | None = None) -> str:
    """One line for a file-system failure: the path, what went wrong, and what to do."""
    where = path or error.filename or "the output"
    advice = {
        errno.ENOSPC: " Free some space, or write somewhere else (--out).",
        errno.EFBIG: " The file system (or a ulimit -f) does not allow a file this large; write somewhere else "
        "(--out).",
        errno.EDQUOT: " Your disk quota is full; free some space, or write somewhere else (--out).",
        errno.EACCES: " Choose a folder you can write to (--out).",
        errno.EPERM: " Choose a folder you can write to (--out).",
        errno.EROFS: " The file system is read-only; write somewhere else (--out).",
    }.get(error.errno, "")
    return f"{where}: could not write: {error.strerror or error}.{advice}"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(final: Path) -> list[Path]:
    """Delete the temporary files of ``final`` left by runs of this machine that were killed (SIGKILL, power loss).

    :func:`atomic_path` names its temporary files ``.<name>.<host>.<pid>.<random>.tmp``; one whose
    process no longer runs on this host is a leftover. Files of live processes and other hosts (a
    shared cluster file system) are left alone.
    """
    removed = []
    for candidate in final.parent.glob(f".{final.name}.{_HOST}.*.tmp"):
        pid = candidate.name[len(f".{final.name}.{_HOST}.") :].split(".")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _process_alive(int(pid)):
            with contextlib.suppress(OSError):
                candidate.unlink() if candidate.is_file() else shutil.rmtree(candidate)
                removed.append(candidate)
    return removed


def _kind(path: Path) -> str:
    """What ``path`` is, in words: a file, a folder, or a special file protolib must never replace."""
    import stat

    mode = path.stat().st_mode
    for test, name in (
        (stat.S_ISREG, "file"),
        (stat.S_ISDIR, "folder"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISFIFO, "FIFO (named pipe)"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return name
    return "special file"


def check_output(path: str | os.PathLike, *, folder: bool = False, command: str | None = None) -> Path:
    """Refuse, in one line, an output path of the wrong kind, before anything is computed.

    The one check of every output (:func:`atomic_path` and :func:`output_folder` call it; a command
    may call it earlier): a file's path must be new or a regular file, a folder's new or a folder
    (links followed), never a device, FIFO or socket, which a write would replace (``--out
    /dev/null``). With ``command``, a folder holding another command's products is refused too.
    """
    final = Path(path)
    if os.path.islink(final) and not final.exists():
        raise ProtolibInputError(f"{final} is a broken symbolic link; remove it or choose another --out.")
    if final.exists():
        kind = (
            _kind(final)
            if not os.path.islink(final) or _kind(final) in ("file", "folder")
            else f"link to a {_kind(final)}"
        )
        if kind == "folder" and not folder:
            raise ProtolibInputError(
                f"{final} is a folder; give a file name inside it, e.g. {final / ('out' + (final.suffix or '.h5'))}."
            )
        if kind == "file" and folder:
            raise ProtolibInputError(f"{final} exists and is not a folder; give a folder for the outputs (--out).")
        if kind not in ("file", "folder"):
            raise ProtolibInputError(
                f"{final} is a {kind}, not a {'folder' if folder else 'regular file'}; protolib writes its "
                f"outputs by replacing them and will not replace a {kind}: give a new "
                f"{'folder' if folder else 'file'} name (--out)."
            )
    for parent in final.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ProtolibInputError(f"{final}: {parent} is a file, not a folder; choose another --out.")
            break
    if folder and command is not None and final.is_dir():
        _refuse_other_products(final, command)
    return final


def _write_failure(error: BaseException, tmp: Path, final: Path) -> OSError | None:
    """The file-system error behind a failed write, when there is one.

    Libraries report a full disk in their own ways (h5py and torch raise ``RuntimeError``); growing
    the temporary file by one byte tells whether the file system refuses to (ENOSPC, EFBIG, EDQUOT).
    """
    if isinstance(error, OSError) and error.errno in (
        errno.ENOSPC,
        errno.EFBIG,
        errno.EDQUOT,
        errno.EROFS,
        errno.EACCES,
    ):
        return error
    if not isinstance(error, Exception) or isinstance(error, ProtolibInputError) or not tmp.is_file():
        return None
    try:
        with open(tmp, "ab") as handle:
            handle.write(b"\0")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as probe:
        return probe
    return None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, expected_bytes: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, else delete it.

    An interrupted or failed write therefore leaves the previous good file in place. The temporary
    name carries this host and process (``.<name>.<host>.<pid>.<random>.tmp``), so temporary files
    left by a killed run are removed by the next write of the same file
    (:func:`remove_stale_temporaries`). The file gets the usual permissions (``0666`` less the
    umask), not ``mkstemp``'s ``0600``. A write that fails because the disk is full, or the folder
    is read-only, is reported as one :class:`ProtolibInputError` naming ``path``.

    Arguments:
        path: the file to write.
        expected_bytes: about how large the file will be; that much (and 10% more) is reserved
            before the write starts, so a disk too full for it is refused at once, in one line.

    Example:
        >>> with atomic_path("bank.h5") as tmp:   # doctest: +SKIP
        ...     write_everything(tmp)
    """
    final = Path(path)
    check_output(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(final)
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.{_HOST}.{os.getpid()}.", suffix=".tmp", dir=final.parent)
        try:
            os.chmod(name, 0o666 & ~_umask())
            if expected_bytes:  # reserve the space first: HDF5 crashes the process when a disk fills up under it
                os.posix_fallocate(fd, 0, int(1.1 * expected_bytes) + 2**20)
                os.ftruncate(fd, 0)
        except OSError:
            os.close(fd)
            os.unlink(name)
            raise
        os.close(fd)
    except OSError as error:
        raise ProtolibInputError(describe_os_error(error, final)) from None
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException as error:
        cause = _write_failure(error, tmp, final)
        tmp.unlink(missing_ok=True)
        if cause is not None:
            raise ProtolibInputError(describe_os_error(cause, final)) from None
        raise


@contextlib.contextmanager
def output_folder(path: str | os.PathLike, command: str) -> Iterator[Path]:
    """Write a run's products into a fresh folder, then move them into ``path`` all at once.

    The run holds a lock on ``path`` (``path/.protolib.lock``) from the start, so a second run
    writing to the same folder is refused at once rather than mixing its products with this one's.
    The products go to ``path/.staging-<host>-<pid>-<random>/``; when the run finishes, the
    products of the previous run of the same ``command`` in ``path`` (listed in
    ``path/.protolib-products``, under the command's name) are removed and the new ones moved in. An
    interrupted or failed run leaves ``path`` as it was. A folder holding another command's products
    (``evaluate`` into ``match``'s folder) is refused before the run starts. Other files in ``path``
    are never touched.

    Example:
        >>> with output_folder("match_L1527", "match") as staging:   # doctest: +SKIP
        ...     write_csv(rows, staging / "matches.csv")
    """
    final = check_output(path, folder=True, command=command)
    created = not final.exists()
    try:
        final.mkdir(parents=True, exist_ok=True)
        lock = open(final / ".protolib.lock", "a+")
    except OSError as error:
        raise ProtolibInputError(describe_os_error(error, final)) from None
    try:
        with lock:
            yield from _locked_run(final, lock, command)
    except BaseException:
        if created and {p.name for p in final.iterdir()} <= {".protolib.lock"}:
            shutil.rmtree(final, ignore_errors=True)  # a failed first run leaves no empty folder behind
        raise


def _take_lock(lock, target: Path, kind: str = "folder") -> None:
    """Lock the open file ``lock`` for this process, or refuse in one line naming ``target`` (a ``kind``) and the run
    holding it."""
    import fcntl

    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        owner = lock.read().strip() or "another process"
        raise ProtolibInputError(
            f"{target}: another protolib run ({owner}) is writing to this {kind}; wait for it to "
            "finish, or choose another --out."
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    lock.flush()


@contextlib.contextmanager
def run_lock(target: str | os.PathLike, *, folder: bool) -> Iterator[None]:
    """Hold an exclusive lock on ``target`` (a file a run is about to write, or with ``folder`` a run's folder) while
    the run lasts; ``target`` is checked first (:func:`check_output`).

    A second run writing the same bank or ``bank-for`` folder is refused at once, in one
    line, instead of racing the first (both would print "Wrote" and one result would be lost). The lock
    is ``.NAME.protolib.lock`` beside a file and ``.protolib.lock`` inside a folder (as
    :func:`output_folder`'s), released when the run ends or its process dies. A folder this run
    created is removed again when the run fails with nothing written in it.
    """
    target = check_output(target, folder=folder)
    lock_path = target / ".protolib.lock" if folder else target.with_name(f".{target.name}.protolib.lock")
    created = folder and not target.exists()
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(lock_path, "a+")
    except OSError as error:
        raise ProtolibInputError(describe_os_error(error, target)) from None
    try:
        with lock:
            _take_lock(lock, target, "folder" if folder else "file")
            yield
    except BaseException:
        if created and target.is_dir() and {p.name for p in target.iterdir()} <= {".protolib.lock"}:
            shutil.rmtree(target, ignore_errors=True)  # a refused or failed first run leaves no folder behind
        raise


def _locked_run(final: Path, lock, command: str) -> Iterator[Path]:
    """Take the folder's lock, yield a fresh staging folder, publish its products when the run ends well."""
    _take_lock(lock, final)
    _refuse_other_products(final, command)  # again under the lock: another command may have published meanwhile
    for stale in final.glob(f".staging-{_HOST}-*"):
        pid = stale.name[len(f".staging-{_HOST}-") :].split("-")[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{_HOST}-{os.getpid()}-", dir=final))
    try:
        yield staging
        _publish(staging, final, command)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


MANIFEST = ".protolib-products"  # in an output folder: "# protolib COMMAND", then the products that command wrote there


def _previous_products(final: Path) -> tuple[str | None, list[str]]:
    """The command whose products ``final`` holds (``None``: none, or a manifest of an older protolib) and their
    names."""
    manifest = final / MANIFEST
    lines = manifest.read_text().split("\n") if manifest.is_file() else []
    owner = lines[0].removeprefix("# protolib ").strip() if lines and lines[0].startswith("# protolib ") else None
    return owner, [name for name in lines if name and not name.startswith("#") and "/" not in name]


def _refuse_other_products(final: Path, command: str) -> None:
    """Refuse an output folder that holds the products of another sub-command (they would be lost or mixed)."""
    owner, products = _previous_products(final)
    if owner is not None and owner != command and any((final / name).exists() for name in products):
        shown = ", ".join(products[:4]) + (", ..." if len(products) > 4 else "")
        raise ProtolibInputError(
            f"{final} holds the products of `protolib {owner}` ({shown}); give `protolib {command}` a "
            f"folder of its own (--out), or remove those products first."
        )


def _publish(staging: Path, final: Path, command: str) -> None:
    """Replace the previous products of ``command`` in ``final`` by those in ``staging``; nothing else is removed."""
    owner, previous = _previous_products(final)
    products = sorted(p.name for p in staging.iterdir())
    for name in products:
        target = final / name
        if os.path.lexists(target) and not target.is_file():
            raise ProtolibInputError(
                f"{target} exists and is not a regular file; protolib will not replace it: remove it, "
                "or choose another --out."
            )
    if owner == command:  # an older protolib's manifest names no command: its files are left alone
        for name in previous:
            if name not in products:
                (final / name).unlink(missing_ok=True)
    for name in products:
        os.replace(staging / name, final / name)
    with atomic_path(final / MANIFEST) as tmp:
        tmp.write_text(f"# protolib {command}\n" + "\n".join(products) + "\n")


def write_figure(fig, path: str | os.PathLike, *, dpi: int = 120, bbox_inches: str | None = None) -> Path:
    """Save a matplotlib figure atomically (format from the suffix, PNG without one) and close it.

    ``bbox_inches="tight"`` trims the saved image to what is drawn, as :meth:`~matplotlib.figure.Figure.savefig` does.
    """
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png", bbox_inches=bbox_inches)
    plt.close(fig)
    return path


def shown_path(path: str | os.PathLike) -> str:
    """``path`` as a page or a message shows it: under the artifacts folder (``$PROTOLIB_ARTIFACTS``) as
    ``artifacts/...``, under protolib's repository relative to it, anywhere else as given.

    Example:
        >>> shown_path(Path(__file__).resolve().parent / "bank.py")
        'protolib/bank.py'
    """
    path = Path(path)
    repository = Path(__file__).resolve().parent.parent
    roots = (
        [(Path(os.environ["PROTOLIB_ARTIFACTS"]), Path("artifacts"))] if os.environ.get("PROTOLIB_ARTIFACTS") else []
    )
    if (repository / "pyproject.toml").exists():
        roots.append((repository, Path()))
    for root, shown_as in roots:
        for inside, folder in (
            (Path(os.path.abspath(path)), Path(os.path.abspath(root))),
            (path.resolve(), root.resolve()),
        ):
            if inside.is_relative_to(folder):
                return str(shown_as / inside.relative_to(folder))
    return str(path)


def rounded(value, digits: int = 6):
    """``value`` (a number, or a dict, list or tuple of them) with floats to ``digits`` significant digits,
    for printing: ``0.3499999999999999`` becomes ``0.35``; other values are kept."""
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(rounded(v, digits) for v in value)
    if isinstance(value, (float, np.floating)) and np.isfinite(value):
        return float(f"{float(value):.{digits}g}")
    return value


def plain_json(value):
    """``value`` as strict JSON data: numpy to Python, NaN and infinities to ``None``, other objects to ``str``."""
    if isinstance(value, dict):
        return {str(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [plain_json(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def write_json(data: dict, path: str | os.PathLike, *, strict: bool = False, allow_nan: bool = True) -> Path:
    """Write ``data`` as indented JSON, atomically.

    ``strict=True`` first passes it through :func:`plain_json` (numpy to Python, NaN to ``null``), for
    files other programs read; ``allow_nan=False`` then guarantees the file is standard JSON.
    """
    text = json.dumps(plain_json(data) if strict else data, indent=2, allow_nan=allow_nan) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)
