"""Deliveries waiting for a sink that is gone (a mistyped URL, a retired server) are named by ``list``,
``inspect`` and ``outbox``, moved to another URL or dropped by a command, never silently; ``flush --sink
URL --job JOB`` sends URL what it never got of that job only (records, the job, its log's pages)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from checkpoint_records import RecordStore
from checkpoint_records.history import LogEntry, log_entry
from checkpoint_records.identity import job_id_for
from checkpoint_records.job import job_snapshot
from commands import cli
from http_server import Receiver
from records_factory import make_record

TYPO = "https://registry.exampel/v1/records"
GONE = "https://retired.example/v1/records"


def logged(count: int) -> list[LogEntry]:
    entries = [
        log_entry(seq, {"step": seq + 1, "loss": 1.0 / (seq + 1)}, 1_700_000_000.0) for seq in range(count)
    ]
    return [entry for entry in entries if entry is not None]


def kinds(payloads: list[Any]) -> list[tuple[str, str]]:
    """What arrived, as (kind, job id) pairs, in a stable order."""
    job_of = {
        "Checkpoint": lambda payload: payload["metadata"]["jobId"],
        "TrainingJob": lambda payload: payload["id"],
        "TrainingLog": lambda payload: payload["jobId"],
    }
    return sorted((payload["kind"], job_of[payload["kind"]](payload)) for payload in payloads)


def test_a_mistyped_sinks_deliveries_are_named_then_moved_and_flush_job_sends_only_that_job(
    isolated_store: Path,
) -> None:
    store = RecordStore(isolated_store)
    alpha, beta = job_id_for("alpha"), job_id_for("beta")
    for step in (2, 4):
        store.put(make_record(step, job="alpha"), [TYPO])
    store.put_job(job_snapshot(None, "loop", "Success", None, job_id=alpha, job_name="alpha", created_at=1))
    store.append_log(alpha, logged(150), end=150)  # recorded before any sink took logs: none queued
    store.put(make_record(2, job="beta"))  # recorded with no sink at all

    listed = cli("list")
    rows = {line.split()[0]: line for line in listed.stdout.splitlines()[1:]}
    assert rows["alpha-checkpoint-2"].endswith("0/1 sent, 1 not configured")
    assert rows["beta-checkpoint-2"].endswith("local")
    assert (
        f"not configured here, with deliveries waiting: {TYPO} (`checkpoint-records outbox move"
        in listed.stderr
    )
    inspected = cli("inspect", "alpha-checkpoint-4").stdout
    assert (
        f"# delivery to {TYPO}: pending (due now); not configured here: `checkpoint-records outbox move"
        in (inspected)
    )
    table = cli("outbox").stdout.splitlines()
    assert table[0].split() == ["SINK", "PENDING", "DELIVERED", "DEAD", "DROPPED", "HERE"]
    assert table[1].split() == [TYPO, "2", "0", "0", "0", "not", "configured"]
    assert cli("outbox", "move", "https://nowhere.example/", "https://x.example/").returncode == 1

    with Receiver(path="/v1/records", records_only=False) as receiver:
        moved = cli("outbox", "move", TYPO, receiver.url)
        assert moved.returncode == 0 and f"moved 2 deliveries from {TYPO} to {receiver.url}" in moved.stderr
        assert cli("outbox").stdout.splitlines()[1].split()[:5] == [receiver.url, "2", "0", "0", "0"]
        only_alpha = cli("flush", "--sink", receiver.url, "--job", "alpha")
        assert only_alpha.returncode == 0, only_alpha.stderr
        assert kinds(receiver.accepted_payloads()) == [
            ("Checkpoint", alpha),
            ("Checkpoint", alpha),
            ("TrainingJob", alpha),
            ("TrainingLog", alpha),
            ("TrainingLog", alpha),
        ]
        everything = cli("flush", "--sink", receiver.url)
        assert everything.returncode == 0 and "queued 1 document it was never sent" in everything.stderr
        assert kinds(receiver.accepted_payloads()[5:]) == [("Checkpoint", beta)]
        again = cli("flush", "--sink", receiver.url)
        assert again.returncode == 0 and "nothing to deliver" in again.stderr
        assert len(receiver.accepted()) == 6
        receiver.assert_idempotent()
        unknown = cli("flush", "--sink", receiver.url, "--job", "gamma")
        assert unknown.returncode == 1 and "no job named 'gamma'" in unknown.stderr
    assert TYPO not in cli("outbox").stdout


def test_a_retired_sinks_deliveries_are_dropped_and_still_shown(isolated_store: Path) -> None:
    store = RecordStore(isolated_store)
    store.put(make_record(2, job="alpha"), [GONE])
    flushed = cli("flush")
    assert flushed.returncode == 1 and f"`checkpoint-records outbox drop {GONE}`" in flushed.stderr
    dropped = cli("outbox", "drop", GONE)
    assert dropped.returncode == 0 and f"dropped 1 delivery to {GONE}" in dropped.stderr
    assert cli("list").stdout.splitlines()[1].endswith("0/1 sent, 1 dropped")
    assert f"# delivery to {GONE}: dropped (by `outbox drop`" in cli("inspect", "alpha-checkpoint-2").stdout
    assert store.outbox.counts() == {"pending": 0, "delivered": 0, "dead": 0, "dropped": 1}
    after = cli("flush")
    assert after.returncode == 0 and "nothing to deliver" in after.stderr  # given up: not asked again
    with Receiver(path="/v1/records") as receiver:  # still movable, should it come back elsewhere
        assert cli("outbox", "move", GONE, receiver.url).returncode == 0
        assert cli("flush", "--sink", receiver.url).returncode == 0
        assert receiver.accepted_names() == {"alpha-checkpoint-2"}
