"""What a process leaves behind: nothing running after training, no claims after a normal exit."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from checkpoint_records import CheckpointRecordCallback, RecordStore
from commands import TESTS, cli
from http_server import Received, Receiver, Reply
from trainer_runs import tiny_trainer
from waiting import wait_until


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_training_five_times_in_one_process_leaves_no_thread_or_file_behind(
    tmp_path: Path, isolated_store: Path
) -> None:
    counts = []
    with Receiver() as receiver:
        jobs_url = receiver.url.replace("checkpoints", "jobs")
        for run in range(5):  # a notebook: a new Trainer and callback for each cell run
            callback = CheckpointRecordCallback(sinks=[receiver.url, f"training-job+{jobs_url}"])
            tiny_trainer(tmp_path / f"out-{run}", [callback]).train()
            wait_until(receiver.quiet, 30, "the server's handler threads did not see the connections close")
            counts.append((threading.active_count(), open_files()))
        assert len(receiver.accepted()) >= 5 * 3
    assert counts == [counts[0]] * 5, counts


def test_a_flush_beside_a_training_process_takes_over_when_it_exits_and_sends_nothing_twice(
    tmp_path: Path, isolated_store: Path
) -> None:
    arrivals: list[float] = []

    def slow(index: int, request: Received) -> Reply:
        arrivals.append(time.monotonic())
        return Reply(delay=1.0)

    with Receiver(slow) as receiver:
        env = {
            **os.environ,
            "CHECKPOINT_RECORDS_SINKS": receiver.url,
            "CHECKPOINT_RECORDS_FLUSH_TIMEOUT": "0.2",
        }
        training = subprocess.Popen(
            [sys.executable, str(TESTS / "killed_run.py"), str(tmp_path / "out")],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            store = RecordStore(isolated_store)
            wait_until(  # saved all, still delivering (or ended: said below)
                lambda: (arrivals and len(store.records()) == 3) or training.poll() is not None,
                120,
                "the training process never saved its three checkpoints",
            )
            store.close()
            assert arrivals and training.poll() is None, "the training process never delivered"
            started = time.monotonic()
            flushed = cli("flush", "--timeout", "30", env={"CHECKPOINT_RECORDS_SINKS": receiver.url})
            took = time.monotonic() - started
            assert training.wait(timeout=60) == 0, training.stderr.read() if training.stderr else ""
        finally:
            training.kill()
            training.wait()
        assert flushed.returncode == 0, flushed.stderr
        assert took < 15, took  # not its whole timeout waiting for the other process's claims
        again = len(receiver.requests)
        assert cli("flush", env={"CHECKPOINT_RECORDS_SINKS": receiver.url}).returncode == 0
        assert len(receiver.requests) == again  # nothing left to send a second time
    keys = [request.headers["Idempotency-Key"] for request in receiver.requests]
    assert len(keys) == len(set(keys)) == 3, keys
    assert {d.state for d in RecordStore(isolated_store).outbox.deliveries()} == {"delivered"}
