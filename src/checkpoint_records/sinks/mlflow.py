"""``MlflowSink``: the job as one MLflow run, each checkpoint as one MLflow 3 logged model of that run.

It speaks MLflow's REST API (``/api/2.0/mlflow/...``) with ``requests``, already a core dependency, so
the sink adds nothing to a training environment, where ``mlflow-skinny`` would bring some twenty
pinned packages for about ten plain JSON calls. MLflow's REST API has no idempotency key, so every send first looks for what an earlier attempt
created (the run by a tag holding the job id, the model by a tag holding the record id) and updates it
instead of creating it again: retries, outbox replays, ``flush`` and resumed runs never duplicate.

Two kinds of document reach it through one outbox lane, in order: job snapshots (the job's lifecycle,
rendered by :func:`run_document`) and checkpoint records (rendered by :func:`model_document`). Both are
pure renderings of what the store holds; :class:`MlflowSink` only turns them into REST calls.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter

from ..errors import ConfigurationError
from ..formats.base import WireFormat
from ..formats.training_job import JobSnapshot
from ..record import CheckpointRecord
from ..redaction import Redactor, public_url, url_secrets
from ..settings import mlflow_environment
from .base import Rejected, RetryLater, Sink
from .http import DEFAULT_TIMEOUT, RETRY_STATUSES, USER_AGENT, is_loopback, retry_after_seconds

SCHEMES = ("mlflow+http", "mlflow+https")
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
#: MLflow's limits (``mlflow/utils/validation.py``): longer values are cut, batches are split.
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000


# --- pure rendering: store documents to what MLflow should hold -------------------------------------


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


def model_document(record: CheckpointRecord) -> dict[str, Any]:
    """The MLflow logged model a checkpoint record describes.

    What never changes for a checkpoint is a parameter (MLflow's parameters are write-once); what a
    later revision may change (status, readiness, best, storage) is a tag, set again on every update.
    """
    training = record.training
    step = training.step
    timestamp = _millis(record.status.created_at)
    metrics = {"train_loss": training.train_loss, "eval_loss": training.eval_loss, **training.metrics}
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
    """What :class:`MlflowSink` receives: run documents for job snapshots, model documents for records.

    Not a registered wire format (no endpoint takes these documents as they are). The outbox holds both
    kinds for this sink; a record's stored JSON says ``"kind": "Checkpoint"``, a job snapshot has none.
    """

    name = "mlflow"
    renders_jobs = True

    def render(self, record: CheckpointRecord) -> dict[str, Any]:
        return model_document(record)

    def render_stored(self, body: str) -> dict[str, Any]:
        data = json.loads(body)
        if data.get("kind") == "Checkpoint":
            return model_document(CheckpointRecord.model_validate(data))
        return run_document(JobSnapshot.model_validate(data))


# --- the REST adapter --------------------------------------------------------------------------------


class MlflowRejected(Rejected):
    """MLflow refused a request for good (a 4xx): ``error_code`` is MLflow's own (``INVALID_PARAMETER_VALUE``)."""

    def __init__(self, reason: str, *, status: int, error_code: str) -> None:
        super().__init__(reason, status=status)
        self.error_code = error_code


def describe_mlflow_error(status: int, reason: str, body: bytes) -> tuple[str, str]:
    """MLflow's ``{"error_code", "message"}`` reply as ``(error_code, one line)``; text bodies as they are."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        data = json.loads(text) if text else {}
    except ValueError:
        data = {}
    code = str(data.get("error_code") or "") if isinstance(data, dict) else ""
    message = str(data.get("message") or "") if isinstance(data, dict) else ""
    detail = " ".join(f"{code}: {message}".strip(": ").split()) if code or message else " ".join(text.split())
    head = f"HTTP {status} {reason}".strip()
    if detail:
        head += f": {detail[:300]}{'...' if len(detail) > 300 else ''}"
    return code, head


def _key_values(pairs: Mapping[str, str]) -> list[dict[str, str]]:
    """Parameters or tags as MLflow's REST API takes them."""
    return [{"key": key, "value": value} for key, value in pairs.items()]


def _filter_value(value: str) -> str:
    """A value quoted for MLflow's search filter syntax."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class MlflowSink(Sink):
    """Delivers the job as one MLflow run and each checkpoint as one logged model linked to it.

    ``url`` is the tracking server (``http://host:5000``, ``https://host/mlflow``; ``mlflow+`` in front
    is accepted). ``experiment`` defaults to ``MLFLOW_EXPERIMENT_NAME``, else the job's name.
    Credentials are MLflow's own: ``token`` / ``MLFLOW_TRACKING_TOKEN`` (bearer), or ``username`` and
    ``password`` / ``MLFLOW_TRACKING_USERNAME`` and ``MLFLOW_TRACKING_PASSWORD`` (basic); they are only
    ever put in the ``Authorization`` header, never in the key, the store, a log or an error.
    """

    def __init__(
        self,
        url: str,
        *,
        experiment: str | None = None,
        token: str | None = None,
        username: str | None = None,
        password: str | None = None,
        ca_bundle: str | os.PathLike[str] | None = None,
        allow_insecure_http: bool = False,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(MlflowDocuments())
        mlflow = mlflow_environment(env)
        url = url.strip()
        if url.startswith("mlflow+"):
            url = url[len("mlflow+") :]
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(
                f"MLflow tracking URL {public_url(url)!r} must be http(s)://host[:port][/path], "
                "e.g. mlflow+https://mlflow.internal"
            )
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        unknown = sorted(set(query) - {"experiment"})
        if unknown:
            raise ConfigurationError(
                f"MLflow sink {public_url(url)!r}: unknown option(s) {', '.join(unknown)}; "
                "the only one is ?experiment=NAME"
            )
        self.experiment = experiment or query.get("experiment") or mlflow.experiment
        token = token or mlflow.token
        username = username or mlflow.username or parts.username or None
        password = password or mlflow.password or parts.password or None
        if mlflow.insecure_tls:
            raise ConfigurationError(
                "MLFLOW_TRACKING_INSECURE_TLS is set, but checkpoint-records always verifies TLS: give the "
                "server's CA with MLFLOW_TRACKING_SERVER_CERT_PATH or CHECKPOINT_RECORDS_CA_BUNDLE instead"
            )
        ca_bundle = ca_bundle or mlflow.ca_bundle
        if ca_bundle is not None and not os.path.isfile(ca_bundle):
            raise ConfigurationError(f"CA bundle {os.fspath(ca_bundle)!r} is not a readable file")
        credentials = bool(token or password)
        if (
            credentials
            and parts.scheme == "http"
            and not is_loopback(parts.hostname)
            and not allow_insecure_http
        ):
            raise ConfigurationError(
                f"refusing to send MLflow credentials over plain http:// to {parts.hostname}: use https://, "
                "or opt in with allow_insecure_http=True (CHECKPOINT_RECORDS_ALLOW_INSECURE_HTTP=1)"
            )
        self._auth: str | None = None
        if token:
            self._auth = f"Bearer {token}"
        elif username and password:
            self._auth = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        self._redact = Redactor([token, password, self._auth, *url_secrets(url)])
        # Credentials in the URL's userinfo go in the header like the others, never in the request URL.
        base = public_url(urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", "")))
        self._api = base + "/api/2.0/mlflow"
        self._verify: bool | str = os.fspath(ca_bundle) if ca_bundle is not None else True
        self.timeout = (float(timeout[0]), float(timeout[1]))
        self._key = f"mlflow+{base}" + (f"?experiment={self.experiment}" if self.experiment else "")
        self._session: requests.Session | None = None
        self._experiments: dict[str, str] = {}
        self._runs: dict[str, str] = {}

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        ca_bundle: str | None = None,
        allow_insecure_http: bool = False,
        **_ignored: Any,
    ) -> MlflowSink:
        """The sink ``mlflow+http(s)://...`` names in ``CHECKPOINT_RECORDS_SINKS``.

        ``CHECKPOINT_RECORDS_TOKEN`` (passed as ``token``) belongs to the other sinks and is not sent to
        MLflow: credentials come from MLflow's own variables, as for MLflow's clients.
        """
        return cls(url, ca_bundle=ca_bundle, allow_insecure_http=allow_insecure_http)

    def __repr__(self) -> str:
        return f"MlflowSink({self._key!r})"

    @property
    def key(self) -> str:
        return self._key

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    # -- one REST call ----------------------------------------------------------------------------------

    def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None, query: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        if self._session is None:
            self._session = requests.Session()
            self._session.trust_env = False  # no .netrc credentials or proxies slipped in
            self._session.mount("https://", HTTPAdapter(pool_maxsize=1, max_retries=0))
            self._session.mount("http://", HTTPAdapter(pool_maxsize=1, max_retries=0))
        headers = {"User-Agent": USER_AGENT}
        if self._auth:
            headers["Authorization"] = self._auth
        try:
            response = self._session.request(
                method,
                self._api + path,
                json=body,
                params=query,
                headers=headers,
                timeout=self.timeout,
                allow_redirects=False,
                verify=self._verify,
            )
        except requests.exceptions.SSLError as error:
            raise Rejected(self._redact(f"TLS verification failed: {error}")) from None
        except requests.RequestException as error:
            raise RetryLater(self._redact(f"{type(error).__name__}: {error}")) from None
        status = response.status_code
        if 200 <= status < 300:
            try:
                reply = response.json() if response.content else {}
            except ValueError:
                raise RetryLater(f"{method} {path}: HTTP {status} with a reply that is not JSON") from None
            return reply if isinstance(reply, dict) else {}
        code, described = describe_mlflow_error(status, response.reason or "", response.content)
        reason = self._redact(f"{method} {path}: {described}")
        if status in RETRY_STATUSES:
            raise RetryLater(
                reason, status=status, retry_after=retry_after_seconds(response.headers.get("Retry-After"))
            )
        if 300 <= status < 400:
            location = public_url(response.headers.get("Location", "")) or "nowhere"
            raise Rejected(
                f"{reason} (redirect to {location} not followed: configure the final URL)", status=status
            )
        raise MlflowRejected(reason, status=status, error_code=code)

    # -- delivery --------------------------------------------------------------------------------------

    def send(self, document: dict[str, Any], idempotency_key: str) -> None:
        """Apply one document. Every step either finds what an earlier attempt did or does it once."""
        if document["kind"] == "job":
            self._send_run(document)
        else:
            self._send_model(document)

    def _experiment_id(self, job_name: str) -> str:
        name = self.experiment or job_name
        if name not in self._experiments:
            self._experiments[name] = self._find_or_create_experiment(name)
        return self._experiments[name]

    def _find_or_create_experiment(self, name: str) -> str:
        try:
            found = self._call("GET", "/experiments/get-by-name", query={"experiment_name": name})
            return str(found["experiment"]["experiment_id"])
        except MlflowRejected as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
        try:
            return str(self._call("POST", "/experiments/create", {"name": name})["experiment_id"])
        except MlflowRejected as error:  # created meanwhile by another process
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            found = self._call("GET", "/experiments/get-by-name", query={"experiment_name": name})
            return str(found["experiment"]["experiment_id"])

    def _find_or_create(
        self, what: str, experiment_id: str, tag: str, value: str, create: dict[str, Any] | None
    ) -> tuple[dict[str, Any], bool]:
        """The oldest run or logged model (``what``: ``runs``, ``models``) whose ``tag`` is ``value``, else
        one created from ``create`` (the tag among its tags); whether it was created."""
        search: dict[str, Any] = {
            "experiment_ids": [experiment_id],
            "filter": f"tags.`{tag}` = {_filter_value(value)}",
            "max_results": 1,
        }
        if what == "runs":
            search["order_by"] = ["attributes.start_time ASC"]
        path = "/runs" if what == "runs" else "/logged-models"
        found = self._call("POST", f"{path}/search", search).get(what) or []
        if found:
            return found[0], False
        if create is None:
            raise RetryLater(f"no {what[:-1]} tagged {tag}={value} yet (node 0 creates it)")
        created = self._call(
            "POST", "/runs/create" if what == "runs" else path, {"experiment_id": experiment_id, **create}
        )
        return created["run" if what == "runs" else "model"], True

    def _run(self, document: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The job's run id, found by its job id tag or created once; the run as found or created."""
        create = {
            "run_name": document["job_name"],
            "start_time": document["start_time"],
            "tags": _key_values({JOB_TAG: document["job_id"]}),
        }
        experiment_id = self._experiment_id(document["job_name"])
        may_create = document.get("creates_run", True)
        run, _ = self._find_or_create(
            "runs", experiment_id, JOB_TAG, document["job_id"], create if may_create else None
        )
        run_id = str(run["info"]["run_id"])
        self._runs[document["job_id"]] = run_id
        return run_id, run

    def _send_run(self, document: dict[str, Any]) -> None:
        run_id, run = self._run(document)
        data = run.get("data") or {}
        logged = {param["key"] for param in data.get("params") or []}
        params = _key_values({k: v for k, v in document["params"].items() if k not in logged})
        self._log_batch(run_id, "params", params, MAX_PARAMS_PER_BATCH)
        if document["metrics"]:
            seen = self._logged_steps(run_id, LOSS_METRIC)
            new = [metric for metric in document["metrics"] if metric["step"] not in seen]
            self._log_batch(run_id, "metrics", new, MAX_METRICS_PER_BATCH)
        update: dict[str, Any] = {
            "run_id": run_id,
            "status": document["status"],
            "run_name": document["job_name"],
        }
        if document["end_time"] is not None:
            update["end_time"] = document["end_time"]
        self._call("POST", "/runs/update", update)

    def _log_batch(self, run_id: str, field: str, items: list[dict[str, Any]], size: int) -> None:
        """``items`` (``params`` or ``metrics``) in batches of at most ``size``, MLflow's limit."""
        for start in range(0, len(items), size):
            self._call("POST", "/runs/log-batch", {"run_id": run_id, field: items[start : start + size]})

    def _logged_steps(self, run_id: str, key: str) -> set[int]:
        """The steps at which ``key`` was logged in the run, every page of its history."""
        steps: set[int] = set()
        query: dict[str, Any] = {"run_id": run_id, "metric_key": key, "max_results": 25000}
        while True:
            page = self._call("GET", "/metrics/get-history", query=query)
            steps.update(int(metric.get("step", 0)) for metric in page.get("metrics") or [])
            if not page.get("next_page_token"):
                return steps
            query["page_token"] = page["next_page_token"]

    def _send_model(self, document: dict[str, Any]) -> None:
        experiment_id = self._experiment_id(document["job_name"])
        run_id = self._runs.get(document["job_id"]) or self._run(document)[0]
        create = {
            "name": document["name"],
            "source_run_id": run_id,
            "params": _key_values(document["params"]),
            "tags": _key_values(document["tags"]),
        }
        model, created = self._find_or_create(
            "models", experiment_id, RECORD_TAG, document["record_id"], create
        )
        model_id = str(model["info"]["model_id"])
        if document["metrics"] and (created or not (model.get("data") or {}).get("metrics")):
            metrics = [{**metric, "model_id": model_id} for metric in document["metrics"]]
            self._log_batch(run_id, "metrics", metrics, MAX_METRICS_PER_BATCH)
        if created or not self._is_output(run_id, model_id):
            self._call(
                "POST",
                "/runs/outputs",
                {"run_id": run_id, "models": [{"model_id": model_id, "step": document["step"]}]},
            )
        if not created:
            self._call("PATCH", f"/logged-models/{model_id}/tags", {"tags": _key_values(document["tags"])})
        if model["info"].get("status") != document["model_status"]:
            self._call(
                "PATCH",
                f"/logged-models/{model_id}",
                {"model_id": model_id, "status": document["model_status"]},
            )

    def _is_output(self, run_id: str, model_id: str) -> bool:
        run = self._call("GET", "/runs/get", query={"run_id": run_id}).get("run") or {}
        outputs = (run.get("outputs") or {}).get("model_outputs") or []
        return any(output.get("model_id") == model_id for output in outputs)
