"""A checkpoint's upload state from its queued files, in the record and in words: pure functions."""

from __future__ import annotations

from collections.abc import Sequence

from ..record import CheckpointRecord, UploadStatus
from ..store import UploadRow


def remote_of(files: Sequence[UploadRow]) -> str:
    """Where a checkpoint's files are uploaded: the remote folder of its rows (at least one)."""
    return files[0].remote[: -len(files[0].path) - 1]


def upload_status(files: Sequence[UploadRow], remote: str) -> UploadStatus:
    """Where the upload of one checkpoint stands, from its rows in the queue."""
    states = {row.state for row in files}
    total = sum(row.size for row in files)
    done = sum(row.size if row.state in ("uploaded", "removed") else row.sent for row in files)
    progress = 1.0 if not total else min(done / total, 1.0)
    if states == {"removed"}:
        return UploadStatus(state="deleted", progress=progress, remote=remote)
    if states <= {"uploaded", "removed"}:
        return UploadStatus(state="uploaded", progress=1.0, remote=remote)
    errors = sorted({f"{row.path}: {row.error}" for row in files if row.error})
    if "pending" not in states and "committing" not in states:
        return UploadStatus(state="failed", progress=progress, error="; ".join(errors), remote=remote)
    started = any(row.sent or row.state != "pending" for row in files)
    return UploadStatus(
        state="uploading" if started else "pending",
        progress=progress,
        error="; ".join(errors) or None,
        remote=remote,
    )


def describe(status: UploadStatus) -> str:
    """``pending``, ``uploading 43%``, ``uploaded``, ``failed: why`` (and the last error while retrying)."""
    if status.state == "uploading":
        text = f"uploading {int(status.progress * 100)}%"
    elif status.state == "deleted":
        text = "deleted remotely (mirror retention)"
    else:
        text = status.state
    if status.error:
        text += f": {status.error}" if status.state == "failed" else f" (retrying: {status.error})"
    return text


def with_upload(
    record: CheckpointRecord,
    status: UploadStatus,
    files: Sequence[UploadRow],
    provider: str,
    provider_id: str,
    now: str,
) -> CheckpointRecord:
    """The record's next revision: its files' hashes, the upload state and, once uploaded, where it lives.

    A checkpoint removed remotely (``mirror``) no longer names a storage location.
    """
    hashes = {row.path: row.sha256 for row in files if row.sha256 and row.state in ("uploaded", "removed")}
    entries = [
        entry.model_copy(update={"sha256": hashes.get(entry.path, entry.sha256)})
        for entry in record.status.files
    ]
    located = status.state == "uploaded"
    spec = record.spec.model_copy(
        update={
            "storage_provider": provider if located else "",
            "source_path": status.remote or "" if located else "",
        }
    )
    updated = record.status.model_copy(
        update={
            "files": entries,
            "upload": status,
            "storage_provider_id": provider_id if located else "",
            "updated_at": now,
        }
    )
    return record.model_copy(update={"spec": spec, "status": updated})
