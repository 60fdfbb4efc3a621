"""Uploading checkpoints to object storage (any fsspec URL) in the background, with checksums and verify.

Optional: fsspec and its backends are the ``storage`` extra, imported only when storage is configured.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..record import CheckpointRecord, UploadStatus
from ..store import RecordStore
from .config import StorageConfig, storage_config
from .progress import describe, remote_of, upload_status
from .uploads import Uploads

__all__ = [
    "StorageConfig",
    "Uploads",
    "live_upload_status",
    "live_upload_statuses",
    "storage_config",
    "upload_state",
]


def live_upload_statuses(
    store: RecordStore, records: Sequence[CheckpointRecord]
) -> dict[str, UploadStatus | None]:
    """Where each record's upload stands now, by record id: from the queue while it runs, else what the
    record says (None without storage); one query for them all (a page, a list)."""
    files = store.uploads.rows_of([record.id for record in records])
    return {
        record.id: upload_status(rows, remote_of(rows))
        if (rows := files[record.id])
        else record.status.upload
        for record in records
    }


def live_upload_status(store: RecordStore, record: CheckpointRecord) -> UploadStatus | None:
    return live_upload_statuses(store, [record])[record.id]


def upload_state(store: RecordStore, record: CheckpointRecord) -> str | None:
    """The upload state in words for ``list``/``inspect`` (``uploading 43%``), None without storage."""
    status = live_upload_status(store, record)
    return None if status is None else describe(status)
