"""Lists read the store in as many queries for forty jobs as for two: never one query per row.

The job lists (the page's, OpenAI's, Llama Stack's) and a job's page are read through the app with every
SQL statement the store runs counted; a store ten times fuller must not cost one more query.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from checkpoint_records.identity import job_id_for
from checkpoint_records.job import job_snapshot
from checkpoint_records.server.app import create_app
from checkpoint_records.store import RecordStore
from records_factory import make_record

ROUTES = {
    "jobs page": lambda job_id: "/",
    "job page": lambda job_id: f"/jobs/{job_id}",
    "OpenAI job list": lambda job_id: "/v1/fine_tuning/jobs?limit=100",
    "Llama Stack job list": lambda job_id: "/v1/post-training/jobs",
}


def fill(store: RecordStore, jobs: int, checkpoints: int) -> None:
    """``jobs`` jobs of ``checkpoints`` records each, queued to a sink, half of them with a job document
    and uploads queued."""
    for number in range(jobs):
        name = f"job-{number}"
        for step in range(1, checkpoints + 1):
            record = make_record(step, job=name)
            store.put(record, ["https://sink.example/x"], durable=False)
            if number % 2:
                store.uploads.enqueue(record, f"s3://bucket/{record.name}", "/staging")
        if number % 2:
            snapshot = job_snapshot(
                None, "loop", "Running", None, job_id=job_id_for(name), job_name=name, created_at=number
            )
            store.put_job(snapshot, durable=False)


def selects(monkeypatch: pytest.MonkeyPatch, store: RecordStore, path: str) -> int:
    """How many queries the store runs to answer ``path`` (on whichever thread the app uses)."""
    seen: list[str] = []
    connect: Callable[..., sqlite3.Connection] = sqlite3.connect

    def traced(*args: object, **kwargs: object) -> sqlite3.Connection:
        connection = connect(*args, **kwargs)  # type: ignore[arg-type]
        connection.set_trace_callback(seen.append)
        return connection

    with monkeypatch.context() as patch:
        patch.setattr(sqlite3, "connect", traced)
        with TestClient(create_app(store)) as client:
            assert client.get(path).status_code == 200
    return sum(statement.lstrip().upper().startswith(("SELECT", "WITH")) for statement in seen)


@pytest.mark.parametrize("route", ROUTES)
def test_a_list_costs_as_many_queries_for_forty_jobs_as_for_two(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, route: str
) -> None:
    counts = []
    for jobs, checkpoints in ((2, 2), (40, 6)):
        store = RecordStore(tmp_path / f"store-{jobs}")
        fill(store, jobs, checkpoints)
        counts.append(selects(monkeypatch, store, ROUTES[route](job_id_for("job-1"))))
    assert counts[0] == counts[1], counts
