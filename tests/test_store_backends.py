"""The store's parts the registry uses, on both databases: the same calls give the same answers."""

from __future__ import annotations

from pathlib import Path

from checkpoint_records.store import Submission, open_store
from records_factory import make_record


def test_counts_revisions_and_lists_agree_on_both_databases(tmp_path: Path, database: str | None) -> None:
    store = open_store(database, tmp_path / "store")
    try:
        for step in (1, 2, 3):
            store.put(make_record(step, job="a"))
        store.put(make_record(2, job="a", train_loss=0.5))  # a new revision, not a new checkpoint
        revised = store.update_record(make_record(3, job="a").id, lambda r: r)  # unchanged: nothing
        assert revised is None
        other = make_record(7, job="b")
        receipts = store.receive([Submission([other], key="k", digest="d")])
        assert store.receive([Submission([other], key="k", digest="d")]) == receipts
        assert store.receive([Submission([other], key="k", digest="e")])[0].reason == "reused key"  # type: ignore[union-attr]

        summaries = {summary.job_id: summary for _, summary in store.job_summaries()}
        a, b = make_record(1, job="a").metadata.job_id, other.metadata.job_id
        assert {job: summary.checkpoints for job, summary in summaries.items()} == {a: 3, b: 1}
        records = store.records(a)
        assert summaries[a].first_created_at == min(r.record.status.created_at for r in records)
        assert summaries[a].last_updated_at == max(r.record.status.updated_at for r in records)
        assert sorted(store.job_ids()) == sorted([a, b])
        assert store.jobs_named(a[:6]) == [a] and store.jobs_named(a[:3]) == []
        assert [r.revision for r in store.record_revisions(make_record(2, job="a").id)] == [1, 2]
        newest, ready = store.newest_and_ready([a])[a]
        assert newest is not None and newest.training.step == 3 and ready == newest
        stats = {s.job_id: s for s in store.checkpoint_stats()}
        assert (stats[a].checkpoints, stats[a].ready, stats[a].last_step) == (3, 3, 3)
        page = store.records_newest_first(a, 2, before=make_record(3, job="a"))
        assert [r.record.training.step for r in page] == [2, 1]
        assert store.evaluations.enqueue("lm-eval") == 4 and store.evaluations.pending("lm-eval", [b]) == 1
    finally:
        store.close()
