"""The checkpoint record: one pydantic model, serialised with FlexAI's field names and casing.

The canonical record is a FlexAI ``Checkpoint`` object (``kind``/``metadata``/``spec``/``status``) with
extra fields the FlexAI document does not have (job, epoch, metrics, readiness reasons, ...), so it
validates against the FlexAI schema while staying the richest format. File sizes are bytes.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from .validation import Count, Int64, IsoTime, RelativePath, read_stored
from .values import JsonScalar

#: ``status.status`` values: written and complete, written but broken/absent, rotated away since.
CheckpointStatus = Literal["available", "failed", "deleted"]


class _Model(BaseModel):
    #: What a document may hold is said by the field types (``validation.py``): finite numbers only.
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", allow_inf_nan=False
    )


class FileEntry(_Model):
    #: Relative to the checkpoint's directory, and inside it.
    path: RelativePath
    size: Count
    #: Hex SHA-256 of the file, computed while it was uploaded to object storage (``storage=``).
    sha256: str | None = None


class RecordMetadata(_Model):
    name: str = Field(min_length=1)
    id: str
    creator_user_id: str = Field(default="", alias="creatorUserID")
    owner_org_id: str = Field(default="", alias="ownerOrgID")
    job_id: str
    job_name: str
    revision: Count = 1


class RecordSpec(_Model):
    from_local_files: list[str]
    storage_provider: str = ""
    source_path: str = ""
    directory: str


class TrainingMetadata(_Model):
    name: str
    node: str
    step: Count
    epoch: float | None = None
    train_loss: float | None = None
    eval_loss: float | None = None
    #: The step each loss was logged at: a checkpoint's train loss may be an earlier step's.
    train_loss_step: Count | None = None
    eval_loss_step: Count | None = None
    #: Which logged metric ``evalLoss`` is: ``eval_loss``, or with several eval sets the one the run
    #: selects by (``metric_for_best_model`` when a loss, else the first set's ``eval_<set>_loss``).
    eval_loss_metric: str | None = None
    metrics: dict[str, JsonScalar] = Field(default_factory=dict)
    non_finite: dict[str, str] = Field(default_factory=dict)
    model: str
    architecture: str | None = None
    version: str
    inference_ready: bool
    inference_ready_reasons: list[str] = Field(default_factory=list)
    layout: str
    world_size: Count = 1
    #: The Trainer's best checkpoint so far (``metric_for_best_model``), by which metric and value.
    best: bool = False
    best_metric: str | None = None
    best_metric_value: float | None = None
    #: Rebuilt from the checkpoint on disk (its ``trainer_state.json``) after a crash, or imported.
    recovered: bool = False


#: Where the upload of a checkpoint's files to object storage stands; ``deleted``: removed remotely by
#: ``storage_retention="mirror"`` after rotation deleted it locally.
UploadState = Literal["pending", "uploading", "uploaded", "failed", "deleted"]


class UploadStatus(_Model):
    state: UploadState
    #: Fraction of the checkpoint's bytes sent, 0..1.
    progress: float = 0.0
    error: str | None = None
    #: The checkpoint's remote directory, without secrets.
    remote: str | None = None


#: How an evaluator's run on a checkpoint ended: its metrics were read, it failed (after its retries), or
#: it was not run (the checkpoint is not ready, or gone without an uploaded copy).
EvaluationState = Literal["succeeded", "failed", "skipped"]


class Evaluation(_Model):
    """One evaluator's result on a checkpoint (``checkpoint-records evaluate --name NAME``)."""

    state: EvaluationState
    #: What the evaluator reported, finite numbers only; a NaN or infinity is in ``non_finite``.
    metrics: dict[str, float] = Field(default_factory=dict)
    non_finite: dict[str, str] = Field(default_factory=dict)
    started_at: IsoTime | None = None
    finished_at: IsoTime | None = None
    #: How many times the command was started (a worker killed mid-run counts one).
    attempts: Count = 0
    exit_code: Int64 | None = None
    #: Why it failed or was skipped, in one line.
    reason: str | None = None
    #: The end of the command's error output, secrets masked (on failure).
    error_tail: str | None = None
    #: Where the evaluated files came from: the checkpoint's directory, or the storage copy pulled.
    source: str | None = None


class RecordStatus(_Model):
    status: CheckpointStatus
    storage_provider_id: str = Field(default="", alias="storageProviderID")
    size: Count
    files: list[FileEntry]
    metadata: TrainingMetadata
    created_at: IsoTime
    updated_at: IsoTime
    upload: UploadStatus | None = None
    #: Each evaluator's result, by its name.
    evaluations: dict[str, Evaluation] = Field(default_factory=dict)


class CheckpointRecord(_Model):
    kind: Literal["Checkpoint"] = "Checkpoint"
    metadata: RecordMetadata
    spec: RecordSpec
    status: RecordStatus

    @property
    def id(self) -> str:
        return self.metadata.id

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def training(self) -> TrainingMetadata:
        return self.status.metadata

    def to_dict(self) -> dict[str, Any]:
        """The wire form: FlexAI names, JSON-safe values."""
        return self.model_dump(mode="json", by_alias=True)

    def to_json(self) -> str:
        """Compact, key-stable JSON (``allow_nan=False``: a NaN here is a bug, not data)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> CheckpointRecord:
        """The record a stored body holds, repaired if an older release stored values this one refuses
        (:func:`~.validation.read_stored`); :class:`~.validation.InvalidValue` when it cannot be."""
        return read_stored(cls, text)[0]


def utc_now_iso() -> str:
    """ISO 8601 UTC with microseconds and a ``Z``, as FlexAI prints timestamps."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
