"""A job's log in the store: every logged entry, appended at each save with the new ones only, read back
downsampled for a job document or a chart."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..history import LogEntry, downsample
from .database import Database, marks


class JobLog(Database):
    """The ``log_entries`` table: a job's logged entries by position."""

    def append_log(self, job_id: str, entries: Sequence[LogEntry], durable: bool = False) -> None:
        """Add (or replace, by position) logged entries of ``job_id``: the new ones since the last save."""
        if not entries:
            return
        with self.transaction(durable) as connection:
            connection.executemany(
                "INSERT OR REPLACE INTO log_entries (job_id, seq, step, loss, eval_loss, logged_at, body)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(job_id, e.seq, e.step, e.loss, e.eval_loss, e.logged_at, e.body()) for e in entries],
            )

    def log_times(self, job_id: str, start: int, stop: int) -> dict[int, tuple[int, float]]:
        """When the stored entries at positions ``start`` to ``stop - 1`` were logged (those whose time is
        known), with their step: a resumed run hands over entries logged before the crash again, untimed."""
        rows = self.read().execute(
            "SELECT seq, step, logged_at FROM log_entries"
            " WHERE job_id = ? AND seq >= ? AND seq < ? AND logged_at IS NOT NULL",
            (job_id, start, stop),
        )
        return {seq: (step, logged_at) for seq, step, logged_at in rows}

    def truncate_log(self, job_id: str, keep: int) -> None:
        """Forget entries from position ``keep`` on: a resumed run logs them again from its checkpoint."""
        with self.transaction(durable=False) as connection:
            connection.execute("DELETE FROM log_entries WHERE job_id = ? AND seq >= ?", (job_id, keep))

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
                f"SELECT body, logged_at FROM log_entries WHERE job_id = ? AND seq IN ({marks(part)})"
                " ORDER BY seq",
                (job_id, *part),
            ).fetchall()
        return [_logged(body, logged_at) for body, logged_at in series]

    def log_length(self, job_id: str, before_step: int | None = None) -> int:
        """The position after the job's last stored entry (of a step before ``before_step``, if given)."""
        query = "SELECT MAX(seq) FROM log_entries WHERE job_id = ?"
        params: list[Any] = [job_id]
        if before_step is not None:
            query, params = query + " AND step < ?", [job_id, before_step]
        row = self.read().execute(query, params).fetchone()
        return 0 if row is None or row[0] is None else int(row[0]) + 1


def _logged(body: str, logged_at: float | None) -> dict[str, Any]:
    entry: dict[str, Any] = json.loads(body)
    if logged_at is not None:
        entry["logged_at"] = logged_at
    return entry
