"""The evaluation queue: one row per evaluator (``checkpoint-records evaluate --name NAME``) and checkpoint.

A row is ``pending`` until the evaluator's result is on the record, then ``done``; the result itself (its
metrics, or why it failed or was skipped) lives on the record (``status.evaluations``), written in the
transaction that closes the row (:meth:`EvaluationQueue.finish`). Rows are claimed per evaluator name
(:class:`~.leases.LeaseQueue`), so two workers of one name never run one checkpoint at once, and a worker
closes a row only while it still holds it: a checkpoint is evaluated once. A worker killed mid-run
leaves its row pending and claimed by a process that is gone; the next worker releases it and runs that
evaluation again, and only that one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..record import CheckpointRecord
from .database import Database
from .dialect import Dialect
from .documents import Change, Sinks, StoredRecord, read_record, revise
from .leases import LeaseQueue


@dataclass(frozen=True)
class ClaimedEvaluation:
    """A pending evaluation a worker holds: the checkpoint's record as stored, and the attempts so far."""

    evaluator: str
    record: CheckpointRecord
    attempts: int
    #: Why the last attempt did not succeed (retried), if one did not.
    error: str | None


class LostClaim(Exception):
    """The row is no longer this worker's (its claim lapsed and another took it, or it is done)."""


def _job_filter(
    dialect: Dialect, job_ids: Sequence[str] | None, column: str = "record_id"
) -> tuple[str, tuple[Any, ...]]:
    """``AND``, the condition that ``column`` (a record id) is a record of ``job_ids``; "" for every job."""
    if job_ids is None:
        return "", ()
    condition = f" AND {column} IN (SELECT id FROM records WHERE job_id IN ({dialect.listed()}))"
    return condition, (json.dumps(list(job_ids)),)


class EvaluationQueue(LeaseQueue):
    """Checkpoints to evaluate; its lease scope is one evaluator name."""

    table = "evaluations"
    open_states = ("pending",)

    def scope(self, key: str) -> tuple[str, tuple[Any, ...]]:
        return "evaluator = ?", (key,)

    def __init__(self, database: Database) -> None:
        super().__init__(database)
        #: The last record row looked at, per evaluator and job filter: only records written since (new
        #: ones, new revisions) are looked at again.
        self._seen: dict[tuple[str, str], int] = {}

    def enqueue(self, evaluator: str, job_ids: Sequence[str] | None = None) -> int:
        """Queue every checkpoint (of ``job_ids``) written since the last call that ``evaluator`` has no
        row and no result for; how many were new. ``evaluator`` is a checked name (letters, digits, ``.``,
        ``_``, ``-``), so it can stand in a JSON path."""
        dialect = self.database.dialect
        jobs, params = _job_filter(dialect, job_ids, "id")
        seen = (evaluator, params[0] if params else "")
        last = int(self.database.read().execute("SELECT COALESCE(MAX(rowid), 0) FROM records").fetchone()[0])
        if last <= self._seen.get(seen, 0):
            return 0  # nothing written since: an idle worker's look costs one read, not a write lock
        now = time.time()
        with self.database.transaction(durable=False) as connection:
            added = connection.execute(
                dialect.insert_new(
                    "evaluations",
                    ("evaluator", "record_id", "state", "next_attempt_at", "updated_at"),
                    "SELECT ?, id, 'pending', ?, ? FROM records"
                    f" WHERE rowid > ? AND rowid <= ? AND {dialect.json_absent('body')}{jobs}",
                ),
                (
                    evaluator,
                    now,
                    now,
                    self._seen.get(seen, 0),
                    last,
                    f'$.status.evaluations."{evaluator}"',
                    *params,
                ),
            ).rowcount
        self._seen[seen] = last
        return int(added)

    def claim_next(
        self, evaluator: str, owner: str, lease_seconds: float, job_ids: Sequence[str] | None = None
    ) -> ClaimedEvaluation | None:
        """Claim the due pending evaluation of the lowest step (oldest first), or None."""
        due, params = self._due_and_free(evaluator, owner)
        jobs, job_params = _job_filter(self.database.dialect, job_ids)
        with self.database.transaction(durable=False) as connection:
            found = connection.execute(
                "SELECT e.record_id, e.attempts, e.error, r.body FROM evaluations e"
                " JOIN records r ON r.id = e.record_id"
                f" WHERE {due}{jobs}"  # the queue's columns: records has none of these names
                " ORDER BY e.next_attempt_at, r.step, r.created_at LIMIT 1",
                (*params, *job_params),
            ).fetchone()
            if found is None:
                return None
            record_id, attempts, error, body = found
            record = read_record(body, record_id)
            if record is None:  # stored by an older release, unreadable (said once): nothing to evaluate
                connection.execute(
                    "UPDATE evaluations SET state = 'done', updated_at = ? WHERE evaluator = ? AND record_id = ?",
                    (time.time(), evaluator, record_id),
                )
                return None
            self._take(connection, evaluator, owner, time.time() + lease_seconds, [record_id])
        return ClaimedEvaluation(evaluator, record, int(attempts), error)

    def started(self, evaluator: str, record_id: str, owner: str, at: str) -> int:
        """An attempt of the command starts now (counted before it runs: a kill counts); its number."""
        with self.database.transaction(durable=False) as connection:
            self._held(connection, evaluator, record_id, owner)
            connection.execute(
                "UPDATE evaluations SET attempts = attempts + 1, started_at = ?, updated_at = ?"
                " WHERE evaluator = ? AND record_id = ?",
                (at, time.time(), evaluator, record_id),
            )
            row = connection.execute(
                "SELECT attempts FROM evaluations WHERE evaluator = ? AND record_id = ?",
                (evaluator, record_id),
            ).fetchone()
        return int(row[0])

    def retry(self, evaluator: str, record_id: str, owner: str, error: str, at: float) -> None:
        """Leave the evaluation pending, due at ``at``, saying why the attempt failed; release it."""
        with self.database.transaction(durable=False) as connection:
            self._held(connection, evaluator, record_id, owner)
            connection.execute(
                "UPDATE evaluations SET error = ?, next_attempt_at = ?, claimed_by = NULL,"
                " claimed_until = NULL, updated_at = ? WHERE evaluator = ? AND record_id = ?",
                (error, at, time.time(), evaluator, record_id),
            )

    def finish(
        self, evaluator: str, record_id: str, owner: str, change: Change, sinks: Sinks
    ) -> StoredRecord | None:
        """Close the evaluation and revise its record by ``change`` (queued for ``sinks``), in one durable
        transaction, only while ``owner`` still holds it (else :class:`LostClaim`, and nothing changes)."""
        with self.database.transaction() as connection:
            self._held(connection, evaluator, record_id, owner)
            connection.execute(
                "UPDATE evaluations SET state = 'done', claimed_by = NULL, claimed_until = NULL,"
                " updated_at = ? WHERE evaluator = ? AND record_id = ?",
                (time.time(), evaluator, record_id),
            )
            return revise(connection, record_id, change, sinks)

    def reopen_failed(self, evaluator: str, job_ids: Sequence[str] | None = None) -> int:
        """Make the evaluations whose result is ``failed`` pending again, with their attempts afresh
        (``evaluate --retry-failed``, once the cause is fixed); how many. Their next result replaces it."""
        jobs, params = _job_filter(self.database.dialect, job_ids)
        now = time.time()
        with self.database.transaction(durable=False) as connection:
            return int(
                connection.execute(
                    "UPDATE evaluations SET state = 'pending', attempts = 0, error = NULL, next_attempt_at = ?,"
                    " claimed_by = NULL, claimed_until = NULL, updated_at = ? WHERE evaluator = ? AND state = 'done'"
                    " AND record_id IN (SELECT id FROM records"
                    f" WHERE {self.database.dialect.json_text_at('body')} = 'failed')"
                    f"{jobs}",
                    (now, now, evaluator, f'$.status.evaluations."{evaluator}".state', *params),
                ).rowcount
            )

    def pending(self, evaluator: str, job_ids: Sequence[str] | None = None) -> int:
        """How many evaluations of ``evaluator`` (of ``job_ids``) are still to do, claimed or not."""
        jobs, params = _job_filter(self.database.dialect, job_ids)
        query = f"SELECT COUNT(*) FROM evaluations WHERE evaluator = ? AND {self._open}{jobs}"
        return int(self.database.read().execute(query, (evaluator, *params)).fetchone()[0])

    def _held(self, connection: Any, evaluator: str, record_id: str, owner: str) -> None:
        row = connection.execute(
            "SELECT 1 FROM evaluations WHERE evaluator = ? AND record_id = ? AND state = 'pending'"
            " AND claimed_by = ?",
            (evaluator, record_id, owner),
        ).fetchone()
        if row is None:
            raise LostClaim(f"the evaluation of {record_id} by {evaluator} is no longer held by this worker")
