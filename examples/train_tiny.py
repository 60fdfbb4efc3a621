"""The main job: train a tiny GPT-2 for real, with a tokenizer, saving checkpoints that get records.

Everything is built locally (no hub download): a word-level tokenizer, a 2-layer GPT-2 from a config,
and a fixed dataset. At the end it prints ``checkpoint-records list`` for the store it wrote to.

    python examples/train_tiny.py [--output-dir outputs/tiny-run] [--run-name tiny-run] [--store DIR] [--max-steps 12]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from typing import Any

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
    Trainer,
    TrainingArguments,
)

from checkpoint_records import CheckpointRecordCallback

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "checkpoints",
    "are",
    "saved",
    "and",
    "records",
    "are",
    "kept",
]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over a tiny vocabulary, built in memory."""
    vocab = {"[PAD]": 0, "[UNK]": 1, "[EOS]": 2}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]"
    )


def tiny_config(**overrides: Any) -> GPT2Config:
    settings: dict[str, Any] = dict(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    settings.update(overrides)
    return GPT2Config(**settings)


def tiny_model(name_or_path: str = "tiny-gpt2", **overrides: Any) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(tiny_config(**overrides))
    model.config.name_or_path = name_or_path
    return model


class TinyTextDataset(torch.utils.data.Dataset):
    """Fixed token sequences; labels equal inputs so the causal LM loss is defined."""

    def __init__(self, size: int = 32, length: int = 8, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.rows = torch.randint(3, 20, (size, length), generator=generator)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = self.rows[index]
        return {"input_ids": row, "attention_mask": torch.ones_like(row), "labels": row.clone()}


def tiny_arguments(
    output_dir: str, arguments_class: type[TrainingArguments] = TrainingArguments, **overrides: Any
) -> TrainingArguments:
    """Training arguments for a tiny run on the CPU: batch 4, no reporting, no progress bars (of
    ``arguments_class``: a trainer's own, such as TRL's ``SFTConfig``)."""
    settings: dict[str, Any] = dict(
        output_dir=output_dir,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
    )
    return arguments_class(**{**settings, **overrides})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="outputs/tiny-run")
    parser.add_argument(
        "--run-name", default="tiny-run", help="the job's name; its records are NAME-checkpoint-STEP"
    )
    parser.add_argument("--store", default=None, help="store directory (default: $CHECKPOINT_RECORDS_HOME)")
    parser.add_argument("--max-steps", type=int, default=12)
    parser.add_argument("--save-steps", type=int, default=4)
    options = parser.parse_args(argv)

    args = tiny_arguments(
        options.output_dir,
        run_name=options.run_name,
        max_steps=options.max_steps,
        save_steps=options.save_steps,
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=options.save_steps,
    )
    trainer = Trainer(
        model=tiny_model(),
        args=args,
        train_dataset=TinyTextDataset(),
        eval_dataset=TinyTextDataset(size=8, seed=1),
        processing_class=tiny_tokenizer(),
        callbacks=[CheckpointRecordCallback(store=options.store)],
    )
    trainer.train()

    listing = [sys.executable, "-m", "checkpoint_records.cli"]
    if options.store:
        listing += ["--store", options.store]
    return subprocess.call([*listing, "list"])


if __name__ == "__main__":
    sys.exit(main())
