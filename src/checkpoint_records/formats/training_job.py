"""The job-level ``TrainingJobDetail``: rendered from a :class:`JobSnapshot`, not from one checkpoint.

A checkpoint record does not know the job's status, its planned length or its hyper-parameters, so this
format renders a small, pure snapshot of the job. :func:`job_snapshot_from_trainer` builds one from the
Trainer's own ``TrainingArguments`` and ``TrainerState``; :func:`render_job` turns it into the wire
object. ``TrainingJobFormat`` is registered as ``training-job`` with the other formats; its
``render(record)`` raises ``TypeError`` (a record is not a job), ``render_job(snapshot)`` is the one to use.

| TrainingJobDetail field   | from                                                                          |
|---------------------------|-------------------------------------------------------------------------------|
| ``id``                    | the job id (the ``metadata.jobId`` of the job's records)                      |
| ``name``                  | the job name (``metadata.jobName``)                                           |
| ``training_technique``    | ``GRPO`` when the trainer class (or a base class) is TRL's ``GRPOTrainer``, else ``SFT`` |
| ``task_type``             | from the model's class: ``...ForSequenceClassification`` etc. → ``classification`` (``regression`` when ``problem_type`` says so or there is one label), a bare encoder → ``embedding``, otherwise ``text-generation`` |
| ``base_model_option``     | ``fine-tuned`` when a fine-tuned base is named, else ``pre-trained``          |
| ``base_model``            | the base model (a PEFT adapter's base, else the model's ``name_or_path``)     |
| ``base_fine_tuned_model`` / ``base_fine_tuned_model_checkpoint`` | only when ``fine-tuned``: as given by the caller |
| ``status``                | as given: ``Running`` while training, ``Success``, ``Failed``, ``Cancelled``...|
| ``progress``              | ``100 * global_step / max_steps`` in [0, 100], 2 decimals; ``100`` on ``Success`` (early stopping ends a job short of ``max_steps``); ``0`` when ``max_steps`` is unknown |
| ``training_loss``         | ``[{timestamp, loss}]``: every finite ``loss`` in ``log_history`` whose log time is known (Unix seconds) |
| ``hyper_parameters``      | the ``TrainingArguments`` that shape training (learning rate, epochs, max steps, batch sizes, total batch size, gradient accumulation, warmup, weight decay, scheduler, optimiser, seed, precision...), TRL config fields when present, LoRA settings of a PEFT model, and ``trainer`` (the trainer class name) |
| ``created_by``            | as given (``""`` when unknown)                                                |
| ``created_at``/``updated_at`` | Unix seconds                                                              |

Not produced: ``train_dataset``/``test_dataset`` (the Trainer has no dataset ids), ``test_functions``
and ``reward``.

Decisions. The technique enum has only ``SFT`` and ``GRPO``: a plain ``Trainer`` (or ``SFTTrainer``)
minimising a supervised loss on labelled data *is* supervised fine-tuning, so ``SFT`` is the default;
other trainers (DPO, PPO, ...) are reported as ``SFT`` too, for want of a value, and the real class is
kept in ``hyper_parameters["trainer"]``; pass ``training_technique=`` to override. ``log_history`` holds
no times: a loss point gets the time the caller saw it logged (``log_times``: step to Unix seconds, e.g.
stamped in ``on_log``); points with no known time (from before a resume, say) are left out rather than
given an invented one.
"""

from __future__ import annotations

import math
from typing import Any

from ..job import (
    JobSnapshot,
    JobStatus,
    LossPoint,
    job_snapshot_from_trainer,
    progress,
    task_type_for,
    technique_for,
)
from ..record import CheckpointRecord
from .base import WireFormat

#: The job model lives in :mod:`checkpoint_records.job`; these names stay importable from here.
__all__ = [
    "JobSnapshot",
    "JobStatus",
    "LossPoint",
    "TrainingJobFormat",
    "job_snapshot_from_trainer",
    "progress",
    "render_job",
    "task_type_for",
    "technique_for",
]


def render_job(snapshot: JobSnapshot) -> dict[str, Any]:
    """The ``TrainingJobDetail`` of ``snapshot``."""
    detail: dict[str, Any] = {
        "id": snapshot.id,
        "name": snapshot.name,
        "training_technique": snapshot.training_technique,
        "task_type": snapshot.task_type,
        "base_model_option": snapshot.base_model_option,
        "base_model": snapshot.base_model,
    }
    if snapshot.base_model_option == "fine-tuned":
        detail["base_fine_tuned_model"] = snapshot.base_fine_tuned_model
        detail["base_fine_tuned_model_checkpoint"] = snapshot.base_fine_tuned_model_checkpoint
    detail.update(
        {
            "status": snapshot.status,
            "progress": progress(snapshot),
            "training_loss": [
                {"timestamp": math.floor(point.timestamp), "loss": point.loss}
                for point in snapshot.training_loss
            ],
            "hyper_parameters": dict(snapshot.hyper_parameters),
            "created_by": snapshot.created_by,
            "created_at": math.floor(snapshot.created_at),
            "updated_at": math.floor(snapshot.updated_at),
        }
    )
    return detail


class TrainingJobFormat(WireFormat):
    """``training-job``: renders :class:`JobSnapshot` objects (job events), never single records."""

    name = "training-job"
    renders_records = False
    renders_jobs = True

    def render(self, record: CheckpointRecord) -> dict[str, Any]:
        raise TypeError(
            "the training-job format renders jobs, not checkpoint records: "
            "use render_job(JobSnapshot), e.g. from job_snapshot_from_trainer(...)"
        )

    def render_job(self, snapshot: JobSnapshot) -> dict[str, Any]:
        return render_job(snapshot)

    def render_stored(self, body: str) -> dict[str, Any]:
        return render_job(JobSnapshot.from_json(body))
