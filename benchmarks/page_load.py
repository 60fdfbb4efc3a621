"""How fast a big job's page opens: 1,000 checkpoints and 100,000 logged steps, over the real server.

Issue 14 asks that such a job open "in well under a second", the server downsampling rather than sending
every point. Measured here: the server's answer for the jobs page, the job's page and its chart feed (median and
p95 over ``--reps`` requests, and their sizes), and the time Debian's chromium takes from navigation to
a drawn chart (``#chart[data-drawn]``), median over ``--opens`` fresh pages.

    python benchmarks/page_load.py             # 1,000 checkpoints, 100,000 steps, about 1 min
    python benchmarks/page_load.py --quick     # 200 checkpoints, 20,000 steps
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from common import cell, machine_description, median, percentile, table

from checkpoint_records.formats.training_job import JobSnapshot
from checkpoint_records.history import LogEntry
from checkpoint_records.store import RecordStore
from http_server import free_port
from records_factory import make_record

CHROMIUM = "/usr/bin/chromium"


def build_store(home: Path, checkpoints: int, steps: int) -> str:
    """One job of ``steps`` logged steps (an eval every 1% of them) and ``checkpoints`` records; its id."""
    store = RecordStore(home)
    every = max(steps // checkpoints, 1)
    records = [make_record(step, job="big-run", train_loss=2.0) for step in range(every, steps + 1, every)]
    job_id = records[0].metadata.job_id
    now = time.time()
    store.put_job(
        JobSnapshot(
            id=job_id,
            name="big-run",
            status="Running",
            global_step=steps,
            max_steps=steps * 2,
            created_at=now,
            updated_at=now,
        )
    )
    for record in records:
        store.put(record, durable=False)
    entries, evals = [], max(steps // 100, 1)
    for step in range(1, steps + 1):
        loss = 2.0 / (1 + step / 5000) + 0.05 * ((step * 7919) % 13) / 13
        entries.append(LogEntry(seq=len(entries), step=step, values={"loss": loss, "step": step}))
        if step % evals == 0:
            entries.append(
                LogEntry(seq=len(entries), step=step, values={"eval_loss": loss + 0.1, "step": step})
            )
    store.append_log(job_id, entries)
    return job_id


def timed_get(url: str) -> tuple[float, bytes]:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as response:
        body = response.read()
    return time.perf_counter() - start, body


def browser_opens(url: str, opens: int) -> list[float]:
    from playwright.sync_api import sync_playwright

    times = []
    with sync_playwright() as driver:
        browser = driver.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--no-first-run"]
        )
        for _ in range(opens + 1):  # the first warms the browser up and is not counted
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            start = time.perf_counter()
            page.goto(url)
            page.locator("#chart[data-drawn]").wait_for()
            times.append(time.perf_counter() - start)
            page.close()
        browser.close()
    return times[1:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--opens", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="200 checkpoints, 20,000 steps, 5 requests")
    args = parser.parse_args(argv)
    if args.quick:
        args.checkpoints, args.steps, args.reps, args.opens = 200, 20_000, 5, 2
    print(machine_description())
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        job_id = build_store(Path(tmp), args.checkpoints, args.steps)
        print(
            f"store: {args.checkpoints} checkpoints, {args.steps} steps, built in "
            f"{time.perf_counter() - started:.1f} s"
        )
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "checkpoint_records.cli", "serve", "--port", str(port), "--store", tmp],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                try:
                    timed_get(base + "/login")
                    break
                except OSError:
                    time.sleep(0.1)
            rows = []
            pages = (
                ("jobs page HTML", "/"),
                ("job page HTML", f"/jobs/{job_id}"),
                ("job chart feed", f"/ui/api/jobs/{job_id}"),
            )
            for what, path in pages:
                samples = [timed_get(base + path) for _ in range(args.reps)]
                seconds = [s for s, _ in samples]
                size = len(samples[-1][1])
                rows.append(
                    [
                        what,
                        cell(median(seconds) * 1000, 1),
                        cell(percentile(seconds, 95) * 1000, 1),
                        f"{size / 1000:.0f} kB",
                    ]
                )
            feed = json.loads(timed_get(base + f"/ui/api/jobs/{job_id}")[1])
            print(table(["request", "median ms", "p95 ms", "size"], rows))
            print(
                f"points sent: train {len(feed['curves']['train'])} of {args.steps}, "
                f"eval {len(feed['curves']['eval'])}, checkpoints {len(feed['markers'])}"
            )
            if os.path.exists(CHROMIUM):
                opens = browser_opens(f"{base}/jobs/{job_id}", args.opens)
                print(
                    f"chromium, navigation to drawn chart: median {median(opens) * 1000:.0f} ms, "
                    f"worst {max(opens) * 1000:.0f} ms over {len(opens)} opens"
                )
        finally:
            server.terminate()
            server.wait(timeout=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
