"""Moving one file to or from object storage, hashing it on the way: one read, nothing half-visible.

On S3 (s3fs) a file larger than one part is a multipart upload with up to ``concurrency`` parts in
flight at once (as s3fs's own ``put`` does), which only becomes an object when it is completed; a smaller
file is one PUT, made at commit. Elsewhere it is written through fsspec with ``autocommit=False``: a
temporary file renamed into place on a local or shared disk, the backend's own transaction elsewhere. :func:`send` returns before that commit, with the
SHA-256 of what was sent, so the caller can note the hash durably first and a process killed between
the two never has to send the file again.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

READ_SIZE = 16 * 2**20


def send(
    fs: AbstractFileSystem,
    local: Path,
    target: str,
    part_size: int,
    on_progress: Callable[[int], None],
    concurrency: int = 1,
) -> tuple[str, Any]:
    """Write ``local`` to ``target`` uncommitted; (SHA-256, a handle to ``commit`` or ``discard``)."""
    if hasattr(fs, "call_s3"):  # s3fs: parts in parallel, as its own put does
        return _send_s3(fs, local, target, part_size, on_progress, concurrency)
    digest = hashlib.sha256()
    sent = 0
    fs.makedirs(fs._parent(target), exist_ok=True)  # a file system with real directories needs them
    handle = fs.open(target, "wb", block_size=part_size, autocommit=False)
    try:
        with open(local, "rb") as source:
            while chunk := source.read(part_size):
                digest.update(chunk)
                handle.write(chunk)
                sent += len(chunk)
                on_progress(sent)
        handle.close()  # the last part goes out; the file is not visible yet
    except BaseException:
        discard(handle)
        raise
    return digest.hexdigest(), handle


class _S3Put:
    """A file smaller than one part: sent whole by ``commit`` (a PUT is visible at once)."""

    def __init__(self, fs: Any, bucket: str, key: str, data: bytes) -> None:
        self.fs, self.bucket, self.key, self.data = fs, bucket, key, data

    def commit(self) -> None:
        self.fs.call_s3("put_object", Bucket=self.bucket, Key=self.key, Body=self.data)

    def discard(self) -> None:
        self.data = b""


class _S3Multipart:
    """An S3 multipart upload: no object exists until ``commit`` completes it; ``discard`` aborts it."""

    def __init__(self, fs: Any, bucket: str, key: str) -> None:
        self.fs, self.bucket, self.key = fs, bucket, key
        self.upload_id = fs.call_s3("create_multipart_upload", Bucket=bucket, Key=key)["UploadId"]
        self.parts: list[dict[str, Any]] = []

    def upload_part(self, number: int, chunk: bytes) -> concurrent.futures.Future[Any]:
        """Send one part on s3fs's event loop; returns at once."""
        call = self.fs._call_s3(
            "upload_part",
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=chunk,
        )
        return asyncio.run_coroutine_threadsafe(call, self.fs.loop)

    def commit(self) -> None:
        self.fs.call_s3(
            "complete_multipart_upload",
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            MultipartUpload={"Parts": self.parts},
        )

    def discard(self) -> None:
        self.fs.call_s3("abort_multipart_upload", Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)


def _send_s3(
    fs: Any, local: Path, target: str, part_size: int, on_progress: Callable[[int], None], concurrency: int
) -> tuple[str, Any]:
    """Read ``local`` once, hashing each part and keeping up to ``concurrency`` parts in flight."""
    bucket, key, _ = fs.split_path(target)
    digest = hashlib.sha256()
    with open(local, "rb") as source:
        chunk = source.read(part_size)
        digest.update(chunk)
        if len(chunk) < part_size:
            on_progress(len(chunk))
            return digest.hexdigest(), _S3Put(fs, bucket, key, chunk)
        upload = _S3Multipart(fs, bucket, key)
        in_flight: collections.deque[tuple[int, int, concurrent.futures.Future[Any]]] = collections.deque()
        sent = 0
        try:
            number = 0
            while chunk:
                number += 1
                in_flight.append((number, len(chunk), upload.upload_part(number, chunk)))
                while in_flight and (len(in_flight) >= concurrency or in_flight[0][2].done()):
                    done, size, future = in_flight.popleft()
                    upload.parts.append({"PartNumber": done, "ETag": future.result()["ETag"]})
                    sent += size
                    on_progress(sent)
                chunk = source.read(part_size)
                digest.update(chunk)
            while in_flight:
                done, size, future = in_flight.popleft()
                upload.parts.append({"PartNumber": done, "ETag": future.result()["ETag"]})
                sent += size
                on_progress(sent)
        except BaseException:
            for _, _, future in in_flight:
                future.cancel()
            discard(upload)
            raise
    return digest.hexdigest(), upload


def discard(handle: Any) -> None:
    """Abort an uncommitted upload (S3 aborts the multipart upload; a local temp file is removed)."""
    with contextlib.suppress(Exception):  # best effort: an unfinished multipart upload is never an object
        handle.discard()


def hash_local(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(READ_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def hash_remote(fs: AbstractFileSystem, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open(path, "rb", block_size=READ_SIZE) as source:
        while chunk := source.read(READ_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(fs: AbstractFileSystem, path: str, local: Path) -> str:
    """Download ``path`` to ``local`` (via a ``.partial`` file renamed at the end); its SHA-256."""
    digest = hashlib.sha256()
    local.parent.mkdir(parents=True, exist_ok=True)
    partial = local.with_name(local.name + ".partial")
    try:
        with fs.open(path, "rb", block_size=READ_SIZE) as source, open(partial, "wb") as destination:
            while chunk := source.read(READ_SIZE):
                digest.update(chunk)
                destination.write(chunk)
        os.replace(partial, local)
    finally:
        partial.unlink(missing_ok=True)
    return digest.hexdigest()
