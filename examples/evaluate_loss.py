"""An evaluator for ``checkpoint-records evaluate``: the loss and mean token accuracy of a checkpoint on a
held-out set, printed as one JSON object.

    checkpoint-records evaluate --name heldout --command 'python examples/evaluate_loss.py {directory}'

It loads the checkpoint as any user would (``from_pretrained`` on its folder) and evaluates the tiny
example's held-out rows (``train_tiny.TinyTextDataset`` with its own seed). ``loss`` becomes the OpenAI
checkpoint's ``full_valid_loss`` and ``mean_token_accuracy`` its ``full_valid_mean_token_accuracy``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_tiny import TinyTextDataset  # the example's own data, beside this file


def evaluate(directory: str) -> dict[str, float]:
    model = AutoModelForCausalLM.from_pretrained(directory)
    model.eval()
    rows = TinyTextDataset(size=16, seed=2)
    losses, correct, total = [], 0, 0
    with torch.no_grad():
        for index in range(len(rows)):
            row = rows[index]
            output = model(input_ids=row["input_ids"][None], labels=row["labels"][None])
            losses.append(float(output.loss))
            predicted = output.logits[0, :-1].argmax(-1)
            correct += int((predicted == row["labels"][1:]).sum())
            total += predicted.numel()
    return {"loss": sum(losses) / len(losses), "mean_token_accuracy": correct / total}


if __name__ == "__main__":
    print(json.dumps(evaluate(sys.argv[1])))
