"""A job's log in the store: every logged entry, appended at each save with the new ones only, read back
downsampled for a job document or a chart."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..history import LogEntry, downsample
from ..validation import bounded
from .database import Database, marks
from .dialect import Connection

_LOG_COLUMNS = ("job_id", "seq", "step", "loss", "eval_loss", "logged_at", "body")


class JobLog(Database):
    """The ``log_entries`` table: a job's logged entries by position."""

    def append_log(self, job_id: str, entries: Sequence[LogEntry], durable: bool = False) -> None:
        """Add (or replace, by position) logged entries of ``job_id``: the new ones since the last save."""
        if entries:
            self.write_log(job_id, entries, first=0, durable=durable)

    def write_log(
        self,
        job_id: str,
        entries: Sequence[LogEntry],
        first: int | None,
        before_step: int | None = None,
        count: int | None = None,
        durable: bool = False,
    ) -> None:
        """Write a save's log entries (their ``seq`` counted from ``first``) and, with ``count``, forget
        those from ``first + count`` on (a resumed run logs them again from its checkpoint). ``first``
        None: after the job's entries of steps before ``before_step`` (a loop's save), as the log stands
        when the write lands: on a full disk it waits in memory behind the saves before it."""

        def write() -> None:
            with self.transaction(durable) as connection:
                start = _log_length(connection, job_id, before_step) if first is None else first
                connection.executemany(
                    connection.dialect.replace_into("log_entries", _LOG_COLUMNS, ("job_id", "seq")),
                    [
                        (job_id, start + e.seq, e.step, e.loss, e.eval_loss, e.logged_at, e.body())
                        for e in entries
                    ],
                )
                if count is not None:
                    connection.execute(
                        "DELETE FROM log_entries WHERE job_id = ? AND seq >= ?", (job_id, start + count)
                    )

        self.write(write, None)

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
