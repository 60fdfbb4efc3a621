"""A full disk under the store, then room again: every write path keeps its writes in memory, in order,
and lands them once there is room; nothing is dropped, nothing is sent twice, the losses stay."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from checkpoint_records import CheckpointRecorder, HttpSink, RecordStore
from checkpoint_records.history import LogEntry
from checkpoint_records.job import JobSnapshot
from checkpoint_records.record import CheckpointRecord
from checkpoint_records.store import Outcome
from http_server import Receiver
from records_factory import make_record
from waiting import wait_until


def warnings_about(caplog: pytest.LogCaptureFixture, words: str) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and words in r.getMessage()
    ]


def gone(record: CheckpointRecord) -> CheckpointRecord:
    return record.model_copy(update={"status": record.status.model_copy(update={"status": "deleted"})})


def test_every_write_path_keeps_its_writes_in_order_while_the_disk_is_full(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Fault injection (always runs): SQLite's page limit makes the disk full for this connection."""
    caplog.set_level(logging.WARNING, logger="checkpoint_records")
    store, sink = RecordStore(tmp_path), HttpSink("https://sink.example").key
    first = make_record(0)
    job_id = first.metadata.job_id
    store.put(first, [sink])
    [claim] = store.outbox.claim_due(sink, "me", 60, 10)
    connection = store.read()
    connection.execute(f"PRAGMA max_page_count = {connection.execute('PRAGMA page_count').fetchone()[0]}")
    for step in range(1, 20):  # a few fit in free pages, then the disk is full: none raises
        store.put(make_record(step), [sink])
        logged = {"loss": 1 / step, "step": step, "note": "x" * 2000}  # each needs pages of its own
        store.append_log(job_id, [LogEntry(seq=step, step=step, values=logged)])
        snapshot = JobSnapshot(
            id=job_id, name="job", status="Running", global_step=step, created_at=1.0, updated_at=1.0 + step
        )
        store.put_job(snapshot, [sink])
    store.outbox.settle([Outcome(claim, "delivered", time.time())])
    store.uploads.enqueue(first, "s3://bucket/job/job-checkpoint-0", str(tmp_path / "staging"))
    deleted = store.update_record(first.id, gone, [sink])
    assert deleted is None  # kept in memory, not written yet
    assert len(warnings_about(caplog, "is full")) == 1
    assert len(RecordStore(tmp_path).records()) < 20  # some are only in memory

    connection.execute("PRAGMA max_page_count = 1000000")  # room again
    assert store.write_kept()
    reopened = RecordStore(tmp_path)
    assert [stored.record.training.step for stored in reopened.records()] == list(range(20))
    assert [entry["step"] for entry in reopened.log_series(job_id)] == list(range(1, 20))
    job = reopened.job(job_id)
    assert job is not None and job.job.global_step == 19
    record = reopened.get(first.id)
    assert record is not None and (record.revision, record.record.status.status) == (2, "deleted")
    assert [row.path for row in reopened.uploads.rows(first.id)] == ["model.safetensors"]
    states = {(d.record_id, d.revision): d.state for d in reopened.outbox.deliveries(first.id)}
    assert states == {(first.id, 2): "pending"}  # revision 1 was delivered, then revision 2 queued


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted for the test (root only: skipped where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here (needs root): {mounted.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(disk: Path) -> Path:
    """Write a file until ``disk`` has no room left; the file."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
        except OSError:
            pass
        try:
            while True:
                handle.write(b"\0" * 512)
        except OSError:
            pass
    return filler


def test_a_real_full_disk_during_a_run_loses_nothing_and_sends_nothing_twice(
    tmp_path: Path, small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="checkpoint_records")
    home = small_disk / "store"
    folders = []
    for step in range(1, 9):
        folder = tmp_path / "run" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"0" * 64)
        folders.append(folder)
    with Receiver() as receiver, CheckpointRecorder(store=home, sinks=[receiver.url]) as recorder:
        assert recorder.record(folders[0], step=1, train_loss=1.0).result(60) is not None
        receiver.wait_for(1)
        filler = fill(small_disk)
        for step, folder in enumerate(folders[1:5], start=2):  # the disk is full: kept in memory
            assert recorder.record(folder, step=step, train_loss=1 / step).result(60) is not None
        wait_until(lambda: warnings_about(caplog, "is full"), 30, "the full disk was never noticed")
        filler.unlink()  # room again: what was kept lands, then the rest as usual
        for step, folder in enumerate(folders[5:], start=6):
            assert recorder.record(folder, step=step, train_loss=1 / step).result(60) is not None
        assert recorder.delivery.flush(60).pending == 0
    store = RecordStore(home)
    records = store.records()
    assert [stored.record.training.step for stored in records] == list(range(1, 9))
    job_id = records[0].record.metadata.job_id
    series = store.log_series(job_id)
    assert [(entry["step"], entry["loss"]) for entry in series] == [(s, 1 / s) for s in range(1, 9)]
    assert {d.state for d in store.outbox.deliveries()} == {"delivered"}
    assert sorted(p["status"]["metadata"]["step"] for p in receiver.accepted_payloads()) == list(range(1, 9))
    receiver.assert_idempotent()
    assert len(warnings_about(caplog, "is full")) == 1
    assert os.path.exists(home / "records.db")
