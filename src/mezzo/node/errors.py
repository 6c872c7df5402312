"""RFC 9457 problem details: the one error shape of every HTTP API Mezzo serves."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from mezzo.jsonutil import dumps

log = structlog.get_logger("mezzo.api")

PROBLEM_TYPE = "https://mezzo.dev/problems/"


class Problem(Exception):
    """An error answered as ``application/problem+json``."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        type: str = "about:blank",
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type if type == "about:blank" or "://" in type else PROBLEM_TYPE + type
        self.headers = headers or {}
        self.extra = extra

    def body(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"type": self.type, "title": self.title, "status": self.status}
        if self.detail:
            body["detail"] = self.detail
        if instance:
            body["instance"] = instance
        body.update(self.extra)
        return body

    def response(self, instance: str | None = None) -> Response:
        return Response(
            dumps(self.body(instance)),
            status_code=self.status,
            media_type="application/problem+json",
            headers=self.headers,
        )


def bad_request(detail: str, field: str | None = None, **extra: Any) -> Problem:
    errors = [{"field": field, "reason": detail}] if field else []
    return Problem(400, "Bad Request", detail, type="invalid-request", errors=errors, **extra)


def not_found(what: str) -> Problem:
    return Problem(404, "Not Found", f"{what} not found", type="not-found")


def conflict(detail: str, **extra: Any) -> Problem:
    return Problem(409, "Conflict", detail, type="conflict", **extra)


REVOKED = "invalid, expired or revoked token"


def problem_event(status: int, title: str, detail: str, **extra: Any) -> bytes:
    """A problem document as the last server-sent event of a stream that ends on an error."""
    problem = Problem(status, title, detail, type=title.lower().replace(" ", "-"), **extra)
    return b"event: error\ndata: %s\n\n" % dumps(problem.body())


def revoked_event() -> bytes:
    """How a stream ends once the token that opened it is revoked or has expired."""
    return problem_event(401, "Unauthorized", REVOKED)


def validation_errors(exc: RequestValidationError) -> Problem:
    errors = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":  # FastAPI's loc is ("body", character offset): name the body
            reason = (err.get("ctx") or {}).get("error") or err.get("msg", "invalid")
            at = err.get("loc", ("body", None))[-1]
            errors.append({"in": "body", "field": "body",
                           "reason": f"not valid JSON: {reason}" + (f" (at character {at})" if isinstance(at, int) else "")})
            continue
        loc = [str(p) for p in err.get("loc", ())]
        if loc and loc[0] in ("body", "query", "path", "header"):
            where, loc = loc[0], loc[1:]
        else:
            where = "body"
        errors.append({"in": where, "field": ".".join(loc) or where, "reason": err.get("msg", "invalid")})
    detail = "; ".join(f"{e['field']}: {e['reason']}" for e in errors) or "invalid request"
    return Problem(400, "Bad Request", detail, type="invalid-request", errors=errors)


_TITLES = {401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed"}


def install(app: FastAPI) -> None:
    """Make every error of ``app`` a problem document; no stack trace ever reaches a client."""

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> Response:
        return exc.response(request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        return validation_errors(exc).response(request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        # A bug, not bad input: log it (without locals: they may hold tokens) and say so plainly.
        log.error("unhandled error", path=request.url.path, error=f"{type(exc).__name__}: {exc}")
        return Problem(500, "Internal Server Error", "the server failed; the error is in its log",
                       type="internal").response(request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        title = _TITLES.get(exc.status_code, "Error")
        detail = exc.detail if isinstance(exc.detail, str) else None
        return Problem(exc.status_code, title, detail, headers=dict(exc.headers or {})).response(
            request.url.path
        )
