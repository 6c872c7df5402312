"""``client.cache``: values in Mezzo's cache over HTTP, an optional near cache, and the cache patterns.

For raw request rates use a Redis client on the Redis-protocol port; this client is for
applications that already hold a ``Mezzo`` client and want what a Redis client does not give:
a near cache kept correct by server-push invalidation (``near_cache``), stampede-proof
``get_or_set`` and the ``@cached`` decorator (``cache_patterns.py``), tags, and the reports.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
import orjson

from mezzo.sdk import cache_patterns
from mezzo.sdk.cache_near import DEFAULT_MAX_KEYS, DEFAULT_MAX_TTL, TRACKING, NearCache
from mezzo.sdk.errors import APIError, Conflict, ConnectError, NotFound

if TYPE_CHECKING:
    from mezzo.sdk.client import Mezzo


Fetched = tuple[bytes, int | None, bool, str | None]  # value, TTL in ms, tracked, meta


def _path(namespace: str, key: str) -> str:
    return f"/v1/cache/{namespace}/keys/{quote(key, safe='')}"


class CacheClient:
    def __init__(self, client: Mezzo) -> None:
        self._client = client
        self._flights: dict[tuple[str, str], asyncio.Future[Any]] = {}
        self._near: dict[str, NearCache] = {}
        try:  # the loop this client's connections live on: sync functions under @cached run on it
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # made on first use from another thread (MezzoSync): the client's loop
            self._loop = getattr(client, "_loop", None)

    # near cache ----------------------------------------------------------------------------

    async def near_cache(self, namespace: str = "default", *, max_keys: int | None = None,
                         max_ttl: float | None = None, wait: float = 5.0) -> NearCache:
        """Keep local copies of ``namespace``'s values read through this client.

        Limits not given come from the namespace's ``Cache`` resource (``spec.nearCache``) when
        there is one, else 10,000 keys and 60 s. Waits up to ``wait`` seconds for the server's
        invalidation stream; until it is up the near cache is bypassed, never trusted. Raises the
        server's problem when it refuses the stream (a distributed namespace has no invalidations)."""
        near = self._near.get(namespace)
        if near is None:
            settings = await self._near_settings(namespace) if max_keys is None or max_ttl is None else {}
            if max_keys is None:
                max_keys = int(settings.get("maxKeys") or DEFAULT_MAX_KEYS)
            if max_ttl is None:
                max_ttl = cache_patterns.seconds(settings.get("maxTTL") or DEFAULT_MAX_TTL)
            near = self._near.get(namespace)  # a concurrent call may have made it while settings loaded
            if near is None:
                near = NearCache(self._client, namespace, max_keys=max_keys, max_ttl=max_ttl)
                self._near[namespace] = near
                near.start()
        await near.wait_live(wait)
        if near.refused is not None:
            if self._near.get(namespace) is near:
                del self._near[namespace]
            await near.aclose()
            raise near.refused
        return near

    async def near_cache_from_settings(self, namespace: str = "default", *, wait: float = 5.0) -> NearCache | None:
        """Turn the near cache on when the namespace's ``Cache`` resource says ``nearCache.enabled``
        (with its ``maxKeys`` and ``maxTTL``); None when it does not."""
        settings = await self._near_settings(namespace)
        if not settings.get("enabled"):
            return None
        return await self.near_cache(namespace, wait=wait)

    async def _near_settings(self, namespace: str) -> dict[str, Any]:
        """``spec.nearCache`` of the Cache resource declaring ``namespace`` (``name`` or ``resourceNamespace.name``)."""
        owner, name = namespace.split(".", 1) if "." in namespace else ("default", namespace)
        try:
            found = await self._client.request("GET", f"/v1/resources/Cache/{name}", params={"namespace": owner})
        except APIError:  # no Cache kind on this server, or none declared for this namespace
            return {}
        return dict((found.get("spec") or {}).get("nearCache") or {})

    # values --------------------------------------------------------------------------------

    async def get(self, key: str, namespace: str = "default") -> bytes | None:
        """The value, or None when absent (or remembered as absent by ``get_or_set``)."""
        near = self._near.get(namespace)
        if near is not None and near.listener is not None:
            entry = near.get(key)  # the hot path of a near-cache hit: no other call, no await
            if entry is not None:
                return entry[0] if entry[2] is None else cache_patterns.visible(entry[0], entry[2])
            found = await self._read_through(near, key, namespace)
        else:
            found = await self._fetch(key, namespace, None)
        if found is None:
            return None
        return found[0] if found[3] is None else cache_patterns.visible(found[0], found[3])

    async def get_entry(self, key: str, namespace: str = "default") -> tuple[bytes, str | None] | None:
        """``(value, meta)``: the stored value with its meta note (``get_or_set``'s bookkeeping), or None."""
        near = self._near.get(namespace)
        if near is not None and near.listener is not None:
            entry = near.get(key)
            if entry is not None:
                return entry[0], entry[2]
            found = await self._read_through(near, key, namespace)
        else:
            found = await self._fetch(key, namespace, None)
        return None if found is None else (found[0], found[3])

    async def _read_through(self, near: NearCache, key: str, namespace: str) -> Fetched | None:
        """A remote read on behalf of the near cache, which keeps the answer if it may."""
        token = near.begin(key)
        found: Fetched | None = None
        try:
            found = await self._fetch(key, namespace, near.listener)
        finally:
            if found is None:
                near.finish(key, token, None, None, False)
            else:
                near.finish(key, token, found[0], found[1], found[2], found[3])
        return found

    async def _fetch(self, key: str, namespace: str, listener: str | None) -> Fetched | None:
        """``(value, TTL in ms, tracked, meta)`` of a remote read, None when there is no such key.
        A read with a listener id is tracked for that listener."""
        from mezzo.sdk.client import decode  # client.py imports this module

        try:
            response = await self._client._http.get(_path(namespace, key),
                                                    headers={TRACKING: listener} if listener else None)
        except httpx.TransportError as exc:
            raise ConnectError(f"cannot reach Mezzo at {self._client.url}: {exc}") from exc
        if response.status_code == 404:
            return None
        found = decode(response)
        if "valueBase64" in found:
            value = base64.b64decode(found["valueBase64"])
        else:
            text = found["value"]
            value = text.encode() if isinstance(text, str) else orjson.dumps(text)
        return value, found.get("ttlMs"), response.headers.get(TRACKING) == "on", found.get("meta")

    async def set(self, key: str, value: bytes | str, ttl: float | str | None = None, *, namespace: str = "default",
                  nx: bool = False, tags: list[str] | tuple[str, ...] = (), meta: str | None = None) -> bool:
        """Store ``value``; with ``nx`` only when the key is absent (False when it was there).
        ``tags`` label the key for ``invalidate_tag``; ``meta`` is a short note read back by ``get_entry``."""
        body: dict[str, Any] = {"ttl": ttl, "nx": nx, "tags": list(tags), "meta": meta}
        if isinstance(value, bytes):
            body["valueBase64"] = base64.b64encode(value).decode()
        else:
            body["value"] = value
        try:
            await self._client.request("PUT", _path(namespace, key),
                                       json={k: v for k, v in body.items() if v is not None and v is not False and v != []})
        except Conflict:
            return False
        finally:
            self._dropped(namespace, key)
        return True

    async def delete(self, key: str, namespace: str = "default", *, if_value: str | None = None) -> bool:
        """Delete ``key``; with ``if_value`` only while it holds that value. False when nothing was deleted."""
        try:
            await self._client.request("DELETE", _path(namespace, key), params={"ifValue": if_value})
        except NotFound:
            return False
        except APIError as exc:
            if exc.status == 412:
                return False
            raise
        finally:
            self._dropped(namespace, key)
        return True

    def _dropped(self, namespace: str, key: str) -> None:
        near = self._near.get(namespace)
        if near is not None:
            near.drop(key)

    async def invalidate_tag(self, tag: str, namespace: str = "default") -> int:
        """Delete every key stored with ``tag``; how many were deleted."""
        result = await self._client.request("POST", f"/v1/cache/{namespace}/tags/{quote(tag, safe='')}:invalidate")
        return int(result["deleted"])

    async def keys(self, match: str | None = None, namespace: str = "default") -> list[str]:
        """Every key matching the glob ``match`` (Redis' rules), each once: SCAN pages may repeat a key
        deleted and written again meanwhile."""
        out: dict[str, None] = {}
        cursor = 0
        while True:
            page = await self._client.request("GET", f"/v1/cache/{namespace}/keys",
                                              params={"match": match, "cursor": cursor, "count": 1000})
            out.update(dict.fromkeys(page["items"]))
            cursor = page["cursor"]
            if not cursor:
                return list(out)

    # reports -------------------------------------------------------------------------------

    async def stats(self, namespace: str = "default") -> dict[str, Any]:
        return await self._client.request("GET", f"/v1/cache/{namespace}/stats")  # type: ignore[no-any-return]

    async def namespaces(self) -> list[dict[str, Any]]:
        return (await self._client.request("GET", "/v1/cache"))["items"]  # type: ignore[no-any-return]

    async def hotkeys(self, namespace: str = "default", limit: int = 10) -> dict[str, Any]:
        """``{"hot": [{key, ops, error}], "big": [{key, bytes, type}], ...}`` from sampled operations."""
        return await self._client.request(  # type: ignore[no-any-return]
            "GET", f"/v1/cache/{namespace}/hotkeys", params={"limit": limit})

    async def nodes(self, namespace: str = "default") -> dict[str, Any]:
        """The nodes of a distributed namespace (served by distributed mode)."""
        return await self._client.request("GET", f"/v1/cache/{namespace}/nodes")  # type: ignore[no-any-return]

    async def rebalance(self, namespace: str = "default") -> dict[str, Any]:
        """Start moving keys to their owners after a change of nodes (served by distributed mode)."""
        return await self._client.request("POST", f"/v1/cache/{namespace}:rebalance")  # type: ignore[no-any-return]

    # patterns ------------------------------------------------------------------------------

    async def get_or_set(self, key: str, loader: cache_patterns.Loader, ttl: float | str,
                         *, namespace: str = "default", stale_ttl: float | str = 0, negative_ttl: float | str | None = None,
                         beta: float = 1.0, tags: list[str] | tuple[str, ...] = (), lock_ttl: float = 10.0) -> bytes | None:
        """The cached value, or ``loader()``'s, loaded once however many ask at once; see ``cache_patterns``.
        ``loader`` is an async function or a plain one (run in a worker thread)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return await cache_patterns.get_or_set(
            self, key, loader, cache_patterns.Policy.of(ttl, stale_ttl, negative_ttl, beta, tags, lock_ttl), namespace)

    def cached(self, ttl: float | str, *, key: str | Callable[..., str] | None = None,
               tags: list[str] | tuple[str, ...] = (), namespace: str = "default", stale_ttl: float | str = 0,
               negative_ttl: float | str | None = None, beta: float = 1.0) -> Callable[[Any], Any]:
        """Decorator for async and sync functions: results stored as JSON under ``key``
        (a ``str.format`` template over the arguments, a function of them, or derived from them)."""
        policy = cache_patterns.Policy.of(ttl, stale_ttl, negative_ttl, beta, tags, 10.0)
        return cache_patterns.decorator(self, policy, key, namespace)

    async def aclose(self) -> None:
        for near in list(self._near.values()):
            await near.aclose()
        self._near.clear()
