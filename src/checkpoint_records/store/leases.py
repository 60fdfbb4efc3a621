"""The lease queue: rows that background lanes claim, work on and settle, so two never do the same work.

Both queues of the store are one: the delivery outbox (a row per document and sink) and the upload queue
(a row per file of a checkpoint). A row is open until it is settled, due at ``next_attempt_at``, and
claimed per record within a scope (one sink's deliveries, one destination's files) by a holder
(``claimed_by``, see :func:`claim_owner`) until ``claimed_until``. A claim keeps other processes (another
job, ``checkpoint-records flush`` or ``upload``) from doing the same work at the same time.

One lease policy (:class:`Lease`) for every holder: a claim is held for :data:`LEASE_SECONDS`, or twice
the longest step of work the holder does without looking up (one send to a sink), if that is longer, and
renewed whenever less than half of it is left. The holder looks before every step (every send; every
second while files upload), so a claim always outlasts the work in hand, however long the batch or the
file. A holder that stops releases its claims; one that died on this host has them released by the next
lane that finds them (:meth:`LeaseQueue.release_dead`); only a holder on another host (a store on a shared
disk) that died holds its claims until they lapse. Why ten minutes rather than less: a claim that lapses
while its holder is only frozen (a stopped process, a stalled network filesystem) lets another process
do the same work while the holder may be in the middle of it; a few more minutes before the work of a
dead holder on another host resumes is the cheaper mistake.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from typing import Any, ClassVar

from .database import Database
from .dialect import Connection

#: How long a claim is held at least (see the module's docstring for why).
LEASE_SECONDS = 600.0
#: Room for the bookkeeping around one step of work (a settle, a renewal).
LEASE_MARGIN = 5.0
#: A claim is free when it has none, when it lapsed, or when it is the asker's own.
_CLAIMABLE = "(claimed_until IS NULL OR claimed_until < ? OR claimed_by = ?)"


class Lease:
    """The one lease policy: how long a holder's claims last, and when to renew them."""

    def __init__(self, step_seconds: float = 0.0) -> None:
        #: Held this long, twice the longest step of work at least: half of it always outlasts a step.
        self.seconds = max(LEASE_SECONDS, 2 * (step_seconds + LEASE_MARGIN))
        self.until = 0.0

    def taken(self) -> float:
        """The claims were taken (or renewed) now: until when they hold."""
        self.until = time.time() + self.seconds
        return self.until

    @property
    def renewal_due(self) -> bool:
        """Whether less than half of the lease is left: renew before the next step of work."""
        return self.until - time.time() < self.seconds / 2


class LeaseQueue:
    """Claims on the open rows of one table, per record and scope; subclasses say what a scope is."""

    table: ClassVar[str]
    #: The states of a row still to work on.
    open_states: ClassVar[tuple[str, ...]]

    def __init__(self, database: Database) -> None:
        self.database = database

    def scope(self, key: str) -> tuple[str, tuple[Any, ...]]:
        """The SQL condition, and its parameters, that selects the rows of scope ``key``."""
        raise NotImplementedError

    @property
    def _open(self) -> str:
        return f"state IN ({','.join(repr(state) for state in self.open_states)})"

    def _due_and_free(self, key: str, owner: str) -> tuple[str, tuple[Any, ...]]:
        """The condition for the scope's rows that are open, due and free to claim by ``owner``."""
        where, params = self.scope(key)
        now = time.time()
        condition = f"{where} AND {self._open} AND next_attempt_at <= ? AND {_CLAIMABLE}"
        return condition, (*params, now, now, owner)

    def _take(
        self, connection: Connection, key: str, owner: str, until: float, record_ids: list[str]
    ) -> None:
        """Claim the scope's rows of ``record_ids`` for ``owner`` until ``until`` (in a transaction)."""
        where, params = self.scope(key)
        connection.executemany(
            f"UPDATE {self.table} SET claimed_by = ?, claimed_until = ? WHERE {where} AND record_id = ?",
            [(owner, until, *params, record_id) for record_id in record_ids],
        )

    def extend(self, key: str, owner: str, until: float) -> set[str]:
        """Hold ``owner``'s claims in scope ``key`` until ``until``; the record ids it still holds."""
        where, params = self.scope(key)
        with self.database.transaction(durable=False) as connection:
            connection.execute(
                f"UPDATE {self.table} SET claimed_until = ? WHERE {where} AND claimed_by = ?",
                (until, *params, owner),
            )
            rows = connection.execute(
                f"SELECT DISTINCT record_id FROM {self.table} WHERE {where} AND claimed_by = ?",
                (*params, owner),
            ).fetchall()
        return {record_id for (record_id,) in rows}

    def release(self, key: str, owner: str) -> None:
        """Drop ``owner``'s claims in scope ``key`` (after what a full disk keeps of its work)."""

        def write() -> None:
            with self.database.transaction(durable=False) as connection:
                self._drop(connection, key, owner)

        self.database.write(write, None)

    def release_dead(self, key: str) -> int:
        """Drop the claims in scope ``key`` of every holder on this host that is no longer running."""
        where, params = self.scope(key)
        with self.database.transaction(durable=False) as connection:
            holders = connection.execute(
                f"SELECT DISTINCT claimed_by FROM {self.table} WHERE {where} AND claimed_by IS NOT NULL",
                params,
            ).fetchall()
            return sum(
                self._drop(connection, key, holder) for (holder,) in holders if not owner_is_alive(holder)
            )

    def _drop(self, connection: Connection, key: str, owner: str) -> int:
        """Drop ``owner``'s claims in scope ``key`` (in a transaction); how many rows it held."""
        where, params = self.scope(key)
        return int(
            connection.execute(
                f"UPDATE {self.table} SET claimed_by = NULL, claimed_until = NULL WHERE {where} AND claimed_by = ?",
                (*params, owner),
            ).rowcount
        )

    def next_due(self, key: str) -> float | None:
        """When the earliest open row in scope ``key`` is due (it may be claimed), or None."""
        where, params = self.scope(key)
        row = (
            self.database.read()
            .execute(f"SELECT MIN(next_attempt_at) FROM {self.table} WHERE {where} AND {self._open}", params)
            .fetchone()
        )
        return None if row is None or row[0] is None else float(row[0])


def claim_owner() -> str:
    """Who holds a claim: this host and process, and a random part for this holder."""
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


def owner_is_alive(owner: str) -> bool:
    """False only when the owner ran on this host and its process is gone; other hosts' claims lapse."""
    host, _, rest = owner.partition("/")
    pid_text = rest.partition("/")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return True
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
