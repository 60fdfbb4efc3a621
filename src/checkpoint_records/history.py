"""Reading the Trainer's ``log_history`` as of one step: the losses and metrics a record carries."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .values import JsonScalar, to_json_scalar, to_number

#: Bookkeeping keys of log entries, not metrics.
_NOT_METRICS = frozenset({"step", "epoch", "loss", "eval_loss"})


@dataclass(frozen=True)
class LoggedMetrics:
    train_loss: float | None = None
    eval_loss: float | None = None
    metrics: dict[str, JsonScalar] = field(default_factory=dict)
    #: Record field (``trainLoss``, ``evalLoss``, or a metric name) to the spelling of a NaN/inf value.
    non_finite: dict[str, str] = field(default_factory=dict)


def metrics_at_step(log_history: Iterable[Mapping[str, Any]], step: int) -> LoggedMetrics:
    """The last training loss at or before ``step``; the eval loss logged at ``step`` if there was one,
    else the latest before it; and the latest value of every other logged metric up to ``step``."""
    train_loss: Any = None
    eval_loss: Any = None
    eval_step = -1
    latest: dict[str, Any] = {}
    for entry in log_history:
        entry_step = _step_of(entry)
        if entry_step is None or entry_step > step:
            continue
        if "loss" in entry:
            train_loss = entry["loss"]
        if "eval_loss" in entry and entry_step >= eval_step:
            eval_loss, eval_step = entry["eval_loss"], entry_step
        for key, value in entry.items():
            if key not in _NOT_METRICS:
                latest[key] = value

    non_finite: dict[str, str] = {}
    train_number, spelling = to_number(train_loss)
    if spelling:
        non_finite["trainLoss"] = spelling
    eval_number, spelling = to_number(eval_loss)
    if spelling:
        non_finite["evalLoss"] = spelling
    metrics: dict[str, JsonScalar] = {}
    for key, value in sorted(latest.items()):
        metrics[key], spelling = to_json_scalar(value)
        if spelling:
            non_finite[key] = spelling
    return LoggedMetrics(
        train_loss=None if train_number is None else float(train_number),
        eval_loss=None if eval_number is None else float(eval_number),
        metrics=metrics,
        non_finite=non_finite,
    )


def _step_of(entry: Mapping[str, Any]) -> int | None:
    number, _ = to_number(entry.get("step"))
    return None if number is None else int(number)
