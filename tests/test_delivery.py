"""Background delivery against real HTTP servers on 127.0.0.1, driven by real Trainer runs.

In every case: every record arrives, none is lost, training finishes without an exception from this
library, and no ``Idempotency-Key`` ever arrives with two different payloads.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest

from checkpoint_records import CheckpointRecordCallback, HttpSink, RecordStore
from checkpoint_records.store import Delivery
from commands import cli, killed_run
from http_server import Receiver, Reply, always, first_then
from trainer_runs import tiny_trainer
from waiting import wait_until

NAMES = {"out-checkpoint-2", "out-checkpoint-4", "out-checkpoint-6"}


def train(tmp_path: Path, *sinks: HttpSink, flush_timeout: float = 5.0) -> CheckpointRecordCallback:
    callback = CheckpointRecordCallback(sinks=list(sinks), flush_timeout=flush_timeout)
    trainer = tiny_trainer(tmp_path / "out", [callback])
    trainer.train()
    assert trainer.state.global_step == 6
    return callback


def deliveries(store: Path, settled: bool = False) -> list[Delivery]:
    """The records' deliveries in the outbox (not the job's, nor its log's); with ``settled``, once the
    background lanes have written down what they did."""
    if settled:
        outbox = RecordStore(store).outbox
        wait_until(lambda: not outbox.counts()["pending"], 30, "deliveries still pending in the outbox")
    return [delivery for delivery in RecordStore(store).outbox.deliveries() if delivery.kind == "record"]


def test_every_record_arrives_as_stored_with_its_headers(tmp_path: Path, isolated_store: Path) -> None:
    with Receiver() as receiver:
        train(tmp_path, HttpSink(receiver.url, token="tok-123456"))
        arrived = receiver.wait_for(3)
    stored = {item.record.name: item.record.to_dict() for item in RecordStore(isolated_store).records()}
    assert {request.payload["metadata"]["name"] for request in arrived} == NAMES == set(stored)
    for request in arrived:
        assert request.payload == stored[request.payload["metadata"]["name"]]
        assert request.headers["Content-Type"] == "application/json"
        assert request.headers["Authorization"] == "Bearer tok-123456"
    assert len({request.headers["Idempotency-Key"] for request in arrived}) == 3
    receiver.assert_idempotent()
    assert {delivery.state for delivery in deliveries(isolated_store, settled=True)} == {"delivered"}
    listing = cli("list")
    assert [line.split()[-1] for line in listing.stdout.splitlines()[1:]] == ["delivered"] * 3, listing.stdout


def test_endpoint_down_for_the_whole_run_then_flushed(tmp_path: Path, isolated_store: Path) -> None:
    receiver = Receiver()  # not started: connection refused
    train(tmp_path, HttpSink(receiver.url), flush_timeout=1.0)  # enough to store all three, not to deliver
    assert {delivery.state for delivery in deliveries(isolated_store)} == {"pending"}
    assert "0/1 sent, 1 pending" in cli("list", env={"CHECKPOINT_RECORDS_SINKS": receiver.url}).stdout
    assert "0/1 sent, 1 not configured" in cli("list").stdout  # this shell was not given the sink
    failed = cli("flush", "--sink", receiver.url, "--timeout", "1")
    # three records, the job and the one page of its log
    assert failed.returncode == 1 and "still pending 5" in failed.stderr, failed.stderr
    with receiver:
        flushed = cli("flush", "--sink", receiver.url)
        assert flushed.returncode == 0, flushed.stderr
        assert "still pending 0" in flushed.stderr  # (the run's own worker, still alive here, helps)
        assert cli("flush", "--sink", receiver.url).returncode == 0  # nothing left, nothing sent again
    assert {payload["metadata"]["name"] for payload in receiver.accepted_payloads()} == NAMES
    assert len(receiver.requests) == 3
    # the job and its log, each revised at every save while the endpoint was down, go out once, as they are
    assert sorted(request.payload["kind"] for request in receiver.others) == ["TrainingJob", "TrainingLog"]
    receiver.assert_idempotent()


def test_server_errors_are_retried_with_the_same_key(tmp_path: Path, isolated_store: Path) -> None:
    with Receiver(first_then(2, Reply(503, b"<html>busy</html>", {"Content-Type": "text/html"}))) as receiver:
        train(tmp_path, HttpSink(receiver.url))
        receiver.wait_for(3)
    assert sorted(request.status for request in receiver.requests) == [200, 200, 200, 503, 503]
    refused = {r.headers["Idempotency-Key"] for r in receiver.requests if r.status == 503}
    assert refused <= {
        r.headers["Idempotency-Key"] for r in receiver.accepted()
    }  # retried under the same key
    assert receiver.accepted_names() == NAMES
    receiver.assert_idempotent()


def test_429_pauses_that_sink_for_retry_after_and_never_the_other(
    tmp_path: Path, isolated_store: Path
) -> None:
    limited = Receiver(first_then(1, Reply(429, b"", {"Retry-After": "5"}))).start()
    healthy = Receiver().start()
    try:
        # Training ends by waiting for both (delivery stops with it): past the 5 s the limited one asked for.
        train(tmp_path, HttpSink(limited.url), HttpSink(healthy.url), flush_timeout=30)
    finally:
        limited.stop()
        healthy.stop()
    assert limited.accepted_names() == healthy.accepted_names() == NAMES
    asked_at, resumed_at = limited.requests[0].at, limited.requests[1].at
    assert limited.requests[0].status == 429 and resumed_at - asked_at >= 4.9  # waited as asked
    for request in healthy.requests:  # the other sink did not wait: what was saved meanwhile went out
        saved_at = datetime.fromisoformat(request.payload["status"]["createdAt"].replace("Z", "+00:00"))
        if saved_at.timestamp() < resumed_at - 1:
            assert request.at < resumed_at
    limited.assert_idempotent()
    healthy.assert_idempotent()


def test_a_hanging_endpoint_costs_training_nothing_and_loses_nothing(
    tmp_path: Path, isolated_store: Path
) -> None:
    hanging = Receiver(always(Reply(hang=True))).start()
    healthy = Receiver().start()
    try:
        started = time.monotonic()
        train(tmp_path, HttpSink(hanging.url, timeout=(1, 30)), HttpSink(healthy.url), flush_timeout=2)
        assert time.monotonic() - started < 20  # a generous bound: the point is it returns at all
        assert healthy.wait_for(3, timeout=2) and healthy.accepted_names() == NAMES
    finally:
        hanging.stop()
    with Receiver(port=hanging.port) as recovered:
        flushed = cli("flush", "--sink", recovered.url)
        assert flushed.returncode == 0, flushed.stderr
    assert recovered.accepted_names() == NAMES
    healthy.stop()


def test_a_rejected_record_is_dead_with_the_reason_and_can_be_resent(
    tmp_path: Path, isolated_store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    problem = {"type": "about:blank", "title": "Bad Request", "status": 400, "detail": "unknown field spec"}
    rejecting = Reply(400, json.dumps(problem).encode(), {"Content-Type": "application/problem+json"})
    fixed = False
    receiver = Receiver(lambda index, request: Reply() if fixed else rejecting).start()
    caplog.set_level(logging.WARNING, logger="checkpoint_records")
    try:
        train(tmp_path, HttpSink(receiver.url))
        assert {delivery.state for delivery in deliveries(isolated_store, settled=True)} == {"dead"}
        assert len(receiver.requests) == 3  # a rejection is not retried
        reason = "HTTP 400 Bad Request: unknown field spec"
        assert all(delivery.last_error == reason for delivery in deliveries(isolated_store))
        assert len([r for r in caplog.records if reason in r.getMessage()]) == 1  # logged once
        assert cli("list").stdout.count("0/1 sent, 1 dead") == 3  # the reason is in inspect
        assert f"dead: {reason}" in cli("inspect", "out-checkpoint-4").stdout
        flushed = cli("flush", "--sink", receiver.url)  # flush does not re-send the dead: nothing to do
        assert flushed.returncode == 0 and "3 rejected deliveries kept as dead" in flushed.stderr, (
            flushed.stderr
        )
        fixed = True
        resent = cli("resend", "--sink", receiver.url)
        assert resent.returncode == 0, resent.stderr
    finally:
        receiver.stop()
    assert receiver.accepted_names() == NAMES
    receiver.assert_idempotent()


def test_malformed_and_huge_replies(tmp_path: Path, isolated_store: Path) -> None:
    huge = b"x" * (8 * 1024 * 1024)
    replies = [Reply(500, b"\xff\xfe not json {"), Reply(502, huge), Reply(200, huge), Reply(201, b"{broken")]
    with Receiver(lambda index, request: replies[index] if index < len(replies) else Reply()) as receiver:
        train(tmp_path, HttpSink(receiver.url))
        receiver.wait_for(3)
    assert receiver.accepted_names() == NAMES
    errors = [delivery.last_error for delivery in deliveries(isolated_store, settled=True)]
    assert errors == [None, None, None]
    receiver.assert_idempotent()


@pytest.mark.parametrize("recovery", ["flush", "resumed run"])
def test_a_run_killed_right_after_a_save_loses_nothing(
    tmp_path: Path, isolated_store: Path, recovery: str
) -> None:
    receiver = Receiver()
    env = {"CHECKPOINT_RECORDS_SINKS": receiver.url, "CHECKPOINT_RECORDS_FLUSH_TIMEOUT": "0.5"}
    killed = killed_run(tmp_path / "out", env, "--kill-after-save", "4")
    assert killed.returncode == -9, killed.stderr[-2000:]
    # checkpoint-4 was handed over just before the kill: stored, or recorded from disk afterwards
    assert {d.state for d in deliveries(isolated_store)} == {"pending"}
    assert len(deliveries(isolated_store)) in (1, 2)
    with receiver:
        if recovery == "flush":
            assert cli("flush", env=env).returncode == 0
            expected = {"out-checkpoint-2", "out-checkpoint-4"}
        else:
            resumed = killed_run(
                tmp_path / "out", {**env, "CHECKPOINT_RECORDS_FLUSH_TIMEOUT": "60"}, "--resume"
            )
            assert resumed.returncode == 0, resumed.stderr[-2000:]
            expected = NAMES
        receiver.wait_for(len(expected))
    assert receiver.accepted_names() == expected
    assert {d.state for d in deliveries(isolated_store, settled=True)} == {"delivered"}
    receiver.assert_idempotent()


def test_secrets_stay_out_of_the_store_logs_and_errors(
    tmp_path: Path, isolated_store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token, query_secret = "tok-SECRET-4242", "qs-SECRET-9191"

    def echo_credentials(index: int, request: object) -> Reply:
        # A careless server that echoes the credentials it got back in its error body.
        headers = getattr(request, "headers", {})
        return Reply(401, json.dumps({"error": {"message": f"bad {headers.get('Authorization')}"}}).encode())

    caplog.set_level(logging.DEBUG, logger="checkpoint_records")
    with Receiver(echo_credentials) as receiver:
        url = f"{receiver.url}?api_key={query_secret}"
        sink = HttpSink(url, token=token)
        assert token not in repr(sink) and query_secret not in sink.key
        train(tmp_path, sink)
        assert receiver.requests and receiver.requests[0].headers["Authorization"] == f"Bearer {token}"
    errors = [delivery.last_error or "" for delivery in deliveries(isolated_store, settled=True)]
    assert errors and all("***" in error for error in errors)
    written = b"".join(path.read_bytes() for path in isolated_store.iterdir() if path.is_file())
    listing = cli("list").stdout + cli("list", "--json").stdout
    for secret in (token, query_secret):
        assert secret.encode() not in written
        assert secret not in caplog.text
        assert secret not in listing


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_tls_is_verified_and_a_ca_bundle_can_be_given(tmp_path: Path, isolated_store: Path) -> None:
    import ssl

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with Receiver(tls=context) as receiver:
        train(tmp_path, HttpSink(receiver.url, token="tok-tls-1"))
        assert receiver.accepted() == []  # an unknown certificate is refused...
        assert {d.state for d in deliveries(isolated_store, settled=True)} == {"dead"}, deliveries(
            isolated_store
        )
        assert all("TLS" in (d.last_error or "") for d in deliveries(isolated_store))
        resent = cli("resend", "--sink", receiver.url, env={"CHECKPOINT_RECORDS_CA_BUNDLE": str(cert)})
        assert resent.returncode == 0, resent.stderr  # ...and accepted when its CA is given
    assert receiver.accepted_names() == NAMES
