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
import time
from collections.abc import Mapping
from enum import Enum
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..record import CheckpointRecord
from ..values import to_json_scalar, to_number
from .base import WireFormat

if TYPE_CHECKING:
    from transformers import TrainerState, TrainingArguments

JobStatus = Literal["Pending", "Running", "Testing", "Success", "Failed", "TimedOut", "Cancelled"]
TrainingTechnique = Literal["SFT", "GRPO"]
TaskType = Literal["text-generation", "classification", "embedding", "regression"]
BaseModelOption = Literal["pre-trained", "fine-tuned"]

#: ``TrainingArguments`` fields reported as hyper-parameters when the installed version has them.
_ARGUMENTS = (
    "learning_rate",
    "num_train_epochs",
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "warmup_steps",
    "warmup_ratio",
    "weight_decay",
    "lr_scheduler_type",
    "optim",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "label_smoothing_factor",
    "seed",
    "bf16",
    "fp16",
    "gradient_checkpointing",
    # TRL's SFTConfig / GRPOConfig
    "max_length",
    "max_seq_length",
    "packing",
    "num_generations",
    "max_prompt_length",
    "max_completion_length",
    "temperature",
    "beta",
    "loss_type",
    "reward_weights",
)

#: LoRA (and other PEFT) settings reported, as ``lora_<name>`` except ``peft_type``.
_PEFT_FIELDS = ("r", "lora_alpha", "lora_dropout", "target_modules")


class _Snapshot(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LossPoint(_Snapshot):
    step: int = Field(ge=0)
    loss: float = Field(allow_inf_nan=False)
    #: Unix seconds when the loss was logged.
    timestamp: float


class JobSnapshot(_Snapshot):
    """What a job looks like at one moment: everything ``TrainingJobDetail`` needs, nothing live."""

    id: str = Field(min_length=1)
    name: str
    status: JobStatus
    global_step: int = Field(default=0, ge=0)
    #: The planned number of optimisation steps; 0 when not known yet.
    max_steps: int = Field(default=0, ge=0)
    training_loss: list[LossPoint] = Field(default_factory=list)
    hyper_parameters: dict[str, Any] = Field(default_factory=dict)
    base_model: str = ""
    training_technique: TrainingTechnique = "SFT"
    task_type: TaskType = "text-generation"
    base_model_option: BaseModelOption = "pre-trained"
    base_fine_tuned_model: str | None = None
    base_fine_tuned_model_checkpoint: int | None = None
    created_by: str = ""
    #: Unix seconds.
    created_at: float
    updated_at: float


def progress(snapshot: JobSnapshot) -> float:
    """Percent done: global step over max steps, clamped to [0, 100]; 100 once the job succeeded."""
    if snapshot.status == "Success":
        return 100
    if snapshot.max_steps <= 0:
        return 0
    value = round(100 * snapshot.global_step / snapshot.max_steps, 2)
    return min(max(value, 0), 100)


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
        return render_job(JobSnapshot.model_validate_json(body))


# --- building a snapshot from a live Trainer ---------------------------------------------------


def technique_for(trainer: str | type[Any]) -> TrainingTechnique:
    """``GRPO`` for TRL's ``GRPOTrainer`` (by class name, or any base class's name), else ``SFT``."""
    names = [cls.__name__ for cls in trainer.__mro__] if isinstance(trainer, type) else [trainer]
    return "GRPO" if any(name.startswith("GRPO") for name in names) else "SFT"


def _unwrap(model: Any) -> Any:
    """The transformers model under a PEFT wrapper (``get_base_model``), else the model itself."""
    get_base_model = getattr(model, "get_base_model", None)
    if callable(get_base_model):
        try:
            return get_base_model()
        except Exception:
            return model
    return model


def task_type_for(model: Any) -> TaskType:
    """The task a model's head trains for, from its class name; ``text-generation`` when unsure."""
    if model is None:
        return "text-generation"
    inner = _unwrap(model)
    name = type(inner).__name__
    config = getattr(inner, "config", None)
    if "Classification" in name:
        problem = getattr(config, "problem_type", None)
        if problem == "regression" or (problem is None and getattr(config, "num_labels", 2) == 1):
            return "regression"
        return "classification"
    if name.endswith("Model") and not name.endswith("LMHeadModel") and hasattr(inner, "config"):
        return "embedding"
    return "text-generation"


def _json_value(value: Any) -> Any:
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else list(value)
        return [_json_value(item) for item in items]
    scalar, spelling = to_json_scalar(value)
    return spelling if spelling else scalar


def hyper_parameters_from(
    args: TrainingArguments, trainer: str | type[Any], model: Any = None
) -> dict[str, Any]:
    """The training arguments that shape training, TRL and LoRA settings when present, the trainer."""
    found: dict[str, Any] = {}
    for field in _ARGUMENTS:
        if hasattr(args, field):
            value = getattr(args, field)
            if value is not None:
                found[field] = _json_value(value)
    max_steps = getattr(args, "max_steps", None)
    if isinstance(max_steps, int) and max_steps > 0:
        found["max_steps"] = max_steps
    world_size = getattr(args, "world_size", 1) or 1
    found["total_train_batch_size"] = (
        args.per_device_train_batch_size * args.gradient_accumulation_steps * world_size
    )
    peft_config = getattr(model, "peft_config", None)
    if isinstance(peft_config, Mapping) and peft_config:
        adapter = peft_config.get("default") or next(iter(peft_config.values()))
        peft_type = getattr(adapter, "peft_type", None)
        if peft_type is not None:
            found["peft_type"] = _json_value(peft_type)
        for field in _PEFT_FIELDS:
            value = getattr(adapter, field, None)
            if value is not None:
                found[field if field.startswith("lora_") else f"lora_{field}"] = _json_value(value)
    found["trainer"] = trainer if isinstance(trainer, str) else trainer.__name__
    return dict(sorted(found.items()))


def losses_from(log_history: list[dict[str, Any]], log_times: Mapping[int, float] | None) -> list[LossPoint]:
    """Every finite training ``loss`` of ``log_history`` whose log time is known, in log order."""
    times = log_times or {}
    points = []
    for entry in log_history:
        if "loss" not in entry:
            continue
        step, _ = to_number(entry.get("step"))
        loss, _ = to_number(entry["loss"])
        if step is None or loss is None:
            continue
        when = times.get(int(step))
        if when is not None:
            points.append(LossPoint(step=int(step), loss=float(loss), timestamp=when))
    return points


def job_snapshot_from_trainer(
    args: TrainingArguments,
    state: TrainerState,
    trainer_class_name: str | type[Any],
    status: JobStatus,
    base_model: str | None,
    *,
    job_id: str,
    job_name: str,
    created_at: float,
    updated_at: float | None = None,
    log_times: Mapping[int, float] | None = None,
    model: Any = None,
    created_by: str = "",
    task_type: TaskType | None = None,
    training_technique: TrainingTechnique | None = None,
    base_fine_tuned_model: str | None = None,
    base_fine_tuned_model_checkpoint: int | None = None,
) -> JobSnapshot:
    """A :class:`JobSnapshot` from the Trainer's arguments and state. Pure: reads, never changes them.

    ``trainer_class_name`` is the trainer's class or its name (``type(trainer)`` lets a subclass of
    ``GRPOTrainer`` be told apart); ``model`` (optional) gives the task type and LoRA settings;
    ``log_times`` maps a logged step to the Unix time it was logged.
    """
    fine_tuned = base_fine_tuned_model is not None
    return JobSnapshot(
        id=job_id,
        name=job_name,
        status=status,
        global_step=max(int(state.global_step or 0), 0),
        max_steps=max(int(state.max_steps or 0), 0),
        training_loss=losses_from(list(state.log_history or []), log_times),
        hyper_parameters=hyper_parameters_from(args, trainer_class_name, model),
        base_model=base_model or "",
        training_technique=training_technique or technique_for(trainer_class_name),
        task_type=task_type or task_type_for(model),
        base_model_option="fine-tuned" if fine_tuned else "pre-trained",
        base_fine_tuned_model=base_fine_tuned_model,
        base_fine_tuned_model_checkpoint=base_fine_tuned_model_checkpoint if fine_tuned else None,
        created_by=created_by,
        created_at=created_at,
        updated_at=time.time() if updated_at is None else updated_at,
    )
