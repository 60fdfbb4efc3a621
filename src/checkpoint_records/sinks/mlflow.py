"""``MlflowSink``: the job as one MLflow run, each checkpoint as one MLflow 3 logged model of that run.

It speaks MLflow's REST API (``/api/2.0/mlflow/...``) through the sinks' one HTTP transport, on
``requests``, already a core dependency, so the sink adds nothing to a training environment, where
``mlflow-skinny`` would bring some twenty pinned packages for about ten plain JSON calls. MLflow's REST
API has no idempotency key, so every send first looks for what an earlier attempt created (the run by a
tag holding the job id, the model by a tag holding the record id) and updates it instead of creating it
again: retries, outbox replays, ``flush`` and resumed runs never duplicate.

Two kinds of document reach it through one outbox lane, in order: job snapshots and checkpoint records,
rendered by :mod:`checkpoint_records.formats.mlflow`; this module only turns them into REST calls.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlunsplit

from ..errors import ConfigurationError
from ..formats.mlflow import JOB_TAG, LOSS_METRIC, RECORD_TAG, MlflowDocuments
from ..redaction import public_url
from ..settings import mlflow_environment
from ..signing import SigningSecret
from .base import Rejected, RetryLater, Sink
from .transport import DEFAULT_TIMEOUT, HttpTransport, split_url

SCHEMES = ("mlflow+http", "mlflow+https")
#: MLflow's limits on one ``log-batch`` (``mlflow/utils/validation.py``): longer batches are split.
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
#: The longest one send may take, all its REST calls together (a checkpoint is up to about ten).
DEFAULT_DEADLINE = 60.0


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
    ``password`` / ``MLFLOW_TRACKING_USERNAME`` and ``MLFLOW_TRACKING_PASSWORD`` (basic; also taken from
    the URL's ``user:password@``); they are only ever put in the ``Authorization`` header, never in the
    key, the store, a log or an error. One send, all its REST calls, takes at most ``deadline`` seconds.
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
        deadline: float = DEFAULT_DEADLINE,
        env: Mapping[str, str] | None = None,
        signing_secret: SigningSecret | str | None = None,
    ) -> None:
        super().__init__(MlflowDocuments())
        mlflow = mlflow_environment(env)
        url = url.strip().removeprefix("mlflow+")
        parts = split_url(url, "MLflow tracking URL")
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
        authorization = None
        if token:
            authorization = f"Bearer {token}"
        elif username and password:
            authorization = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        # The URL's userinfo goes in the header like the other credentials, its query is our option:
        # neither is in the request URL.
        base = public_url(urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", "")))
        self._api = HttpTransport(
            base + "/api/2.0/mlflow",
            what="MLflow tracking URL",
            authorization=authorization,
            credential="MLflow credentials" if token or password else "",
            secrets=[token, password, f"{username}:{password}" if username and password else None],
            ca_bundle=ca_bundle or mlflow.ca_bundle or None,
            allow_insecure_http=allow_insecure_http,
            timeout=timeout,
            deadline=deadline,
            signing_secret=signing_secret,
        )
        self.timeout = self._api.timeout
        self.max_send_seconds = self._api.deadline
        self._key = f"mlflow+{base}" + (f"?experiment={self.experiment}" if self.experiment else "")
        self._experiments: dict[str, str] = {}
        self._runs: dict[str, str] = {}

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        ca_bundle: str | None = None,
        allow_insecure_http: bool = False,
        signing_secret: SigningSecret | None = None,
        **_ignored: Any,
    ) -> MlflowSink:
        """The sink ``mlflow+http(s)://...`` names in ``CHECKPOINT_RECORDS_SINKS``.

        ``CHECKPOINT_RECORDS_TOKEN`` (passed as ``token``) belongs to the other sinks and is not sent to
        MLflow: credentials come from MLflow's own variables, as for MLflow's clients.
        """
        return cls(
            url, ca_bundle=ca_bundle, allow_insecure_http=allow_insecure_http, signing_secret=signing_secret
        )

    def __repr__(self) -> str:
        return f"MlflowSink({self._key!r})"

    @property
    def key(self) -> str:
        return self._key

    def close(self) -> None:
        self._api.close()

    # -- delivery --------------------------------------------------------------------------------------

    def send(self, document: dict[str, Any], idempotency_key: str) -> None:
        """Apply one document, all its calls within the deadline. Every step either finds what an
        earlier attempt did or does it once."""
        try:
            with self._api.within_deadline(), self._api.delivering(idempotency_key):
                if document["kind"] == "job":
                    self._send_run(document)
                else:
                    self._send_model(document)
        except (LookupError, TypeError, ValueError) as error:  # a reply not shaped as MLflow's: its
            # values may be in the error's text (int("...")), so it is masked like every server text
            raise RetryLater(
                self._api.redact(f"a reply MLflow does not give: {type(error).__name__}: {error}")
            ) from None

    def _experiment_id(self, job_name: str) -> str:
        name = self.experiment or job_name
        if name not in self._experiments:
            self._experiments[name] = self._find_or_create_experiment(name)
        return self._experiments[name]

    def _find_or_create_experiment(self, name: str) -> str:
        try:
            found = self._api.call("GET", "/experiments/get-by-name", params={"experiment_name": name})
            return str(found["experiment"]["experiment_id"])
        except Rejected as error:
            if error.code != "RESOURCE_DOES_NOT_EXIST":
                raise
        try:
            return str(self._api.call("POST", "/experiments/create", {"name": name})["experiment_id"])
        except Rejected as error:  # created meanwhile by another process
            if error.code != "RESOURCE_ALREADY_EXISTS":
                raise
            found = self._api.call("GET", "/experiments/get-by-name", params={"experiment_name": name})
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
        found = self._api.call("POST", f"{path}/search", search).get(what) or []
        if found:
            return found[0], False
        if create is None:
            raise RetryLater(f"no {what[:-1]} tagged {tag}={value} yet (node 0 creates it)")
        created = self._api.call(
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
        self._api.call("POST", "/runs/update", update)

    def _log_batch(self, run_id: str, field: str, items: list[dict[str, Any]], size: int) -> None:
        """``items`` (``params`` or ``metrics``) in batches of at most ``size``, MLflow's limit."""
        for start in range(0, len(items), size):
            self._api.call("POST", "/runs/log-batch", {"run_id": run_id, field: items[start : start + size]})

    def _logged_steps(self, run_id: str, key: str) -> set[int]:
        """The steps at which ``key`` was logged in the run, every page of its history."""
        steps: set[int] = set()
        query: dict[str, Any] = {"run_id": run_id, "metric_key": key, "max_results": 25000}
        while True:
            page = self._api.call("GET", "/metrics/get-history", params=query)
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
        logged = {metric.get("key") for metric in (model.get("data") or {}).get("metrics") or []}
        metrics = [
            {**metric, "model_id": model_id} for metric in document["metrics"] if metric["key"] not in logged
        ]
        if metrics:  # those not logged yet: a later revision may bring an evaluator's
            self._log_batch(run_id, "metrics", metrics, MAX_METRICS_PER_BATCH)
        if created or not self._is_output(run_id, model_id):
            self._api.call(
                "POST",
                "/runs/outputs",
                {"run_id": run_id, "models": [{"model_id": model_id, "step": document["step"]}]},
            )
        if not created:
            self._api.call(
                "PATCH", f"/logged-models/{model_id}/tags", {"tags": _key_values(document["tags"])}
            )
        if model["info"].get("status") != document["model_status"]:
            self._api.call(
                "PATCH",
                f"/logged-models/{model_id}",
                {"model_id": model_id, "status": document["model_status"]},
            )

    def _is_output(self, run_id: str, model_id: str) -> bool:
        run = self._api.call("GET", "/runs/get", params={"run_id": run_id}).get("run") or {}
        outputs = (run.get("outputs") or {}).get("model_outputs") or []
        return any(output.get("model_id") == model_id for output in outputs)
