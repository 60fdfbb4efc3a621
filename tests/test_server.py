"""``checkpoint-records serve`` as a real process on 127.0.0.1: a real Trainer run delivers to it through
``CHECKPOINT_RECORDS_SINKS``, and the official OpenAI and Llama Stack clients read the run back."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import requests
from fastapi.testclient import TestClient
from llama_stack_client import LlamaStackClient
from openai import OpenAI
from openapi_spec_validator import validate as validate_openapi

from checkpoint_records import CheckpointRecordCallback
from checkpoint_records.cli import main
from checkpoint_records.formats.llama_stack import job_artifacts
from checkpoint_records.formats.openai import checkpoint_id, fine_tuning_job_id
from checkpoint_records.server.app import create_app
from checkpoint_records.store import RecordStore
from records_factory import make_record
from registry_server import Registry, serving
from schema_files import validate
from trainer_runs import tiny_trainer

TOKEN = "registry-token-3f9c2a"
STEPS = 12  # more than one page of OpenAI checkpoints (10)


@pytest.fixture(scope="module")
def served_run(
    tmp_path_factory: pytest.TempPathFactory, module_database: str | None
) -> Iterator[tuple[Registry, Path]]:
    """A registry (on each database), and two tiny Trainer runs on "node-a" and "node-b" sending their
    records and job documents to it, as the README's team set-up does; node-a's store is returned to
    compare with."""
    base = tmp_path_factory.mktemp("registry")
    with serving(base / "registry", base / "server.log", TOKEN, database=module_database) as registry:
        sinks = f"{registry.url}/v1/records,training-job+{registry.url}/v1/records"
        for node, job, steps in (("node-a", "run", STEPS), ("node-b", "other", 4)):
            env = {"CHECKPOINT_RECORDS_HOME": str(base / node), "CHECKPOINT_RECORDS_SINKS": sinks}
            with mock.patch.dict(os.environ, {**env, "CHECKPOINT_RECORDS_TOKEN": TOKEN}):
                run = tiny_trainer(
                    base / node / job, [CheckpointRecordCallback()], max_steps=steps, save_steps=1
                )
                run.train()
                # What on_train_end's 5 s did not deliver on a loaded machine, sent as a user would.
                assert main(["--store", str(base / node), "flush", "--timeout", "60"]) == 0
            local = RecordStore(base / node)
            assert local.outbox.counts()["pending"] == 0, local.outbox.deliveries()
        yield registry, base / "node-a"


def cli_json(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    capsys.readouterr()
    assert main(list(args)) == 0
    return json.loads(capsys.readouterr().out)


def test_openai_client_reads_the_run_back(
    served_run: tuple[Registry, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    registry, node = served_run
    client = OpenAI(base_url=f"{registry.url}/v1", api_key=TOKEN, max_retries=0)
    local = RecordStore(node)
    (job_id,) = local.job_ids()
    jobs = [
        job for job in client.fine_tuning.jobs.list() if job.metadata == {"job_id": job_id, "job_name": "run"}
    ]
    assert len(jobs) == 1
    job = client.fine_tuning.jobs.retrieve(jobs[0].id)
    assert (job.status, job.model) == ("succeeded", "tiny-gpt2")
    assert job.finished_at is not None and job.finished_at >= job.created_at
    last = local.records_newest_first(job_id, 1)[0].record
    assert job.fine_tuned_model is not None and job.fine_tuned_model.endswith(f":ckpt-step-{STEPS}")

    first_page = client.fine_tuning.jobs.checkpoints.list(job.id)
    assert len(first_page.data) == 10 and first_page.has_more
    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))  # auto-paginates
    assert [c.step_number for c in checkpoints] == list(range(STEPS, 0, -1))
    assert checkpoints[0].fine_tuned_model_checkpoint == job.fine_tuned_model
    for checkpoint, stored in zip(checkpoints, local.records_newest_first(job_id, STEPS), strict=True):
        printed = cli_json(
            capsys, "--store", str(node), "inspect", stored.record.name, "--format", "openai", "--json"
        )
        assert checkpoint.to_dict() == printed
    assert last.training.step == STEPS


def test_llama_stack_client_reads_the_run_back(served_run: tuple[Registry, Path]) -> None:
    registry, node = served_run
    client = LlamaStackClient(base_url=registry.url, api_key=TOKEN, max_retries=0)
    local = RecordStore(node)
    (job_id,) = local.job_ids()
    listed = [job.job_uuid for job in client.post_training.job.list()]
    assert job_id in listed and len(listed) == 2
    expected = job_artifacts(job_id, [stored.record for stored in local.records(job_id)])
    artifacts = client.post_training.job.artifacts(job_uuid=job_id)
    assert artifacts.to_dict() == expected
    validate(artifacts.to_dict(), "llama-stack-job-artifacts")
    status = client.post_training.job.status(job_uuid=job_id)
    assert (status.job_uuid, status.status) == (job_id, "completed")
    assert status.checkpoints == expected["checkpoints"] and len(status.checkpoints) == STEPS
    assert status.completed_at is not None and status.started_at is not None


def test_flexai_checkpoints_and_training_job_documents(
    served_run: tuple[Registry, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    registry, node = served_run
    (job_id,) = RecordStore(node).job_ids()
    page = registry.get("/v1/checkpoints", job=job_id).json()
    assert (page["has_more"], page["last_id"]) == (False, page["data"][-1]["metadata"]["id"])
    listed = page["data"]
    assert [item["status"]["metadata"]["step"] for item in listed] == list(range(STEPS, 0, -1))
    for item in listed:
        validate(item, "flexai-checkpoint")
    name = listed[-1]["metadata"]["name"]
    printed = cli_json(capsys, "--store", str(node), "inspect", name, "--format", "flexai", "--json")
    assert registry.get(f"/v1/checkpoints/{name}").json() == printed
    assert registry.get(f"/v1/checkpoints/{listed[0]['metadata']['id']}").json() == listed[0]

    detail = registry.get(f"/v1/training-jobs/{job_id}").json()
    validate(detail, "training-job-detail")
    (local_detail,) = cli_json(capsys, "--store", str(node), "jobs", "--json")
    assert detail == local_detail
    assert detail["status"] == "Success" and detail["progress"] == 100


def pages(registry: Registry, limit: int, **params: str) -> list[dict[str, Any]]:
    """``GET /v1/checkpoints`` followed page by page through ``after``; each page's ``has_more`` checked."""
    pages: list[dict[str, Any]] = []
    after: dict[str, str] = {}
    for _ in range(100):
        page = registry.get("/v1/checkpoints", limit=str(limit), **params, **after).json()
        assert len(page["data"]) == limit or not page["has_more"]
        pages.append(page)
        if not page["has_more"]:
            return pages
        after = {"after": page["last_id"]}
    raise AssertionError("more than 100 pages")


def test_flexai_checkpoints_page_newest_first_for_a_job_and_for_every_job(
    served_run: tuple[Registry, Path],
) -> None:
    registry, node = served_run
    (job_id,) = RecordStore(node).job_ids()
    job_pages = pages(registry, 5, job=job_id)
    assert [len(page["data"]) for page in job_pages] == [5, 5, 2]
    steps = [item["status"]["metadata"]["step"] for page in job_pages for item in page["data"]]
    assert steps == list(range(STEPS, 0, -1))

    every = [item for page in pages(registry, 7) for item in page["data"]]
    assert len(every) == len({item["metadata"]["id"] for item in every}) == STEPS + 4
    assert [item["status"]["metadata"]["step"] for item in every][:2] == [STEPS, STEPS - 1]

    assert registry.get("/v1/checkpoints", limit="1001").status_code == 422
    ids = {item["metadata"]["id"] for page in job_pages for item in page["data"]}
    other = next(item["metadata"]["id"] for item in every if item["metadata"]["id"] not in ids)  # node-b's
    unknown = registry.get("/v1/checkpoints", job=job_id, after=other)
    assert unknown.status_code == 404 and "after=" in unknown.json()["detail"]


def test_openapi_document_is_valid_and_describes_every_route(served_run: tuple[Registry, Path]) -> None:
    registry, _ = served_run
    document = registry.get("/openapi.json").json()
    validate_openapi(document)
    assert set(document["paths"]) == {
        "/v1/records",
        "/v1/checkpoints",
        "/v1/checkpoints/{name_or_id}",
        "/v1/training-jobs/{job_id}",
        "/v1/fine_tuning/jobs",
        "/v1/fine_tuning/jobs/{fine_tuning_job_id}",
        "/v1/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints",
        "/v1/post-training/jobs",
        "/v1/post-training/job/status",
        "/v1/post-training/job/artifacts",
        "/v1/evaluations/{evaluator}",
        "/v1/evaluations/{evaluator}/claims",
        "/v1/evaluations/{evaluator}/started",
        "/v1/evaluations/{evaluator}/renewals",
        "/v1/evaluations/{evaluator}/retries",
        "/v1/evaluations/{evaluator}/results",
        "/v1/evaluations/{evaluator}/releases",
        "/v1/evaluations/{evaluator}/reopenings",
    }
    schemas = document["components"]["schemas"]
    assert {"CheckpointRecord", "TrainingJobDetail", "ProblemDetails"} <= set(schemas)
    listing = {p["name"]: p["schema"] for p in document["paths"]["/v1/checkpoints"]["get"]["parameters"]}
    assert listing["limit"] == {
        "type": "integer",
        "maximum": 1000,
        "minimum": 1,
        "default": 100,
        **listing["limit"],
    }
    assert {"job", "after"} <= set(listing)


def test_every_route_needs_the_token_and_the_token_is_never_logged(served_run: tuple[Registry, Path]) -> None:
    registry, _ = served_run
    document = registry.get("/openapi.json").json()
    readable = [path for path, operations in document["paths"].items() if "get" in operations]
    paths = ["/openapi.json", *(path.replace("{", "").replace("}", "") for path in readable)]
    for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": TOKEN}):
        for path in paths:
            reply = requests.get(registry.url + path, headers=headers, params={"job_uuid": "x"}, timeout=30)
            assert reply.status_code == 401, path
            assert TOKEN not in reply.text
            if path.startswith("/v1/fine_tuning"):  # OpenAI's routes answer OpenAI's error object
                assert reply.json()["error"]["code"] == "invalid_api_key", path
                continue
            assert reply.headers["content-type"] == "application/problem+json"
            assert validate(reply.json(), "error")["title"] == "Unauthorized"
        posted = requests.post(f"{registry.url}/v1/records", data=b"{}", headers=headers, timeout=30)
        assert posted.status_code == 401
    assert TOKEN not in registry.log.read_text()
    assert "401" in registry.log.read_text()


def test_openai_pages_start_after_any_checkpoint_even_one_this_process_never_served(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "registry")
    for step in range(1, 16):
        store.put(make_record(step))
    job_id = make_record(1).metadata.job_id
    with TestClient(create_app(store)) as client:
        url = f"/v1/fine_tuning/jobs/{fine_tuning_job_id(job_id)}/checkpoints"
        after = checkpoint_id(make_record(9).id)
        page = client.get(url, params={"after": after, "limit": 3}).json()
        assert [item["step_number"] for item in page["data"]] == [8, 7, 6] and page["has_more"]
        assert page["first_id"] == page["data"][0]["id"] and page["last_id"] == page["data"][-1]["id"]
        rest = client.get(url, params={"after": page["last_id"], "limit": 10}).json()
        assert [item["step_number"] for item in rest["data"]] == [5, 4, 3, 2, 1] and not rest["has_more"]
        missing = client.get(url, params={"after": "ftckpt_unknown"})
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"  # OpenAI's shape
        job = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        assert job["id"] == fine_tuning_job_id(job_id)
        assert (job["status"], job["finished_at"]) == ("running", None)  # records only: no job document
        assert client.get("/v1/fine_tuning/jobs/ftjob-nope").status_code == 404
        assert client.get(url, params={"limit": 0}).json()["error"]["message"].startswith("limit:")
