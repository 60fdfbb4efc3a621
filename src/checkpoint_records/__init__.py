"""checkpoint-records: a checkpoint record on every save, kept durably and delivered to your platform.

Names are imported on first use, so the command-line tool starts without importing transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Public name to the module that defines it.
_EXPORTS = {
    "CheckpointRecord": "record",
    "CheckpointRecordCallback": "callback",
    "CheckpointRecorder": "recorder",
    "ConfigurationError": "errors",
    "HttpSink": "sinks",
    "MlflowSink": "sinks",
    "Readiness": "readiness",
    "RecordStore": "store",
    "Rejected": "sinks",
    "RetryLater": "sinks",
    "Sink": "sinks",
    "assess_readiness": "readiness",
}

__all__ = [
    "CheckpointRecord",
    "CheckpointRecordCallback",
    "CheckpointRecorder",
    "ConfigurationError",
    "HttpSink",
    "MlflowSink",
    "Readiness",
    "RecordStore",
    "Rejected",
    "RetryLater",
    "Sink",
    "assess_readiness",
]

if TYPE_CHECKING:
    from .callback import CheckpointRecordCallback
    from .errors import ConfigurationError
    from .readiness import Readiness, assess_readiness
    from .record import CheckpointRecord
    from .recorder import CheckpointRecorder
    from .sinks import HttpSink, MlflowSink, Rejected, RetryLater, Sink
    from .store import RecordStore


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'checkpoint_records' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
