"""A job's log in the store: every logged entry, written at each save with the new ones only, read back
downsampled for a job document or a chart, and delivered in pages (:mod:`...series`).

Each write raises the revision of every page of the log whose entries it changed, and queues that
revision for the log's sinks in the same transaction, as a record's revision is; the registry server
stores a page it receives only when it is newer than the one it holds (:func:`.pages.receive_page`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ..history import LogEntry, downsample
from ..series import LOG_PAGE_SIZE, log_page_id, page_of
from ..validation import bounded
from .database import Database, marks
from .dialect import Connection
from .outbox import queue_deliveries
from .pages import ENTRY_COLUMNS, insert_entries, next_page_revision


class JobLog(Database):
    """The ``log_entries`` table (a job's logged entries by position) and its pages (``log_pages``)."""

    def append_log(
        self,
        job_id: str,
        entries: Sequence[LogEntry],
        *,
        end: int | None = None,
        sinks: Sequence[str] = (),
        durable: bool = False,
    ) -> None:
        """Write logged entries of ``job_id`` at their positions (the new ones since the last save); with
        ``end``, forget those from position ``end`` on (a resumed run logs them again)."""
        if entries or end is not None:
            self.write_log(job_id, entries, first=0, count=end, sinks=sinks, durable=durable)

    def write_log(
        self,
        job_id: str,
        entries: Sequence[LogEntry],
        first: int | None,
        before_step: int | None = None,
        count: int | None = None,
        sinks: Sequence[str] = (),
        durable: bool = False,
    ) -> None:
        """Write a save's log entries (their ``seq`` counted from ``first``) and, with ``count``, forget
        those from ``first + count`` on (a resumed run logs them again from its checkpoint). ``first``
        None: after the job's entries of steps before ``before_step`` (a loop's save), as the log stands
        when the write lands: on a full disk it waits in memory behind the saves before it. Each page that
        changed gets its next revision, queued for ``sinks``.

        An entry written again as it was changes nothing: a resumed run hands over its whole restored log
        without the times it was first logged at, and those times are kept.
        """

        def write() -> None:
            with self.transaction(durable) as connection:
                start = _log_length(connection, job_id, before_step) if first is None else first
                placed = [replace(entry, seq=start + entry.seq) for entry in entries] if start else entries
                changed = _write_entries(connection, job_id, placed)
                if count is not None:
                    changed |= _forget_from(connection, job_id, start + count)
                for page in sorted(changed):
                    revision = next_page_revision(connection, job_id, page)
                    queue_deliveries(connection, sinks, log_page_id(job_id, page), revision, "log")

        self.write(write, None)

    def log_times(self, job_id: str, start: int, stop: int) -> dict[int, tuple[int, float]]:
        """When the stored entries at positions ``start`` to ``stop - 1`` were logged (those whose time is
        known), with their step: a resumed run hands over entries logged before the crash again, untimed."""
        rows = self.read().execute(
            "SELECT seq, step, logged_at FROM log_entries"
            " WHERE job_id = ? AND seq >= ? AND seq < ? AND logged_at IS NOT NULL",
            (job_id, start, stop),
        )
        return {seq: (step, logged_at) for seq, step, logged_at in rows}

    def log_series(
        self, job_id: str, max_points: int | None = None, having: str | None = None
    ) -> list[dict[str, Any]]:
        """The job's logged entries, oldest first, each with ``step`` (and ``logged_at``, Unix seconds,
        when known); at most ``max_points`` of them, chosen by :func:`~..history.downsample` on the
        training loss (the eval loss when no training loss was logged), keeping the checkpoints' steps.
        ``having`` (``"loss"`` or ``"eval_loss"``) keeps only entries with that finite loss."""
        if having not in (None, "loss", "eval_loss"):
            raise ValueError(f"having={having!r}: use 'loss', 'eval_loss' or None")
        connection = self.read()
        where = "job_id = ?" + (f" AND {having} IS NOT NULL" if having else "")
        rows = connection.execute(
            f"SELECT seq, step, COALESCE(loss, eval_loss) FROM log_entries WHERE {where} ORDER BY seq",
            (job_id,),
        ).fetchall()
        checkpoints = [
            step for (step,) in connection.execute("SELECT step FROM records WHERE job_id = ?", (job_id,))
        ]
        chosen = downsample([row[1] for row in rows], [row[2] for row in rows], max_points, checkpoints)
        wanted = [rows[index][0] for index in chosen]
        series = []
        for start in range(0, len(wanted), 500):  # SQLite's limit on bound parameters
            part = wanted[start : start + 500]
            series += connection.execute(
                f"SELECT body, logged_at, step FROM log_entries WHERE job_id = ? AND seq IN ({marks(part)})"
                " ORDER BY seq",
                (job_id, *part),
            ).fetchall()
        return [_logged(body, logged_at, step) for body, logged_at, step in series]

    def log_length(self, job_id: str, before_step: int | None = None) -> int:
        """The position after the job's last stored entry (of a step before ``before_step``, if given)."""
        return _log_length(self.read(), job_id, before_step)

    def log_version(self, job_id: str) -> tuple[int, int]:
        """What changes whenever the job's log does (its pages and the sum of their revisions, which
        only grow), written here or received: a chart drawn from the log is stale once it differs."""
        row = (
            self.read()
            .execute("SELECT COUNT(*), COALESCE(SUM(revision), 0) FROM log_pages WHERE job_id = ?", (job_id,))
            .fetchone()
        )
        return int(row[0]), int(row[1])


def _write_entries(connection: Connection, job_id: str, entries: Sequence[LogEntry]) -> set[int]:
    """Write the entries that differ from those stored at their positions; the pages they are on."""
    if not entries:
        return set()
    positions = [entry.seq for entry in entries]
    stored = {
        seq: (step, logged_at, body)
        for seq, step, logged_at, body in connection.execute(
            f"SELECT {ENTRY_COLUMNS} FROM log_entries WHERE job_id = ? AND seq BETWEEN ? AND ?",
            (job_id, min(positions), max(positions)),
        )
    }
    changed = []
    for entry in entries:
        before = stored.get(entry.seq)
        same = before is not None and before[0] == entry.step and before[2] == entry.body()
        if same and entry.logged_at is None:
            continue  # logged again as it was, without its time: the stored time stays
        if same and before is not None and before[1] == entry.logged_at:
            continue
        changed.append(entry)
    insert_entries(connection, job_id, changed)
    return {page_of(entry.seq) for entry in changed}


def _forget_from(connection: Connection, job_id: str, end: int) -> set[int]:
    """Delete the entries from position ``end`` on; the pages they were on."""
    pages = connection.execute(
        "SELECT DISTINCT seq / ? FROM log_entries WHERE job_id = ? AND seq >= ?", (LOG_PAGE_SIZE, job_id, end)
    ).fetchall()
    connection.execute("DELETE FROM log_entries WHERE job_id = ? AND seq >= ?", (job_id, end))
    return {int(page) for (page,) in pages}


def _log_length(connection: Connection, job_id: str, before_step: int | None) -> int:
    query = "SELECT MAX(seq) FROM log_entries WHERE job_id = ?"
    params: list[Any] = [job_id]
    if before_step is not None:
        query, params = query + " AND step < ?", [job_id, before_step]
    row = connection.execute(query, params).fetchone()
    return 0 if row is None or row[0] is None else int(row[0]) + 1


def _logged(body: str, logged_at: float | None, step: int) -> dict[str, Any]:
    """A stored entry as a chart gets it; one an older release stored with what no reader takes (text
    that is not valid Unicode, deep nesting) escaped or cut, one that is not JSON with its step only."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        data = None
    entry: dict[str, Any] = bounded(data) if isinstance(data, dict) else {"step": step}
    if logged_at is not None:
        entry["logged_at"] = logged_at
    return entry
