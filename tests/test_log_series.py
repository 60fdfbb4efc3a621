"""The job's logged series: stored incrementally, read back in order, cut to a bounded size that keeps
the checkpoints' steps and the extremes."""

from __future__ import annotations

import math
from pathlib import Path

from checkpoint_records import RecordStore
from checkpoint_records.history import LogEntry, downsample, log_entry
from checkpoint_records.job import MAX_LOSS_POINTS, LossSeries
from records_factory import make_record


def test_downsample_keeps_ends_extremes_checkpoints_and_a_spike() -> None:
    steps = list(range(1, 10_001))
    values: list[float | None] = [1.0 / step for step in steps]
    values[5000] = 50.0  # a spike in the middle
    values[7000] = None  # a NaN loss
    chosen = downsample(steps, values, 100, keep_steps=[2500, 9000])
    assert len(chosen) <= 100 and chosen == sorted(chosen)
    kept_steps = {steps[index] for index in chosen}
    assert {1, 10_000, 2500, 9000, 5001} <= kept_steps  # ends, checkpoints, the spike (the maximum)
    assert min(values[index] or math.inf for index in chosen) == min(v for v in values if v is not None)
    assert downsample(steps[:50], values[:50], 100) == list(range(50))
    assert downsample(steps, values, None) == list(range(len(steps)))


def test_log_series_is_appended_incrementally_and_bounded(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    job = make_record(4).metadata.job_id
    store.put(make_record(4))
    history = [{"loss": 10.0 / (step + 1), "step": step, "epoch": step / 100} for step in range(1, 3001)]
    history.insert(10, {"eval_loss": float("nan"), "step": 10})
    for start in range(0, len(history), 1000):  # three saves, each handing over only its new entries
        part = history[start : start + 1000]
        entries = [
            log_entry(start + offset, entry, logged_at=1000.0 + start + offset)
            for offset, entry in enumerate(part)
        ]
        store.append_log(job, [entry for entry in entries if entry is not None])
    assert store.log_length(job) == len(history)
    full = store.log_series(job)
    assert [entry["step"] for entry in full] == [entry["step"] for entry in history]
    assert full[10] == {"eval_loss": None, "step": 10, "logged_at": 1010.0}  # NaN stored as null
    bounded = store.log_series(job, max_points=200)
    assert len(bounded) <= 200
    assert {1, 4, 3000} <= {entry["step"] for entry in bounded}  # first, the checkpoint, last
    losses = store.log_series(job, max_points=50, having="loss")
    assert len(losses) <= 50 and all("loss" in entry for entry in losses)
    store.write_log(job, [], first=5, count=0)  # a resumed run restarts the log from its checkpoint
    assert [entry["step"] for entry in store.log_series(job)] == [1, 2, 3, 4, 5]
    assert store.log_series("no-such-job") == []


def test_a_job_documents_loss_series_stays_bounded_over_a_long_run() -> None:
    series = LossSeries()
    for save in range(1, 201):  # 100,000 logged steps, a save every 500
        entries = [
            LogEntry(seq=step, step=step, values={"loss": 1.0 / step, "step": step}, logged_at=float(step))
            for step in range((save - 1) * 500 + 1, save * 500 + 1)
        ]
        series.add(entries, checkpoint_step=save * 500)
        assert len(series.points) <= 2 * MAX_LOSS_POINTS
    bounded = series.bounded()
    assert len(bounded) <= MAX_LOSS_POINTS
    assert bounded[0].step == 1 and bounded[-1].step == 100_000  # both ends, so the extremes too
    series.add([LogEntry(seq=0, step=99_000, values={"loss": 5.0}, logged_at=1.0)])  # a resumed run
    assert series.points[-1].step == 99_000 and all(point.step < 99_000 for point in series.points[:-1])
