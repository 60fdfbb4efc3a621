"""Uploading checkpoints in the background: queued at save time, sent by a lane of their own.

:meth:`Uploads.enqueue` is all the training thread does: hard links into staging and one short
transaction. The lane (a daemon thread; its own, so a slow upload never delays a record's delivery)
claims a record's files, copies those that could not be linked, sends up to ``parallel`` files at once
(each in ``part_size`` parts, hashed on the way), and when every file is there stores the record's next
revision (hashes, ``spec.sourcePath``, ``status.upload``) and wakes delivery so the sinks get it. An
endpoint that is down is retried with backoff; refused credentials or a file gone before it was staged
mark the file failed, and the record says why. Everything is resumed, file by
file, by the next process that uses the same store and storage.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from ..delivery import backoff
from ..logs import logger, warn_once
from ..record import CheckpointRecord, utc_now_iso
from ..store import RecordStore, claim_owner
from . import queue, staging, transfer
from .config import StorageConfig
from .progress import upload_status, with_upload
from .queue import UploadRow

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

IDLE_POLL = 1.0
WAKE_DELAY = 0.05
#: Errors retrying cannot fix: refused credentials. Anything else (endpoint down, a bucket not created
#: yet, a throttled request) is retried with backoff, its cause shown in the upload state meanwhile.
PERMANENT_ERRORS = (PermissionError,)


def error_text(error: BaseException, config: StorageConfig) -> str:
    """Why an upload failed, in words, without secrets."""
    text = f"{type(error).__name__}: {error}"
    if isinstance(error, PermissionError):
        text = (
            f"access denied by {config.public}: check the credentials (AWS_ACCESS_KEY_ID/AWS_PROFILE, "
            f"storage_options) and the bucket's permissions ({text})"
        )
    return config.redact(text)


class _Lane(threading.Thread):
    """Uploads the queued files under one destination, one record at a time."""

    def __init__(self, uploads: Uploads, config: StorageConfig) -> None:
        super().__init__(name=f"checkpoint-records upload {config.public}", daemon=True)
        self.uploads, self.config, self.store = uploads, config, uploads.store
        self.owner = claim_owner()
        self.wakeup = threading.Event()
        self.stopping = threading.Event()
        #: True while a claimed record is being uploaded and settled.
        self.busy = False

    def run(self) -> None:
        queue.release(self.store)  # claims of processes that died mid-upload
        try:
            while not self.stopping.is_set() and _interpreter_running():
                try:
                    worked = self._once()
                except Exception as error:  # a store or file system hiccup must not end uploading
                    if not _interpreter_running():
                        break  # exiting: what is left resumes with the next run
                    warn_once(
                        f"upload-lane:{type(error).__name__}",
                        "checkpoint-records: the upload lane hit %s: %s; it goes on",
                        type(error).__name__,
                        self.config.redact(str(error)),
                    )
                    worked = False
                finally:
                    self.busy = False
                    self.uploads.settled.set()
                if not worked:
                    due = queue.next_due(self.store, self.config.public)
                    if self.wakeup.wait(
                        IDLE_POLL if due is None else min(IDLE_POLL, max(due - time.time(), 0.01))
                    ):
                        # Woken by a save: let it return before competing with it for the GIL.
                        self.stopping.wait(WAKE_DELAY)
                    self.wakeup.clear()
        finally:
            queue.release(self.store, self.owner)
            self.store.close()

    def _once(self) -> bool:
        """Apply mirror retention, then upload the next due record (or revise the records left without
        their upload state); whether there was a record to upload."""
        self.busy = True
        if self.config.retention == "mirror":
            self._mirror_rotations()
        claimed = queue.claim_next(self.store, self.owner, self.config.public)
        if claimed:
            self._upload(claimed)
        else:
            for record_id in queue.unrevised(self.store, self.config.public):
                self._settle(record_id)
        return bool(claimed)

    # -- one record ----------------------------------------------------------------------------------

    def _upload(self, claimed: list[UploadRow]) -> None:
        fs, root = self.config.filesystem()
        record_id = claimed[0].record_id
        source, stage = Path(claimed[0].source), Path(claimed[0].staging)
        ready = []
        for row in claimed:  # stage every file before sending any: copies shrink rotation's window
            if row.state == "committing" or staging.copy_missing(source, stage, row.path) is not None:
                ready.append(row)
            else:
                queue.update(
                    self.store,
                    row,
                    self.owner,
                    state="failed",
                    attempts=row.attempts + 1,
                    error="deleted locally (rotated away?) before it could be staged for upload",
                )
        with ThreadPoolExecutor(self.config.parallel, thread_name_prefix="checkpoint-records-part") as pool:
            list(pool.map(lambda row: self._upload_file(fs, root, stage, row), ready))
        self._settle(record_id)

    def _upload_file(self, fs: AbstractFileSystem, root: str, stage: Path, row: UploadRow) -> None:
        target = root + row.remote[len(self.config.public) :]
        try:
            if row.state == "committing" and row.sha256 and _remote_size(fs, target) == row.size:
                # Sent and committed by a process that died before noting it: not sent again.
                queue.update(self.store, row, self.owner, state="uploaded", error=None)
                return
            sha256, handle = transfer.send(
                fs,
                stage / row.path,
                target,
                self.config.part_size,
                lambda sent: queue.update(self.store, row, self.owner, sent=sent),
                self.config.parallel,
            )
            queue.update(self.store, row, self.owner, state="committing", sha256=sha256)
            try:
                handle.commit()
            except BaseException:
                transfer.discard(handle)
                raise
            size = _remote_size(fs, target)
            if size != row.size:
                raise OSError(f"the uploaded copy has {size} bytes, the checkpoint's file {row.size}")
            queue.update(self.store, row, self.owner, state="uploaded", error=None)
        except Exception as error:
            if not _interpreter_running():
                return  # cut short by the exit: the row stays open and resumes with the next run
            text = error_text(error, self.config)
            attempts = row.attempts + 1
            if isinstance(error, PERMANENT_ERRORS):
                queue.update(
                    self.store, row, self.owner, state="failed", attempts=attempts, error=text, sent=0
                )
                logger.warning("checkpoint-records: could not upload %s: %s", row.remote, text)
            else:
                warn_once(
                    f"upload-retry:{type(error).__name__}",
                    "checkpoint-records: upload to %s failed, retrying with backoff: %s",
                    self.config.public,
                    text,
                )
                queue.update(
                    self.store,
                    row,
                    self.owner,
                    state="pending",
                    attempts=attempts,
                    error=text,
                    sent=0,
                    next_attempt_at=time.time() + backoff(attempts),
                )
        finally:
            self.uploads.settled.set()

    def _settle(self, record_id: str) -> None:
        """Once no file of the record is left to send: store its next revision and let the sinks know."""
        files = queue.rows(self.store, record_id)
        if any(row.state in queue.OPEN for row in files):
            return
        if all(row.state in ("uploaded", "removed") for row in files):
            staging.remove(Path(files[0].staging))  # a failed upload keeps it, to be retried
        self._revise(record_id, files)

    def _revise(self, record_id: str, files: Sequence[UploadRow]) -> None:
        stored = self.store.get(record_id)
        if stored is None or not files:
            return
        remote = files[0].remote[: -len(files[0].path) - 1]
        status = upload_status(files, remote)
        record = with_upload(
            stored.record, status, files, self.config.provider, self.config.provider_id, utc_now_iso()
        )
        self.store.put(record, self.uploads.sinks)
        self.uploads.wake_delivery()

    # -- mirror retention ----------------------------------------------------------------------------

    def _mirror_rotations(self) -> None:
        """Delete the remote copy of every checkpoint rotation deleted locally (except the best one)."""
        record_ids = queue.rotated_away(self.store, self.config.public)
        if not record_ids:
            return
        fs, root = self.config.filesystem()
        for record_id in record_ids:
            files = queue.rows(self.store, record_id)
            for row in files:
                if row.state in ("uploaded", "committing"):
                    with contextlib.suppress(FileNotFoundError):
                        fs.rm(root + row.remote[len(self.config.public) :])
                queue.update(self.store, row, self.owner, state="removed")
            staging.remove(Path(files[0].staging))
            self._revise(record_id, queue.rows(self.store, record_id))


def _interpreter_running() -> bool:
    """False once the interpreter is exiting (the main thread is done): no new upload starts then."""
    return threading.main_thread().is_alive()


def _remote_size(fs: AbstractFileSystem, target: str) -> int | None:
    fs.invalidate_cache(target)
    try:
        return int(fs.info(target)["size"])
    except FileNotFoundError:
        return None


class Uploads:
    """The checkpoints' uploads of one recorder; every method is a no-op when no storage is configured."""

    def __init__(
        self,
        store: RecordStore,
        config: StorageConfig | None,
        sinks: Sequence[str] = (),
        wake_delivery: Callable[[], None] = lambda: None,
    ) -> None:
        self.store, self.config = store, config
        #: The record sinks an uploaded record's new revision is queued for.
        self.sinks = list(sinks)
        self.wake_delivery = wake_delivery
        #: Set whenever a file's upload ends, so a flush notices at once.
        self.settled = threading.Event()
        self._pid = os.getpid()
        self._lane: _Lane | None = None

    def enqueue(self, record: CheckpointRecord) -> None:
        """Stage and queue ``record``'s files for upload, then wake the lane. Never raises."""
        if self.config is None or record.status.status != "available":
            return
        try:
            directory = Path(record.spec.directory)
            stage = staging.staging_dir(directory, record.id)
            staging.link_files(directory, stage, [entry.path for entry in record.status.files])
            queue.enqueue(self.store, record, self.config.remote_dir(record.name), str(stage))
            self.start()
            self.wake()
        except Exception as error:
            warn_once(
                f"upload-enqueue:{type(error).__name__}",
                "checkpoint-records: could not queue the upload of %s, training goes on: %s: %s",
                record.name,
                type(error).__name__,
                error,
            )

    def start(self) -> None:
        """Start the lane (in the process that created this, never in a fork): pending uploads resume."""
        if self.config is None or self._lane is not None or os.getpid() != self._pid:
            return
        self._lane = _Lane(self, self.config)
        self._lane.start()

    def wake(self) -> None:
        if self._lane is not None:
            self._lane.wakeup.set()

    def pending(self) -> int:
        """Files still to upload to this destination (from any run that used this store)."""
        return 0 if self.config is None else queue.open_count(self.store, self.config.public)

    def flush(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for every queued file to be sent; how many are left."""
        if self.config is None:
            return 0
        self.start()
        self.wake()
        if self._lane is None:  # a fork: the lane runs in the parent
            return self.pending()
        deadline = time.monotonic() + timeout
        lane = self._lane
        left = self.pending()
        while (left or lane.busy) and time.monotonic() < deadline and lane.is_alive():
            self.settled.wait(min(0.1, max(deadline - time.monotonic(), 0.0)))
            self.settled.clear()
            left = self.pending()
        if left:
            logger.warning(
                "checkpoint-records: %d files are still uploading to %s; they resume with the next run that "
                "uses this store, or with `checkpoint-records upload`",
                left,
                self.config.public,
            )
        return left

    def close(self, timeout: float = 1.0) -> None:
        """Stop the lane; an upload in flight is resumed later (it was never committed)."""
        if self._lane is None or os.getpid() != self._pid:
            return
        self._lane.stopping.set()
        self._lane.wakeup.set()
        self._lane.join(timeout)
        self._lane = None
