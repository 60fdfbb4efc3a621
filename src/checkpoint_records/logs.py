"""Logging that says a failure clearly, once, instead of once per save; and the guard around training.

Training must never pay for a failure of ours (transformers does not catch callback exceptions), so every
entry point from the Trainer is wrapped in :func:`never_raises`. That would also hide our own bugs from
our own tests: :func:`set_strict` (turned on by the test suite) makes the guard re-raise instead.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

logger = logging.getLogger("checkpoint_records")

T = TypeVar("T")

_seen: set[str] = set()
_seen_lock = threading.Lock()
_strict = False


def warn_once(key: str, message: str, *args: object) -> None:
    """Log ``message`` at WARNING the first time ``key`` is seen in this process, DEBUG afterwards."""
    with _seen_lock:
        first = key not in _seen
        _seen.add(key)
    logger.log(logging.WARNING if first else logging.DEBUG, message, *args)


def set_strict(strict: bool) -> None:
    """Strict: a failure of ours raises (tests); not strict: it is logged once and skipped (production)."""
    global _strict
    _strict = strict


def is_strict() -> bool:
    return _strict


def report_failure(where: str, error: BaseException) -> None:
    """Say once that ``where`` failed and training goes on; the traceback at DEBUG."""
    warn_once(
        f"{where}:{type(error).__name__}",
        "checkpoint-records: %s failed and was skipped, training goes on: %s: %s",
        where,
        type(error).__name__,
        error,
    )
    logger.debug("traceback", exc_info=error)


def never_raises(method: Callable[..., T]) -> Callable[..., T | None]:
    """Run ``method``; on any exception, log it once (by method and exception type) and return None,
    or re-raise it when strict."""

    @functools.wraps(method)
    def guarded(*args: Any, **kwargs: Any) -> T | None:
        try:
            return method(*args, **kwargs)
        except Exception as error:
            if _strict:
                raise
            report_failure(method.__qualname__, error)
            return None

    return guarded
