"""Calling a branch over HTTP with DTM's conventions, and what its answer means.

200 is success unless the body says ``"dtm_result": "FAILURE"`` or ``"ONGOING"``; 409 is failure;
425 is ongoing (try again after the plain interval); anything else, a timeout included, is an error
(try again with backoff).
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import aiohttp
import orjson

from mezzo.transactions import httpclient

MAX_BODY = 1024 * 1024  # of an answer read: branch answers are short; only the start is looked at
KEEPALIVE = 4.0  # seconds an idle connection is kept: under the usual servers' own (uvicorn: 5)


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
    """Every branch call a node makes, over keep-alive connections.

    Plain ``http://`` URLs go through ``httpclient`` (asyncio + httptools): about 25 us of CPU per
    call where aiohttp's client took about 105. ``https://`` URLs, and any URL that client does not
    take, go through one aiohttp session. Redirects are not followed. A call on a reused
    connection that the server closed meanwhile (its keep-alive ran out) is sent once more on a new
    one: branches are idempotent, and the coordinator may call them again anyway.
    """

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self._ssl = ssl_context
        self._session: aiohttp.ClientSession | None = None
        self._plain = httpclient.Client(max_body=MAX_BODY, keepalive=KEEPALIVE)

    def _open(self) -> aiohttp.ClientSession:  # made on first use, on the loop that uses it
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE,
                                             ssl=self._ssl if self._ssl is not None else True)
            # no timeout of aiohttp's own: ``call`` bounds the whole call (one timer per call, not two)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=True, trust_env=False,
                                                  skip_auto_headers=("User-Agent",), timeout=aiohttp.ClientTimeout())
        return self._session

    async def aclose(self) -> None:
        self._plain.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(self, method: str, url: str, *, params: dict[str, str], data: str, timeout: float,
                   headers: dict[str, str]) -> Result:
        if method == "POST":
            headers = {"Content-Type": "application/json", **headers}
        body = data.encode() if method == "POST" else None
        to = httpclient.target(url)
        if to is None:
            return await self._call_aiohttp(method, url, params, headers, body, timeout)
        try:
            raw = httpclient.encode_request(to, method, params, headers, body)
            status, answer = await self._plain.request(to, raw, timeout)
        except TimeoutError:
            return Result(Outcome.ERROR, f"timed out after {timeout:g} s")
        except (OSError, ValueError) as exc:  # ValueError: a header that cannot go out
            return Result(Outcome.ERROR, f"{type(exc).__name__}: {exc}")
        return classify(status, answer)

    async def _call_aiohttp(self, method: str, url: str, params: dict[str, str], headers: dict[str, str],
                            body: bytes | None, timeout: float) -> Result:
        try:
            async with asyncio.timeout(timeout):
                try:
                    status, answer = await self._request(method, url, params, headers, body)
                except aiohttp.ServerDisconnectedError:  # a stale keep-alive connection: once more
                    status, answer = await self._request(method, url, params, headers, body)
        except TimeoutError:
            return Result(Outcome.ERROR, f"timed out after {timeout:g} s")
        except (aiohttp.ClientError, OSError, ValueError) as exc:  # ValueError: a header or URL that cannot go out
            return Result(Outcome.ERROR, f"{type(exc).__name__}: {exc}")
        return classify(status, answer)

    async def _request(self, method: str, url: str, params: dict[str, str], headers: dict[str, str],
                       body: bytes | None) -> tuple[int, bytes]:
        async with self._open().request(method, url, params=params, headers=headers, data=body,
                                        allow_redirects=False) as response:
            answer = bytearray()
            async for chunk in response.content.iter_chunked(65536):
                answer += chunk
                if len(answer) >= MAX_BODY:
                    break
            return response.status, bytes(answer[:MAX_BODY])
