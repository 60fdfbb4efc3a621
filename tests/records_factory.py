"""Records built without a Trainer, for store and rendering tests."""

from __future__ import annotations

from pathlib import Path

from checkpoint_records.build import SaveContext, build_record
from checkpoint_records.collect import ModelFacts, ScannedCheckpoint
from checkpoint_records.history import metrics_at_step
from checkpoint_records.identity import checkpoint_id_for, job_id_for
from checkpoint_records.readiness import Readiness
from checkpoint_records.record import CheckpointRecord, utc_now_iso


def make_record(
    step: int, job: str = "job", train_loss: float = 1.0, node: str = "node-a"
) -> CheckpointRecord:
    job_id = job_id_for(job)
    context = SaveContext(
        record_id=checkpoint_id_for(job_id, step),
        name=f"{job}-checkpoint-{step}",
        job_id=job_id,
        job_name=job,
        step=step,
        epoch=step / 10,
        node=node,
        logged=metrics_at_step([{"loss": train_loss, "step": step}], step),
        base_model="tiny-gpt2",
        library_version="5.0.0",
    )
    scanned = ScannedCheckpoint(Path(f"/data/{job}/checkpoint-{step}"), {"model.safetensors": 1234567})
    ready = Readiness(ready=True, reasons=(), layout="transformers")
    return build_record(
        context, scanned, ModelFacts(architectures=("GPT2LMHeadModel",)), ready, utc_now_iso()
    )
