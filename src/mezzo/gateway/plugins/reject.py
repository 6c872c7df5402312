"""The answer of a plugin that refuses a request with a status its configuration chose."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from mezzo.gateway.http import Reply, problem

_KNOWN = frozenset(s.value for s in HTTPStatus)


def reject(status: int, detail: str, **extra: Any) -> Reply:
    """``application/problem+json`` for a status HTTP knows, plain JSON for one it does not (e.g. 599)."""
    if status in _KNOWN:
        return problem(status, detail, **extra)
    return Reply(status, {"status": status, "detail": detail, **extra})
