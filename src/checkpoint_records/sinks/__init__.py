"""Destinations records are delivered to, registered by URL scheme in one place.

``sink_from_url("openai+https://host/path")`` builds an :class:`HttpSink` rendering the ``openai``
format; a scheme registered whole (``mlflow+https``) names a sink of its own and gets the whole URL.
Other packages add schemes through the ``checkpoint_records.sinks`` entry-point group, whose entries
are callables taking the URL and the keyword options below.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigurationError
from ..formats import DEFAULT_FORMAT
from ..record import CheckpointRecord
from ..redaction import public_url
from ..settings import Settings
from ..store import DocumentKind
from .base import DeliveryError, Rejected, RetryLater, Sink
from .http import HttpSink
from .mlflow import SCHEMES as MLFLOW_SCHEMES
from .mlflow import MlflowSink

SinkFactory = Callable[..., Sink]
ENTRY_POINT_GROUP = "checkpoint_records.sinks"

_SCHEMES: dict[str, SinkFactory] = {
    "http": HttpSink,
    "https": HttpSink,
    **{scheme: MlflowSink.from_url for scheme in MLFLOW_SCHEMES},
}


def _factory(scheme: str) -> SinkFactory | None:
    if scheme in _SCHEMES:
        return _SCHEMES[scheme]
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name == scheme:
            factory: SinkFactory = entry.load()
            return factory
    return None


def known_schemes() -> list[str]:
    return sorted({*_SCHEMES, *(entry.name for entry in entry_points(group=ENTRY_POINT_GROUP))})


def sink_from_url(spec: str, **options: Any) -> Sink:
    """The sink a URL names: ``[format+]scheme://...``; ``options`` (token, ca_bundle, ...) pass through."""
    spec = spec.strip()
    try:
        scheme = urlsplit(spec).scheme
    except ValueError as error:
        raise ConfigurationError(f"sink URL {public_url(spec)!r} is not a valid URL: {error}") from None
    whole = _factory(scheme) if "+" in scheme else None
    if whole is not None:
        return whole(spec, **options)
    wire_format, _, transport = scheme.rpartition("+")
    factory = _factory(transport)
    if factory is None:
        raise ConfigurationError(
            f"sink {public_url(spec)!r}: unknown scheme {transport!r}; known: {', '.join(known_schemes())}"
        )
    url = spec[len(wire_format) + 1 :] if wire_format else spec
    return factory(url, format=wire_format or DEFAULT_FORMAT, **options)


def configured_sinks(settings: Settings) -> list[Sink]:
    """Sink objects from the settings' sinks (a URL string is shorthand for an :class:`HttpSink`).

    URL sinks get the settings' token, CA bundle and insecure-http opt-in, and the signing secret when
    one is set (so a sink factory of another package that signs nothing is not handed one). Two sinks
    with the same key would share outbox entries, so they are refused.
    """
    options: dict[str, Any] = {
        "token": settings.token,
        "ca_bundle": settings.ca_bundle,
        "allow_insecure_http": settings.allow_insecure_http,
    }
    if settings.signing_secret is not None:
        options["signing_secret"] = settings.signing_secret
    built = [sink_from_url(sink, **options) if isinstance(sink, str) else sink for sink in settings.sinks]
    keys = [sink.key for sink in built]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise ConfigurationError(f"sinks configured twice: {', '.join(repeated)}; give each destination once")
    return built


def sinks_to_notify(sinks: Sequence[Sink], old: CheckpointRecord, new: CheckpointRecord) -> list[str]:
    """The keys of the ``sinks`` whose format renders revision ``new`` differently from ``old``."""
    return [sink.key for sink in sinks if not sink.format.renders_same(old, new)]


def record_sinks(sinks: Sequence[Sink]) -> list[Sink]:
    """The sinks that receive checkpoint records."""
    return [sink for sink in sinks if sink.format.renders_records]


def job_sinks(sinks: Sequence[Sink]) -> list[Sink]:
    """The sinks that receive job-level events (the ``record`` and ``training-job`` formats, MLflow runs)."""
    return [sink for sink in sinks if sink.format.renders_jobs]


def document_kinds(sink: Sink) -> list[DocumentKind]:
    """The kinds of stored document ``sink`` is sent: records, jobs, pages of a job's log."""
    wire = sink.format
    kinds: list[tuple[DocumentKind, bool]] = [
        ("record", wire.renders_records),
        ("job", wire.renders_jobs),
        ("log", wire.renders_logs),
    ]
    return [kind for kind, sent in kinds if sent]


def log_sinks(sinks: Sequence[Sink]) -> list[Sink]:
    """The sinks that receive the job's logged series, page by page (the ``record`` format)."""
    return [sink for sink in sinks if sink.format.renders_logs]


__all__ = [
    "DeliveryError",
    "HttpSink",
    "MlflowSink",
    "Rejected",
    "RetryLater",
    "Sink",
    "configured_sinks",
    "document_kinds",
    "job_sinks",
    "known_schemes",
    "log_sinks",
    "record_sinks",
    "sink_from_url",
    "sinks_to_notify",
]
