"""The registry on PostgreSQL: several ``serve`` processes on one database, as a team runs them behind a
load balancer. What one process kept in order (idempotency, revision order, exactly once), the database
keeps across all of them; the read APIs answer the same from each."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from functools import partial
from pathlib import Path

import pytest
from openai import OpenAI

from checkpoint_records.identity import idempotency_key
from checkpoint_records.record import CheckpointRecord
from checkpoint_records.sinks import HttpSink, RetryLater
from checkpoint_records.store import SCHEMA_VERSION
from postgres_server import PostgresServer
from records_factory import make_record
from registry_server import Registry, serving
from waiting import wait_until

TOKEN = "replica-token-5d1e"
SENDERS = 8
PER_SENDER = 30


@pytest.fixture
def url(postgres: PostgresServer) -> Iterator[str]:
    with postgres.fresh_database() as database:
        yield database


def replicas(tmp_path: Path, url: str, count: int = 2) -> list[AbstractContextManager[Registry]]:
    """``count`` servers on the database ``url``, each with its own (unused) store directory and log."""
    return [
        serving(tmp_path / f"replica-{n}", tmp_path / f"replica-{n}.log", TOKEN, database=url)
        for n in range(count)
    ]


def started(servers: list[AbstractContextManager[Registry]]) -> list[Registry]:
    """Start ``servers`` at the same moment (each in a thread), once every one answers."""
    with ThreadPoolExecutor(len(servers)) as pool:
        return list(pool.map(lambda server: server.__enter__(), servers))


def stopped(servers: list[AbstractContextManager[Registry]]) -> None:
    for server in servers:
        server.__exit__(None, None, None)


def deliver(url: str, records: list[CheckpointRecord], until: Callable[[], bool] | None = None) -> None:
    """Send each record as the delivery worker does (its idempotency key); while the server cannot be
    reached (killed, restarting), the same request again until it is answered."""
    sink = HttpSink(url + "/v1/records", token=TOKEN)

    def sent(record: CheckpointRecord) -> bool:
        try:
            sink.send(record.to_dict(), idempotency_key(record.id, 1, "record", record.to_dict()))
        except RetryLater:
            return False
        return True

    try:
        for record in records:
            wait_until(partial(sent, record), 120, f"{record.name} was never answered")
    finally:
        sink.close()


def sender_records(sender: int) -> list[CheckpointRecord]:
    return [make_record(step, job=f"job-{sender}") for step in range(1, PER_SENDER + 1)]


def test_two_servers_starting_at_once_migrate_once_and_a_newer_database_is_refused(
    tmp_path: Path, url: str, postgres: PostgresServer
) -> None:
    servers = replicas(tmp_path, url)
    registries = started(servers)
    try:
        assert all(registry.get("/v1/fine_tuning/jobs").status_code == 200 for registry in registries)
    finally:
        stopped(servers)
    name = url.rsplit("/", 1)[1]
    assert postgres.execute("SELECT version FROM checkpoint_records_schema", name) == [(SCHEMA_VERSION,)]

    postgres.execute(f"INSERT INTO checkpoint_records_schema VALUES ({SCHEMA_VERSION + 1}, 0)", name)
    env = {key: value for key, value in os.environ.items() if not key.startswith("CHECKPOINT_RECORDS_")}
    refused = subprocess.run(
        [sys.executable, "-m", "checkpoint_records.cli", "serve", "--port", "0", "--database", url],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2
    assert "written by a newer release" in refused.stderr and "left untouched" in refused.stderr
    assert postgres.password not in refused.stderr + refused.stdout


def test_the_password_is_never_shown_and_a_wrong_one_is_said_plainly(
    tmp_path: Path, url: str, postgres: PostgresServer
) -> None:
    with_password = url.replace("checkpoint@", f"checkpoint:{postgres.password}@")
    env = {"PGPASSWORD": ""}
    with serving(tmp_path / "r", tmp_path / "r.log", TOKEN, env=env, database=with_password) as registry:
        assert registry.get("/v1/fine_tuning/jobs").status_code == 200
    log = (tmp_path / "r.log").read_text()
    assert "serving postgresql://127.0.0.1:" in log
    assert postgres.password not in log

    wrong = url.replace("checkpoint@", "checkpoint:not-the-password@")
    refused = subprocess.run(
        [sys.executable, "-m", "checkpoint_records.cli", "serve", "--port", "0"],
        env={**os.environ, "PGPASSWORD": "", "CHECKPOINT_RECORDS_SERVER_DATABASE": wrong},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2
    assert "cannot reach its database postgresql://127.0.0.1:" in refused.stderr
    assert "password authentication failed" in refused.stderr
    assert "not-the-password" not in refused.stderr + refused.stdout


def test_eight_senders_split_across_two_replicas_lose_nothing_and_duplicate_nothing(
    tmp_path: Path, url: str
) -> None:
    """Each sender delivers every record twice, once to each replica (a retry that the load balancer
    sent elsewhere), both at once: one stored revision each, and every read API agrees on both."""
    servers = replicas(tmp_path, url)
    first, second = started(servers)
    try:
        with ThreadPoolExecutor(2 * SENDERS) as pool:
            sent = [
                pool.submit(deliver, registry.url, sender_records(sender))
                for sender in range(SENDERS)
                for registry in ((first, second) if sender % 2 else (second, first))
            ]
            for future in sent:
                future.result(timeout=300)
        records = first.open_store().records()
        assert len(records) == len({stored.record.id for stored in records}) == SENDERS * PER_SENDER
        assert {stored.revision for stored in records} == {1}

        # A newer revision on one replica, then the older one on the other: the newer one stays.
        record = make_record(3, job="job-0")
        newer = record.model_copy(update={"metadata": record.metadata.model_copy(update={"revision": 2})})
        for registry, document in ((first, newer), (second, record)):
            answer = HttpSink(registry.url + "/v1/records", token=TOKEN)
            answer.send(document.to_dict(), f"revision-{document.metadata.revision}")
            answer.close()
        assert first.open_store().get(record.id).revision == 2  # type: ignore[union-attr]

        for path in ("/v1/fine_tuning/jobs", "/v1/checkpoints?limit=1000", "/v1/post-training/jobs"):
            assert first.get(path).json() == second.get(path).json()
        for registry in (first, second):  # the page, with the API's token (its sessions are per process)
            page = registry.get("/")
            assert page.status_code == 200 and all(f"job-{n}" in page.text for n in range(SENDERS))
        read = [
            [
                checkpoint.to_dict()
                for job in OpenAI(base_url=f"{registry.url}/v1", api_key=TOKEN).fine_tuning.jobs.list()
                for checkpoint in OpenAI(
                    base_url=f"{registry.url}/v1", api_key=TOKEN
                ).fine_tuning.jobs.checkpoints.list(job.id)
            ]
            for registry in (first, second)
        ]
        assert len(read[0]) == SENDERS * PER_SENDER and read[0] == read[1]
    finally:
        stopped(servers)


def test_a_replica_killed_mid_ingest_and_restarted_loses_nothing(tmp_path: Path, url: str) -> None:
    servers = replicas(tmp_path, url)
    doomed, survivor = started(servers)
    port = int(doomed.url.rsplit(":", 1)[1])
    try:
        with ThreadPoolExecutor(SENDERS) as pool:
            sent = [
                pool.submit(deliver, (doomed, survivor)[sender % 2].url, sender_records(sender))
                for sender in range(SENDERS)
            ]
            store = survivor.open_store()
            wait_until(lambda: len(store.records()) >= 2 * SENDERS, 120, "nothing was stored")
            doomed.process.send_signal(signal.SIGKILL)
            assert doomed.process.wait(30) == -signal.SIGKILL
            assert not all(future.done() for future in sent)  # killed mid-ingest
            with serving(tmp_path / "restarted", tmp_path / "restarted.log", TOKEN, database=url, port=port):
                for future in sent:
                    future.result(timeout=300)
                records = store.records()
        assert len(records) == len({stored.record.id for stored in records}) == SENDERS * PER_SENDER
        assert {stored.revision for stored in records} == {1}
    finally:
        stopped(servers)


def test_a_replica_answers_the_first_request_after_its_database_connections_were_cut(
    tmp_path: Path, url: str, postgres: PostgresServer
) -> None:
    """A restart of PostgreSQL (or a proxy's idle timeout) cuts every pooled connection: the next read
    and the next write still succeed, on new connections, without a sender having to retry."""
    name = url.rsplit("/", 1)[1]
    with serving(tmp_path / "r", tmp_path / "r.log", TOKEN, database=url) as registry:
        assert registry.get("/v1/fine_tuning/jobs").status_code == 200
        cut = postgres.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        )
        assert cut and all(row == (True,) for row in cut)
        assert registry.get("/v1/fine_tuning/jobs").status_code == 200
        record = make_record(1, job="after-the-cut")
        sink = HttpSink(registry.url + "/v1/records", token=TOKEN)
        try:
            sink.send(record.to_dict(), "after-the-cut")
        finally:
            sink.close()
        assert registry.open_store().get(record.id) is not None
