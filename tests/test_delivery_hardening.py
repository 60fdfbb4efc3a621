"""Delivery under attack: servers that echo secrets, misuse Retry-After, trickle, or hold claims.

Real HTTP servers on 127.0.0.1 (``http_server.Receiver``, or a raw socket for a trickling one), the real
store and delivery lanes; no Trainer needed for these.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest

from checkpoint_records import ConfigurationError, HttpSink, MlflowSink, RecordStore
from checkpoint_records.cli import main
from checkpoint_records.delivery import DeliveryWorker
from checkpoint_records.formats import WireFormat
from checkpoint_records.lane import BACKOFF_CAP, backoff
from checkpoint_records.record import CheckpointRecord
from checkpoint_records.sinks import RetryLater, Sink, sink_from_url
from checkpoint_records.sinks.transport import retry_after_seconds
from commands import cli
from http_server import Received, Receiver, Reply, first_then
from records_factory import make_record
from waiting import wait_until


def queued(home: Path, sink: HttpSink, steps: range) -> RecordStore:
    store = RecordStore(home)
    for step in steps:
        store.put(make_record(step), [sink.key])
    return store


#: Credentials with characters that URL-quoting and JSON-escaping change, so each form is a new string.
TOKEN = 'tok/en+"S3cr3t\\' + "Q7x" * 8
QUERY_KEY = "k3y/V4lue+" + "W8m" * 6
USER, PASSWORD = "ann", 'pa55/w+"rd\\ ' + "Z9k" * 6  # a space: form-encoding makes it "+"


@dataclass(frozen=True)
class Credentialed:
    """A sink built with credentials, and the secrets it must keep out of everything we write."""

    name: str
    build: Callable[[str], Sink]
    secrets: tuple[str, ...]


CREDENTIALED = [
    Credentialed(
        "http",
        lambda url: HttpSink(f"{url}?api_key={quote(QUERY_KEY, safe='')}", token=TOKEN),
        (TOKEN, QUERY_KEY),
    ),
    Credentialed("mlflow-token", lambda url: MlflowSink(url, token=TOKEN), (TOKEN,)),
    Credentialed(
        "mlflow-password",
        lambda url: MlflowSink(url, username=USER, password=PASSWORD),
        (PASSWORD, f"{USER}:{PASSWORD}"),
    ),
]


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


#: What a misbehaving server sends back, given one of the sink's secrets and the request it received.
Echo = Callable[[str, Received], Reply]


def _straddling(at: int, style: str) -> Echo:
    """An error body whose secret starts ``at`` characters into the error detail (``E: message`` in
    MLflow's style), so that it straddles the 300-character cut."""

    def reply(secret: str, request: Received) -> Reply:
        if style == "error":
            body: dict[str, Any] = {"error": {"message": "x" * at + secret + " and " + "y" * 200}}
        else:
            body = {"error_code": "E", "message": "x" * (at - len("E: ")) + secret + " and " + "y" * 200}
        return Reply(400, json.dumps(body).encode())

    return reply


ECHOES: dict[str, Echo] = {
    "Location with it": lambda s, r: Reply(302, b"", {"Location": f"https://elsewhere.example/to/{s}"}),
    "Location with it as userinfo and query": lambda s, r: Reply(
        307,
        b"",
        {"Location": f"https://{USER}:{quote(s, safe='')}@elsewhere.example/x?t={quote(s, safe='')}"},
    ),
    "Location with it URL-quoted": lambda s, r: Reply(301, b"", {"Location": f"/login/{quote(s, safe='')}"}),
    "Location with it in a quoted path": lambda s, r: Reply(301, b"", {"Location": f"/to/{quote(s)}/x"}),
    "Location with its base64": lambda s, r: Reply(
        308, b"", {"Location": f"https://elsewhere.example/{b64(s)}"}
    ),
    "status line with it": lambda s, r: Reply(403, b"", reason=f"Forbidden for {s}"),
    "text body with it": lambda s, r: Reply(403, f"denied: {s}".encode(), {"Content-Type": "text/plain"}),
    "text body with it URL-quoted": lambda s, r: Reply(404, f"no page /x?key={quote(s, safe='')}".encode()),
    "text body with it form-encoded": lambda s, r: Reply(400, f"bad form: key={quote_plus(s)}".encode()),
    "body with it JSON-escaped": lambda s, r: Reply(422, json.dumps({"echo": s}).encode()),
    "body with its base64": lambda s, r: Reply(401, f"bad credentials {b64(s)}".encode()),
    "body with the Authorization header": lambda s, r: Reply(
        401, f"got {r.headers['Authorization']}".encode()
    ),
    "RFC 7807 body with it": lambda s, r: Reply(
        403, json.dumps({"title": "Forbidden", "detail": f"token {s} revoked"}).encode()
    ),
    "MLflow error with it": lambda s, r: Reply(
        403, json.dumps({"error_code": "PERMISSION_DENIED", "message": f"bad {s}"}).encode()
    ),
    "error object with it as its code": lambda s, r: Reply(
        401, json.dumps({"error": {"code": s, "message": "invalid"}}).encode()
    ),
    **{
        f"{style} body with it across the cut at {at}": _straddling(at, style)
        for at in (280, 295, 299)
        for style in ("error", "mlflow")
    },
}


def echoed_forms(secret: str) -> list[str]:
    """Every form of ``secret`` a server may echo, and 8-character pieces of each (a secret cut short)."""
    forms = {
        secret,
        quote(secret, safe=""),
        quote(secret),
        quote_plus(secret),
        json.dumps(secret)[1:-1],
        b64(secret),
    }
    return sorted({form[i : i + 8] for form in forms for i in range(len(form) - 7)})


@pytest.mark.parametrize("credentialed", CREDENTIALED, ids=lambda c: c.name)
def test_no_secret_a_server_echoes_reaches_the_store_the_log_or_inspect(
    isolated_store: Path,
    credentialed: Credentialed,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every echo case, for every secret of each sink: one record per (case, secret), told apart by its
    job name (in the record HttpSink posts, in the experiment MlflowSink looks up first)."""
    cases = [(name, secret) for name in ECHOES for secret in credentialed.secrets]

    def script(index: int, request: Received) -> Reply:
        found = re.search(r"echo-(\d+)", request.path + json.dumps(request.payload))
        assert found is not None, request
        name, secret = cases[int(found.group(1))]
        return ECHOES[name](secret, request)

    caplog.set_level(logging.DEBUG, logger="checkpoint_records")
    with Receiver(script) as receiver:
        sink = credentialed.build(receiver.url)
        store = RecordStore(isolated_store)
        for number in range(len(cases)):
            store.put(make_record(1, job=f"echo-{number}"), [sink.key])
        worker = DeliveryWorker(store, [sink])
        worker.start()
        assert worker.flush(60).pending == 0
        worker.close()
    deliveries = {delivery.record_id: delivery for delivery in store.outbox.deliveries()}
    leaks: list[tuple[str, str, str]] = []  # (case, where, what of a secret), all listed when any leak
    for number, (case, secret) in enumerate(cases):
        stored = store.get(f"echo-{number}-checkpoint-1")
        assert stored is not None
        error = deliveries[stored.record.id].last_error or ""
        assert deliveries[stored.record.id].state == "dead" and "HTTP " in error, (case, error)
        assert main(["inspect", stored.record.name, "--store", str(isolated_store)]) == 0
        shown = capsys.readouterr()
        leaks += [(case, "error", piece) for piece in echoed_forms(secret) if piece in error]
        leaks += [
            (case, "inspect", piece) for piece in echoed_forms(secret) if piece in shown.out + shown.err
        ]
        if "***" not in error and not error.endswith("*..."):  # the mask itself may be cut
            leaks.append((case, "error", f"nothing masked in {error!r}"))
    store.close()
    stored_bytes = b"".join(path.read_bytes() for path in isolated_store.rglob("*") if path.is_file())
    for secret in credentialed.secrets:
        leaks += [
            ("any", "store file", piece) for piece in echoed_forms(secret) if piece.encode() in stored_bytes
        ]
        leaks += [("any", "log", piece) for piece in echoed_forms(secret) if piece in caplog.text]
    assert "HTTP 4" in caplog.text and "HTTP 3" in caplog.text  # the log did say the errors
    assert not leaks, "\n".join(sorted({f"{case}: {where}" for case, where, _ in leaks}))


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
        result = worker.flush(20)
        worker.close()
    assert result.pending == 0 and {d.state for d in store.outbox.deliveries()} == {"delivered"}
    assert len(receiver.accepted()) == 2
    # Four refusals, each followed by a pause of at least the first backoff (0.25-0.5 s), never less: a hot
    # loop would send the next request within milliseconds.
    sent = [request.at for request in receiver.requests[:5]]
    assert [request.status for request in receiver.requests[:5]] == [503, 503, 503, 503, 200]
    assert min(later - earlier for earlier, later in pairwise(sent)) >= 0.2, sent


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
                    self.stopping.wait(self.pace)
            except OSError:
                pass  # the client cut it: what the deadline is for
        self.requests[index] = (started, time.time())


@pytest.mark.parametrize(
    "build",
    [
        lambda url: HttpSink(url, timeout=(1, 1), deadline=1.5),
        lambda url: MlflowSink(url, timeout=(1, 1), deadline=1.5),
    ],
    ids=["http", "mlflow"],
)
def test_a_trickling_server_cannot_hold_a_request_past_its_deadline(build: Callable[[str], Sink]) -> None:
    with Trickler(lasting=30.0) as server:
        sink = build(server.url)
        started = time.monotonic()
        with pytest.raises(RetryLater, match="deadline"):
            sink.send(sink.format.render(make_record(1)), "key-1")
        # A byte every 0.2 s satisfies every read timeout: without the deadline this takes 30 s.
        assert time.monotonic() - started < 15.0


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
        sent, ended = sink.send, []  # when the sender's own send ended (the server may notice later)

        def send(document: dict[str, Any], key: str) -> None:
            try:
                sent(document, key)
            finally:
                ended.append(time.time())

        sink.send = send  # type: ignore[method-assign]
        store = queued(isolated_store, sink, range(1, 2))
        worker = DeliveryWorker(store, [sink])
        worker.start()
        wait_until(lambda: server.requests, 30, "the lane never sent")
        other, claims = RecordStore(isolated_store), []  # a second process, polling for work

        def claimed_or_sent() -> bool:
            if other.outbox.claim_due(sink.key, "otherhost/1/x", 10.0, 10):
                claims.append(time.time())
            return bool(claims) or bool(ended)

        wait_until(claimed_or_sent, 30, "the first send never ended")
        worker.close()
        other.close()
    assert ended, "the first send never ended"
    assert not claims or claims[0] > ended[0], (
        claims[0] - server.requests[0][0],
        ended[0] - server.requests[0][0],
    )


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
