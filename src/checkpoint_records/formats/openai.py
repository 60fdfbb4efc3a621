"""OpenAI: the ``fine_tuning.job.checkpoint`` object.

| OpenAI field                           | from the canonical record                                               |
|----------------------------------------|-------------------------------------------------------------------------|
| ``object``                             | ``"fine_tuning.job.checkpoint"``                                         |
| ``id``                                 | ``ftckpt_`` + 24 base62 characters of SHA-256(record id): deterministic  |
| ``created_at``                         | ``status.createdAt`` as Unix seconds                                     |
| ``fine_tuning_job_id``                 | ``ftjob-`` + 24 base62 characters of SHA-256(job id): deterministic      |
| ``fine_tuned_model_checkpoint``        | ``ft:<model>:<org>:<suffix>:<8 base62 of the job id>:ckpt-step-<step>``  |
| ``step_number``                        | ``status.metadata.step``                                                 |
| ``metrics.step``                       | ``status.metadata.step``                                                 |
| ``metrics.train_loss``                 | ``status.metadata.trainLoss``                                            |
| ``metrics.train_mean_token_accuracy``  | logged ``mean_token_accuracy`` (TRL's SFTTrainer)                        |
| ``metrics.valid_loss``                 | ``status.metadata.evalLoss`` (the Trainer evaluates the whole eval set)  |
| ``metrics.full_valid_loss``            | ``status.metadata.evalLoss``                                             |
| ``metrics.valid_mean_token_accuracy``  | logged ``eval_mean_token_accuracy``                                      |
| ``metrics.full_valid_mean_token_accuracy`` | logged ``eval_mean_token_accuracy``                                  |

An evaluator's result (``checkpoint-records evaluate``) fills the fields it matches: a metric named
``loss``, ``eval_loss``, ``valid_loss`` or ``full_valid_loss`` (its last ``/`` part: ``task/loss``) is
``full_valid_loss``, one named ``mean_token_accuracy`` (or ``eval_``/``valid_``/``full_valid_`` of it) is
``full_valid_mean_token_accuracy``: an evaluation over a whole validation set, which OpenAI reports
under ``full_valid_*``. It takes the place of the Trainer's value there (``valid_*`` keep the Trainer's);
with several evaluators, the first by name that reports it. The object has no field for any other metric.

A metric the run did not log, or logged as NaN/infinity, is left out of ``metrics``: never ``0``.
The object has no status: a checkpoint rotated away (``deleted``) renders the same and is not sent again.

The ids are derived, not OpenAI's own: the same record always renders the same ``id``, and every
checkpoint of one job (resumed runs included) shares ``fine_tuning_job_id`` and the model id segment.
The canonical UUIDs stay in the ``record`` format. ``<model>`` is the base model; an unknown one is
empty (``ft::personal:...``), the one rule of every format (the record's and FlexAI's ``model: ""``,
the TrainingJobDetail's ``base_model: ""``), never a made-up name such as ``unknown``. ``<org>`` defaults to ``personal`` (what OpenAI writes for accounts without an
organisation) and ``<suffix>`` to the job name; both are constructor arguments. Colons, which separate
the name's parts, and other characters outside ``[A-Za-z0-9._/-]`` become ``-``.
"""

from __future__ import annotations

import hashlib
import math
import re
import string
from datetime import datetime, timezone
from typing import Any

from ..record import CheckpointRecord
from .base import WireFormat

_BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase

#: OpenAI metric name to the logged metric it comes from (besides the losses, taken from the record).
_ACCURACY_METRICS = (
    ("train_mean_token_accuracy", "mean_token_accuracy"),
    ("valid_mean_token_accuracy", "eval_mean_token_accuracy"),
    ("full_valid_mean_token_accuracy", "eval_mean_token_accuracy"),
)

#: OpenAI metric name to the evaluator metric names it takes (the last ``/`` part of an evaluator's name).
_EVALUATION_METRICS = (
    ("full_valid_loss", ("loss", "eval_loss", "valid_loss", "full_valid_loss")),
    (
        "full_valid_mean_token_accuracy",
        (
            "mean_token_accuracy",
            "eval_mean_token_accuracy",
            "valid_mean_token_accuracy",
            "full_valid_mean_token_accuracy",
        ),
    ),
)

DEFAULT_ORG = "personal"
SUFFIX_MAX_LENGTH = 64


def base62_digest(text: str, length: int) -> str:
    """``length`` base62 characters deterministically derived from ``text`` (SHA-256)."""
    number = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest(), "big")
    characters = []
    for _ in range(length):
        number, remainder = divmod(number, 62)
        characters.append(_BASE62[remainder])
    return "".join(characters)


def unix_seconds(timestamp: str) -> int:
    """An ISO 8601 timestamp (``...Z`` or with an offset; naive means UTC) as whole Unix seconds."""
    parsed = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return math.floor(parsed.timestamp())


def checkpoint_id(record_id: str) -> str:
    return "ftckpt_" + base62_digest(f"checkpoint:{record_id}", 24)


def fine_tuning_job_id(job_id: str) -> str:
    return "ftjob-" + base62_digest(f"job:{job_id}", 24)


def _name_part(text: str, allowed: str = r"A-Za-z0-9._/-") -> str:
    return re.sub(rf"[^{allowed}]+", "-", text).strip("-")


def sanitize_suffix(text: str) -> str:
    """A job name as an OpenAI model-name suffix: ``[A-Za-z0-9_-]``, at most 64 characters."""
    return _name_part(text, r"A-Za-z0-9_-")[:SUFFIX_MAX_LENGTH].strip("-")


def _finite(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


def evaluated_metrics(record: CheckpointRecord) -> dict[str, float]:
    """The OpenAI metrics the record's evaluations report, from the first evaluator (by name) that has each."""
    found: dict[str, float] = {}
    for _, evaluation in sorted(record.status.evaluations.items()):
        if evaluation.state != "succeeded":
            continue
        by_last_part = {name.rsplit("/", 1)[-1]: value for name, value in sorted(evaluation.metrics.items())}
        for field, names in _EVALUATION_METRICS:
            value = next((by_last_part[name] for name in names if name in by_last_part), None)
            if field not in found and value is not None:
                found[field] = value
    return found


class OpenAIFormat(WireFormat):
    name = "openai"

    def __init__(self, org: str = DEFAULT_ORG, suffix: str | None = None) -> None:
        """``org`` and ``suffix`` name the checkpoint model; ``suffix=None`` uses the job name."""
        self.org = _name_part(org)
        self.suffix = None if suffix is None else sanitize_suffix(suffix)

    def model_checkpoint_name(self, record: CheckpointRecord) -> str:
        base = _name_part(record.training.model)  # unknown: empty, as in every format
        suffix = self.suffix if self.suffix is not None else sanitize_suffix(record.metadata.job_name)
        model_id = base62_digest(f"model:{record.metadata.job_id}", 8)
        return f"ft:{base}:{self.org}:{suffix}:{model_id}:ckpt-step-{record.training.step}"

    def metrics(self, record: CheckpointRecord) -> dict[str, float | int]:
        training = record.training
        metrics: dict[str, float | int] = {"step": training.step}
        if training.train_loss is not None and math.isfinite(training.train_loss):
            metrics["train_loss"] = training.train_loss
        if training.eval_loss is not None and math.isfinite(training.eval_loss):
            metrics["valid_loss"] = training.eval_loss
            metrics["full_valid_loss"] = training.eval_loss
        for name, logged in _ACCURACY_METRICS:
            value = _finite(training.metrics.get(logged))
            if value is not None:
                metrics[name] = value
        metrics.update(evaluated_metrics(record))
        return dict(sorted(metrics.items()))

    def render(self, record: CheckpointRecord) -> dict[str, Any]:
        return {
            "object": "fine_tuning.job.checkpoint",
            "id": checkpoint_id(record.id),
            "created_at": unix_seconds(record.status.created_at),
            "fine_tuning_job_id": fine_tuning_job_id(record.metadata.job_id),
            "fine_tuned_model_checkpoint": self.model_checkpoint_name(record),
            "step_number": record.training.step,
            "metrics": self.metrics(record),
        }
