"""The embedded store: records, jobs, their delivery outbox, the job log and the upload queue, in one
SQLite file (``<home>/records.db``), safe across threads, processes and forks.

Where things are: :mod:`.database` owns the connections and the write transactions (and keeps writes in
memory while the disk is full); :mod:`.schema` the tables and their migrations. The parts supply the SQL:
:mod:`.documents` (records and job snapshots, with their revisions: :meth:`RecordStore.put` and the
atomic :meth:`RecordStore.update_record`), :mod:`.log` (a job's logged entries, revised page by page;
:mod:`.pages` reads and receives the pages), :mod:`.received` (documents the registry server received,
where they came from, and their idempotency keys), :mod:`.queries` (lists and pages for the server and
the page), :mod:`.forget` (removing a job or a record with all it holds). Three lease queues
(:mod:`.leases`) hold work that must be done once: ``store.outbox`` (:mod:`.outbox`, deliveries to
sinks), ``store.uploads`` (:mod:`.uploads`, files to upload) and ``store.evaluations``
(:mod:`.evaluations`, checkpoints each evaluator has still to run). No module outside this package
touches a connection or writes SQL.

The registry server may keep the same parts on PostgreSQL instead (:func:`open_store`, :mod:`.postgres`):
the SQL is written once, and :mod:`.dialect` says the few fragments that differ.
"""

from __future__ import annotations

import os
from sqlite3 import DatabaseError  # what reading a damaged store raises: the CLI says what to do

from ..errors import ConfigurationError
from .database import DATABASE_NAME
from .documents import Documents, RecordRevision, StoredJob, StoredRecord
from .evaluations import ClaimedEvaluation, EvaluationQueue, LostClaim
from .forget import Forgetting, Forgotten
from .leases import Lease, LeaseQueue, claim_owner, owner_is_alive
from .log import JobLog
from .outbox import Claimed, Delivery, DeliveryState, DocumentKind, Outbox, Outcome
from .queries import CheckpointStats, JobSummary, Queries
from .received import FINISHED_JOB_STATUSES, Origin, Receipt, Received, ReceivedDocument, Refused, Submission
from .schema import SCHEMA_VERSION
from .uploads import UploadQueue, UploadRow


class RecordStore(Documents, JobLog, Received, Queries, Forgetting):
    """Records, jobs, their log and the three queues in ``<home>/records.db``."""

    def __init__(self, home: str | os.PathLike[str] | None = None) -> None:
        super().__init__(home)
        self.add_queues()

    def add_queues(self) -> None:
        #: Deliveries of records and jobs to sinks.
        self.outbox = Outbox(self)
        #: Checkpoints' files to upload to storage.
        self.uploads = UploadQueue(self)
        #: Checkpoints each evaluator has still to evaluate.
        self.evaluations = EvaluationQueue(self)


def open_store(database: str | None, home: str | os.PathLike[str] | None = None) -> RecordStore:
    """The registry's store: on the PostgreSQL ``database`` when one is given (:mod:`.postgres`, the
    ``postgres`` extra), else the SQLite file in ``home``."""
    if database is None:
        return RecordStore(home)
    try:
        from .postgres import PostgresStore
    except ModuleNotFoundError as error:
        raise ConfigurationError(
            f"a PostgreSQL store needs the postgres extra ({error.name} is missing): "
            "pip install 'checkpoint-records[postgres]'"
        ) from None
    return PostgresStore(database)


__all__ = [
    "DATABASE_NAME",
    "FINISHED_JOB_STATUSES",
    "SCHEMA_VERSION",
    "CheckpointStats",
    "Claimed",
    "ClaimedEvaluation",
    "DatabaseError",
    "Delivery",
    "DeliveryState",
    "DocumentKind",
    "EvaluationQueue",
    "Forgotten",
    "JobSummary",
    "Lease",
    "LeaseQueue",
    "LostClaim",
    "Origin",
    "Outcome",
    "Receipt",
    "ReceivedDocument",
    "RecordRevision",
    "RecordStore",
    "Refused",
    "StoredJob",
    "StoredRecord",
    "Submission",
    "UploadRow",
    "claim_owner",
    "open_store",
    "owner_is_alive",
]
