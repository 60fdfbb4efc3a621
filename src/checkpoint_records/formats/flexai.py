"""FlexAI: the ``Checkpoint`` object exactly as ``flexai checkpoint inspect NAME --json`` prints it.

Only the fields FlexAI documents; the canonical record's extras (job, epoch, metrics, readiness
reasons, layout, ...) are left out. Sizes are numbers of bytes, as in FlexAI's JSON output.

| FlexAI field                     | from the canonical record                                           |
|----------------------------------|---------------------------------------------------------------------|
| ``kind``                         | ``"Checkpoint"``                                                     |
| ``metadata.name``                | ``metadata.name``                                                    |
| ``metadata.id``                  | ``metadata.id`` (a UUID, deterministic from job and step)            |
| ``metadata.creatorUserID``       | ``metadata.creatorUserID`` (``""`` when unknown)                     |
| ``metadata.ownerOrgID``          | ``metadata.ownerOrgID`` (``""`` when unknown)                        |
| ``spec.fromLocalFiles``          | ``spec.fromLocalFiles`` (absolute paths of the checkpoint's files)   |
| ``spec.storageProvider``         | ``spec.storageProvider`` (``""``: none)                              |
| ``spec.sourcePath``              | ``spec.sourcePath`` (``""``: none)                                   |
| ``status.status``                | ``available`` / ``failed`` / ``deleted`` (see below)                 |
| ``status.storageProviderID``     | ``status.storageProviderID``, else FlexAI's nil UUID for "none"      |
| ``status.size``                  | ``status.size`` (bytes)                                              |
| ``status.files[].path``/``size`` | ``status.files[]`` (path relative to the checkpoint, bytes)          |
| ``status.metadata.name``         | ``status.metadata.name``                                             |
| ``status.metadata.node``         | ``status.metadata.node`` (host name)                                 |
| ``status.metadata.step``         | ``status.metadata.step`` (the Trainer's global step)                 |
| ``status.metadata.trainLoss``    | ``status.metadata.trainLoss`` (``null`` when unknown or non-finite)  |
| ``status.metadata.evalLoss``     | ``status.metadata.evalLoss`` (``null`` when unknown or non-finite)   |
| ``status.metadata.model``        | ``status.metadata.model`` (the base model, ``""`` when unknown)      |
| ``status.metadata.version``      | ``status.metadata.version`` (transformers version)                   |
| ``status.metadata.inferenceReady`` | ``status.metadata.inferenceReady`` and the checkpoint is ``available`` |
| ``status.createdAt``/``updatedAt`` | ``status.createdAt``/``updatedAt`` (ISO 8601 UTC)                  |

Status: ``available`` when the checkpoint was written complete; ``failed`` when it was not (its directory
was missing or broken when the save returned). A checkpoint that ``save_total_limit`` rotated away
*after* a complete save says ``deleted``: it did not fail (``failed`` would raise a false alarm and
invite a retry), its files are gone, and FlexAI's ``status.status`` is an open string. ``updatedAt``
tells when it was deleted, and ``inferenceReady`` is ``false`` for anything that is not ``available``,
since there is nothing left to serve. The file list stays what the checkpoint held.
"""

from __future__ import annotations

from typing import Any

from ..record import CheckpointRecord
from .base import WireFormat

#: What FlexAI prints as ``storageProviderID`` when no Remote Storage Provider was used.
NIL_STORAGE_PROVIDER_ID = "00000000-0000-0000-0000-000000000000"


class FlexAIFormat(WireFormat):
    name = "flexai"

    def render(self, record: CheckpointRecord) -> dict[str, Any]:
        meta, spec, status, training = record.metadata, record.spec, record.status, record.training
        return {
            "kind": "Checkpoint",
            "metadata": {
                "name": meta.name,
                "id": meta.id,
                "creatorUserID": meta.creator_user_id,
                "ownerOrgID": meta.owner_org_id,
            },
            "spec": {
                "fromLocalFiles": list(spec.from_local_files),
                "storageProvider": spec.storage_provider,
                "sourcePath": spec.source_path,
            },
            "status": {
                "status": status.status,
                "storageProviderID": status.storage_provider_id or NIL_STORAGE_PROVIDER_ID,
                "size": status.size,
                "files": [{"path": entry.path, "size": entry.size} for entry in status.files],
                "metadata": {
                    "name": training.name,
                    "node": training.node,
                    "step": training.step,
                    "trainLoss": training.train_loss,
                    "evalLoss": training.eval_loss,
                    "model": training.model,
                    "version": training.version,
                    "inferenceReady": training.inference_ready and status.status == "available",
                },
                "createdAt": status.created_at,
                "updatedAt": status.updated_at,
            },
        }
