"""Signed deliveries (Standard Webhooks), checked with the ``standardwebhooks`` package's own verifier and
signer, never ours: what every HTTP sink sends, what the registry (a real process) accepts and refuses,
and a real training run delivering signed records to a registry that verifies them."""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from unittest import mock

import pytest
import requests
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from checkpoint_records import CheckpointRecordCallback, ConfigurationError, resolve_settings
from checkpoint_records.cli import main
from checkpoint_records.signing import SigningSecret
from checkpoint_records.sinks import RetryLater, configured_sinks
from checkpoint_records.sinks.transport import HttpTransport
from checkpoint_records.store import RecordStore
from commands import cli
from http_server import Received, Receiver, Reply, always, first_then
from records_factory import make_record
from registry_server import Registry, serving
from schema_files import validate
from trainer_runs import run_delivering_to, tiny_trainer

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
OTHER_SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
TOKEN = "signed-token-2b6e"
SIGNATURE_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


def verified(request: Received, secret: str = SECRET) -> bool:
    """Whether the spec's own verifier accepts ``request`` as it arrived."""
    try:
        Webhook(secret).verify(request.raw, request.headers, json_parse=False)
    except WebhookVerificationError:
        return False
    return True


def secret_leaks(*texts: str | bytes) -> bool:
    """Whether the secret, whole or its base64 part, is in any of ``texts``."""
    key = SECRET.removeprefix("whsec_")
    return any(
        (key in text or SECRET in text) if isinstance(text, str) else key.encode() in text for text in texts
    )


def test_a_malformed_secret_fails_fast_naming_the_setting_never_repeating_it(tmp_path: Path) -> None:
    short = "whsec_" + base64.b64encode(b"x" * 8).decode()
    for bad in ("", "not-a-secret-at-all", "whsec_%%%not-base64%%%", short, SECRET.removeprefix("whsec_")):
        with pytest.raises(ConfigurationError, match="CHECKPOINT_RECORDS_SIGNING_SECRET") as caught:
            resolve_settings({"HOME": str(tmp_path), "CHECKPOINT_RECORDS_SIGNING_SECRET": bad})
        assert "whsec_ followed by the base64 of 24 to 64 random bytes" in str(caught.value)
        assert not bad or bad.removeprefix("whsec_") not in str(caught.value)
    refused = cli("serve", "--store", str(tmp_path / "s"), "--signing-secret", short)
    assert refused.returncode == 2 and "signing_secret is not a Standard Webhooks secret" in refused.stderr
    assert short.removeprefix("whsec_") not in refused.stderr + refused.stdout
    settings = resolve_settings({"HOME": str(tmp_path), "CHECKPOINT_RECORDS_SIGNING_SECRET": SECRET})
    assert settings.signing_secret == SigningSecret(SECRET)
    assert not secret_leaks(repr(settings), repr(settings.signing_secret), str(settings.signing_secret))


def test_every_http_sink_signs_and_a_retry_keeps_the_message_id(tmp_path: Path) -> None:
    record = make_record(2)
    with Receiver(first_then(1, Reply(503))) as receiver:
        env = {
            "HOME": str(tmp_path),
            "CHECKPOINT_RECORDS_SINKS": receiver.url,
            "CHECKPOINT_RECORDS_SIGNING_SECRET": SECRET,
        }
        (sink,) = configured_sinks(resolve_settings(env))
        with pytest.raises(RetryLater):
            sink.send(record.to_dict(), "key-1")
        sink.send(record.to_dict(), "key-1")  # the retry
        sink.send(make_record(4).to_dict(), "key-2")
        sink.close()
        assert not secret_leaks(repr(sink))
    first, retried, other = receiver.requests
    assert all(verified(request) for request in receiver.requests)
    assert not verified(first, OTHER_SECRET)
    assert first.headers["webhook-id"] == retried.headers["webhook-id"] == "msg_key-1"
    assert other.headers["webhook-id"] == "msg_key-2"

    # MLflow's REST calls go through the same transport: each call of a delivery is signed, with an id
    # that names the delivery and the call, the same when the delivery is retried.
    with Receiver(always(Reply(500)), path="/api/2.0/mlflow") as mlflow:
        base = mlflow.url.removesuffix("/api/2.0/mlflow")
        env = {"HOME": str(tmp_path), "CHECKPOINT_RECORDS_SINKS": f"mlflow+{base}"}
        (sink,) = configured_sinks(resolve_settings({**env, "CHECKPOINT_RECORDS_SIGNING_SECRET": SECRET}))
        for _ in range(2):
            with pytest.raises(RetryLater):
                sink.send({"kind": "job", "job_name": "run", "job_id": "j", "start_time": 0}, "key-3")
        sink.close()
    assert len(mlflow.requests) == 2 and all(verified(request) for request in mlflow.requests)
    ids = {request.headers["webhook-id"] for request in mlflow.requests}
    assert len(ids) == 1 and ids != {"msg_key-3"}


def test_a_transport_without_a_secret_signs_nothing() -> None:
    with Receiver() as receiver:
        transport = HttpTransport(receiver.url)
        transport.post({"kind": "Checkpoint"}, "key-1")
        transport.close()
    (request,) = receiver.requests
    assert not any(name in {key.lower() for key in request.headers} for name in SIGNATURE_HEADERS)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    env = {"CHECKPOINT_RECORDS_SIGNING_SECRET": SECRET}
    with serving(tmp_path / "registry", tmp_path / "server.log", TOKEN, env=env) as served:
        yield served


def post(registry: Registry, body: bytes, headers: dict[str, str]) -> requests.Response:
    sent = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json", **headers}
    return requests.post(f"{registry.url}/v1/records", data=body, headers=sent, timeout=60)


def signed_by(
    secret: str, body: bytes, message_id: str = "msg_1", at: datetime | None = None
) -> dict[str, str]:
    """The three headers, made by the spec's own signer."""
    at = at or datetime.now(timezone.utc)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(message_id, at, body.decode()),
    }


def test_the_registry_verifies_signatures_when_given_the_secret(registry: Registry) -> None:
    record = make_record(2)
    body = record.to_json().encode()
    refusals = {
        "unsigned": {},
        "another secret": signed_by(OTHER_SECRET, body),
        "ten minutes old": signed_by(SECRET, body, at=datetime.now(timezone.utc) - timedelta(minutes=10)),
        "from the future": signed_by(SECRET, body, at=datetime.now(timezone.utc) + timedelta(minutes=10)),
        "another body": signed_by(SECRET, make_record(4).to_json().encode()),
        "no timestamp": {
            key: value for key, value in signed_by(SECRET, body).items() if key != "webhook-timestamp"
        },
    }
    for why, headers in refusals.items():
        answer = post(registry, body, headers)
        assert answer.status_code == 401, why
        assert answer.headers["content-type"] == "application/problem+json", why
        problem = answer.json()
        assert validate(problem, "error") == problem and "signature" in problem["detail"], why
    assert RecordStore(registry.store).records() == []

    several = signed_by(SECRET, body)  # a rotation: an old secret's signature beside the new one's
    several["webhook-signature"] = (
        signed_by(OTHER_SECRET, body)["webhook-signature"] + " " + several["webhook-signature"]
    )
    answer = post(registry, body, several)
    assert answer.status_code == 200 and answer.json()["stored"] is True
    assert registry.get("/v1/checkpoints").status_code == 200  # reads are not deliveries: no signature
    assert not secret_leaks(registry.log.read_text())


def test_a_real_run_delivers_signed_records_to_a_registry_that_verifies_them(
    registry: Registry, tmp_path: Path
) -> None:
    url = f"{registry.url}/v1/records"
    env = {"CHECKPOINT_RECORDS_TOKEN": TOKEN, "CHECKPOINT_RECORDS_SIGNING_SECRET": SECRET}
    local = run_delivering_to(url, tmp_path / "node", tmp_path / "run", **env)
    received = RecordStore(registry.store)
    assert [stored.record for stored in received.records()] == [stored.record for stored in local.records()]
    job_id = local.records()[0].record.metadata.job_id
    assert registry.get(f"/v1/training-jobs/{job_id}").json()["status"] == "Success"

    # A sender with the wrong secret is refused, and told why: the delivery is dead, not retried.
    wrong_sender = {
        **env,
        "CHECKPOINT_RECORDS_HOME": str(tmp_path / "wrong"),
        "CHECKPOINT_RECORDS_SINKS": f"{url},training-job+{url}",
        "CHECKPOINT_RECORDS_SIGNING_SECRET": OTHER_SECRET,
    }
    with mock.patch.dict(os.environ, wrong_sender):
        tiny_trainer(tmp_path / "wrong-run", [CheckpointRecordCallback()], max_steps=2).train()
        main(["flush", "--timeout", "60"])  # what the end of training left pending, if anything
    wrong = RecordStore(tmp_path / "wrong")
    assert wrong.outbox.counts()["pending"] == 0 and wrong.outbox.counts()["dead"] >= 1
    reasons = [delivery.last_error or "" for delivery in wrong.outbox.deliveries()]
    assert any("HTTP 401" in reason and "signature" in reason for reason in reasons), reasons
    assert len(received.records()) == len(local.records())

    stores = [path.read_bytes() for path in tmp_path.rglob("records.db*") if path.is_file()]
    assert not secret_leaks(registry.log.read_text(), *stores)
