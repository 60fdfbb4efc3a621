"""Hostile files on disk never cost the honest checkpoints beside them: a ``trainer_state.json`` no store
can hold is named (file and field) while the others are recorded and delivered; a run directory whose
name is not UTF-8 keeps its records; accelerate's folder numbers never hide a checkpoint; ``pull`` never
writes outside its directory."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from checkpoint_records import CheckpointRecorder, RecordStore
from checkpoint_records.record import FileEntry, UploadStatus
from checkpoint_records.storage.verify import pull
from checkpoint_records.validation import InvalidValue, contained
from commands import cli
from http_server import Receiver
from records_factory import make_record


def checkpoint(run: Path, name: str, state: bytes | dict[str, Any] | None) -> Path:
    """A checkpoint folder with a weights file and, unless None, this ``trainer_state.json``."""
    folder = run / name
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"0" * 16)
    (folder / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"]}')
    if state is not None:
        text = state if isinstance(state, bytes) else json.dumps(state).encode()
        (folder / "trainer_state.json").write_bytes(text)
    return folder


def honest(step: int) -> dict[str, Any]:
    return {
        "global_step": step,
        "epoch": step / 10,
        "max_steps": 20,
        "log_history": [{"loss": 0.5, "step": step}],
    }


def steps_in(home: Path) -> dict[int, Any]:
    return {stored.record.training.step: stored.record for stored in RecordStore(home).records()}


DEEP = b'{"global_step": 12, "log_history": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}"
#: Folder, what its trainer_state.json holds, and what the error must name.
HOSTILE = [
    ("checkpoint-6", {"global_step": -1}, "global_step"),
    ("checkpoint-8", {"global_step": 2**63}, "global_step"),
    ("checkpoint-10", b'{"global_step": 1e300}', "global_step"),
    ("checkpoint-12", DEEP, "log_history[0]"),
    ("checkpoint-14", b'{"global_step": 14, "log_history": [', "not valid JSON"),
    ("checkpoint-16", {"global_step": 16, "log_history": "many"}, "log_history"),
]


def test_import_records_the_honest_checkpoints_and_names_each_hostile_file_and_field(
    tmp_path: Path, isolated_store: Path
) -> None:
    run = tmp_path / "run"
    for step in (2, 4):
        checkpoint(run, f"checkpoint-{step}", honest(step))
    for name, state, _ in HOSTILE:
        checkpoint(run, name, state if isinstance(state, bytes) else json.dumps(state).encode())
    # Text that is not UTF-8 in a field is no reason to refuse: it is recorded escaped.
    checkpoint(run, "checkpoint-18", b'{"global_step": 18, "log_history": [{"step": 18, "l\xffoss": 2.5}]}')
    with Receiver() as receiver:
        imported = cli("import", str(run), "--sink", receiver.url)
        assert imported.returncode == 1, imported.stderr
        receiver.wait_for(3)
    assert "Traceback" not in imported.stderr
    for name, _, field in HOSTILE:
        said = [line for line in imported.stderr.splitlines() if f"{name}/trainer_state.json" in line]
        assert len(said) == 1 and field in said[0], imported.stderr
    records = steps_in(isolated_store)
    assert sorted(records) == [2, 4, 18]
    assert records[18].training.metrics["l\\xffoss"] == 2.5
    assert {p["metadata"]["id"] for p in receiver.accepted_payloads()} == {r.id for r in records.values()}


def test_flush_records_every_job_beside_a_hostile_checkpoint_and_names_it(
    tmp_path: Path, isolated_store: Path
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    checkpoint(first, "checkpoint-2", honest(2))
    checkpoint(second, "checkpoint-2", honest(2))
    with Receiver() as receiver:
        env = {"CHECKPOINT_RECORDS_SINKS": receiver.url}
        for run in (first, second):
            assert cli("import", str(run), env=env).returncode == 0
        receiver.wait_for(2)
        # Then both runs leave checkpoints without records (killed before the commit); one is hostile.
        checkpoint(second, "checkpoint-4", {"global_step": -4})
        checkpoint(second, "checkpoint-6", honest(6))
        checkpoint(first, "checkpoint-4", honest(4))
        flushed = cli("flush", env=env)
        assert flushed.returncode == 0, flushed.stderr
        receiver.wait_for(4)
    assert "Traceback" not in flushed.stderr
    assert (
        f"cannot record a checkpoint: {second}/checkpoint-4/trainer_state.json: global_step" in flushed.stderr
    )
    jobs: dict[str, list[int]] = {}
    for stored in RecordStore(isolated_store).records():
        jobs.setdefault(stored.record.metadata.job_name, []).append(stored.record.training.step)
    assert {name: sorted(steps) for name, steps in jobs.items()} == {"first": [2, 4], "second": [2, 6]}
    assert {d.state for d in RecordStore(isolated_store).outbox.deliveries()} == {"delivered"}


def test_a_run_directory_whose_name_is_not_utf8_keeps_its_records_live_and_on_import(
    tmp_path: Path, isolated_store: Path
) -> None:
    run = tmp_path / os.fsdecode(b"run-\xff")
    folder = checkpoint(run, "checkpoint-1", None)
    with Receiver() as receiver, CheckpointRecorder(sinks=[receiver.url]) as recorder:
        metrics = {os.fsdecode(b"acc-\xff"): 0.5}  # a metric named after such a file
        record = recorder.record(folder, step=1, train_loss=0.5, metrics=metrics).result(60)
        assert record is not None and record.training.metrics["acc-\\xff"] == 0.5
        assert recorder.delivery.flush(30).pending == 0
    assert record.spec.directory == f"{tmp_path}/run-\\xff/checkpoint-1"
    assert receiver.accepted_payloads()[0]["metadata"]["id"] == record.id
    listing = cli("list")
    assert listing.returncode == 0 and "run-\\xff" in listing.stdout, listing.stderr
    again = cli("import", str(run))  # the same store knows the directory: nothing twice
    assert again.returncode == 0 and "imported 0 checkpoints" in again.stderr, again.stderr
    other = tmp_path / "other-store"
    imported = cli("import", str(run), "--store", str(other))
    assert imported.returncode == 0 and "imported 1 checkpoint" in imported.stderr, imported.stderr
    [copy] = RecordStore(other).records()
    assert (copy.record.id, copy.record.spec.directory) == (record.id, record.spec.directory)


def test_an_accelerate_checkpoint_killed_before_its_commit_gets_its_own_step_not_a_folder_number(
    tmp_path: Path, isolated_store: Path
) -> None:
    """``checkpoint_<n>`` counts saves: saved every 2 steps, ``checkpoint_2`` is step 6, and recovery
    must not mistake it for the record of step 2 (``checkpoint_0``)."""
    folders = [checkpoint(tmp_path / "project" / "checkpoints", f"checkpoint_{n}", None) for n in range(3)]
    with CheckpointRecorder() as recorder:
        for folder, step in zip(folders[:2], (2, 4), strict=True):
            assert recorder.record(folder, step=step).result(60) is not None
    # checkpoint_2 was written at step 6, and the process died before its record was stored.
    flushed = cli("flush")
    assert flushed.returncode == 0 and "recorded 1 checkpoint from disk" in flushed.stderr, flushed.stderr
    records = steps_in(isolated_store)
    assert sorted(records) == [2, 4, 6]
    assert records[6].spec.directory == str(folders[2]) and records[6].training.recovered
    assert cli("flush").stderr.count("recorded") == 0  # once


def test_pull_never_writes_outside_its_directory(tmp_path: Path) -> None:
    """A record an older release let in (or a registry handed over) names ``../`` or an absolute path:
    ``pull`` refuses it before writing anything."""
    remote = tmp_path / "bucket" / "run" / "checkpoint-5"
    remote.mkdir(parents=True)
    (remote / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "bucket" / "run" / "planted.txt").write_bytes(b"owned")
    honest_record = make_record(5)
    files = [
        FileEntry(path="model.safetensors", size=7),
        FileEntry.model_construct(path="../planted.txt", size=5),
    ]
    hostile = honest_record.model_copy(
        update={
            "spec": honest_record.spec.model_copy(update={"source_path": remote.as_uri()}),
            "status": honest_record.status.model_copy(
                update={"files": files, "upload": UploadStatus(state="uploaded", progress=1.0)}
            ),
        }
    )
    target = tmp_path / "pulled" / "here"
    with pytest.raises(InvalidValue, match=r"status.files\[1\].path"):
        pull(hostile, target, None)
    assert not (tmp_path / "pulled").exists()
    with pytest.raises(InvalidValue, match="relative path"):
        contained(target, "/etc/passwd")
    target.mkdir(parents=True)
    os.symlink(tmp_path, target / "link")
    with pytest.raises(InvalidValue, match="leads outside"):
        contained(target, "link/planted.txt")
    assert contained(target, "sub/model.safetensors") == target / "sub" / "model.safetensors"
