"""Rendering records for people: YAML with human sizes, and the one-line-per-record table."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import yaml

from .record import CheckpointRecord

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
    widths = [max(len(line[column]) for line in lines) for column in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )
