"""Uploading checkpoints to object storage (any fsspec URL) in the background, with checksums and verify.

Optional: fsspec and its backends are the ``storage`` extra, imported only when storage is configured.
"""

from __future__ import annotations

from ..record import CheckpointRecord, UploadStatus
from ..store import RecordStore
from .config import StorageConfig, storage_config
from .progress import describe, remote_of, upload_status
from .uploads import Uploads

__all__ = ["StorageConfig", "Uploads", "live_upload_status", "storage_config", "upload_state"]


def live_upload_status(store: RecordStore, record: CheckpointRecord) -> UploadStatus | None:
    """Where the record's upload stands now: from the queue while it runs, else what the record says."""
    files = store.uploads.rows(record.id)
    if not files:
        return record.status.upload
    return upload_status(files, remote_of(files))


def upload_state(store: RecordStore, record: CheckpointRecord) -> str | None:
    """The upload state in words for ``list``/``inspect`` (``uploading 43%``), None without storage."""
    status = live_upload_status(store, record)
    return None if status is None else describe(status)
