"""Every wire format, produced from real Trainer runs and validated against the shared JSON Schemas."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from checkpoint_records import CheckpointRecordCallback, RecordStore
from checkpoint_records.formats import get_format, known_formats
from checkpoint_records.formats.flexai import FlexAIFormat
from checkpoint_records.formats.llama_stack import LlamaStackFormat, epoch_index, job_artifacts
from checkpoint_records.formats.openai import OpenAIFormat, unix_seconds
from checkpoint_records.formats.training_job import (
    JobSnapshot,
    TrainingJobFormat,
    job_snapshot_from_trainer,
    render_job,
    task_type_for,
    technique_for,
)
from checkpoint_records.record import CheckpointRecord
from records_factory import make_record
from schema_files import SCHEMA_OF, validate
from tiny import TinyTextDataset, tiny_config, tiny_model, tiny_tokenizer
from trainer_runs import tiny_args, tiny_trainer

RECORD_FORMATS = ("record", "flexai", "openai", "llama-stack")


def validate_checkpoint(wire_format: str, record: CheckpointRecord) -> dict[str, Any]:
    rendered = get_format(wire_format).render(record)
    if wire_format == "llama-stack":
        validate({"job_uuid": record.metadata.job_id, "checkpoints": [rendered]}, "llama-stack-job-artifacts")
    else:
        validate(rendered, SCHEMA_OF[wire_format])
    return rendered


def stored(store: Path) -> list[CheckpointRecord]:
    return sorted(
        (item.record for item in RecordStore(store).records()), key=lambda record: record.training.step
    )


class LogTimes(TrainerCallback):
    """Stamps each log as it happens: the times ``log_history`` does not keep."""

    def __init__(self) -> None:
        self.times: dict[int, float] = {}

    def on_log(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self.times[state.global_step] = time.time()


class SnapshotsAtSave(TrainerCallback):
    """Builds the job snapshot a running job would send at each save."""

    def __init__(self, stamps: LogTimes, started: float) -> None:
        self.stamps, self.started = stamps, started
        self.snapshots: list[JobSnapshot] = []

    def on_save(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self.snapshots.append(
            job_snapshot_from_trainer(
                args, state, "SFTTrainer", "Running", "tiny-gpt2", job_id="job-1", job_name="run",
                created_at=self.started, log_times=self.stamps.times, model=kwargs.get("model"),
            )
        )  # fmt: skip


class SFTTrainer(Trainer):
    """Logs ``mean_token_accuracy`` and ``eval_mean_token_accuracy`` as TRL's SFTTrainer does."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._accuracy: dict[str, list[float]] = {"train": [], "eval": []}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[no-untyped-def]
        loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        labels = inputs["labels"][:, 1:]
        mask = labels != -100
        correct = (outputs.logits[:, :-1].argmax(-1) == labels) & mask
        self._accuracy["train" if model.training else "eval"].append((correct.sum() / mask.sum()).item())
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        values = self._accuracy[mode]
        if values:
            prefix = "eval_" if mode == "eval" else ""
            logs = {**logs, f"{prefix}mean_token_accuracy": sum(values) / len(values)}
        values.clear()
        super().log(logs, start_time)


def last_before(history: list[dict[str, Any]], key: str, step: int) -> Any:
    values = [entry[key] for entry in history if key in entry and entry["step"] <= step]
    return values[-1] if values else None


# --- the main run: every format, checked against the trainer's own log_history ------------------


def test_every_format_from_a_real_run_matches_the_log_history(tmp_path: Path, isolated_store: Path) -> None:
    stamps = LogTimes()
    started = time.time()
    at_save = SnapshotsAtSave(stamps, started)
    args = tiny_args(tmp_path / "out", learning_rate=1e-3, warmup_steps=1, weight_decay=0.01, seed=7)
    trainer = SFTTrainer(
        model=tiny_model(),
        args=args,
        train_dataset=TinyTextDataset(),
        eval_dataset=TinyTextDataset(size=8, seed=1),
        processing_class=tiny_tokenizer(),
        callbacks=[CheckpointRecordCallback(), stamps, at_save],
    )
    trainer.train()
    history = trainer.state.log_history
    records = stored(isolated_store)
    assert [record.training.step for record in records] == [2, 4, 6]

    for record in records:
        step = record.training.step
        for name in RECORD_FORMATS:
            validate_checkpoint(name, record)
        train_loss = last_before(history, "loss", step)
        evals = [entry for entry in history if "eval_loss" in entry and entry["step"] <= step]
        eval_loss = evals[-1]["eval_loss"] if evals else None
        eval_accuracy = evals[-1]["eval_mean_token_accuracy"] if evals else None

        flexai = get_format("flexai").render(record)
        assert set(flexai) == {"kind", "metadata", "spec", "status"}
        assert set(flexai["metadata"]) == {"name", "id", "creatorUserID", "ownerOrgID"}
        assert set(flexai["status"]["metadata"]) == {
            "name", "node", "step", "trainLoss", "evalLoss", "model", "version", "inferenceReady"
        }  # fmt: skip
        assert flexai["metadata"]["id"] == record.id and flexai["status"]["status"] == "available"
        assert flexai["status"]["metadata"]["trainLoss"] == pytest.approx(train_loss)
        assert flexai["status"]["metadata"]["evalLoss"] == (
            None if eval_loss is None else pytest.approx(eval_loss)
        )
        assert flexai["status"]["metadata"]["inferenceReady"] is True
        assert flexai["status"]["size"] == sum(entry["size"] for entry in flexai["status"]["files"]) > 0
        assert flexai["status"]["metadata"]["version"] == transformers.__version__

        openai = get_format("openai").render(record)
        assert re.fullmatch(r"ftckpt_[A-Za-z0-9]{24}", openai["id"])
        assert openai["step_number"] == step and openai["metrics"]["step"] == step
        assert openai["created_at"] == unix_seconds(record.status.created_at)
        assert abs(openai["created_at"] - started) < 120
        assert openai["fine_tuned_model_checkpoint"].startswith("ft:tiny-gpt2:personal:out:")
        assert openai["fine_tuned_model_checkpoint"].endswith(f":ckpt-step-{step}")
        expected = {
            "step": step,
            "train_loss": train_loss,
            "train_mean_token_accuracy": last_before(history, "mean_token_accuracy", step),
        }
        if eval_loss is not None:
            expected.update(
                valid_loss=eval_loss,
                full_valid_loss=eval_loss,
                valid_mean_token_accuracy=eval_accuracy,
                full_valid_mean_token_accuracy=eval_accuracy,
            )
        assert openai["metrics"] == pytest.approx(expected)

        llama = get_format("llama-stack").render(record)
        assert llama["identifier"] == record.id and llama["post_training_job_id"] == record.metadata.job_id
        assert llama["path"] == str((tmp_path / "out" / f"checkpoint-{step}").absolute())
        assert llama["epoch"] == 0  # 6 steps of 8 make three quarters of the first epoch
        assert llama["created_at"] == record.status.created_at
        if eval_loss is None:
            assert "training_metrics" not in llama
        else:
            assert llama["training_metrics"] == pytest.approx(
                {"epoch": 0, "train_loss": train_loss, "validation_loss": eval_loss, "perplexity": math.exp(eval_loss)}
            )  # fmt: skip

    assert "training_metrics" not in get_format("llama-stack").render(records[0])
    artifacts = validate(job_artifacts(records[0].metadata.job_id, records), "llama-stack-job-artifacts")
    assert [checkpoint["identifier"] for checkpoint in artifacts["checkpoints"]] == [r.id for r in records]

    # The job while it ran (one snapshot per save), and at the end.
    assert [snapshot.global_step for snapshot in at_save.snapshots] == [2, 4, 6]
    running = [validate(render_job(snapshot), "training-job-detail") for snapshot in at_save.snapshots]
    assert [detail["progress"] for detail in running] == [pytest.approx(33.33), pytest.approx(66.67), 100]
    assert all(detail["status"] == "Running" for detail in running)
    assert [len(detail["training_loss"]) for detail in running] == [2, 4, 6]
    ended = job_snapshot_from_trainer(
        trainer.args, trainer.state, type(trainer), "Success", "tiny-gpt2", job_id=records[0].metadata.job_id,
        job_name="out", created_at=started, log_times=stamps.times, model=trainer.model, created_by="user-1",
    )  # fmt: skip
    detail = validate(TrainingJobFormat().render_job(ended), "training-job-detail")
    assert detail["status"] == "Success" and detail["progress"] == 100
    assert detail["training_technique"] == "SFT" and detail["task_type"] == "text-generation"
    assert detail["base_model"] == "tiny-gpt2" and detail["base_model_option"] == "pre-trained"
    assert "base_fine_tuned_model" not in detail
    assert detail["id"] == records[0].metadata.job_id and detail["created_by"] == "user-1"
    assert detail["created_at"] == math.floor(started) <= detail["updated_at"]
    logged = [entry for entry in history if "loss" in entry]
    assert [point["loss"] for point in detail["training_loss"]] == pytest.approx([e["loss"] for e in logged])
    assert [point["timestamp"] for point in detail["training_loss"]] == [
        math.floor(stamps.times[entry["step"]]) for entry in logged
    ]
    hyper = detail["hyper_parameters"]
    assert hyper["learning_rate"] == 1e-3 and hyper["max_steps"] == 6 and hyper["seed"] == 7
    assert hyper["per_device_train_batch_size"] == 4 and hyper["gradient_accumulation_steps"] == 1
    assert hyper["total_train_batch_size"] == 4 and hyper["weight_decay"] == 0.01
    assert hyper["warmup_steps"] == 1 and hyper["lr_scheduler_type"] == "linear"
    assert hyper["num_train_epochs"] == args.num_train_epochs and hyper["trainer"] == "SFTTrainer"
    assert "lora_r" not in hyper


# --- edge cases -------------------------------------------------------------------------------


def test_no_eval_leaves_validation_metrics_out(tmp_path: Path, isolated_store: Path) -> None:
    tiny_trainer(tmp_path / "out", [CheckpointRecordCallback()], eval_strategy="no").train()
    records = stored(isolated_store)
    assert len(records) == 3
    for record in records:
        for name in RECORD_FORMATS:
            validate_checkpoint(name, record)
        assert get_format("flexai").render(record)["status"]["metadata"]["evalLoss"] is None
        assert set(get_format("openai").render(record)["metrics"]) == {"step", "train_loss"}
        assert "training_metrics" not in get_format("llama-stack").render(record)


class NanLossModel(transformers.GPT2LMHeadModel):
    def forward(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        output = super().forward(*args, **kwargs)
        output.loss = output.loss * torch.tensor(float("nan"))
        return output


def test_nan_loss_is_absent_never_zero(tmp_path: Path, isolated_store: Path) -> None:
    stamps = LogTimes()
    trainer = tiny_trainer(
        tmp_path / "out",
        [CheckpointRecordCallback(), stamps],
        model=NanLossModel(tiny_model().config),
        logging_nan_inf_filter=False,
        remove_unused_columns=False,
    )
    trainer.train()
    assert all(math.isnan(entry["loss"]) for entry in trainer.state.log_history if "loss" in entry)
    for record in stored(isolated_store):
        for name in RECORD_FORMATS:
            validate_checkpoint(name, record)
        assert get_format("flexai").render(record)["status"]["metadata"]["trainLoss"] is None
        assert get_format("openai").render(record)["metrics"] == {"step": record.training.step}
        assert "training_metrics" not in get_format("llama-stack").render(record)
    snapshot = job_snapshot_from_trainer(
        trainer.args, trainer.state, "Trainer", "Success", "tiny-gpt2",
        job_id="nan-job", job_name="nan", created_at=time.time(), log_times=stamps.times,
    )  # fmt: skip
    assert validate(render_job(snapshot), "training-job-detail")["training_loss"] == []


def test_peft_adapter(tmp_path: Path, isolated_store: Path) -> None:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        task_type="CAUSAL_LM", target_modules=["c_attn"], r=4, lora_alpha=8, fan_in_fan_out=True
    )
    model = get_peft_model(tiny_model(), config)
    trainer = tiny_trainer(
        tmp_path / "out", [CheckpointRecordCallback()], model=model, remove_unused_columns=False
    )
    trainer.train()
    records = stored(isolated_store)
    assert [record.training.step for record in records] == [2, 4, 6]
    for record in records:
        assert record.training.layout == "peft-adapter"
        for name in RECORD_FORMATS:
            validate_checkpoint(name, record)
        assert get_format("openai").render(record)["fine_tuned_model_checkpoint"].startswith("ft:tiny-gpt2:")
        assert get_format("flexai").render(record)["status"]["metadata"]["model"] == "tiny-gpt2"
    snapshot = job_snapshot_from_trainer(
        trainer.args, trainer.state, type(trainer), "Success", records[-1].training.model,
        job_id=records[-1].metadata.job_id, job_name="out", created_at=time.time(), model=trainer.model,
    )  # fmt: skip
    detail = validate(render_job(snapshot), "training-job-detail")
    assert detail["task_type"] == "text-generation" and detail["training_technique"] == "SFT"
    hyper = detail["hyper_parameters"]
    assert hyper["peft_type"] == "LORA" and hyper["lora_r"] == 4 and hyper["lora_alpha"] == 8
    assert hyper["lora_target_modules"] == ["c_attn"] and hyper["trainer"] == "Trainer"


def test_one_save_only(tmp_path: Path, isolated_store: Path) -> None:
    tiny_trainer(tmp_path / "out", [CheckpointRecordCallback()], max_steps=3, save_steps=3).train()
    (record,) = stored(isolated_store)
    for name in RECORD_FORMATS:
        validate_checkpoint(name, record)
    assert "training_metrics" in get_format("llama-stack").render(record)  # eval ran at step 3
    artifacts = validate(job_artifacts(record.metadata.job_id, [record]), "llama-stack-job-artifacts")
    assert len(artifacts["checkpoints"]) == 1


def test_resumed_run_keeps_one_job_in_every_format(tmp_path: Path, isolated_store: Path) -> None:
    output = tmp_path / "out"
    started = time.time()
    tiny_trainer(output, [CheckpointRecordCallback()], max_steps=4).train()
    stamps = LogTimes()
    resumed = tiny_trainer(output, [CheckpointRecordCallback(), stamps], max_steps=8)
    resumed.train(resume_from_checkpoint=True)
    records = stored(isolated_store)
    assert [record.training.step for record in records] == [2, 4, 6, 8]
    job_id = records[0].metadata.job_id

    openai = [validate_checkpoint("openai", record) for record in records]
    assert len({rendered["fine_tuning_job_id"] for rendered in openai}) == 1
    assert len({rendered["id"] for rendered in openai}) == 4
    assert len({rendered["fine_tuned_model_checkpoint"].split(":")[4] for rendered in openai}) == 1
    artifacts = validate(job_artifacts(job_id, records), "llama-stack-job-artifacts")
    assert [checkpoint["path"].rsplit("-", 1)[1] for checkpoint in artifacts["checkpoints"]] == [
        "2",
        "4",
        "6",
        "8",
    ]
    # 8 steps make one epoch: step 8 (epoch 1.0) ends the first epoch, index 0
    assert records[-1].training.epoch == 1.0
    assert [checkpoint["epoch"] for checkpoint in artifacts["checkpoints"]] == [0, 0, 0, 0]

    snapshot = job_snapshot_from_trainer(
        resumed.args, resumed.state, "Trainer", "Success", "tiny-gpt2",
        job_id=job_id, job_name="out", created_at=started, log_times=stamps.times,
    )  # fmt: skip
    detail = validate(render_job(snapshot), "training-job-detail")
    assert snapshot.global_step == snapshot.max_steps == 8 and detail["progress"] == 100
    # the losses restored from the first run have no known log time: left out, not invented
    assert len(detail["training_loss"]) == 4
    assert [entry["loss"] for entry in detail["training_loss"]] == pytest.approx(
        [entry["loss"] for entry in resumed.state.log_history if "loss" in entry and entry["step"] > 4]
    )


class FailAt(TrainerCallback):
    def on_step_end(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if state.global_step == 3:
            raise RuntimeError("out of memory, say")


def test_a_failed_run_reports_failed_with_its_progress(tmp_path: Path, isolated_store: Path) -> None:
    callback = CheckpointRecordCallback()
    trainer = tiny_trainer(tmp_path / "out", [callback, FailAt()])
    # pytest catches the exception before sys.excepthook could: the recorder ends the job as that hook would
    with pytest.raises(RuntimeError, match="out of memory"), callback.recorder:
        trainer.train()
    stored = RecordStore(isolated_store).jobs()
    assert [(job.job.status, job.job.global_step) for job in stored] == [("Failed", 2)]
    snapshot = job_snapshot_from_trainer(
        trainer.args, trainer.state, "Trainer", "Failed", "tiny-gpt2",
        job_id="failed-job", job_name="out", created_at=time.time(),
    )  # fmt: skip
    detail = validate(render_job(snapshot), "training-job-detail")
    assert detail["status"] == "Failed" and detail["progress"] == 50


# --- rendering details, without a Trainer -------------------------------------------------------


def test_renderings_are_deterministic() -> None:
    record, other = make_record(2), make_record(4)
    again = CheckpointRecord.from_json(record.to_json())
    for name in known_formats():
        if name == "training-job":
            continue
        assert get_format(name).render(record) == get_format(name).render(again)
    openai = OpenAIFormat()
    assert openai.render(record)["id"] != openai.render(other)["id"]
    assert openai.render(record)["fine_tuning_job_id"] == openai.render(other)["fine_tuning_job_id"]
    assert re.fullmatch(r"ftjob-[A-Za-z0-9]{24}", openai.render(record)["fine_tuning_job_id"])
    assert (
        openai.render(make_record(2, job="another"))["fine_tuning_job_id"]
        != openai.render(record)["fine_tuning_job_id"]
    )


def test_deleted_and_failed_checkpoints() -> None:
    available, deleted, failed = make_record(2), make_record(4), make_record(6)
    deleted.status.status = "deleted"
    failed.status.status = "failed"
    for record, status in ((deleted, "deleted"), (failed, "failed")):
        flexai = validate(FlexAIFormat().render(record), "flexai-checkpoint")
        assert flexai["status"]["status"] == status
        assert flexai["status"]["metadata"]["inferenceReady"] is False
    job_id = available.metadata.job_id
    listed = job_artifacts(job_id, [failed, deleted, available])["checkpoints"]
    assert [checkpoint["identifier"] for checkpoint in listed] == [available.id]
    everything = job_artifacts(job_id, [failed, deleted, available], include_unavailable=True)
    assert len(validate(everything, "llama-stack-job-artifacts")["checkpoints"]) == 3
    with pytest.raises(ValueError, match="belongs to job"):
        job_artifacts(job_id, [make_record(2, job="another")])


def test_openai_model_checkpoint_name() -> None:
    record = make_record(8, job="My Run: v2!")
    name = OpenAIFormat().render(record)["fine_tuned_model_checkpoint"]
    assert re.fullmatch(r"ft:tiny-gpt2:personal:My-Run-v2:[A-Za-z0-9]{8}:ckpt-step-8", name)
    named = OpenAIFormat(org="acme", suffix="prod").render(record)["fine_tuned_model_checkpoint"]
    assert named.startswith("ft:tiny-gpt2:acme:prod:")
    assert OpenAIFormat(suffix="").model_checkpoint_name(record).startswith("ft:tiny-gpt2:personal::")
    record.status.metadata.model = "org/model:latest"
    assert OpenAIFormat().model_checkpoint_name(record).startswith("ft:org/model-latest:personal:")
    record.status.metadata.model = ""
    assert OpenAIFormat().model_checkpoint_name(record).startswith("ft::personal:")  # unknown is empty


def test_llama_stack_metrics_are_all_or_nothing() -> None:
    record = make_record(2)
    record.status.metadata.eval_loss = 2.0
    metrics = LlamaStackFormat().render(record)["training_metrics"]
    assert metrics["perplexity"] == pytest.approx(math.exp(2.0)) and metrics["validation_loss"] == 2.0
    record.status.metadata.eval_loss = 1000.0  # exp overflows: no perplexity, so no metrics at all
    assert "training_metrics" not in LlamaStackFormat().render(record)
    assert [epoch_index(value) for value in (None, 0.0, 0.5, 1.0, 0.1 * 10, 1.25, 3.0)] == [
        0,
        0,
        0,
        0,
        0,
        1,
        2,
    ]


def test_openai_metrics_skip_non_finite_and_non_numbers() -> None:
    record = make_record(2)
    record.status.metadata.metrics.update(
        mean_token_accuracy=None, eval_mean_token_accuracy=0.5, learning_rate=1e-3
    )
    record.status.metadata.non_finite["mean_token_accuracy"] = "NaN"
    metrics = validate(OpenAIFormat().render(record), "openai-fine-tuning-job-checkpoint")["metrics"]
    assert metrics == {
        "step": 2,
        "train_loss": 1.0,
        "valid_mean_token_accuracy": 0.5,
        "full_valid_mean_token_accuracy": 0.5,
    }


def test_training_job_format_renders_jobs_only_and_every_format_builds_without_arguments() -> None:
    assert set(known_formats()) == {"record", "flexai", "openai", "llama-stack", "training-job"}
    for name in known_formats():
        assert get_format(name).name == name
    with pytest.raises(TypeError, match="render_job"):
        get_format("training-job").render(make_record(2))


def test_technique_and_task_type() -> None:
    assert technique_for("GRPOTrainer") == "GRPO"
    assert technique_for(type("GRPOTrainer", (Trainer,), {})) == "GRPO"
    assert technique_for(type("MyTrainer", (type("GRPOTrainer", (Trainer,), {}),), {})) == "GRPO"
    assert technique_for("SFTTrainer") == technique_for(Trainer) == technique_for("DPOTrainer") == "SFT"
    assert task_type_for(None) == task_type_for(tiny_model()) == "text-generation"
    assert (
        task_type_for(transformers.GPT2ForSequenceClassification(tiny_config(num_labels=3)))
        == "classification"
    )
    assert (
        task_type_for(transformers.GPT2ForSequenceClassification(tiny_config(num_labels=1))) == "regression"
    )
    assert task_type_for(transformers.GPT2Model(tiny_config())) == "embedding"


def test_progress_and_fine_tuned_base(tmp_path: Path) -> None:
    args = TrainingArguments(str(tmp_path), report_to="none", use_cpu=True)
    state = TrainerState(global_step=3, max_steps=12)
    snapshot = job_snapshot_from_trainer(
        args, state, "Trainer", "Cancelled", "base", job_id="j", job_name="n", created_at=1633036800.5,
        updated_at=1633036900.9, base_fine_tuned_model="training-job-1", base_fine_tuned_model_checkpoint=5,
    )  # fmt: skip
    detail = validate(render_job(snapshot), "training-job-detail")
    assert detail["progress"] == 25 and detail["status"] == "Cancelled"
    assert (detail["created_at"], detail["updated_at"]) == (1633036800, 1633036900)
    assert detail["base_model_option"] == "fine-tuned"
    assert (detail["base_fine_tuned_model"], detail["base_fine_tuned_model_checkpoint"]) == (
        "training-job-1",
        5,
    )
    assert "max_steps" not in detail["hyper_parameters"]  # not set in the arguments
    unknown = snapshot.model_copy(update={"max_steps": 0, "status": "Pending"})
    assert render_job(unknown)["progress"] == 0
    over = snapshot.model_copy(update={"global_step": 20, "status": "Running"})
    assert render_job(over)["progress"] == 100
