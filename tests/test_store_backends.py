"""The store's parts the registry uses, on both databases: the same calls give the same answers."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from checkpoint_records.history import log_entry
from checkpoint_records.series import LOG_PAGE_SIZE, LogPage, log_page_id
from checkpoint_records.store import DATABASE_NAME, Outcome, Receipt, Submission, open_store
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


def test_a_jobs_log_in_pages_is_written_sent_received_and_redirected_on_both_databases(
    tmp_path: Path, database: str | None
) -> None:
    """Issue 22's store SQL (pages, their deliveries, where received documents came from) on each
    database: what a training node's store does with its log, and what the registry does with pages."""
    store = open_store(database, tmp_path / "store")
    sink, other, third = "http://a.example/v1/records", "http://b.example/v1/records", "http://c.example"
    try:
        record = make_record(1, job="logged")
        job = record.metadata.job_id
        store.put(record)
        entries = [
            log_entry(seq, {"step": seq + 1, "loss": 1.0 / (seq + 1)}, 1_700_000_000.0 + seq)
            for seq in range(150)
        ]
        store.append_log(job, [e for e in entries if e is not None], end=150, sinks=[sink])
        pages = [log_page_id(job, number) for number in (0, 1)]
        assert store.log_version(job) == (2, 2) and store.log_page_place(pages[1]) == (job, 1)
        assert set(pages) <= set(store.document_ids([job])) and record.id in store.document_ids([job])

        claims = store.outbox.claim_due(sink, "test", 60, 10)
        sent = sorted((LogPage.model_validate_json(claim.body) for claim in claims), key=lambda p: p.page)
        assert [(page.id, page.revision, len(page.entries)) for page in sent] == [
            (pages[0], 1, LOG_PAGE_SIZE),
            (pages[1], 1, 150 - LOG_PAGE_SIZE),
        ]
        store.outbox.settle([Outcome(claim, "delivered", 0.0) for claim in claims])
        assert store.outbox.backfill(other, ["record", "log"], [job]) == 3
        assert store.outbox.backfill(other, ["record", "log"]) == 0  # it has them all now
        assert store.outbox.move(other, third, ["log"]) == 2 and store.outbox.drop(third) == 2
        assert store.outbox.sinks()[third]["dropped"] == 2 and store.outbox.counts()["delivered"] == 2

        newer = [page.model_copy(update={"revision": 2, "entries": page.entries[:3]}) for page in sent]
        (receipts,) = store.receive([Submission(newer, key="pages", digest="d", sender="10.0.0.7")])
        assert [(r.kind, r.revision, r.stored) for r in receipts] == [("log", 2, True)] * 2  # type: ignore[union-attr]
        assert store.receive([Submission(sent, sender="10.0.0.8")])[0] == [  # older: nothing changes
            Receipt(page.id, "log", 2, stored=False) for page in sent
        ]
        origins = store.origins([*pages, record.id])
        assert set(origins) == set(pages) and {o.sender for o in origins.values()} == {"10.0.0.7"}
        assert len(store.log_series(job)) == 6 and store.log_version(job) == (2, 4)
    finally:
        store.close()


def test_a_store_of_schema_3_gets_its_log_pages_then_its_job_counts_on_both_databases(
    tmp_path: Path, database: str | None
) -> None:
    """Steps 4 (``log_pages``, from the entries kept) and 5 (``job_checkpoints``, from the records kept)
    in each database's SQL, on a store that had neither."""
    store = open_store(database, tmp_path / "store")
    record = make_record(1, job="old")
    job = record.metadata.job_id
    store.put(record)
    store.put(make_record(2, job="old"))
    entries = [log_entry(seq, {"step": seq + 1, "loss": 0.5}, 1.0) for seq in range(120)]
    store.append_log(job, [e for e in entries if e is not None], end=120)
    store.close()
    downgrade = ["DROP TABLE log_pages", "DROP TABLE job_checkpoints"]
    if database is None:
        with sqlite3.connect(tmp_path / "store" / DATABASE_NAME) as connection:
            connection.execute("DROP TRIGGER job_checkpoints_kept")
            for statement in [*downgrade, "PRAGMA user_version = 3"]:
                connection.execute(statement)
    else:
        import psycopg  # the postgres extra, which a PostgreSQL run has

        with psycopg.connect(database, autocommit=True) as connection:
            for statement in [*downgrade, "DELETE FROM checkpoint_records_schema"]:
                connection.execute(statement)
            connection.execute("INSERT INTO checkpoint_records_schema VALUES (3, 0)")
    upgraded = open_store(database, tmp_path / "store")
    try:
        assert upgraded.log_version(job) == (2, 2)  # each page kept at revision 1
        assert {s.job_id: s.checkpoints for _, s in upgraded.job_summaries()} == {job: 2}
        upgraded.put(make_record(3, job="old"))  # counted by the trigger from now on
        assert {s.job_id: s.checkpoints for _, s in upgraded.job_summaries()} == {job: 3}
    finally:
        upgraded.close()


def test_forget_keeps_each_jobs_count_on_both_databases(tmp_path: Path, database: str | None) -> None:
    """``forget`` of a record counts its job's checkpoints down (the trigger only counts them in); of a
    job, or of a job's last record, leaves nothing of the job in the lists."""
    store = open_store(database, tmp_path / "store")
    try:
        for step in (1, 2, 3):
            store.put(make_record(step, job="a"))
        store.put(make_record(1, job="b"))
        a, b = make_record(1, job="a").metadata.job_id, make_record(1, job="b").metadata.job_id

        store.forget_record(make_record(3, job="a").id)
        summaries = {summary.job_id: summary for _, summary in store.job_summaries()}
        assert {job: summary.checkpoints for job, summary in summaries.items()} == {a: 2, b: 1}
        kept = store.records(a)
        assert summaries[a].last_updated_at == max(r.record.status.updated_at for r in kept)
        store.put(make_record(3, job="a"))  # recorded again: counted again, once
        assert store.job_summaries(a)[0][1].checkpoints == 3
        newest, _ = store.newest_and_ready([a])[a]
        assert newest is not None and newest.training.step == 3

        store.forget_job(a)
        assert store.job_ids() == [b] and [s.job_id for _, s in store.job_summaries()] == [b]
        assert store.job_summaries(a) == [] and store.newest_and_ready([a])[a] == (None, None)
        store.forget_record(make_record(1, job="b").id)  # b's last record: b was known by it alone
        assert store.job_ids() == [] and store.job_summaries() == []
    finally:
        store.close()


def test_rotated_away_and_directory_queries_agree_on_both_databases(
    tmp_path: Path, database: str | None
) -> None:
    """main's later store SQL (the rotated-away option, the jobs that wrote in a directory, the directories
    already recorded) on each database."""
    store = open_store(database, tmp_path / "store")
    try:
        for step in (1, 2, 3):
            store.put(make_record(step, job="a"))
        store.update_record(
            make_record(2, job="a").id,
            lambda r: r.model_copy(update={"status": r.status.model_copy(update={"status": "deleted"})}),
        )
        a = make_record(1, job="a").metadata.job_id
        listed = store.records_newest_first(a, 10, available_only=True)
        assert [r.record.training.step for r in listed] == [3, 1]
        assert len(store.records_newest_first(a, 10)) == 3
        assert store.jobs_writing_to("/data/a") == [(a, "a")]
        assert store.jobs_writing_to("/data/b") == []
        asked = ["/data/a/checkpoint-1", "/data/a/checkpoint-9", "/data/b/checkpoint-1"]
        assert store.recorded_directories(asked) == {"/data/a/checkpoint-1"}
    finally:
        store.close()
