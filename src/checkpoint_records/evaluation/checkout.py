"""Where an evaluation finds a checkpoint's files: its own directory, or its uploaded copy pulled and verified.

The directory the record names is used when it is on this machine with every file of the recorded size
(the training node wrote it; hashing gigabytes again would only delay the evaluation). Otherwise, when the
checkpoint was uploaded (``storage=``), its copy is pulled into the worker's folder, hashed on the way and
compared with the record's SHA-256s before anything runs on it. A checkpoint that is not ready for
inference, or gone without an uploaded copy, is not evaluated: :class:`Skip` says why. One whose upload
is still under way is waited for (:class:`NotYet`).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigurationError
from ..readiness import assess_readiness
from ..record import CheckpointRecord
from ..storage.config import StorageConfig
from ..storage.verify import pull
from ..validation import path_of


class Skip(Exception):
    """The checkpoint is not to be evaluated: the message says why (recorded on it as ``skipped``)."""


class NotYet(Exception):
    """The checkpoint cannot be evaluated yet (its upload is under way): looked at again later."""


class PullFailed(Exception):
    """The uploaded copy could not be pulled, or differs from the record: the attempt failed."""


def skip_reason(record: CheckpointRecord) -> str | None:
    """Why ``record`` is never to be evaluated whatever the machine, or None."""
    training = record.training
    reasons = "; ".join(training.inference_ready_reasons)
    if record.status.status == "failed":
        return f"not ready: the checkpoint was incomplete when saved ({reasons or 'no reason recorded'})"
    if record.status.status == "available" and not training.inference_ready:
        return f"not ready for inference: {reasons or 'no reason recorded'}"
    return None


def _upload_state(record: CheckpointRecord) -> str | None:
    return None if record.status.upload is None else record.status.upload.state


def local_copy(record: CheckpointRecord) -> Path | None:
    """The record's directory, when it is here with every file of its recorded size."""
    directory = path_of(record.spec.directory)
    if record.status.status != "available" or not directory.is_dir():
        return None
    for entry in record.status.files:
        path = directory / path_of(entry.path)
        if not path.is_file() or path.stat().st_size != entry.size:
            return None
    return directory


def check_out(record: CheckpointRecord) -> Path | None:
    """The record's directory when it is here; None when its uploaded copy is to be pulled
    (:func:`pull_copy`). :class:`Skip` or :class:`NotYet` when neither can be evaluated."""
    reason = skip_reason(record)
    if reason is not None:
        raise Skip(reason)
    directory = local_copy(record)
    if directory is not None:
        return directory
    state = _upload_state(record)
    where = (
        "rotated away"
        if record.status.status == "deleted"
        else f"not on this machine ({record.spec.directory})"
    )
    if state in ("pending", "uploading"):
        raise NotYet(f"{where}; its upload is {state}")
    if state != "uploaded":
        raise Skip(f"gone without an uploaded copy: {where}, upload {state or 'not configured'}")
    return None


def pull_copy(record: CheckpointRecord, directory: Path, storage: StorageConfig | None) -> Path:
    """The record's uploaded copy, pulled into ``directory`` and checked against every recorded SHA-256."""
    remote = record.spec.source_path
    try:
        verification = pull(record, directory, storage)
    except ConfigurationError:  # this worker's set-up (the storage extra): said once, by the command
        raise
    except Exception as error:  # the storage's own errors (network, credentials), said without secrets
        redact = storage.redact if storage is not None else StorageConfig(remote).redact
        raise PullFailed(redact(f"pulling {remote} failed: {type(error).__name__}: {error}")) from None
    if verification.findings:
        differs = "; ".join(f"{finding.path}: {finding.why}" for finding in verification.findings)
        raise PullFailed(f"the copy pulled from {remote} differs from the record: {differs}")
    if record.status.status == "deleted":  # readiness was said of the files before rotation: say it again
        readiness = assess_readiness(directory, {entry.path: entry.size for entry in record.status.files})
        if not readiness.ready:
            raise Skip(f"not ready for inference: {'; '.join(readiness.reasons)}")
    return directory
