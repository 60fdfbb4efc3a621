"""Odd files in a checkpoint directory never cost its record, nor the listing of the store."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from checkpoint_records import CheckpointRecorder, RecordStore
from commands import cli
from http_server import Receiver


def test_link_loops_and_names_that_are_not_utf8_are_recorded_listed_and_delivered(
    tmp_path: Path, isolated_store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    checkpoint = tmp_path / "run" / "checkpoint-1"
    checkpoint.mkdir(parents=True)
    (checkpoint / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"]}')
    os.symlink("loop-b", checkpoint / "loop-a")
    os.symlink("loop-a", checkpoint / "loop-b")
    os.symlink(checkpoint, checkpoint / "itself")
    with open(os.fsencode(checkpoint) + b"/notes-\xff\xfe.txt", "wb") as odd:
        odd.write(b"12345")
    caplog.set_level(logging.WARNING, logger="checkpoint_records")
    with Receiver() as receiver, CheckpointRecorder(sinks=[receiver.url]) as recorder:
        record = recorder.record(checkpoint, step=1, train_loss=0.5).result(60)
        assert record is not None
        assert recorder.delivery.flush(10).pending == 0
    files = {entry.path: entry.size for entry in record.status.files}
    assert files == {"config.json": 38, "notes-\\xff\\xfe.txt": 5}
    assert "backslash escapes: notes-\\xff\\xfe.txt" in caplog.text
    outbox = RecordStore(isolated_store).outbox.deliveries()
    assert [d.state for d in outbox if d.kind == "record"] == ["delivered"]
    assert receiver.accepted_payloads()[0]["status"]["files"][1]["path"] == "notes-\\xff\\xfe.txt"
    listing, as_json = cli("list"), cli("list", "--json")
    assert listing.returncode == 0 and "run-step-1" in listing.stdout, listing.stderr
    assert as_json.returncode == 0 and json.loads(as_json.stdout)[0]["status"]["size"] == 43
