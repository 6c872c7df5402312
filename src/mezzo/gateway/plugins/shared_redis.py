"""The Redis client of a plugin that shares state across gateway nodes (its own URL, else the node's MEZZO_CACHE)."""

from __future__ import annotations

import asyncio
from typing import Any


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
