"""The Redis client of a plugin that shares state across gateway nodes (its own URL, else the node's MEZZO_CACHE).

A plugin schema cannot see the node's settings when ``mezzo apply`` validates it, so the gateway
module puts the node's Redis URL (its MEZZO_CACHE when redis:// or rediss://, else None) in
``NODE_REDIS`` around every API request it serves (``NodeRedisFront``). ``require_redis_url``
then refuses, at apply time, a Redis-backed setting that no URL would reach; outside an API request
of a gateway node (the data plane, a node without the gateway module) nothing is known, and nothing
is refused: building the plugin fails instead, and the gateway reports it.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from typing import Any

from pydantic_core import PydanticCustomError

UNKNOWN: Any = object()
# the applying node's Redis URL (None: MEZZO_CACHE is not redis://), or UNKNOWN outside its API requests
NODE_REDIS: ContextVar[Any] = ContextVar("mezzo_gateway_node_redis", default=UNKNOWN)


def require_redis_url(url: str | None, what: str) -> None:
    """Refuse an empty ``url`` when the node applying the resource has no Redis either."""
    if not url and NODE_REDIS.get() is None:
        raise PydanticCustomError(
            "redis_url_missing",
            "{what} needs redisUrl: this node's MEZZO_CACHE is not redis:// or rediss://, so there is no "
            "Redis to use (set redisUrl, or run the gateway with MEZZO_CACHE=redis://...)", {"what": what})


class NodeRedisFront:
    """An ASGI app in front of ``app`` that sets ``NODE_REDIS`` to ``url`` for each request."""

    def __init__(self, app: Any, url: str | None) -> None:
        self.app = app
        self.url = url

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        token = NODE_REDIS.set(self.url)
        try:
            await self.app(scope, receive, send)
        finally:
            NODE_REDIS.reset(token)


def open_redis(url: str | None, runtime: Any, what: str) -> Any:
    """A client with short timeouts (a slow Redis must not hold requests up); ValueError without a URL."""
    url = url or getattr(runtime, "redis_url", None)
    if not url:
        raise ValueError(f"{what} needs redisUrl (or MEZZO_CACHE=redis://...)")
    import redis.asyncio as aioredis

    return aioredis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)


def close_redis(client: Any) -> None:
    """Close a client from a sync ``close()``: in the background when a loop runs."""
    if client is not None:
        try:
            asyncio.get_running_loop().create_task(client.aclose())
        except RuntimeError:
            pass
