"""Running the CLI, the killable training script and launched multi-process runs as real subprocesses,
and what their runs stored.

A training run is a process tree (a launcher, its ranks, their DataLoader workers): it runs in a session
of its own, and past its time limit the whole tree is killed and the test fails saying which command hung
and what it printed. ``subprocess.run``'s own timeout kills only the launcher, and then waits forever on
the pipes its orphaned ranks still hold.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import psutil

from checkpoint_records import RecordStore

TESTS = Path(__file__).resolve().parent
#: The start of what ``checkpoint-records run`` says, once, whatever the number of processes.
ANNOUNCEMENT = "checkpoint-records: recording every Trainer's checkpoints in "


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``checkpoint-records ARGS`` with this environment plus ``env``."""
    return subprocess.run(
        [sys.executable, "-m", "checkpoint_records.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def killed_run(output_dir: Path, env: dict[str, str], *flags: str) -> subprocess.CompletedProcess[str]:
    """``tests/killed_run.py OUTPUT_DIR FLAGS``: a tiny run configured by ``env``, that may die mid-way."""
    command = [sys.executable, str(TESTS / "killed_run.py"), str(output_dir), *flags]
    return finished(started(command, {**os.environ, **env}), 300)


def started(command: Sequence[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.Popen[str]:
    """``command`` running in a session (and process group) of its own, its output captured."""
    return subprocess.Popen(
        list(command),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )


def finished(process: subprocess.Popen[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """``process``'s result once it exits; past ``timeout`` seconds its whole process group is killed and
    the test fails with the command and the end of what it printed."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(process)
        try:
            stdout, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # a process that left the group still holds the pipes
            stdout, stderr = "", "(its output could not be read: a process outside its group holds it)"
        command = " ".join(str(part) for part in process.args)  # type: ignore[union-attr]
        raise AssertionError(
            f"still running after {timeout:g} s, killed with every process it started: {command}\n"
            f"--- stdout (end) ---\n{stdout[-2000:]}\n--- stderr (end) ---\n{stderr[-4000:]}"
        ) from None
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def kill_tree(process: subprocess.Popen[str]) -> None:
    """SIGKILL the process group :func:`started` gave ``process``, while its leader is still ours to wait
    for (so the group id cannot have been reused), and every process it started that left the group
    (``torchrun`` starts each rank in a session of its own), so none is left running or holding the pipes."""
    if process.poll() is not None:
        return
    try:
        escaped = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        escaped = []
    os.killpg(process.pid, signal.SIGKILL)
    for child in escaped:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


def stored_names(home: Path) -> list[str]:
    """The names of the records in the store at ``home``, each recorded once."""
    stored = RecordStore(home).records()
    assert all(item.revision == 1 for item in stored), "a checkpoint was recorded twice"
    return sorted(item.record.name for item in stored)


def job_statuses(home: Path) -> list[str]:
    return [stored.job.status for stored in RecordStore(home).jobs()]
