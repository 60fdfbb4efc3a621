"""Terminal output for people (the CLI): YAML with human sizes, tables, delivery states, progress.

Not a wire format: what a platform receives is rendered by ``formats/``.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TextIO

import yaml
from tqdm import tqdm

from .evaluation.results import headline
from .record import CheckpointRecord
from .store import Delivery, DeliveryState
from .words import plural

_UNITS = ("B", "KB", "MB", "GB", "TB", "PB")


def human_size(size: int) -> str:
    """Decimal units as FlexAI prints them: ``343.79 MB``."""
    if size < 1000:
        return f"{size} B"
    exponent = min(int(math.log(size, 1000)), len(_UNITS) - 1)
    return f"{size / 1000**exponent:.2f} {_UNITS[exponent]}"


def human_time(value: str | float) -> str:
    """An instant as every view for people shows it (``list``, ``jobs``, ``inspect``, the page):
    ``2026-11-23 15:04:05Z``, UTC to the second, from ISO 8601 text or Unix seconds."""
    if isinstance(value, str):
        return value.replace("T", " ")[:19] + "Z" if value else ""
    return datetime.fromtimestamp(value, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def human_record(record: CheckpointRecord) -> dict[str, Any]:
    """The record as a dict with sizes and times made human; every other field is the JSON one."""
    data = record.to_dict()
    status = data["status"]
    status["size"] = human_size(status["size"])
    for entry in status["files"]:
        entry["size"] = human_size(entry["size"])
    for key in ("createdAt", "updatedAt"):
        status[key] = human_time(status[key])
    for evaluation in status["evaluations"].values():
        for key in ("startedAt", "finishedAt"):
            if evaluation.get(key):
                evaluation[key] = human_time(evaluation[key])
    return data


def to_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)


def _loss(value: float | None, logged_at: int | None, step: int) -> str:
    """``1.2345``, or ``1.2345@8`` when the loss was logged at another step than the checkpoint's."""
    if value is None:
        return "-"
    return f"{value:.4f}" if logged_at in (None, step) else f"{value:.4f}@{logged_at}"


@dataclass(frozen=True)
class RecordRow:
    """One line of ``list``: the record and the short word on its delivery."""

    record: CheckpointRecord
    delivery: str


def records_table(rows: Sequence[RecordRow]) -> str:
    """One line per record, short enough for a terminal: LOSS and EVAL are the training and evaluation losses
    (``@step`` when logged at another step than the checkpoint's), CREATED is UTC (:func:`human_time`).

    A JOB column (the job id's first 8 characters, what ``inspect JOB/NAME`` takes) appears when two
    jobs of the listing have records of the same name; BEST marks the best checkpoint. Each evaluator
    (``checkpoint-records evaluate --name NAME``) adds a column NAME: its first metric, or how it ended.
    """
    names = [row.record.name for row in rows]
    show_job = len(set(names)) < len(names)
    evaluators = sorted({name for row in rows for name in row.record.status.evaluations})
    header = [
        "NAME",
        "STEP",
        "STATUS",
        "READY",
        "BEST",
        "LOSS",
        "EVAL",
        "SIZE",
        *(name.upper() for name in evaluators),
        "CREATED",
        "DELIVERY",
    ]
    if show_job:
        header.insert(1, "JOB")
    lines = [header]
    for row in rows:
        record, training = row.record, row.record.training
        line = [
            record.name,
            str(training.step),
            record.status.status,
            "yes" if training.inference_ready else "no",
            "*" if training.best else "",
            _loss(training.train_loss, training.train_loss_step, training.step),
            _loss(training.eval_loss, training.eval_loss_step, training.step),
            human_size(record.status.size),
            *(_evaluation(record, name) for name in evaluators),
            human_time(record.status.created_at),
            row.delivery,
        ]
        if show_job:
            line.insert(1, record.metadata.job_id[:8])
        lines.append(line)
    return _table(lines)


def _evaluation(record: CheckpointRecord, name: str) -> str:
    """An evaluator's cell: ``acc=0.512``, ``failed``, ``skipped``, or ``-`` when not evaluated (yet)."""
    found = record.status.evaluations.get(name)
    return "-" if found is None else headline(found)


def delivery_state(delivery: Delivery, now: float, configured: Collection[str] | None = None) -> str:
    """One delivery in full: ``delivered``, ``pending (next in 12s, 3 attempts: why)``, ``dead: why``,
    ``dropped``; with ``configured`` (the sinks configured here), what to do about one whose sink is not."""
    if delivery.state == "delivered":
        return "delivered"
    if delivery.state == "dropped":
        return f"dropped (by `outbox drop`; `{_MOVE} {delivery.sink} NEW` sends it elsewhere)"
    if delivery.state == "dead":
        said = f"dead: {delivery.last_error}"
    else:
        wait = max(delivery.next_attempt_at - now, 0.0)
        detail = f"next in {wait:.0f}s" if wait >= 1 else "due now"
        if delivery.attempts:
            detail += f", {plural(delivery.attempts, 'attempt')}: {delivery.last_error}"
        said = f"pending ({detail})"
    if configured is not None and delivery.sink not in configured:
        said += f"; {UNCONFIGURED} here: `{_MOVE} {delivery.sink} NEW` or `outbox drop {delivery.sink}`"
    return said


#: What ``list`` and ``inspect`` call a sink that deliveries wait for but this command was not given.
UNCONFIGURED = "not configured"
_MOVE = "checkpoint-records outbox move"


def delivery_summary(
    deliveries: Sequence[Delivery], configured: Collection[str] | None = None, received: bool = False
) -> str:
    """Every sink's delivery of one record in a few words for ``list``: the reasons are in ``inspect``.

    ``local`` (no sink, and recorded here), ``received`` (sent here by another node, and sent nowhere
    from here), ``delivered`` (every sink), else how many sinks have it and what the others are waiting
    for: ``1/2 sent, 1 dead``; with ``configured`` (the sinks configured here), those pending for another
    sink are counted apart (``1 not configured``).
    """
    if not deliveries:
        return "received" if received else "local"
    delivered = sum(delivery.state == "delivered" for delivery in deliveries)
    if delivered == len(deliveries):
        return "delivered"
    elsewhere = [
        d for d in deliveries if configured is not None and d.sink not in configured and d.state == "pending"
    ]
    waiting = [
        f"{count} {state}"
        for state in ("pending", "dead", "dropped")
        if (count := sum(d.state == state and d not in elsewhere for d in deliveries))
    ]
    if elsewhere:
        waiting.append(f"{len(elsewhere)} {UNCONFIGURED}")
    return f"{delivered}/{len(deliveries)} sent, {', '.join(waiting)}"


def progress_bar(total: int, stream: TextIO) -> tqdm[None]:
    """tqdm on a terminal, nothing otherwise (a log file gets the summary line instead); none for 0 items."""
    return tqdm(total=total, desc="delivering", unit="delivery", file=stream, disable=None if total else True)


def _table(lines: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, two spaces apart."""
    widths = [max(len(line[column]) for line in lines) for column in range(len(lines[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def outbox_table(sinks: Mapping[str, Mapping[DeliveryState, int]], configured: Collection[str]) -> str:
    """One line per sink of the outbox: its deliveries by state, and whether it is configured here."""
    states: tuple[DeliveryState, ...] = ("pending", "delivered", "dead", "dropped")
    lines = [["SINK", *(state.upper() for state in states), "HERE"]]
    for sink, counts in sorted(sinks.items()):
        here = "configured" if sink in configured else UNCONFIGURED
        lines.append([sink, *(str(counts.get(state, 0)) for state in states), here])
    return _table(lines)


def jobs_table(details: Sequence[dict[str, Any]]) -> str:
    """One line per job (``TrainingJobDetail`` objects): name, status, progress, updated, id."""
    lines = [("NAME", "STATUS", "PROGRESS", "UPDATED", "ID")]
    for detail in details:
        updated = human_time(detail["updated_at"])
        lines.append((detail["name"], detail["status"], f"{detail['progress']:g}%", updated, detail["id"]))
    return _table(lines)
