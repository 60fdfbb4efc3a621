"""Checking a checkpoint against its record, byte for byte: on local disk, in storage, or pulled from it.

The record holds every file's size and, once uploaded, its SHA-256. A file that is missing, has another
size or another hash is a :class:`Finding`; the CLI names every one and exits 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigurationError
from ..record import CheckpointRecord, FileEntry
from ..validation import contained, path_of
from . import transfer
from .config import StorageConfig, check_backend

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem


@dataclass(frozen=True)
class Finding:
    path: str
    why: str


@dataclass(frozen=True)
class Verification:
    findings: list[Finding]
    #: Files whose record has no SHA-256 yet (never uploaded): only their size was checked.
    size_only: list[str]


def compare(entry: FileEntry, size: int | None, sha256: str | None) -> Finding | None:
    """What is wrong with a file of ``size`` and hash ``sha256`` (None: missing / not hashed)."""
    if size is None:
        return Finding(entry.path, "missing")
    if size != entry.size:
        return Finding(entry.path, f"size {size} bytes, the record says {entry.size}")
    if entry.sha256 and sha256 and sha256 != entry.sha256:
        return Finding(entry.path, f"content differs (sha256 {sha256}, the record says {entry.sha256})")
    return None


def _verification(
    record: CheckpointRecord, results: dict[str, tuple[int | None, str | None]]
) -> Verification:
    findings = [
        finding
        for entry in record.status.files
        if (finding := compare(entry, *results[entry.path])) is not None
    ]
    return Verification(findings, [entry.path for entry in record.status.files if not entry.sha256])


def verify_local(record: CheckpointRecord) -> Verification:
    """Re-hash the checkpoint's files where the record says they are."""
    directory = path_of(record.spec.directory)
    results: dict[str, tuple[int | None, str | None]] = {}
    for entry in record.status.files:
        path = directory / path_of(entry.path)
        if not path.is_file():
            results[entry.path] = (None, None)
            continue
        size = path.stat().st_size
        results[entry.path] = (
            size,
            transfer.hash_local(path) if entry.sha256 and size == entry.size else None,
        )
    return _verification(record, results)


def remote_location(record: CheckpointRecord, config: StorageConfig | None) -> tuple[AbstractFileSystem, str]:
    """The file system and path of the record's uploaded copy, with the configured storage's options
    when it is the destination, else with the backend's own credentials (environment, profiles)."""
    source = record.spec.source_path
    if not source or record.status.upload is None or record.status.upload.state != "uploaded":
        raise ConfigurationError(
            f"{record.name} has not been uploaded (see: checkpoint-records inspect {record.name})"
        )
    if config is not None and config.holds(source):
        fs, root = config.filesystem()
        return fs, root + source[len(config.public) :]
    config = StorageConfig(source)
    check_backend(config)
    return config.filesystem()


def _remote_size(fs: AbstractFileSystem, path: str) -> int | None:
    try:
        return int(fs.info(path)["size"])
    except FileNotFoundError:
        return None


def verify_remote(record: CheckpointRecord, config: StorageConfig | None) -> Verification:
    """Re-hash the uploaded copy (streamed, nothing written locally)."""
    fs, root = remote_location(record, config)
    results: dict[str, tuple[int | None, str | None]] = {}
    for entry in record.status.files:
        path = f"{root}/{entry.path}"
        size = _remote_size(fs, path)
        sha256 = transfer.hash_remote(fs, path) if size == entry.size and entry.sha256 else None
        results[entry.path] = (size, sha256)
    return _verification(record, results)


def pull(record: CheckpointRecord, directory: Path, config: StorageConfig | None) -> Verification:
    """Download the uploaded copy into ``directory``, hashing on the way; what does not match the record.

    Every file lands inside ``directory``: a record naming one elsewhere (``../``, an absolute path, a
    link out of it) is refused with :class:`~..validation.InvalidValue` before anything is written."""
    targets = {
        entry.path: contained(directory, entry.path, f"status.files[{index}].path")
        for index, entry in enumerate(record.status.files)
    }
    fs, root = remote_location(record, config)
    results: dict[str, tuple[int | None, str | None]] = {}
    for entry in record.status.files:
        path = f"{root}/{entry.path}"
        if _remote_size(fs, path) is None:
            results[entry.path] = (None, None)
            continue
        local = targets[entry.path]
        sha256 = transfer.fetch(fs, path, local)
        results[entry.path] = (local.stat().st_size, sha256)
    return _verification(record, results)
