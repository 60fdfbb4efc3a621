"""The store under attack: older and newer schema versions, a file that is not a store."""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from checkpoint_records import ConfigurationError, HttpSink, RecordStore
from checkpoint_records.delivery import DeliveryWorker
from checkpoint_records.store import DATABASE_NAME, SCHEMA_VERSION
from commands import cli
from http_server import Receiver
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


def warnings_about(caplog: pytest.LogCaptureFixture, words: str) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and words in r.getMessage()
    ]


@pytest.mark.parametrize("removed", ["the file", "the whole home"])
def test_a_store_deleted_while_in_use_is_said_once_and_recording_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, removed: str
) -> None:
    caplog.set_level(logging.WARNING, logger="checkpoint_records")
    with Receiver() as receiver:
        sink = HttpSink(receiver.url)
        store = RecordStore(tmp_path / "home")
        worker = DeliveryWorker(store, [sink])
        worker.start()
        store.put(make_record(1), [sink.key])
        assert worker.flush(10).pending == 0
        if removed == "the file":
            (tmp_path / "home" / DATABASE_NAME).unlink()
        else:
            shutil.rmtree(tmp_path / "home")
        for step in (2, 3):
            store.put(make_record(step), [sink.key])
        worker.wake()
        assert worker.flush(10).pending == 0  # the lanes moved to the new file too
        worker.close()
        store.close()
        assert sorted(p["status"]["metadata"]["step"] for p in receiver.accepted_payloads()) == [1, 2, 3]
    reopened = RecordStore(tmp_path / "home")
    assert [stored.record.training.step for stored in reopened.records()] == [2, 3]
    assert {d.state for d in reopened.outbox.deliveries()} == {"delivered"}
    assert len(warnings_about(caplog, "was deleted")) == 1


def test_a_full_disk_keeps_records_in_memory_and_writes_them_when_there_is_room(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="checkpoint_records")
    store = RecordStore(tmp_path)
    store.put(make_record(0), ["https://sink"])
    connection = store.read()  # the disk "fills up": no page beyond those in use
    pages = connection.execute("PRAGMA page_count").fetchone()[0]
    connection.execute(f"PRAGMA max_page_count = {pages}")
    for step in range(1, 30):  # a few fit in free pages, then the disk is full: none raises
        assert store.put(make_record(step), ["https://sink"]).record.training.step == step
    assert len(warnings_about(caplog, "is full")) == 1
    assert len(RecordStore(tmp_path).records()) < 30  # some are only in memory
    connection.execute("PRAGMA max_page_count = 1000000")  # room again
    store.put(make_record(30), ["https://sink"])
    steps = [stored.record.training.step for stored in RecordStore(tmp_path).records()]
    assert sorted(steps) == list(range(31))
    assert len(RecordStore(tmp_path).outbox.deliveries()) == 31
