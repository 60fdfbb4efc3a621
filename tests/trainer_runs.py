"""Running real tiny Trainer jobs in tests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from unittest import mock

from transformers import Trainer, TrainerCallback, TrainingArguments

from checkpoint_records import CheckpointRecordCallback, RecordStore
from checkpoint_records.cli import main
from tiny import TinyTextDataset, tiny_arguments, tiny_model, tiny_tokenizer


def tiny_args(
    output_dir: Path, arguments_class: type[TrainingArguments] = TrainingArguments, **overrides: Any
) -> TrainingArguments:
    """Six steps, a save every two, an evaluation every three: three records per run (``arguments_class``:
    a trainer's own arguments)."""
    settings: dict[str, Any] = dict(
        max_steps=6,
        save_steps=2,
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=3,
        learning_rate=5e-5,
    )
    return tiny_arguments(str(output_dir), arguments_class, **{**settings, **overrides})


class SavesApart(TrainerCallback):
    """Waits, after each save, until the records' background has recorded it.

    In a real run minutes pass between saves, so a checkpoint is recorded long before the next save
    rotates it away (``save_total_limit``). A tiny run saves milliseconds apart, and on a loaded machine
    the background may only get to a checkpoint after it is gone: a test about rotation would then see
    the (also right) record of a checkpoint that was never seen on disk instead of the one it checks.
    """

    def __init__(self, callbacks: list[TrainerCallback]) -> None:
        self.recorders = [
            callback.recorder for callback in callbacks if isinstance(callback, CheckpointRecordCallback)
        ]

    def on_save(self, *args: Any, **kwargs: Any) -> None:
        for recorder in self.recorders:
            assert recorder.drain(60), "the background did not record the save within 60 s"


def tiny_trainer(
    output_dir: Path,
    callbacks: list[TrainerCallback],
    model: Any = None,
    with_tokenizer: bool = True,
    saves_apart: bool | None = None,
    **overrides: Any,
) -> Trainer:
    """``saves_apart`` (default: when ``save_total_limit`` rotates checkpoints) adds :class:`SavesApart`."""
    args = tiny_args(output_dir, **overrides)
    if saves_apart is None:
        saves_apart = "save_total_limit" in overrides
    if saves_apart:
        callbacks = [*callbacks, SavesApart(callbacks)]
    return Trainer(
        model=model if model is not None else tiny_model(),
        args=args,
        train_dataset=TinyTextDataset(),
        eval_dataset=TinyTextDataset(size=8, seed=1) if args.eval_strategy != "no" else None,
        processing_class=tiny_tokenizer() if with_tokenizer else None,
        callbacks=callbacks,
    )


def run_delivering_to(url: str, home: Path, output_dir: Path, **env: str) -> RecordStore:
    """A tiny Trainer run configured only by the environment (``env``'s ``CHECKPOINT_RECORDS_*``
    variables beside these) that sends its records and its job's documents to the registry at ``url``,
    then ``flush`` as a user would; its store, once everything was delivered."""
    sinks = f"{url},training-job+{url}"
    variables = {"CHECKPOINT_RECORDS_HOME": str(home), "CHECKPOINT_RECORDS_SINKS": sinks, **env}
    with mock.patch.dict(os.environ, variables):
        tiny_trainer(output_dir, [CheckpointRecordCallback()]).train()
        assert main(["flush", "--timeout", "60"]) == 0
    store = RecordStore(home)
    counts = store.outbox.counts()
    assert counts["pending"] == counts["dead"] == 0 and counts["delivered"] >= 4, store.outbox.deliveries()
    return store
