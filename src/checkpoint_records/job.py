"""The job: one home for what a training job is, whatever reports it.

A job has an identity (:class:`JobIdentity`: a deterministic id and a name), and a state at each moment
(:class:`JobSnapshot`: status, progress, a bounded loss series, hyper-parameters), built from the Trainer's
arguments by :func:`job_snapshot`. The store keeps the latest snapshot of every job (``jobs`` table), the
recorder updates it from its background thread (begin, each save, end), :mod:`.lifecycle` catches the end
of a job that did not finish, and ``formats/training_job.py`` renders a snapshot as ``TrainingJobDetail``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .history import LogEntry, downsample
from .validation import (
    MAX_DEPTH,
    TOO_DEEP,
    Count,
    Int64,
    JsonObject,
    UnixTime,
    bounded,
    escape_text,
    read_stored,
)
from .values import to_json_scalar, to_number

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


#: Most points a job document's ``training_loss`` carries, however long the run (see ``history.downsample``).
MAX_LOSS_POINTS = 500


@dataclass(frozen=True)
class JobIdentity:
    """Who a job is: its deterministic id (``identity.job_id_for``) and its display name (valid text:
    a name taken from a directory that is not UTF-8 has backslash escapes)."""

    id: str
    name: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", escape_text(self.name))


class _Snapshot(BaseModel):
    #: What a document may hold is said by the field types (``validation.py``): finite numbers only.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class LossPoint(_Snapshot):
    step: Count
    loss: float
    #: Unix seconds when the loss was logged.
    timestamp: UnixTime


class JobSnapshot(_Snapshot):
    """What a job looks like at one moment: everything ``TrainingJobDetail`` needs, nothing live."""

    id: str = Field(min_length=1)
    name: str
    status: JobStatus
    global_step: Count = 0
    #: The planned number of optimisation steps; 0 when not known yet.
    max_steps: Count = 0
    #: The epochs the run goes through as the Trainer counts them (from ``max_steps`` when that is set,
    #: not the ``num_train_epochs`` argument it overrides); 0 when not known.
    num_train_epochs: Count = 0
    training_loss: list[LossPoint] = Field(default_factory=list)
    hyper_parameters: JsonObject = Field(default_factory=dict)
    base_model: str = ""
    training_technique: TrainingTechnique = "SFT"
    task_type: TaskType = "text-generation"
    base_model_option: BaseModelOption = "pre-trained"
    base_fine_tuned_model: str | None = None
    base_fine_tuned_model_checkpoint: Int64 | None = None
    created_by: str = ""
    #: Unix seconds.
    created_at: UnixTime
    updated_at: UnixTime
    #: The run's output directory: where recovery looks for checkpoints that have no record yet.
    directory: str = ""

    @classmethod
    def from_json(cls, text: str) -> JobSnapshot:
        """The snapshot a stored body holds, repaired if an older release stored values this one refuses
        (:func:`~.validation.read_stored`); :class:`~.validation.InvalidValue` when it cannot be."""
        return read_stored(cls, text)[0]


#: ``kind`` of a job document in the canonical ``record`` format.
JOB_KIND = "TrainingJob"


class JobDocument(JobSnapshot):
    """A job as the canonical format sends it: the snapshot as the store keeps it, every field (the loss
    points with their steps), said to be a job by ``kind``."""

    kind: Literal["TrainingJob"]


def job_document(snapshot: JobSnapshot) -> dict[str, Any]:
    """The :class:`JobDocument` of ``snapshot``, as JSON."""
    return {"kind": JOB_KIND, **snapshot.model_dump(mode="json")}


def job_from_document(data: Any) -> JobSnapshot:
    """The snapshot a :class:`JobDocument` carries; raises pydantic's ``ValidationError`` naming the field."""
    document = JobDocument.model_validate(data)
    return JobSnapshot.model_validate(document.model_dump(exclude={"kind"}))


def progress(snapshot: JobSnapshot) -> float:
    """Percent done: global step over max steps, clamped to [0, 100]; 100 once the job succeeded."""
    if snapshot.status == "Success":
        return 100
    if snapshot.max_steps <= 0:
        return 0
    value = round(100 * snapshot.global_step / snapshot.max_steps, 2)
    return min(max(value, 0), 100)


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


def _json_value(value: Any, depth: int = 1) -> Any:
    """A hyper-parameter as JSON: enums by value, sets sorted, lists nested at most ``MAX_DEPTH`` deep."""
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, (list, tuple, set, frozenset)):
        if depth > MAX_DEPTH:
            return TOO_DEEP
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else list(value)
        return [_json_value(item, depth + 1) for item in items]
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
    return bounded(dict(sorted(found.items())))  # text escaped, ints beyond 64 bits as floats


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


def planned_epochs(state: TrainerState) -> int:
    """The epochs the Trainer runs, as it counted them at the start (from ``max_steps`` when set); 0 when
    it does not know (an iterable dataset with ``max_steps`` makes it ``sys.maxsize``)."""
    epochs = int(getattr(state, "num_train_epochs", 0) or 0)
    return epochs if 0 < epochs < sys.maxsize else 0


def job_snapshot_from_trainer(
    args: TrainingArguments,
    state: TrainerState,
    trainer_class_name: str | type[Any],
    status: JobStatus,
    base_model: str | None,
    *,
    log_times: Mapping[int, float] | None = None,
    **details: Any,
) -> JobSnapshot:
    """A :class:`JobSnapshot` from the Trainer's arguments and state. Pure: reads, never changes them.

    ``trainer_class_name`` is the trainer's class or its name (``type(trainer)`` lets a subclass of
    ``GRPOTrainer`` be told apart); ``log_times`` maps a logged step to the Unix time it was logged;
    ``details`` are :func:`job_snapshot`'s keyword arguments (``job_id``, ``job_name``, ``created_at``,
    ``model``...).
    """
    return job_snapshot(
        args,
        trainer_class_name,
        status,
        base_model,
        global_step=int(state.global_step or 0),
        max_steps=int(state.max_steps or 0),
        num_train_epochs=planned_epochs(state),
        training_loss=losses_from(list(state.log_history or []), log_times),
        **details,
    )


def job_snapshot(
    args: TrainingArguments | None,
    trainer_class_name: str | type[Any],
    status: JobStatus,
    base_model: str | None,
    *,
    job_id: str,
    job_name: str,
    created_at: float,
    updated_at: float | None = None,
    global_step: int = 0,
    max_steps: int = 0,
    num_train_epochs: int = 0,
    training_loss: Iterable[LossPoint] = (),
    model: Any = None,
    directory: str = "",
    created_by: str = "",
    task_type: TaskType | None = None,
    training_technique: TrainingTechnique | None = None,
    base_fine_tuned_model: str | None = None,
    base_fine_tuned_model_checkpoint: int | None = None,
) -> JobSnapshot:
    """A :class:`JobSnapshot` from what is known of a job; ``args`` None for a loop without a Trainer."""
    fine_tuned = base_fine_tuned_model is not None
    return JobSnapshot(
        id=job_id,
        name=job_name,
        status=status,
        global_step=max(global_step, 0),
        max_steps=max(max_steps, 0),
        num_train_epochs=max(num_train_epochs, 0),
        training_loss=list(training_loss),
        hyper_parameters={} if args is None else hyper_parameters_from(args, trainer_class_name, model),
        base_model=base_model or "",
        training_technique=training_technique or technique_for(trainer_class_name),
        task_type=task_type or task_type_for(model),
        base_model_option="fine-tuned" if fine_tuned else "pre-trained",
        base_fine_tuned_model=base_fine_tuned_model,
        base_fine_tuned_model_checkpoint=base_fine_tuned_model_checkpoint if fine_tuned else None,
        created_by=created_by,
        created_at=created_at,
        updated_at=time.time() if updated_at is None else updated_at,
        directory=directory,
    )


class LossSeries:
    """A job document's ``training_loss``: bounded whatever the run's length, at a cost per save that
    does not grow with it.

    Points are appended as saves hand over new log entries (a point at or past a new one's step is
    dropped first: a resumed run logs those steps again). Past ``2 * MAX_LOSS_POINTS`` points the series
    is cut back to ``MAX_LOSS_POINTS`` by :func:`~.history.downsample` (first and last point, the minimum
    and maximum, the checkpoints' steps, then the lowest and highest of equal runs), so each point is
    handled a bounded number of times on average.
    """

    def __init__(self, points: Iterable[LossPoint] = ()) -> None:
        self.points = list(points)
        self._checkpoints: set[int] = set()

    def add(self, entries: Iterable[LogEntry], checkpoint_step: int | None = None) -> None:
        for entry in entries:
            loss = entry.loss
            if loss is None or entry.logged_at is None:
                continue
            while self.points and self.points[-1].step >= entry.step:
                self.points.pop()
            self.points.append(LossPoint(step=entry.step, loss=loss, timestamp=entry.logged_at))
        if checkpoint_step is not None:
            self._checkpoints.add(checkpoint_step)
        if len(self.points) > 2 * MAX_LOSS_POINTS:
            kept = downsample(
                [point.step for point in self.points],
                [point.loss for point in self.points],
                MAX_LOSS_POINTS,
                self._checkpoints,
            )
            self.points = [self.points[index] for index in kept]

    def bounded(self) -> list[LossPoint]:
        """The series as a document carries it: at most ``MAX_LOSS_POINTS`` points."""
        if len(self.points) <= MAX_LOSS_POINTS:
            return list(self.points)
        steps = [point.step for point in self.points]
        kept = downsample(steps, [point.loss for point in self.points], MAX_LOSS_POINTS, self._checkpoints)
        return [self.points[index] for index in kept]


def progressed(snapshot: JobSnapshot, status: JobStatus, **changes: Any) -> JobSnapshot:
    """``snapshot`` with a new status (and other fields), updated now."""
    return snapshot.model_copy(update={"status": status, "updated_at": time.time(), **changes})


def trainer_class_name(args: Any) -> str:
    """The trainer's class name as its arguments tell it: TRL's ``GRPOConfig`` means ``GRPOTrainer``."""
    name = type(args).__name__
    return name[: -len("Config")] + "Trainer" if name.endswith("Config") else "Trainer"
