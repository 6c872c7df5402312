"""Errors the SDK raises: a server's problem document, or no server at all."""

from __future__ import annotations

from typing import Any


class MezzoError(Exception):
    """Base class for SDK errors."""


class ConnectError(MezzoError):
    """The server could not be reached."""


class APIError(MezzoError):
    """The server answered with an RFC 9457 problem document."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        self.title = str(problem.get("title") or "Error")
        self.detail = problem.get("detail")
        self.errors: list[dict[str, Any]] = list(problem.get("errors") or [])
        super().__init__(f"{status} {self.title}: {self.detail}" if self.detail else f"{status} {self.title}")


class NotFound(APIError):
    pass


class Unauthorized(APIError):
    pass


class Forbidden(APIError):
    pass


class Conflict(APIError):
    pass


class Gone(APIError):
    """A watch asked for history that was compacted: re-read, then watch again."""


_BY_STATUS = {401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 410: Gone}


def api_error(status: int, problem: dict[str, Any]) -> APIError:
    return _BY_STATUS.get(status, APIError)(status, problem)
