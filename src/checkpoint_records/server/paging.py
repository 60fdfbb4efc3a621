"""Pages of checkpoint records, newest first (highest step), for every list route that pages them.

A page is fetched one record longer than asked, so ``has_more`` costs no count of the job's records.
"""

from __future__ import annotations

from ..record import CheckpointRecord
from ..store import RecordStore


def newest_first_page(
    store: RecordStore,
    job_id: str | None,
    limit: int,
    after: CheckpointRecord | None = None,
    available_only: bool = False,
) -> tuple[list[CheckpointRecord], bool]:
    """Up to ``limit`` records of ``job_id`` (every job's when None) that follow ``after``, and whether
    more follow them; ``available_only``: only checkpoints whose files are there."""
    page = [stored.record for stored in store.records_newest_first(job_id, limit + 1, after, available_only)]
    return page[:limit], len(page) > limit
