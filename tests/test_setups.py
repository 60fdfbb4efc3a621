"""Records right in the set-ups people actually run (issue 21), each a real tiny Trainer run: a working
directory that changes mid-run, a Trainer subclass with folder names of its own, a ``run_name`` that only
repeats ``output_dir``, several eval sets, PEFT adapters (default and named, a base that is gone), a model
type transformers does not know, TRL's ``SFTTrainer`` and ``Seq2SeqTrainer``; and a record imported into a
fresh store equal to the live one but for saying it was recovered.

``pytest -m compat`` runs these (and the other ``compat`` tests) again against the lowest transformers
``pyproject.toml`` allows (``scripts/test``).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    T5Config,
    T5ForConditionalGeneration,
    Trainer,
    TrainerCallback,
)

from checkpoint_records import CheckpointRecordCallback, RecordStore, assess_readiness
from checkpoint_records.bookkeeper import Bookkeeper
from checkpoint_records.collect import scan_checkpoint
from checkpoint_records.formats import get_format
from checkpoint_records.formats.llama_stack import job_artifacts
from checkpoint_records.history import metrics_at_step
from checkpoint_records.record import CheckpointRecord
from commands import cli
from schema_files import validate
from stored_records import by_step, without_recovery_fields
from tiny import WORDS, TinyTextDataset, save_tiny_pretrained, tiny_model, tiny_tokenizer
from trainer_runs import tiny_args, tiny_trainer

pytestmark = pytest.mark.compat


def held_until_training_ends(monkeypatch: pytest.MonkeyPatch) -> TrainerCallback:
    """The recorder's background builds every record only once training ended, as on a loaded machine
    (or behind a slow upload): whatever changed since the save must not change the record."""
    ended = threading.Event()
    record_save = Bookkeeper.record_save

    def held(self: Bookkeeper, save: Any) -> CheckpointRecord:
        ended.wait(120)
        return record_save(self, save)

    monkeypatch.setattr(Bookkeeper, "record_save", held)

    class EndOfTraining(TrainerCallback):
        def on_train_end(self, *args: Any, **kwargs: Any) -> None:
            ended.set()

    return EndOfTraining()


# --- a checkpoint that exists is never reported gone -----------------------------------------------------


class ChangesDirectory(TrainerCallback):
    """Another library's callback that changes the working directory right after every save."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        elsewhere = self.root / f"elsewhere-{state.global_step}"
        elsewhere.mkdir()
        os.chdir(elsewhere)


def test_a_relative_output_dir_under_a_changing_working_directory(
    tmp_path: Path, isolated_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = tmp_path / "start"
    start.mkdir()
    monkeypatch.chdir(start)  # and back after the test
    callbacks = [
        held_until_training_ends(monkeypatch),
        CheckpointRecordCallback(),
        ChangesDirectory(tmp_path),
    ]
    tiny_trainer(Path("out"), callbacks).train()
    # The Trainer writes each checkpoint under the working directory of the moment.
    written = {2: start, 4: tmp_path / "elsewhere-2", 6: tmp_path / "elsewhere-4"}
    records = by_step(isolated_store)
    for step, record in records.items():
        assert record.spec.directory == str(written[step] / "out" / f"checkpoint-{step}")
        assert record.status.status == "available" and record.training.inference_ready, record.training
    jobs = RecordStore(isolated_store).jobs()
    assert [(job.job.name, job.job.directory) for job in jobs] == [("out", str(start / "out"))]
    assert {record.metadata.job_id for record in records.values()} == {jobs[0].job.id}


class OwnFolders(Trainer):
    """A Trainer subclass that names its checkpoint folders its own way (``step_0002``) and writes no
    folder at all for the save at step 4 (its disk was full, say)."""

    def _save_checkpoint(self, model: Any, trial: Any, *args: Any, **kwargs: Any) -> None:
        if self.state.global_step == 4:
            return
        folder = os.path.join(self._get_output_dir(trial=trial), f"step_{self.state.global_step:04d}")
        self.save_model(folder, _internal_call=True)
        self.state.save_to_json(os.path.join(folder, "trainer_state.json"))


def test_a_trainer_subclass_with_its_own_folder_names(
    tmp_path: Path, isolated_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = tmp_path / "out"
    callbacks = [held_until_training_ends(monkeypatch), CheckpointRecordCallback()]
    OwnFolders(
        model=tiny_model(),
        args=tiny_args(output),
        train_dataset=TinyTextDataset(),
        eval_dataset=TinyTextDataset(size=8, seed=1),
        processing_class=tiny_tokenizer(),
        callbacks=callbacks,
    ).train()
    records = by_step(isolated_store)
    for step in (2, 6):
        record = records[step]
        assert record.spec.directory == str(output / f"step_{step:04d}")
        assert record.status.status == "available" and record.training.inference_ready, record.training
        assert record.status.size > 0
    missing = records[4]  # no limit was set: nothing rotated it away; it was never there
    assert missing.status.status == "failed" and not missing.training.inference_ready
    assert missing.training.inference_ready_reasons == [
        f"checkpoint directory not found at {output / 'checkpoint-4'}"
    ]
    fresh = tmp_path / "fresh-store"
    assert cli("import", str(output), "--store", str(fresh)).returncode == 0
    imported = by_step(fresh)
    assert sorted(imported) == [2, 6]
    assert all(imported[step].id == records[step].id for step in imported)


# --- identity users can see ------------------------------------------------------------------------------


def test_a_run_name_that_repeats_output_dir_is_no_name(tmp_path: Path, isolated_store: Path) -> None:
    """transformers 4.46 to 4.54 default ``run_name`` to ``output_dir``: names stay free of ``/``, and
    ``JOB/NAME`` finds a record."""
    output = tmp_path / "runs" / "out"
    tiny_trainer(output, [CheckpointRecordCallback()], run_name=str(output)).train()
    records = by_step(isolated_store)
    assert {record.name for record in records.values()} == {f"out-checkpoint-{step}" for step in (2, 4, 6)}
    assert {record.metadata.job_name for record in records.values()} == {"out"}
    shown = cli("inspect", "out/out-checkpoint-4", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["metadata"]["id"] == records[4].id


def test_import_of_a_run_recorded_live_finds_its_job(tmp_path: Path, isolated_store: Path) -> None:
    """Without the exact ``--run-name``, ``import`` of a run recorded live takes the job the store knows
    wrote those folders, and adds nothing: one checkpoint folder is one record."""
    output = tmp_path / "out"
    tiny_trainer(output, [CheckpointRecordCallback()], run_name="lr-sweep-3").train()
    live = by_step(isolated_store)
    imported = cli("import", str(output))
    assert imported.returncode == 0, imported.stderr
    assert "imported 0 checkpoints as job lr-sweep-3" in imported.stderr
    other_name = cli("import", str(output), "--run-name", "another-name")
    assert other_name.returncode == 0 and "imported 0 checkpoints" in other_name.stderr, other_name.stderr
    assert by_step(isolated_store) == live
    assert len(RecordStore(isolated_store).jobs()) == 1


# --- several eval sets -----------------------------------------------------------------------------------


def test_several_eval_sets_take_the_loss_the_run_selects_by(tmp_path: Path, isolated_store: Path) -> None:
    output = tmp_path / "out"
    trainer = Trainer(
        model=tiny_model(),
        args=tiny_args(output, eval_steps=2, metric_for_best_model="b_loss", greater_is_better=False),
        train_dataset=TinyTextDataset(),
        eval_dataset={"a": TinyTextDataset(size=8, seed=1), "b": TinyTextDataset(size=8, seed=2)},
        processing_class=tiny_tokenizer(),
        callbacks=[CheckpointRecordCallback()],
    )
    trainer.train()
    history = trainer.state.log_history
    records = by_step(isolated_store)
    for step, record in records.items():
        logged = {key: value for entry in history if entry["step"] == step for key, value in entry.items()}
        training = record.training
        assert (training.eval_loss, training.eval_loss_metric) == (logged["eval_b_loss"], "eval_b_loss")
        assert training.eval_loss_step == step
        assert record.to_dict()["status"]["metadata"]["evalLossMetric"] == "eval_b_loss"
        openai = validate(get_format("openai").render(record), "openai-fine-tuning-job-checkpoint")
        assert openai["metrics"]["valid_loss"] == logged["eval_b_loss"]
        validate(get_format("flexai").render(record), "flexai-checkpoint")
    artifacts = validate(
        job_artifacts(records[2].metadata.job_id, records.values()), "llama-stack-job-artifacts"
    )
    assert all(
        checkpoint["training_metrics"]["validation_loss"] == records[index * 2 + 2].training.eval_loss
        for index, checkpoint in enumerate(artifacts["checkpoints"])
    )
    # Without metric_for_best_model, the first eval set's loss: as the log of this very run gives it.
    first = metrics_at_step(history, 6)
    assert first.eval_loss_metric == "eval_a_loss"
    assert first.eval_loss == next(
        entry["eval_a_loss"] for entry in history if "eval_a_loss" in entry and entry["step"] == 6
    )
    # Imported from disk, the same loss: trainer_state.json names the best by its value.
    fresh = tmp_path / "fresh-store"
    assert cli("import", str(output), "--store", str(fresh)).returncode == 0
    imported = by_step(fresh)
    assert {step: (r.training.eval_loss, r.training.eval_loss_metric) for step, r in imported.items()} == {
        step: (r.training.eval_loss, r.training.eval_loss_metric) for step, r in records.items()
    }


# --- PEFT ------------------------------------------------------------------------------------------------


def lora_model(base: Path, adapter_name: str = "default") -> Any:
    from peft import LoraConfig, get_peft_model

    model = AutoModelForCausalLM.from_pretrained(str(base))
    config = LoraConfig(
        r=2, lora_alpha=4, target_modules=["c_attn"], task_type="CAUSAL_LM", fan_in_fan_out=True
    )
    return get_peft_model(model, config, adapter_name=adapter_name)


def test_a_lora_run_imported_into_a_fresh_store_equals_the_live_record(
    tmp_path: Path, isolated_store: Path
) -> None:
    base = save_tiny_pretrained(tmp_path / "base")
    output = tmp_path / "out"
    tiny_trainer(output, [CheckpointRecordCallback()], model=lora_model(base)).train()
    live = by_step(isolated_store)
    for record in live.values():
        training = record.training
        assert training.layout == "peft-adapter" and training.inference_ready, training
        assert (training.model, training.architecture) == (str(base), "GPT2LMHeadModel")
    fresh = tmp_path / "fresh-store"
    assert cli("import", str(output), "--store", str(fresh)).returncode == 0
    imported = by_step(fresh)
    assert sorted(imported) == sorted(live)
    for step, record in imported.items():
        assert record.training.recovered and not live[step].training.recovered
        assert without_recovery_fields(record) == without_recovery_fields(live[step])

    shutil.rmtree(base)  # the adapter's base, a local folder, is gone: nothing can load the adapter
    gone = tmp_path / "gone-store"
    assert cli("import", str(output), "--store", str(gone)).returncode == 0
    for record in by_step(gone).values():
        assert not record.training.inference_ready
        assert record.training.inference_ready_reasons == [
            f"base model {base} not found: a local path that does not exist"
        ]


def test_an_adapter_saved_under_its_own_name(tmp_path: Path, isolated_store: Path) -> None:
    base = save_tiny_pretrained(tmp_path / "base")
    output = tmp_path / "out"
    tiny_trainer(output, [CheckpointRecordCallback()], model=lora_model(base, "mine")).train()
    for step, record in by_step(isolated_store).items():
        assert (output / f"checkpoint-{step}" / "mine" / "adapter_config.json").is_file()
        training = record.training
        assert training.layout == "peft-adapter", training
        assert training.inference_ready, training.inference_ready_reasons
        assert (training.model, training.architecture) == (str(base), "GPT2LMHeadModel")
    named = output / "checkpoint-6"
    (named / "mine" / "adapter_model.safetensors").unlink()  # what is wrong is said of that adapter
    readiness = assess_readiness(named, scan_checkpoint(named).files)
    assert readiness.reasons == ("adapter mine: missing adapter weights",)


# --- a model type transformers does not know -------------------------------------------------------------


def test_a_model_type_transformers_does_not_know(tmp_path: Path, isolated_store: Path) -> None:
    from custom_model import TinyCustomConfig, TinyCustomModel

    torch.manual_seed(0)
    output = tmp_path / "out"
    tiny_trainer(output, [CheckpointRecordCallback()], model=TinyCustomModel(TinyCustomConfig())).train()
    for record in by_step(isolated_store).values():
        training = record.training
        assert training.layout == "transformers" and not training.inference_ready
        assert training.architecture == "TinyCustomModel"
        assert training.inference_ready_reasons == [
            "model_type 'tiny-custom-lm' is not a transformers model type: it loads only with "
            "trust_remote_code=True (auto_map: AutoConfig, AutoModelForCausalLM)"
        ], training.inference_ready_reasons
    checkpoint = output / "checkpoint-6"
    config = json.loads((checkpoint / "config.json").read_text())
    del config["auto_map"]  # without its code, only its own class loads it
    (checkpoint / "config.json").write_text(json.dumps(config))
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    readiness = assess_readiness(checkpoint, scan_checkpoint(checkpoint).files, CONFIG_MAPPING)
    assert readiness.reasons == (
        "model_type 'tiny-custom-lm' is unknown to transformers and config.json has no auto_map: "
        "Auto* classes cannot load it; load it with TinyCustomModel.from_pretrained",
    )


# --- other trainers --------------------------------------------------------------------------------------

#: Four steps, a save and an evaluation every two: two records per run.
FOUR_STEPS: dict[str, Any] = dict(max_steps=4, eval_steps=2)


def test_trl_sft_trainer(tmp_path: Path, isolated_store: Path) -> None:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    texts = [" ".join(WORDS[index % 5 : index % 5 + 6]) for index in range(16)]
    output = tmp_path / "out"
    config = tiny_args(output, SFTConfig, dataset_text_field="text", **FOUR_STEPS)
    trainer = SFTTrainer(
        model=tiny_model(),
        args=config,
        train_dataset=Dataset.from_dict({"text": texts}),
        eval_dataset=Dataset.from_dict({"text": texts[:4]}),
        processing_class=tiny_tokenizer(),
        callbacks=[CheckpointRecordCallback()],
    )
    trainer.train()
    records = by_step(isolated_store)
    assert sorted(records) == [2, 4]
    for record in records.values():
        training = record.training
        assert training.inference_ready, training.inference_ready_reasons
        assert training.train_loss is not None and training.eval_loss_metric == "eval_loss"
        assert training.model == "tiny-gpt2" and training.architecture == "GPT2LMHeadModel"
    job = RecordStore(isolated_store).jobs()[0].job
    assert job.hyper_parameters["trainer"] == "SFTTrainer" and job.status == "Success"


def test_seq2seq_trainer(tmp_path: Path, isolated_store: Path) -> None:
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=64, d_model=16, d_ff=32, d_kv=8, num_layers=1, num_heads=2, decoder_start_token_id=0
    )
    output = tmp_path / "out"
    args = tiny_args(output, Seq2SeqTrainingArguments, **FOUR_STEPS)
    Seq2SeqTrainer(
        model=T5ForConditionalGeneration(config),
        args=args,
        train_dataset=TinyTextDataset(),
        eval_dataset=TinyTextDataset(size=8, seed=1),
        processing_class=tiny_tokenizer(),
        callbacks=[CheckpointRecordCallback()],
    ).train()
    records = by_step(isolated_store)
    assert sorted(records) == [2, 4]
    for record in records.values():
        training = record.training
        assert training.inference_ready, training.inference_ready_reasons
        assert training.architecture == "T5ForConditionalGeneration" and training.eval_loss is not None
