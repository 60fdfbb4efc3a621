"""Words for people, shared by every command's output: one plural (a leaf module, so any part may use
it without importing :mod:`.terminal`)."""

from __future__ import annotations


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 attempt``, ``3 attempts``; ``many`` for irregular plurals (``delivery``/``deliveries``)."""
    return f"{count} {word if count == 1 else many or word + 's'}"
