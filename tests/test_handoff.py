"""The training thread only hands a save over: no SQLite, no directory scan there, even while another
process holds the store's lock; failures of ours are loud under the tests and quiet in production; an
outbox written before it said what it delivers is upgraded in place."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from transformers import TrainerControl, TrainerState

from checkpoint_records import CheckpointRecordCallback, RecordStore, bookkeeper, collect
from checkpoint_records.logs import set_strict
from records_factory import make_record
from trainer_runs import tiny_trainer

LOCKER = """
import sqlite3, sys, time
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
connection.execute("ROLLBACK")
"""


def test_hooks_never_touch_the_store_or_the_disk_even_with_the_store_locked(
    tmp_path: Path, isolated_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    RecordStore(isolated_store).records()  # the database exists, so another process can lock it
    inside_hook = threading.local()
    touched: list[str] = []

    def watch(name: str, original: Any) -> Any:
        def watched(*args: Any, **kwargs: Any) -> Any:
            if getattr(inside_hook, "name", None):
                touched.append(f"{name} in {inside_hook.name}")
            return original(*args, **kwargs)

        return watched

    monkeypatch.setattr(RecordStore, "_connection", watch("SQLite", RecordStore._connection))
    monkeypatch.setattr(bookkeeper, "scan_checkpoint", watch("scan", collect.scan_checkpoint))
    callback = CheckpointRecordCallback(flush_timeout=30)
    for hook in ("on_train_begin", "on_log", "on_save"):
        original = getattr(callback, hook)

        def timed(*args: Any, _original: Any = original, _hook: str = hook, **kwargs: Any) -> Any:
            inside_hook.name = _hook
            try:
                return _original(*args, **kwargs)
            finally:
                inside_hook.name = None

        setattr(callback, hook, timed)
    locker = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(isolated_store / "records.db")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
        trainer = tiny_trainer(tmp_path / "out", [callback])
        original_end = callback.on_train_end

        def end(*args: Any, **kwargs: Any) -> Any:
            assert locker.stdin is not None
            locker.stdin.write("\n")  # the lock goes only now: training ran beside it to the end
            locker.stdin.flush()
            return original_end(*args, **kwargs)

        callback.on_train_end = end  # type: ignore[method-assign]
        trainer.train()
    finally:
        locker.kill()
        locker.wait()
    assert touched == []
    assert [item.record.training.step for item in RecordStore(isolated_store).records()] == [2, 4, 6]


def test_a_failure_of_ours_is_loud_under_strict_and_quiet_without(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_put(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(RecordStore, "put", broken_put)
    args = tiny_trainer(tmp_path / "out", []).args
    state = TrainerState(global_step=2, log_history=[{"loss": 1.0, "step": 2}])
    loud = CheckpointRecordCallback()
    with loud.recorder:  # ends the job the save began, as on_train_end would
        loud.on_save(args, state, TrainerControl())  # the hand-off itself succeeds
        with pytest.raises(OSError, match="disk on fire"):
            loud.recorder.drain()
    set_strict(False)
    quiet = CheckpointRecordCallback()
    with quiet.recorder:
        quiet.on_save(args, state, TrainerControl())
        assert quiet.recorder.drain() is True and quiet.recorder.last_record is None


def test_an_outbox_from_before_the_kind_column_is_upgraded(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    store.put(make_record(1), ["https://sink"])
    store.close()
    path = tmp_path / "records.db"
    job_body = '{"id":"job-1","name":"job","status":"Running","created_at":0,"updated_at":0}'
    with sqlite3.connect(path) as old:  # as the previous release wrote it: no kind, a job in record_id
        old.execute("ALTER TABLE outbox DROP COLUMN kind")
        old.execute("PRAGMA user_version = 0")  # the previous release had no schema version
        old.execute(
            "INSERT INTO jobs (id, name, revision, status, owner, body, updated_at) VALUES (?, ?, 1, ?, NULL, ?, 0)",
            (
                "job-1",
                "job",
                "Running",
                '{"id":"job-1","name":"job","status":"Running","created_at":0,"updated_at":0}',
            ),
        )
        old.execute(
            "INSERT INTO outbox (sink, record_id, revision, state, attempts, next_attempt_at, updated_at)"
            " VALUES ('training-job+https://sink', 'job-1', 1, 'pending', 0, 0, 0)"
        )
    upgraded = RecordStore(tmp_path)
    kinds = {delivery.record_id: delivery.kind for delivery in upgraded.outbox.deliveries()}
    assert kinds == {make_record(1).id: "record", "job-1": "job"}
    claimed = upgraded.outbox.claim_due("training-job+https://sink", "me", 60, 10)
    assert [claim.body for claim in claimed] == [job_body]


def test_the_recorder_thread_ends_with_training(tmp_path: Path, isolated_store: Path) -> None:
    def recorder_threads() -> set[threading.Thread]:
        return {thread for thread in threading.enumerate() if thread.name == "checkpoint-records recorder"}

    others = recorder_threads()  # other tests' recorders, never ended
    callback = CheckpointRecordCallback()
    for run in range(2):  # a notebook calling train() again
        tiny_trainer(tmp_path / f"out-{run}", [callback], max_steps=2).train()
        assert recorder_threads() <= others
    assert len(RecordStore(isolated_store).records()) == 2
