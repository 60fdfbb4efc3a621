"""Evaluators for the tests, written as real scripts the worker runs, and ways to run the worker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

#: A plain evaluation script: reads the checkpoint's weights and reports numbers derived from them, as
#: JSON on stdout (after a log line), and notes each run in ``EVAL_LOG`` when set.
PLAIN = """
import json, os, sys
from pathlib import Path
from safetensors.numpy import load_file

directory = Path(sys.argv[1])
if os.environ.get("EVAL_LOG"):
    with open(os.environ["EVAL_LOG"], "a") as log:
        log.write(f"{directory.name} {os.getpid()}\\n")
go = os.environ.get("EVAL_GO")
if go:  # hold on until the test says go (bounded), so it can kill the worker meanwhile
    for _ in range(1200):
        if os.path.exists(go):
            break
        __import__("time").sleep(0.1)
weights = load_file(directory / "model.safetensors")
total = sum(float(abs(array).mean()) for array in weights.values())
print("evaluating", directory, flush=True)
print(json.dumps({"loss": total, "mean_token_accuracy": 1 / (1 + total), "detail": {"tensors": len(weights)}}))
"""

#: An evaluator that fails, saying a secret of its environment on its error output.
FAILING = """
import os, sys
print("loading the model...", file=sys.stderr)
print("auth failed with token " + os.environ.get("EVAL_API_TOKEN", ""), file=sys.stderr)
sys.exit(3)
"""


def write_script(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def evaluate(
    *args: str, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """``checkpoint-records evaluate ARGS`` as a real process, to its end."""
    return subprocess.run(
        [sys.executable, "-m", "checkpoint_records.cli", "evaluate", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def start_evaluate(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``checkpoint-records evaluate ARGS`` started, not waited for."""
    return subprocess.Popen(
        [sys.executable, "-m", "checkpoint_records.cli", "evaluate", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def runs_logged(log: Path) -> list[str]:
    """The checkpoint folders an evaluator was run on, one per run, in order."""
    return [line.split()[0] for line in log.read_text().splitlines()] if log.exists() else []


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its new parent) has stopped running too.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
