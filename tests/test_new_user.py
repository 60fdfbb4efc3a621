"""What a new user trips over, each fixed for good: a closed pipe, exit codes, a mistyped command, plurals,
repeated reasons, the pending-delivery hint, one date format, OpenAI's error shape and ``n_epochs``,
rotated-away checkpoints listed alike by OpenAI and Llama Stack, and ``forget``."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import yaml
from fastapi.testclient import TestClient

from checkpoint_records.cli import BROKEN_PIPE, main
from checkpoint_records.formats.openai import fine_tuning_job_id
from checkpoint_records.history import LogEntry
from checkpoint_records.record import CheckpointRecord
from checkpoint_records.server.app import create_app
from checkpoint_records.server.openai_api import n_epochs
from checkpoint_records.sinks.transport import describe_reply
from checkpoint_records.store import Delivery, RecordStore
from checkpoint_records.terminal import delivery_state, human_time, jobs_table
from commands import cli
from records_factory import make_record
from registry_server import serving

TOKEN = "new-user-token-5d1e"
#: Every view for people shows an instant so: ``2026-11-23 15:04:05Z``.
HUMAN_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ")


@pytest.fixture
def store(isolated_store: Path) -> RecordStore:
    """Two jobs' records, no sinks: ``job`` (steps 1-3) and ``other`` (steps 1-2)."""
    records = RecordStore(isolated_store)
    for step in (1, 2, 3):
        records.put(make_record(step))
    for step in (1, 2):
        records.put(make_record(step, job="other"))
    return records


def _deleted(record: CheckpointRecord) -> CheckpointRecord:
    return record.model_copy(update={"status": record.status.model_copy(update={"status": "deleted"})})


@pytest.mark.parametrize(
    "args", [("list", "--json"), ("list",), ("jobs", "--json"), ("inspect", "job-checkpoint-2", "--json")]
)
def test_a_reader_that_goes_away_ends_the_command_quietly(store: RecordStore, args: tuple[str, ...]) -> None:
    if args[0] == "jobs":  # `jobs` lists job documents
        from checkpoint_records.job import job_snapshot

        store.put_job(
            job_snapshot(None, "Trainer", "Running", "tiny", job_id="j", job_name="j", created_at=time.time())
        )
    process = subprocess.Popen(
        [sys.executable, "-m", "checkpoint_records.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # `| head` gone before the command writes: the next write is EPIPE
    errors = process.stderr.read().decode()
    assert process.wait(120) == BROKEN_PIPE
    assert "Traceback" not in errors and "BrokenPipe" not in errors and "Exception ignored" not in errors


def test_asking_about_a_missing_job_exits_1(store: RecordStore) -> None:
    for args in (("list", "--job", "nope"), ("list", "--job", "nope", "--json")):
        result = cli(*args)
        assert result.returncode == 1, result
    assert "no records of job 'nope'" in cli("list", "--job", "nope").stderr
    assert cli("list", "--job", "other").returncode == 0
    once = cli("evaluate", "--name", "e", "--once", "--job", "nope", "--command", "true {directory}")
    assert once.returncode == 1 and "no job named 'nope'" in once.stderr, once


def test_a_mistyped_command_gets_a_suggestion(isolated_store: Path) -> None:
    result = cli("lst")
    assert result.returncode == 2 and "did you mean: list?" in result.stderr
    assert "did you mean" not in cli("zzzzzz").stderr


def test_one_plural_helper_says_1_attempt_and_a_reason_once() -> None:
    delivery = Delivery("s", "r", 1, "pending", 1, time.time() + 60, "HTTP 503 Service Unavailable")
    assert "1 attempt:" in delivery_state(delivery, time.time())
    body = b'{"status": 400, "title": "Bad Request", "detail": "Bad Request"}'
    assert describe_reply(400, "Bad Request", body).text == "HTTP 400 Bad Request"
    body = b'{"status": 422, "title": "Unprocessable Entity", "detail": "step: too big"}'
    assert describe_reply(422, "Unprocessable Entity", body).text == (
        "HTTP 422 Unprocessable Entity: step: too big"
    )


def test_list_hints_at_deliveries_only_when_some_are_pending(store: RecordStore) -> None:
    assert "why a delivery is pending" not in cli("list").stderr  # every record local
    store.put(make_record(4), sinks=["https://registry.invalid/v1/records"])
    assert "why a delivery is pending" in cli("list").stderr


def test_dates_are_in_one_format_in_list_jobs_inspect(store: RecordStore) -> None:
    listing = cli("list", "--job", "job").stdout.splitlines()
    assert all(HUMAN_TIME.search(line) for line in listing[1:])
    shown = yaml.safe_load(cli("inspect", "job-checkpoint-1").stdout)["status"]
    assert HUMAN_TIME.fullmatch(shown["createdAt"]) and HUMAN_TIME.fullmatch(shown["updatedAt"])
    detail = {"name": "j", "status": "Running", "progress": 50, "updated_at": 1_800_000_000, "id": "j"}
    assert "2027-01-15 08:00:00Z" in jobs_table([detail])
    assert human_time(1_800_000_000) == human_time("2027-01-15T08:00:00.123456Z")


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    store = RecordStore(tmp_path / "registry")
    store.put(make_record(1))
    with serving(tmp_path / "registry", tmp_path / "server.log", TOKEN) as served:
        yield served.url


def test_the_openai_sdk_shows_our_error_messages(registry: str) -> None:
    refused = openai.OpenAI(base_url=f"{registry}/v1", api_key="not-the-token", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as error:
        refused.fine_tuning.jobs.list()
    assert "a valid bearer token is required" in str(error.value)
    assert error.value.code == "invalid_api_key" and error.value.type == "invalid_request_error"
    client = openai.OpenAI(base_url=f"{registry}/v1", api_key=TOKEN, max_retries=0)
    with pytest.raises(openai.NotFoundError) as missing:
        client.fine_tuning.jobs.retrieve("ftjob-nope")
    assert "no fine-tuning job 'ftjob-nope'" in str(missing.value)


def test_errors_outside_the_openai_routes_stay_problem_details(tmp_path: Path) -> None:
    with TestClient(create_app(RecordStore(tmp_path / "registry"))) as client:
        problem = client.get("/v1/training-jobs/nope")
        assert problem.headers["content-type"] == "application/problem+json"
        assert problem.json()["detail"] and problem.json()["status"] == 404
        invalid = client.get("/v1/fine_tuning/jobs", params={"limit": 0})
        error = invalid.json()["error"]
        assert (
            invalid.status_code == 422 and error["param"] == "limit" and error["message"].startswith("limit:")
        )


def test_n_epochs_is_the_integer_the_steps_take() -> None:
    record = make_record(15)
    ended = record.status.model_copy(update={"metadata": record.training.model_copy(update={"epoch": 3.75})})
    record = record.model_copy(update={"status": ended})
    assert n_epochs({"max_steps": 15, "num_train_epochs": 3.0}, record) == 4
    assert n_epochs({"max_steps": 15}, None) == "auto"
    assert n_epochs({"num_train_epochs": 3.0}, record) == 3
    assert n_epochs({"num_train_epochs": 2.5}, record) == "auto"


def test_rotated_away_checkpoints_are_in_neither_openai_nor_llama_stack_lists(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "registry")
    for step in (1, 2, 3):
        store.put(make_record(step))
    store.update_record(make_record(2).id, _deleted)
    job_id = make_record(1).metadata.job_id
    with TestClient(create_app(store)) as client:
        page = client.get(f"/v1/fine_tuning/jobs/{fine_tuning_job_id(job_id)}/checkpoints").json()
        artifacts = client.get("/v1/post-training/job/artifacts", params={"job_uuid": job_id}).json()
    assert [item["step_number"] for item in page["data"]] == [3, 1]
    listed = {item["identifier"] for item in artifacts["checkpoints"]}
    assert listed == {make_record(1).id, make_record(3).id}


def test_forget_needs_yes_without_a_terminal(store: RecordStore) -> None:
    refused = subprocess.run(
        [sys.executable, "-m", "checkpoint_records.cli", "forget", "job"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )
    assert refused.returncode == 2 and "pass --yes" in refused.stderr
    assert len(store.records()) == 5
    assert cli("forget", "nope", "--yes").returncode == 1


def test_forget_removes_a_job_with_all_it_holds_or_one_record(store: RecordStore) -> None:
    sink, job_id = "https://registry.invalid/v1/records", make_record(1).metadata.job_id
    store.put(make_record(4), sinks=[sink])
    store.append_log(job_id, [LogEntry(seq=0, step=1, values={"loss": 1.0, "step": 1})], sinks=[sink])
    assert store.log_version(job_id) == (1, 1)  # a page of the log, queued for the sink
    done = cli("forget", "job", "--yes")
    assert done.returncode == 0 and "4 records, 2 deliveries" in done.stderr, done
    assert cli("list", "--job", "job").returncode == 1
    assert store.outbox.deliveries() == [] and job_id not in store.job_ids()
    assert store.log_version(job_id) == (0, 0) and store.log_series(job_id) == []
    assert cli("forget", "other-checkpoint-1", "--yes").returncode == 0
    assert [stored.record.name for stored in store.records()] == ["other-checkpoint-2"]


def test_forget_asks_at_a_terminal(store: RecordStore, monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Terminal("n\n"))
    assert main(["forget", "other"]) == 1
    assert len(store.records()) == 5
    monkeypatch.setattr(sys, "stdin", Terminal("y\n"))
    assert main(["forget", "other"]) == 0
    assert [stored.record.metadata.job_name for stored in store.records()] == ["job"] * 3


def test_forget_counts_a_jobs_checkpoints_down_and_a_forgotten_job_leaves_the_registrys_lists(
    store: RecordStore,
) -> None:
    job_id, other_id = make_record(1).metadata.job_id, make_record(1, job="other").metadata.job_id
    assert cli("forget", "job-checkpoint-3", "--yes").returncode == 0
    counts = {summary.job_id: summary.checkpoints for _, summary in store.job_summaries()}
    assert counts == {job_id: 2, other_id: 2}
    assert cli("forget", "other", "--yes").returncode == 0
    assert store.job_ids() == [job_id]
    with TestClient(create_app(store)) as client:
        listed = client.get("/v1/fine_tuning/jobs").json()["data"]
    assert [job["id"] for job in listed] == [fine_tuning_job_id(job_id)]
