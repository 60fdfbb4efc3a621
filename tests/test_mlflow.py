"""The MLflow sink against a real ``mlflow server`` (SQLite backend, loopback), read back with MLflow's own
``MlflowClient``: one run per job with a true status, one logged model per checkpoint, never twice."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests

from checkpoint_records import CheckpointRecordCallback, ConfigurationError, RecordStore
from checkpoint_records.delivery import DeliveryWorker
from checkpoint_records.evaluation.results import with_evaluation
from checkpoint_records.formats.mlflow import JOB_TAG, RECORD_TAG, model_document
from checkpoint_records.record import Evaluation, utc_now_iso
from checkpoint_records.sinks import MlflowSink, Rejected, RetryLater, sink_from_url
from commands import cli, killed_run
from http_server import Received, Receiver, Reply, always, free_port
from records_factory import make_record
from trainer_runs import tiny_trainer
from waiting import wait_until

STATUS = "checkpoint_records.status"
#: Runs wait for delivery before they exit: on a busy machine the server may take more than 5 s.
PATIENT = {"CHECKPOINT_RECORDS_FLUSH_TIMEOUT": "120"}


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server for this module; its process group is ended at teardown."""
    pytest.importorskip("mlflow", reason="needs the integration extra (mlflow server and client)")
    home = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    command = [
        *(str(Path(sys.executable).parent / "mlflow"), "server"),
        *("--backend-store-uri", f"sqlite:///{home}/mlflow.db"),
        *("--default-artifact-root", str(home / "artifacts")),
        *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
    ]
    log = open(home / "server.log", "wb")  # noqa: SIM115 - closed at teardown
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert server.poll() is None, (home / "server.log").read_text()[-2000:]
        try:
            return requests.get(f"{url}/health", timeout=1).ok
        except requests.RequestException:
            return False

    try:
        wait_until(healthy, 120, "the mlflow server did not start")
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(3)
        except subprocess.TimeoutExpired:  # uvicorn drains connections; the data is thrown away anyway
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(15)
        log.close()


def client(url: str) -> Any:
    """MLflow's own client, to read back what the sink wrote."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=url)


def runs_of(url: str, experiment: str) -> list[Any]:
    found = client(url).get_experiment_by_name(experiment)
    return [] if found is None else client(url).search_runs([found.experiment_id])


def models_of(url: str, experiment: str) -> list[Any]:
    found = client(url).get_experiment_by_name(experiment)
    return [] if found is None else client(url).search_logged_models([found.experiment_id])


def by_name(models: list[Any]) -> dict[str, Any]:
    named = {model.name: model for model in models}
    assert len(named) == len(models), f"a checkpoint logged twice: {sorted(m.name for m in models)}"
    return named


def test_a_job_is_one_run_and_each_checkpoint_one_logged_model(tracking: str, tmp_path: Path) -> None:
    sink = MlflowSink(tracking, experiment="completed")
    callback = CheckpointRecordCallback(
        sinks=[sink], flush_timeout=float(PATIENT["CHECKPOINT_RECORDS_FLUSH_TIMEOUT"])
    )
    try:
        tiny_trainer(tmp_path / "out", [callback], save_total_limit=1).train()
    finally:
        callback.recorder.close()

    store = RecordStore()
    assert {delivery.state for delivery in store.outbox.deliveries()} == {"delivered"}
    [run] = runs_of(tracking, "completed")
    job_id = store.jobs()[0].job.id
    assert run.info.status == "FINISHED" and run.data.tags[JOB_TAG] == job_id
    assert run.data.params["learning_rate"] == "5e-05" and run.data.params["max_steps"] == "6"
    series = client(tracking).get_metric_history(run.info.run_id, "train_loss")
    assert sorted({metric.step for metric in series}) == [1, 2, 3, 4, 5, 6]

    models = by_name(models_of(tracking, "completed"))
    assert sorted(models) == ["out-checkpoint-2", "out-checkpoint-4", "out-checkpoint-6"]
    outputs = {output.model_id: output.step for output in run.outputs.model_outputs}
    for name, model in models.items():
        record = store.get(name)
        assert record is not None
        step = record.record.training.step
        assert model.source_run_id == run.info.run_id and outputs[model.model_id] == step
        assert model.tags[RECORD_TAG] == record.record.id and model.params["step"] == str(step)
        assert model.tags["checkpoint_records.size_bytes"] == str(record.record.status.size)
        assert "model.safetensors" in model.tags["checkpoint_records.files"]
        assert {metric.step for metric in model.metrics} == {step}
    # save_total_limit=1 rotated 2 and 4 away: their models say so; 6 is there and ready.
    for name in ("out-checkpoint-2", "out-checkpoint-4"):
        assert models[name].tags[STATUS] == "deleted"
        assert models[name].tags["checkpoint_records.inference_ready"] == "false"
        assert (
            "rotated away by save_total_limit"
            in models[name].tags["checkpoint_records.inference_ready_reasons"]
        )
    last = models["out-checkpoint-6"]
    assert last.tags[STATUS] == "available" and last.tags["checkpoint_records.inference_ready"] == "true"
    assert str(last.status) == "READY"
    assert {metric.key: metric.value for metric in last.metrics}["eval_loss"] == pytest.approx(
        store.get("out-checkpoint-6").record.training.eval_loss  # type: ignore[union-attr]
    )

    # Replaying everything from a fresh process state (no cached ids) finds what exists: nothing twice.
    assert store.outbox.requeue(["delivered"]) == 4
    replay = DeliveryWorker(store, [MlflowSink(tracking, experiment="completed")])
    replay.start()
    try:
        assert replay.flush(120).pending == 0
    finally:
        replay.close()
    assert len(runs_of(tracking, "completed")) == 1
    assert sorted(by_name(models_of(tracking, "completed"))) == sorted(models)
    assert len(client(tracking).get_metric_history(run.info.run_id, "train_loss")) == len(series)
    assert len(client(tracking).get_run(run.info.run_id).outputs.model_outputs) == 3


def test_a_run_that_raises_is_failed(tracking: str, tmp_path: Path) -> None:
    env = {"CHECKPOINT_RECORDS_SINKS": f"mlflow+{tracking}?experiment=raised", **PATIENT}
    run = killed_run(tmp_path / "out", env, "--raise-at", "3", "RuntimeError")
    assert run.returncode != 0 and "stopped by the test" in run.stderr
    [found] = runs_of(tracking, "raised")
    assert found.info.status == "FAILED" and found.info.end_time
    assert sorted(by_name(models_of(tracking, "raised"))) == ["out-checkpoint-2"]


def test_a_killed_run_is_killed_after_flush_and_its_resume_continues_the_same_run(
    tracking: str, tmp_path: Path
) -> None:
    sink_url = f"mlflow+{tracking}?experiment=killed"
    env = {"CHECKPOINT_RECORDS_SINKS": sink_url, **PATIENT}
    assert killed_run(tmp_path / "out", env, "--kill-after-save", "4").returncode == -signal.SIGKILL
    flushed = cli("flush", "--sink", sink_url, "--timeout", "120")
    assert flushed.returncode == 0 and "reported Cancelled" in flushed.stderr, flushed.stderr
    [run] = runs_of(tracking, "killed")
    assert run.info.status == "KILLED"
    assert sorted(by_name(models_of(tracking, "killed"))) == ["out-checkpoint-2", "out-checkpoint-4"]

    resumed = killed_run(tmp_path / "out", env, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    [again] = runs_of(tracking, "killed")
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    models = by_name(models_of(tracking, "killed"))
    assert sorted(models) == ["out-checkpoint-2", "out-checkpoint-4", "out-checkpoint-6"]
    assert {model.source_run_id for model in models.values()} == {run.info.run_id}


def test_mlflow_refusing_a_request_dead_letters_it_with_mlflows_error_code(tracking: str) -> None:
    mlflow_client = client(tracking)
    mlflow_client.delete_experiment(mlflow_client.create_experiment("deleted"))
    store = RecordStore()
    record = make_record(2, job="refused")
    sink = MlflowSink(tracking, experiment="deleted")
    store.put(record, [sink.key])
    worker = DeliveryWorker(store, [sink])
    worker.start()
    try:
        assert worker.flush(120).dead == 1
    finally:
        worker.close()
    [delivery] = store.outbox.deliveries()
    assert delivery.state == "dead" and delivery.last_error is not None
    assert "HTTP 400" in delivery.last_error and "INVALID_PARAMETER_VALUE" in delivery.last_error
    assert "must be in the 'active' state" in delivery.last_error


def test_credentials_travel_only_in_the_authorization_header(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "mlflow-secret-token-123"
    body = json.dumps({"error_code": "PERMISSION_DENIED", "message": f"bad token {secret}"}).encode()
    with Receiver(always(Reply(status=403, body=body)), path="") as receiver:
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", secret)
        monkeypatch.setenv("CHECKPOINT_RECORDS_TOKEN", "not-for-mlflow")
        sink = sink_from_url(f"mlflow+{receiver.url}", token="not-for-mlflow")
        with pytest.raises(Rejected) as refused:
            sink.send(sink.format.render(make_record(2)), "key")
        assert refused.value.code == "PERMISSION_DENIED" and refused.value.status == 403
        assert secret not in refused.value.reason and "***" in refused.value.reason
        assert secret not in sink.key and secret not in repr(sink)
        assert receiver.requests[0].headers["Authorization"] == f"Bearer {secret}"

        monkeypatch.delenv("MLFLOW_TRACKING_TOKEN")
        basic = MlflowSink(receiver.url, username="ann", password="pa55word-x")
        with pytest.raises(Rejected) as refused_basic:
            basic.send(basic.format.render(make_record(2)), "key")
        assert receiver.requests[-1].headers["Authorization"] == "Basic YW5uOnBhNTV3b3JkLXg="
        assert "pa55word-x" not in refused_basic.value.reason

        in_url = MlflowSink(receiver.url.replace("http://", "http://ann:pa55word-x@"))
        with pytest.raises(Rejected):
            in_url.send(in_url.format.render(make_record(2)), "key")
        assert receiver.requests[-1].headers["Authorization"] == "Basic YW5uOnBhNTV3b3JkLXg="
        assert "pa55word" not in in_url.key and "ann" not in in_url.key


def test_an_unavailable_server_is_retried_later() -> None:
    busy = Reply(status=503, body=b'{"error_code": "TEMPORARILY_UNAVAILABLE", "message": "busy"}')
    busy.headers["Retry-After"] = "7"
    with Receiver(always(busy), path="") as receiver:
        sink = MlflowSink(receiver.url)
        with pytest.raises(RetryLater) as later:
            sink.send(sink.format.render(make_record(2)), "key")
    assert later.value.retry_after == 7 and "TEMPORARILY_UNAVAILABLE" in later.value.reason


#: One reply that answers every call a checkpoint's send makes as if all of it existed already.
EVERYTHING_FOUND = json.dumps(
    {
        "experiment": {"experiment_id": "1"},
        "runs": [{"info": {"run_id": "r1"}, "data": {}}],
        "models": [
            {
                "info": {"model_id": "m1", "status": "LOGGED_MODEL_READY"},
                "data": {"metrics": [{"key": "train_loss"}]},
            }
        ],
        "run": {"outputs": {"model_outputs": [{"model_id": "m1"}]}},
    }
).encode()


def test_one_deadline_covers_all_the_calls_of_a_send() -> None:
    """Each call is answered in 0.5 s, well within the read timeout: five of them fit in 30 s, not in a
    1.5 s deadline, which must bound the send (the delivery's claim is sized by it), not each call."""
    answered = threading.Event()

    def slow(index: int, request: Received) -> Reply:
        answered.wait(0.5)  # never set: the server's own slowness
        return Reply(body=EVERYTHING_FOUND)

    with Receiver(slow, path="") as receiver:
        patient = MlflowSink(receiver.url, timeout=(5, 5), deadline=30)
        patient.send(patient.format.render(make_record(2)), "key")
        assert len(receiver.requests) == 5  # get-by-name, runs/search, models/search, runs/get, tags
        hurried = MlflowSink(receiver.url, timeout=(5, 5), deadline=1.5)
        assert hurried.max_send_seconds == 1.5
        with pytest.raises(RetryLater, match=re.escape("within the 1.5 s deadline")):
            hurried.send(hurried.format.render(make_record(2)), "key")
        assert len(receiver.requests) < 5 + 5


def test_a_reply_not_shaped_as_mlflows_is_retried_with_what_it_echoed_masked() -> None:
    """A metric history whose step is the token: reading it fails, and the failure's text, which
    quotes the value, is masked like every server text."""
    token = "mlflow-secret-token-456"
    odd = json.loads(EVERYTHING_FOUND) | {"metrics": [{"step": f"step {token}"}]}
    job = {
        "kind": "job",
        "job_id": "j1",
        "job_name": "odd",
        "status": "RUNNING",
        "start_time": 0,
        "end_time": None,
        "params": {},
        "metrics": [{"key": "train_loss", "value": 1.0, "step": 1, "timestamp": 0}],
    }
    with Receiver(always(Reply(body=json.dumps(odd).encode())), path="") as receiver:
        sink = MlflowSink(receiver.url, token=token)
        with pytest.raises(RetryLater) as later:
            sink.send(job, "key")
    assert "a reply MLflow does not give: ValueError" in later.value.reason
    assert token not in later.value.reason and "***" in later.value.reason


@pytest.mark.parametrize(
    ("url", "env", "complaint"),
    [
        ("mlflow+http://host:5000?exp=x", {}, "unknown option"),
        ("mlflow+http://mlflow.internal", {"MLFLOW_TRACKING_TOKEN": "t0ken"}, "plain http://"),
        ("mlflow+https://mlflow.internal", {"MLFLOW_TRACKING_INSECURE_TLS": "true"}, "always verifies TLS"),
        ("mlflow+ftp://host", {}, "unknown scheme 'ftp'"),
    ],
)
def test_bad_configuration_fails_fast(
    monkeypatch: pytest.MonkeyPatch, url: str, env: dict[str, str], complaint: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match=re.escape(complaint)):
        sink_from_url(url)


def test_the_experiment_is_the_option_else_mlflows_variable_else_the_job_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert (
        sink_from_url("mlflow+https://h/mlflow?experiment=exp").key
        == "mlflow+https://h/mlflow?experiment=exp"
    )
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from-env")
    assert MlflowSink("https://h").experiment == "from-env"
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME")
    assert MlflowSink("https://h").experiment is None  # the job's name, per document


def test_with_a_record_per_node_only_node_0_creates_the_run(tracking: str) -> None:
    sink = MlflowSink(tracking, experiment="per-node")
    # A dot is common in job names ("llama-3.1-sft") and refused in MLflow model names: replaced.
    other = make_record(4, job="per.node", node="host-b/node1")
    with pytest.raises(RetryLater, match="node 0 creates it"):
        sink.send(sink.format.render(other), "key")
    assert runs_of(tracking, "per-node") == []
    sink.send(sink.format.render(make_record(2, job="per.node", node="host-a/node0")), "key")
    sink.send(sink.format.render(other), "key")
    [run] = runs_of(tracking, "per-node")
    assert {model.source_run_id for model in models_of(tracking, "per-node")} == {run.info.run_id}
    models = by_name(models_of(tracking, "per-node"))
    assert sorted(models) == ["per-node-checkpoint-2", "per-node-checkpoint-4"]
    assert models["per-node-checkpoint-2"].tags["checkpoint_records.name"] == "per.node-checkpoint-2"


def test_the_best_checkpoint_is_tagged_and_an_uploaded_one_says_where_it_is() -> None:
    plain = model_document(make_record(2))
    assert plain["tags"]["checkpoint_records.best"] == "false"
    assert plain["tags"]["checkpoint_records.storage_location"] == ""
    assert plain["model_status"] == "LOGGED_MODEL_READY"
    record = make_record(4)
    # Fields other branches add to the record (training.best*, status.upload), set here as they will be.
    training = record.training.model_copy(
        update={"best": True, "best_metric": "eval_loss", "best_metric_value": 0.5}
    )
    upload = SimpleNamespace(state="uploaded", remote="s3://bucket/run/checkpoint-4")
    status = record.status.model_copy(update={"metadata": training, "upload": upload, "status": "failed"})
    tags = model_document(record.model_copy(update={"status": status}))["tags"]
    assert tags["checkpoint_records.best"] == "true"
    assert tags["checkpoint_records.best_metric"] == "eval_loss=0.5"
    assert tags["checkpoint_records.storage_location"] == "s3://bucket/run/checkpoint-4"
    assert model_document(record.model_copy(update={"status": status}))["model_status"] == (
        "LOGGED_MODEL_UPLOAD_FAILED"
    )


def test_an_evaluation_result_reaches_the_logged_model_as_its_metrics(tracking: str) -> None:
    """The checkpoint's model is logged first; the revision carrying an evaluator's result, sent later,
    adds its metrics to the same model (and sending it again adds nothing)."""
    sink = MlflowSink(tracking, experiment="evaluated")
    record = make_record(2, job="evaluated")
    sink.send(sink.format.render(record), "key-1")
    result = Evaluation(state="succeeded", metrics={"loss": 2.5, "tiny_words/acc": 0.75})
    evaluated = with_evaluation(record, "lm-eval", result, utc_now_iso())
    sink.send(sink.format.render(evaluated), "key-2")
    sink.send(sink.format.render(evaluated), "key-2")
    [model] = models_of(tracking, "evaluated")
    logged = Counter(metric.key for metric in model.metrics)
    assert logged == Counter({"train_loss": 1, "lm-eval/loss": 1, "lm-eval/tiny_words/acc": 1})
    values = {metric.key: (metric.value, metric.step) for metric in model.metrics}
    assert values["lm-eval/tiny_words/acc"] == (0.75, 2) and values["lm-eval/loss"] == (2.5, 2)
