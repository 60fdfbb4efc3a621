"""Wire formats, registered in one place: add a module and one line in ``_FORMATS``."""

from __future__ import annotations

from ..errors import ConfigurationError
from .base import WireFormat
from .record import RecordFormat

_FORMATS: dict[str, type[WireFormat]] = {
    RecordFormat.name: RecordFormat,
}

DEFAULT_FORMAT = RecordFormat.name


def known_formats() -> list[str]:
    return sorted(_FORMATS)


def get_format(name: str) -> WireFormat:
    """The format called ``name``; an unknown name is a configuration error listing the known ones."""
    try:
        return _FORMATS[name]()
    except KeyError:
        raise ConfigurationError(
            f"unknown format {name!r}; known formats: {', '.join(known_formats())}"
        ) from None


__all__ = ["DEFAULT_FORMAT", "WireFormat", "get_format", "known_formats"]
