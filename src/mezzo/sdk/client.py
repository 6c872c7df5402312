"""The Python SDK: ``Mezzo`` (async) and ``MezzoSync``, one sub-client per service."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import cached_property
from typing import TYPE_CHECKING, Any

import httpx

from mezzo import __version__
from mezzo.jsonutil import dumps, loads
from mezzo.sdk.config import default_token, default_url
from mezzo.sdk.errors import ConnectError, api_error
from mezzo.sdk.sync import SyncProxy
from mezzo.telemetry.propagation import inject_headers

if TYPE_CHECKING:  # each service's client is imported when first used: a CLI command loads one or two
    from mezzo.sdk.cache import CacheClient
    from mezzo.sdk.configcenter import ConfigClient
    from mezzo.sdk.messaging import MessagingClient
    from mezzo.sdk.registry import RegistryClient
    from mezzo.sdk.resources import ResourcesClient
    from mezzo.sdk.tokens import TokensClient
    from mezzo.sdk.tx import TxClient


class Mezzo:
    """Async client. ``async with Mezzo() as client: await client.resources.apply(...)``.

    ``url`` defaults to ``MEZZO_URL`` (or ``MEZZO_HOST``/``MEZZO_API_PORT``), ``token`` to
    ``MEZZO_TOKEN``, ``MEZZO_ADMIN_TOKEN``, or the admin token in the data dir.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 2,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        try:  # the loop the client lives on (MezzoSync makes it on its own loop's thread)
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self.url = (url or default_url()).rstrip("/")
        self.token = token if token is not None else default_token()
        headers = {"User-Agent": f"mezzo-python/{__version__}"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            transport=transport or httpx.AsyncHTTPTransport(retries=retries),
        )

    async def __aenter__(self) -> Mezzo:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if "config" in self.__dict__:  # made on first use; nothing to close otherwise
            await self.config.aclose()
        if "cache" in self.__dict__:
            await self.cache.aclose()
        await self._http.aclose()

    @cached_property
    def resources(self) -> ResourcesClient:
        from mezzo.sdk.resources import ResourcesClient

        return ResourcesClient(self)

    @cached_property
    def messaging(self) -> MessagingClient:
        from mezzo.sdk.messaging import MessagingClient

        return MessagingClient(self)

    @cached_property
    def tokens(self) -> TokensClient:
        from mezzo.sdk.tokens import TokensClient

        return TokensClient(self)

    @cached_property
    def tx(self) -> TxClient:
        from mezzo.sdk.tx import TxClient

        return TxClient(self)

    @cached_property
    def cache(self) -> CacheClient:
        from mezzo.sdk.cache import CacheClient

        return CacheClient(self)

    @cached_property
    def config(self) -> ConfigClient:
        from mezzo.sdk.configcenter import ConfigClient

        return ConfigClient(self)

    @cached_property
    def registry(self) -> RegistryClient:
        from mezzo.sdk.registry import RegistryClient

        return RegistryClient(self)

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | str | None = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """Send a request; return the decoded JSON body (None when empty); raise APIError on a problem."""
        if json is not None:
            content = dumps(json)
            headers = {"Content-Type": "application/json", **(headers or {})}
        params = {k: v for k, v in (params or {}).items() if v is not None}
        headers = with_trace_context(headers)
        try:
            response = await self._http.request(method, path, content=content, params=params, headers=headers)
        except httpx.TransportError as exc:
            raise ConnectError(f"cannot reach Mezzo at {self.url}: {exc}") from exc
        return decode(response)

    async def stream_lines(
        self, path: str, params: dict[str, Any], headers: dict[str, str] | None = None
    ) -> AsyncIterator[str]:
        """Lines of a streaming (SSE) response."""
        params = {k: v for k, v in params.items() if v is not None}
        try:
            async with self._http.stream(
                "GET", path, params=params, timeout=httpx.Timeout(None, connect=5.0),
                headers={"Accept": "text/event-stream", **(headers or {})},
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    decode(response)
                async for line in response.aiter_lines():
                    yield line
        except httpx.TransportError as exc:
            raise ConnectError(f"cannot reach Mezzo at {self.url}: {exc}") from exc

    async def health(self) -> dict[str, Any]:
        return await self.request("GET", "/healthz")  # type: ignore[no-any-return]

    async def ready(self) -> dict[str, Any]:
        """The readiness report (raises APIError 503 when not ready)."""
        return await self.request("GET", "/readyz")  # type: ignore[no-any-return]


def with_trace_context(headers: dict[str, str] | None) -> dict[str, str] | None:
    """The caller's current span (OpenTelemetry context) as ``traceparent``, so what Mezzo does for this
    request (and the messages it publishes) joins the caller's trace; headers the caller set win."""
    if headers and any(name.lower() in ("traceparent", "b3", "x-b3-traceid") for name in headers):
        return headers
    carrier: dict[str, str] = {}
    inject_headers(carrier)
    return {**carrier, **headers} if carrier and headers else carrier or headers


def decode(response: httpx.Response) -> Any:
    body = response.content
    data = loads(body) if body and "json" in response.headers.get("content-type", "") else None
    if response.status_code >= 400:
        problem = data if isinstance(data, dict) else {
            "title": response.reason_phrase, "detail": body.decode(errors="replace")[:500]}
        raise api_error(response.status_code, problem)
    return data


class MezzoSync(SyncProxy):
    """The same surface as ``Mezzo``, blocking: ``with MezzoSync() as client: client.resources.get(...)``."""

    def __init__(self, url: str | None = None, token: str | None = None, **kwargs: Any) -> None:
        super().__init__(lambda: Mezzo(url, token, **kwargs))

    def __enter__(self) -> MezzoSync:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
