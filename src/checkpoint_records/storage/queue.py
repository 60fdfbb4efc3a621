"""The durable upload queue: one row per file of a checkpoint in the store's ``uploads`` table.

A row is ``pending`` until its file is sent, ``committing`` while the finished upload is being made
visible (its SHA-256 already known, so a process killed at that moment does not send it again when the
remote copy is there with the right size), then ``uploaded``; ``failed`` when it cannot be sent
(credentials, a file gone before it was staged); ``removed`` once ``mirror`` retention deleted it.
Writes are short, not fsynced (they survive a crash of the process, which is what resuming needs), and
claimed per record with a lease, as the outbox does, so two processes never upload the same file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from ..record import CheckpointRecord
from ..store import RecordStore, owner_is_alive

RowState = Literal["pending", "committing", "uploaded", "failed", "removed"]
#: Rows still to send.
OPEN: tuple[RowState, ...] = ("pending", "committing")
LEASE_SECONDS = 120.0

_COLUMNS = (
    "record_id, path, size, sha256, state, attempts, error, remote, source, staging, sent, next_attempt_at"
)


@dataclass(frozen=True)
class UploadRow:
    record_id: str
    path: str
    size: int
    sha256: str | None
    state: RowState
    attempts: int
    error: str | None
    #: Public URL of the file's remote copy.
    remote: str
    #: The checkpoint directory it came from, and the staging directory it is uploaded from.
    source: str
    staging: str
    sent: int
    next_attempt_at: float


def enqueue(
    store: RecordStore, record: CheckpointRecord, remote_dir: str, staging: str, durable: bool = False
) -> None:
    """Queue every file of ``record``; a file already queued keeps its state unless its size changed."""
    now = time.time()
    with store._transaction(durable) as connection:
        connection.executemany(
            f"INSERT INTO uploads ({_COLUMNS}, updated_at) VALUES (?, ?, ?, NULL, 'pending', 0, NULL, ?, ?, ?, 0, ?, ?)"
            " ON CONFLICT(record_id, path) DO UPDATE SET size = excluded.size, sha256 = NULL, state = 'pending',"
            " attempts = 0, error = NULL, sent = 0, next_attempt_at = excluded.next_attempt_at,"
            " source = excluded.source, staging = excluded.staging, updated_at = excluded.updated_at"
            " WHERE uploads.size != excluded.size OR uploads.state = 'failed'",
            [
                (
                    record.id,
                    entry.path,
                    entry.size,
                    f"{remote_dir}/{entry.path}",
                    record.spec.directory,
                    staging,
                    now,
                    now,
                )
                for entry in record.status.files
            ],
        )


def rows(store: RecordStore, record_id: str) -> list[UploadRow]:
    query = f"SELECT {_COLUMNS} FROM uploads WHERE record_id = ? ORDER BY path"
    return [UploadRow(*row) for row in store._connection().execute(query, (record_id,))]


def failed(store: RecordStore) -> list[UploadRow]:
    query = f"SELECT {_COLUMNS} FROM uploads WHERE state = 'failed' ORDER BY record_id, path"
    return [UploadRow(*row) for row in store._connection().execute(query)]


def claim_next(store: RecordStore, owner: str, remote_prefix: str) -> list[UploadRow]:
    """Claim the open rows of the oldest record that has a due one under ``remote_prefix``; [] if none."""
    now = time.time()
    with store._transaction(durable=False) as connection:
        found = connection.execute(
            "SELECT record_id FROM uploads WHERE state IN ('pending', 'committing') AND next_attempt_at <= ?"
            " AND remote LIKE ? ESCAPE '\\' AND (claimed_until IS NULL OR claimed_until < ? OR claimed_by = ?)"
            " ORDER BY next_attempt_at, updated_at LIMIT 1",
            (now, _like_prefix(remote_prefix), now, owner),
        ).fetchone()
        if found is None:
            return []
        connection.execute(
            "UPDATE uploads SET claimed_by = ?, claimed_until = ? WHERE record_id = ?",
            (owner, now + LEASE_SECONDS, found[0]),
        )
        selected = connection.execute(
            f"SELECT {_COLUMNS} FROM uploads WHERE record_id = ? AND state IN ('pending', 'committing')"
            " ORDER BY path",
            found,
        ).fetchall()
    return [UploadRow(*row) for row in selected]


def _like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "/%"


def next_due(store: RecordStore, remote_prefix: str) -> float | None:
    row = (
        store._connection()
        .execute(
            "SELECT MIN(next_attempt_at) FROM uploads WHERE state IN ('pending', 'committing')"
            " AND remote LIKE ? ESCAPE '\\'",
            (_like_prefix(remote_prefix),),
        )
        .fetchone()
    )
    return None if row is None or row[0] is None else float(row[0])


def open_count(store: RecordStore, remote_prefix: str | None = None) -> int:
    """How many files are still to upload (under ``remote_prefix``, or anywhere)."""
    query, params = "SELECT COUNT(*) FROM uploads WHERE state IN ('pending', 'committing')", []
    if remote_prefix is not None:
        query, params = query + " AND remote LIKE ? ESCAPE '\\'", [_like_prefix(remote_prefix)]
    return int(store._connection().execute(query, params).fetchone()[0])


def update(store: RecordStore, row: UploadRow, owner: str, **changes: object) -> None:
    """Set columns of one row and renew the claim on its record."""
    now = time.time()
    assignments = ", ".join(f"{column} = ?" for column in changes)
    with store._transaction(durable=False) as connection:
        connection.execute(
            f"UPDATE uploads SET {assignments}, updated_at = ? WHERE record_id = ? AND path = ?",
            (*changes.values(), now, row.record_id, row.path),
        )
        connection.execute(
            "UPDATE uploads SET claimed_until = ? WHERE record_id = ? AND claimed_by = ?",
            (now + LEASE_SECONDS, row.record_id, owner),
        )


def release(store: RecordStore, owner: str | None = None) -> None:
    """Drop the claims of ``owner``, or of every owner of this host that is no longer running."""
    with store._transaction(durable=False) as connection:
        owners = (
            [owner]
            if owner is not None
            else [
                name
                for (name,) in connection.execute(
                    "SELECT DISTINCT claimed_by FROM uploads WHERE claimed_by IS NOT NULL"
                )
                if not owner_is_alive(name)
            ]
        )
        connection.executemany(
            "UPDATE uploads SET claimed_by = NULL, claimed_until = NULL WHERE claimed_by = ?",
            [(name,) for name in owners],
        )


def due_now(store: RecordStore, retry_failed: bool = False) -> int:
    """Make the files still to send due now, skipping their backoff (the user is asking for them), and
    with ``retry_failed`` the failed ones pending again (after the cause was fixed); how many failed."""
    with store._transaction(durable=False) as connection:
        connection.execute(
            "UPDATE uploads SET next_attempt_at = ? WHERE state IN ('pending', 'committing')", (time.time(),)
        )
        if not retry_failed:
            return 0
        return int(
            connection.execute(
                "UPDATE uploads SET state = 'pending', error = NULL, next_attempt_at = ? WHERE state = 'failed'",
                (time.time(),),
            ).rowcount
        )


def unrevised(store: RecordStore, remote_prefix: str) -> list[str]:
    """Records whose files under ``remote_prefix`` are all settled but whose record says nothing of it:
    a process killed between the last file and the record's revision, or a revision lost to a
    concurrent update of the record (rotation)."""
    query = (
        "SELECT DISTINCT u.record_id FROM uploads u JOIN records r ON r.id = u.record_id"
        " WHERE u.remote LIKE ? ESCAPE '\\' AND json_extract(r.body, '$.status.upload') IS NULL"
        " AND NOT EXISTS (SELECT 1 FROM uploads o WHERE o.record_id = u.record_id"
        " AND o.state IN ('pending', 'committing'))"
    )
    return [record_id for (record_id,) in store._connection().execute(query, (_like_prefix(remote_prefix),))]


def rotated_away(store: RecordStore, remote_prefix: str) -> list[str]:
    """Records with files under ``remote_prefix`` not yet removed, that are ``deleted`` locally and not best."""
    query = (
        "SELECT DISTINCT u.record_id FROM uploads u JOIN records r ON r.id = u.record_id"
        " WHERE u.state != 'removed' AND u.remote LIKE ? ESCAPE '\\'"
        " AND json_extract(r.body, '$.status.status') = 'deleted'"
        " AND COALESCE(json_extract(r.body, '$.status.metadata.best'), 0) = 0"
    )
    return [record_id for (record_id,) in store._connection().execute(query, (_like_prefix(remote_prefix),))]
