"""POST /api/v1/sql: one read-only statement over the live database (the runner, its limits and defences:
sql.py). On a non-loopback address it needs a token, and stays closed without one: --sql-token, or else an API token
(--api-token-file, checked in front of the whole API port by cli/api_auth.py, which marks the request)."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, Header, HTTPException, Request
from pydantic import BaseModel, Field

from hopscope.analytics.sql import SqlBusy, SqlRefused, SqlRunner

API_AUTHENTICATED = "hopscope_api_authenticated"  # request state set once an API token was checked


class SqlRequest(BaseModel):
    sql: str = Field(description="one SELECT (or EXPLAIN) statement", max_length=100_000)
    max_rows: int | None = Field(None, ge=1, le=10_000, description="row cap (at most 10,000)")


def sql_router(runner: SqlRunner, token: str, exposed: bool) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["sql"])

    @router.post("/sql", summary="Run one read-only SQL statement (time limit, row cap, no file access)",
                 responses={400: {"description": "refused or failed statement"}, 401: {"description": "bad token"},
                            403: {"description": "closed: set --sql-token"}, 429: {"description": "busy"}})
    def run_sql(request: SqlRequest, http: Request, authorization: str | None = Header(None)) -> dict[str, Any]:
        if exposed and not token and not getattr(http.state, API_AUTHENTICATED, False):
            raise HTTPException(403, "the SQL endpoint is closed on a non-loopback address until --sql-token "
                                     "(HOPSCOPE_SQL_TOKEN) or --api-token-file is set")
        if token and not hmac.compare_digest(authorization or "", f"Bearer {token}"):
            raise HTTPException(401, "send 'Authorization: Bearer <token>' with the --sql-token value")
        try:
            result = runner.run(request.sql, request.max_rows)
        except SqlRefused as exc:
            raise HTTPException(400, str(exc)) from None
        except SqlBusy as exc:
            raise HTTPException(429, str(exc)) from None
        return {"columns": result.columns, "types": result.types, "rows": result.rows, "row_count": len(result.rows),
                "truncated": result.truncated, "elapsed_ms": result.elapsed_ms}

    return router
