"""``checkpoint-records evaluate`` on the checkpoints of one real tiny Trainer run: a plain script and
EleutherAI's lm-evaluation-harness as evaluators, retries, failures, skips, a worker killed mid-run,
two workers at once, and a worker elsewhere through the registry server."""

from __future__ import annotations

import json
import signal
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from checkpoint_records import CheckpointRecordCallback, HttpSink
from checkpoint_records.formats.openai import OpenAIFormat
from checkpoint_records.record import CheckpointRecord
from checkpoint_records.store import RecordStore
from commands import cli
from evaluators import (
    FAILING,
    PLAIN,
    evaluate,
    pid_alive,
    runs_logged,
    start_evaluate,
    write_script,
)
from http_server import Receiver
from registry_server import serving
from schema_files import validate
from trainer_runs import tiny_trainer
from waiting import wait_until

TOKEN = "registry-token-e5a1"
SECRET = "api-secret-7d2f19c4"


@dataclass(frozen=True)
class Run:
    """A finished tiny run's store (three checkpoints, steps 2, 4, 6) and the evaluators' folder."""

    store: Path
    scripts: Path

    def records(self) -> list[CheckpointRecord]:
        return sorted(
            (stored.record for stored in RecordStore(self.store).records()), key=lambda r: r.training.step
        )

    def copy(self, folder: Path, first_step: int = 0) -> Path:
        """A store of its own holding the run's records (from ``first_step`` on) as they are now: a
        test's evaluations stay its own."""
        store = RecordStore(folder)
        for record in self.records():
            if record.training.step >= first_step:
                store.put(record)
        return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    base = tmp_path_factory.mktemp("evaluation")
    trainer = tiny_trainer(
        base / "run", [CheckpointRecordCallback(store=base / "store")], run_name="eval-run"
    )
    trainer.train()
    scripts = base / "scripts"
    scripts.mkdir()
    write_script(scripts, "plain.py", PLAIN)
    write_script(scripts, "failing.py", FAILING)
    return Run(base / "store", scripts)


def plain(run: Run) -> str:
    return f"{sys.executable} {run.scripts / 'plain.py'} {{directory}}"


def test_a_plain_script_evaluates_every_checkpoint_once_and_the_result_is_a_new_revision(
    run: Run, tmp_path: Path
) -> None:
    store_dir = run.copy(tmp_path / "store")
    revisions = {stored.record.id: stored.revision for stored in RecordStore(store_dir).records()}
    log = tmp_path / "runs.log"
    args = ("--store", str(store_dir), "--name", "plain", "--command", plain(run), "--once")
    done = evaluate(*args, env={"EVAL_LOG": str(log)})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3 and all(": evaluated in " in line and "loss=" in line for line in lines), lines
    assert sorted(runs_logged(log)) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]

    store = RecordStore(store_dir)
    for stored in store.records():
        result = stored.record.status.evaluations["plain"]
        assert stored.revision == revisions[stored.record.id] + 1
        assert result.state == "succeeded" and result.exit_code == 0 and result.attempts == 1
        assert set(result.metrics) == {"loss", "mean_token_accuracy", "detail/tensors"}
        assert result.started_at and result.finished_at and result.started_at <= result.finished_at
        assert result.source == stored.record.spec.directory
        # OpenAI's checkpoint object takes the matching fields, and stays valid.
        rendered = validate(OpenAIFormat().render(stored.record), "openai-fine-tuning-job-checkpoint")
        assert rendered["metrics"]["full_valid_loss"] == result.metrics["loss"]
        assert rendered["metrics"]["full_valid_mean_token_accuracy"] == result.metrics["mean_token_accuracy"]
        assert rendered["metrics"].get("valid_loss") == stored.record.training.eval_loss  # the Trainer's
        validate(stored.record.to_dict(), "flexai-checkpoint")

    again = evaluate(*args, env={"EVAL_LOG": str(log)})
    assert again.returncode == 0 and again.stdout == ""
    assert len(runs_logged(log)) == 3  # nothing evaluated twice

    listing = cli("--store", str(store_dir), "list")
    assert "PLAIN" in listing.stdout.splitlines()[0] and listing.stdout.count("loss=") == 3
    inspected = cli("--store", str(store_dir), "inspect", "eval-run-checkpoint-4")
    assert "evaluations:" in inspected.stdout and "mean_token_accuracy" in inspected.stdout


def test_results_go_to_every_sink_the_record_went_to(run: Run, tmp_path: Path) -> None:
    with Receiver() as canonical, Receiver(path="/v1/openai") as openai:
        sinks = [HttpSink(canonical.url).key, HttpSink(openai.url, format="openai").key]
        store_dir = tmp_path / "store"
        store = RecordStore(store_dir)
        for record in run.records():
            store.put(record, sinks)  # queued for both, not sent yet: the result supersedes them
        env = {"CHECKPOINT_RECORDS_SINKS": f"{canonical.url},openai+{openai.url}"}
        done = evaluate(
            "--store", str(store_dir), "--name", "plain", "--command", plain(run), "--once", env=env
        )
        assert done.returncode == 0, done.stderr
        # The first revisions may have gone out before the results superseded them: what counts is
        # that every result went out, to both, once the worker is done.
        assert store.outbox.counts(sinks) == {"pending": 0, "delivered": 6, "dead": 0, "dropped": 0}
    results = {stored.record.id: stored.record.status.evaluations["plain"] for stored in store.records()}
    evaluated = [p for p in canonical.accepted_payloads() if p["status"].get("evaluations")]
    assert sorted(p["metadata"]["id"] for p in evaluated) == sorted(results)
    for payload in evaluated:
        assert (
            payload["status"]["evaluations"]["plain"]["metrics"] == results[payload["metadata"]["id"]].metrics
        )
    sent = {p["metrics"].get("full_valid_loss") for p in openai.accepted_payloads()}
    assert {result.metrics["loss"] for result in results.values()} <= sent
    canonical.assert_idempotent()
    openai.assert_idempotent()


def test_a_failing_evaluator_is_retried_then_failed_with_its_masked_error_tail(
    run: Run, tmp_path: Path
) -> None:
    store_dir = run.copy(tmp_path / "store")
    command = f"{sys.executable} {run.scripts / 'failing.py'} {{directory}}"
    done = evaluate(
        "--store",
        str(store_dir),
        "--name",
        "broken",
        "--command",
        command,
        "--once",
        "--attempts",
        "2",
        env={"EVAL_API_TOKEN": SECRET},
    )
    assert done.returncode == 1  # something it was asked to do failed
    assert done.stdout.count("attempt 1/2 failed: the command exited with 3") == 3
    assert done.stdout.count("failed after 2 attempts: the command exited with 3") == 3
    for stored in RecordStore(store_dir).records():
        result = stored.record.status.evaluations["broken"]
        assert result.state == "failed" and result.exit_code == 3 and result.attempts == 2
        assert result.reason == "the command exited with 3" and not result.metrics
        assert result.error_tail is not None and "loading the model" in result.error_tail
        assert "***" in result.error_tail and SECRET not in stored.record.to_json()
    assert SECRET not in done.stdout + done.stderr

    fixed = f"{sys.executable} {run.scripts / 'plain.py'} {{directory}}"  # the cause fixed: tried again
    again = evaluate(
        "--store", str(store_dir), "--name", "broken", "--command", fixed, "--once", "--retry-failed"
    )
    assert again.returncode == 0 and "retrying 3 failed evaluations" in again.stderr
    for stored in RecordStore(store_dir).records():
        result = stored.record.status.evaluations["broken"]
        assert result.state == "succeeded" and result.attempts == 1 and result.error_tail is None


def test_checkpoints_not_ready_or_gone_without_a_copy_are_skipped_with_why(run: Run, tmp_path: Path) -> None:
    store_dir = run.copy(tmp_path / "store")
    store = RecordStore(store_dir)
    first, second, third = (
        stored.record for stored in sorted(store.records(), key=lambda s: s.record.training.step)
    )
    unready = first.training.model_copy(
        update={"inference_ready": False, "inference_ready_reasons": ["no tokenizer"]}
    )
    store.update_record(
        first.id, lambda r: r.model_copy(update={"status": r.status.model_copy(update={"metadata": unready})})
    )
    moved = second.spec.model_copy(update={"directory": str(tmp_path / "elsewhere")})
    store.update_record(second.id, lambda r: r.model_copy(update={"spec": moved}))
    done = evaluate("--store", str(store_dir), "--name", "plain", "--command", plain(run), "--once")
    assert done.returncode == 0, done.stderr
    results = {stored.record.id: stored.record.status.evaluations["plain"] for stored in store.records()}
    assert (
        results[first.id].state == "skipped"
        and results[first.id].reason == "not ready for inference: no tokenizer"
    )
    assert results[second.id].state == "skipped"
    assert results[second.id].reason == (
        f"gone without an uploaded copy: not on this machine ({tmp_path / 'elsewhere'}), upload not configured"
    )
    assert results[third.id].state == "succeeded"
    assert "skipped: not ready for inference: no tokenizer" in done.stdout


def test_a_worker_killed_mid_evaluation_leaves_only_that_one_to_run_again(run: Run, tmp_path: Path) -> None:
    store_dir = run.copy(tmp_path / "store")
    log, go = tmp_path / "runs.log", tmp_path / "go"
    env = {"EVAL_LOG": str(log), "EVAL_GO": str(go)}  # the evaluator holds on until "go" exists
    args = ("--store", str(store_dir), "--name", "plain", "--command", plain(run))
    worker = start_evaluate(*args, env=env)
    try:
        wait_until(lambda: len(runs_logged(log)) == 1, 120, "the evaluator never started under the worker")
        evaluator_pid = int(log.read_text().split()[1])
        worker.send_signal(signal.SIGKILL)
        worker.wait(60)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(60)
    wait_until(lambda: not pid_alive(evaluator_pid), 120, "the evaluator did not die with its worker")
    killed_in = runs_logged(log)[0]
    go.touch()
    again = evaluate(*args, "--once", env=env)
    assert again.returncode == 0, again.stderr
    runs = Counter(runs_logged(log))
    assert runs == Counter({"checkpoint-2": 1, "checkpoint-4": 1, "checkpoint-6": 1, killed_in: 2})
    for stored in RecordStore(store_dir).records():
        result = stored.record.status.evaluations["plain"]
        assert result.state == "succeeded"
        assert result.attempts == (2 if Path(stored.record.spec.directory).name == killed_in else 1)


def test_two_workers_of_one_name_never_run_one_checkpoint_twice(run: Run, tmp_path: Path) -> None:
    store_dir = run.copy(tmp_path / "store")
    log = tmp_path / "runs.log"
    args = ("--store", str(store_dir), "--name", "twice", "--command", plain(run), "--once")
    workers = [start_evaluate(*args, env={"EVAL_LOG": str(log)}) for _ in range(2)]
    outputs = [worker.communicate(timeout=300) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    assert sorted(runs_logged(log)) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    said = [line for out, _ in outputs for line in out.splitlines()]
    assert len(said) == 3
    for stored in RecordStore(store_dir).records():
        assert stored.record.status.evaluations["twice"].attempts == 1


def test_the_best_checkpoint_can_be_chosen_by_an_evaluation_metric(run: Run, tmp_path: Path) -> None:
    store_dir = run.copy(tmp_path / "store")
    done = evaluate(
        "--store", str(store_dir), "--name", "plain", "--command", plain(run), "--once", "--best", "loss"
    )
    assert done.returncode == 0, done.stderr
    records = [stored.record for stored in RecordStore(store_dir).records()]
    lowest = min(records, key=lambda record: record.status.evaluations["plain"].metrics["loss"])
    assert [record.id for record in records if record.training.best] == [lowest.id]
    assert lowest.training.best_metric == "plain/loss"
    assert lowest.training.best_metric_value == lowest.status.evaluations["plain"].metrics["loss"]


@pytest.fixture
def registry(run: Run, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    store_dir = run.copy(tmp_path / "registry")
    with serving(store_dir, tmp_path / "server.log", TOKEN) as served:
        yield served.url, store_dir


def test_a_worker_elsewhere_takes_checkpoints_from_the_registry_and_posts_results_back(
    run: Run, registry: tuple[str, Path], tmp_path: Path
) -> None:
    from openai import OpenAI

    url, store_dir = registry
    args = ("--registry", url, "--name", "remote", "--command", plain(run), "--once", "--job", "eval-run")
    refused = evaluate(*args, env={"CHECKPOINT_RECORDS_TOKEN": "wrong"})
    assert refused.returncode == 2 and "401" in refused.stderr  # refused: a configuration to fix
    done = evaluate(*args, env={"CHECKPOINT_RECORDS_TOKEN": TOKEN})
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(": evaluated in ") == 3
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert requests.get(f"{url}/v1/evaluations/remote", headers=headers, timeout=30).json() == {"pending": 0}
    records = {stored.record.id: stored.record for stored in RecordStore(store_dir).records()}
    assert all(record.status.evaluations["remote"].state == "succeeded" for record in records.values())

    client = OpenAI(base_url=f"{url}/v1", api_key=TOKEN)
    job = next(iter(client.fine_tuning.jobs.list()))
    for checkpoint in client.fine_tuning.jobs.checkpoints.list(job.id):
        record = next(r for r in records.values() if r.training.step == checkpoint.step_number)
        assert checkpoint.metrics.full_valid_loss == record.status.evaluations["remote"].metrics["loss"]

    some = next(iter(records.values()))
    page = requests.get(f"{url}/checkpoints/{some.id}", headers=headers, timeout=30).text
    assert "Evaluations" in page and "remote: succeeded" in page and "mean_token_accuracy" in page
    feed = requests.get(f"{url}/ui/api/jobs/{some.metadata.job_id}", headers=headers, timeout=30).json()
    labels = {curve["label"]: curve["points"] for curve in feed["evaluations"]}
    assert [step for step, _ in labels["remote: loss"]] == [2, 4, 6]

    stale = requests.post(
        f"{url}/v1/evaluations/remote/results",
        json={"owner": "someone/1/x", "record_id": some.id, "result": {"state": "succeeded"}},
        headers=headers,
        timeout=30,
    )
    assert stale.status_code == 409  # a result from a worker that does not hold it is never written
    assert json.loads(RecordStore(store_dir).get(some.id).record.to_json()) == json.loads(some.to_json())


LM_TASK = """
task: tiny_words
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def test_lm_evaluation_harness_runs_on_every_checkpoint_with_a_local_task(run: Run, tmp_path: Path) -> None:
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    rows = [
        {"context": "the quick brown", "choices": ["fox", "dog"], "label": 0},
        {"context": "a lazy", "choices": ["dog", "fox"], "label": 0},
        {"context": "records are", "choices": ["kept", "the"], "label": 0},
        {"context": "checkpoints are", "choices": ["saved", "over"], "label": 0},
    ]
    data = tasks / "tiny_words.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tasks / "tiny_words.yaml").write_text(LM_TASK.format(data=data))
    offline = {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
    }
    lm_eval = Path(sys.executable).parent / "lm_eval"
    command = (
        f"{lm_eval} --model hf --model_args pretrained={{directory}},dtype=float32 --tasks tiny_words"
        f" --include_path {tasks} --device cpu --batch_size 4 --output_path {{output}}"
    )
    store_dir = run.copy(tmp_path / "store", first_step=4)  # two checkpoints: the harness takes a while
    done = evaluate(
        "--store", str(store_dir), "--name", "lm-eval", "--command", command, "--once", env=offline
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for stored in RecordStore(store_dir).records():
        result = stored.record.status.evaluations["lm-eval"]
        assert result.state == "succeeded", result
        assert 0.0 <= result.metrics["tiny_words/acc"] <= 1.0 and "tiny_words/acc_stderr" in result.metrics
    assert done.stdout.count("acc=") == 2
