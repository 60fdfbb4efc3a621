"""MLflow's documents: a job snapshot as the MLflow run it describes, a checkpoint record as one MLflow 3
logged model of that run.

Pure renderings of what the store holds, like the other formats: :func:`run_document` for job snapshots,
:func:`model_document` for records. :class:`~checkpoint_records.sinks.mlflow.MlflowSink` turns them into
MLflow's REST calls; :class:`MlflowDocuments` is the format it renders the outbox with. It is not in the
registry of ``formats/__init__.py``: that registry names what an HTTP endpoint is sent as it is
(``HttpSink(url, format=...)``, ``NAME+https://``, ``inspect --format``), and no endpoint takes these.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from typing import Any

from ..job import JobSnapshot
from ..record import CheckpointRecord
from .base import WireFormat

TAG_PREFIX = "checkpoint_records."
JOB_TAG = TAG_PREFIX + "job_id"
RECORD_TAG = TAG_PREFIX + "record_id"
#: The run-level series of the training loss, one point per logged step.
LOSS_METRIC = "train_loss"

#: The job's status (``training-job`` vocabulary) as an MLflow run status.
RUN_STATUS = {
    "Pending": "RUNNING",
    "Running": "RUNNING",
    "Testing": "RUNNING",
    "Success": "FINISHED",
    "Failed": "FAILED",
    "TimedOut": "FAILED",
    "Cancelled": "KILLED",
}
#: MLflow's limits on values (``mlflow/utils/validation.py``): longer ones are cut.
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000


def _text(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _millis(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def run_document(job: JobSnapshot) -> dict[str, Any]:
    """The MLflow run a job snapshot describes: status, parameters, the loss series by step."""
    status = RUN_STATUS.get(job.status, "RUNNING")
    return {
        "kind": "job",
        "job_id": job.id,
        "job_name": job.name,
        "status": status,
        "start_time": int(job.created_at * 1000),
        "end_time": None if status == "RUNNING" else int(job.updated_at * 1000),
        "params": {key: _text(value, MAX_PARAM_VALUE) for key, value in job.hyper_parameters.items()},
        "metrics": [
            {
                "key": LOSS_METRIC,
                "value": point.loss,
                "step": point.step,
                "timestamp": int(point.timestamp * 1000),
            }
            for point in job.training_loss
        ],
    }


def _storage_location(record: CheckpointRecord) -> str:
    """Where the checkpoint was uploaded (``status.upload.remote`` once uploaded), else ``spec.sourcePath``."""
    upload = getattr(record.status, "upload", None)
    if (
        upload is not None
        and getattr(upload, "state", None) == "uploaded"
        and getattr(upload, "remote", None)
    ):
        return str(upload.remote)
    return record.spec.source_path


def model_name(name: str) -> str:
    """A record name as MLflow accepts a logged model's name: none of ``/ : . % " '`` (each becomes ``-``)."""
    return re.sub(r"[/:.%\"']", "-", name)


def evaluation_metrics(record: CheckpointRecord) -> dict[str, float]:
    """Each evaluator's metrics as the model's metrics, ``<evaluator>/<metric>`` (characters MLflow
    refuses in a metric key become ``_``)."""
    return {
        re.sub(r"[^\w./ :-]", "_", f"{evaluator}/{name}"): value
        for evaluator, evaluation in sorted(record.status.evaluations.items())
        for name, value in sorted(evaluation.metrics.items())
    }


def model_document(record: CheckpointRecord) -> dict[str, Any]:
    """The MLflow logged model a checkpoint record describes.

    What never changes for a checkpoint is a parameter (MLflow's parameters are write-once); what a
    later revision may change (status, readiness, best, storage) is a tag, set again on every update.
    """
    training = record.training
    step = training.step
    timestamp = _millis(record.status.created_at)
    metrics = {
        "train_loss": training.train_loss,
        "eval_loss": training.eval_loss,
        **training.metrics,
        **evaluation_metrics(record),
    }
    files = "\n".join(f"{entry.path}\t{entry.size}" for entry in record.status.files)
    tags = {
        RECORD_TAG: record.id,
        TAG_PREFIX + "name": record.name,
        JOB_TAG: record.metadata.job_id,
        TAG_PREFIX + "status": record.status.status,
        TAG_PREFIX + "inference_ready": str(training.inference_ready).lower(),
        TAG_PREFIX + "inference_ready_reasons": "; ".join(training.inference_ready_reasons),
        TAG_PREFIX + "best": str(bool(getattr(training, "best", False))).lower(),
        TAG_PREFIX + "size_bytes": str(record.status.size),
        TAG_PREFIX + "file_count": str(len(record.status.files)),
        TAG_PREFIX + "files": files,
        TAG_PREFIX + "directory": record.spec.directory,
        TAG_PREFIX + "storage_location": _storage_location(record),
        TAG_PREFIX + "revision": str(record.metadata.revision),
    }
    best_metric = getattr(training, "best_metric", None)
    if best_metric:
        tags[TAG_PREFIX + "best_metric"] = f"{best_metric}={getattr(training, 'best_metric_value', None)}"
    params = {
        "step": step,
        "epoch": training.epoch,
        "node": training.node,
        "base_model": training.model,
        "architecture": training.architecture,
        "transformers_version": training.version,
        "layout": training.layout,
        "world_size": training.world_size,
    }
    return {
        "kind": "checkpoint",
        # With a record per node (``host/node<rank>``), only node 0 may create the job's run, so two nodes
        # never race to create it; the others wait for it (retried) when their record comes first.
        "creates_run": re.search(r"/node[1-9][0-9]*$", training.node) is None,
        "job_id": record.metadata.job_id,
        "job_name": record.metadata.job_name,
        "record_id": record.id,
        "name": model_name(record.name),
        "step": step,
        "start_time": timestamp,
        # A checkpoint whose directory was broken when saved is a model that is not usable.
        "model_status": "LOGGED_MODEL_UPLOAD_FAILED"
        if record.status.status == "failed"
        else "LOGGED_MODEL_READY",
        "tags": {key: _text(value, MAX_TAG_VALUE) for key, value in tags.items()},
        "params": {
            key: _text(str(value), MAX_PARAM_VALUE) for key, value in params.items() if value is not None
        },
        "metrics": [
            {"key": key, "value": float(value), "step": step, "timestamp": timestamp}
            for key, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ],
    }


class MlflowDocuments(WireFormat):
    """What ``MlflowSink`` receives: run documents for job snapshots, model documents for records.

    The outbox holds both kinds for this sink; a record's stored JSON says ``"kind": "Checkpoint"``, a
    job snapshot has none.
    """

    name = "mlflow"
    renders_jobs = True

    def render(self, record: CheckpointRecord) -> dict[str, Any]:
        return model_document(record)

    def render_stored(self, body: str) -> dict[str, Any]:
        if json.loads(body).get("kind") == "Checkpoint":  # read as stored, repaired if an older release
            return model_document(CheckpointRecord.from_json(body))
        return run_document(JobSnapshot.from_json(body))
