"""GET /api/v1/rules: the span classification rules in force, in the order they are tried (the user's `--rules`
file first, then the built-ins; docs/hop-model.md, "Rules") — what to read when a hop looks wrong."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from hopscope.analytics.classify import Classifier
from hopscope.analytics.roles import ROLES


def rules_router(classifier: Classifier) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["rules"])

    @router.get("/rules", summary="The span classification rules in force, in the order they are tried")
    def rules() -> dict[str, Any]:
        return {"roles": list(ROLES),
                "rules": [{"role": rule.role, "when": [list(condition) for condition in rule.conditions],
                           "why": rule.why, "source": rule.source} for rule in classifier.rules]}

    return router
