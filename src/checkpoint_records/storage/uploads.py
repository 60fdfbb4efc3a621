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
from pathlib import Path
from typing import TYPE_CHECKING

from ..countdown import Countdown
from ..lane import IDLE_POLL, Lane, backoff
from ..logs import logger, warn_once
from ..record import CheckpointRecord, utc_now_iso
from ..store import Lease, RecordStore, UploadRow
from ..validation import path_of
from . import staging, transfer
from .config import StorageConfig
from .progress import remote_of, upload_status, with_upload

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

WAKE_DELAY = 0.05
#: Errors retrying cannot fix: refused credentials. Anything else (endpoint down, a bucket not created
#: yet, a throttled request) is retried with backoff, its cause shown in the upload state meanwhile.
PERMANENT_ERRORS = (PermissionError,)
#: A file's last state (columns of its row), written with the record's revision.
Ended = dict[str, object]
UPLOADED: Ended = {"state": "uploaded", "error": None}


def error_text(error: BaseException, config: StorageConfig) -> str:
    """Why an upload failed, in words, without secrets."""
    text = f"{type(error).__name__}: {error}"
    if isinstance(error, PermissionError):
        text = (
            f"access denied by {config.public}: check the credentials (AWS_ACCESS_KEY_ID/AWS_PROFILE, "
            f"storage_options) and the bucket's permissions ({text})"
        )
    return config.redact(text)


class _UploadLane(Lane):
    """Uploads the queued files under one destination, one record at a time."""

    #: Woken by a save: let it return before competing with it for the GIL.
    wake_delay = WAKE_DELAY

    def __init__(self, uploads: Uploads, config: StorageConfig) -> None:
        store = uploads.store
        super().__init__(f"upload to {config.public}", store, store.uploads, config.public, Lease())
        self.uploads, self.config = uploads, config
        #: True while a claimed record is being uploaded and settled.
        self.busy = False

    def described(self, error: Exception) -> str:
        return self.config.redact(f"{type(error).__name__}: {error}")

    def work(self) -> float | None:
        """Apply mirror retention, then upload the next due record; None when no record was due."""
        self.busy = True
        try:
            if self.config.retention == "mirror":
                self._mirror_rotations()
            self.lease.taken()
            claimed = self.store.uploads.claim_next(self.owner, self.config.public, self.lease.seconds)
            if not claimed:
                return None
            try:
                self._upload(claimed)
            finally:
                self.release()  # files left open (retried after a backoff) are anyone's once due
            return 0.0
        finally:
            self.busy = False
            self.uploads.settled.set()

    # -- one record ----------------------------------------------------------------------------------

    def _upload(self, claimed: list[UploadRow]) -> None:
        fs, root = self.config.filesystem()
        source, stage = Path(claimed[0].source), Path(claimed[0].staging)
        ended: dict[str, Ended] = {}
        ready = []
        for row in claimed:  # stage every file before sending any: copies shrink rotation's window
            if row.state == "committing" or staging.copy_missing(source, stage, row.path) is not None:
                ready.append(row)
            else:
                ended[row.path] = {
                    "state": "failed",
                    "attempts": row.attempts + 1,
                    "error": "deleted locally (rotated away?) before it could be staged for upload",
                }
        ended.update(self._send(fs, root, stage, ready))
        self._settle(claimed[0].record_id, ended)

    def _send(
        self, fs: AbstractFileSystem, root: str, stage: Path, rows: list[UploadRow]
    ) -> dict[str, Ended]:
        """Send the files of ``rows``, up to ``parallel`` at once, renewing the claim meanwhile; the last
        state of each file that got one. The senders are daemon threads: an exit never waits for a file
        in flight (it is sent again by the next run)."""
        ended: dict[str, Ended] = {}
        queued, lock = iter(rows), threading.Lock()

        def sender() -> None:
            while True:
                with lock:
                    row = next(queued, None)
                if row is None:
                    return
                last = self._upload_file(fs, root, stage, row)
                if last is not None:
                    ended[row.path] = last

        senders = [
            threading.Thread(target=sender, name="checkpoint-records-part", daemon=True)
            for _ in range(min(self.config.parallel, len(rows)))
        ]
        for thread in senders:
            thread.start()
        for thread in senders:
            while thread.is_alive():
                thread.join(IDLE_POLL)
                self.renew()
        return ended

    def _upload_file(self, fs: AbstractFileSystem, root: str, stage: Path, row: UploadRow) -> Ended | None:
        """Send one file; its last state (uploaded, failed), or None while it stays open (to retry after
        a backoff, or cut short by a stop)."""
        target = self._remote_path(root, row)
        try:
            if row.state == "committing" and row.sha256 and _remote_size(fs, target) == row.size:
                return UPLOADED  # sent and committed by a process that died before noting it: not sent again
            sha256, handle = transfer.send(
                fs,
                stage / row.path,
                target,
                self.config.part_size,
                lambda sent: self.store.uploads.update(row, sent=sent),
                self.config.parallel,
            )
            self.store.uploads.update(row, state="committing", sha256=sha256)
            try:
                handle.commit()
            except BaseException:
                transfer.discard(handle)
                raise
            size = _remote_size(fs, target)
            if size != row.size:
                raise OSError(f"the uploaded copy has {size} bytes, the checkpoint's file {row.size}")
            return UPLOADED
        except Exception as error:
            if self.stopping.is_set():
                return None  # cut short by the stop: the row stays open and resumes with the next run
            text = error_text(error, self.config)
            attempts = row.attempts + 1
            if isinstance(error, PERMANENT_ERRORS):
                logger.warning("checkpoint-records: could not upload %s: %s", row.remote, text)
                return {"state": "failed", "attempts": attempts, "error": text, "sent": 0}
            warn_once(
                f"upload-retry:{type(error).__name__}",
                "checkpoint-records: upload to %s failed, retrying with backoff: %s",
                self.config.public,
                text,
            )
            self.store.uploads.update(
                row,
                state="pending",
                attempts=attempts,
                error=text,
                sent=0,
                next_attempt_at=time.time() + backoff(attempts),
            )
            return None
        finally:
            self.uploads.settled.set()

    def _settle(self, record_id: str, ended: dict[str, Ended]) -> None:
        """Write the files' last states and, once none is left to send, the record's next revision, in one
        transaction (a process killed before leaves the files open, to be settled by the next run)."""
        files, revised = self.store.uploads.settle(record_id, ended, self._revised, self.uploads.sinks)
        if files and all(row.state in ("uploaded", "removed") for row in files):
            staging.remove(Path(files[0].staging))  # a failed upload keeps it, to be retried
        if revised is not None:
            self.uploads.wake_delivery()

    def _revised(self, record: CheckpointRecord, files: Sequence[UploadRow]) -> CheckpointRecord:
        status = upload_status(files, remote_of(files))
        return with_upload(
            record, status, files, self.config.provider, self.config.provider_id, utc_now_iso()
        )

    def _remote_path(self, root: str, row: UploadRow) -> str:
        """Where the row's file goes, as the file system names it."""
        return root + row.remote[len(self.config.public) :]

    # -- mirror retention ----------------------------------------------------------------------------

    def _mirror_rotations(self) -> None:
        """Delete the remote copy of every checkpoint rotation deleted locally (except the best one)."""
        record_ids = self.store.uploads.rotated_away(self.config.public)
        if not record_ids:
            return
        fs, root = self.config.filesystem()
        for record_id in record_ids:
            files = self.store.uploads.rows(record_id)
            for row in files:
                if row.state in ("uploaded", "committing"):
                    with contextlib.suppress(FileNotFoundError):
                        fs.rm(self._remote_path(root, row))
            self._settle(record_id, {row.path: {"state": "removed"} for row in files})


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
        self._lane: _UploadLane | None = None

    def enqueue(self, record: CheckpointRecord) -> None:
        """Stage and queue ``record``'s files for upload, then wake the lane. Never raises."""
        if self.config is None or record.status.status != "available":
            return
        try:
            directory = path_of(record.spec.directory)
            stage = staging.staging_dir(directory, record.id)
            staging.link_files(directory, stage, [entry.path for entry in record.status.files])
            self.store.uploads.enqueue(record, self.config.remote_dir(record.name), str(stage))
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
        self._lane = _UploadLane(self, self.config)
        self._lane.start()

    def wake(self) -> None:
        if self._lane is not None:
            self._lane.wake()

    def pending(self) -> int:
        """Files still to upload to this destination (from any run that used this store)."""
        return 0 if self.config is None else self.store.uploads.open_count(self.config.public)

    def flush(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for every queued file to be sent; how many are left."""
        if self.config is None:
            return 0
        self.start()
        self.wake()
        if self._lane is None:  # a fork: the lane runs in the parent
            return self.pending()
        countdown = Countdown(timeout)
        lane = self._lane
        left = self.pending()
        while (left or lane.busy) and countdown.left() and lane.is_alive():
            self.settled.wait(min(0.1, countdown.left()))
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
        self._lane.stop()
        self._lane.join(timeout)
        self._lane = None
