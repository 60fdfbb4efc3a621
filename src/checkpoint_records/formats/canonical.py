"""The canonical format, named `record`: every document as stored (the richest), with no mapping.

One URL of this format receives everything a run knows: its records (``kind: Checkpoint``), its job
(``kind: TrainingJob``: status, progress, epochs, hyper-parameters, the loss points with their steps) and
its logged series in pages (``kind: TrainingLog``, see :mod:`..series`); ``checkpoint-records serve``
reads all three at ``POST /v1/records``.
"""

from __future__ import annotations

import json
from typing import Any

from ..job import JobSnapshot, job_document
from ..record import CheckpointRecord
from ..series import LOG_KIND, LogPage
from .base import WireFormat


class RecordFormat(WireFormat):
    name = "record"
    renders_jobs = True
    renders_logs = True

    def render(self, record: CheckpointRecord) -> dict[str, Any]:
        return record.to_dict()

    def render_stored(self, body: str) -> dict[str, Any]:
        kind = json.loads(body).get("kind")  # read as stored, repaired if an older release wrote it
        if kind == "Checkpoint":
            return self.render(CheckpointRecord.from_json(body))
        if kind == LOG_KIND:
            return LogPage.model_validate_json(body).to_dict()
        return job_document(JobSnapshot.from_json(body))  # a job, as the store keeps it
