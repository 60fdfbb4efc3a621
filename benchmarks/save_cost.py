"""What a save costs the training thread whatever the endpoint does, and how fast a backlog drains.

Issue 3's benchmark (not a test). Two measurements:

1. Time inside ``CheckpointRecordCallback.on_save`` on the training thread, per save, during a real
   ``Trainer`` run of the tiny GPT-2 saving at every step, with: no sink (the floor: the hand-off to the
   recorder's background thread, which scans and commits), a healthy endpoint, a down endpoint (nothing
   listening) and a hanging one (accepts, never answers). States alternate round-robin over ``--reps``
   to spread machine drift. Target: p99 within a few milliseconds in every state (``hand_off.py``
   measures the hand-off itself per checkpoint shape, issue 11).
2. Drain rate: ``--backlog`` records put in the store pending for one ``HttpSink``, then a
   ``DeliveryWorker`` flushes them to the healthy endpoint over keep-alive. Target: >= 1,000 records/s.
   The endpoint's own ceiling is measured first with the lightest stdlib client (``http.client``) and
   with ``requests`` (the sink's HTTP stack), so a slow endpoint cannot pass for a slow library.

The endpoints run in their own process (see ``endpoints.py``).

    python benchmarks/save_cost.py            # 3 reps x 100 saves per state, backlog 10,000
    python benchmarks/save_cost.py --quick    # 1 rep x 20 saves, backlog 2,000
"""

from __future__ import annotations

import argparse
import http.client
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
import torch
import transformers
from common import LibraryLog, cell, machine_description, median, percentile, summarize, table
from endpoints import Endpoints
from train_tiny import TinyTextDataset, tiny_arguments, tiny_model, tiny_tokenizer
from transformers import PrinterCallback, Trainer

from checkpoint_records import CheckpointRecordCallback, HttpSink, RecordStore
from checkpoint_records.delivery import DeliveryWorker
from records_factory import make_record

#: Endpoint states, in the order each round runs them ("no sink": the local store only, the floor).
STATES = ("no sink", "healthy", "down", "hanging")
#: How long on_train_end waits for delivery when the endpoint cannot take it (default 5 s).
UNREACHABLE_FLUSH_TIMEOUT = 0.5


@dataclass
class SaveRun:
    durations: list[float]
    stored: int
    delivered: int
    #: What checkpoint-records logged during the run (expected for down/hanging; a bug elsewhere).
    messages: list[str]


def time_on_save(callback: CheckpointRecordCallback) -> list[float]:
    """Wrap the instance's ``on_save`` (the Trainer looks it up by name) and return its durations."""
    durations: list[float] = []
    original: Callable[..., Any] = callback.on_save

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            durations.append(time.perf_counter() - start)

    callback.on_save = timed  # type: ignore[method-assign]
    return durations


def url_for(state: str, endpoints: Endpoints) -> str | None:
    return {
        "no sink": None,
        "healthy": endpoints.healthy_url,
        "down": endpoints.down_url,
        "hanging": endpoints.hanging_url,
    }[state]


def run_saves(
    state: str, url: str | None, saves: int, workdir: Path, endpoints: Endpoints, log: LibraryLog
) -> SaveRun:
    """One real training run saving at every step; the on_save durations and what reached the endpoint."""
    first_message = len(log.messages)
    job_name = f"save-cost-{state.replace(' ', '-')}-{workdir.name}"
    callback = CheckpointRecordCallback(
        store=workdir / "store",
        sinks=[HttpSink(url)] if url else [],
        job_name=job_name,
        flush_timeout=None if state == "healthy" else UNREACHABLE_FLUSH_TIMEOUT,
    )
    durations = time_on_save(callback)
    args = tiny_arguments(
        str(workdir / "output"),
        max_steps=saves,
        save_steps=1,
        save_total_limit=2,
        logging_steps=saves,
    )
    trainer = Trainer(
        model=tiny_model(),
        args=args,
        train_dataset=TinyTextDataset(),
        processing_class=tiny_tokenizer(),
        callbacks=[callback],
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    callback.recorder.close()  # outside the timing: stops this run's lanes so the next run is alone
    stored = len(RecordStore(workdir / "store").records())
    delivered = len({a.name for a in endpoints.arrivals() if a.name.startswith(f"{job_name}-")})
    return SaveRun(durations, stored, delivered, log.messages[first_message:])


def ceiling(url: str, body: bytes, requests_count: int) -> dict[str, float]:
    """Requests/s one keep-alive client gets from the endpoint: stdlib http.client, then requests."""
    parts = urlsplit(url)
    headers = {"Content-Type": "application/json", "Idempotency-Key": "ceiling"}
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port)
    start = time.perf_counter()
    for _ in range(requests_count):
        connection.request("POST", parts.path, body=body, headers=headers)
        connection.getresponse().read()
    stdlib = requests_count / (time.perf_counter() - start)
    connection.close()
    with requests.Session() as session:
        start = time.perf_counter()
        for _ in range(requests_count):
            session.post(url, data=body, headers=headers, timeout=(5, 10)).raise_for_status()
        via_requests = requests_count / (time.perf_counter() - start)
    return {"http.client": stdlib, "requests": via_requests}


def drain(url: str, backlog: int, workdir: Path, endpoints: Endpoints) -> dict[str, float]:
    """Fill the outbox with ``backlog`` pending records, then time a DeliveryWorker flushing them."""
    start = time.perf_counter()
    records = [make_record(step, job="drain") for step in range(backlog)]
    built_s = time.perf_counter() - start
    store = RecordStore(workdir / "drain-store")
    sink = HttpSink(url)
    start = time.perf_counter()
    for record in records:
        store.put(record, [sink.key])
    put_s = time.perf_counter() - start
    worker = DeliveryWorker(store, [sink])
    start = time.perf_counter()
    worker.start()
    result = worker.flush(timeout=120)
    elapsed = time.perf_counter() - start
    worker.close()
    keys = {a.idempotency_key for a in endpoints.arrivals() if a.name.startswith("drain-checkpoint-")}
    return {
        "backlog": backlog,
        "build_s": built_s,
        "put_per_s": backlog / put_s,
        "delivered": result.delivered,
        "pending": result.pending,
        "dead": result.dead,
        "distinct_keys": len(keys),
        "elapsed_s": elapsed,
        "per_s": result.delivered / elapsed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="rounds over the endpoint states")
    parser.add_argument("--saves", type=int, default=100, help="saves per training run")
    parser.add_argument("--backlog", type=int, default=10_000, help="records to drain")
    parser.add_argument("--quick", action="store_true", help="1 rep x 20 saves, backlog 2,000")
    options = parser.parse_args(argv)
    if options.quick:
        options.reps, options.saves, options.backlog = 1, 20, 2_000

    torch.set_num_threads(1)  # steadier steps on a small shared machine (see compare_callbacks.py)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    log = LibraryLog.install()
    print(machine_description())

    with tempfile.TemporaryDirectory(prefix="save-cost-") as temp:
        root = Path(temp)
        with Endpoints(root / "arrivals.tsv") as endpoints:
            runs: dict[str, list[SaveRun]] = {state: [] for state in STATES}
            for rep in range(options.reps):
                for state in STATES:
                    workdir = root / f"{state.replace(' ', '-')}-{rep}"
                    run = run_saves(state, url_for(state, endpoints), options.saves, workdir, endpoints, log)
                    runs[state].append(run)
                    print(
                        f"  rep {rep + 1}/{options.reps} {state:8}: median {median(run.durations) * 1e3:.2f} ms"
                    )

            body = json.dumps(make_record(0, job="ceiling").to_dict()).encode()
            ceilings = ceiling(endpoints.healthy_url, body, min(options.backlog, 2_000))
            drained = drain(endpoints.healthy_url, options.backlog, root, endpoints)

    rows = []
    for state in STATES:
        durations = [d for run in runs[state] for d in run.durations]
        expected = options.saves * len(runs[state])
        stored = sum(run.stored for run in runs[state])
        delivered = sum(run.delivered for run in runs[state]) if state != "no sink" else None
        rows.append(
            [
                state,
                str(len(durations)),
                cell(median(durations) * 1e3),
                cell(percentile(durations, 99) * 1e3),
                cell(max(durations) * 1e3),
                f"{stored}/{expected}",
                "-" if delivered is None else f"{delivered}/{expected}",
            ]
        )
    header = ["endpoint", "saves", "on_save median ms", "p99 ms", "max ms", "stored", "delivered by end"]
    print(
        f"\nTime inside on_save on the training thread (tiny GPT-2, a save every step, {options.reps} reps)\n"
    )
    print(table(header, rows))
    print("\nChecks (checkpoint-records messages, distinct, with counts):")
    for state in STATES:
        print(
            f"{state}:",
            *(summarize([m for run in runs[state] for m in run.messages]) or ["none"]),
            sep="\n    ",
        )
    print(f"\nBacklog drain to the healthy endpoint ({drained['backlog']:,} records, one HttpSink)\n")
    print(
        table(
            ["measure", "value"],
            [
                ["drain rate (records/s)", f"{drained['per_s']:,.0f}"],
                ["drain wall time (s)", cell(drained["elapsed_s"])],
                [
                    "delivered / pending / dead",
                    f"{drained['delivered']:,.0f} / {drained['pending']:,.0f} / {drained['dead']:,.0f}",
                ],
                ["distinct Idempotency-Keys received", f"{drained['distinct_keys']:,.0f}"],
                ["endpoint ceiling, http.client keep-alive (req/s)", f"{ceilings['http.client']:,.0f}"],
                ["endpoint ceiling, requests.Session keep-alive (req/s)", f"{ceilings['requests']:,.0f}"],
                ["setup: store.put rate (records/s, one fsync each)", f"{drained['put_per_s']:,.0f}"],
            ],
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
