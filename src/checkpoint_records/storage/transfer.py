"""Moving one file to or from object storage, hashing it on the way: one read, nothing half-visible.

An upload is written through fsspec with ``autocommit=False``: on S3 that is a multipart upload (one
part per ``part_size`` block) that only becomes an object when it is completed, and on a local or
shared disk a temporary file renamed into place. :func:`send` returns before that commit, with the
SHA-256 of what was sent, so the caller can note the hash durably first and a process killed between
the two never has to send the file again.
"""

from __future__ import annotations

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
) -> tuple[str, Any]:
    """Write ``local`` to ``target`` uncommitted; (SHA-256, the open handle to ``commit``/``discard``)."""
    digest = hashlib.sha256()
    sent = 0
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
