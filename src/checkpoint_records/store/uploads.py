"""The durable upload queue: one row per file of a checkpoint in the ``uploads`` table.

A row is ``pending`` until its file is sent, ``committing`` while the finished upload is being made
visible (its SHA-256 already known, so a process killed at that moment does not send it again when the
remote copy is there with the right size), then ``uploaded``; ``failed`` when it cannot be sent
(credentials, a file gone before it was staged); ``removed`` once ``mirror`` retention deleted it.
Writes are short, not fsynced (they survive a crash of the process, which is what resuming needs), and
claimed per record within a destination (:class:`~.leases.LeaseQueue`), so two processes never upload
the same file. A row's last state is written in the transaction that revises its record (:meth:`settle`):
a process killed before leaves it open, and the next one settles it, record and all.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..record import CheckpointRecord
from .dialect import Connection
from .documents import StoredRecord, revise
from .leases import LeaseQueue

RowState = Literal["pending", "committing", "uploaded", "failed", "removed"]
#: Rows still to send.
OPEN: tuple[RowState, ...] = ("pending", "committing")

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


#: A record's revision from its files' rows, once none is open.
Revise = Callable[[CheckpointRecord, Sequence[UploadRow]], CheckpointRecord]


class UploadQueue(LeaseQueue):
    """The checkpoints' files to upload; its lease scope is one destination (a remote URL prefix)."""

    table = "uploads"
    open_states = OPEN

    def scope(self, key: str) -> tuple[str, tuple[Any, ...]]:
        return "remote LIKE ? ESCAPE '\\'", (_like_prefix(key),)

    def enqueue(self, record: CheckpointRecord, remote_dir: str, staging: str, durable: bool = False) -> None:
        """Queue every file of ``record``; a file already queued keeps its state unless its size changed."""
        self.database.write(lambda: self._enqueue(record, remote_dir, staging, durable), None)

    def _enqueue(self, record: CheckpointRecord, remote_dir: str, staging: str, durable: bool) -> None:
        now = time.time()
        with self.database.transaction(durable) as connection:
            connection.executemany(
                f"INSERT INTO uploads ({_COLUMNS}, updated_at)"
                " VALUES (?, ?, ?, NULL, 'pending', 0, NULL, ?, ?, ?, 0, ?, ?)"
                " ON CONFLICT(record_id, path) DO UPDATE SET size = excluded.size, sha256 = NULL,"
                " state = 'pending', attempts = 0, error = NULL, sent = 0,"
                " next_attempt_at = excluded.next_attempt_at, source = excluded.source,"
                " staging = excluded.staging, updated_at = excluded.updated_at"
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

    def rows(self, record_id: str) -> list[UploadRow]:
        query = f"SELECT {_COLUMNS} FROM uploads WHERE record_id = ? ORDER BY path"
        return [UploadRow(*row) for row in self.database.read().execute(query, (record_id,))]

    def rows_of(self, record_ids: Sequence[str]) -> dict[str, list[UploadRow]]:
        """The rows of each of ``record_ids`` (by path), in one query: a page of checkpoints."""
        found: dict[str, list[UploadRow]] = {record_id: [] for record_id in record_ids}
        query = (
            f"SELECT {_COLUMNS} FROM uploads WHERE record_id IN ({self.database.dialect.listed()})"
            " ORDER BY record_id, path"
        )
        for row in self.database.read().execute(query, (json.dumps(list(record_ids)),)):
            found[row[0]].append(UploadRow(*row))
        return found

    def failed(self) -> list[UploadRow]:
        query = f"SELECT {_COLUMNS} FROM uploads WHERE state = 'failed' ORDER BY record_id, path"
        return [UploadRow(*row) for row in self.database.read().execute(query)]

    def claim_next(self, owner: str, remote_prefix: str, lease_seconds: float) -> list[UploadRow]:
        """Claim the open rows of the oldest record that has a due one under ``remote_prefix``; [] if none."""
        due, params = self._due_and_free(remote_prefix, owner)
        with self.database.transaction(durable=False) as connection:
            found = connection.execute(
                f"SELECT record_id FROM uploads WHERE {due} ORDER BY next_attempt_at, updated_at LIMIT 1",
                params,
            ).fetchone()
            if found is None:
                return []
            self._take(connection, remote_prefix, owner, time.time() + lease_seconds, [found[0]])
            selected = connection.execute(
                f"SELECT {_COLUMNS} FROM uploads WHERE record_id = ? AND {self._open} ORDER BY path", found
            ).fetchall()
        return [UploadRow(*row) for row in selected]

    def open_count(self, remote_prefix: str | None = None) -> int:
        """How many files are still to upload (under ``remote_prefix``, or anywhere)."""
        query, params = f"SELECT COUNT(*) FROM uploads WHERE {self._open}", ()
        if remote_prefix is not None:
            where, params = self.scope(remote_prefix)
            query += f" AND {where}"
        return int(self.database.read().execute(query, params).fetchone()[0])

    def update(self, row: UploadRow, **changes: object) -> None:
        """Set columns of one row (its progress, or its state while it stays open)."""

        def write() -> None:
            with self.database.transaction(durable=False) as connection:
                _change(connection, row.record_id, row.path, changes)

        self.database.write(write, None)

    def settle(
        self,
        record_id: str,
        outcomes: Mapping[str, Mapping[str, object]],
        change: Revise,
        sinks: Sequence[str],
    ) -> tuple[list[UploadRow], StoredRecord | None]:
        """Write the last state of the record's files (``outcomes``: columns by path) and, once none is
        open, the record's revision by ``change`` (queued for ``sinks``), in one durable transaction;
        the record's rows, and its new revision if one was written."""

        def write() -> tuple[list[UploadRow], StoredRecord | None]:
            with self.database.transaction() as connection:
                for path, columns in outcomes.items():
                    _change(connection, record_id, path, columns)
                files = [
                    UploadRow(*row)
                    for row in connection.execute(
                        f"SELECT {_COLUMNS} FROM uploads WHERE record_id = ? ORDER BY path", (record_id,)
                    )
                ]
                if not files or any(row.state in OPEN for row in files):
                    return files, None
                return files, revise(connection, record_id, lambda record: change(record, files), sinks)

        kept: tuple[list[UploadRow], StoredRecord | None] = ([], None)  # while the disk is full
        return self.database.write(write, kept)

    def due_now(self, retry_failed: bool = False) -> int:
        """Make the files still to send due now, skipping their backoff (the user is asking for them), and
        with ``retry_failed`` the failed ones pending again (after the cause was fixed); how many failed."""

        def write() -> int:
            now = time.time()
            with self.database.transaction(durable=False) as connection:
                connection.execute(f"UPDATE uploads SET next_attempt_at = ? WHERE {self._open}", (now,))
                if not retry_failed:
                    return 0
                return int(
                    connection.execute(
                        "UPDATE uploads SET state = 'pending', error = NULL, next_attempt_at = ?"
                        " WHERE state = 'failed'",
                        (now,),
                    ).rowcount
                )

        return self.database.write(write, 0)

    def rotated_away(self, remote_prefix: str) -> list[str]:
        """Records with files under ``remote_prefix`` not yet removed, ``deleted`` locally and not best."""
        under, params = self.scope(remote_prefix)
        dialect = self.database.dialect
        query = (
            "SELECT DISTINCT u.record_id FROM uploads u JOIN records r ON r.id = u.record_id"
            f" WHERE u.state != 'removed' AND {under}"
            f" AND {dialect.json_text('r.body', '$.status.status')} = 'deleted'"
            f" AND COALESCE({dialect.json_true('r.body', '$.status.metadata.best')}, FALSE) = FALSE"
        )
        rows = self.database.read().execute(query, params)
        return [record_id for (record_id,) in rows]


def _change(connection: Connection, record_id: str, path: str, changes: Mapping[str, object]) -> None:
    assignments = ", ".join(f"{column} = ?" for column in changes)
    connection.execute(
        f"UPDATE uploads SET {assignments}, updated_at = ? WHERE record_id = ? AND path = ?",
        (*changes.values(), time.time(), record_id, path),
    )


def _like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "/%"
