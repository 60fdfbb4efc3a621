"""Llama Stack: the post-training ``Checkpoint``, and a job's ``PostTrainingJobArtifactsResponse``.

| Llama Stack field                  | from the canonical record                                          |
|------------------------------------|--------------------------------------------------------------------|
| ``identifier``                     | ``metadata.id`` (the record's UUID: unique and deterministic)      |
| ``created_at``                     | ``status.createdAt`` (ISO 8601 UTC)                                |
| ``epoch``                          | 0-based index of the epoch the step is in: ``ceil(epoch) - 1``     |
| ``post_training_job_id``           | ``metadata.jobId``                                                 |
| ``path``                           | ``spec.sourcePath`` once uploaded (storage=), else ``spec.directory`` |
| ``training_metrics.epoch``         | same as ``epoch``                                                  |
| ``training_metrics.train_loss``    | ``status.metadata.trainLoss``                                      |
| ``training_metrics.validation_loss`` | ``status.metadata.evalLoss``                                     |
| ``training_metrics.perplexity``    | ``exp(evalLoss)``                                                  |

``epoch``: the Trainer's epoch is fractional (``0.75`` is three quarters into the first epoch); Llama
Stack's is an integer, the 0-based index of the epoch being trained when the checkpoint was saved
(``0`` for ``0.75`` and for the end of the first epoch, ``1.0``), as its own torchtune recipe numbers
them. A record without an epoch says ``0``.

``training_metrics`` is optional and all-or-nothing: it is present only when the training loss, the
validation loss and a finite perplexity are all known (no eval, a NaN loss, or ``exp`` overflowing
leaves it out rather than sending ``0``).

A Llama Stack ``Checkpoint`` has no status: :func:`job_artifacts` lists only the checkpoints that are
``available`` (a rotated-away ``deleted`` or a ``failed`` one has no files to point at), and a sink of
this format is not sent the ``deleted`` revision of a checkpoint (it renders the same).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from ..record import CheckpointRecord
from .base import WireFormat


def epoch_index(epoch: float | None) -> int:
    """The 0-based index of the epoch a fractional Trainer epoch is in (``1.0`` ends epoch ``0``)."""
    if epoch is None or not math.isfinite(epoch):
        return 0
    # Round away float noise (0.1 * 10 != 1.0) before ceil, so an epoch boundary stays a boundary.
    return max(math.ceil(round(epoch, 6)) - 1, 0)


def perplexity(loss: float) -> float | None:
    """``exp(loss)``, or None when it is not a finite number."""
    try:
        value = math.exp(loss)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


class LlamaStackFormat(WireFormat):
    name = "llama-stack"

    def training_metrics(self, record: CheckpointRecord) -> dict[str, Any] | None:
        training = record.training
        train_loss, validation_loss = training.train_loss, training.eval_loss
        if train_loss is None or validation_loss is None:
            return None
        if not (math.isfinite(train_loss) and math.isfinite(validation_loss)):
            return None
        value = perplexity(validation_loss)
        if value is None:
            return None
        return {
            "epoch": epoch_index(training.epoch),
            "train_loss": train_loss,
            "validation_loss": validation_loss,
            "perplexity": value,
        }

    def render(self, record: CheckpointRecord) -> dict[str, Any]:
        rendered: dict[str, Any] = {
            "identifier": record.id,
            "created_at": record.status.created_at,
            "epoch": epoch_index(record.training.epoch),
            "post_training_job_id": record.metadata.job_id,
            "path": record.spec.source_path or record.spec.directory,
        }
        metrics = self.training_metrics(record)
        if metrics is not None:
            rendered["training_metrics"] = metrics
        return rendered


def job_artifacts(
    job_id: str, records: Iterable[CheckpointRecord], include_unavailable: bool = False
) -> dict[str, Any]:
    """A job's checkpoints as a ``PostTrainingJobArtifactsResponse``, in step order.

    Only ``available`` checkpoints are listed unless ``include_unavailable``; a record of another job
    is a caller's mistake and raises ``ValueError``.
    """
    chosen = []
    for record in records:
        if record.metadata.job_id != job_id:
            raise ValueError(f"record {record.name!r} belongs to job {record.metadata.job_id}, not {job_id}")
        if include_unavailable or record.status.status == "available":
            chosen.append(record)
    chosen.sort(key=lambda record: (record.training.step, record.training.node))
    renderer = LlamaStackFormat()
    return {"job_uuid": job_id, "checkpoints": [renderer.render(record) for record in chosen]}
