"""Checkpoints uploaded to a real S3 API (moto in server mode on 127.0.0.1) through the real s3fs client."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from checkpoint_records import CheckpointRecordCallback, ConfigurationError, RecordStore
from checkpoint_records.recorder import CheckpointRecorder
from checkpoint_records.storage import StorageConfig, queue, upload_state
from commands import TESTS, cli
from http_server import Receiver
from s3_server import MotoServer
from trainer_runs import tiny_trainer

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing-key",
    "AWS_SECRET_ACCESS_KEY": "testing-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    recording = tmp_path_factory.mktemp("moto") / "recording.jsonl"
    server = MotoServer(env={"MOTO_RECORDER_FILEPATH": str(recording)}).start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Bucket:
    name: str
    endpoint: str
    client: Any

    @property
    def options(self) -> dict[str, Any]:
        return {"client_kwargs": {"endpoint_url": self.endpoint}}

    def url(self, prefix: str) -> str:
        return f"s3://{self.name}/{prefix}"

    def keys(self, prefix: str = "") -> dict[str, int]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix)
        return {item["Key"]: item["Size"] for page in pages for item in page.get("Contents", [])}

    def sha256(self, key: str) -> str:
        body = self.client.get_object(Bucket=self.name, Key=key)["Body"]
        digest = hashlib.sha256()
        for chunk in iter(lambda: body.read(2**20), b""):
            digest.update(chunk)
        return digest.hexdigest()


def use_s3(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> Bucket:
    """Dummy credentials in the environment (where s3fs looks) and a fresh bucket."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    client = boto3.client("s3", endpoint_url=endpoint)
    name = f"ckpt-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    return Bucket(name, endpoint, client)


@pytest.fixture
def bucket(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Bucket:
    return use_s3(monkeypatch, moto.endpoint)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_trainer_run_uploads_every_checkpoint_and_the_sinks_get_where_it_lives(
    tmp_path: Path, isolated_store: Path, bucket: Bucket
) -> None:
    output = tmp_path / "out"
    with Receiver() as receiver:
        callback = CheckpointRecordCallback(
            sinks=[receiver.url], storage=bucket.url("runs"), storage_options=bucket.options, flush_timeout=60
        )
        tiny_trainer(output, [callback]).train()
        store = RecordStore(isolated_store)
        records = [item.record for item in store.records()]
        assert [record.training.step for record in records] == [2, 4, 6]
        keys = bucket.keys()
        for record in records:
            upload = record.status.upload
            assert upload is not None and upload.state == "uploaded" and upload.progress == 1.0
            assert record.spec.storage_provider == "s3"
            assert record.spec.source_path == f"s3://{bucket.name}/runs/{record.name}"
            assert record.status.storage_provider_id == StorageConfig(bucket.url("runs")).provider_id
            assert record.metadata.revision == 2
            for entry in record.status.files:
                local = Path(record.spec.directory) / entry.path
                key = f"runs/{record.name}/{entry.path}"
                assert keys[key] == entry.size == local.stat().st_size
                assert entry.sha256 == sha256_of(local) == bucket.sha256(key)
            assert upload_state(store, record) == "uploaded"
        # Each record arrived twice: as saved, then as uploaded (its own Idempotency-Key).
        received = receiver.wait_for(6)
        uploaded = [p for p in (r.payload for r in received) if p["status"].get("upload")]
        assert sorted(p["metadata"]["name"] for p in uploaded) == sorted(r.name for r in records)
        assert all(p["spec"]["sourcePath"].startswith(f"s3://{bucket.name}/runs/") for p in uploaded)
        receiver.assert_idempotent()
    assert not (output / "_checkpoint-records-staging").exists()


def test_a_200_mb_file_goes_in_parts_and_its_hash_is_recorded(
    tmp_path: Path, isolated_store: Path, bucket: Bucket
) -> None:
    checkpoint = tmp_path / "checkpoint-1"
    checkpoint.mkdir()
    large = checkpoint / "model.safetensors"
    with open(large, "wb") as handle:  # sparse: created instantly, read as zeros
        handle.truncate(200 * 2**20)
    with CheckpointRecorder(job_name="big", storage=bucket.url("big"), storage_options=bucket.options) as recorder:
        recorder.record(checkpoint, step=1)
        assert recorder.uploads.flush(120) == 0
        record = recorder.store.get("big-checkpoint-1")
    assert record is not None
    [entry] = record.record.status.files
    key = f"big/{record.record.name}/model.safetensors"
    head = bucket.client.head_object(Bucket=bucket.name, Key=key)
    assert head["ContentLength"] == 200 * 2**20
    assert head["ETag"].strip('"').endswith("-13")  # a multipart upload: 200 MiB in 16 MiB parts
    zeros = hashlib.sha256()
    for _ in range(200):
        zeros.update(bytes(2**20))
    assert entry.sha256 == zeros.hexdigest() == bucket.sha256(key)


def test_training_goes_on_while_the_endpoint_is_down_and_rotated_checkpoints_upload_when_it_is_back(
    tmp_path: Path, isolated_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("checkpoint_records.storage.uploads.backoff", lambda attempts: 0.2)
    down = MotoServer()  # not started yet: nothing listens on its port
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    output = tmp_path / "out"
    options = {
        "client_kwargs": {"endpoint_url": down.endpoint},
        "config_kwargs": {"connect_timeout": 1, "retries": {"max_attempts": 1}},
    }
    with Receiver() as receiver:
        callback = CheckpointRecordCallback(
            sinks=[receiver.url], storage="s3://later/run", storage_options=options, flush_timeout=0
        )
        tiny_trainer(output, [callback], save_total_limit=1).train()
        # Every record (and the rotations) was delivered although no upload could be made: uploads have a
        # lane of their own.
        assert {p["metadata"]["name"] for p in (r.payload for r in receiver.wait_for(5))} == {
            "out-checkpoint-2",
            "out-checkpoint-4",
            "out-checkpoint-6",
        }
        assert sorted(path.name for path in output.glob("checkpoint-*")) == ["checkpoint-6"]
        store = callback.recorder.store
        states = [upload_state(store, item.record) or "" for item in store.records()]
        assert all(state.startswith(("pending", "uploading")) for state in states), states
        assert any("(retrying: " in state and "Could not connect" in state for state in states), states
        assert all(item.record.status.upload is None for item in store.records())  # nothing marked uploaded
        down.start()
        try:
            boto3.client("s3", endpoint_url=down.endpoint).create_bucket(Bucket="later")
            assert callback.recorder.uploads.flush(60) == 0
            assert callback.recorder.delivery.flush(30).pending == 0
            client = boto3.client("s3", endpoint_url=down.endpoint)
            for item in store.records():
                record = item.record
                assert record.status.upload is not None and record.status.upload.state == "uploaded"
                for entry in record.status.files:
                    body = client.get_object(Bucket="later", Key=f"run/{record.name}/{entry.path}")["Body"].read()
                    assert len(body) == entry.size and hashlib.sha256(body).hexdigest() == entry.sha256
            deleted = [item.record for item in store.records() if item.record.status.status == "deleted"]
            assert len(deleted) == 2  # rotated away locally, uploaded in full from staging all the same
        finally:
            callback.recorder.close()
            down.stop()
    assert not (output / "_checkpoint-records-staging").exists()


def recorded_puts(path: Path) -> list[str]:
    """The object keys moto's recorder saw data sent to (PUT object or part)."""
    keys = []
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        if entry["method"] == "PUT":
            keys.append(entry["url"].split("?")[0])
    return keys


def test_killed_mid_upload_resumes_file_by_file_without_sending_a_complete_file_twice(
    tmp_path: Path, isolated_store: Path, moto: MotoServer, bucket: Bucket
) -> None:
    output = tmp_path / "out"
    env = {**os.environ, "UPLOAD_RUN_STORAGE": bucket.url("killed"), "AWS_ENDPOINT_URL": moto.endpoint}
    run = subprocess.run(
        [sys.executable, str(TESTS / "upload_run.py"), str(output)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert run.returncode == -9, run.stderr[-3000:]
    store = RecordStore(isolated_store)
    [stored] = store.records()
    record = stored.record
    files = {row.path: row for row in queue.rows(store, record.id)}
    before = bucket.keys("killed/")
    prefix = f"killed/{record.name}/"
    # Everything but the file in flight was complete; the partial one is not visible as an object.
    assert set(before) == {prefix + path for path in files if path != "zz-extra.bin"}
    assert files["zz-extra.bin"].state in ("pending", "committing") and files["zz-extra.bin"].sent > 0
    assert upload_state(store, record).startswith("uploading ")  # type: ignore[union-attr]

    moto.record(True)
    try:
        resumed = cli("upload", "--timeout", "120", env={**env, "CHECKPOINT_RECORDS_STORAGE": bucket.url("killed")})
    finally:
        moto.record(False)
    assert resumed.returncode == 0, resumed.stderr
    puts = recorded_puts(Path(moto.env["MOTO_RECORDER_FILEPATH"]))
    assert puts and all(key.endswith(f"/{prefix}zz-extra.bin") for key in puts), puts

    final = store.get(record.id)
    assert final is not None and final.record.status.upload is not None
    assert final.record.status.upload.state == "uploaded"
    for entry in final.record.status.files:
        local = Path(final.record.spec.directory) / entry.path
        assert entry.sha256 == sha256_of(local) == bucket.sha256(prefix + entry.path)
