"""The embedded store: records, jobs, their delivery outbox, the job log and the upload queue, in one
SQLite file (``<home>/records.db``), safe across threads, processes and forks.

Where things are: :mod:`.database` owns the connections and the write transactions (and keeps writes in
memory while the disk is full); :mod:`.schema` the tables and their migrations. The parts supply the SQL:
:mod:`.documents` (records and job snapshots, with their revisions: :meth:`RecordStore.put` and the
atomic :meth:`RecordStore.update_record`), :mod:`.log` (a job's logged entries, revised page by page;
:mod:`.pages` reads and receives the pages), :mod:`.received` (documents the registry server received,
where they came from, and their idempotency keys), :mod:`.queries` (lists and pages for the server and
the page). Three lease queues (:mod:`.leases`) hold work that must be done once: ``store.outbox``
(:mod:`.outbox`, deliveries to sinks), ``store.uploads`` (:mod:`.uploads`, files to upload) and
``store.evaluations`` (:mod:`.evaluations`, checkpoints each evaluator has still to run). No module
outside this package touches a connection or writes SQL.
"""

from __future__ import annotations

import os
from sqlite3 import DatabaseError  # what reading a damaged store raises: the CLI says what to do

from .database import DATABASE_NAME
from .documents import Documents, RecordRevision, StoredJob, StoredRecord
from .evaluations import ClaimedEvaluation, EvaluationQueue, LostClaim
from .leases import Lease, LeaseQueue, claim_owner, owner_is_alive
from .log import JobLog
from .outbox import Claimed, Delivery, DeliveryState, DocumentKind, Outbox, Outcome
from .queries import CheckpointStats, JobSummary, Queries
from .received import FINISHED_JOB_STATUSES, Origin, Receipt, Received, ReceivedDocument, Refused, Submission
from .schema import SCHEMA_VERSION
from .uploads import UploadQueue, UploadRow


class RecordStore(Documents, JobLog, Received, Queries):
    """Records, jobs, their log and the three queues in ``<home>/records.db``."""

    def __init__(self, home: str | os.PathLike[str] | None = None) -> None:
        super().__init__(home)
        #: Deliveries of records and jobs to sinks.
        self.outbox = Outbox(self)
        #: Checkpoints' files to upload to storage.
        self.uploads = UploadQueue(self)
        #: Checkpoints each evaluator has still to evaluate.
        self.evaluations = EvaluationQueue(self)


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
    "owner_is_alive",
]
