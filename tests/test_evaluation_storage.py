"""An evaluation worker on another store, away from the checkpoints' folders: it pulls each checkpoint
(one of them rotated away since) from S3 (moto in server mode on 127.0.0.1, the real s3fs client),
verifies it against the record's hashes, and only then runs the evaluator on it."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from checkpoint_records import CheckpointRecordCallback, RecordStore
from checkpoint_records.build import as_deleted
from checkpoint_records.record import utc_now_iso
from commands import cli
from evaluators import PLAIN, evaluate, runs_logged, write_script
from s3_server import MotoServer
from trainer_runs import tiny_trainer

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")
from test_storage import use_s3  # after the extras are known to be there


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = MotoServer().start()
    try:
        yield server
    finally:
        server.stop()


def test_a_worker_elsewhere_pulls_each_checkpoint_from_s3_and_verifies_it_before_it_runs(
    tmp_path: Path, moto: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = use_s3(monkeypatch, moto.endpoint)
    training_store, output = tmp_path / "training-store", tmp_path / "run"
    callback = CheckpointRecordCallback(
        store=training_store, storage=bucket.url("runs"), storage_options=bucket.options, flush_timeout=60
    )
    tiny_trainer(output, [callback], run_name="pulled").train()
    env = {"AWS_ENDPOINT_URL": moto.endpoint}
    if any(
        stored.record.status.upload.state != "uploaded" for stored in RecordStore(training_store).records()
    ):
        assert (
            cli("--store", str(training_store), "upload", "--storage", bucket.url("runs"), env=env).returncode
            == 0
        )

    # The worker's machine: its own store, holding the records as a registry receives them, and none of
    # the checkpoints' folders.
    worker_store = RecordStore(tmp_path / "worker-store")
    records = sorted((s.record for s in RecordStore(training_store).records()), key=lambda r: r.training.step)
    rotated = records[2]  # rotated away since it was uploaded: its readiness is said again of the copy
    for record in records:
        assert record.status.upload is not None and record.status.upload.state == "uploaded"
        worker_store.put(as_deleted(record, utc_now_iso()) if record is rotated else record)
    shutil.rmtree(output)
    tampered = records[1]
    key = f"runs/{tampered.name}/model.safetensors"
    size = bucket.client.head_object(Bucket=bucket.name, Key=key)["ContentLength"]
    bucket.client.put_object(Bucket=bucket.name, Key=key, Body=os.urandom(size))

    script = write_script(tmp_path, "plain.py", PLAIN)
    log = tmp_path / "runs.log"
    done = evaluate(
        "--store", str(tmp_path / "worker-store"), "--name", "pulled", "--once", "--attempts", "2",
        "--workdir", str(tmp_path / "work"), "--command", f"{sys.executable} {script} {{directory}}",
        env={**env, "EVAL_LOG": str(log)},
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr  # the tampered checkpoint failed
    assert len(runs_logged(log)) == 2  # never run on the copy that differs
    results = {s.record.id: s.record.status.evaluations["pulled"] for s in worker_store.records()}
    for record in (records[0], rotated):
        result = results[record.id]
        assert result.state == "succeeded", result
        assert result.source == f"pulled from {record.spec.source_path}, verified"
        assert result.metrics["detail/tensors"] > 0
    failed = results[tampered.id]
    assert failed.state == "failed" and failed.attempts == 2 and failed.exit_code is None
    assert failed.reason is not None and failed.reason.startswith(
        f"the copy pulled from {tampered.spec.source_path} differs from the record: model.safetensors: content differs"
    )
    assert not any((tmp_path / "work").iterdir())  # pulled copies are not left behind
