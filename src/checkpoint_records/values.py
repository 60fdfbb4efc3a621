"""Turning whatever a training loop logs into honest JSON values.

JSON has no NaN or infinity, and training logs carry numpy and torch scalars. Every value that enters a
record passes through here: finite numbers stay numbers (an integer beyond 64 bits as a float), non-finite
ones become ``null`` with their spelling kept beside them (``"NaN"``, ``"Infinity"``, ``"-Infinity"``),
text is made valid Unicode (:func:`~.validation.escape_text`), and anything else becomes a string rather
than breaking the record.
"""

from __future__ import annotations

import math
from typing import Any

from .validation import INT64_MAX, INT64_MIN, escape_text

JsonScalar = bool | int | float | str | None


def as_python_scalar(value: Any) -> Any:
    """Unwrap numpy/torch scalars (anything with ``.item()`` and no length) into Python values."""
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, (str, bytes)):
        try:
            return item()
        except (TypeError, ValueError, RuntimeError):
            return value
    return value


def non_finite_spelling(value: float) -> str:
    """The conventional spelling of a non-finite float (the one ``json`` and JavaScript use)."""
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def to_number(value: Any) -> tuple[float | int | None, str | None]:
    """A finite number, or ``(None, spelling)`` for NaN/inf, or ``(None, None)`` when not numeric.

    An integer beyond 64 bits is a float (SQLite and JavaScript hold no more), an infinity past a
    float's range."""
    value = as_python_scalar(value)
    if isinstance(value, bool) or value is None:
        return None, None
    if isinstance(value, int) and INT64_MIN <= value <= INT64_MAX:
        return value, None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None, None
    except OverflowError:
        return None, "-Infinity" if isinstance(value, int) and value < 0 else "Infinity"
    if math.isfinite(number):
        return number, None
    return None, non_finite_spelling(number)


def to_json_scalar(value: Any) -> tuple[JsonScalar, str | None]:
    """Like :func:`to_number`, but keeps booleans and strings and stringifies anything else."""
    value = as_python_scalar(value)
    if value is None or isinstance(value, bool):
        return value, None
    if isinstance(value, str):
        return escape_text(value), None
    number, spelling = to_number(value)
    if number is not None or spelling is not None:
        return number, spelling
    return escape_text(str(value)), None
