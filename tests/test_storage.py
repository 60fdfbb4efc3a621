"""Checkpoints uploaded to a real S3 API (moto in server mode on 127.0.0.1) through the real s3fs client."""

from __future__ import annotations

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

import pytest

from checkpoint_records import CheckpointRecord, CheckpointRecordCallback, ConfigurationError, RecordStore
from checkpoint_records.formats.llama_stack import LlamaStackFormat
from checkpoint_records.recorder import CheckpointRecorder
from checkpoint_records.storage import StorageConfig, upload_state
from commands import TESTS, cli
from http_server import Receiver
from s3_server import MotoServer
from trainer_runs import tiny_trainer

boto3 = pytest.importorskip("boto3")  # the storage and integration extras: s3fs, moto[server]
pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing-key",
    "AWS_SECRET_ACCESS_KEY": "testing-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def checkpoint_of(directory: Path, size: int, *names: str) -> Path:
    """A checkpoint directory holding ``names`` (``model.safetensors`` by default), ``size`` random bytes each."""
    directory.mkdir(parents=True)
    for name in names or ("model.safetensors",):
        (directory / name).write_bytes(os.urandom(size))
    return directory


def recorded(recorder: CheckpointRecorder, directory: Path, **save: Any) -> CheckpointRecord | None:
    """``recorder.record(...)``, then the record once the recorder's thread has stored it."""
    return recorder.record(directory, **save).result(60)


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
            assert LlamaStackFormat().render(record)["path"] == record.spec.source_path
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
    with CheckpointRecorder(
        job_name="big", storage=bucket.url("big"), storage_options=bucket.options
    ) as recorder:
        recorded(recorder, checkpoint, step=1)
        assert recorder.uploads.flush(120) == 0
        record = recorder.store.get("big-step-1")
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
            sinks=[receiver.url], storage="s3://later/run", storage_options=options, flush_timeout=3
        )  # the end of training waits 3 s for the uploads it cannot make, then delivers every record
        tiny_trainer(output, [callback], save_total_limit=1).train()
        # Every record (and the rotations) was delivered although no upload could be made: uploads have a
        # lane of their own.
        receiver.wait_for_statuses(
            {"out-checkpoint-2": "deleted", "out-checkpoint-4": "deleted", "out-checkpoint-6": "available"}
        )
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
            callback.recorder.books.start_delivery()  # training has ended: what is left goes out as a flush sends it
            assert callback.recorder.delivery.flush(30).pending == 0
            client = boto3.client("s3", endpoint_url=down.endpoint)
            for item in store.records():
                record = item.record
                assert record.status.upload is not None and record.status.upload.state == "uploaded"
                for entry in record.status.files:
                    body = client.get_object(Bucket="later", Key=f"run/{record.name}/{entry.path}")[
                        "Body"
                    ].read()
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
    files = {row.path: row for row in store.uploads.rows(record.id)}
    before = bucket.keys("killed/")
    prefix = f"killed/{record.name}/"
    # Everything but the file in flight was complete; the partial one is not visible as an object.
    assert set(before) == {prefix + path for path in files if path != "zz-extra.bin"}
    assert files["zz-extra.bin"].state in ("pending", "committing") and files["zz-extra.bin"].sent > 0
    assert upload_state(store, record).startswith("uploading ")  # type: ignore[union-attr]

    moto.record(True)
    try:
        resumed = cli(
            "upload", "--timeout", "120", env={**env, "CHECKPOINT_RECORDS_STORAGE": bucket.url("killed")}
        )
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


def known_user(endpoint: str) -> dict[str, str]:
    """An IAM user allowed everything on S3, made with moto's unauthenticated first three requests."""
    iam = boto3.client("iam", endpoint_url=endpoint)
    iam.create_user(UserName="trainer")
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_user_policy(UserName="trainer", PolicyName="s3", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="trainer")["AccessKey"]
    return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}


def test_wrong_credentials_fail_clearly_nothing_is_marked_uploaded_and_a_retry_succeeds(
    tmp_path: Path, isolated_store: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Requests after the first three must be signed by a key moto's IAM knows.
    strict = MotoServer(env={"INITIAL_NO_AUTH_ACTION_COUNT": "3"}).start()
    try:
        for name, value in CREDENTIALS.items():
            monkeypatch.setenv(name, value)
        good = known_user(strict.endpoint)
        boto3.client(
            "s3",
            endpoint_url=strict.endpoint,
            aws_access_key_id=good["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=good["AWS_SECRET_ACCESS_KEY"],
        ).create_bucket(Bucket="denied")
        secret = "wrong-SECRET-value-4711"
        options = {
            "key": "AKIAWRONGKEY",
            "secret": secret,
            "client_kwargs": {"endpoint_url": strict.endpoint},
        }
        checkpoint = checkpoint_of(tmp_path / "checkpoint-3", 1000)
        caplog.set_level(logging.INFO, logger="checkpoint_records")
        with CheckpointRecorder(
            job_name="creds", storage="s3://denied/x", storage_options=options
        ) as recorder:
            recorded(recorder, checkpoint, step=3)
            assert recorder.uploads.flush(30) == 0  # nothing left to try: it failed
            stored = recorder.store.get("creds-step-3")
        assert stored is not None
        upload = stored.record.status.upload
        assert upload is not None and upload.state == "failed"
        assert "access denied by s3://denied/x: check the credentials" in (upload.error or "")
        assert stored.record.spec.source_path == "" and stored.record.status.files[0].sha256 is None
        assert [row.state for row in RecordStore(isolated_store).uploads.rows(stored.record.id)] == ["failed"]
        assert secret not in (isolated_store / "records.db").read_bytes().decode("latin-1")
        assert secret not in caplog.text
        assert "upload: failed: model.safetensors: access denied" in cli("list").stdout

        fixed = {**good, "AWS_ENDPOINT_URL": strict.endpoint, "CHECKPOINT_RECORDS_STORAGE": "s3://denied/x"}
        retried = cli("upload", "--retry-failed", "--timeout", "60", env=fixed)
        assert retried.returncode == 0, retried.stderr
        assert "retrying 1 failed files" in retried.stderr
        final = RecordStore(isolated_store).get("creds-step-3")
        assert final is not None and final.record.status.upload is not None
        assert final.record.status.upload.state == "uploaded"
        assert final.record.status.files[0].sha256 == sha256_of(checkpoint / "model.safetensors")
    finally:
        strict.stop()


def test_verify_and_pull_name_every_file_that_differs_or_is_missing(
    tmp_path: Path, isolated_store: Path, moto: MotoServer, bucket: Bucket
) -> None:
    checkpoint = checkpoint_of(tmp_path / "checkpoint-5", 5000, "a.bin", "b.bin", "c.bin")
    with CheckpointRecorder(
        job_name="v", storage=bucket.url("v"), storage_options=bucket.options
    ) as recorder:
        recorded(recorder, checkpoint, step=5)
        assert recorder.uploads.flush(30) == 0
    env = {"AWS_ENDPOINT_URL": moto.endpoint}
    assert cli("verify", "v-step-5").returncode == 0
    assert cli("verify", "v-step-5", "--remote", env=env).returncode == 0

    pulled = tmp_path / "pulled"
    result = cli("pull", "v-step-5", str(pulled), env=env)
    assert result.returncode == 0, result.stderr
    for name in ("a.bin", "b.bin", "c.bin"):
        assert (pulled / name).read_bytes() == (checkpoint / name).read_bytes()

    with open(checkpoint / "a.bin", "r+b") as handle:  # same size, one byte changed
        handle.write(b"\x00" if handle.read(1) != b"\x00" else b"\x01")
    (checkpoint / "b.bin").unlink()
    local = cli("verify", "v-step-5")
    assert local.returncode == 1
    assert "a.bin: content differs" in local.stderr and "b.bin: missing" in local.stderr
    assert "c.bin" not in local.stderr

    key = "v/v-step-5/c.bin"
    bucket.client.put_object(Bucket=bucket.name, Key=key, Body=os.urandom(5000))
    remote = cli("verify", "v-step-5", "--remote", env=env)
    assert remote.returncode == 1 and "c.bin: content differs" in remote.stderr, remote.stderr
    bucket.client.delete_object(Bucket=bucket.name, Key="v/v-step-5/a.bin")
    again = cli("pull", "v-step-5", str(tmp_path / "again"), env=env)
    assert again.returncode == 1
    assert "a.bin: missing" in again.stderr and "c.bin: content differs" in again.stderr


def lane_cycles(recorder: CheckpointRecorder, count: int = 2) -> None:
    """Let the upload lane run whole passes (retention is applied at the start of each)."""
    for _ in range(count):
        recorder.uploads.settled.clear()
        recorder.uploads.wake()
        assert recorder.uploads.settled.wait(10)


def test_mirror_retention_deletes_the_remote_copy_of_rotated_checkpoints(
    tmp_path: Path, isolated_store: Path, bucket: Bucket
) -> None:
    output = tmp_path / "out"
    callback = CheckpointRecordCallback(
        storage=bucket.url("m"), storage_options=bucket.options, storage_retention="mirror", flush_timeout=60
    )
    tiny_trainer(output, [callback], save_total_limit=1).train()
    recorder = callback.recorder
    try:
        store = recorder.store
        deleted = [item.record for item in store.records() if item.record.status.status == "deleted"]
        assert len(deleted) == 2
        assert recorder.uploads.flush(30) == 0
        lane_cycles(recorder)
        assert all(upload_state(store, record) == "deleted remotely (mirror retention)" for record in deleted)
        assert set({key.split("/")[1] for key in bucket.keys("m/")}) == {"out-checkpoint-6"}
        for record in deleted:
            final = store.get(record.id)
            assert final is not None and final.record.status.upload is not None
            assert final.record.status.upload.state == "deleted" and final.record.spec.source_path == ""
    finally:
        recorder.close()


def test_mirror_retention_keeps_the_best_checkpoint(
    tmp_path: Path, isolated_store: Path, bucket: Bucket
) -> None:
    checkpoint = checkpoint_of(tmp_path / "checkpoint-7", 2000)
    with CheckpointRecorder(
        job_name="best", storage=bucket.url("b"), storage_options=bucket.options, storage_retention="mirror"
    ) as recorder:
        record = recorded(recorder, checkpoint, step=7)
        assert record is not None and recorder.uploads.flush(30) == 0
        stored = recorder.store.get(record.id)
        assert stored is not None
        training = stored.record.training.model_copy(update={"best": True})
        best = stored.record.model_copy(
            update={"status": stored.record.status.model_copy(update={"metadata": training})}
        )
        recorder.store.put(best)
        for path in checkpoint.iterdir():
            path.unlink()
        checkpoint.rmdir()
        recorder.books.record_rotations()
        lane_cycles(recorder)
        final = recorder.store.get(record.id)
    assert final is not None and final.record.status.status == "deleted"
    assert final.record.status.upload is not None and final.record.status.upload.state == "uploaded"
    assert list(bucket.keys("b/")) == ["b/best-step-7/model.safetensors"]


def test_without_hard_links_the_lane_copies_and_a_file_rotated_first_is_reported_failed(
    tmp_path: Path, isolated_store: Path, bucket: Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(source: Any, target: Any) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr("checkpoint_records.storage.staging.os.link", no_links)
    kept, rotated = tmp_path / "run" / "checkpoint-1", tmp_path / "run" / "checkpoint-2"
    for checkpoint in (kept, rotated):
        checkpoint_of(checkpoint, 3000, "weights.bin")
    config = StorageConfig(bucket.url("c"), bucket.options)
    with CheckpointRecorder(job_name="c", storage=config) as recorder:
        recorder.uploads.start = lambda: None  # type: ignore[method-assign]  # queued, not sent yet
        first = recorded(recorder, kept, step=1)
        second = recorded(recorder, rotated, step=2)
        assert first is not None and second is not None
        (rotated / "weights.bin").unlink()  # rotated away before the lane could copy it
        del recorder.uploads.start
        assert recorder.uploads.flush(30) == 0
        done, failed = recorder.store.get(first.id), recorder.store.get(second.id)
    assert done is not None and done.record.status.upload is not None
    assert done.record.status.upload.state == "uploaded"
    assert done.record.status.files[0].sha256 == sha256_of(kept / "weights.bin")
    assert failed is not None and failed.record.status.upload is not None
    assert failed.record.status.upload.state == "failed"
    assert "deleted locally (rotated away?) before it could be staged" in (
        failed.record.status.upload.error or ""
    )
    assert list(bucket.keys("c/")) == ["c/c-step-1/weights.bin"]


def test_a_callback_without_storage_never_imports_the_storage_backends() -> None:
    code = (
        "import sys; from checkpoint_records import CheckpointRecordCallback; CheckpointRecordCallback(); "
        "print(sorted(name for name in sys.modules if name.split('.')[0] in ('s3fs', 'aiobotocore', 'gcsfs')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"storage": "bucket/prefix"}, "is not a URL"),
        (
            {"storage": "s3://b/p", "storage_retention": "forever"},
            "storage_retention='forever' is not one of",
        ),
        ({"storage": "nosuchfs://b/p"}, "no usable fsspec backend for nosuchfs://"),
    ],
)
def test_bad_storage_configuration_fails_at_construction(arguments: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        CheckpointRecordCallback(**arguments)


def test_storage_from_the_environment_with_credentials_where_s3fs_looks(
    tmp_path: Path, isolated_store: Path, bucket: Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", bucket.endpoint)
    monkeypatch.setenv("CHECKPOINT_RECORDS_STORAGE", bucket.url("env"))
    checkpoint = checkpoint_of(tmp_path / "checkpoint-9", 1000)
    with CheckpointRecorder(job_name="env") as recorder:
        recorded(recorder, checkpoint, step=9)
        assert recorder.uploads.flush(30) == 0
        stored = recorder.store.get("env-step-9")
    assert stored is not None and stored.record.spec.source_path == f"s3://{bucket.name}/env/env-step-9"
    database = (isolated_store / "records.db").read_bytes().decode("latin-1")
    assert CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in database
    assert "upload: uploaded" in cli("inspect", "env-step-9").stdout


def test_secrets_in_a_storage_url_or_options_are_never_shown() -> None:
    config = StorageConfig("ftp://user:pa55word@files.internal/ckpt?token=abc123", {"password": "opt-secret"})
    assert config.public == "ftp://files.internal/ckpt?token=***"
    assert config.redact("login pa55word failed with opt-secret, abc123") == "login *** failed with ***, ***"


def test_a_file_committed_just_before_a_kill_is_not_sent_again_and_its_record_is_revised(
    tmp_path: Path, isolated_store: Path, moto: MotoServer, bucket: Bucket
) -> None:
    checkpoint = checkpoint_of(tmp_path / "checkpoint-4", 4000)
    with CheckpointRecorder(
        job_name="k", storage=bucket.url("k"), storage_options=bucket.options
    ) as recorder:
        record = recorded(recorder, checkpoint, step=4)
        assert record is not None and recorder.uploads.flush(30) == 0
    store = RecordStore(isolated_store)
    [row] = store.uploads.rows(record.id)
    # As a process leaves it when killed between completing the upload and noting it (the file's last
    # state and the record's revision are one transaction): hash known, file open, record without it.
    store.uploads.update(row, state="committing")
    before = store.put(record)
    assert before.record.status.upload is None
    moto.record(True)
    try:
        resumed = cli(
            "upload", env={"AWS_ENDPOINT_URL": moto.endpoint, "CHECKPOINT_RECORDS_STORAGE": bucket.url("k")}
        )
    finally:
        moto.record(False)
    assert resumed.returncode == 0, resumed.stderr
    assert recorded_puts(Path(moto.env["MOTO_RECORDER_FILEPATH"])) == []
    assert [row.state for row in store.uploads.rows(record.id)] == ["uploaded"]
    revised = store.get(record.id)
    assert revised is not None and revised.revision == before.revision + 1
    assert revised.record.status.upload is not None and revised.record.status.upload.state == "uploaded"
    assert revised.record.spec.source_path == f"s3://{bucket.name}/k/k-step-4"


def test_a_shared_disk_destination_through_fsspec_file_urls(tmp_path: Path, isolated_store: Path) -> None:
    checkpoint = checkpoint_of(tmp_path / "run" / "checkpoint-2", 6 * 2**20)
    (checkpoint / "sub").mkdir()
    (checkpoint / "sub" / "extra.json").write_text("{}")
    shared = tmp_path / "shared"
    shared.mkdir()
    with CheckpointRecorder(job_name="disk", storage=f"file://{shared}") as recorder:
        record = recorded(recorder, checkpoint, step=2)
        assert record is not None and recorder.uploads.flush(30) == 0
        stored = recorder.store.get(record.id)
    assert stored is not None and stored.record.spec.storage_provider == "file"
    copy = shared / "disk-step-2"
    assert sorted(str(path.relative_to(copy)) for path in copy.rglob("*") if path.is_file()) == [
        "model.safetensors",
        "sub/extra.json",
    ]
    for entry in stored.record.status.files:
        assert entry.sha256 == sha256_of(copy / entry.path) == sha256_of(checkpoint / entry.path)
    assert cli("verify", "disk-step-2", "--remote").returncode == 0
