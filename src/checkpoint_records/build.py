"""Building a record from what the run knows and what is on disk: a pure function, testable alone."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .collect import ModelFacts, ScannedCheckpoint, ranks_on_disk
from .history import LoggedMetrics
from .readiness import Readiness
from .record import (
    CheckpointRecord,
    CheckpointStatus,
    FileEntry,
    RecordMetadata,
    RecordSpec,
    RecordStatus,
    TrainingMetadata,
)
from .validation import escape_text
from .values import to_number


@dataclass(frozen=True)
class SaveContext:
    """What the training run knows at a save, independent of any Trainer object."""

    record_id: str
    name: str
    job_id: str
    job_name: str
    step: int
    epoch: Any
    node: str
    #: What the log says as of this step (``history.LogAccumulator``, or ``metrics_at_step``).
    logged: LoggedMetrics
    #: The base model as the live run knows it (PEFT base, ``name_or_path`` or ``hub_model_id``).
    base_model: str | None
    library_version: str
    #: How many processes wrote it; None: as its files tell (:func:`~.collect.ranks_on_disk`), else 1.
    world_size: int | None = 1
    #: The live model's class, for when the checkpoint's files do not name it.
    architecture: str | None = None
    #: Rebuilt from the checkpoint's own files after the fact, not handed over by a live save.
    recovered: bool = False


@dataclass(frozen=True)
class Best:
    """The Trainer's best checkpoint so far: its step, and by which metric and value."""

    step: int
    metric: str | None
    value: float | None


def build_record(
    context: SaveContext,
    scanned: ScannedCheckpoint,
    facts: ModelFacts,
    readiness: Readiness,
    now: str,
) -> CheckpointRecord:
    logged = context.logged
    epoch, _ = to_number(context.epoch)
    directory = escape_text(str(scanned.directory.absolute()))  # a run directory may not be UTF-8
    status: CheckpointStatus = "available" if scanned.exists else "failed"
    reasons = list(readiness.reasons) if scanned.exists else [not_found(directory)]
    return CheckpointRecord(
        metadata=RecordMetadata(
            name=context.name, id=context.record_id, job_id=context.job_id, job_name=context.job_name
        ),
        spec=RecordSpec(
            from_local_files=[f"{directory}/{path}" for path in scanned.files],
            directory=directory,
        ),
        status=RecordStatus(
            status=status,
            size=scanned.total_size,
            files=[FileEntry(path=path, size=size) for path, size in scanned.files.items()],
            metadata=TrainingMetadata(
                name=context.name,
                node=context.node,
                step=context.step,
                epoch=None if epoch is None else float(epoch),
                train_loss=logged.train_loss,
                eval_loss=logged.eval_loss,
                train_loss_step=logged.train_loss_step,
                eval_loss_step=logged.eval_loss_step,
                eval_loss_metric=logged.eval_loss_metric,
                metrics=logged.metrics,
                non_finite=logged.non_finite,
                model=context.base_model or facts.adapter_base_model or facts.name_or_path or "",
                architecture=facts.architectures[0] if facts.architectures else context.architecture,
                version=facts.transformers_version or context.library_version,
                inference_ready=readiness.ready and scanned.exists,
                inference_ready_reasons=reasons,
                layout=readiness.layout,
                world_size=context.world_size or ranks_on_disk(scanned.files) or 1,
                recovered=context.recovered,
            ),
            created_at=now,
            updated_at=now,
        ),
    )


def not_found(directory: str) -> str:
    """Why a record whose checkpoint directory is missing is not ready."""
    return f"checkpoint directory not found at {directory}"


def rotated_away(directory: str) -> str:
    """Why a record whose checkpoint the run's own rotation (``save_total_limit``) removed is not ready."""
    return f"checkpoint directory rotated away by save_total_limit: not found at {directory}"


def as_deleted(record: CheckpointRecord, now: str, rotated: bool = False) -> CheckpointRecord:
    """The record of a checkpoint whose files are gone: ``deleted``, not ready, updated ``now``; the
    reason says rotation only when the run ``rotated`` its checkpoints (a limit was set).

    Its file list stays what the checkpoint held, so the platform still knows what was there.
    """
    directory = record.spec.directory
    reason = rotated_away(directory) if rotated else not_found(directory)
    training = record.training.model_copy(
        update={"inference_ready": False, "inference_ready_reasons": [reason]}
    )
    status = record.status.model_copy(update={"status": "deleted", "updated_at": now, "metadata": training})
    return record.model_copy(update={"status": status})


def with_best(record: CheckpointRecord, best: Best | None, now: str | None = None) -> CheckpointRecord:
    """``record`` marked as the best checkpoint (``best`` is its own step) or as not (any other ``best``).

    ``now`` stamps ``updatedAt`` when an existing record changes.
    """
    training = record.training
    if best is not None and best.step == training.step:
        changes: dict[str, Any] = {"best": True, "best_metric": best.metric, "best_metric_value": best.value}
    else:
        changes = {"best": False, "best_metric": None, "best_metric_value": None}
    status: dict[str, Any] = {"metadata": training.model_copy(update=changes)}
    if now is not None:
        status["updated_at"] = now
    return record.model_copy(update={"status": record.status.model_copy(update=status)})
