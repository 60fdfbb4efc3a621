"""Collecting what is on disk: the files of a checkpoint directory and the metadata files in it.

One ``os.scandir`` walk with the sizes it already has; nothing here reads file contents beyond the small
JSON files the record needs (``config.json``, ``adapter_config.json``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .loading import local_model_path
from .logs import warn_once
from .readiness import adapter_folders
from .validation import escape_text, escaped

#: A file one process of a distributed run writes into a checkpoint, numbered by its rank.
_RANK_FILE = re.compile(r"(?:rng_state|random_states)_(\d+)\.(?:pth|pkl)")


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
    """Every regular file under ``directory`` with its size; a missing directory scans as empty.

    Odd entries never cost the record: one that cannot be looked at (a symbolic-link loop, a file
    removed while we look, no permission) is not a file of the checkpoint, and a name that is not valid
    UTF-8 is recorded with its stray bytes as backslash escapes (``bad\\xff.bin``), said once.
    """
    files: dict[str, int] = {}
    escaped: list[str] = []
    pending = [(directory, "")]
    while pending:
        current, prefix = pending.pop()
        try:
            entries = list(os.scandir(current))
        except OSError:
            continue
        for entry in entries:
            name = escape_text(entry.name)
            if name != entry.name:
                escaped.append(name)
            relative = f"{prefix}{name}"
            try:
                if entry.is_dir(follow_symlinks=False):
                    pending.append((Path(entry.path), f"{relative}/"))
                elif entry.is_file():
                    files[relative] = entry.stat().st_size
            except OSError:  # removed while we looked (rotation), a link loop, no permission
                continue
    if escaped:
        warn_once(
            f"odd-names:{directory}",
            "checkpoint-records: file names in %s are not valid UTF-8; they are recorded with their stray "
            "bytes as backslash escapes: %s",
            directory,
            ", ".join(escaped[:5]),
        )
    return ScannedCheckpoint(directory=directory, files=dict(sorted(files.items())))


def read_json_object(path: Path) -> dict[str, Any] | None:
    """A small JSON object file, or ``None`` when it is absent, unreadable or not an object; its text
    valid Unicode (a ``\\udcff`` escape comes back escaped)."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError, RecursionError):  # absent, not JSON, or nested too deep to parse
        return None
    return escaped(data) if isinstance(data, dict) else None


@dataclass(frozen=True)
class ModelFacts:
    """What the checkpoint's own metadata files say about the model."""

    architectures: tuple[str, ...] = ()
    transformers_version: str | None = None
    name_or_path: str | None = None
    adapter_base_model: str | None = None


def read_model_facts(directory: Path, files: Iterable[str] = ()) -> ModelFacts:
    """``config.json``'s account of the model; for a PEFT adapter (at the top, or saved under its own
    name: ``files`` tells), its base model, whose architecture comes from the base's own ``config.json``
    when the base is a local folder, else from the adapter's ``auto_mapping`` (``base_model_class``)."""
    config = read_json_object(directory / "config.json") or {}
    folders = adapter_folders(files) or [""]
    adapter = read_json_object(directory / folders[0] / "adapter_config.json") or {}
    base = _optional_text(adapter.get("base_model_name_or_path"))
    architectures = _names(config.get("architectures"))
    if not architectures and adapter:
        architectures = _base_architectures(base, adapter)
    return ModelFacts(
        architectures=architectures,
        transformers_version=_optional_text(config.get("transformers_version")),
        name_or_path=_optional_text(config.get("_name_or_path")),
        adapter_base_model=base,
    )


def _base_architectures(base: str | None, adapter: dict[str, Any]) -> tuple[str, ...]:
    local = local_model_path(base) if base else None
    if base and local is None and Path(base).is_dir():  # a relative folder, as from_pretrained finds it
        local = Path(base)
    if local is not None:
        found = _names((read_json_object(local / "config.json") or {}).get("architectures"))
        if found:
            return found
    mapping = adapter.get("auto_mapping")
    named = mapping.get("base_model_class") if isinstance(mapping, dict) else None
    return _names([named])


def ranks_on_disk(files: Iterable[str]) -> int | None:
    """How many processes wrote a checkpoint, as its files tell: the Trainer's ``rng_state_<rank>.pth``
    and accelerate's ``random_states_<rank>.pkl`` (the highest rank plus one); None when they do not."""
    ranks = [
        int(match.group(1)) for name in files if (match := _RANK_FILE.fullmatch(name.rsplit("/", 1)[-1]))
    ]
    return max(ranks) + 1 if ranks else None


def _names(value: Any) -> tuple[str, ...]:
    return tuple(name for name in value if isinstance(name, str) and name) if isinstance(value, list) else ()


def _optional_text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
