"""A training script as the transformers examples write them: ``TrainingArguments`` from the command line
(``HfArgumentParser``), a tiny model, no mention of checkpoint-records unless ``--own`` asks for one.

Usage: plain_script.py --output_dir DIR [--own class|instance|add_callback] [any TrainingArguments flag,
       e.g. --report_to checkpoint-records]

Its last line of output is the class names of its Trainer's callbacks, as JSON, as they were at the end
of training.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parent.parent / "examples")]

from transformers import HfArgumentParser, Trainer, TrainingArguments  # noqa: E402

from tiny import TinyTextDataset, tiny_model, tiny_tokenizer  # noqa: E402


@dataclass
class Options:
    own: str | None = None  # how the script adds a CheckpointRecordCallback itself, if it does


def main() -> None:
    options, args = HfArgumentParser((Options, TrainingArguments)).parse_args_into_dataclasses()
    callbacks: list[Any] = []
    if options.own is not None:
        from checkpoint_records import CheckpointRecordCallback

        callbacks = [CheckpointRecordCallback if options.own == "class" else CheckpointRecordCallback()]
    trainer = Trainer(
        model=tiny_model(),
        args=args,
        train_dataset=TinyTextDataset(),
        processing_class=tiny_tokenizer(),
        callbacks=None if options.own == "add_callback" else callbacks,
    )
    if options.own == "add_callback":
        trainer.add_callback(callbacks[0])
    trainer.train()
    print(json.dumps([type(callback).__name__ for callback in trainer.callback_handler.callbacks]))


if __name__ == "__main__":
    main()
