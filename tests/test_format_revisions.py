"""A revision is sent in a format only when that format can express what changed; an unknown base
model is written the same way (empty) in every format."""

from __future__ import annotations

from pathlib import Path

from checkpoint_records import CheckpointRecordCallback, HttpSink, RecordStore
from checkpoint_records.build import as_deleted
from checkpoint_records.formats import get_format
from checkpoint_records.record import CheckpointRecord, utc_now_iso
from http_server import Receiver
from records_factory import make_record
from tiny import tiny_model
from trainer_runs import tiny_trainer

RECORD_FORMATS = ("record", "flexai", "openai", "llama-stack")


def test_formats_without_a_status_render_a_deleted_revision_the_same() -> None:
    available = make_record(2)
    deleted = as_deleted(available, utc_now_iso())
    same = {name: get_format(name).renders_same(available, deleted) for name in RECORD_FORMATS}
    assert same == {"record": False, "flexai": False, "openai": True, "llama-stack": True}

    def with_losses(train_loss: float) -> CheckpointRecord:
        training = available.training.model_copy(update={"train_loss": train_loss, "eval_loss": 2.0})
        return available.model_copy(
            update={"status": available.status.model_copy(update={"metadata": training})}
        )

    available = with_losses(1.0)
    retrained = with_losses(0.5)
    assert not any(get_format(name).renders_same(available, retrained) for name in RECORD_FORMATS)


#: What a sink that can say ``deleted`` ends up holding after a run with ``save_total_limit=1``.
ROTATED = {"out-checkpoint-2": "deleted", "out-checkpoint-4": "deleted", "out-checkpoint-6": "available"}


def test_a_rotated_checkpoint_reaches_only_the_formats_that_can_say_deleted(
    tmp_path: Path, isolated_store: Path
) -> None:
    receivers = {name: Receiver().start() for name in RECORD_FORMATS}
    try:
        sinks = [HttpSink(receiver.url, format=name) for name, receiver in receivers.items()]
        tiny_trainer(tmp_path / "out", [CheckpointRecordCallback(sinks=sinks)], save_total_limit=1).train()
        for name in ("record", "flexai"):  # each checkpoint, then the two rotations
            receivers[name].wait_for_statuses(ROTATED)
        for name in ("openai", "llama-stack"):
            receivers[name].wait_for(3)
    finally:
        for receiver in receivers.values():
            receiver.stop()
    counts = {name: len(receiver.requests) for name, receiver in receivers.items()}
    # A checkpoint rotated away before its first revision went out reaches record and flexai once, deleted.
    assert 3 <= counts["record"] <= 5 and 3 <= counts["flexai"] <= 5, counts
    assert counts["openai"] == counts["llama-stack"] == 3, counts  # never a deletion, never twice
    for receiver in receivers.values():
        receiver.assert_idempotent()
    store = RecordStore(isolated_store)
    assert store.outbox.counts()["pending"] == 0
    assert [item.record.status.status for item in store.records()] == ["deleted", "deleted", "available"]


def test_an_unknown_base_model_is_empty_in_every_format(tmp_path: Path, isolated_store: Path) -> None:
    model = tiny_model()
    model.config.name_or_path = ""  # built from a config, as a from-scratch run is
    callback = CheckpointRecordCallback()
    tiny_trainer(tmp_path / "out", [callback], model=model, max_steps=2).train()
    record = callback.last_record
    assert record is not None and record.training.model == ""
    assert get_format("flexai").render(record)["status"]["metadata"]["model"] == ""
    name = get_format("openai").render(record)["fine_tuned_model_checkpoint"]
    assert name.startswith("ft::personal:out:") and "unknown" not in name
