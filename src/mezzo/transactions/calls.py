"""Calling a branch over HTTP with DTM's conventions, and what its answer means.

200 is success unless the body says ``"dtm_result": "FAILURE"`` or ``"ONGOING"``; 409 is failure;
425 is ongoing (try again after the plain interval); anything else, a timeout included, is an error
(try again with backoff).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import httpx
import orjson


class Outcome(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    ONGOING = "ongoing"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    detail: str = ""


def classify(status: int, body: bytes) -> Result:
    said = _dtm_result(body)
    if status == 409 or said == "FAILURE":
        return Result(Outcome.FAILURE, _short(body) or f"HTTP {status}")
    if status == 425 or said == "ONGOING":
        return Result(Outcome.ONGOING, _short(body))
    if status == 200:
        return Result(Outcome.SUCCESS)
    return Result(Outcome.ERROR, f"HTTP {status}: {_short(body)}")


def _dtm_result(body: bytes) -> str | None:
    if b"dtm_result" not in body:
        return None
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    value = data.get("dtm_result") if isinstance(data, dict) else None
    return value.upper() if isinstance(value, str) else None


def _short(body: bytes) -> str:
    return body[:300].decode(errors="replace")


class BranchCaller:
    """One HTTP connection pool for every branch call a node makes."""

    def __init__(self) -> None:
        self.http = httpx.AsyncClient(follow_redirects=False)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def call(self, method: str, url: str, *, params: dict[str, str], data: str, timeout: float,
                   headers: dict[str, str]) -> Result:
        try:
            response = await self.http.request(
                method, url, params=params, timeout=timeout,
                content=data.encode() if method == "POST" else None,
                headers={"Content-Type": "application/json", **headers} if method == "POST" else headers)
        except httpx.TimeoutException:
            return Result(Outcome.ERROR, f"timed out after {timeout:g} s")
        except httpx.HTTPError as exc:
            return Result(Outcome.ERROR, f"{type(exc).__name__}: {exc}")
        return classify(response.status_code, response.content)
