"""Collecting what is on disk: the files of a checkpoint directory and the metadata files in it.

One ``os.scandir`` walk with the sizes it already has; nothing here reads file contents beyond the small
JSON files the record needs (``config.json``, ``adapter_config.json``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ScannedCheckpoint:
    """A checkpoint directory as found on disk: relative POSIX paths to sizes in bytes."""

    directory: Path
    files: dict[str, int] = field(default_factory=dict)

    @property
    def exists(self) -> bool:
        return bool(self.files)

    @property
    def total_size(self) -> int:
        return sum(self.files.values())


def scan_checkpoint(directory: Path) -> ScannedCheckpoint:
    """Every regular file under ``directory`` with its size; a missing directory scans as empty."""
    files: dict[str, int] = {}
    pending = [(directory, "")]
    while pending:
        current, prefix = pending.pop()
        try:
            entries = list(os.scandir(current))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for entry in entries:
            relative = f"{prefix}{entry.name}"
            try:
                if entry.is_dir(follow_symlinks=False):
                    pending.append((Path(entry.path), f"{relative}/"))
                elif entry.is_file():
                    files[relative] = entry.stat().st_size
            except FileNotFoundError:  # removed while we looked (rotation): it is not part of it
                continue
    return ScannedCheckpoint(directory=directory, files=dict(sorted(files.items())))


def read_json_object(path: Path) -> dict[str, Any] | None:
    """A small JSON object file, or ``None`` when it is absent, unreadable or not an object."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class ModelFacts:
    """What the checkpoint's own metadata files say about the model."""

    architectures: tuple[str, ...] = ()
    transformers_version: str | None = None
    name_or_path: str | None = None
    adapter_base_model: str | None = None


def read_model_facts(directory: Path) -> ModelFacts:
    config = read_json_object(directory / "config.json") or {}
    adapter = read_json_object(directory / "adapter_config.json") or {}
    architectures = config.get("architectures") or ()
    return ModelFacts(
        architectures=tuple(str(name) for name in architectures if isinstance(name, str)),
        transformers_version=_optional_text(config.get("transformers_version")),
        name_or_path=_optional_text(config.get("_name_or_path")),
        adapter_base_model=_optional_text(adapter.get("base_model_name_or_path")),
    )


def _optional_text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
