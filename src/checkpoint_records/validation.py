"""What a document may hold, in one place: every border checks, bounds or repairs its values here.

A record or a job document is JSON that many readers parse (the store's SQL, pydantic, browsers, other
platforms), so a value is kept only if every one of them can take it:

- text is valid Unicode. A lone surrogate (what Python keeps of a byte that is not UTF-8 in a file name,
  or a ``\\udcff`` escape in JSON) becomes a backslash escape: ``\\xff`` for such a byte, ``\\ud800``
  otherwise, the rule file names already follow (:func:`escape_text`; :func:`path_of` reads it back);
- nesting is at most :data:`MAX_DEPTH` levels, integers fit in 64 bits (SQLite's), numbers are finite,
  and a timestamp is a real time: RFC 3339 text, or Unix seconds before the year 10000;
- a file path a record names is relative and stays inside its checkpoint (:func:`relative_path`), checked
  again before any file named by a record is written (:func:`contained`).

What comes from elsewhere (the registry's ingest) is *checked*: :func:`check_value` raises
:class:`InvalidValue` naming the field. What we build is *bounded*: :func:`bounded` escapes, cuts and
converts, so training never fails on a value it logged. What the store already holds, written by an older
release, is *repaired* when it can be (:func:`read_stored`), else the reader leaves it out and says so.
The models (``record.py``, ``job.py``) carry the per-field rules as the types below.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, Field, ValidationError
from pydantic_core import PydanticSerializationError

#: Levels of nesting a document may have (a record needs six; a job's hyper-parameters get the rest).
MAX_DEPTH = 64
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: 9999-12-31T23:59:59Z: no later time is a real one (nor one ``datetime`` can show).
MAX_UNIX_SECONDS = 253402300799.0
#: What stands for a value nested deeper than :data:`MAX_DEPTH` in what we build.
TOO_DEEP = f"(nested deeper than {MAX_DEPTH} levels: left out)"

M = TypeVar("M", bound=BaseModel)


class InvalidValue(ValueError):
    """A value no document may hold, and where it is (``field``: a JSON path, ``""`` for the whole);
    ``text`` when the only trouble is text that is not valid Unicode (which :func:`bounded` escapes)."""

    def __init__(self, field: str, why: str, text: bool = False) -> None:
        super().__init__(f"{field or '(document)'}: {why}")
        self.field, self.why, self.text = field, why, text


# -- text ---------------------------------------------------------------------------------------------

_SURROGATE = re.compile("[\ud800-\udfff]")


def escape_text(text: str) -> str:
    """``text`` as valid Unicode: each lone surrogate as a backslash escape, ``\\xff`` for a byte that
    ``os.fsdecode`` could not decode (U+DC80 to U+DCFF), ``\\ud800`` for any other."""
    if text.isascii() or _SURROGATE.search(text) is None:
        return text
    return _SURROGATE.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


_ESCAPED_BYTE = re.compile(r"\\x([89a-f][0-9a-f])")


def path_of(text: str) -> Path:
    """The path a recorded (escaped) path names on this machine: ``\\xff`` back to the byte it stands for."""
    if "\\x" not in text:
        return Path(text)
    return Path(_ESCAPED_BYTE.sub(lambda match: chr(0xDC00 + int(match.group(1), 16)), text))


def text_problem(text: str) -> str | None:
    """Why ``text`` is not valid Unicode, or None."""
    found = None if text.isascii() else _SURROGATE.search(text)
    if found is None:
        return None
    return f"not valid Unicode: a lone surrogate (U+{ord(found.group()):04X}) at character {found.start()}"


# -- JSON values ----------------------------------------------------------------------------------------


def field_name(path: str, key: object) -> str:
    """``path`` followed by an object's key (``a.b``) or an array's index (``a[0]``)."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def check_value(value: Any, field: str = "", depth: int = 1, *, numbers: bool = True) -> None:
    """Refuse (:class:`InvalidValue`, naming the field) a value that is not valid Unicode, nested deeper
    than :data:`MAX_DEPTH`, an integer beyond 64 bits or a number that is not finite (``numbers``
    False: leave numbers to :mod:`.values`, which spells what JSON cannot carry)."""
    if isinstance(value, str):
        problem = text_problem(value)
        if problem is not None:
            raise InvalidValue(field, problem, text=True)
    elif isinstance(value, bool) or value is None or (not numbers and isinstance(value, (int, float))):
        return
    elif isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise InvalidValue(field, f"an integer beyond 64 bits ({len(str(abs(value)))} digits)")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidValue(field, "not a finite number (JSON has no NaN or infinity; 1e999 is one)")
    elif isinstance(value, (dict, list)):
        if depth > MAX_DEPTH:
            raise InvalidValue(field, f"nested deeper than {MAX_DEPTH} levels")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            name = field_name(field, escape_text(key) if isinstance(key, str) else key)
            if isinstance(key, str) and text_problem(key) is not None:
                raise InvalidValue(name, f"the name is {text_problem(key)}", text=True)
            check_value(item, name, depth + 1, numbers=numbers)


def escaped(value: Any, depth: int = 1) -> Any:
    """``value`` with its text (names too) escaped as :func:`escape_text` does, all else as it is (a
    value :func:`check_value` took but for its text)."""
    if isinstance(value, str):
        return escape_text(value)
    if depth > MAX_DEPTH:
        return value
    if isinstance(value, dict):
        return {escape_text(str(key)): escaped(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list):
        return [escaped(item, depth + 1) for item in value]
    return value


def bounded(value: Any, depth: int = 1) -> Any:
    """``value`` as a document may hold it, never refused: text escaped, nesting past :data:`MAX_DEPTH`
    summarised, integers beyond 64 bits as floats (cut, as text, past a float's range), NaN and infinity as
    ``None``, anything else as its text."""
    if isinstance(value, str):
        return escape_text(value)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        if INT64_MIN <= value <= INT64_MAX:
            return value
        try:
            return float(value)
        except OverflowError:
            digits = str(value)
            return f"{digits[:20]}... ({len(digits)} digits)"
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (Mapping, list, tuple)):
        if depth > MAX_DEPTH:
            return TOO_DEEP
        if isinstance(value, Mapping):
            return {escape_text(str(key)): bounded(item, depth + 1) for key, item in value.items()}
        return [bounded(item, depth + 1) for item in value]
    return escape_text(str(value))


def parse_json(text: str | bytes, *, constants: bool = False) -> Any:
    """JSON text, parsed; :class:`InvalidValue` for text that is not JSON or is nested too deep to parse
    (naming where). Bytes that are not UTF-8 are kept as lone surrogates, for :func:`check_value` to name
    the field, or :func:`bounded` to escape. ``constants``: take ``NaN`` and ``Infinity`` (Python's
    ``json`` writes them, as in ``trainer_state.json``)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogateescape")
    try:
        return json.loads(text) if constants else json.loads(text, parse_constant=_no_constants)
    except RecursionError:
        raise InvalidValue(_too_deep(text), f"nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as error:
        raise InvalidValue("", f"not valid JSON: {error}") from None


def _no_constants(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}:,]')


def _too_deep(text: str) -> str:
    """Where JSON ``text`` first nests deeper than :data:`MAX_DEPTH` levels (its first levels when that is
    long), read token by token: for text too deep for the parser."""
    frames: list[list[Any]] = []  # per open container: its kind, the key or index in it, expecting a key
    for token in _TOKENS.finditer(text):
        mark = token.group()
        if mark in "[{":
            if len(frames) >= MAX_DEPTH:
                path = ""
                for frame in frames[:8]:
                    path = field_name(path, frame[1])
                return path + ("..." if len(frames) > 8 else "")
            frames.append([mark, 0 if mark == "[" else "", mark == "{"])
        elif mark in "]}":
            if frames:
                frames.pop()
        elif not frames:
            continue
        elif mark == ",":
            frame = frames[-1]
            if frame[0] == "[":
                frame[1] += 1
            else:
                frame[2] = True
        elif mark.startswith('"') and frames[-1][2]:
            try:
                frames[-1][1] = escape_text(json.loads(mark))
            except ValueError:
                frames[-1][1] = "?"
            frames[-1][2] = False
    return ""


# -- times and paths -----------------------------------------------------------------------------------


def iso_time(text: str) -> str:
    """``text`` when it is an RFC 3339 date-time with its offset (``2024-05-01T12:00:00.5Z``)."""
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None or len(text) < 20 or text[10] not in "Tt ":
        raise ValueError("not a date-time with its offset (RFC 3339, e.g. 2024-05-01T12:00:00Z)")
    return text


def relative_path(text: str) -> str:
    """``text`` when it is a path that stays inside the checkpoint's directory: relative, no ``..``."""
    parts = text.split("/")
    if not text or text.startswith("/") or "\x00" in text:
        raise ValueError("not a relative path inside the checkpoint")
    if any(part in ("", "..") for part in parts):
        raise ValueError("not a path inside the checkpoint ('..' or an empty part)")
    return text


def contained(directory: Path, relative: str, field: str = "path") -> Path:
    """Where ``relative`` (a record's file path) is under ``directory``: refused with
    :class:`InvalidValue` before anything is written when it would lead outside, links included."""
    try:
        relative_path(relative)
    except ValueError as error:
        raise InvalidValue(field, f"{error}: {relative!r}") from None
    target = directory / path_of(relative)
    root = os.path.realpath(directory)
    if os.path.commonpath([root, os.path.realpath(target)]) != root:
        raise InvalidValue(field, f"leads outside {directory}: {relative!r}")
    return target


#: A count or a step: an integer SQLite holds.
Count = Annotated[int, Field(ge=0, le=INT64_MAX)]
Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
IsoTime = Annotated[str, AfterValidator(iso_time)]
UnixTime = Annotated[float, Field(ge=0, le=MAX_UNIX_SECONDS, allow_inf_nan=False)]
RelativePath = Annotated[str, AfterValidator(relative_path)]


def _checked_object(value: dict[str, Any]) -> dict[str, Any]:
    try:
        check_value(value)
    except InvalidValue as error:
        raise ValueError(str(error)) from None
    return value


#: A free-form JSON object (a job's hyper-parameters), held to :func:`check_value`.
JsonObject = Annotated[dict[str, Any], AfterValidator(_checked_object)]


# -- documents -----------------------------------------------------------------------------------------


def storable(document: M) -> M:
    """``document`` as the store may keep it: its text valid Unicode (our own builders take names from
    file systems and logs, where anything goes)."""
    try:
        document.model_dump_json()
    except PydanticSerializationError:
        return type(document).model_validate(bounded(document.model_dump(by_alias=True)))
    return document


def read_stored(model: type[M], body: str) -> tuple[M, bool]:
    """A document as the store holds it, and whether it had to be repaired: one an older release stored
    with values this release refuses gets them escaped, cut or converted (:func:`bounded`);
    :class:`InvalidValue` (naming the field) when that cannot make it valid."""
    try:
        return model.model_validate_json(body), False
    except ValidationError as error:
        first = error.errors()[0]
    try:
        return model.model_validate(bounded(json.loads(body))), True
    except (ValueError, RecursionError):
        location = ".".join(str(part) for part in first.get("loc", ()))
        raise InvalidValue(location, str(first.get("msg", "invalid"))) from None
