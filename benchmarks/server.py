"""The registry server (issue 13): how fast it ingests, how fast it lists, how much memory it holds.

1. Ingest: 8 threads, each a job's ``HttpSink``, deliver to a served registry at once: one record per
   request (as the delivery worker sends them), the same with plain ``http.client`` connections (what the
   server itself can take), then batches of 100 (``POST /v1/records`` with an array).
2. List: a store with 100,000 checkpoints of one job (rows written with ``executemany``, not by a Trainer),
   then ``GET /v1/fine_tuning/jobs/{id}/checkpoints`` as the ``openai`` package pages through it: the first
   page, the next pages (``after`` = the last id of the page before), and pages at random places.
3. The server's resident memory (``VmRSS``) after that.

    python benchmarks/server.py            # about 40 s here
    python benchmarks/server.py --quick    # fewer requests, about 20 s
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from common import cell, machine_description, percentile, table

from checkpoint_records.formats.openai import fine_tuning_job_id
from checkpoint_records.identity import checkpoint_id_for, idempotency_key
from checkpoint_records.sinks import HttpSink
from checkpoint_records.store import RecordStore
from records_factory import make_record
from registry_server import Registry, serving

SENDERS = 8
TOKEN = "benchmark-token"


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def commits_per_second(directory: Path, count: int = 200) -> float:
    """Durable SQLite commits per second on this disk right now: the ceiling of unbatched writes."""
    with sqlite3.connect(directory / "probe.db", isolation_level=None) as connection:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute("CREATE TABLE probe (body TEXT)")
        started = time.perf_counter()
        for _ in range(count):
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("INSERT INTO probe VALUES (?)", ("x" * 2000,))
            connection.execute("COMMIT")
        return count / (time.perf_counter() - started)


def send_with_sink(url: str, documents: list[dict[str, Any]], batch: int) -> None:
    """Deliver ``documents`` as a job does: its own ``HttpSink``, an ``Idempotency-Key`` per request."""
    sink = HttpSink(url, token=TOKEN)
    try:
        for start in range(0, len(documents), batch):
            chunk = documents[start : start + batch]
            key = idempotency_key(chunk[0]["metadata"]["id"], len(chunk), "record", chunk)
            sink.send(chunk[0] if batch == 1 else chunk, key)  # type: ignore[arg-type]
    finally:
        sink.close()


def send_plainly(url: str, documents: list[dict[str, Any]], batch: int) -> None:
    """Deliver ``documents`` one per request over one keep-alive ``http.client`` connection: the
    server's own capacity, without ``requests``' client cost (the 8 senders here share one process)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port)
    try:
        for document in documents:
            key = idempotency_key(document["metadata"]["id"], 1, "record", document)
            headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
            connection.request("POST", parts.path, json.dumps(document), {**headers, "Idempotency-Key": key})
            reply = connection.getresponse()
            reply.read()
            if reply.status != 200:
                raise RuntimeError(f"HTTP {reply.status}")
    finally:
        connection.close()


def ingest(
    registries: Sequence[Registry], per_sender: int, batch: int, send: Callable[..., None] = send_with_sink
) -> tuple[float, float]:
    """Records per second stored by ``SENDERS`` concurrent senders (split across ``registries``, replicas
    of one database), ``batch`` records per request, and the servers' CPU milliseconds per record."""
    jobs = [
        [make_record(step, job=f"{batch}-{send.__name__}-{n}").to_dict() for step in range(per_sender)]
        for n in range(SENDERS)
    ]
    errors: list[BaseException] = []

    def sender(url: str, documents: list[dict[str, Any]]) -> None:
        try:
            send(f"{url}/v1/records", documents, batch)
        except BaseException as error:
            errors.append(error)

    threads = [
        threading.Thread(target=sender, args=(registries[n % len(registries)].url, documents))
        for n, documents in enumerate(jobs)
    ]
    pids = [registry.process.pid for registry in registries]
    cpu = sum(map(cpu_seconds, pids))
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    cpu = sum(map(cpu_seconds, pids)) - cpu
    if errors:
        raise RuntimeError(f"{len(errors)} senders failed, first: {errors[0]}")
    records = SENDERS * per_sender
    return records / elapsed, 1000 * cpu / records


def fill(home: Path, count: int) -> str:
    """``count`` checkpoints of one job, written straight into the store's table; the job id."""
    store = RecordStore(home)
    store.job_ids()  # creates the schema
    store.close()
    template = make_record(0, job="big").to_dict()
    job_id = template["metadata"]["jobId"]
    rows = []
    for step in range(1, count + 1):
        template["metadata"]["id"] = record_id = checkpoint_id_for(job_id, step)
        template["metadata"]["name"] = name = f"big-checkpoint-{step}"
        template["status"]["metadata"]["step"] = step
        body = json.dumps(template, sort_keys=True, separators=(",", ":"))
        created = template["status"]["createdAt"]
        rows.append((record_id, name, job_id, step, 1, body, created, created))
    with sqlite3.connect(home / "records.db") as connection:
        connection.executemany(
            "INSERT INTO records (id, name, job_id, step, revision, body, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    return str(job_id)


def list_latency(registry: Registry, job_id: str, requests_count: int) -> dict[str, list[float]]:
    """Milliseconds per checkpoints page: first pages, following pages, random places."""
    url = f"{registry.url}/v1/fine_tuning/jobs/{fine_tuning_job_id(job_id)}/checkpoints"
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {TOKEN}"

    def timed(params: dict[str, str]) -> tuple[float, dict[str, Any]]:
        started = time.perf_counter()
        reply = session.get(url, params=params, timeout=60)
        elapsed = (time.perf_counter() - started) * 1000
        reply.raise_for_status()
        return elapsed, reply.json()

    timed({})  # warm-up: connection, first query plans
    found: dict[str, list[float]] = {"first page": [], "next page": [], "random place": []}
    after: str | None = None
    for _ in range(requests_count):
        elapsed, page = timed({})
        found["first page"].append(elapsed)
        elapsed, page = timed({"after": after} if after else {})
        found["next page"].append(elapsed)
        after = page["last_id"]
    # A page far into the run: the first such lookup learns every id of the job, later ones reuse them.
    ids = [page["last_id"]]
    for _ in range(requests_count):
        elapsed, page = timed({"after": random.choice(ids)})
        found["random place"].append(elapsed)
        ids.append(page["last_id"])
    session.close()
    return found


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--checkpoints", type=int, default=100_000)
    args = parser.parse_args()
    per_sender, batched, pages = (100, 500, 100) if args.quick else (250, 2000, 400)
    print(machine_description())
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch)
        commits = commits_per_second(base)
        with serving(base / "ingest", base / "ingest.log", TOKEN) as registry:
            single = ingest([registry], per_sender, 1)
            plain = ingest([registry], per_sender, 1, send_plainly)
            batch = ingest([registry], batched, 100)
            sender = make_record(0, job="1-send_with_sink-0").metadata.job_id
            stored = len(RecordStore(base / "ingest").record_ids(sender))
        started = time.perf_counter()
        job_id = fill(base / "big", args.checkpoints)
        filled = time.perf_counter() - started
        with serving(base / "big", base / "big.log", TOKEN) as registry:
            idle = rss_mib(registry.process.pid)
            latency = list_latency(registry, job_id, pages)
            rss = rss_mib(registry.process.pid)
    print(f"\nIngest, {SENDERS} concurrent senders (HttpSink), durable commits:\n")
    print(
        table(
            ["requests", "records", "records/s", "server CPU ms/record"],
            [
                ["1 record each", str(SENDERS * per_sender), cell(single[0], 0), cell(single[1])],
                [
                    "1 record each, http.client",
                    str(SENDERS * per_sender),
                    cell(plain[0], 0),
                    cell(plain[1]),
                ],
                ["batches of 100", str(SENDERS * batched), cell(batch[0], 0), cell(batch[1])],
            ],
        )
    )
    print(f"\nThis disk, meanwhile: {commits:.0f} durable SQLite commits/s (one writer, no batching).")
    print(
        f"\nOpenAI checkpoint list, {args.checkpoints:,} checkpoints in one job ({filled:.1f} s to write them):\n"
    )
    rows = [
        [
            name,
            str(len(values)),
            cell(percentile(values, 50)),
            cell(percentile(values, 99)),
            cell(max(values)),
        ]
        for name, values in latency.items()
    ]
    print(table(["page", "requests", "p50 ms", "p99 ms", "max ms"], rows))
    print(f"\nServer RSS: {idle:.0f} MiB at start, {rss:.0f} MiB after the list requests.")
    print(f"Check: {stored} of {per_sender} records of one single-request sender stored.")


if __name__ == "__main__":
    main()
