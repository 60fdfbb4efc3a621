"""Wire formats, registered in one place: add a module and one line in ``_FORMATS``.

``mlflow.py`` renders what ``MlflowSink`` turns into REST calls; it is not registered, as no endpoint
takes its documents as they are.
"""

from __future__ import annotations

from ..errors import ConfigurationError
from .base import WireFormat
from .canonical import RecordFormat
from .flexai import FlexAIFormat
from .llama_stack import LlamaStackFormat
from .openai import OpenAIFormat
from .training_job import TrainingJobFormat

_FORMATS: dict[str, type[WireFormat]] = {
    RecordFormat.name: RecordFormat,
    FlexAIFormat.name: FlexAIFormat,
    OpenAIFormat.name: OpenAIFormat,
    LlamaStackFormat.name: LlamaStackFormat,
    TrainingJobFormat.name: TrainingJobFormat,
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
