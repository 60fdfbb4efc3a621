"""Losses and metrics as of a step, from log_history; honest values for NaN/inf and numpy/torch scalars."""

from __future__ import annotations

import json
import math

import numpy as np
import torch

from checkpoint_records.history import metrics_at_step


def test_train_loss_is_last_logged_at_or_before_step_and_eval_prefers_same_step() -> None:
    history = [
        {"loss": 3.0, "step": 1, "epoch": 0.1},
        {"eval_loss": 2.9, "step": 1},
        {"loss": 2.5, "step": 2},
        {"loss": 2.0, "step": 3},
        {"eval_loss": 1.9, "step": 3, "eval_mean_token_accuracy": 0.5},
        {"loss": 1.0, "step": 5},
    ]
    at_2 = metrics_at_step(history, 2)
    assert (at_2.train_loss, at_2.eval_loss) == (2.5, 2.9)  # eval: the latest before, none at 2
    at_3 = metrics_at_step(history, 3)
    assert (at_3.train_loss, at_3.eval_loss) == (2.0, 1.9)
    assert at_3.metrics["eval_mean_token_accuracy"] == 0.5
    at_4 = metrics_at_step(history, 4)
    assert at_4.train_loss == 2.0  # step 5 is after the save
    assert metrics_at_step([], 4).train_loss is None
    assert metrics_at_step([{"loss": 1.0, "step": 1}], 4).eval_loss is None


def test_non_finite_and_foreign_scalars_become_json_and_are_named() -> None:
    history = [
        {"loss": np.float32("nan"), "step": np.int64(1), "grad_norm": torch.tensor(float("inf"))},
        {"eval_loss": float("-inf"), "step": 1, "lr": np.float64(0.5), "note": object()},
    ]
    logged = metrics_at_step(history, 1)
    assert logged.train_loss is None and logged.eval_loss is None
    assert logged.non_finite == {"trainLoss": "NaN", "evalLoss": "-Infinity", "grad_norm": "Infinity"}
    assert logged.metrics["grad_norm"] is None
    assert logged.metrics["lr"] == 0.5 and isinstance(logged.metrics["lr"], float)
    assert isinstance(logged.metrics["note"], str)
    text = json.dumps(logged.metrics, allow_nan=False)  # raises on NaN: must not
    assert not math.isnan(json.loads(text)["lr"])
