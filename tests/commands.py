"""Running the CLI and the killable training script as real subprocesses, and what their runs stored."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
    return subprocess.run(
        [sys.executable, str(TESTS / "killed_run.py"), str(output_dir), *flags],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )


def stored_names(home: Path) -> list[str]:
    """The names of the records in the store at ``home``, each recorded once."""
    stored = RecordStore(home).records()
    assert all(item.revision == 1 for item in stored), "a checkpoint was recorded twice"
    return sorted(item.record.name for item in stored)


def job_statuses(home: Path) -> list[str]:
    return [stored.job.status for stored in RecordStore(home).jobs()]
