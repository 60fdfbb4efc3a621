"""The delivery outbox: one row per document (record, job or page of a job's log) and sink, queued in the
transaction that stores the document, so a document is never stored without being queued for delivery,
nor queued without being stored. Lanes claim rows per sink (:class:`~.leases.LeaseQueue`) and settle what
came of them; an outcome for a superseded revision changes nothing (the newer one stays pending).

A sink added later is sent what it lacks by :meth:`Outbox.backfill` (``flush``); the deliveries to a sink
that is gone are moved to another one or dropped (``outbox move``/``drop``), never silently.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..job import JobSnapshot
from ..record import CheckpointRecord
from .database import marks, readable
from .dialect import Connection
from .leases import LeaseQueue
from .pages import stored_page

#: ``dropped``: given up on by ``outbox drop`` (its sink is gone); ``outbox move`` sends it elsewhere.
DeliveryState = Literal["pending", "delivered", "dead", "dropped"]
#: What an outbox entry delivers: a checkpoint record (``records``), a job snapshot (``jobs``) or a page
#: of a job's log (``log_pages``).
DocumentKind = Literal["record", "job", "log"]
#: The columns a new delivery is queued with.
_OUTBOX_COLUMNS = (
    "sink",
    "record_id",
    "revision",
    "state",
    "attempts",
    "next_attempt_at",
    "updated_at",
    "kind",
)
#: Where each kind of document is kept, with its id and revision (and its job, to backfill one job).
_DOCUMENTS: dict[DocumentKind, tuple[str, str]] = {
    "record": ("records", "job_id"),
    "job": ("jobs", "id"),
    "log": ("log_pages", "job_id"),
}

#: What a stored body of each kind is read as (a log page has no body: it is made from its entries).
_MODELS: dict[DocumentKind, type[CheckpointRecord] | type[JobSnapshot]] = {
    "record": CheckpointRecord,
    "job": JobSnapshot,
}


@dataclass(frozen=True)
class Delivery:
    """One record's delivery to one sink."""

    sink: str
    record_id: str
    revision: int
    state: DeliveryState
    attempts: int
    next_attempt_at: float
    last_error: str | None
    kind: DocumentKind = "record"


_DELIVERY_COLUMNS = "sink, record_id, revision, state, attempts, next_attempt_at, last_error, kind"


@dataclass(frozen=True)
class Claimed:
    """A pending delivery this process has claimed, with the record's stored body."""

    sink: str
    record_id: str
    revision: int
    body: str


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to: the delivery's next state, when to try again, and why."""

    claim: Claimed
    state: DeliveryState
    next_attempt_at: float
    error: str | None = None


def queue_deliveries(
    connection: Connection,
    sinks: Sequence[str],
    record_id: str,
    revision: int,
    kind: DocumentKind = "record",
    replace: bool = True,
) -> None:
    """Queue ``revision`` of a document for ``sinks``, due now, in the caller's transaction; with
    ``replace`` False a sink that already has an entry keeps it (a sink added since is queued)."""
    now = time.time()
    dialect = connection.dialect
    insert = dialect.replace_into("outbox", _OUTBOX_COLUMNS, ("sink", "record_id")) if replace else None
    connection.executemany(
        insert or dialect.insert_new("outbox", _OUTBOX_COLUMNS),
        [(sink, record_id, revision, "pending", 0, now, now, kind) for sink in sinks],
    )


class Outbox(LeaseQueue):
    """Deliveries of the store's documents to sinks; its lease scope is one sink."""

    table = "outbox"
    open_states = ("pending",)

    def scope(self, key: str) -> tuple[str, tuple[Any, ...]]:
        return "sink = ?", (key,)

    def deliveries(self, record_id: str | None = None) -> list[Delivery]:
        """Every delivery (of one document), by sink."""
        query = f"SELECT {_DELIVERY_COLUMNS} FROM outbox"
        params: tuple[Any, ...] = ()
        if record_id is not None:
            query, params = query + " WHERE record_id = ?", (record_id,)
        return [Delivery(*row) for row in self.database.read().execute(query + " ORDER BY sink", params)]

    def deliveries_of(self, record_ids: Sequence[str]) -> dict[str, list[Delivery]]:
        """The deliveries of each of ``record_ids`` (by sink), in one query: a page of checkpoints."""
        found: dict[str, list[Delivery]] = {record_id: [] for record_id in record_ids}
        rows = self.database.read().execute(
            f"SELECT {_DELIVERY_COLUMNS} FROM outbox WHERE record_id IN ({self.database.dialect.listed()})"
            " ORDER BY sink",
            (json.dumps(list(record_ids)),),
        )
        for row in rows:
            delivery = Delivery(*row)
            found[delivery.record_id].append(delivery)
        return found

    def claim_due(self, sink: str, owner: str, lease_seconds: float, limit: int) -> list[Claimed]:
        """Claim up to ``limit`` due deliveries to ``sink`` for ``lease_seconds``, with their bodies (a
        log page's made from its entries as they are now, at its revision now)."""
        due, params = self._due_and_free(sink, owner)
        with self.database.transaction(durable=False) as connection:
            rows = connection.execute(
                "SELECT o.record_id, o.revision, COALESCE(r.body, j.body) FROM outbox o"
                " LEFT JOIN records r ON o.kind = 'record' AND r.id = o.record_id"
                " LEFT JOIN jobs j ON o.kind = 'job' AND j.id = o.record_id"
                " LEFT JOIN log_pages p ON o.kind = 'log' AND p.id = o.record_id"
                f" WHERE {due}"  # the outbox's columns: records, jobs and pages have none of these names
                " AND (r.body IS NOT NULL OR j.body IS NOT NULL OR p.id IS NOT NULL)"
                " ORDER BY o.next_attempt_at, COALESCE(r.step, 0) LIMIT ?",
                (*params, limit),
            ).fetchall()
            claimed = [
                Claimed(sink, record_id, revision, body or json.dumps(stored_page(connection, record_id)))
                for record_id, revision, body in rows
            ]
            until = time.time() + lease_seconds
            self._take(connection, sink, owner, until, [claim.record_id for claim in claimed])
        return claimed

    def settle(self, outcomes: Sequence[Outcome]) -> None:
        """Write what came of claimed deliveries, in one transaction, and release their claims.

        An outcome for a revision that has since been superseded changes nothing: the newer revision
        stays pending and is sent under its own idempotency key.
        """
        if not outcomes:
            return

        def write() -> None:
            now = time.time()
            with self.database.transaction(durable=False) as connection:
                connection.executemany(
                    "UPDATE outbox SET state = ?, attempts = attempts + 1, next_attempt_at = ?,"
                    " last_error = ?, updated_at = ?, claimed_by = NULL, claimed_until = NULL"
                    " WHERE sink = ? AND record_id = ? AND revision = ?",
                    [
                        (
                            o.state,
                            o.next_attempt_at,
                            o.error,
                            now,
                            o.claim.sink,
                            o.claim.record_id,
                            o.claim.revision,
                        )
                        for o in outcomes
                    ],
                )

        self.database.write(write, None)  # a full disk keeps it, in order: a delivery is said once

    def counts(self, sinks: Sequence[str] | None = None) -> dict[DeliveryState, int]:
        """How many deliveries are pending, delivered, dead and dropped (to ``sinks``, or to any sink)."""
        query, params = "SELECT state, COUNT(*) FROM outbox", list(sinks or ())
        if sinks is not None:
            query += f" WHERE sink IN ({marks(params)})"
        found: dict[DeliveryState, int] = {"pending": 0, "delivered": 0, "dead": 0, "dropped": 0}
        for state, count in self.database.read().execute(query + " GROUP BY state", params):
            found[state] = count
        return found

    def sinks(self) -> dict[str, dict[DeliveryState, int]]:
        """Every sink the outbox names, with its deliveries counted by state."""
        found: dict[str, dict[DeliveryState, int]] = {}
        rows = self.database.read().execute("SELECT sink, state, COUNT(*) FROM outbox GROUP BY sink, state")
        for sink, state, count in rows:
            found.setdefault(sink, {"pending": 0, "delivered": 0, "dead": 0, "dropped": 0})[state] = count
        return found

    def backfill(self, sink: str, kinds: Sequence[DocumentKind], job_ids: Sequence[str] | None = None) -> int:
        """Queue for ``sink`` every stored document of ``kinds`` (of ``job_ids``, or of every job) that it
        has no delivery of (what was stored before the sink was configured): at its revision now, due
        now. What it has, delivered or not, is left as it is; what no reader can read is left out, as it is
        of lists. How many were queued."""
        now = time.time()
        queued = 0
        with self.database.transaction(durable=False) as connection:
            for kind in kinds:
                table, job_column = _DOCUMENTS[kind]
                model = _MODELS.get(kind)
                only = "" if job_ids is None else f" WHERE {job_column} IN ({connection.dialect.listed()})"
                rows = connection.execute(
                    f"SELECT id, revision, {'body' if model else 'NULL'} FROM {table}{only}",
                    () if job_ids is None else (json.dumps(list(job_ids)),),
                ).fetchall()
                queued += connection.executemany(
                    connection.dialect.insert_new("outbox", _OUTBOX_COLUMNS),
                    [
                        (sink, document_id, revision, "pending", 0, now, now, kind)
                        for document_id, revision, body in rows
                        if model is None or readable(model, body, f"{kind} {document_id}") is not None
                    ],
                ).rowcount
        return queued

    def move(self, old: str, new: str, kinds: Sequence[DocumentKind]) -> int:
        """Send ``new`` what ``old`` was never delivered (pending, dead or dropped) of ``kinds``: each
        becomes a pending delivery to ``new`` (unless ``new`` has that revision or a newer one), and is
        no longer ``old``'s. How many moved."""
        now = time.time()
        undelivered = f"sink = ? AND state != 'delivered' AND kind IN ({marks(kinds)})"
        with self.database.transaction(durable=False) as connection:
            connection.execute(
                "INSERT INTO outbox (sink, record_id, revision, state, attempts, next_attempt_at, updated_at,"
                f" kind) SELECT ?, record_id, revision, 'pending', 0, ?, ?, kind FROM outbox WHERE {undelivered}"
                " ON CONFLICT (sink, record_id) DO UPDATE SET revision = excluded.revision, state = 'pending',"
                " attempts = 0, next_attempt_at = excluded.next_attempt_at, last_error = NULL,"
                " updated_at = excluded.updated_at WHERE excluded.revision > outbox.revision",
                (new, now, now, old, *kinds),
            )
            return int(connection.execute(f"DELETE FROM outbox WHERE {undelivered}", (old, *kinds)).rowcount)

    def drop(self, sink: str) -> int:
        """Give up the deliveries to ``sink`` still pending or dead (its destination is gone): they stay,
        ``dropped``, so ``inspect`` says so and ``outbox move`` can still send them elsewhere."""
        with self.database.transaction(durable=False) as connection:
            return int(
                connection.execute(
                    "UPDATE outbox SET state = 'dropped', updated_at = ?, claimed_by = NULL,"
                    " claimed_until = NULL WHERE sink = ? AND state IN ('pending', 'dead')",
                    (time.time(), sink),
                ).rowcount
            )

    def requeue(
        self,
        states: Sequence[DeliveryState],
        sinks: Sequence[str] | None = None,
        record_ids: Sequence[str] | None = None,
    ) -> int:
        """Make deliveries in ``states`` pending and due now (``resend`` revives dead ones); how many."""
        query = f"UPDATE outbox SET state = 'pending', next_attempt_at = ? WHERE state IN ({marks(states)})"
        params: list[Any] = [time.time(), *states]
        for column, values in (("sink", sinks), ("record_id", record_ids)):
            if values is not None:
                query += f" AND {column} IN ({marks(values)})"
                params += list(values)

        def write() -> int:
            with self.database.transaction(durable=False) as connection:
                return int(connection.execute(query, params).rowcount)

        return self.database.write(write, 0)
