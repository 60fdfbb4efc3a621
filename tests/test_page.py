"""The web page in a real browser: Debian's chromium, headless, driven by Playwright, over the real server
process and the records of real tiny Trainer runs. The assertions are about what a person sees."""

from __future__ import annotations

import html
import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from playwright.sync_api import expect, sync_playwright
from transformers import TrainerCallback

from checkpoint_records import CheckpointRecordCallback
from checkpoint_records.formats import get_format, known_formats
from checkpoint_records.history import LogEntry
from checkpoint_records.page.views import MAX_CHART_POINTS
from checkpoint_records.server.app import create_app
from checkpoint_records.storage import upload_state
from checkpoint_records.store import RecordStore
from http_server import Receiver, Reply, free_port
from records_factory import make_record
from trainer_runs import tiny_trainer
from waiting import wait_until

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parent.parent
#: A job name that runs code if a page ever writes it as HTML (no ``/``: names never hold one).
EVIL = "<script>alert(1)<-script><img src=x onerror=alert(2)>"
TOKEN = "page-test-token-0123456789"


def serve(store: Path, *tokens: str) -> tuple[subprocess.Popen[bytes], str]:
    """The server as a real process on a free loopback port, once it answers."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "checkpoint_records.cli",
        "serve",
        "--port",
        str(port),
        "--store",
        str(store),
    ]
    for token in tokens:
        command += ["--token", token]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the server exited: {process.communicate()[1].decode()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{base}/login", timeout=1):
                return True
        except OSError:
            return False

    try:
        wait_until(answers, 30, "the server did not answer")
    except AssertionError:
        process.kill()
        process.wait()
        raise
    return process, base


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding two real runs: one that rotates checkpoints away and has a best one (eval loss),
    and a short one whose job name is an HTML script tag and whose checkpoint is not ready."""
    root = tmp_path_factory.mktemp("runs")
    store = root / "store"
    tiny_trainer(
        root / "rotating",
        [CheckpointRecordCallback(store=store, job_name="rotating-run")],
        max_steps=8,
        eval_steps=2,
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
    ).train()
    tiny_trainer(
        root / "evil",
        [CheckpointRecordCallback(store=store, job_name=EVIL)],
        with_tokenizer=False,  # its checkpoint is not ready: no tokenizer saved
        max_steps=2,
        eval_steps=2,
    ).train()
    return store


@pytest.fixture(scope="module")
def server(runs: Path) -> Iterator[str]:
    process, base = serve(runs)
    yield base
    stop(process)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no browser at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as driver:
        chromium = driver.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ],
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page at 1280x800 that fails the test on any script error or dialog (an alert)."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    tab = context.new_page()
    problems: list[str] = []
    tab.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    tab.on("dialog", lambda dialog: (problems.append(f"dialog: {dialog.message}"), dialog.dismiss()))
    tab.on("console", lambda message: message.type == "error" and problems.append(message.text))
    yield tab
    context.close()
    assert not problems


def job_of(store: Path, name: str) -> str:
    return next(job.job.id for job in RecordStore(store).jobs() if job.job.name == name)


def test_jobs_page_lists_runs_newest_first_with_their_checkpoints(
    server: str, runs: Path, page: Any, tmp_path: Path
) -> None:
    page.goto(server + "/")
    rows = page.locator("table.jobs tbody tr")
    assert rows.locator(".job-name").all_inner_texts()[:2] == [EVIL, "rotating-run"]
    rotating = rows.filter(has_text="rotating-run")
    records = [s.record for s in RecordStore(runs).records(job_of(runs, "rotating-run"))]
    ready = sum(r.training.inference_ready for r in records)
    assert rotating.locator(".status").inner_text() == "Success"
    assert f"{len(records)} ({ready} ready)" in rotating.inner_text()
    best = min(r.training.eval_loss for r in records if r.training.eval_loss is not None)
    assert f"{best:.4f}" in rotating.inner_text()
    page.screenshot(path=tmp_path / "jobs.png", full_page=True)

    page.fill("#q", "ROTATING")
    page.press("#q", "Enter")
    assert page.locator("table.jobs .job-name").all_inner_texts() == ["rotating-run"]


def test_job_page_draws_every_logged_step_and_marks_every_checkpoint(
    server: str, runs: Path, page: Any, tmp_path: Path
) -> None:
    store = RecordStore(runs)
    job_id = job_of(runs, "rotating-run")
    records = {s.record.training.step: s.record for s in store.records(job_id)}
    train_steps = [e["step"] for e in store.log_series(job_id, having="loss")]
    eval_steps = [e["step"] for e in store.log_series(job_id, having="eval_loss")]
    assert len(train_steps) == 8 and len(eval_steps) == 4

    page.goto(server + "/")
    page.click("text=rotating-run")
    train = page.locator("#chart polyline.line-train")
    train.wait_for()
    assert len(train.get_attribute("points").split()) == len(train_steps)
    assert page.locator("#chart .dots-eval circle").count() == len(eval_steps)

    markers = page.locator("#chart a.marker")
    assert markers.count() == len(records)
    shown = {int(m.get_attribute("data-step")): m.get_attribute("data-state") for m in markers.all()}
    best = [step for step, record in records.items() if record.training.best]
    deleted = [step for step, record in records.items() if record.status.status == "deleted"]
    assert len(best) == 1 and deleted, "the run should have a best checkpoint and a rotated one"
    assert shown[best[0]] == "best"
    assert all(shown[step] == "deleted" for step in deleted)
    assert page.locator("#chart a.marker-best").count() == 1

    deleted_row = page.locator(f"table.checkpoints tr:has-text('{records[deleted[0]].name}')").first
    assert "deleted" in deleted_row.inner_text()
    assert "rotated away by save_total_limit" in deleted_row.inner_text()
    best_row = page.locator(f"table.checkpoints tr:has-text('{records[best[0]].name}')").first
    assert "best" in best_row.locator(".badge").all_inner_texts()

    page.locator(f"#chart a.marker[data-step='{best[0]}']").focus()  # keyboard reachable
    tip = page.locator("#chart .tip")
    assert records[best[0]].name in tip.inner_text() and "best" in tip.inner_text()
    page.evaluate("document.activeElement.blur()")
    page.locator(f"#chart a.marker[data-step='{deleted[-1]}']").hover()
    assert "deleted" in tip.inner_text()
    page.screenshot(path=tmp_path / "job.png", full_page=True)
    readme_picture = ROOT / "docs" / "page.png"
    if os.environ.get("UPDATE_DOCS_SCREENSHOT") or not readme_picture.exists():
        readme_picture.parent.mkdir(exist_ok=True)
        shutil.copyfile(tmp_path / "job.png", readme_picture)

    with page.expect_navigation():
        page.locator(f"#chart a.marker[data-step='{best[0]}']").click()  # a marker opens its checkpoint
    assert page.locator("h1").inner_text() == records[best[0]].name
    page.go_back()

    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    train.wait_for()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=tmp_path / "job-phone.png", full_page=True)


def test_checkpoint_page_shows_the_whole_record_in_every_wire_format(
    server: str, runs: Path, page: Any
) -> None:
    store = RecordStore(runs)
    deleted = next(
        s for s in store.records(job_of(runs, "rotating-run")) if s.record.status.status == "deleted"
    )
    page.goto(server + "/jobs/" + deleted.record.metadata.job_id)
    with page.expect_navigation():
        page.click(f"table.checkpoints a:text-is('{deleted.record.name}')")
    assert page.locator("h1").inner_text() == deleted.record.name
    history = page.locator(".history li").all_inner_texts()
    assert len(history) == deleted.revision and "recorded" in history[0] and "deleted" in history[-1]
    if any(revision.best for revision in store.record_revisions(deleted.record.id)):
        assert any("no longer the best" in line for line in history)
    assert "rotated away by save_total_limit" in page.locator(".reasons").inner_text()
    files = page.locator("table.files tbody tr")
    assert files.count() == len(deleted.record.status.files)
    assert "config.json" in page.locator("table.files").inner_text()

    labels, values = page.locator(".facts dt").all_inner_texts(), page.locator(".facts dd").all_inner_texts()
    facts = dict(zip(labels, values, strict=True))
    assert facts["Status"] == "deleted" and facts["Best"] == "no"

    formats = [name for name in known_formats() if get_format(name).renders_records]
    blocks = page.locator("details")
    assert blocks.locator("summary").all_inner_texts() == formats
    for index, name in enumerate(formats):
        text = blocks.nth(index).locator("pre").text_content()
        assert json.loads(text) == get_format(name).render(deleted.record)


def test_a_job_named_like_a_script_stays_text_everywhere(server: str, runs: Path, page: Any) -> None:
    response = page.goto(server + "/")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    page.click(f"a.job-name:text-is('{EVIL}')")
    page.locator("#chart[data-drawn]").wait_for()
    assert page.locator("h1").inner_text().startswith(EVIL)
    marker = page.locator("#chart a.marker")
    assert marker.count() == 1 and marker.get_attribute("data-state") == "not-ready"
    marker.hover()
    assert EVIL in page.locator("#chart .tip").inner_text()
    assert "tokenizer" in page.locator("#chart .tip").inner_text()
    assert "tokenizer" in page.locator("table.checkpoints .reasons").inner_text()
    with page.expect_navigation():
        page.click(f"table.checkpoints a:has-text('{EVIL}')")
    assert page.locator("h1").inner_text().startswith(EVIL)
    assert EVIL in page.locator("details pre").first.text_content()
    assert page.evaluate("document.querySelectorAll('script:not([src]), img[onerror]').length") == 0


def test_two_jobs_drawn_together(server: str, runs: Path, page: Any) -> None:
    page.goto(server + "/")
    for box in page.locator("table.jobs input[type=checkbox]").all():
        box.check()
    page.click("text=Compare selected jobs")
    page.locator("#chart polyline").first.wait_for()
    assert page.locator("#chart polyline.line-train").count() == 2
    assert page.locator("#chart polyline.line-eval").count() == 2
    colours = page.eval_on_selector_all(
        "#chart polyline", "lines => lines.map(line => getComputedStyle(line).stroke)"
    )
    assert len(set(colours)) == 2 and colours[0] == colours[1]  # one colour per job, train and eval
    legend = page.locator("#chart .legend").inner_text()
    assert "rotating-run: train loss" in legend and f"{EVIL}: eval loss" in legend


class PauseAtSave(TrainerCallback):
    """Holds training after the first save until the test lets it go: the job is visibly Running."""

    def __init__(self) -> None:
        self.saved, self.go_on = threading.Event(), threading.Event()

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self.saved.is_set():
            self.saved.set()
            self.go_on.wait(timeout=60)


def test_the_page_follows_a_running_job_without_reload(
    server: str, runs: Path, page: Any, tmp_path: Path
) -> None:
    pause = PauseAtSave()
    callback = CheckpointRecordCallback(store=runs, job_name="live-run")
    trainer = tiny_trainer(
        tmp_path / "live",
        [callback, pause],
        max_steps=4,
        eval_steps=2,
    )
    training = threading.Thread(target=trainer.train)
    training.start()
    try:
        assert pause.saved.wait(timeout=60)
        assert callback.recorder.latest is not None
        callback.recorder.latest.result(60)  # the record is written off the training thread, after the save
        page.goto(server + "/jobs/" + job_of(runs, "live-run"))
        assert "Running" in page.locator("h1 .status").inner_text()
        assert page.locator("table.checkpoints tbody tr").count() == 1
        page.locator("#chart a.marker").first.wait_for()
        pause.go_on.set()
        training.join(timeout=120)
        expect(page.locator("h1 .status")).to_have_text("Success", timeout=20_000)
        expect(page.locator("table.checkpoints tbody tr")).to_have_count(2, timeout=20_000)
        expect(page.locator("#chart a.marker")).to_have_count(2, timeout=20_000)
    finally:
        pause.go_on.set()
        training.join(timeout=120)


def test_with_tokens_the_page_asks_to_sign_in_and_keeps_the_token_out_of_urls(
    runs: Path, browser: Any
) -> None:
    process, base = serve(runs, TOKEN)
    try:
        context = browser.new_context()
        tab = context.new_page()
        seen: list[str] = []
        tab.on("request", lambda request: seen.append(request.url))
        tab.goto(base + "/jobs/" + job_of(runs, "rotating-run"))
        assert tab.url.startswith(base + "/login")
        with urllib.request.urlopen(base + "/ui/static/page.css") as response:  # assets need no token
            assert response.status == 200
        try:
            urllib.request.urlopen(base + "/ui/api/jobs/" + job_of(runs, "rotating-run"))
            raise AssertionError("the JSON feed answered without a session")
        except urllib.error.HTTPError as error:
            assert error.code == 401

        big = urllib.request.Request(base + "/login", data=b"token=" + b"x" * 100_000, method="POST")
        try:
            urllib.request.urlopen(big)
            raise AssertionError("a 100 kB login form was read")
        except urllib.error.HTTPError as error:
            assert error.code == 413
        tab.fill("#token", "wrong")
        tab.click("button[type=submit]")
        assert "not valid" in tab.locator(".error").inner_text()
        tab.fill("#token", TOKEN)
        tab.click("button[type=submit]")
        tab.locator("#chart[data-drawn]").wait_for()
        assert tab.locator("h1").inner_text().startswith("rotating-run")
        cookie = next(c for c in context.cookies() if c["name"] == "checkpoint_records_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert TOKEN not in cookie["value"]
        assert not any(TOKEN in url for url in seen)
        assert TOKEN not in tab.content()

        with tab.expect_navigation():
            tab.click("text=Sign out")
        assert tab.url.startswith(base + "/login")
        tab.goto(base + "/")
        assert tab.url.startswith(base + "/login")
        context.close()
    finally:
        stop(process)


def cross_site_form(action: str, body: str, submit: str) -> str:
    """Another site's page with a form that posts ``body`` as it is (``text/plain`` sends ``name=value``:
    the body is cut at its first ``=``) to ``action``."""
    name, _, value = body.partition("=")
    return (
        f'<!doctype html><form method="post" enctype="text/plain" action="{html.escape(action)}">'
        f'<input type="hidden" name="{html.escape(name)}" value="{html.escape(value)}">'
        f'<button id="{submit}" type="submit">win a prize</button></form>'
    )


def test_a_signed_in_reader_visiting_another_sites_page_writes_nothing_and_stays_signed_in(
    browser: Any, tmp_path: Path
) -> None:
    """Another port of 127.0.0.1 is the same *site*: SameSite=Strict sends the page's cookie along with
    its forms. The API takes the bearer token only, and signing in or out refuses another origin."""
    store = tmp_path / "registry"
    process, base = serve(store, TOKEN)
    record = make_record(2, job="forged=job").to_json()  # its first "=" is inside a string
    pages = {
        "/write": cross_site_form(base + "/v1/records", record, "write"),
        "/logout": cross_site_form(base + "/logout", "a=b", "logout"),
        "/login": cross_site_form(base + "/login", f"token={TOKEN}", "login"),
    }
    html_reply = {"Content-Type": "text/html"}
    evil = Receiver(lambda index, request: Reply(200, pages[request.path].encode(), html_reply), path="")
    try:
        with evil:
            context = browser.new_context()
            tab = context.new_page()
            tab.goto(base + "/login")
            tab.fill("#token", TOKEN)
            tab.click("button[type=submit]")
            tab.wait_for_url(base + "/")
            for path in ("/write", "/logout"):
                tab.goto(evil.url + path)
                with tab.expect_navigation() as sent:
                    tab.click(f"#{path[1:]}")
                assert sent.value is not None and sent.value.status in (401, 403), path
            assert RecordStore(store).records() == []
            tab.goto(base + "/")
            assert tab.url == base + "/"  # still signed in: the forged sign-out changed nothing

            signed_out = browser.new_context()
            fresh = signed_out.new_page()
            fresh.goto(evil.url + "/login")
            with fresh.expect_navigation() as sent:
                fresh.click("#login")
            assert sent.value is not None and sent.value.status == 403
            assert not any(c["name"] == "checkpoint_records_session" for c in signed_out.cookies())
            signed_out.close()
            context.close()
    finally:
        stop(process)


def test_the_server_sends_a_long_run_downsampled_keeping_every_checkpoint(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "store")
    steps, checkpoints = 20_000, list(range(160, 20_000, 160))
    for step in checkpoints:
        store.put(make_record(step, job="long-run"), durable=False)
    job_id = store.records()[0].record.metadata.job_id
    logged = [
        LogEntry(seq=step, step=step, values={"loss": 1 / step, "step": step}) for step in range(1, steps)
    ]
    store.append_log(job_id, logged)
    with TestClient(create_app(store)) as client:
        feed = client.get(f"/ui/api/jobs/{job_id}").json()
        page = client.get(f"/jobs/{job_id}")
        everything = client.get(f"/jobs/{job_id}?all=1")
    train_steps = [step for step, _ in feed["curves"]["train"]]
    assert len(train_steps) <= MAX_CHART_POINTS < steps
    assert set(checkpoints) <= set(train_steps) and train_steps == sorted(train_steps)
    assert [c["step"] for c in feed["markers"]] == checkpoints
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.text.count("data-checkpoint=") == 100 and f"the newest 100 of {len(checkpoints)}" in page.text
    assert everything.text.count("data-checkpoint=") == len(checkpoints)


def test_the_page_shows_an_upload_as_it_stands_now_in_the_words_list_uses(tmp_path: Path) -> None:
    """While files go up, the record still says nothing about it: the page reads the upload queue, and
    says it as ``list`` and ``inspect`` do."""
    store = RecordStore(tmp_path / "store")
    record = make_record(4, job="uploading-run")
    store.put(record, durable=False)
    store.uploads.enqueue(record, "s3://bucket/run/uploading-run-checkpoint-4", str(tmp_path / "staging"))
    [row] = store.uploads.rows(record.id)
    store.uploads.update(row, state="committing", sent=-(-row.size * 43 // 100))  # 43%, rounded up
    assert record.status.upload is None and upload_state(store, record) == "uploading 43%"
    with TestClient(create_app(store)) as client:
        job_page = client.get(f"/jobs/{record.metadata.job_id}").text
        checkpoint_page = client.get(f"/checkpoints/{record.id}").text
    assert "uploading 43%" in job_page
    assert (
        "uploading 43%" in checkpoint_page and "s3://bucket/run/uploading-run-checkpoint-4" in checkpoint_page
    )
