"""The registry's own door, on the server as a real process: an empty token never opens it, the API takes
the bearer token only (never the page's cookie), and the page's sign-in and sign-out refuse other
origins' forms."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from checkpoint_records.server.auth import SESSION_COOKIE
from http_server import free_port
from records_factory import make_record
from registry_server import Registry, serving

TOKEN = "door-token-5e1d"
#: How long a server that should refuse to start is given to say so (it answers at once).
REFUSAL_SECONDS = 60


def refused_to_start(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``checkpoint-records serve ARGS`` on a free loopback port, which must exit by itself: a server
    that starts instead is stopped and fails the test."""
    clean = {key: value for key, value in os.environ.items() if not key.startswith("CHECKPOINT_RECORDS_")}
    command = [sys.executable, "-m", "checkpoint_records.cli", "serve", "--port", str(free_port()), *args]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**clean, **(env or {})}
    )
    try:
        out, err = process.communicate(timeout=REFUSAL_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"serve {args} started instead of refusing: {err[-2000:]}") from None
    return subprocess.CompletedProcess(command, process.returncode, out, err)


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--token", ""], {}),  # serve --token "$UNSET"
        (["--token", "real-token", "--token", " "], {}),
        ([], {"CHECKPOINT_RECORDS_SERVER_TOKENS": ""}),  # CHECKPOINT_RECORDS_SERVER_TOKENS=$UNSET
        ([], {"CHECKPOINT_RECORDS_SERVER_TOKENS": "real-token,"}),
        ([], {"CHECKPOINT_RECORDS_SERVER_TOKENS": "real-token,,other-token"}),
    ],
)
def test_an_empty_token_refuses_to_start_instead_of_serving_without_auth(
    tmp_path: Path, args: list[str], env: dict[str, str]
) -> None:
    result = refused_to_start("--store", str(tmp_path / "s"), *args, env=env)
    assert result.returncode == 2, result.stderr
    assert "empty token" in result.stderr and "without authentication" in result.stderr
    assert "serving" not in result.stderr
    assert "real-token" not in result.stderr + result.stdout


@pytest.fixture
def registry(tmp_path: Path, database: str | None) -> Iterator[Registry]:
    """A served registry, on each database."""
    with serving(tmp_path / "registry", tmp_path / "server.log", TOKEN, database=database) as served:
        yield served


def sign_in(
    browser: requests.Session, registry: Registry, headers: dict[str, str] | None = None, next: str = "/"
) -> requests.Response:
    """``browser`` posts the page's sign-in form with the token, with ``headers`` as a browser sets them."""
    form = {"token": TOKEN, "next": next}
    return browser.post(
        registry.url + "/login", data=form, headers=headers, allow_redirects=False, timeout=30
    )


def signed_in(registry: Registry) -> requests.Session:
    """A browser-like session that signed in on the page with the token: it holds the page's cookie."""
    browser = requests.Session()
    answer = sign_in(browser, registry)
    assert answer.status_code == 303 and SESSION_COOKIE in browser.cookies
    return browser


def test_the_api_takes_the_bearer_token_never_the_pages_cookie(registry: Registry) -> None:
    browser = signed_in(registry)
    assert browser.get(registry.url + "/", timeout=30).status_code == 200  # the page: signed in
    record = make_record(2)
    # What a cross-site form could make a signed-in browser send: the cookie, no Authorization.
    forged = browser.post(
        registry.url + "/v1/records",
        data=record.to_json(),
        headers={"Content-Type": "text/plain"},
        timeout=30,
    )
    assert forged.status_code == 401 and forged.headers["content-type"] == "application/problem+json"
    assert browser.get(registry.url + "/v1/checkpoints", timeout=30).status_code == 401
    assert browser.get(registry.url + "/openapi.json", timeout=30).status_code == 401
    assert registry.open_store().records() == []
    # The bearer token still works, with or without the cookie beside it.
    answer = browser.post(
        registry.url + "/v1/records",
        data=record.to_json(),
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    assert answer.status_code == 200 and answer.json()["stored"] is True


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},  # another port of this host: SameSite=Strict lets the cookie go
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
    ],
)
def test_sign_in_and_out_refuse_another_origins_form(registry: Registry, headers: dict[str, str]) -> None:
    login = sign_in(requests.Session(), registry, headers)
    assert login.status_code == 403 and SESSION_COOKIE not in login.cookies
    browser = signed_in(registry)
    for method in ("GET", "POST"):
        logout = browser.request(
            method, registry.url + "/logout", headers=headers, allow_redirects=False, timeout=30
        )
        assert logout.status_code == 403 and "set-cookie" not in logout.headers
    assert browser.get(registry.url + "/", allow_redirects=False, timeout=30).status_code == 200


def test_sign_in_and_out_from_the_pages_own_forms(registry: Registry) -> None:
    own = {"Sec-Fetch-Site": "same-origin", "Origin": registry.url}
    browser = requests.Session()
    login = sign_in(browser, registry, own, next="/compare")
    assert (login.status_code, login.headers["location"]) == (303, "/compare")
    # A browser without Sec-Fetch-Site sends Origin: this server's own is accepted.
    older = sign_in(requests.Session(), registry, {"Origin": registry.url})
    assert older.status_code == 303 and SESSION_COOKIE in older.cookies
    assert browser.get(registry.url + "/", allow_redirects=False, timeout=30).status_code == 200
    logout = browser.post(registry.url + "/logout", headers=own, allow_redirects=False, timeout=30)
    assert logout.status_code == 303
    assert browser.get(registry.url + "/", allow_redirects=False, timeout=30).status_code == 303
