"""The answer of a plugin that refuses a request with a status its configuration chose."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from mezzo.gateway.http import Reply, problem

_KNOWN = frozenset(s.value for s in HTTPStatus)


def reject(status: int, detail: str, **extra: Any) -> Reply:
    """``application/problem+json``; for a status HTTP has no name for (e.g. 599) the title is
    ``Unknown``, as the status line's reason."""
    if status in _KNOWN:
        return problem(status, detail, **extra)
    body = {"type": "about:blank", "title": "Unknown", "status": status, "detail": detail, **extra}
    return Reply(status, body, content_type="application/problem+json")
