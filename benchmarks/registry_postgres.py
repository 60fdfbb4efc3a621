"""The registry on PostgreSQL (issue 23), side by side with the SQLite registry, in one run.

1. Ingest: 8 concurrent senders (each a job's ``HttpSink``), one record per request and batches of 100,
   into the SQLite registry, one PostgreSQL replica, and two replicas of one database (senders split).
2. Lists with 1,000,000 checkpoints in the database (100 jobs of 10,000, each with its job document;
   rows bulk-loaded: ``COPY`` on PostgreSQL, ``executemany`` on SQLite): the OpenAI checkpoint list of
   one job (first page, next page) and the OpenAI jobs list (first page), p50/p99 over the requests.
3. The server's resident memory (``VmRSS``) after the lists, and the database's size.

    python benchmarks/registry_postgres.py            # about 10 min here
    python benchmarks/registry_postgres.py --quick    # 100,000 checkpoints, fewer requests: about 3 min
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any
from unittest import mock

import psycopg
import requests
from common import cell, machine_description, percentile, table
from server import SENDERS, TOKEN, ingest, rss_mib

from checkpoint_records.formats.openai import fine_tuning_job_id
from checkpoint_records.identity import checkpoint_id_for
from checkpoint_records.job import JobSnapshot
from checkpoint_records.store import open_store
from postgres_server import PostgresServer, postgres_server
from records_factory import make_record
from registry_server import Registry, serving

JOBS = 100
COLUMNS = ("id", "name", "job_id", "step", "revision", "body", "created_at", "updated_at")


def rows(jobs: int, per_job: int) -> Iterator[tuple[Any, ...]]:
    """The records of ``jobs`` jobs of ``per_job`` checkpoints each, as table rows (a template record,
    its id, name and step made as the callback makes them)."""
    for job in range(jobs):
        template = make_record(0, job=f"big-{job}").to_dict()
        job_id = template["metadata"]["jobId"]
        for step in range(1, per_job + 1):
            template["metadata"]["id"] = record_id = checkpoint_id_for(job_id, step)
            template["metadata"]["name"] = name = f"big-{job}-checkpoint-{step}"
            template["status"]["metadata"]["name"] = name
            template["status"]["metadata"]["step"] = step
            body = json.dumps(template, sort_keys=True, separators=(",", ":"))
            created = template["status"]["createdAt"]
            yield (record_id, name, job_id, step, 1, body, created, created)


def put_jobs(database: str | None, home: Path, jobs: int, per_job: int) -> str:
    """A finished job document for each job, through the store; the first job's id."""
    store = open_store(database, home)
    now = time.time()
    ids = []
    for job in range(jobs):
        job_id = make_record(0, job=f"big-{job}").metadata.job_id
        snapshot = JobSnapshot(
            id=job_id,
            name=f"big-{job}",
            status="Success",
            global_step=per_job,
            max_steps=per_job,
            created_at=now - jobs + job,
            updated_at=now,
        )
        store.put_job(snapshot)
        ids.append(job_id)
    store.close()
    return ids[0]


def fill_sqlite(home: Path, jobs: int, per_job: int) -> str:
    job_id = put_jobs(None, home, jobs, per_job)
    with sqlite3.connect(home / "records.db") as connection:  # the store's triggers keep their tables
        connection.executemany(
            f"INSERT INTO records ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
            rows(jobs, per_job),
        )
    return job_id


def fill_postgres(server: PostgresServer, url: str, jobs: int, per_job: int) -> str:
    """COPY the rows with the triggers off, then fill what the triggers keep in one statement each."""
    job_id = put_jobs(url, Path(tempfile.gettempdir()), jobs, per_job)
    with psycopg.connect(url, password=server.password, autocommit=True) as connection:
        connection.execute("SET session_replication_role = replica")
        copying = f"COPY records ({', '.join(COLUMNS)}, rowid) FROM STDIN"
        with connection.cursor() as cursor, cursor.copy(copying) as copy:
            for number, row in enumerate(rows(jobs, per_job), 1):
                copy.write_row((*row, number))
        connection.execute("SELECT setval('records_rowid', (SELECT MAX(rowid) FROM records))")
        connection.execute(
            "INSERT INTO job_checkpoints SELECT job_id, COUNT(*), MIN(created_at), MAX(updated_at)"
            " FROM records GROUP BY job_id"
        )
        connection.execute(
            "INSERT INTO record_revisions SELECT id, revision, 'available', 1, 0, updated_at FROM records"
        )
        connection.execute("VACUUM ANALYZE")
    return job_id


def latency(registry: Registry, job_id: str, count: int) -> dict[str, list[float]]:
    """Milliseconds per request: a job's checkpoints (first page, the page after it) and the jobs list."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {TOKEN}"
    checkpoints = f"{registry.url}/v1/fine_tuning/jobs/{fine_tuning_job_id(job_id)}/checkpoints"

    def timed(url: str, **params: str) -> tuple[float, dict[str, Any]]:
        started = time.perf_counter()
        reply = session.get(url, params=params, timeout=60)
        elapsed = (time.perf_counter() - started) * 1000
        reply.raise_for_status()
        return elapsed, reply.json()

    timed(checkpoints)  # warm-up: connections, the first query plans, the ids of the jobs
    timed(f"{registry.url}/v1/fine_tuning/jobs")
    found: dict[str, list[float]] = {
        "checkpoints, first page": [],
        "checkpoints, next page": [],
        "jobs list": [],
    }
    for _ in range(count):
        elapsed, page = timed(checkpoints)
        found["checkpoints, first page"].append(elapsed)
        elapsed, _ = timed(checkpoints, after=page["last_id"])
        found["checkpoints, next page"].append(elapsed)
        elapsed, listed = timed(f"{registry.url}/v1/fine_tuning/jobs")
        found["jobs list"].append(elapsed)
    assert len(listed["data"]) == 20 and listed["has_more"]
    session.close()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--checkpoints", type=int, default=1_000_000)
    args = parser.parse_args()
    per_sender, batched, count = (100, 500, 100) if args.quick else (250, 2000, 400)
    checkpoints = 100_000 if args.quick and args.checkpoints == 1_000_000 else args.checkpoints
    per_job = checkpoints // JOBS
    print(machine_description())
    ingested: list[list[str]] = []
    listed: dict[str, dict[str, list[float]]] = {}
    sizes: dict[str, tuple[float, float, float, float]] = {}
    with tempfile.TemporaryDirectory() as scratch, postgres_server() as server, ExitStack() as stack:
        base = Path(scratch)
        stack.enter_context(mock.patch.dict(os.environ, server.environment))

        def served(name: str, database: str | None) -> AbstractContextManager[Registry]:
            return serving(base / name, base / f"{name}.log", TOKEN, database=database)

        ingest_db = stack.enter_context(server.fresh_database())
        setups: list[tuple[str, Callable[[], list[AbstractContextManager[Registry]]]]] = [
            ("SQLite, 1 server", lambda: [served("ingest-sqlite", None)]),
            ("PostgreSQL, 1 replica", lambda: [served("ingest-pg", ingest_db)]),
            (
                "PostgreSQL, 2 replicas",
                lambda: [served("ingest-pg-a", ingest_db), served("ingest-pg-b", ingest_db)],
            ),
        ]
        for name, servers in setups:
            with ExitStack() as running:
                registries = [running.enter_context(server_) for server_ in servers()]
                single = ingest(registries, per_sender, 1)
                batch = ingest(registries, batched, 100)
            ingested.append([name, cell(single[0], 0), cell(single[1]), cell(batch[0], 0), cell(batch[1])])

        big_db = stack.enter_context(server.fresh_database())
        fills: list[tuple[str, str | None, Callable[[], str]]] = [
            ("SQLite", None, lambda: fill_sqlite(base / "big-sqlite", JOBS, per_job)),
            ("PostgreSQL", big_db, lambda: fill_postgres(server, big_db, JOBS, per_job)),
        ]
        for name, database, fill in fills:
            started = time.perf_counter()
            job_id = fill()
            filled = time.perf_counter() - started
            with served("big-sqlite" if database is None else "big-pg", database) as registry:
                idle = rss_mib(registry.process.pid)
                listed[name] = latency(registry, job_id, count)
                rss = rss_mib(registry.process.pid)
            if database is None:
                size = (base / "big-sqlite" / "records.db").stat().st_size
            else:
                name_only = database.rsplit("/", 1)[1]
                size = int(server.execute(f"SELECT pg_database_size('{name_only}')")[0][0])  # type: ignore[call-overload]
            sizes[name] = (filled, idle, rss, size / 2**20)

    print(f"\nIngest, {SENDERS} concurrent senders (HttpSink), durable commits, records/s and server CPU:\n")
    print(
        table(
            ["registry", "1 record each", "CPU ms/record", "batches of 100", "CPU ms/record "],
            ingested,
        )
    )
    print(f"\nLists, {checkpoints:,} checkpoints ({JOBS} jobs of {per_job:,}), {count} requests each:\n")
    print(
        table(
            ["database", "request", "p50 ms", "p99 ms", "max ms"],
            [
                [
                    database,
                    request,
                    cell(percentile(values, 50)),
                    cell(percentile(values, 99)),
                    cell(max(values)),
                ]
                for database, found in listed.items()
                for request, values in found.items()
            ],
        )
    )
    print()
    print(
        table(
            ["database", "bulk load s", "server RSS at start MiB", "after the lists MiB", "database MiB"],
            [[name, cell(a, 0), cell(b, 0), cell(c, 0), cell(d, 0)] for name, (a, b, c, d) in sizes.items()],
        )
    )


if __name__ == "__main__":
    main()
