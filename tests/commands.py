"""Running the CLI and the killable training script as real subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


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
