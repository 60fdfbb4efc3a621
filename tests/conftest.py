"""Shared fixtures: an isolated store per test, and the example's tiny builders on the import path."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True)
def isolated_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own store home; no CHECKPOINT_RECORDS_* leaks in from the environment."""
    import os

    for key in list(os.environ):
        if key.startswith("CHECKPOINT_RECORDS_"):
            monkeypatch.delenv(key)
    home = tmp_path / "store"
    monkeypatch.setenv("CHECKPOINT_RECORDS_HOME", str(home))
    return home


@pytest.fixture(autouse=True)
def strict_failures() -> Iterator[None]:
    """A failure inside the library raises in tests (in production it is logged once and skipped); each
    test starts with no failure said yet, so a test of "logged once" does not depend on the ones before."""
    from checkpoint_records import logs

    logs._seen.clear()
    logs.set_strict(True)
    yield
    logs.set_strict(False)
