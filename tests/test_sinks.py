"""Sink configuration and the pure pieces of HTTP delivery: URLs, replies, Retry-After, redaction."""

from __future__ import annotations

import re
import time
from email.utils import formatdate
from pathlib import Path

import pytest

import checkpoint_records
from checkpoint_records import CheckpointRecordCallback, ConfigurationError, HttpSink
from checkpoint_records.lane import BACKOFF_CAP, backoff
from checkpoint_records.redaction import Redactor, public_url
from checkpoint_records.sinks import sink_from_url
from checkpoint_records.sinks.transport import describe_reply, retry_after_seconds


def test_url_shorthand_selects_the_format_and_keeps_secrets_out_of_the_key() -> None:
    sink = sink_from_url("openai+https://registry.example/v1/ckpt?api_key=abc123", token="t0ken")
    assert isinstance(sink, HttpSink) and sink.format.name == "openai"
    assert sink.key == "openai+https://registry.example/v1/ckpt?api_key=***"
    assert sink_from_url("https://registry.example/v1").key == "https://registry.example/v1"
    for name in ("flexai", "llama-stack", "training-job", "record"):
        assert sink_from_url(f"{name}+https://h.example/p").format.name == name


def test_bad_sink_configuration_fails_at_construction_saying_what_to_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ConfigurationError, match="known formats: flexai, llama-stack, openai, record"):
        HttpSink("https://h.example/p", format="opneai")
    with pytest.raises(ConfigurationError, match="unknown scheme 'ftp'"):
        sink_from_url("ftp://h.example/p")
    with pytest.raises(ConfigurationError, match="allow_insecure_http=True") as refused:
        HttpSink("http://registry.example/v1", token="s3cret-value")
    assert "s3cret-value" not in str(refused.value)
    HttpSink("http://registry.example/v1", token="s3cret-value", allow_insecure_http=True)
    HttpSink("http://127.0.0.1:9/v1", token="s3cret-value")  # loopback is fine
    with pytest.raises(ConfigurationError, match="CA bundle"):
        HttpSink("https://h.example/p", ca_bundle="/no/such/bundle.pem")
    with pytest.raises(ConfigurationError, match="configured twice"):
        CheckpointRecordCallback(sinks=["https://h.example/p", HttpSink("https://h.example/p")])
    monkeypatch.setenv("CHECKPOINT_RECORDS_SINKS", "https://a.example/x, openai+https://b.example/y")
    monkeypatch.setenv("CHECKPOINT_RECORDS_TOKEN", "env-token")
    keys = [sink.key for sink in CheckpointRecordCallback().recorder.sinks]
    assert keys == ["https://a.example/x", "openai+https://b.example/y"]
    monkeypatch.setenv("CHECKPOINT_RECORDS_SINKS", "http://registry.example/v1")
    with pytest.raises(ConfigurationError, match="CHECKPOINT_RECORDS_ALLOW_INSECURE_HTTP"):
        CheckpointRecordCallback()


def test_error_replies_are_described_in_one_line() -> None:
    problem = b'{"type": "about:blank", "title": "Unprocessable", "status": 422, "detail": "step\\nmissing"}'
    assert describe_reply(422, "Unprocessable Entity", problem) == (
        "",
        "HTTP 422 Unprocessable Entity: Unprocessable: step missing",
    )
    openai_style = b'{"error": {"message": "Invalid key", "type": "invalid_request_error", "code": null}}'
    assert describe_reply(401, "Unauthorized", openai_style).text == (
        "HTTP 401 Unauthorized: invalid_request_error: Invalid key"
    )
    mlflow_style = b'{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "No experiment"}'
    assert describe_reply(404, "NOT FOUND", mlflow_style) == (
        "RESOURCE_DOES_NOT_EXIST",
        "HTTP 404 NOT FOUND: RESOURCE_DOES_NOT_EXIST: No experiment",
    )
    assert describe_reply(400, "Bad Request", b'{"error": "nope"}').text == "HTTP 400 Bad Request: nope"
    assert describe_reply(400, "", b'{"unknown": 1}').text == 'HTTP 400: {"unknown": 1}'
    assert describe_reply(500, "", b"\xff\xfe<html>").text.startswith("HTTP 500: ")
    assert describe_reply(404, "Not Found", b"") == ("", "HTTP 404 Not Found")
    assert len(describe_reply(400, "Bad Request", b"x" * 100_000).text) < 400


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    now = time.time()
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(formatdate(now + 30, usegmt=True)) == pytest.approx(30, abs=2)
    assert retry_after_seconds(formatdate(now - 30, usegmt=True)) == 0.0
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None
    assert backoff(3, retry_after=12.0) == 12.0
    assert 0.25 <= backoff(1) <= 0.5 and backoff(100) <= BACKOFF_CAP


def test_redaction_masks_userinfo_query_values_and_tokens() -> None:
    assert public_url("https://u:p@h.example:8443/a?k=v&x=") == "https://h.example:8443/a?k=***&x=***"
    redact = Redactor(["tok/en+1", None, "ab"])
    assert redact("Bearer tok/en+1 at /path?t=tok%2Fen%2B1") == "Bearer *** at /path?t=***"
    # A Basic header's base64 of user:password, padded or not, standard or URL-safe: "ann:p?ss>>"
    basic = Redactor(["ann:p?ss>>"])
    assert basic("Basic YW5uOnA/c3M+Pg== or YW5uOnA_c3M-Pg, YW5uOnA%2Fc3M%2BPg") == "Basic *** or ***, ***"


def test_one_module_makes_the_http_sessions_of_every_sink() -> None:
    """Sinks send through one transport: a session made anywhere else would not follow its rules (TLS,
    no proxies from the environment, no redirects, the deadline, redaction)."""
    package = Path(checkpoint_records.__file__).parent
    makers = [path for path in package.rglob("*.py") if re.search(r"\bSession\(", path.read_text())]
    assert [path.relative_to(package).as_posix() for path in makers] == ["sinks/transport.py"]
