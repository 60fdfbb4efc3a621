"""How a checkpoint's model is loaded, as its files tell: whether the ``Auto*`` classes can (a model type
transformers does not know needs ``trust_remote_code`` or its own class), and whether an adapter's base
model names a local folder or what may be a Hub id. Pure: reads nothing but what it is given (and, for a
local path, nothing at all: the caller looks)."""

from __future__ import annotations

import pathlib
from collections.abc import Container, Mapping
from typing import Any

__all__ = ["local_model_path", "model_type_reasons"]


def local_model_path(name: str) -> pathlib.Path | None:
    """The local directory a model name (``base_model_name_or_path``) points at, or None for what may be
    a Hub id (``name`` or ``org/name``): absolute, ``./``, ``../``, ``~`` or more than one ``/``."""
    if name.startswith(("/", "./", "../", "~", "\\")) or name in (".", "..") or name.count("/") > 1:
        return pathlib.Path(name).expanduser()
    return None


def model_type_reasons(
    config: Mapping[str, Any], top: set[str], known_model_types: Container[str]
) -> list[str]:
    """Why the ``Auto*`` classes cannot load ``config``'s model type when it is not one of
    ``known_model_types``, and what can: ``trust_remote_code=True`` with ``auto_map`` (and whether the code
    it names is among the checkpoint's ``top``-level files), else the model's own class. Empty when known."""
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type or model_type in known_model_types:
        return []
    auto_map = config.get("auto_map")
    if not isinstance(auto_map, Mapping) or not auto_map:
        architectures = config.get("architectures")
        own = architectures[0] if isinstance(architectures, list) and architectures else "its own class"
        return [
            f"model_type {model_type!r} is unknown to transformers and config.json has no auto_map: "
            f"Auto* classes cannot load it; load it with {own}.from_pretrained"
        ]
    references = [
        reference
        for value in auto_map.values()
        for reference in (value if isinstance(value, list) else [value])
        if isinstance(reference, str) and reference
    ]
    elsewhere = sorted({reference.split("--")[0] for reference in references if "--" in reference})
    modules = sorted(
        {f"{reference.rsplit('.', 1)[0]}.py" for reference in references if "--" not in reference}
    )
    reasons = [
        f"model_type {model_type!r} is not a transformers model type: it loads only with "
        f"trust_remote_code=True (auto_map: {', '.join(sorted(auto_map))})"
    ]
    reasons.extend(
        f"auto_map's code {module} is not in the checkpoint" for module in modules if module not in top
    )
    reasons.extend(f"auto_map's code comes from {repository}, not the checkpoint" for repository in elsewhere)
    return reasons
