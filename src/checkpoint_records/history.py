"""Reading the Trainer's ``log_history``: the losses and metrics a record carries, and the job's series.

``log_history`` grows by one entry per log for the whole run (100,000 entries with ``logging_steps=1``
over 100,000 steps), so nothing here re-reads it whole at a save: :class:`LogAccumulator` takes the new
entries since the last save and keeps only the latest value of each field, and the series a job document
or a page shows is cut to a bounded number of points by :func:`downsample`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .validation import INT64_MAX, escape_text
from .values import JsonScalar, to_json_scalar, to_number

#: Bookkeeping keys of log entries, not metrics.
_NOT_METRICS = frozenset({"step", "epoch", "loss", "eval_loss"})


@dataclass(frozen=True)
class LoggedMetrics:
    train_loss: float | None = None
    eval_loss: float | None = None
    #: The logged metric ``eval_loss`` is: ``eval_loss``, or one eval set's (``eval_<set>_loss``).
    eval_loss_metric: str | None = None
    metrics: dict[str, JsonScalar] = field(default_factory=dict)
    #: Record field (``trainLoss``, ``evalLoss``, or a metric name) to the spelling of a NaN/inf value.
    non_finite: dict[str, str] = field(default_factory=dict)
    #: The step each loss was logged at (a record's ``trainLoss`` may come from an earlier step).
    train_loss_step: int | None = None
    eval_loss_step: int | None = None


def selected_loss(metric_for_best_model: str | None) -> str | None:
    """The eval loss a run selects checkpoints by, as logged (``eval_...``): ``metric_for_best_model``
    when it is a loss; None otherwise (then the first eval set's loss is taken)."""
    if not metric_for_best_model:
        return None
    metric = metric_for_best_model
    if not metric.startswith("eval_"):
        metric = f"eval_{metric}"  # as the Trainer looks it up
    return metric if metric.endswith("loss") else None


def is_eval_loss(key: str) -> bool:
    """``eval_loss``, or the loss of one of several eval sets (``eval_<set>_loss``)."""
    return key == "eval_loss" or (key.startswith("eval_") and key.endswith("_loss"))


class LogAccumulator:
    """The latest losses and metrics of a log, fed incrementally: constant memory, constant cost per entry.

    The train loss is the last one logged; the eval loss the one of the highest step (an evaluation at the
    save's own step wins over an older one); every other field keeps its latest value. The eval loss is
    the one the run selects by (``loss_metric``, see :func:`selected_loss`), else ``eval_loss``, else, with
    several eval sets (``eval_<set>_loss``), the first set's: the first such loss in the log.
    """

    def __init__(self, loss_metric: str | None = None) -> None:
        self._train: tuple[Any, int | None] = (None, None)
        self._eval: tuple[Any, int] = (None, -1)
        self._eval_metric = loss_metric
        self._latest: dict[str, Any] = {}

    def add(self, entries: Iterable[Mapping[str, Any]], up_to_step: int | None = None) -> None:
        """Take ``entries`` in log order (those after ``up_to_step`` are skipped)."""
        for entry in entries:
            entry_step = step_of(entry)
            if entry_step is None or (up_to_step is not None and entry_step > up_to_step):
                continue
            if "loss" in entry:
                self._train = (entry["loss"], entry_step)
            if self._eval_metric is None:
                self._eval_metric = next((key for key in entry if is_eval_loss(key)), None)
            metric = self._eval_metric
            if metric is not None and metric in entry and entry_step >= self._eval[1]:
                self._eval = (entry[metric], entry_step)
            for key, value in entry.items():
                if key not in _NOT_METRICS:
                    self._latest[key] = value

    def metrics(self) -> LoggedMetrics:
        """What a record says about the log so far: JSON-safe numbers, non-finite values named."""
        non_finite: dict[str, str] = {}
        train_number, spelling = to_number(self._train[0])
        if spelling:
            non_finite["trainLoss"] = spelling
        eval_number, spelling = to_number(self._eval[0])
        if spelling:
            non_finite["evalLoss"] = spelling
        metrics: dict[str, JsonScalar] = {}
        for key, value in sorted(self._latest.items()):
            name = escape_text(str(key))  # a metric named after a file whose name is not UTF-8
            metrics[name], spelling = to_json_scalar(value)
            if spelling:
                non_finite[name] = spelling
        known_train = self._train[0] is not None
        known_eval = self._eval[0] is not None
        return LoggedMetrics(
            train_loss=None if train_number is None else float(train_number),
            eval_loss=None if eval_number is None else float(eval_number),
            eval_loss_metric=self._eval_metric if known_eval else None,
            metrics=metrics,
            non_finite=non_finite,
            train_loss_step=self._train[1] if known_train else None,
            eval_loss_step=self._eval[1] if known_eval else None,
        )


def metrics_at_step(
    log_history: Iterable[Mapping[str, Any]], step: int, loss_metric: str | None = None
) -> LoggedMetrics:
    """The last training loss at or before ``step``; the eval loss (``loss_metric``, as
    :class:`LogAccumulator` chooses) logged at ``step`` if there was one, else the latest before it; and the
    latest value of every other logged metric up to ``step``."""
    accumulator = LogAccumulator(loss_metric)
    accumulator.add(log_history, up_to_step=step)
    return accumulator.metrics()


def step_of(entry: Mapping[str, Any]) -> int | None:
    """The entry's step: an integer from 0 to 2^63 - 1 (a store holds no other), else None."""
    number, _ = to_number(entry.get("step"))
    if number is None or not 0 <= number <= INT64_MAX:
        return None
    return int(number)


@dataclass(frozen=True)
class LogEntry:
    """One ``log_history`` entry as the store keeps it: position in the log, step, JSON-safe values."""

    #: Index of the entry in the run's ``log_history`` (a resumed run's log restarts from its checkpoint's).
    seq: int
    step: int
    values: dict[str, JsonScalar]
    #: Unix seconds when it was logged, when known (``log_history`` itself keeps no time).
    logged_at: float | None = None

    @property
    def loss(self) -> float | None:
        return _finite(self.values.get("loss"))

    @property
    def eval_loss(self) -> float | None:
        return _finite(self.values.get("eval_loss"))

    def body(self) -> str:
        return json.dumps(self.values, sort_keys=True, separators=(",", ":"), allow_nan=False)


def log_entry(seq: int, entry: Mapping[str, Any], logged_at: float | None = None) -> LogEntry | None:
    """The stored form of ``entry`` (None when it has no step): non-finite values become ``null``."""
    step = step_of(entry)
    if step is None:
        return None
    values = {escape_text(str(key)): to_json_scalar(value)[0] for key, value in entry.items()}
    values["step"] = step
    return LogEntry(seq=seq, step=step, values=values, logged_at=logged_at)


def _finite(value: JsonScalar) -> float | None:
    number, _ = to_number(value)
    return None if number is None else float(number)


def downsample(
    steps: Sequence[int],
    values: Sequence[float | None],
    max_points: int | None,
    keep_steps: Iterable[int] = (),
) -> list[int]:
    """Indices of at most ``max_points`` points of a series that still show its shape, in order.

    Always kept: the first and last point, the points at ``keep_steps`` (the checkpoints' steps) and the
    series' minimum and maximum. The rest of the budget goes to an even min/max cut: the series is split
    into equal runs of points and each run keeps its lowest and highest value (so a spike survives,
    unlike with every n-th point). When the always-kept points alone exceed the budget, an even choice of
    them is kept, with the first, last and extremes.
    """
    count = len(steps)
    if max_points is None or count <= max_points:
        return list(range(count))
    if max_points <= 0:
        return []
    known = [index for index in range(count) if values[index] is not None]
    extremes = set()
    if known:
        extremes = {
            min(known, key=lambda index: values[index]),  # type: ignore[arg-type,return-value]
            max(known, key=lambda index: values[index]),  # type: ignore[arg-type,return-value]
        }
    essential = sorted({0, count - 1} | extremes)
    wanted = set(keep_steps)
    pinned = [index for index in range(count) if steps[index] in wanted and index not in extremes]
    kept = set(essential)
    room = max_points - len(kept)
    if room <= 0:
        return essential[:max_points]
    if len(pinned) > room:
        return sorted(kept | set(_even(pinned, room)))
    kept.update(pinned)
    room = max_points - len(kept)
    buckets = room // 2
    if buckets > 0:
        size = count / buckets
        for bucket in range(buckets):
            run = range(int(bucket * size), min(int((bucket + 1) * size), count))
            in_run = [index for index in run if values[index] is not None] or list(run)[:1]
            if in_run:
                kept.add(min(in_run, key=lambda index: values[index] or 0.0))
                kept.add(max(in_run, key=lambda index: values[index] or 0.0))
    return sorted(kept)  # at most len(kept) + 2 * buckets <= max_points


def _even(indices: Sequence[int], count: int) -> list[int]:
    """``count`` of ``indices``, evenly spread."""
    if count <= 0:
        return []
    if count >= len(indices):
        return list(indices)
    stride = len(indices) / count
    return [indices[int(position * stride)] for position in range(count)]
