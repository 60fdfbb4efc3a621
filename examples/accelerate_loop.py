"""A training loop of your own under accelerate, with a checkpoint record at every save.

    accelerate launch --multi_gpu --num_processes 2 examples/accelerate_loop.py [--project-dir outputs/accelerate-loop]

The model is the tiny GPT-2 of ``train_tiny.py``, built from a config (no download). accelerate's automatic
checkpoint naming writes ``PROJECT_DIR/checkpoints/checkpoint_<n>`` (``model.safetensors``,
``optimizer.bin``, ``random_states_<rank>.pkl``: a state to resume from, not a ``from_pretrained``
checkpoint, and the record says so). Every process calls ``recorder.record``; the main process records,
once every process has finished writing. Records are named by the global step, ``loop-step-<step>``: the
folder's ``<n>`` counts saves (``checkpoint_0`` is ``loop-step-2`` when saving every 2 steps), and each
record keeps its folder in ``spec.directory``. Sinks come from ``CHECKPOINT_RECORDS_SINKS``; see the records with
``checkpoint-records list``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from torch.utils.data import DataLoader
from train_tiny import TinyTextDataset, tiny_model

from checkpoint_records import CheckpointRecorder


def evaluate(model: Any, batches: DataLoader[Any], accelerator: Accelerator) -> float:
    """The mean evaluation loss over every process's batches."""
    model.eval()
    losses = []
    with torch.no_grad():
        for batch in batches:
            losses.append(accelerator.gather_for_metrics(model(**batch).loss.reshape(1)))
    model.train()
    return float(torch.cat(losses).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project-dir", default="outputs/accelerate-loop")
    parser.add_argument("--max-steps", type=int, default=6)
    parser.add_argument("--save-every", type=int, default=2)
    options = parser.parse_args(argv)

    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        project_config=ProjectConfiguration(
            project_dir=options.project_dir, automatic_checkpoint_naming=True
        ),
    )
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train = DataLoader(TinyTextDataset(), batch_size=2, shuffle=True)
    evaluation = DataLoader(TinyTextDataset(size=8, seed=1), batch_size=2)
    model, optimizer, train, evaluation = accelerator.prepare(model, optimizer, train, evaluation)

    with CheckpointRecorder() as recorder:  # flushes (bounded) at the end; pending records stay queued
        step = 0
        while step < options.max_steps:
            for batch in train:
                loss = model(**batch).loss
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
                step += 1
                if step % options.save_every == 0:
                    checkpoint = accelerator.save_state()  # PROJECT_DIR/checkpoints/checkpoint_<n>
                    recorder.record(
                        checkpoint,
                        step=step,
                        epoch=step / len(train),
                        train_loss=accelerator.reduce(loss.detach(), "mean"),
                        eval_loss=evaluate(model, evaluation, accelerator),
                        model=accelerator.unwrap_model(model),
                        accelerator=accelerator,
                    )
                if step == options.max_steps:
                    break
    # Every process ends the process group together (end_training destroys it) rather than leaving it to
    # torch's destructors at exit, where a rank may wait forever on a gloo thread (pytorch/pytorch#75097);
    # and the DDP model goes first: were it the group's last holder, freeing it would destroy the group
    # holding the GIL, which that gloo thread may need (pytorch/pytorch#56297).
    accelerator.wait_for_everyone()
    del model, optimizer, train, evaluation
    accelerator.free_memory()
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
