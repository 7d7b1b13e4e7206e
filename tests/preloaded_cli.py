"""``python -m protolib ARGS`` in a fresh process, without paying Python's and torch's start-up each time.

A user's command is a new process: it imports torch (about 2.5 CPU-seconds on the 2-core test machine),
then does a few milliseconds of work before refusing a bad input. The bad-input battery runs some 150
such commands, so start-up was most of its time. Here one server process per worker imports protolib,
torch and the libraries its commands use, once; each command is then a ``fork()`` of that server that
becomes ``python -m protolib ARGS`` (``runpy``, as ``-m`` does) with its own environment, its own
stdout and stderr pipes, stdin on ``/dev/null``, the file-size limit asked for, and the exit code
and output of a real run: an uncaught exception prints its traceback and exits 1, ``sys.exit(2)``
exits 2, and interpreter shutdown (atexit, flushing) runs as usual.

What a fork does not re-check is the import of these modules in a fresh interpreter; the tests that
interrupt runs with signals, and runs that need another environment at start-up (``PYTHONPATH``),
still start real subprocesses.

Run as a script, this file is the server: requests and replies are one JSON line each.
"""

from __future__ import annotations

import json
import os
import queue
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

# what the battery's commands import: loaded once in the server, so that a command's fork finds them
PRELOAD = (
    "torch",
    "numpy",
    "h5py",
    "astropy.io.fits",
    "astropy.wcs",
    "astropy.coordinates",
    "protolib.cli",
    "protolib.pipelines.match",
    "protolib.pipelines.simulate",
    "protolib.pipelines.train",
    "protolib.pipelines.evaluate",
    "protolib.pipelines.tune",
)


# ---------------------------------------------------------------------------------------------
# The client: a pool of servers, one command at a time each.


class PreloadedProtolib:
    """``workers`` servers started with ``env``; :meth:`run` acts as ``subprocess.run`` of ``python -m protolib``."""

    def __init__(self, env: dict[str, str], workers: int = 2):
        self.env = env
        self.idle: queue.Queue[subprocess.Popen] = queue.Queue()
        self.servers = [self._start() for _ in range(workers)]
        for server in self.servers:
            self.idle.put(server)

    def _start(self) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve())], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=self.env
        )

    def run(
        self, argv: list[str], env: dict[str, str], timeout: float, limit_file_bytes: int | None = None
    ) -> subprocess.CompletedProcess:
        """Exit code, stdout and stderr (text, newlines translated as ``text=True`` does) of one command."""
        server = self.idle.get()
        try:
            request = {"argv": argv, "env": env, "timeout": timeout, "limit_file_bytes": limit_file_bytes}
            server.stdin.write(json.dumps(request).encode() + b"\n")
            server.stdin.flush()
            line = server.stdout.readline()
        finally:
            self.idle.put(server)
        if not line:
            raise RuntimeError(f"the preloaded protolib server ended (exit {server.poll()}); see its stderr above")
        reply = json.loads(line)
        if reply["timed_out"]:
            raise subprocess.TimeoutExpired(argv, timeout)
        text = [_as_text(reply[stream]) for stream in ("stdout", "stderr")]
        return subprocess.CompletedProcess(["python", "-m", "protolib", *argv], reply["returncode"], *text)

    def close(self) -> None:
        for server in self.servers:
            server.stdin.close()
            server.wait(timeout=60)
            server.stdout.close()


def _as_text(latin1: str) -> str:
    """A command's bytes (sent as latin-1, a character per byte) as ``subprocess.run(text=True)`` gives them."""
    return latin1.encode("latin-1").decode(errors="replace").replace("\r\n", "\n").replace("\r", "\n")


# ---------------------------------------------------------------------------------------------
# The server: fork per request, read the child's output, wait for it, reply.


def _serve() -> dict | None:
    """Answer requests until stdin closes (returns None); in a forked command, return its request."""
    requests, replies = os.fdopen(os.dup(0), "rb"), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(2, 1)  # nothing the server prints can reach the replies
    for line in requests:
        request = json.loads(line)
        out_read, out_write = os.pipe()
        err_read, err_write = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            requests.close()
            for fd in (replies, out_read, err_read):
                os.close(fd)
            os.dup2(out_write, 1)
            os.dup2(err_write, 2)
            for fd in (out_write, err_write, null):
                os.close(fd)
            return request
        os.close(out_write)
        os.close(err_write)
        reply = _collect(pid, out_read, err_read, request["timeout"])
        os.write(replies, json.dumps(reply).encode() + b"\n")
    return None


def _collect(pid: int, out_read: int, err_read: int, timeout: float) -> dict:
    """Read both pipes to their end (killing the command past ``timeout`` seconds), then its exit code."""
    output = {out_read: bytearray(), err_read: bytearray()}
    deadline = time.monotonic() + timeout
    timed_out = False
    with selectors.DefaultSelector() as selector:
        for fd in output:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0 and not timed_out:
                os.kill(pid, signal.SIGKILL)
                timed_out = True
            for key, _ in selector.select(timeout=max(left, 0.1)):
                chunk = os.read(key.fd, 65536)
                if chunk:
                    output[key.fd] += chunk
                else:
                    selector.unregister(key.fd)
                    os.close(key.fd)
    _, status = os.waitpid(pid, 0)
    return {
        "returncode": os.waitstatus_to_exitcode(status),
        "stdout": output[out_read].decode("latin-1"),
        "stderr": output[err_read].decode("latin-1"),
        "timed_out": timed_out,
    }


def _become_the_command(request: dict) -> None:
    """What ``python -m protolib ARGV`` does, in this forked process (``SystemExit`` ends the interpreter)."""
    import resource
    import runpy

    os.environ.clear()
    os.environ.update(request["env"])
    if request["limit_file_bytes"]:
        limit = request["limit_file_bytes"]
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # SIGXFSZ is ignored, as Python starts with it
    sys.argv = ["protolib", *request["argv"]]
    runpy.run_module("protolib", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    sys.path[0] = os.getcwd()  # as ``python -m`` has it, not this file's folder
    import gc
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    gc.freeze()  # a command's garbage collections and exit then leave the server's pages shared (3x less CPU)
    command = _serve()
    if command is not None:
        _become_the_command(command)
