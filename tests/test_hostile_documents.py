"""Documents no store can hold: the registry (a real process) refuses them with 422 naming the field and
stores nothing; a store that already holds such values (an older release let them in) is still read by
every command and by the registry's lists and page, and every other job is still delivered."""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import closing
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import requests

from checkpoint_records import HttpSink, RecordStore
from checkpoint_records.history import LogEntry
from checkpoint_records.job import JobSnapshot, hyper_parameters_from
from checkpoint_records.validation import MAX_DEPTH, TOO_DEEP
from commands import cli
from http_server import Receiver
from records_factory import make_record
from registry_server import serving

TOKEN = "hostile-token-5f1c"


def job_detail(**changes: Any) -> dict[str, Any]:
    detail: dict[str, Any] = {
        "id": "job-1",
        "name": "one",
        "training_technique": "SFT",
        "task_type": "text-generation",
        "base_model_option": "pre-trained",
        "base_model": "tiny-gpt2",
        "status": "Running",
        "progress": 50,
        "training_loss": [{"timestamp": 1700000000, "loss": 2.5}],
        "hyper_parameters": {"learning_rate": 0.001},
        "created_by": "",
        "created_at": 1700000000,
        "updated_at": 1700000100,
    }
    return {**detail, **changes}


def nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value


def record_with(**status_changes: Any) -> str:
    data = json.loads(make_record(4, job="posted").to_json())
    data["status"].update(status_changes)
    return json.dumps(data)


ARRAYS_DEEP = json.dumps(job_detail(hyper_parameters={})).replace(
    '"hyper_parameters": {}', '"hyper_parameters": {"x": ' + "[" * 100_000 + "]" * 100_000 + "}"
)
#: A body no store can hold, and what the problem's detail must name.
REFUSED = [
    (json.dumps(job_detail(name="one\udcff")), "name: not valid Unicode"),
    (json.dumps(job_detail(hyper_parameters=nested(200))), "hyper_parameters.a.a"),
    (ARRAYS_DEEP, "hyper_parameters.x[0]"),
    (
        json.dumps(job_detail(hyper_parameters={"seed": 2**70})),
        "hyper_parameters.seed: an integer beyond 64 bits",
    ),
    (json.dumps(job_detail()).replace('"loss": 2.5', '"loss": 1e999'), "training_loss[0].loss: not a finite"),
    (json.dumps(job_detail(created_at="yesterday")), "created_at"),
    (json.dumps(job_detail(updated_at=10**13)), "updated_at"),
    (record_with(createdAt="yesterday"), "createdAt"),
    (record_with(files=[{"path": "../../outside.txt", "size": 1}]), "status.files[0].path"),
    (record_with(files=[{"path": "/etc/passwd", "size": 1}]), "status.files[0].path"),
]


def test_documents_no_store_can_hold_are_refused_with_422_naming_the_field_and_store_nothing(
    tmp_path: Path, database: str | None
) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    with serving(tmp_path / "registry", tmp_path / "server.log", TOKEN, database=database) as registry:
        for body, field in REFUSED:
            answer = requests.post(f"{registry.url}/v1/records", data=body, headers=headers, timeout=60)
            assert answer.status_code == 422, (field, answer.status_code, answer.text[:300])
            assert answer.headers["content-type"] == "application/problem+json"
            assert field in answer.json()["detail"], (field, answer.json())
        honest = requests.post(f"{registry.url}/v1/records", data=json.dumps(job_detail()), headers=headers)
        assert honest.status_code == 200 and honest.json()["stored"] is True
        assert registry.get("/v1/fine_tuning/jobs").status_code == 200
        store = registry.open_store()
        assert store.records() == [] and [stored.job.id for stored in store.jobs()] == ["job-1"]
    assert "Traceback" not in registry.log.read_text()


def plant(home: Path) -> tuple[str, str]:
    """Rows an older release let in, written straight into the SQLite file: the ids of a record that
    can be repaired (escaped text, a huge number as a float) and of one that cannot (a time that is
    not one)."""
    repaired = json.loads(make_record(3, job="old").to_json())
    repaired["metadata"]["jobName"] = "old\udcff"
    repaired["status"]["metadata"]["metrics"] = {"huge": 10**30, "na\udcffme": 1.0}
    broken = json.loads(make_record(5, job="old").to_json())
    broken["status"]["createdAt"] = "yesterday"
    job = {
        "id": "old-job",
        "name": "old\udcff",
        "status": "Running",
        "hyper_parameters": nested(200),
        "created_at": 1700000000.0,
        "updated_at": 1700000000.0,
    }
    unreal = {**job, "id": "unreal-job", "name": "unreal", "hyper_parameters": {}, "created_at": 1e13}
    with closing(sqlite3.connect(home / "records.db")) as connection, connection:
        for data in (repaired, broken):
            meta = data["metadata"]
            connection.execute(
                "INSERT INTO records (id, name, job_id, step, revision, body, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, 1, ?, ?, ?)",
                (meta["id"], meta["name"], meta["jobId"], data["status"]["metadata"]["step"], json.dumps(data),
                 "2024-01-01T00:00:00Z", "2024-01-01T00:00:00Z"),
            )  # fmt: skip
        for document in (job, unreal):
            connection.execute(
                "INSERT INTO jobs (id, name, revision, status, owner, body, updated_at)"
                " VALUES (?, 'old', 1, 'Running', NULL, ?, 0)",
                (document["id"], json.dumps(document)),
            )
        # A log entry with bytes that are not UTF-8, as SQLite takes them from any writer.
        connection.execute(
            "INSERT INTO log_entries (job_id, seq, step, body) VALUES ('old-job', 0, 1, CAST(? AS TEXT))",
            (b'{"step": 1, "l\xffoss": 2.0}',),
        )
    return repaired["metadata"]["id"], broken["metadata"]["id"]


def test_a_store_holding_values_an_older_release_let_in_is_read_by_every_reader(
    tmp_path: Path, isolated_store: Path
) -> None:
    with Receiver() as receiver:
        store = RecordStore(isolated_store)
        honest = make_record(2, job="honest")
        store.put(honest, [HttpSink(receiver.url).key])  # pending: delivered by the flush below
        store.append_log(honest.metadata.job_id, [LogEntry(seq=0, step=1, values={"loss": 1.0, "step": 1})])
        repaired_id, broken_id = plant(isolated_store)

        listing, as_json, jobs = cli("list"), cli("list", "--json"), cli("jobs")
        for result in (listing, as_json, jobs):
            assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
        assert "honest-checkpoint-2" in listing.stdout and "old-checkpoint-3" in listing.stdout
        assert {item["metadata"]["id"] for item in json.loads(as_json.stdout)} == {honest.id, repaired_id}
        assert "cannot be read" in listing.stderr and broken_id in listing.stderr
        inspected = cli("inspect", repaired_id)
        assert inspected.returncode == 0 and "old\\xff" in inspected.stdout, inspected.stderr
        flushed = cli("flush", "--sink", receiver.url)
        assert flushed.returncode == 0 and "Traceback" not in flushed.stderr, flushed.stderr
        assert receiver.wait_for(1)[0].payload["metadata"]["id"] == honest.id

    with serving(isolated_store, tmp_path / "server.log") as registry:
        checkpoints = registry.get("/v1/checkpoints")
        assert checkpoints.status_code == 200
        assert {item["metadata"]["id"] for item in checkpoints.json()["data"]} >= {honest.id, repaired_id}
        for path in ("/v1/fine_tuning/jobs", "/v1/post-training/jobs", "/v1/training-jobs/old-job", "/"):
            assert registry.get(path).status_code == 200, path
        assert registry.get("/v1/training-jobs/unreal-job").status_code == 404  # left out, not a 500
        page = registry.get(f"/jobs/{honest.metadata.job_id}")
        assert page.status_code == 200 and "honest-checkpoint-2" in page.text
        feed = registry.get("/ui/api/jobs/old-job")
        assert feed.status_code == 200, feed.text[:300]
    assert "Traceback" not in registry.log.read_text()


def test_hyper_parameters_we_build_are_bounded_never_refused() -> None:
    """A training loop's own arguments may hold anything: what the job document keeps is summarised past
    64 levels, escaped, and a number beyond 64 bits becomes a float, so the job is still stored."""
    deep: Any = "leaf"
    for _ in range(200):
        deep = [deep]
    args = SimpleNamespace(
        learning_rate=2**70,
        num_train_epochs=deep,
        optim=os.fsdecode(b"adam-\xff"),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
    )
    found = hyper_parameters_from(args, "Trainer")  # type: ignore[arg-type]
    assert found["learning_rate"] == float(2**70) and found["optim"] == "adam-\\xff"
    level, depth = found["num_train_epochs"], 1
    while isinstance(level, list):
        level, depth = level[0], depth + 1
    assert level == TOO_DEEP and depth <= MAX_DEPTH + 1
    snapshot = JobSnapshot(
        id="j", name="j", status="Running", hyper_parameters=found, created_at=1, updated_at=1
    )
    assert JobSnapshot.from_json(snapshot.model_dump_json()) == snapshot
