"""The pages (docs/pages.md): static ES modules, one stylesheet and one HTML file from `analytics/web/`, served on
the API port. `/` is the service map; assets live under `/ui/`. Every number they show comes from `/api/v1/…`.

Registered after the API routers, so an API path always wins. The Content-Security-Policy allows only this
origin's own scripts, styles and fetches: no inline script or style attribute, no CDN, nothing to download."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

WEB = Path(__file__).parent / "web"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
# no-cache = revalidate every time (cheap: ETag / Last-Modified), so an upgraded hopscope never mixes old and new
# modules; the files are unversioned because there is no build step
HEADERS = {"Content-Security-Policy": CSP, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "no-referrer"}


class _Assets(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(HEADERS)
        return response


def add_pages(app: FastAPI) -> None:
    app.mount("/ui", _Assets(directory=WEB), name="pages")

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def service_map() -> FileResponse:
        return FileResponse(WEB / "index.html", headers=HEADERS)
