"""A log's pages in SQL: read one as a sink is sent it, raise one's revision, store one received.

Apart from :mod:`.log` so that the outbox, which sends pages, and the registry's receiving side use them
without importing what queues deliveries.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ..history import LogEntry
from ..series import LOG_PAGE_SIZE, LogPage, log_page_id, page_document, page_entries
from .dialect import Connection

#: How the store reads a log entry for a page: position, step, time, values (JSON).
ENTRY_COLUMNS = "seq, step, logged_at, body"
#: A log entry's columns, as it is written.
_LOG_COLUMNS = ("job_id", "seq", "step", "loss", "eval_loss", "logged_at", "body")


def stored_page(connection: Connection, page_id: str) -> dict[str, Any] | None:
    """The page ``page_id`` at its stored revision, with its entries as the store holds them now."""
    row = connection.execute(
        "SELECT job_id, page, revision FROM log_pages WHERE id = ?", (page_id,)
    ).fetchone()
    if row is None:
        return None
    job_id, page, revision = row
    entries = connection.execute(
        f"SELECT {ENTRY_COLUMNS} FROM log_entries WHERE job_id = ? AND seq >= ? AND seq < ? ORDER BY seq",
        (job_id, page * LOG_PAGE_SIZE, (page + 1) * LOG_PAGE_SIZE),
    )
    return page_document(job_id, page, revision, entries)


def receive_page(connection: Connection, page: LogPage) -> tuple[int, bool]:
    """Within the caller's write transaction: store a page another process sent, replacing the entries at
    its positions, when it is newer than the one held. The revision the store holds then, and whether it
    is this one (False: it held this revision or a newer one already, and nothing changed)."""
    held = connection.execute("SELECT revision FROM log_pages WHERE id = ?", (page.id,)).fetchone()
    if held is not None and int(held[0]) >= page.revision:
        return int(held[0]), False
    start = page.page * LOG_PAGE_SIZE
    connection.execute(
        "DELETE FROM log_entries WHERE job_id = ? AND seq >= ? AND seq < ?",
        (page.job_id, start, start + LOG_PAGE_SIZE),
    )
    insert_entries(connection, page.job_id, page_entries(page))
    connection.execute(
        connection.dialect.replace_into(
            "log_pages", ("id", "job_id", "page", "revision", "updated_at"), ("id",)
        ),
        (page.id, page.job_id, page.page, page.revision, time.time()),
    )
    return page.revision, True


def insert_entries(connection: Connection, job_id: str, entries: Sequence[LogEntry]) -> None:
    connection.executemany(
        connection.dialect.replace_into("log_entries", _LOG_COLUMNS, ("job_id", "seq")),
        [(job_id, e.seq, e.step, e.loss, e.eval_loss, e.logged_at, e.body()) for e in entries],
    )


def next_page_revision(connection: Connection, job_id: str, page: int) -> int:
    """Raise the revision of page ``page`` of ``job_id``'s log (1 for a new page); the new revision."""
    row = connection.execute(
        "INSERT INTO log_pages (id, job_id, page, revision, updated_at) VALUES (?, ?, ?, 1, ?)"
        " ON CONFLICT (id) DO UPDATE SET revision = log_pages.revision + 1, updated_at = excluded.updated_at"
        " RETURNING revision",
        (log_page_id(job_id, page), job_id, page, time.time()),
    ).fetchone()
    return int(row[0])
