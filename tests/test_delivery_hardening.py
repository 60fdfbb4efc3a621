"""Delivery under attack: servers that echo secrets, misuse Retry-After, trickle, or hold claims.

Real HTTP servers on 127.0.0.1 (``http_server.Receiver``, or a raw socket for a trickling one), the real
store and delivery lanes; no Trainer needed for these.
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from checkpoint_records import ConfigurationError, HttpSink, RecordStore
from checkpoint_records.delivery import DeliveryWorker
from checkpoint_records.formats import WireFormat
from checkpoint_records.lane import BACKOFF_CAP, backoff
from checkpoint_records.record import CheckpointRecord
from checkpoint_records.sinks import RetryLater, sink_from_url
from checkpoint_records.sinks.http import retry_after_seconds
from commands import cli
from http_server import Receiver, Reply, first_then
from records_factory import make_record


def queued(home: Path, sink: HttpSink, steps: range) -> RecordStore:
    store = RecordStore(home)
    for step in steps:
        store.put(make_record(step), [sink.key])
    return store


def test_a_secret_echoed_across_the_cut_never_reaches_the_store_or_the_screen(isolated_store: Path) -> None:
    token = "tok-" + "S3cr3t" * 6  # 40 characters
    for at in (280, 295, 299):  # the token straddles the 300-character cut of the error detail
        body = json.dumps({"error": {"message": "x" * at + token + " and " + "y" * 200}}).encode()
        with Receiver(first_then(1, Reply(400, body))) as receiver:
            sink = HttpSink(receiver.url, token=token)
            store = queued(isolated_store / str(at), sink, range(1, 2))
            worker = DeliveryWorker(store, [sink])
            worker.start()
            worker.flush(10)
            worker.close()
        [delivery] = store.outbox.deliveries()
        assert delivery.state == "dead" and delivery.last_error
        for piece in (token[i : i + 6] for i in range(len(token) - 6)):
            assert piece not in delivery.last_error, (at, delivery.last_error)
        shown = cli("list", "--store", str(isolated_store / str(at)))
        assert "S3cr3t" not in shown.stdout + shown.stderr


def test_credentials_in_a_sink_url_are_refused_with_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="CHECKPOINT_RECORDS_TOKEN") as refused:
        HttpSink("https://alice:pa55word@registry.example/v1", token="tok-kept")
    assert "pa55word" not in str(refused.value)
    with pytest.raises(ConfigurationError, match="user:password"):
        sink_from_url("openai+https://alice:pa55word@registry.example/v1")
    monkeypatch.setenv("CHECKPOINT_RECORDS_SINKS", "https://alice:pa55word@registry.example/v1")
    result = cli("flush", "--timeout", "1")
    assert result.returncode == 2 and "user:password" in result.stderr and "pa55word" not in result.stderr


def test_no_credential_travels_in_clear_text_off_loopback() -> None:
    with pytest.raises(ConfigurationError, match="query values"):
        HttpSink("http://registry.example/v1?api_key=k3y-value")
    HttpSink("https://registry.example/v1?api_key=k3y-value")
    HttpSink("http://127.0.0.1:8080/v1?api_key=k3y-value")
    HttpSink("http://registry.example/v1?api_key=k3y-value", allow_insecure_http=True)


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999/x", "https://h.example:port/x", "http://[::1:80/x"])
def test_an_invalid_port_or_host_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError):
        sink_from_url(url)


def test_retry_after_can_ask_for_later_never_for_sooner() -> None:
    assert retry_after_seconds("0") == 0.0 and retry_after_seconds("Mon, 01 Jan 2001 00:00:00 GMT") == 0.0
    for garbage in ("nan", "inf", "-5", "1.5", "soon", ""):
        assert retry_after_seconds(garbage) is None
    assert backoff(1, 0.0) >= 0.25 and backoff(9, 0.0) >= 64  # a 0 cannot make retries faster
    assert backoff(1, 120.0) == 120.0  # a server may ask for later
    assert backoff(1, math.nan) <= 0.5 and backoff(1, math.inf) <= 0.5
    for failures in (1025, 10**6):  # 2 ** 1025 does not fit in a float
        assert 0 < backoff(failures) <= BACKOFF_CAP


@pytest.mark.parametrize("retry_after", ["0", "nan", "Mon, 01 Jan 2001 00:00:00 GMT"])
def test_a_bad_retry_after_neither_hot_loops_nor_strands_the_record(
    isolated_store: Path, retry_after: str
) -> None:
    busy = Reply(503, b"busy", {"Retry-After": retry_after})
    with Receiver(first_then(4, busy)) as receiver:
        sink = HttpSink(receiver.url)
        store = queued(isolated_store, sink, range(1, 3))
        worker = DeliveryWorker(store, [sink])
        worker.start()
        time.sleep(1.5)
        assert len(receiver.requests) <= 4  # backoff 0.25-0.5 s, then 0.5-1 s: a hot loop makes hundreds
        result = worker.flush(20)
        worker.close()
    assert result.pending == 0 and {d.state for d in store.outbox.deliveries()} == {"delivered"}
    assert len(receiver.accepted()) == 2


class Trickler:
    """A server that answers one byte every ``pace`` seconds, for up to ``lasting`` seconds a request."""

    def __init__(self, pace: float = 0.2, lasting: float = 6.0) -> None:
        self.pace, self.lasting = pace, lasting
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/v1"
        self.stopping = threading.Event()
        #: (start, end) of each request, as the server saw it (end: inf while it lasts).
        self.requests: list[tuple[float, float]] = []

    def __enter__(self) -> Trickler:
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.listener.close()

    def _serve(self) -> None:
        self.listener.settimeout(0.1)
        while not self.stopping.is_set():
            try:
                connection, _ = self.listener.accept()
            except OSError:
                continue
            threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    def _answer(self, connection: socket.socket) -> None:
        started = time.time()
        self.requests.append((started, math.inf))
        index = len(self.requests) - 1
        with connection:
            connection.settimeout(self.lasting)
            try:
                connection.recv(65536)
                for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Slow: " + b"z" * 1000:
                    if self.stopping.is_set() or time.time() - started > self.lasting:
                        break
                    connection.sendall(bytes([byte]))
                    time.sleep(self.pace)
            except OSError:
                pass  # the client cut it: what the deadline is for
        self.requests[index] = (started, time.time())


def test_a_trickling_server_cannot_hold_a_request_past_its_deadline() -> None:
    with Trickler() as server:
        sink = HttpSink(server.url, timeout=(1, 1), deadline=1.5)
        started = time.monotonic()
        with pytest.raises(RetryLater, match="deadline"):
            sink.send({"n": 1}, "key-1")
        assert time.monotonic() - started < 3.0  # a byte every 0.2 s satisfies every read timeout


@pytest.fixture
def short_lease(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr("checkpoint_records.store.leases.LEASE_SECONDS", 0.5)
    monkeypatch.setattr("checkpoint_records.store.leases.LEASE_MARGIN", 0.2)
    yield


def test_no_other_process_can_claim_a_record_while_it_is_being_sent(
    isolated_store: Path, short_lease: None
) -> None:
    with Trickler(lasting=4.0) as server:
        sink = HttpSink(server.url, timeout=(1, 1), deadline=1.5)
        store = queued(isolated_store, sink, range(1, 2))
        worker = DeliveryWorker(store, [sink])
        worker.start()
        deadline = time.monotonic() + 10
        while not server.requests and time.monotonic() < deadline:
            time.sleep(0.02)
        other, claimed_at = RecordStore(isolated_store), None  # a second process, polling for work
        deadline = time.monotonic() + 6
        while claimed_at is None and time.monotonic() < deadline:
            if other.outbox.claim_due(sink.key, "otherhost/1/x", 10.0, 10):
                claimed_at = time.time()
            time.sleep(0.05)
        worker.close()
        other.close()
    assert server.requests, "the lane never sent"
    first_start, first_end = server.requests[0]
    assert claimed_at is None or claimed_at > first_end, (claimed_at - first_start, first_end - first_start)


class Unrenderable(WireFormat):
    """A format with a bug: it cannot render any record."""

    name = "broken"

    def render(self, record: CheckpointRecord) -> dict[str, Any]:
        raise KeyError("no such field")


def test_a_record_that_cannot_be_rendered_is_dead_at_once_and_not_blamed_on_the_sink(
    isolated_store: Path,
) -> None:
    with Receiver() as receiver:
        sink = HttpSink(receiver.url, format=Unrenderable())
        store = queued(isolated_store, sink, range(1, 3))
        worker = DeliveryWorker(store, [sink])
        worker.start()
        assert worker.flush(10).pending == 0
        worker.close()
    assert receiver.requests == [] and len(store.outbox.deliveries()) == 2
    for delivery in store.outbox.deliveries():
        assert delivery.state == "dead"
        assert delivery.attempts == 1 and delivery.last_error
        assert delivery.last_error.startswith("cannot render it as broken: KeyError")
