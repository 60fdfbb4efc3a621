"""Running real tiny Trainer jobs in tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import Trainer, TrainerCallback, TrainingArguments

from tiny import TinyTextDataset, tiny_arguments, tiny_model, tiny_tokenizer


def tiny_args(output_dir: Path, **overrides: Any) -> TrainingArguments:
    """Six steps, a save every two, an evaluation every three: three records per run."""
    settings: dict[str, Any] = dict(
        max_steps=6,
        save_steps=2,
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=3,
        learning_rate=5e-5,
    )
    return tiny_arguments(str(output_dir), **{**settings, **overrides})


def tiny_trainer(
    output_dir: Path,
    callbacks: list[TrainerCallback],
    model: Any = None,
    with_tokenizer: bool = True,
    **overrides: Any,
) -> Trainer:
    args = tiny_args(output_dir, **overrides)
    return Trainer(
        model=model if model is not None else tiny_model(),
        args=args,
        train_dataset=TinyTextDataset(),
        eval_dataset=TinyTextDataset(size=8, seed=1) if args.eval_strategy != "no" else None,
        processing_class=tiny_tokenizer() if with_tokenizer else None,
        callbacks=callbacks,
    )
