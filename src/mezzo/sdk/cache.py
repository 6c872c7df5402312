"""``client.cache``: values in Mezzo's cache over HTTP, with single-flight ``get_or_set``.

For high request rates use a Redis client on the Redis-protocol port; this client is for
applications that already hold a ``Mezzo`` client and want the cache patterns without more code.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson

from mezzo.sdk.errors import Conflict, NotFound

if TYPE_CHECKING:
    from mezzo.sdk.client import Mezzo


class CacheClient:
    def __init__(self, client: Mezzo) -> None:
        self._client = client
        self._flights: dict[tuple[str, str], asyncio.Future[Any]] = {}

    async def get(self, key: str, namespace: str = "default") -> bytes | None:
        try:
            found = await self._client.request("GET", f"/v1/cache/{namespace}/keys/{key}")
        except NotFound:
            return None
        if "valueBase64" in found:
            return base64.b64decode(found["valueBase64"])
        value = found["value"]
        return value.encode() if isinstance(value, str) else orjson.dumps(value)

    async def set(self, key: str, value: bytes | str, ttl: float | str | None = None, *, namespace: str = "default",
                  nx: bool = False) -> bool:
        """Store ``value``; with ``nx`` only when the key is absent (False when it was there)."""
        body: dict[str, Any] = {"ttl": ttl, "nx": nx}
        if isinstance(value, bytes):
            body["valueBase64"] = base64.b64encode(value).decode()
        else:
            body["value"] = value
        try:
            await self._client.request("PUT", f"/v1/cache/{namespace}/keys/{key}",
                                       json={k: v for k, v in body.items() if v not in (None, False)})
        except Conflict:
            return False
        return True

    async def delete(self, key: str, namespace: str = "default") -> bool:
        try:
            await self._client.request("DELETE", f"/v1/cache/{namespace}/keys/{key}")
        except NotFound:
            return False
        return True

    async def keys(self, match: str | None = None, namespace: str = "default") -> list[str]:
        out: list[str] = []
        cursor = 0
        while True:
            page = await self._client.request("GET", f"/v1/cache/{namespace}/keys",
                                              params={"match": match, "cursor": cursor, "count": 1000})
            out += page["items"]
            cursor = page["cursor"]
            if not cursor:
                return out

    async def stats(self, namespace: str = "default") -> dict[str, Any]:
        return await self._client.request("GET", f"/v1/cache/{namespace}/stats")  # type: ignore[no-any-return]

    async def get_or_set(self, key: str, loader: Callable[[], Awaitable[bytes | str]], ttl: float | str,
                         *, namespace: str = "default", lock_ttl: float = 10.0) -> bytes:
        """The cached value, or ``loader()``'s, loaded once however many callers ask at once:
        once per process (single flight) and, through a short lock key in the cache, once
        across processes (the others wait for the value to appear)."""
        found = await self.get(key, namespace)
        if found is not None:
            return found
        flight = (namespace, key)
        running = self._flights.get(flight)
        if running is not None:
            return await asyncio.shield(running)  # type: ignore[no-any-return]
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._flights[flight] = fut
        try:
            value = await self._load(key, loader, ttl, namespace, lock_ttl)
            fut.set_result(value)
            return value
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: waiters get it, nobody is warned about it
            raise
        finally:
            del self._flights[flight]

    async def _load(self, key: str, loader: Callable[[], Awaitable[bytes | str]], ttl: float | str,
                    namespace: str, lock_ttl: float) -> bytes:
        lock = f"{key}.mezzo-lock"
        owner = uuid.uuid4().hex
        delay = 0.01
        deadline = asyncio.get_running_loop().time() + lock_ttl
        while not await self.set(lock, owner, lock_ttl, namespace=namespace, nx=True):
            await asyncio.sleep(delay)  # another process loads it; poll for its value
            found = await self.get(key, namespace)
            if found is not None:
                return found
            if asyncio.get_running_loop().time() > deadline:
                break  # the holder died: load it ourselves
            delay = min(delay * 2, 0.2)
        try:
            value = await loader()
            raw = value.encode() if isinstance(value, str) else value
            await self.set(key, raw, ttl, namespace=namespace)
            return raw
        finally:
            await self.delete(lock, namespace)
