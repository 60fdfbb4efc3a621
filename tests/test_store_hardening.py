"""The store under attack: older and newer schema versions, a file that is not a store."""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from checkpoint_records import ConfigurationError, RecordStore
from checkpoint_records.store import DATABASE_NAME, SCHEMA_VERSION
from commands import cli
from records_factory import make_record


def user_version(path: Path) -> int:
    with sqlite3.connect(path) as connection:
        return int(connection.execute("PRAGMA user_version").fetchone()[0])


def test_a_store_of_the_previous_release_opens_and_is_upgraded(tmp_path: Path) -> None:
    RecordStore(tmp_path).put(make_record(3), ["https://sink"])
    with sqlite3.connect(tmp_path / DATABASE_NAME) as connection:  # as the release before versions left it
        connection.execute("PRAGMA user_version = 0")
        connection.execute("DROP TABLE jobs")
    assert user_version(tmp_path / DATABASE_NAME) == 0
    store = RecordStore(tmp_path)
    assert [stored.record.training.step for stored in store.records()] == [3]
    assert store.jobs() == []  # the missing table was created
    assert user_version(tmp_path / DATABASE_NAME) == SCHEMA_VERSION >= 1


def test_a_store_of_a_newer_release_is_refused_and_left_untouched(tmp_path: Path) -> None:
    written = RecordStore(tmp_path)
    written.put(make_record(3))
    written.close()
    path = tmp_path / DATABASE_NAME
    with closing(sqlite3.connect(path, isolation_level=None)) as connection:
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        connection.execute("PRAGMA journal_mode = DELETE")  # all of it in the one file, to compare
    before = path.read_bytes()
    with pytest.raises(ConfigurationError, match="newer release") as refused:
        RecordStore(tmp_path)
    assert str(path) in str(refused.value) and "Upgrade checkpoint-records" in str(refused.value)
    listing = cli("list", "--store", str(tmp_path))
    assert listing.returncode == 2 and "newer release" in listing.stderr
    assert "Traceback" not in listing.stderr
    assert path.read_bytes() == before


def test_a_store_full_of_random_bytes_fails_fast_and_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / DATABASE_NAME
    garbage = os.urandom(64 * 1024)
    path.write_bytes(garbage)
    with pytest.raises(ConfigurationError) as refused:
        RecordStore(tmp_path)
    message = str(refused.value)
    assert str(path) in message and "move it aside" in message
    for command in (["list"], ["list", "--json"], ["jobs"], ["flush"]):
        result = cli(*command, "--store", str(tmp_path))
        assert result.returncode == 2, result
        assert str(path) in result.stderr and "Traceback" not in result.stderr
    assert path.read_bytes() == garbage
