"""The delivery outbox: one row per document (record or job) and sink, queued in the transaction that
stores the document, so a document is never stored without being queued for delivery, nor queued
without being stored. Lanes claim rows per sink (:class:`~.leases.LeaseQueue`) and settle what came of
them; an outcome for a superseded revision changes nothing (the newer one stays pending).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .database import marks
from .dialect import Connection
from .leases import LeaseQueue

DeliveryState = Literal["pending", "delivered", "dead"]
#: What an outbox entry delivers: a checkpoint record (``records``) or a job snapshot (``jobs``).
DocumentKind = Literal["record", "job"]


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
    columns = ("sink", "record_id", "revision", "state", "attempts", "next_attempt_at", "updated_at", "kind")
    insert = dialect.replace_into("outbox", columns, ("sink", "record_id")) if replace else None
    connection.executemany(
        insert or dialect.insert_new("outbox", columns),
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
        """Claim up to ``limit`` due deliveries to ``sink`` for ``lease_seconds``, with their bodies."""
        due, params = self._due_and_free(sink, owner)
        with self.database.transaction(durable=False) as connection:
            rows = connection.execute(
                "SELECT o.record_id, o.revision, COALESCE(r.body, j.body) FROM outbox o"
                " LEFT JOIN records r ON o.kind = 'record' AND r.id = o.record_id"
                " LEFT JOIN jobs j ON o.kind = 'job' AND j.id = o.record_id"
                f" WHERE {due}"  # the outbox's columns: records and jobs have none of these names
                " AND COALESCE(r.body, j.body) IS NOT NULL"
                " ORDER BY o.next_attempt_at, COALESCE(r.step, 0) LIMIT ?",
                (*params, limit),
            ).fetchall()
            until = time.time() + lease_seconds
            self._take(connection, sink, owner, until, [record_id for record_id, *_ in rows])
        return [Claimed(sink, record_id, revision, body) for record_id, revision, body in rows]

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
        """How many deliveries are pending, delivered and dead (to ``sinks``, or to any sink)."""
        query, params = "SELECT state, COUNT(*) FROM outbox", list(sinks or ())
        if sinks is not None:
            query += f" WHERE sink IN ({marks(params)})"
        found: dict[DeliveryState, int] = {"pending": 0, "delivered": 0, "dead": 0}
        for state, count in self.database.read().execute(query + " GROUP BY state", params):
            found[state] = count
        return found

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
