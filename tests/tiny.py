"""Tiny real models, tokenizers and datasets for the tests: the example's own builders, plus helpers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from train_tiny import WORDS, TinyTextDataset, tiny_arguments, tiny_config, tiny_model, tiny_tokenizer

__all__ = [
    "WORDS",
    "TinyTextDataset",
    "save_tiny_pretrained",
    "tiny_arguments",
    "tiny_config",
    "tiny_model",
    "tiny_tokenizer",
]


def save_tiny_pretrained(directory: Path, with_tokenizer: bool = True, **save_kwargs: Any) -> Path:
    """A real `save_pretrained` directory of the tiny model (and tokenizer)."""
    tiny_model().save_pretrained(directory, **save_kwargs)
    if with_tokenizer:
        tiny_tokenizer().save_pretrained(directory)
    return directory
