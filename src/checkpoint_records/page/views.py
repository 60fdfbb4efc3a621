"""What the page shows, as plain JSON-ready dicts: pure functions from stored records, jobs and logs.

The HTML templates and the browser scripts only lay these out; every value a person sees is decided
here, once, so the page and its live-update JSON can never disagree.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import quote

from ..formats import get_format, known_formats
from ..formats.training_job import progress
from ..record import CheckpointRecord, Evaluation, UploadStatus
from ..storage.progress import describe
from ..store import CheckpointStats, Delivery, Origin, RecordRevision, StoredJob, StoredRecord
from ..terminal import delivery_summary, human_size, human_time

#: How many points per curve the server sends: about one per horizontal pixel of a wide chart.
MAX_CHART_POINTS = 1500


def job_url(job_id: str) -> str:
    """The job's page; any id a remote job sent stays one path segment."""
    return f"/jobs/{quote(job_id, safe='')}"


def marker_state(record: CheckpointRecord) -> str:
    """The one state a checkpoint's chart marker shows; a deleted checkpoint is never the best."""
    if record.status.status == "deleted":
        return "deleted"
    if record.training.best:
        return "best"
    return "ready" if record.training.inference_ready else "not-ready"


def upload_state(upload: UploadStatus | None) -> dict[str, Any] | None:
    """A checkpoint's upload, when it has one: state, progress, remote, error, and in words as
    ``list`` and ``inspect`` say it (``uploading 43%``)."""
    return None if upload is None else {**upload.model_dump(mode="json"), "text": describe(upload)}


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def marker(record: CheckpointRecord) -> dict[str, Any]:
    """One checkpoint as its chart marker shows it (and says on hover)."""
    training = record.training
    return {
        "id": record.id,
        "name": record.name,
        "url": f"/checkpoints/{quote(record.id, safe='')}",
        "step": training.step,
        "train_loss": training.train_loss,
        "eval_loss": training.eval_loss,
        "ready": training.inference_ready,
        "reason": next(iter(training.inference_ready_reasons), None),
        "state": marker_state(record),
        "size_human": human_size(record.status.size),
    }


def storage_words(record: CheckpointRecord, upload: UploadStatus | None, origin: Origin | None) -> str:
    """Where a checkpoint's files are, in a few words: its upload as it stands (as the sender reported it,
    for a received record), else on the node that wrote them: this machine's disk (``local``), or the
    sender's."""
    if upload is not None:
        return describe(upload)
    return "local" if origin is None else f"on {record.training.node}, not uploaded"


def checkpoint_row(
    record: CheckpointRecord,
    deliveries: Sequence[Delivery],
    upload: UploadStatus | None,
    origin: Origin | None = None,
) -> dict[str, Any]:
    """One checkpoint as the job's table shows it: its marker's facts and the rest (``upload``: where its
    upload stands now, which may be ahead of what the record says; ``origin``: where a received one came
    from)."""
    return {
        **marker(record),
        "epoch": record.training.epoch,
        "reasons": list(record.training.inference_ready_reasons),
        "status": record.status.status,
        "best": record.training.best,
        "size": record.status.size,
        "upload": upload_state(upload),
        "storage": storage_words(record, upload, origin),
        "delivery": delivery_summary(deliveries, received=origin is not None),
        "updated": human_time(record.status.updated_at),
    }


def job_summary(job_id: str, stored: StoredJob | None, stats: CheckpointStats | None) -> dict[str, Any]:
    """One job as the jobs table shows it. A job known only from its records (ingested without its job
    document) is ``Unknown``, named after its records."""
    status: str = "Unknown"
    percent: float | None = None
    step = stats.last_step if stats is not None else 0
    stamps = [_epoch_seconds(stats.first_created_at), _epoch_seconds(stats.last_updated_at)] if stats else []
    if stored is not None:
        snapshot = stored.job
        status, percent, step = snapshot.status, progress(snapshot), snapshot.global_step
        stamps = [snapshot.created_at, max([snapshot.updated_at, *stamps])]
    return {
        "id": job_id,
        "name": stored.job.name if stored is not None else stats.job_name if stats is not None else job_id,
        "url": job_url(job_id),
        "status": status,
        "progress": percent,
        "step": step,
        "best_eval_loss": stats.best_eval_loss if stats is not None else None,
        "last_eval_loss": stats.last_eval_loss if stats is not None else None,
        "checkpoints": stats.checkpoints if stats is not None else 0,
        "ready": stats.ready if stats is not None else 0,
        "created": stamps[0] if stamps else 0.0,
        "updated": human_time(stamps[-1]) if stamps else "",
    }


def _epoch_seconds(text: str) -> float:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def job_summaries(
    jobs: Iterable[StoredJob], stats: Iterable[CheckpointStats], name_filter: str = ""
) -> list[dict[str, Any]]:
    """Every job (those known only from records too), newest first, whose name contains ``name_filter``."""
    known = {stored.job.id: stored for stored in jobs}
    counted = {entry.job_id: entry for entry in stats}
    summaries = [job_summary(job_id, known.get(job_id), counted.get(job_id)) for job_id in known | counted]
    wanted = name_filter.strip().casefold()
    found = [s for s in summaries if wanted in s["name"].casefold()]
    return sorted(found, key=lambda summary: summary["created"], reverse=True)


def curve(entries: Iterable[Mapping[str, Any]], key: str) -> list[list[float]]:
    """``[step, value]`` pairs of the logged ``key`` (``loss``, ``eval_loss``); a non-finite value is left
    out (there is nothing to draw)."""
    points = []
    for entry in entries:
        step, value = _finite(entry.get("step")), _finite(entry.get(key))
        if step is not None and value is not None:
            points.append([step, value])
    return points


def _by_step(records: Sequence[StoredRecord]) -> list[CheckpointRecord]:
    return sorted((stored.record for stored in records), key=lambda record: record.training.step)


def job_view(
    job_id: str,
    stored: StoredJob | None,
    stats: CheckpointStats | None,
    records: Sequence[StoredRecord],
    deliveries: Mapping[str, Sequence[Delivery]],
    uploads: Mapping[str, UploadStatus | None],
    origins: Mapping[str, Origin],
) -> dict[str, Any]:
    """The job's page: its summary and its checkpoints' table rows, oldest step first."""
    rows = [
        checkpoint_row(r, deliveries.get(r.id, ()), uploads.get(r.id), origins.get(r.id))
        for r in _by_step(records)
    ]
    return {"job": job_summary(job_id, stored, stats), "checkpoints": rows}


def chart_view(
    job_id: str,
    stored: StoredJob | None,
    stats: CheckpointStats | None,
    records: Sequence[StoredRecord],
    drawn: Mapping[str, list[list[float]]],
) -> dict[str, Any]:
    """The job's chart feed: its summary (to know when to stop following it), curves and markers."""
    ordered = _by_step(records)
    markers = [marker(record) for record in ordered]
    return {
        "job": job_summary(job_id, stored, stats),
        "curves": drawn,
        "markers": markers,
        "evaluations": evaluation_curves(ordered),
    }


#: Evaluator curves drawn at most: a harness reporting dozens of numbers must not bury the losses.
MAX_EVALUATION_CURVES = 8


def evaluation_curves(records: Sequence[CheckpointRecord]) -> list[dict[str, Any]]:
    """Each evaluator's metrics by step, one curve per ``evaluator: metric`` (standard errors left out),
    from the checkpoints (in step order) whose evaluation succeeded."""
    curves: dict[str, list[list[float]]] = {}
    for record in records:
        for evaluator, evaluation in sorted(record.status.evaluations.items()):
            for name, value in sorted(evaluation.metrics.items()):
                if evaluation.state == "succeeded" and not name.endswith("stderr"):
                    curves.setdefault(f"{evaluator}: {name}", []).append([record.training.step, value])
    return [
        {"label": label, "points": points} for label, points in list(curves.items())[:MAX_EVALUATION_CURVES]
    ]


def curves(
    train: Iterable[Mapping[str, Any]], evaluation: Iterable[Mapping[str, Any]]
) -> dict[str, list[list[float]]]:
    """The chart's two curves: from the entries that logged a train loss, and those with an eval loss."""
    return {"train": curve(train, "loss"), "eval": curve(evaluation, "eval_loss")}


def wire_documents(record: CheckpointRecord) -> list[tuple[str, str]]:
    """The record in every wire format that renders single records, as indented JSON text made by each
    format's own renderer (the page never renders a format itself)."""
    documents = []
    for name in known_formats():
        wire = get_format(name)
        if wire.renders_records:
            documents.append((name, json.dumps(wire.render(record), indent=2, ensure_ascii=False)))
    return documents


def history(revisions: Sequence[RecordRevision]) -> list[dict[str, Any]]:
    """Each revision the store saw, in words: what changed from the one before (deleted, became the
    best, no longer the best, ...)."""
    events: list[dict[str, Any]] = []
    previous: RecordRevision | None = None
    for current in revisions:
        if previous is None:
            changes = ["recorded", "ready" if current.ready else "not ready"] + (
                ["best"] if current.best else []
            )
        else:
            changes = [current.status or "?"] if current.status != previous.status else []
            if current.best and not previous.best:
                changes.append("became the best")
            if previous.best and not current.best:
                changes.append("no longer the best")
            if current.ready != previous.ready and not changes:
                changes.append("ready" if current.ready else "not ready")
        events.append(
            {
                "revision": current.revision,
                "when": human_time(current.updated_at),
                "what": ", ".join(changes or ["updated"]),
            }
        )
        previous = current
    return events


def checkpoint_view(
    stored: StoredRecord,
    deliveries: Sequence[Delivery],
    revisions: Sequence[RecordRevision],
    upload: UploadStatus | None,
    origin: Origin | None = None,
) -> dict[str, Any]:
    """Everything the checkpoint's page shows, beyond the row of the job's table (``origin``: where a
    received record came from)."""
    record = stored.record
    row = checkpoint_row(record, deliveries, upload, origin)
    metadata = record.training
    return {
        **row,
        "job_id": record.metadata.job_id,
        "job_name": record.metadata.job_name,
        "job_url": job_url(record.metadata.job_id),
        "revision": stored.revision,
        "received": None if origin is None else received_view(record, origin),
        "history": history(revisions),
        "facts": [
            ("Status", record.status.status),
            ("Step", str(metadata.step)),
            ("Epoch", "-" if metadata.epoch is None else f"{metadata.epoch:g}"),
            ("Train loss", _number(metadata.train_loss)),
            ("Eval loss", _number(metadata.eval_loss)),
            ("Model", metadata.model),
            ("Architecture", metadata.architecture or "-"),
            ("Layout", metadata.layout),
            ("Node", metadata.node),
            ("World size", str(metadata.world_size)),
            ("transformers", metadata.version),
            ("Directory", record.spec.directory),
            ("Best", _best(record)),
            (
                "Recovered",
                "yes: rebuilt from disk after a crash, or imported" if metadata.recovered else "no",
            ),
            ("Created", human_time(record.status.created_at)),
            ("Updated", human_time(record.status.updated_at)),
        ],
        "metrics": [
            (key, metadata.non_finite.get(key, "-") if value is None else _metric(value))
            for key, value in sorted(metadata.metrics.items())
        ],
        "evaluations": [
            evaluation_view(name, found) for name, found in sorted(record.status.evaluations.items())
        ],
        "files": [(entry.path, human_size(entry.size), entry.size) for entry in record.status.files],
        "deliveries": [(d.sink, d.state, d.attempts, d.last_error or "") for d in deliveries],
        "wire": wire_documents(record),
    }


def received_view(record: CheckpointRecord, origin: Origin) -> dict[str, Any]:
    """Where a received record came from: the node that recorded it, the address that sent it, when."""
    return {
        "node": record.training.node,
        "sender": origin.sender or "an unknown address",
        "when": human_time(origin.received_at),
        "revision": origin.revision,
        "directory": record.spec.directory,
    }


def evaluation_view(name: str, evaluation: Evaluation) -> dict[str, Any]:
    """One evaluator's result as the checkpoint's page lists it."""
    metrics = [(key, _metric(value)) for key, value in sorted(evaluation.metrics.items())]
    metrics += sorted(evaluation.non_finite.items())
    times = " to ".join(human_time(at) for at in (evaluation.started_at, evaluation.finished_at) if at)
    return {
        "name": name,
        "state": evaluation.state,
        "metrics": metrics,
        "when": times,
        "attempts": evaluation.attempts,
        "exit_code": evaluation.exit_code,
        "reason": evaluation.reason,
        "error_tail": evaluation.error_tail,
        "source": evaluation.source,
    }


def _best(record: CheckpointRecord) -> str:
    """Whether the Trainer called this checkpoint its best, and by which metric."""
    training = record.training
    if not training.best:
        return "no"
    if training.best_metric is None:
        return "yes"
    value = "-" if training.best_metric_value is None else f"{training.best_metric_value:.6g}"
    return f"yes, by {training.best_metric} = {value}"


def _metric(value: Any) -> str:
    """A metric for reading: floats to six significant digits, anything else as it is."""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
