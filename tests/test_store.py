"""The embedded store: durable before put() returns, safe with concurrent writers, revisions on change."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from checkpoint_records import RecordStore
from records_factory import make_record

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": f"{SRC}:{TESTS}", "PATH": "/usr/bin:/bin"},
        timeout=120,
    )


def test_a_record_survives_kill_9_right_after_put_returns(tmp_path: Path) -> None:
    result = run_python(
        """
        import os, signal, sys
        from records_factory import make_record
        from checkpoint_records import RecordStore
        RecordStore(sys.argv[1]).put(make_record(5), ["https://sink"])
        os.kill(os.getpid(), signal.SIGKILL)
        """,
        str(tmp_path),
    )
    assert result.returncode == -9, result.stderr
    store = RecordStore(tmp_path)
    assert [item.record.training.step for item in store.records()] == [5]
    assert [(d.sink, d.state) for d in store.outbox.deliveries()] == [("https://sink", "pending")]


def test_several_processes_write_at_once_and_nothing_is_lost(tmp_path: Path) -> None:
    code = """
        import sys
        from records_factory import make_record
        from checkpoint_records import RecordStore
        store = RecordStore(sys.argv[1])
        for step in range(40):
            store.put(make_record(step, job=sys.argv[2]))
        """
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), str(tmp_path), f"job-{n}"],
            env={"PYTHONPATH": f"{SRC}:{TESTS}", "PATH": "/usr/bin:/bin"},
        )
        for n in range(4)
    ]
    assert [writer.wait(timeout=120) for writer in writers] == [0, 0, 0, 0]
    assert len(RecordStore(tmp_path).records()) == 160


def test_same_content_is_a_no_op_and_changed_content_is_a_new_revision(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    first = store.put(make_record(3), ["sink-a"])
    again = store.put(make_record(3), ["sink-a"])
    assert (first.revision, again.revision) == (1, 1)
    changed = store.put(make_record(3, train_loss=0.5), ["sink-a"])
    assert changed.revision == 2
    assert changed.record.metadata.revision == 2
    assert changed.record.status.created_at == first.record.status.created_at
    assert store.get(changed.record.name) == changed
    assert store.get(changed.record.id) == changed
    assert [(d.revision, d.state) for d in store.outbox.deliveries(changed.record.id)] == [(2, "pending")]
    assert store.get("no-such-record") is None
