"""The API port behind --api-token-file: programs with a bearer token, people through /login and a session cookie,
probes without anything; the pages work in chromium once signed in; a token rotated out of the file ends its
sessions."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hopscope.serve_process import ServeProcess
from tests.test_pages import browser, wait_for  # noqa: F401 - the chromium fixture

TOKEN = "pages-t0ken"


@pytest.fixture
def guarded(start_serve: Callable[..., ServeProcess], tmp_path: Path) -> Iterator[tuple[ServeProcess, Path]]:
    tokens = tmp_path / "api.tokens"
    tokens.write_text(f"{TOKEN}\n")
    yield start_serve("--api-token-file", str(tokens)), tokens


def _refused(server: ServeProcess) -> float:
    metrics = httpx.get(f"{server.api_url}/metrics", headers={"authorization": f"Bearer {TOKEN}"}).text
    return next(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                if line.startswith("hopscope_api_requests_unauthenticated_total"))


def test_programs_need_the_bearer_token_and_probes_do_not(guarded: tuple[ServeProcess, Path]) -> None:
    server, _ = guarded
    api = server.api_url
    for path in ("/api/v1/edges", "/metrics", "/openapi.json", "/api/v1/traces/0123456789abcdef0123456789abcdef"):
        refused = httpx.get(f"{api}{path}")
        assert refused.status_code == 401, path
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert refused.headers["content-type"] == "application/problem+json"
        assert httpx.get(f"{api}{path}", headers={"authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(f"{api}/api/v1/edges", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert httpx.get(f"{api}/healthz").status_code == 200
    assert httpx.get(f"{api}/readyz").status_code == 200
    assert _refused(server) == 8


def test_a_person_signs_in_once_with_an_httponly_strict_cookie(guarded: tuple[ServeProcess, Path]) -> None:
    server, tokens = guarded
    api = server.api_url
    page = httpx.get(f"{api}/edges?caller=x", headers={"accept": "text/html"})
    assert page.status_code == 303 and page.headers["location"] == "/login?next=%2Fedges%3Fcaller%3Dx"
    wrong = httpx.post(f"{api}/login", data={"token": "guess", "next": "/"})
    assert wrong.status_code == 401 and "not accepted" in wrong.text and "set-cookie" not in wrong.headers
    redirect = httpx.post(f"{api}/login", data={"token": TOKEN, "next": "https://evil.example/"})
    assert redirect.status_code == 303 and redirect.headers["location"] == "/"   # never an open redirect
    cookie = redirect.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    session = dict(redirect.cookies)
    assert httpx.get(f"{api}/api/v1/edges", cookies=session).status_code == 200
    assert httpx.get(f"{api}/", cookies=session, headers={"accept": "text/html"}).status_code == 200

    tokens.write_text("the-next-token\n")   # rotated: the sessions opened with the old token end with it
    deadline = time.monotonic() + 10
    while httpx.get(f"{api}/api/v1/edges", cookies=session).status_code != 401:
        assert time.monotonic() < deadline, "a session outlived its token's removal by 10 s"
        time.sleep(0.3)
    assert httpx.get(f"{api}/api/v1/edges", headers={"authorization": "Bearer the-next-token"}).status_code == 200


def test_the_pages_work_in_chromium_behind_the_login(guarded: tuple[ServeProcess, Path],
                                                    browser: Any) -> None:  # noqa: F811 - the fixture
    from selenium.webdriver.common.by import By

    server, _ = guarded
    browser.get(f"{server.api_url}/")
    field = wait_for(browser, "[data-testid='login-token']")
    field.send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, "[data-testid='login-submit']").click()
    # the service map, drawn from API calls its script made with the cookie (an API refusal would be state=error)
    page = wait_for(browser, "section.page[data-page='map']:not([data-state='loading'])")
    assert page.get_attribute("data-state") == "ready"
    assert browser.execute_script("return document.cookie") == ""   # HttpOnly: no script sees the session


SQL = {"sql": "SELECT count(*) FROM spans"}


def test_off_loopback_an_api_token_opens_sql_when_no_sql_token_is_set(
        start_serve: Callable[..., ServeProcess], tmp_path: Path) -> None:
    """Exposed (0.0.0.0) without --sql-token, SQL used to stay closed to everyone; an API token now opens it."""
    tokens = tmp_path / "api.tokens"
    tokens.write_text(f"{TOKEN}\n")
    server = start_serve("--host", "0.0.0.0", "--api-token-file", str(tokens))
    url = f"{server.api_url}/api/v1/sql"
    assert httpx.post(url, json=SQL, timeout=30).status_code == 401
    answer = httpx.post(url, json=SQL, headers={"authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert answer.status_code == 200 and answer.json()["rows"] == [[0]], answer.text


def test_with_both_tokens_sql_takes_its_own_and_the_api_its_own(
        start_serve: Callable[..., ServeProcess], tmp_path: Path) -> None:
    """Both checked on the one Authorization header: SQL's token used to be refused by the API token check."""
    tokens = tmp_path / "api.tokens"
    tokens.write_text(f"{TOKEN}\n")
    server = start_serve("--host", "0.0.0.0", "--api-token-file", str(tokens), "--sql-token", "sql-t0ken")
    url, api = f"{server.api_url}/api/v1/sql", server.api_url
    assert httpx.post(url, json=SQL, headers={"authorization": "Bearer sql-t0ken"}, timeout=30).status_code == 200
    assert httpx.post(url, json=SQL, headers={"authorization": f"Bearer {TOKEN}"}, timeout=30).status_code == 401
    assert httpx.get(f"{api}/api/v1/edges", headers={"authorization": "Bearer sql-t0ken"}).status_code == 401
    assert httpx.get(f"{api}/api/v1/edges", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_the_breakdown_command_sends_the_api_token(guarded: tuple[ServeProcess, Path]) -> None:
    server, _ = guarded
    command = [sys.executable, "-m", "hopscope", "breakdown", "--api", server.api_url]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "401" in refused.stderr
    answered = subprocess.run([*command, "--token", TOKEN], capture_output=True, text=True, timeout=60)
    assert answered.returncode == 0, answered.stderr
