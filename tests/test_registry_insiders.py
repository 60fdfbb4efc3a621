"""Two token holders on one registry (a real server process): the insider can neither black-hole the other
job's deliveries by posting first under their idempotency keys, nor replace its checkpoints by posting a
record with their ids."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from checkpoint_records.identity import checkpoint_id_for, idempotency_key, job_id_for
from checkpoint_records.record import CheckpointRecord
from checkpoint_records.store import RecordStore
from records_factory import make_record
from registry_server import Registry, serving
from schema_files import validate
from trainer_runs import run_delivering_to

VICTIM = "victim-token-81c2"
INSIDER = "insider-token-4d07"


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    tokens = {"CHECKPOINT_RECORDS_SERVER_TOKENS": f"{VICTIM},{INSIDER}"}
    with serving(tmp_path / "registry", tmp_path / "server.log", VICTIM, env=tokens) as served:
        yield served


def post(registry: Registry, token: str, body: str, key: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return requests.post(f"{registry.url}/v1/records", data=body, headers=headers, timeout=60)


def held(registry: Registry, record_id: str) -> CheckpointRecord | None:
    stored = RecordStore(registry.store).get(record_id)
    return None if stored is None else stored.record


def test_posting_first_under_a_jobs_predictable_keys_cannot_black_hole_its_deliveries(
    registry: Registry, tmp_path: Path
) -> None:
    """Before the victim trains, the insider posts its own record under every key the victim's sinks
    would have used had keys named only the record, revision and format (all of it public: the job id
    comes from CHECKPOINT_RECORDS_JOB_ID, record ids from the job and step)."""
    victim_job = job_id_for("nightly-finetune")
    decoy = make_record(2, job="insider").to_json()
    predictable = [(checkpoint_id_for(victim_job, step), "record") for step in (2, 4, 6)]
    predictable.append((victim_job, "training-job"))
    for name, wire_format in predictable:
        for revision in range(1, 8):
            key = str(uuid.uuid5(uuid.UUID(name), f"revision:{revision}:format:{wire_format}"))
            assert post(registry, INSIDER, decoy, key).status_code == 200

    local = run_delivering_to(
        f"{registry.url}/v1/records",
        tmp_path / "victim",
        tmp_path / "run",
        CHECKPOINT_RECORDS_TOKEN=VICTIM,
        CHECKPOINT_RECORDS_JOB_ID="nightly-finetune",
    )
    assert [stored.record.training.step for stored in local.records()] == [2, 4, 6]
    for stored in local.records():
        assert held(registry, stored.record.id) == stored.record  # each as the victim sent it
    job = registry.get(f"/v1/training-jobs/{victim_job}")
    assert job.status_code == 200 and job.json()["status"] == "Success"


def test_a_key_is_bound_to_its_document(registry: Registry) -> None:
    first, other = make_record(2, job="victim"), make_record(4, job="victim")
    key = idempotency_key(first.id, 1, "record", first.to_dict())
    assert key == idempotency_key(first.id, 1, "record", json.loads(first.to_json()))  # stable
    assert key != idempotency_key(first.id, 1, "record", other.to_dict())
    assert post(registry, VICTIM, first.to_json(), key).status_code == 200
    reused = post(registry, INSIDER, other.to_json(), key)  # never a silent success swallowing it
    assert reused.status_code == 422 and "Idempotency-Key" in reused.json()["detail"]
    assert held(registry, other.id) is None


def test_a_record_cannot_take_another_jobs_record_id(registry: Registry) -> None:
    victims = make_record(2, job="victim")
    assert post(registry, VICTIM, victims.to_json()).status_code == 200

    forged = make_record(2, job="insider", train_loss=99.0).to_dict()
    forged["metadata"]["id"] = victims.id
    forged["metadata"]["revision"] = 50
    answer = post(registry, INSIDER, json.dumps(forged))
    assert answer.status_code == 422 and answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert validate(problem, "error") == problem and problem["detail"].startswith("metadata.id:")

    # Claiming the right job but another step's id is refused too, alone or inside a batch.
    wrong_step = make_record(4, job="victim", train_loss=99.0).to_dict()
    wrong_step["metadata"]["id"] = victims.id
    wrong_step["metadata"]["revision"] = 50
    batch = [make_record(6, job="insider").to_dict(), wrong_step]
    answer = post(registry, INSIDER, json.dumps(batch))
    assert answer.status_code == 422 and answer.json()["detail"].startswith("[1].metadata.id:")
    assert [stored.record for stored in RecordStore(registry.store).records()] == [victims]


def test_a_record_id_stored_under_another_job_is_a_conflict(registry: Registry) -> None:
    """A store an older release filled holds a record under an id another job's step derives: it is
    never overwritten by that job's documents, and the sender is told why (409, not a 5xx to retry)."""
    legacy = make_record(4, job="insider", train_loss=3.0)
    claimed = checkpoint_id_for(job_id_for("victim"), 4)
    legacy = legacy.model_copy(update={"metadata": legacy.metadata.model_copy(update={"id": claimed})})
    RecordStore(registry.store).put(legacy)

    victims = make_record(4, job="victim")
    assert victims.id == claimed
    newer = victims.model_copy(update={"metadata": victims.metadata.model_copy(update={"revision": 9})})
    other = make_record(6, job="victim")
    answer = post(registry, VICTIM, json.dumps([other.to_dict(), newer.to_dict()]))
    assert answer.status_code == 409 and answer.headers["content-type"] == "application/problem+json"
    assert claimed in answer.json()["detail"] and "another job" in answer.json()["detail"]
    kept = held(registry, claimed)
    assert kept is not None and kept.metadata.job_id == legacy.metadata.job_id
    assert kept.training.train_loss == 3.0
    assert held(registry, other.id) is None  # the batch stored nothing
