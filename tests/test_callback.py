"""Real Trainer runs: one record per checkpoint, matching what is on disk and in the Trainer's state."""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from transformers import TrainerCallback, TrainerControl, TrainerState

from checkpoint_records import (
    CheckpointRecordCallback,
    CheckpointRecorder,
    ConfigurationError,
    RecordStore,
    Sink,
)
from checkpoint_records.bookkeeper import Bookkeeper
from checkpoint_records.build import rotated_away
from checkpoint_records.callback import checkpoint_directory
from checkpoint_records.logs import set_strict
from checkpoint_records.record import CheckpointRecord
from tiny import tiny_model
from trainer_runs import tiny_trainer
from waiting import wait_until


def files_on_disk(directory: Path) -> dict[str, int]:
    found = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = Path(root) / name
            found[path.relative_to(directory).as_posix()] = path.stat().st_size
    return found


def test_one_record_per_checkpoint_matching_disk_and_log_history(
    tmp_path: Path, isolated_store: Path
) -> None:
    output = tmp_path / "out"
    trainer = tiny_trainer(output, [CheckpointRecordCallback()])
    trainer.train()

    records = {item.record.training.step: item.record for item in RecordStore(isolated_store).records()}
    checkpoints = sorted(int(path.name.split("-")[1]) for path in output.glob("checkpoint-*"))
    assert checkpoints == [2, 4, 6]
    assert sorted(records) == checkpoints

    history = trainer.state.log_history
    for step, record in records.items():
        directory = output / f"checkpoint-{step}"
        training = record.training
        losses = [entry["loss"] for entry in history if "loss" in entry and entry["step"] <= step]
        evals = [entry for entry in history if "eval_loss" in entry and entry["step"] <= step]
        assert training.train_loss == pytest.approx(losses[-1])
        if evals:
            same_step = [entry["eval_loss"] for entry in evals if entry["step"] == step]
            assert training.eval_loss == pytest.approx((same_step or [evals[-1]["eval_loss"]])[-1])
        else:
            assert training.eval_loss is None
        assert training.epoch == pytest.approx(
            [entry["epoch"] for entry in history if entry["step"] <= step][-1]
        )
        assert {entry.path: entry.size for entry in record.status.files} == files_on_disk(directory)
        assert record.status.size == sum(files_on_disk(directory).values())
        assert record.spec.directory == str(directory.absolute())
        assert training.model == "tiny-gpt2"
        assert training.architecture == "GPT2LMHeadModel"
        assert training.version == transformers.__version__
        assert training.inference_ready is True and training.inference_ready_reasons == []
        assert training.node == socket.gethostname()
        assert record.name == f"out-checkpoint-{step}"
        assert record.status.status == "available"
        assert "grad_norm" in training.metrics and "learning_rate" in training.metrics
        assert uuid.UUID(record.id) and uuid.UUID(record.metadata.job_id)
    # eval ran at step 6 before the save at 6: the record carries that one, not the step-3 one
    assert records[6].training.eval_loss != records[4].training.eval_loss


def test_ids_are_deterministic_and_a_rerun_does_not_duplicate(tmp_path: Path, isolated_store: Path) -> None:
    output = tmp_path / "out"
    tiny_trainer(output, [CheckpointRecordCallback(job_name="stable")]).train()
    first = {item.record.id: item for item in RecordStore(isolated_store).records()}
    tiny_trainer(output, [CheckpointRecordCallback(job_name="stable")]).train()
    second = {item.record.id: item for item in RecordStore(isolated_store).records()}
    assert set(first) == set(second) and len(second) == 3
    assert all(item.record.name.startswith("stable-checkpoint-") for item in second.values())
    job_ids = {item.record.metadata.job_id for item in second.values()}
    assert len(job_ids) == 1


def test_resume_keeps_job_identity(tmp_path: Path, isolated_store: Path) -> None:
    output = tmp_path / "out"
    tiny_trainer(output, [CheckpointRecordCallback()], max_steps=4).train()
    tiny_trainer(output, [CheckpointRecordCallback()], max_steps=8).train(resume_from_checkpoint=True)
    records = RecordStore(isolated_store).records()
    assert [item.record.training.step for item in records] == [2, 4, 6, 8]
    assert len({item.record.metadata.job_id for item in records}) == 1
    assert all(item.revision == 1 for item in records)


class NanLossModel(transformers.GPT2LMHeadModel):
    def forward(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        output = super().forward(*args, **kwargs)
        output.loss = output.loss * torch.tensor(float("nan"))
        return output


def test_nan_loss_gives_a_valid_record_with_the_nan_named(tmp_path: Path, isolated_store: Path) -> None:
    model = NanLossModel(tiny_model().config)
    trainer = tiny_trainer(
        tmp_path / "out",
        [CheckpointRecordCallback()],
        model=model,
        logging_nan_inf_filter=False,
        remove_unused_columns=False,
    )
    trainer.train()
    record = RecordStore(isolated_store).records()[0].record
    assert record.training.train_loss is None
    assert record.training.non_finite["trainLoss"] == "NaN"
    assert CheckpointRecord.from_json(record.to_json()) == record


def test_a_checkpoint_rotated_away_before_its_record_was_built_is_deleted_not_failed(
    tmp_path: Path, isolated_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Trainer calls ``on_save`` after writing the checkpoint: one that ``save_total_limit`` removed
    before the background thread got to it was rotated away, not a failed save."""
    ended = threading.Event()
    record_save = Bookkeeper.record_save

    def held(self: Bookkeeper, save: Any) -> CheckpointRecord:
        ended.wait(60)  # until training ends: checkpoint-2 and checkpoint-4 are rotated away meanwhile
        return record_save(self, save)

    monkeypatch.setattr(Bookkeeper, "record_save", held)

    class EndOfTraining(TrainerCallback):
        def on_train_end(self, *args: Any, **kwargs: Any) -> None:
            ended.set()

    output = tmp_path / "out"
    tiny_trainer(
        output, [EndOfTraining(), CheckpointRecordCallback()], saves_apart=False, save_total_limit=1
    ).train()
    assert not (output / "checkpoint-2").exists()
    by_step = {stored.record.training.step: stored.record for stored in RecordStore(isolated_store).records()}
    assert {step: record.status.status for step, record in by_step.items()} == {
        2: "deleted",
        4: "deleted",
        6: "available",
    }
    gone = by_step[2]
    assert (
        gone.training.inference_ready_reasons == [rotated_away(gone.spec.directory)] and not gone.status.files
    )
    assert gone.training.train_loss is not None and gone.training.step == 2


def test_a_loop_recording_a_directory_that_does_not_exist_gets_a_failed_record(
    tmp_path: Path, isolated_store: Path
) -> None:
    """A loop's ``record()`` may name a directory that was never written: that save failed."""
    with CheckpointRecorder() as recorder:
        record = recorder.record(tmp_path / "never-written", step=7, epoch=1.0, train_loss=1.5).result(60)
    assert record is not None and record.status.status == "failed"
    assert record.training.inference_ready is False and record.training.train_loss == 1.5


def test_only_the_world_main_process_records(tmp_path: Path, isolated_store: Path) -> None:
    callback = CheckpointRecordCallback()
    args = tiny_trainer(tmp_path / "out", []).args
    state = TrainerState(global_step=2, is_world_process_zero=False, is_local_process_zero=True)
    callback.on_save(args, state, TrainerControl())
    assert callback.last_record is None
    assert not (isolated_store / "records.db").exists()


class BrokenSink(Sink):
    """A third-party sink with a bug: every send raises something that is not a DeliveryError."""

    def __init__(self) -> None:
        super().__init__()
        #: How many sends were tried (a delivery's own count of attempts starts again at each revision
        #: of its document, and the job and its log are revised at every save).
        self.tries = 0

    @property
    def key(self) -> str:
        return "broken://sink"

    def send(self, document: dict[str, Any], idempotency_key: str) -> None:
        self.tries += 1
        raise RuntimeError("sink exploded")


def test_a_failing_sink_never_reaches_training_is_logged_once_and_keeps_the_records(
    tmp_path: Path, isolated_store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="checkpoint_records")
    sink = BrokenSink()
    trainer = tiny_trainer(tmp_path / "out", [CheckpointRecordCallback(sinks=[sink], flush_timeout=1)])
    trainer.train()  # must not raise
    assert trainer.state.global_step == 6
    store = RecordStore(isolated_store)
    wait_until(lambda: sink.tries >= 2, 30, "the sink was not tried twice")  # the lane fails twice...
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "sink exploded" in r.message]
    assert len(warnings) == 1 and "broken://sink" in warnings[0].message  # ...and says so once
    assert {delivery.state for delivery in store.outbox.deliveries()} == {"pending"}


def test_a_failure_inside_the_library_never_reaches_training_and_is_logged_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_put(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(RecordStore, "put", broken_put)
    set_strict(False)  # production behaviour: logged once, skipped
    caplog.set_level(logging.DEBUG, logger="checkpoint_records")
    trainer = tiny_trainer(tmp_path / "out", [CheckpointRecordCallback()])
    trainer.train()  # must not raise
    assert trainer.state.global_step == 6
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "disk on fire" in r.message]
    assert len(warnings) == 1
    assert "on_save" in warnings[0].message


def test_hyper_parameter_search_directories_are_found(tmp_path: Path) -> None:
    args = tiny_trainer(tmp_path / "out", []).args
    (tmp_path / "out" / "run-3" / "checkpoint-4").mkdir(parents=True)
    state = TrainerState(global_step=4, is_hyper_param_search=True)
    assert checkpoint_directory(args, state) == tmp_path / "out" / "run-3" / "checkpoint-4"
    (tmp_path / "out" / "trial-a" / "checkpoint-4").mkdir(parents=True)
    named = TrainerState(global_step=4, is_hyper_param_search=True, trial_name="trial-a")
    assert checkpoint_directory(args, named) == tmp_path / "out" / "trial-a" / "checkpoint-4"


def test_bad_configuration_fails_at_construction_with_what_to_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigurationError, match="CHECKPOINT_RECORDS_HOME"):
        CheckpointRecordCallback(store=blocker / "store")
    with pytest.raises(ConfigurationError, match=r"\{step\}"):
        CheckpointRecordCallback(name_template="{job_name}")
    with pytest.raises(ConfigurationError, match="not a number"):
        CheckpointRecordCallback(flush_timeout="soon")  # type: ignore[arg-type]
    monkeypatch.setenv("CHECKPOINT_RECORDS_SINK", "https://typo.example")
    with pytest.raises(ConfigurationError, match="CHECKPOINT_RECORDS_SINKS"):
        CheckpointRecordCallback()
