"""Documents the registry server received from other jobs, stored with their own revisions, where they
came from, and the idempotency keys of the requests that carried them, so a replayed request changes
nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ..job import JobSnapshot
from ..record import CheckpointRecord
from ..series import LogPage
from .database import Database, marks, readable
from .dialect import Connection
from .documents import write_job, write_record
from .pages import receive_page

#: How long a received idempotency key is remembered (a sender retries for far less).
RECEIVED_KEY_SECONDS = 7 * 24 * 3600.0
#: Expired keys are deleted at most this often: once per write round was a statement per request.
RECEIVED_KEY_PURGE_SECONDS = 60.0
#: Job statuses that end a job.
FINISHED_JOB_STATUSES: frozenset[str] = frozenset({"Success", "Failed", "TimedOut", "Cancelled"})


@dataclass(frozen=True)
class Receipt:
    """What became of one received document: ``stored`` is False when the store already held this
    revision or a newer one (then ``revision`` is the one it holds)."""

    id: str
    kind: Literal["record", "job", "log"]
    revision: int
    stored: bool


#: What another job sends: its records, its job, the pages of its log.
ReceivedDocument = CheckpointRecord | JobSnapshot | LogPage


@dataclass(frozen=True)
class Submission:
    """Documents received in one request, stored all or none; ``key`` is its ``Idempotency-Key`` and
    ``digest`` a hash of its body, so a key reused for other content is told apart from a replay;
    ``sender`` is where the request came from (the peer's address)."""

    documents: Sequence[ReceivedDocument]
    key: str | None = None
    digest: str = ""
    sender: str = ""


@dataclass(frozen=True)
class Origin:
    """Where a document the registry holds came from: the revision it holds, sent by ``sender`` (an
    address) at ``received_at`` (Unix seconds)."""

    id: str
    revision: int
    sender: str
    received_at: float


@dataclass(frozen=True)
class Refused:
    """Why nothing of a submission was stored: its idempotency key came before with another body
    (``reused key``), or one of its records has an id already stored under another job (``other job``:
    a document never overwrites another job's)."""

    reason: Literal["reused key", "other job"]
    detail: str


class Received(Database):
    """The ``received_keys`` and ``received_from`` tables, and the received documents' writes."""

    #: When received idempotency keys past their time were last deleted.
    _keys_purged_at = 0.0

    def receive(self, submissions: Sequence[Submission]) -> list[list[Receipt] | Refused]:
        """Store documents sent by other jobs, keeping their own revisions, in one durable transaction.

        Per submission, in order: a known idempotency key with the same digest changes nothing and
        gives the receipts answered the first time; with another digest, or with a record whose id is
        stored under another job, it is :class:`Refused` and stores nothing. A record, or a page of a
        job's log, is stored when its revision is newer than the one held; a job snapshot when it is
        newer by :func:`_job_order`. Older or equal ones change nothing. Each document stored notes where
        it came from (:meth:`origins`). Received documents are not queued for any sink.
        """
        now = time.time()
        answers: list[list[Receipt] | Refused] = []
        with self.transaction() as connection:
            if now - self._keys_purged_at > RECEIVED_KEY_PURGE_SECONDS:
                connection.execute(
                    "DELETE FROM received_keys WHERE received_at < ?", (now - RECEIVED_KEY_SECONDS,)
                )
                self._keys_purged_at = now
            for submission in submissions:
                if submission.key is not None:
                    row = connection.execute(
                        "SELECT digest, receipts FROM received_keys WHERE key = ?", (submission.key,)
                    ).fetchone()
                    if row is not None:
                        answers.append(_receipts(row[1]) if row[0] == submission.digest else _REUSED_KEY)
                        continue
                taken = _held_by_another_job(connection, submission.documents)
                if taken is not None:
                    answers.append(
                        Refused("other job", f"record {taken} is already stored under another job")
                    )
                    continue
                receipts = [_receive(connection, document) for document in submission.documents]
                connection.executemany(
                    connection.dialect.replace_into(
                        "received_from", ("id", "kind", "revision", "sender", "received_at"), ("id",)
                    ),
                    [(r.id, r.kind, r.revision, submission.sender, now) for r in receipts if r.stored],
                )
                if submission.key is not None:
                    connection.execute(
                        "INSERT INTO received_keys (key, digest, receipts, received_at) VALUES (?, ?, ?, ?)",
                        (submission.key, submission.digest, _receipts_json(receipts), now),
                    )
                answers.append(receipts)
        return answers

    def origins(self, ids: Sequence[str]) -> dict[str, Origin]:
        """Where each of ``ids`` that this store received came from (those it did not receive are left
        out: they were recorded here)."""
        found: dict[str, Origin] = {}
        for start in range(0, len(ids), 500):  # SQLite's limit on bound parameters
            part = list(ids[start : start + 500])
            rows = self.read().execute(
                f"SELECT id, revision, sender, received_at FROM received_from WHERE id IN ({marks(part)})",
                part,
            )
            found.update((row[0], Origin(*row)) for row in rows)
        return found


_REUSED_KEY = Refused("reused key", "Idempotency-Key was already used for a different body")


def _held_by_another_job(connection: Connection, documents: Sequence[ReceivedDocument]) -> str | None:
    """The id of the first record among ``documents`` that is stored under another job, if any."""
    for document in documents:
        if isinstance(document, CheckpointRecord):
            row = connection.execute("SELECT job_id FROM records WHERE id = ?", (document.id,)).fetchone()
            if row is not None and row[0] != document.metadata.job_id:
                return document.id
    return None


def _receive(connection: Connection, document: ReceivedDocument) -> Receipt:
    if isinstance(document, CheckpointRecord):
        return _receive_record(connection, document)
    if isinstance(document, LogPage):
        return Receipt(document.id, "log", *receive_page(connection, document))
    return _receive_job(connection, document)


def _receive_record(connection: Connection, record: CheckpointRecord) -> Receipt:
    revision = record.metadata.revision
    row = connection.execute("SELECT revision FROM records WHERE id = ?", (record.id,)).fetchone()
    if row is not None and int(row[0]) >= revision:
        return Receipt(record.id, "record", int(row[0]), stored=False)
    write_record(connection, record, revision)
    return Receipt(record.id, "record", revision, stored=True)


def _job_order(job: JobSnapshot) -> tuple[int, bool, int, float]:
    """Newer by the second it was updated (all a ``TrainingJobDetail`` says), then a finished status over
    a running one, then the step, then the fraction of a second (the canonical format's job has it)."""
    return (int(job.updated_at), job.status in FINISHED_JOB_STATUSES, job.global_step, job.updated_at)


def _receive_job(connection: Connection, job: JobSnapshot) -> Receipt:
    row = connection.execute("SELECT body, revision FROM jobs WHERE id = ?", (job.id,)).fetchone()
    held = None if row is None else readable(JobSnapshot, row[0], f"job {job.id}")
    if held is not None and _job_order(held) >= _job_order(job):  # one nobody can read is replaced
        return Receipt(job.id, "job", int(row[1]), stored=False)
    revision = 1 if row is None else int(row[1]) + 1
    write_job(connection, job, job.model_dump_json(), revision, None)
    return Receipt(job.id, "job", revision, stored=True)


def _receipts_json(receipts: Sequence[Receipt]) -> str:
    return json.dumps([[r.id, r.kind, r.revision, r.stored] for r in receipts], separators=(",", ":"))


def _receipts(text: str) -> list[Receipt]:
    return [Receipt(*item) for item in json.loads(text)]
