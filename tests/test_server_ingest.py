"""``POST /v1/records`` on a real served registry: idempotency, revisions, many writers, bad input,
overload; and how ``serve`` refuses to start when it should."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from fastapi import APIRouter
from fastapi.testclient import TestClient

from checkpoint_records.identity import idempotency_key
from checkpoint_records.record import CheckpointRecord
from checkpoint_records.server.app import create_app
from checkpoint_records.server.auth import SESSION_COOKIE, Auth
from checkpoint_records.sinks import HttpSink
from checkpoint_records.store import RecordStore
from commands import cli
from records_factory import make_record
from registry_server import Registry, serving
from schema_files import validate
from waiting import wait_until

TOKEN = "ingest-token-77ab"


@pytest.fixture
def registry(tmp_path: Path, database: str | None) -> Iterator[Registry]:
    """A served registry, on each database."""
    with serving(tmp_path / "registry", tmp_path / "server.log", TOKEN, database=database) as served:
        yield served


def post(
    registry: Registry, body: bytes | str, key: str | None = None, token: str = TOKEN
) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    if key:
        headers["Idempotency-Key"] = key
    return requests.post(f"{registry.url}/v1/records", data=body, headers=headers, timeout=60)


def revised(record: CheckpointRecord, revision: int, status: str) -> CheckpointRecord:
    return record.model_copy(
        update={
            "metadata": record.metadata.model_copy(update={"revision": revision}),
            "status": record.status.model_copy(update={"status": status}),
        }
    )


def stored(registry: Registry) -> list[CheckpointRecord]:
    return [item.record for item in registry.open_store().records()]


def test_replays_change_nothing_newer_revisions_win_older_never_overwrite(registry: Registry) -> None:
    first = make_record(2)
    answer = post(registry, first.to_json(), key="key-1")
    assert answer.status_code == 200
    assert answer.json() == {"id": first.id, "kind": "record", "revision": 1, "stored": True}
    replay = post(registry, first.to_json(), key="key-1")
    assert (replay.status_code, replay.json()) == (200, answer.json())  # as the first time did

    deleted = revised(first, 2, "deleted")
    assert post(registry, deleted.to_json(), key="key-2").json()["stored"] is True
    assert [(r.metadata.revision, r.status.status) for r in stored(registry)] == [(2, "deleted")]

    # A late retry of revision 1 under a new key, and a replay of key-1: neither goes back in time.
    late = post(registry, first.to_json(), key="key-late")
    assert late.json() == {"id": first.id, "kind": "record", "revision": 2, "stored": False}
    assert post(registry, first.to_json(), key="key-1").json() == answer.json()
    assert [(r.metadata.revision, r.status.status) for r in stored(registry)] == [(2, "deleted")]
    assert stored(registry)[0] == deleted  # kept exactly as sent, revision included

    reused = post(registry, make_record(4).to_json(), key="key-1")
    assert reused.status_code == 422 and "Idempotency-Key" in reused.json()["detail"]
    assert len(stored(registry)) == 1


def test_a_batch_is_stored_whole_or_not_at_all(registry: Registry) -> None:
    records = [make_record(step).to_dict() for step in (2, 4, 6)]
    broken = json.loads(json.dumps(records))
    broken[1]["status"]["files"][0]["size"] = "big"
    refused = post(registry, json.dumps(broken))
    assert refused.status_code == 422
    assert refused.json()["detail"].startswith("[1].status.files[0].size:")
    assert stored(registry) == []
    answer = post(registry, json.dumps(records))
    assert answer.status_code == 200
    assert [item["revision"] for item in answer.json()["data"]] == [1, 1, 1]
    assert sorted(r.training.step for r in stored(registry)) == [2, 4, 6]


def test_bad_input_gets_the_right_status_and_stores_nothing(registry: Registry) -> None:
    record = make_record(2)
    assert post(registry, record.to_json(), token="not-the-token").status_code == 401

    malformed = post(registry, b'{"kind": "Checkpoint", ')
    assert malformed.status_code == 400 and "not valid JSON" in malformed.json()["detail"]
    assert post(registry, b'{"value": NaN}').status_code == 400

    invalid = record.to_dict()
    del invalid["metadata"]["jobId"]
    invalid["status"]["size"] = "large"
    answer = post(registry, json.dumps(invalid))
    assert answer.status_code == 422 and answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert validate(problem, "error") == problem and problem["status"] == 422
    assert "metadata.jobId: Field required" in problem["detail"] and "status.size:" in problem["detail"]
    assert post(registry, b'{"hello": "world"}').status_code == 422

    big = post(registry, b"x" * (50 * 1024 * 1024))
    assert big.status_code == 413 and "larger than" in big.json()["detail"]
    streamed = post(registry, iter([b"[" + b" " * (1024 * 1024)] * 50))  # chunked: no declared length
    assert streamed.status_code == 413

    # Declared too large: answered before the body is sent at all.
    with socket.create_connection(("127.0.0.1", int(registry.url.rsplit(":", 1)[1])), timeout=30) as raw:
        raw.sendall(
            f"POST /v1/records HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {50 * 1024 * 1024}\r\n\r\n".encode()
        )
        assert raw.recv(64).startswith(b"HTTP/1.1 413")

    assert stored(registry) == []
    assert registry.get("/v1/fine_tuning/jobs").json()["data"] == []


def test_eight_senders_at_once_lose_nothing_and_duplicate_nothing(registry: Registry) -> None:
    """Eight jobs' HttpSinks deliver at the same time, each record twice (a retry after a lost reply)."""
    per_job = 40
    failures: list[BaseException] = []

    def deliver(job: str) -> None:
        sink = HttpSink(f"{registry.url}/v1/records", token=TOKEN)
        records = [make_record(step, job=job) for step in range(1, per_job + 1)]
        try:
            for _ in range(2):
                for record in records:
                    sink.send(record.to_dict(), idempotency_key(record.id, 1, "record", record.to_dict()))
        except BaseException as error:
            failures.append(error)
        finally:
            sink.close()

    threads = [threading.Thread(target=deliver, args=(f"job-{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert failures == []
    records = stored(registry)
    assert len(records) == len({r.id for r in records}) == 8 * per_job
    assert {r.metadata.revision for r in records} == {1}
    jobs = registry.get("/v1/post-training/jobs").json()["data"]
    assert len(jobs) == 8


def test_job_documents_keep_the_latest_status(registry: Registry) -> None:
    detail: dict[str, Any] = {
        "id": "job-7",
        "name": "seven",
        "training_technique": "SFT",
        "task_type": "text-generation",
        "base_model_option": "pre-trained",
        "base_model": "tiny-gpt2",
        "status": "Running",
        "progress": 37.5,
        "training_loss": [{"timestamp": 1700000000, "loss": 2.5}],
        "hyper_parameters": {"max_steps": 8, "learning_rate": 0.001},
        "created_by": "",
        "created_at": 1700000000,
        "updated_at": 1700000100,
    }
    done = {**detail, "status": "Success", "progress": 100, "updated_at": 1700000200}
    assert post(registry, json.dumps(detail)).json() == {
        "id": "job-7",
        "kind": "job",
        "revision": 1,
        "stored": True,
    }
    assert post(registry, json.dumps(done)).json()["stored"] is True
    assert post(registry, json.dumps(detail)).json() == {
        "id": "job-7",
        "kind": "job",
        "revision": 2,
        "stored": False,
    }
    assert registry.get("/v1/training-jobs/job-7").json() == done
    assert registry.get("/v1/fine_tuning/jobs/job-7").json()["status"] == "succeeded"
    # Without max_steps (a run planned in epochs) the progress still comes back as sent.
    epochs = {**detail, "id": "job-8", "progress": 37.25, "hyper_parameters": {"num_train_epochs": 3}}
    assert post(registry, json.dumps(epochs)).json()["stored"] is True
    assert registry.get("/v1/training-jobs/job-8").json() == epochs
    invalid = post(registry, json.dumps({**detail, "status": "Exploded"}))
    assert invalid.status_code == 422 and invalid.json()["detail"].startswith("status:")


def test_a_full_write_queue_answers_429_with_retry_after(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "registry")
    app = create_app(store, queue_capacity=1)
    blocker = sqlite3.connect(store.path, timeout=1)
    with TestClient(app) as client:
        blocker.execute("BEGIN IMMEDIATE")  # the writer thread now waits on the store's lock
        first: list[requests.Response] = []
        waiting = threading.Thread(
            target=lambda: first.append(client.post("/v1/records", content=make_record(2).to_json()))
        )
        waiting.start()
        wait_until(lambda: app.state.writer.waiting, 30, "the first record never reached the writer")
        busy = client.post("/v1/records", content=make_record(4).to_json())
        assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
        assert busy.headers["content-type"] == "application/problem+json"
        blocker.execute("ROLLBACK")
        waiting.join(60)
        assert first[0].status_code == 200
    blocker.close()
    assert [r.record.training.step for r in store.records()] == [2]


def test_page_routers_are_mounted_with_the_servers_auth(tmp_path: Path) -> None:
    seen: list[Auth] = []

    def page(store: RecordStore, auth: Auth) -> APIRouter:
        seen.append(auth)
        router = APIRouter()

        @router.get("/")
        def home() -> dict[str, bool]:
            return {"signed_in": False}

        return router

    app = create_app(RecordStore(tmp_path / "s"), tokens=[TOKEN], routers=[page])
    with TestClient(app) as client:
        assert client.get("/").json() == {"signed_in": False}
        assert client.get("/v1/checkpoints").status_code == 401
        session = seen[0].open_session(TOKEN)
        assert session is not None and seen[0].open_session("wrong") is None
        client.cookies.set(SESSION_COOKIE, session)
        # The page's session is the page's: the API takes the bearer token only.
        assert client.get("/v1/checkpoints").status_code == 401
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert client.get("/v1/checkpoints", headers=bearer).json() == {
            "data": [],
            "has_more": False,
            "last_id": None,
        }
        assert TOKEN not in repr(seen[0])


def test_serve_refuses_a_public_address_without_a_token(tmp_path: Path) -> None:
    result = cli("serve", "--host", "0.0.0.0", "--store", str(tmp_path / "s"))
    assert result.returncode == 2
    assert "refusing to serve on '0.0.0.0' without a token" in result.stderr
    assert "CHECKPOINT_RECORDS_SERVER_TOKENS" in result.stderr


def test_serve_without_the_extra_says_how_to_install_it(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['fastapi'] = None; from checkpoint_records.cli import main; "
        f"sys.exit(main(['serve', '--store', {str(tmp_path / 's')!r}]))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "pip install 'checkpoint-records[server]'" in result.stderr


def test_the_training_side_never_imports_the_server_or_the_postgresql_driver(tmp_path: Path) -> None:
    code = (
        "import sys, checkpoint_records.callback, checkpoint_records.cli; "
        f"from checkpoint_records.store import RecordStore; RecordStore({str(tmp_path / 's')!r}).records(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('fastapi', 'uvicorn', 'starlette', 'psycopg', 'psycopg_pool') "
        "or m.startswith(('checkpoint_records.server', 'checkpoint_records.store.postgres'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
