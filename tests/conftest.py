"""Shared fixtures: an isolated store per test, the example's tiny builders on the import path, and the
registry's two databases (SQLite, and a real PostgreSQL server started once for the session)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from postgres_server import PostgresServer, binaries, postgres_server  # noqa: E402

#: The registry's databases: every server test runs on each.
BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session (its password in ``PGPASSWORD``, as libpq reads it)."""
    if binaries() is None:
        pytest.skip("PostgreSQL is not installed here (scripts/test installs Debian's postgresql)")
    with postgres_server() as server, pytest.MonkeyPatch.context() as patch:
        patch.setenv("PGPASSWORD", server.password)
        yield server


def _backend(request: pytest.FixtureRequest) -> Iterator[str | None]:
    if request.param == "sqlite":
        yield None
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    with server.fresh_database() as url:
        yield url


@pytest.fixture(params=BACKENDS)
def database(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """The registry's database for one test: None (SQLite, in its store directory) or a new
    PostgreSQL database's URL."""
    yield from _backend(request)


@pytest.fixture(scope="module", params=BACKENDS)
def module_database(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """:func:`database`, shared by a module's tests."""
    yield from _backend(request)


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
