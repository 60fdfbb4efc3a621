"""A model type transformers does not know: a tiny causal LM with its own config and code.

Registered for the ``Auto*`` classes, so ``save_pretrained`` writes ``auto_map`` into ``config.json`` and
copies this file beside the weights, as a model shared with ``trust_remote_code`` is saved.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput


class TinyCustomConfig(PretrainedConfig):
    model_type = "tiny-custom-lm"

    def __init__(self, vocab_size: int = 64, hidden_size: int = 16, **kwargs: Any) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        super().__init__(**kwargs)


class TinyCustomModel(PreTrainedModel):
    config_class = TinyCustomConfig

    def __init__(self, config: TinyCustomConfig) -> None:
        super().__init__(config)
        self.embed = torch.nn.Embedding(config.vocab_size, config.hidden_size)
        self.head = torch.nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            torch.nn.init.normal_(module.weight, std=0.02)

    def forward(
        self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, **kwargs: Any
    ) -> CausalLMOutput:
        logits = self.head(self.embed(input_ids))
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1)
            )
        return CausalLMOutput(loss=loss, logits=logits)


TinyCustomConfig.register_for_auto_class()
TinyCustomModel.register_for_auto_class("AutoModelForCausalLM")
