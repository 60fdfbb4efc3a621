"""Rendering records for people: YAML with human sizes, and the one-line-per-record table."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any, TextIO

import yaml

from .record import CheckpointRecord
from .store import Delivery

_UNITS = ("B", "KB", "MB", "GB", "TB", "PB")


def human_size(size: int) -> str:
    """Decimal units as FlexAI prints them: ``343.79 MB``."""
    if size < 1000:
        return f"{size} B"
    exponent = min(int(math.log(size, 1000)), len(_UNITS) - 1)
    return f"{size / 1000**exponent:.2f} {_UNITS[exponent]}"


def human_record(record: CheckpointRecord) -> dict[str, Any]:
    """The record as a dict with sizes made human; every other field is the JSON one."""
    data = record.to_dict()
    status = data["status"]
    status["size"] = human_size(status["size"])
    for entry in status["files"]:
        entry["size"] = human_size(entry["size"])
    return data


def to_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)


def _loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def records_table(rows: Sequence[tuple[CheckpointRecord, str]]) -> str:
    """One line per record: name, step, losses, readiness, size, created, delivery."""
    header = ("NAME", "STEP", "TRAIN_LOSS", "EVAL_LOSS", "READY", "SIZE", "CREATED", "DELIVERY")
    lines = [header]
    for record, delivery in rows:
        training = record.training
        lines.append(
            (
                record.name,
                str(training.step),
                _loss(training.train_loss),
                _loss(training.eval_loss),
                "yes" if training.inference_ready else "no",
                human_size(record.status.size),
                record.status.created_at,
                delivery,
            )
        )
    return _table(lines)


def delivery_state(delivery: Delivery, now: float) -> str:
    """One delivery in words: ``delivered``, ``pending (next in 12s, 3 attempts: why)``, ``dead: why``."""
    if delivery.state == "delivered":
        return "delivered"
    if delivery.state == "dead":
        return f"dead: {delivery.last_error}"
    wait = max(delivery.next_attempt_at - now, 0.0)
    detail = f"next in {wait:.0f}s" if wait >= 1 else "due now"
    if delivery.attempts:
        detail += f", {delivery.attempts} attempts: {delivery.last_error}"
    return f"pending ({detail})"


def delivery_summary(deliveries: Sequence[Delivery], now: float) -> str:
    """Every sink's delivery of one record, for the table; ``local`` when it goes to no sink."""
    if not deliveries:
        return "local"
    return "; ".join(f"{delivery.sink}: {delivery_state(delivery, now)}" for delivery in deliveries)


class ProgressBar:
    """A one-line progress bar on a terminal; just the final line when the stream is not one."""

    WIDTH = 30

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total, self.stream = total, stream
        self.live = stream.isatty()

    def show(self, done: int, final: bool = False) -> None:
        if not (self.live or final):
            return
        filled = self.WIDTH if not self.total else self.WIDTH * done // self.total
        line = f"delivering [{'#' * filled}{'.' * (self.WIDTH - filled)}] {done}/{self.total}"
        self.stream.write(("\r" if self.live else "") + line + ("\n" if final else ""))
        self.stream.flush()


def _table(lines: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, two spaces apart."""
    widths = [max(len(line[column]) for line in lines) for column in range(len(lines[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def jobs_table(details: Sequence[dict[str, Any]]) -> str:
    """One line per job (``TrainingJobDetail`` objects): name, status, progress, updated, id."""
    lines = [("NAME", "STATUS", "PROGRESS", "UPDATED", "ID")]
    for detail in details:
        updated = datetime.fromtimestamp(detail["updated_at"], timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        lines.append((detail["name"], detail["status"], f"{detail['progress']:g}%", updated, detail["id"]))
    return _table(lines)
