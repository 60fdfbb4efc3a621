"""A job's logged series on the wire: page by page, each page revised when its entries change, bounded
whatever the run's length, and received exactly once in any order (replays, late retries, a resumed
run logging steps again). The registry's store ends holding the sender's log, entry for entry."""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from checkpoint_records.formats import get_format
from checkpoint_records.history import LogEntry, log_entry
from checkpoint_records.identity import job_id_for
from checkpoint_records.series import LOG_PAGE_SIZE, log_page_id
from checkpoint_records.server.app import create_app
from checkpoint_records.store import Outcome, RecordStore, open_store

SINK = "http://registry.example/v1/records"
JOB = job_id_for("series-job")


def logged(first: int, count: int, scale: float = 1.0, timed: bool = True) -> list[LogEntry]:
    """``count`` Trainer log entries from position ``first`` (a loss each step, an eval every 5th)."""
    entries = []
    for seq in range(first, first + count):
        values: dict[str, Any] = {
            "step": seq + 1,
            "loss": scale / (seq + 1),
            "grad_norm": 0.5,
            "epoch": seq / 50,
        }
        if seq % 5 == 4:
            values = {"step": seq + 1, "eval_loss": scale * 2 / (seq + 1), "eval_runtime": 0.01}
        entry = log_entry(seq, values, 1_700_000_000.0 + seq if timed else None)
        assert entry is not None
        entries.append(entry)
    return entries


def sent(store: RecordStore) -> list[dict[str, Any]]:
    """What the sink is sent now (every due page, as the canonical format renders it), marked delivered."""
    claims = store.outbox.claim_due(SINK, "test", 60, 1000)
    store.outbox.settle([Outcome(claim, "delivered", 0.0) for claim in claims])
    return [get_format("record").render_stored(claim.body) for claim in claims]


def test_pages_carry_what_changed_at_most_a_page_and_a_resumed_run_changes_only_what_it_logs_anew(
    tmp_path: Path, database: str | None
) -> None:
    sender = RecordStore(tmp_path / "node")
    documents: list[dict[str, Any]] = []
    for first in range(0, 250, 30):  # saves 30 log entries apart
        sender.append_log(JOB, logged(first, min(30, 250 - first)), end=min(first + 30, 250), sinks=[SINK])
        batch = sent(sender)
        assert {page["page"] for page in batch} == {
            seq // LOG_PAGE_SIZE for seq in range(first, min(first + 30, 250))
        }
        documents += batch
    assert all(len(page["entries"]) <= LOG_PAGE_SIZE for page in documents)

    # Resumed from the checkpoint at position 120: its restored log comes again (without the times it was
    # first logged at), then the steps after the checkpoint, logged anew and differently, up to 200.
    sender.append_log(JOB, logged(0, 120, timed=False) + logged(120, 80, scale=3.0), end=200, sinks=[SINK])
    resumed = sent(sender)
    assert sorted(page["page"] for page in resumed) == [1, 2]  # page 0 is as it was: not sent again
    assert all(entry["loggedAt"] is not None for page in resumed for entry in page["entries"])
    documents += resumed
    assert len(sender.log_series(JOB)) == 200

    registry = open_store(database, tmp_path / "registry")  # the registry on either database
    shuffled = documents * 2
    random.Random(22).shuffle(shuffled)
    with TestClient(create_app(registry)) as client:
        receipts = [client.post("/v1/records", json=page).json() for page in shuffled]
        batch = client.post("/v1/records", json=documents[:5]).json()["data"]  # a batch, all old news
        assert all(receipt["kind"] == "log" for receipt in receipts)
        assert sum(receipt["stored"] for receipt in receipts) <= len(documents)
        assert not any(receipt["stored"] for receipt in batch)
        assert registry.log_series(JOB) == sender.log_series(JOB)  # read while the server has it open
        for having in ("loss", "eval_loss"):
            assert registry.log_series(JOB, 50, having) == sender.log_series(JOB, 50, having)


def test_a_page_is_refused_unless_it_is_its_jobs_page_of_its_positions(
    tmp_path: Path, database: str | None
) -> None:
    sender = RecordStore(tmp_path / "node")
    sender.append_log(JOB, logged(0, 3), end=3, sinks=[SINK])
    (page,) = sent(sender)
    other_job = {**page, "jobId": job_id_for("someone-else")}
    elsewhere = {**page, "entries": [{**page["entries"][0], "seq": LOG_PAGE_SIZE}]}
    twice = {**page, "entries": [page["entries"][0], page["entries"][0]]}
    too_long = {**page, "entries": [{**page["entries"][0], "seq": seq} for seq in range(LOG_PAGE_SIZE + 1)]}
    registry = open_store(database, tmp_path / "registry")  # the registry on either database
    with TestClient(create_app(registry)) as client:
        for bad, field in (
            (other_job, "id"),
            (elsewhere, "entries"),
            (twice, "entries"),
            (too_long, "entries"),
        ):
            reply = client.post("/v1/records", json=bad)
            assert reply.status_code == 422 and field in reply.json()["detail"], reply.json()
        assert client.post("/v1/records", json=page).json()["stored"]
        assert registry.log_series(JOB) == sender.log_series(JOB)


def test_the_log_a_store_of_the_previous_release_kept_can_be_sent(tmp_path: Path) -> None:
    """An upgraded store gets its pages (revision 1), so ``flush --sink`` can send the logs it kept."""
    home = tmp_path / "old"
    store = RecordStore(home)
    store.append_log(JOB, logged(0, 150), end=150)
    store.close()
    with sqlite3.connect(home / "records.db") as connection:
        connection.execute("DROP TABLE log_pages")
        connection.execute("PRAGMA user_version = 3")  # the release before logs went out in pages
    upgraded = RecordStore(home)
    assert upgraded.outbox.backfill(SINK, ["log"]) == 2
    pages = sent(upgraded)
    assert sorted((page["id"], page["revision"]) for page in pages) == sorted(
        (log_page_id(JOB, number), 1) for number in (0, 1)
    )
    assert json.dumps(pages).count('"seq"') == 150
