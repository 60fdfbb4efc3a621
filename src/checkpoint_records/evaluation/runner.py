"""Running an evaluator's command on one checkpoint, as a child process that never outlives the worker.

The command is split as a shell would split it (``shlex``) and run without a shell, with ``{directory}``
(the checkpoint's folder) and ``{output}`` (a path in the attempt's own folder, where the command may
write its report) replaced inside its words: a folder name is never parsed as shell syntax (for pipes
and redirections, run ``sh -c '...'`` yourself). Its output goes to files, not pipes, so a chatty
evaluator never blocks and never fills the worker's memory. On Linux the child is killed when the worker
dies (``PR_SET_PDEATHSIG``), even by ``SIGKILL``: the evaluation it was running is run again whole by the
next worker, never twice at once.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigurationError

DIRECTORY, OUTPUT = "{directory}", "{output}"
#: How often a running command is looked at (to renew the worker's claim, or stop it).
POLL_SECONDS = 1.0
#: How long a command asked to stop (SIGTERM) has before it is killed.
STOP_GRACE = 10.0
#: How much of the error output is read back: its end is what explains a failure.
ERROR_READ_BYTES = 64 * 1024
#: How much of the standard output is read back: its end holds the JSON report.
REPORT_READ_BYTES = 16 * 2**20


@dataclass(frozen=True)
class Command:
    """An evaluator's command line, checked once: its words, and whether it names ``{output}``."""

    words: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Command:
        try:
            words = tuple(shlex.split(text))
        except ValueError as error:
            raise ConfigurationError(f"--command {text!r} cannot be split into words: {error}") from None
        if not words:
            raise ConfigurationError("--command is empty: give the evaluator's command line")
        if not any(DIRECTORY in word for word in words):
            raise ConfigurationError(
                f"--command {text!r} must name the checkpoint's folder as {DIRECTORY}, e.g. "
                "'python eval.py --model {directory}'"
            )
        return cls(words)

    @property
    def writes_output(self) -> bool:
        return any(OUTPUT in word for word in self.words)

    def argv(self, directory: Path, output: Path) -> list[str]:
        return [word.replace(DIRECTORY, str(directory)).replace(OUTPUT, str(output)) for word in self.words]


@dataclass(frozen=True)
class Finished:
    """How one run of the command ended."""

    exit_code: int
    stdout: str
    stderr: str
    #: Why it was stopped before it ended by itself (the time limit, the worker stopping), or None.
    stopped: str | None = None


def _die_with_parent() -> None:
    """In the child, before it runs the command: be killed when the worker dies (Linux)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run(
    command: Command,
    directory: Path,
    folder: Path,
    timeout: float,
    on_tick: Callable[[], bool],
) -> Finished:
    """Run ``command`` on ``directory``, in the worker's working directory; its output files and
    ``{output}`` go in ``folder``.

    ``on_tick`` is called about every second while it runs; it returns False to stop the command.
    """
    folder.mkdir(parents=True, exist_ok=True)
    out_path, err_path = folder / "stdout.txt", folder / "stderr.txt"
    with open(out_path, "wb") as stdout, open(err_path, "wb") as stderr:
        process = subprocess.Popen(
            command.argv(directory, folder / "output"),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        stopped = _wait(process, time.monotonic() + timeout, timeout, on_tick)
    return Finished(
        process.returncode,
        _tail(out_path, REPORT_READ_BYTES),
        _tail(err_path, ERROR_READ_BYTES),
        stopped,
    )


def _wait(
    process: subprocess.Popen[bytes], deadline: float, timeout: float, on_tick: Callable[[], bool]
) -> str | None:
    while True:
        try:
            process.wait(min(POLL_SECONDS, max(deadline - time.monotonic(), 0.0)))
            return None
        except subprocess.TimeoutExpired:
            pass
        if time.monotonic() >= deadline:
            _stop(process)
            return f"stopped after the {timeout:g} s time limit (--timeout)"
        if not on_tick():
            _stop(process)
            return "stopped: the worker is stopping"


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(STOP_GRACE)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _tail(path: Path, limit: int) -> str:
    with open(path, "rb") as source:
        size = os.fstat(source.fileno()).st_size
        source.seek(max(size - limit, 0))
        return source.read().decode("utf-8", errors="replace")
