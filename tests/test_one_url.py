"""The README's team set-up with one URL: ``CHECKPOINT_RECORDS_SINKS=http://registry/v1/records`` and the
token is all a training node needs. The registry (``checkpoint-records serve``, a real process on
127.0.0.1) then shows each job as the node's own store does: the same chart feed (every curve point,
markers, best, readiness, status, progress), the same OpenAI job (read with the official client), and
checkpoint pages that say where they came from. A store recorded with no sink at all reaches a registry
started afterwards with one ``flush --sink``; Debian's chromium shows the registry's job page."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import requests
from fastapi.testclient import TestClient
from openai import OpenAI
from playwright.sync_api import sync_playwright

from checkpoint_records import CheckpointRecordCallback
from checkpoint_records.cli import main
from checkpoint_records.server.app import create_app
from checkpoint_records.store import RecordStore
from registry_server import Registry, serving
from schema_files import validate
from trainer_runs import tiny_trainer

TOKEN = "one-url-token-7d1e9b"
CHROMIUM = "/usr/bin/chromium"


@dataclass(frozen=True)
class Node:
    """A training node: its own store, and the epochs its Trainer ran."""

    store: Path
    epochs: int


def train_and_flush(home: Path, output_dir: Path, sinks: str | None, **arguments: Any) -> int:
    """A tiny Trainer run configured by the environment only (``sinks`` as CHECKPOINT_RECORDS_SINKS, or
    none), then ``flush`` as a user would; the epochs the Trainer ran."""
    env = {"CHECKPOINT_RECORDS_HOME": str(home), "CHECKPOINT_RECORDS_TOKEN": TOKEN}
    if sinks is not None:
        env["CHECKPOINT_RECORDS_SINKS"] = sinks
    resume = arguments.pop("resume", None)
    with mock.patch.dict(os.environ, env):
        trainer = tiny_trainer(output_dir, [CheckpointRecordCallback()], **arguments)
        trainer.train(resume_from_checkpoint=resume)
        if sinks is not None:  # what on_train_end's 5 s did not deliver on a loaded machine
            assert main(["flush", "--timeout", "120"]) == 0
    return int(trainer.state.num_train_epochs)


@pytest.fixture(scope="module")
def team(
    tmp_path_factory: pytest.TempPathFactory, module_database: str | None
) -> Iterator[tuple[Registry, list[Node]]]:
    """A registry (on each database), and two nodes sending to it through one URL each: node-a one run of
    12 steps, node-b a run of 4 steps resumed to 8 (its series goes on from the checkpoint)."""
    base = tmp_path_factory.mktemp("one-url")
    with serving(base / "registry", base / "server.log", TOKEN, database=module_database) as registry:
        url = f"{registry.url}/v1/records"
        epochs_a = train_and_flush(base / "node-a", base / "a" / "run", url, max_steps=12, save_steps=4)
        train_and_flush(base / "node-b", base / "b" / "other", url, max_steps=4, save_steps=2)
        epochs_b = train_and_flush(
            base / "node-b", base / "b" / "other", url, max_steps=8, save_steps=2, resume=True
        )
        yield registry, [Node(base / "node-a", epochs_a), Node(base / "node-b", epochs_b)]


def own_view(store: Path, path: str) -> Any:
    """What the node's own store answers at ``path``, served as the registry serves its own."""
    with TestClient(create_app(RecordStore(store))) as client:
        reply = client.get(path)
        assert reply.status_code == 200, reply.text
        return reply.json()


def registry_view(registry: Registry, path: str) -> Any:
    reply = registry.get(path)
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_the_registry_draws_each_job_as_the_nodes_own_store_does(team: tuple[Registry, list[Node]]) -> None:
    registry, nodes = team
    for node in nodes:
        (job_id,) = RecordStore(node.store).job_ids()
        feed = registry_view(registry, f"/ui/api/jobs/{job_id}")
        assert feed == own_view(node.store, f"/ui/api/jobs/{job_id}")
        assert feed["curves"]["train"] and feed["curves"]["eval"]  # both curves, with their own steps
        assert len({step for step, _ in feed["curves"]["train"]}) == len(feed["curves"]["train"]) > 1
        assert feed["job"]["status"] == "Success" and feed["job"]["progress"] == 100
        assert [marker["state"] for marker in feed["markers"]].count("best") <= 1
        job = registry_view(registry, f"/v1/training-jobs/{job_id}")
        assert job == own_view(node.store, f"/v1/training-jobs/{job_id}")
        validate(job, "training-job-detail")
    resumed = registry_view(registry, f"/ui/api/jobs/{RecordStore(nodes[1].store).job_ids()[0]}")
    assert [step for step, _ in resumed["curves"]["train"]] == list(range(1, 9))


def test_the_openai_client_reads_each_job_as_the_node_ran_it(team: tuple[Registry, list[Node]]) -> None:
    registry, nodes = team
    client = OpenAI(base_url=f"{registry.url}/v1", api_key=TOKEN, max_retries=0)
    for node in nodes:
        (job_id,) = RecordStore(node.store).job_ids()
        job = client.fine_tuning.jobs.retrieve(job_id)
        assert job.to_dict() == own_view(node.store, f"/v1/fine_tuning/jobs/{job_id}")
        assert job.status == "succeeded" and job.finished_at is not None
        assert job.hyperparameters.n_epochs == node.epochs  # what the Trainer ran, not the argument


def test_received_checkpoints_say_where_they_came_from(team: tuple[Registry, list[Node]]) -> None:
    registry, nodes = team
    records = RecordStore(nodes[0].store).records()
    with_token = {"Authorization": f"Bearer {TOKEN}"}
    for stored in records:
        page = requests.get(f"{registry.url}/checkpoints/{stored.record.id}", headers=with_token, timeout=30)
        assert page.status_code == 200
        assert "local only" not in page.text and "kept in the local store only" not in page.text
        assert (
            f"Received from node <code>{stored.record.training.node}</code>, sent from 127.0.0.1" in page.text
        )
        assert f"the files are on {stored.record.training.node}" in page.text
    job_page = requests.get(
        f"{registry.url}/jobs/{records[0].record.metadata.job_id}", headers=with_token, timeout=30
    )
    assert ">received<" in job_page.text and ">local<" not in job_page.text


def test_a_registry_started_after_the_runs_gets_everything_with_one_flush(
    tmp_path: Path, database: str | None
) -> None:
    home = tmp_path / "node"
    train_and_flush(home, tmp_path / "first", None, max_steps=4, save_steps=2)
    train_and_flush(home, tmp_path / "second", None, max_steps=6, save_steps=3)
    store = RecordStore(home)
    assert store.outbox.counts()["pending"] == 0 and len(store.job_ids()) == 2
    with serving(tmp_path / "registry", tmp_path / "server.log", TOKEN, database=database) as registry:
        with mock.patch.dict(os.environ, {"CHECKPOINT_RECORDS_TOKEN": TOKEN}):
            url = f"{registry.url}/v1/records"
            assert main(["--store", str(home), "flush", "--sink", url, "--timeout", "120"]) == 0
            counts = store.outbox.counts()
            assert counts["pending"] == counts["dead"] == 0 and counts["delivered"] > 0
            assert main(["--store", str(home), "flush", "--sink", url]) == 0  # nothing new: nothing sent
            assert store.outbox.counts() == counts
        client = OpenAI(base_url=f"{registry.url}/v1", api_key=TOKEN, max_retries=0)
        for job_id in store.job_ids():
            feed = registry_view(registry, f"/ui/api/jobs/{job_id}")
            assert feed == own_view(home, f"/ui/api/jobs/{job_id}") and feed["curves"]["train"]
            assert client.fine_tuning.jobs.retrieve(job_id).status == "succeeded"


def test_chromium_shows_the_registry_job_page_with_both_curves(
    team: tuple[Registry, list[Node]], tmp_path: Path
) -> None:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no browser at {CHROMIUM} (apt-get install chromium)")
    registry, nodes = team
    (job_id,) = RecordStore(nodes[0].store).job_ids()
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
            page.goto(f"{registry.url}/jobs/{job_id}")
            page.fill("#token", TOKEN)
            page.click("button[type=submit]")
            page.locator("#chart[data-drawn]").wait_for()
            own = own_view(nodes[0].store, f"/ui/api/jobs/{job_id}")
            for kind in ("train", "eval"):
                line = page.locator(f"#chart polyline.line-{kind}")
                assert line.get_attribute("data-count") == str(len(own["curves"][kind]))
            assert page.locator("#chart a.marker").count() == len(own["markers"])
            page.screenshot(path=tmp_path / "registry-job.png", full_page=True)
            if os.environ.get("ONE_URL_SCREENSHOT"):
                shutil.copyfile(tmp_path / "registry-job.png", os.environ["ONE_URL_SCREENSHOT"])
        finally:
            browser.close()
