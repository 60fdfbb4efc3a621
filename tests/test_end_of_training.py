"""The end of training waits at most ``flush_timeout`` for everything together (storing the last hand-offs,
the uploads, the deliveries, stopping the threads), however many of them hang; what is left stays pending.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from transformers import TrainerCallback

from checkpoint_records import CheckpointRecordCallback, RecordStore, resolve_settings
from trainer_runs import tiny_trainer
from waiting import wait_until

pytest.importorskip("s3fs")  # the storage extra

#: What the end of training may take beyond ``flush_timeout``: the calls around the bounded waits.
MARGIN = 1.0
#: The threads of the delivery and upload lanes, and the upload's file senders.
LANES = ("checkpoint-records delivery", "checkpoint-records upload", "checkpoint-records-part")


@contextmanager
def silent_server() -> Iterator[str]:
    """A real server on 127.0.0.1 that never answers: it listens, so every connection is made and every
    request sent, but it never accepts one. Closing it resets them all. Yields its base URL."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


class EndOfTraining(TrainerCallback):
    """Notes when ``on_train_end`` begins (it runs before the records' callback, which waits in it)."""

    began: float | None = None

    def on_train_end(self, *args: Any, **kwargs: Any) -> None:
        self.began = time.monotonic()


def lanes() -> list[str]:
    names = [thread.name for thread in threading.enumerate()]
    return [name for name in names if name.startswith(LANES)]


@pytest.mark.parametrize("flush_timeout", [0.5, None], ids=["0.5s", "default"])
def test_a_hanging_sink_and_storage_cost_the_end_of_training_one_flush_timeout(
    tmp_path: Path, isolated_store: Path, monkeypatch: pytest.MonkeyPatch, flush_timeout: float | None
) -> None:
    for name, value in {"AWS_ACCESS_KEY_ID": "key", "AWS_SECRET_ACCESS_KEY": "secret"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with silent_server() as sink_url, silent_server() as storage_endpoint:
        callback = CheckpointRecordCallback(
            sinks=[f"{sink_url}/v1/checkpoints"],
            storage="s3://bucket/runs",
            storage_options={
                "client_kwargs": {"endpoint_url": storage_endpoint},
                "config_kwargs": {"connect_timeout": 5, "read_timeout": 300, "retries": {"max_attempts": 1}},
            },
            **({} if flush_timeout is None else {"flush_timeout": flush_timeout}),
        )
        bound = callback.recorder.flush_timeout
        assert bound == (resolve_settings().flush_timeout if flush_timeout is None else flush_timeout)
        clock = EndOfTraining()
        trainer = tiny_trainer(tmp_path / "out", [clock, callback])
        trainer.train()
        assert clock.began is not None
        waited = time.monotonic() - clock.began
        assert waited < bound + MARGIN, f"the end of training took {waited:.2f} s for a {bound} s bound"

        store = RecordStore(isolated_store)
        assert [item.record.training.step for item in store.records()] == [2, 4, 6]  # nothing lost
        counts = store.outbox.counts()
        assert counts["pending"] >= 3 and counts["delivered"] == counts["dead"] == 0  # left for later
        assert store.uploads.open_count("s3://bucket/runs") > 0
        store.close()
    # Reset, the requests in flight fail at once: the lanes, stopped at the end of training, end.
    wait_until(lambda: not lanes(), 120, lambda: f"still running: {lanes()}")
