"""Who may use the API port (--api-token-file): the REST API, /metrics, the OpenAPI docs and the pages.

Programs send `Authorization: Bearer <token>`. A browser cannot, so /login takes the token once in a form and sets a
session cookie (HttpOnly: no script reads it; SameSite=Strict: no other site's page sends it). A session lasts
SESSION_SECONDS and ends early when its token leaves the token file, so a rotation also logs out the browsers that
used the old token. /healthz and /readyz stay open: probes carry no secrets. A refusal says only that a token is
missing or wrong, and is counted in /metrics.

Chosen over an oauth2-proxy front (which docs/deploy.md also describes): it works the same on a laptop, in the mesh
lab and in a cluster, and needs no identity provider; a team with single sign-on puts the proxy in front and leaves
the token to it.
"""

from __future__ import annotations

import html
import secrets
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import Counter

from hopscope.analytics.sql_api import API_AUTHENTICATED
from hopscope.collector.tokens import TokenFile

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/login", "/logout"})
SQL_PATH = "/api/v1/sql"
COOKIE = "hopscope_session"
SESSION_SECONDS = 12 * 3600
MAX_SESSIONS = 10_000   # the oldest go first: a flood of logins cannot grow memory without bound
MAX_FORM_BYTES = 4096

_LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>hopscope — sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font:15px system-ui,sans-serif;max-width:26rem;margin:12vh auto;padding:0 1rem;color:#222}}
input{{font:inherit;width:100%;padding:.5rem;margin:.4rem 0 1rem;box-sizing:border-box}}
button{{font:inherit;padding:.5rem 1.2rem}}.error{{color:#b00020}}</style></head>
<body><h1>hopscope</h1><p>This hopscope asks for an API token (one line of its <code>--api-token-file</code>).</p>
{error}<form method="post" action="/login"><input type="hidden" name="next" value="{next}">
<label for="token">API token</label><input id="token" name="token" type="password" autocomplete="current-password"
autofocus required data-testid="login-token"><button type="submit" data-testid="login-submit">Sign in</button></form>
</body></html>"""


class _Sessions:
    """Session id → (token it was opened with, expiry); in memory: a restart signs everyone out."""

    def __init__(self) -> None:
        self._sessions: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def open(self, token: str) -> str:
        session = secrets.token_urlsafe(32)
        self._sessions[session] = (token, time.monotonic() + SESSION_SECONDS)
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return session

    def token_of(self, session: str) -> str | None:
        found = self._sessions.get(session)
        if found is None or found[1] < time.monotonic():
            self._sessions.pop(session, None)
            return None
        return found[0]

    def close(self, session: str) -> None:
        self._sessions.pop(session, None)


class ApiAuth:
    """ASGI middleware in front of the whole API app."""

    def __init__(self, app: App, tokens: TokenFile, refused: Counter, sql_token_checked: bool = False) -> None:
        """`sql_token_checked`: POST /api/v1/sql checks its own --sql-token, so its bearer is that token and passes
        through here; without one, an API token opens it too (API_AUTHENTICATED tells the endpoint)."""
        self._app = app
        self._tokens = tokens
        self._refused = refused
        self._sql_token_checked = sql_token_checked
        self._sessions = _Sessions()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        path: str = scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if path == "/login":
            await self._login(scope, receive, send, headers)
        elif path == "/logout":
            self._sessions.close(_cookie(headers) or "")
            await _respond(send, 303, b"", [(b"location", b"/login"), _set_cookie("", 0)])
        elif path in OPEN_PATHS or (path == SQL_PATH and self._sql_token_checked):
            await self._app(scope, receive, send)
        elif self._allowed(headers):
            scope.setdefault("state", {})[API_AUTHENTICATED] = True
            await self._app(scope, receive, send)
        else:
            self._refused.inc()
            if scope["method"] == "GET" and "text/html" in headers.get("accept", ""):   # a person: the login page
                target = urllib.parse.quote(path + (f"?{scope['query_string'].decode()}" if scope["query_string"]
                                                    else ""), safe="")
                await _respond(send, 303, b"", [(b"location", f"/login?next={target}".encode())])
            else:
                body = (b'{"type":"about:blank","title":"authentication required","status":401,'
                        b'"detail":"missing or wrong API token: send Authorization: Bearer <token>"}')
                await _respond(send, 401, body, [(b"content-type", b"application/problem+json"),
                                                 (b"www-authenticate", b'Bearer realm="hopscope"')])

    def _allowed(self, headers: dict[str, str]) -> bool:
        if "authorization" in headers:
            return self._tokens.accepts(headers["authorization"])
        session = _cookie(headers)
        token = self._sessions.token_of(session) if session else None
        return token is not None and self._tokens.accepts(f"Bearer {token}")   # a rotated-out token ends it

    async def _login(self, scope: Scope, receive: Receive, send: Send, headers: dict[str, str]) -> None:
        query = urllib.parse.parse_qs(scope["query_string"].decode())
        if scope["method"] != "POST":
            await _page(send, 200, "", _safe_next(query.get("next", ["/"])[0]))
            return
        form = urllib.parse.parse_qs((await _body(receive)).decode(errors="replace"))
        token = form.get("token", [""])[0].strip()
        target = _safe_next(form.get("next", ["/"])[0])
        if not token or not self._tokens.accepts(f"Bearer {token}"):
            self._refused.inc()
            await _page(send, 401, '<p class="error" data-testid="login-error">That token is not accepted.</p>',
                        target)
            return
        session = self._sessions.open(token)
        await _respond(send, 303, b"", [(b"location", target.encode()), _set_cookie(session, SESSION_SECONDS)])


def _safe_next(target: str) -> str:
    """Only a path on this server: `//evil.example` or `https://…` would make the login page an open redirect."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


def _cookie(headers: dict[str, str]) -> str | None:
    for part in headers.get("cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            return value
    return None


def _set_cookie(session: str, max_age: int) -> tuple[bytes, bytes]:
    return (b"set-cookie", f"{COOKIE}={session}; Max-Age={max_age}; Path=/; HttpOnly; SameSite=Strict".encode())


async def _body(receive: Receive) -> bytes:
    parts, size = [], 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_FORM_BYTES:
            return b""
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


async def _page(send: Send, status: int, error: str, target: str) -> None:
    body = _LOGIN_PAGE.format(error=error, next=html.escape(target, quote=True)).encode()
    await _respond(send, status, body, [(b"content-type", b"text/html; charset=utf-8"),
                                         (b"cache-control", b"no-store")])


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})
