"""The job in the local store, whatever sinks are configured: status, progress, a bounded loss series;
the best checkpoint marked on its record and moved when the Trainer's best moves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from checkpoint_records import CheckpointRecordCallback, CheckpointRecorder, RecordStore
from commands import cli, killed_run
from trainer_runs import tiny_trainer


def test_the_store_knows_the_job_without_any_job_sink(tmp_path: Path, isolated_store: Path) -> None:
    killed = killed_run(tmp_path / "out", {}, "--kill-after-save", "4")
    assert killed.returncode == -9
    running = json.loads(cli("jobs", "--json").stdout)
    assert [job["status"] for job in running] == ["Running"]
    # as of the last save stored: step 4's, or step 2's when the kill came before it
    assert running[0]["progress"] in (33.33, 66.67)
    assert len(running[0]["training_loss"]) in (2, 4)
    assert cli("flush").returncode == 0
    assert json.loads(cli("jobs", "--json").stdout)[0]["status"] == "Cancelled"


def test_a_plain_loop_creates_a_job_too(tmp_path: Path, isolated_store: Path) -> None:
    with CheckpointRecorder(flush_timeout=10) as recorder:
        for step in (1, 2):
            directory = tmp_path / "run" / f"step-{step}"
            directory.mkdir(parents=True)
            (directory / "weights.pt").write_bytes(b"0")
            recorder.record(directory, step=step, train_loss=1.0 / step)
    jobs = RecordStore(isolated_store).jobs()
    assert [(stored.job.name, stored.job.status, stored.job.global_step) for stored in jobs] == [
        ("run", "Success", 2)
    ]
    series = RecordStore(isolated_store).log_series(jobs[0].job.id)
    assert [(entry["step"], entry["loss"]) for entry in series] == [(1, 1.0), (2, 0.5)]


def test_train_loss_says_the_step_it_was_logged_at(tmp_path: Path, isolated_store: Path) -> None:
    tiny_trainer(tmp_path / "out", [CheckpointRecordCallback()], logging_steps=3).train()
    records = {
        stored.record.training.step: stored.record.training
        for stored in RecordStore(isolated_store).records()
    }
    assert (records[2].train_loss, records[2].train_loss_step) == (None, None)
    assert records[4].train_loss_step == 3 and records[4].eval_loss_step == 3
    assert records[6].train_loss_step == 6


def scores(*values: float) -> Any:
    """compute_metrics giving ``values`` in turn: the best moves as the test says."""
    given = iter(values)

    def compute(_: Any) -> dict[str, float]:
        return {"score": next(given)}

    return compute


def test_the_best_checkpoint_is_marked_and_moves(tmp_path: Path, isolated_store: Path) -> None:
    output = tmp_path / "out"
    trainer = tiny_trainer(
        output,
        [CheckpointRecordCallback()],
        eval_steps=2,
        metric_for_best_model="score",
        greater_is_better=True,
        load_best_model_at_end=True,
    )
    trainer.compute_metrics = scores(1.0, 3.0, 2.0)
    trainer.preprocess_logits_for_metrics = lambda logits, labels: torch.zeros(1)  # type: ignore[assignment]
    trainer.train()
    assert trainer.state.best_model_checkpoint == str(output / "checkpoint-4")
    stored = {item.record.training.step: item for item in RecordStore(isolated_store).records()}
    best = {step: item.record.training.best for step, item in stored.items()}
    assert best == {2: False, 4: True, 6: False}
    assert stored[4].record.training.best_metric == "eval_score"
    assert stored[4].record.training.best_metric_value == 3.0
    assert stored[2].revision == 2  # it was the best until step 4: its record was updated
    imported = cli("import", str(output), "--store", str(tmp_path / "other"))  # the same, from disk
    assert imported.returncode == 0, imported.stderr
    again = {
        item.record.training.step: item.record.training for item in RecordStore(tmp_path / "other").records()
    }
    assert {step: training.best for step, training in again.items()} == best
    assert (again[4].best_metric, again[4].best_metric_value) == ("eval_score", 3.0)
