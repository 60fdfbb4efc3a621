"""The job lifecycle end to end: every format over real HTTP, rotated checkpoints, failed and interrupted runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from checkpoint_records import CheckpointRecordCallback, HttpSink, RecordStore
from commands import cli, killed_run
from http_server import Receiver
from schema_files import SCHEMA_OF, validate
from trainer_runs import tiny_trainer


def validated(wire_format: str, payload: dict[str, Any]) -> dict[str, Any]:
    if wire_format == "llama-stack":  # a Checkpoint is checked as a job's artifacts list
        validate(
            {"job_uuid": payload["post_training_job_id"], "checkpoints": [payload]}, SCHEMA_OF[wire_format]
        )
        return payload
    return validate(payload, SCHEMA_OF[wire_format])


def test_every_format_is_delivered_and_valid_on_the_receiving_side(
    tmp_path: Path, isolated_store: Path
) -> None:
    receivers = {name: Receiver().start() for name in SCHEMA_OF}
    try:
        sinks = [HttpSink(receiver.url, format=name) for name, receiver in receivers.items()]
        tiny_trainer(tmp_path / "out", [CheckpointRecordCallback(sinks=sinks)]).train()
        for receiver in receivers.values():
            receiver.wait_for(3)
    finally:
        for receiver in receivers.values():
            receiver.stop()
    for name, receiver in receivers.items():
        for payload in receiver.accepted_payloads():
            validated(name, payload)
        receiver.assert_idempotent()
    assert sorted(p["step_number"] for p in receivers["openai"].accepted_payloads()) == [2, 4, 6]
    assert sorted(p["status"]["metadata"]["step"] for p in receivers["flexai"].accepted_payloads()) == [
        2,
        4,
        6,
    ]
    assert len(receivers["llama-stack"].accepted_payloads()) == 3
    jobs = receivers["training-job"].accepted_payloads()
    assert jobs[0]["status"] == "Running" and jobs[-1]["status"] == "Success"
    assert jobs[-1]["progress"] == 100 and len(jobs[-1]["training_loss"]) == 6
    assert all(job["id"] == jobs[0]["id"] for job in jobs)


def test_a_rotated_checkpoint_is_updated_to_deleted_and_the_update_delivered(
    tmp_path: Path, isolated_store: Path
) -> None:
    with Receiver() as receiver:
        callback = CheckpointRecordCallback(sinks=[HttpSink(receiver.url, format="flexai")])
        tiny_trainer(tmp_path / "out", [callback], save_total_limit=1).train()
        receiver.wait_for(5)  # three records, then two updates
    by_step = {item.record.training.step: item for item in RecordStore(isolated_store).records()}
    assert [by_step[step].record.status.status for step in (2, 4, 6)] == ["deleted", "deleted", "available"]
    assert [by_step[step].revision for step in (2, 4, 6)] == [2, 2, 1]
    gone = by_step[2].record
    assert (
        not gone.training.inference_ready
        and "rotated away by save_total_limit" in gone.training.inference_ready_reasons[0]
    )
    assert gone.status.files and gone.status.updated_at > gone.status.created_at
    arrived = receiver.accepted_payloads()
    assert len(arrived) == 5
    updates = [p for p in arrived if p["status"]["status"] == "deleted"]
    assert {p["status"]["metadata"]["step"] for p in updates} == {2, 4}
    assert all(p["status"]["metadata"]["inferenceReady"] is False for p in updates)
    for payload in arrived:
        validated("flexai", payload)
    receiver.assert_idempotent()  # the update came under a new key


@pytest.mark.parametrize(("kind", "status"), [("RuntimeError", "Failed"), ("KeyboardInterrupt", "Cancelled")])
def test_a_run_that_raises_is_reported_failed_or_cancelled(
    tmp_path: Path, isolated_store: Path, kind: str, status: str
) -> None:
    with Receiver() as receiver:
        env = {
            "CHECKPOINT_RECORDS_SINKS": f"training-job+{receiver.url},{receiver.url.replace('/v1', '/v2')}"
        }
        run = killed_run(tmp_path / "out", env, "--raise-at", "3", kind)
        assert run.returncode != 0 and "stopped by the test" in run.stderr
        receiver.wait_for(1)
    jobs = [r.payload for r in receiver.accepted() if r.path == "/v1/checkpoints"]
    assert jobs[-1]["status"] == status and 0 < jobs[-1]["progress"] < 100
    validated("training-job", jobs[-1])
    records = [r.payload for r in receiver.accepted() if r.path == "/v2/checkpoints"]
    assert [p["metadata"]["name"] for p in records] == ["out-checkpoint-2"]  # what was saved still arrived
    listing = cli("jobs")
    assert listing.stdout.splitlines()[1].split()[:2] == ["out", status], listing.stdout
    stored = json.loads(cli("jobs", "--json").stdout)
    assert [job["status"] for job in stored] == [status]


@pytest.mark.parametrize("recovery", ["flush", "resumed run"])
def test_a_killed_run_is_reported_cancelled(tmp_path: Path, isolated_store: Path, recovery: str) -> None:
    with Receiver() as receiver:
        env = {"CHECKPOINT_RECORDS_SINKS": f"training-job+{receiver.url}"}
        assert killed_run(tmp_path / "out", env, "--kill-after-save", "4").returncode == -9
        assert json.loads(cli("jobs", "--json").stdout)[0]["status"] == "Running"
        if recovery == "flush":
            flushed = cli("flush", "--sink", f"training-job+{receiver.url}")
            assert flushed.returncode == 0 and "reported Cancelled" in flushed.stderr, flushed.stderr
            assert json.loads(cli("jobs", "--json").stdout)[0]["status"] == "Cancelled"
            final = "Cancelled"
        else:
            resumed = killed_run(tmp_path / "out", env, "--resume")
            assert resumed.returncode == 0, resumed.stderr[-2000:]
            assert "ended without finishing" in resumed.stderr
            final = "Success"
        receiver.wait_for(1)
    arrived = receiver.accepted_payloads()
    assert arrived[-1]["status"] == final
    assert len({payload["id"] for payload in arrived}) == 1  # one job throughout
    receiver.assert_idempotent()


def test_inspect_shows_what_each_platform_receives(tmp_path: Path, isolated_store: Path) -> None:
    tiny_trainer(tmp_path / "out", [CheckpointRecordCallback()]).train()
    for name in SCHEMA_OF:
        shown = cli("inspect", "out-checkpoint-4", "--format", name, "--json")
        assert shown.returncode == 0, shown.stderr
        validated(name, json.loads(shown.stdout))
    as_yaml = cli("inspect", "out-checkpoint-4", "--format", "openai")
    assert "object: fine_tuning.job.checkpoint" in as_yaml.stdout
    unknown = cli("inspect", "out-checkpoint-4", "--format", "nope")
    assert unknown.returncode == 2 and "openai" in unknown.stderr
