"""The SDK's near cache: an in-process LRU in front of one cache namespace, kept correct by the server.

A background task holds the namespace's invalidation stream (server-sent events). Once the
server has said hello with a listener id, reads that miss locally are sent with that id, the
server remembers the key for this listener, and names it on the stream when it is written,
deleted, expires, is evicted or gets a new TTL; the copy here is dropped then.

Correctness rules, each for a race:

- A value read while the stream was down, or whose read overlapped an invalidation of the
  same key, or that the server did not confirm as tracked, is not kept (it may already be old).
- When the stream drops (node restart, network, missed heartbeats) everything is flushed and
  the near cache is bypassed until the stream is back and the server said hello again.
- Every copy lives at most ``max_ttl`` seconds and never past the key's own TTL, so even a lost
  invalidation cannot keep a value stale for longer than that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from mezzo.sdk.errors import APIError, api_error

if TYPE_CHECKING:
    from mezzo.sdk.client import Mezzo

log = logging.getLogger("mezzo.sdk.cache")
TRACKING = "Mezzo-Tracking"
DEFAULT_MAX_KEYS = 10_000
DEFAULT_MAX_TTL = 60.0


class NearCache:
    """Local copies of one namespace's values. Read ``hits``, ``misses``, ``invalidations``, ``flushes``."""

    def __init__(self, client: Mezzo, namespace: str, max_keys: int = DEFAULT_MAX_KEYS,
                 max_ttl: float = DEFAULT_MAX_TTL, heartbeat: float = 15.0) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        if max_ttl <= 0:
            raise ValueError("max_ttl must be positive")
        self.namespace = namespace
        self.max_keys = max_keys
        self.max_ttl = max_ttl
        self.heartbeat = heartbeat
        # key -> (value, local deadline, the value's meta note)
        self.entries: OrderedDict[str, tuple[bytes, float, str | None]] = OrderedDict()
        self.listener: str | None = None  # the server's id for this near cache while the stream is up
        self.epoch = 0  # +1 at every flush: reads begun before it are not kept
        self.hits = self.misses = self.invalidations = self.flushes = 0
        self._client = client
        self._inflight: dict[str, int] = {}
        self._dirty: set[str] = set()
        self._up = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._greeted = False
        self.refused: APIError | None = None  # the server's answer when it will not send invalidations

    @property
    def live(self) -> bool:
        """True while the invalidation stream is up: only then is the near cache used."""
        return self.listener is not None

    # the local side -----------------------------------------------------------------------

    def get(self, key: str) -> tuple[bytes, float, str | None] | None:
        """The local ``(value, deadline, meta)`` of ``key``, or None (a miss)."""
        entry = self.entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        if entry[1] <= time.monotonic():
            del self.entries[key]
            self.misses += 1
            return None
        self.entries.move_to_end(key)
        self.hits += 1
        return entry

    def begin(self, key: str) -> int:
        """A remote read of ``key`` starts; give its result and this token to ``finish``."""
        self._inflight[key] = self._inflight.get(key, 0) + 1
        return self.epoch

    def finish(self, key: str, token: int, value: bytes | None, ttl_ms: int | None, tracked: bool,
               meta: str | None = None) -> None:
        left = self._inflight[key] - 1
        dirty = key in self._dirty
        if left:
            self._inflight[key] = left
        else:
            del self._inflight[key]
            self._dirty.discard(key)
        if value is None or not tracked or dirty or token != self.epoch or not self.live:
            return
        ttl = self.max_ttl if ttl_ms is None else min(self.max_ttl, ttl_ms / 1000)
        if ttl <= 0:
            return
        self.entries[key] = (value, time.monotonic() + ttl, meta)
        self.entries.move_to_end(key)
        while len(self.entries) > self.max_keys:
            self.entries.popitem(last=False)

    def drop(self, key: str) -> None:
        """Forget ``key`` here (a write through this client, or the server said so)."""
        self.entries.pop(key, None)
        if key in self._inflight:
            self._dirty.add(key)

    def flush(self) -> None:
        self.entries.clear()
        self._dirty.update(self._inflight)
        self.epoch += 1
        self.flushes += 1

    # the stream ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._listen(), name=f"mezzo-near-cache-{self.namespace}")

    async def wait_live(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._up.wait()
        return self.live

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._down()

    async def _listen(self) -> None:
        delay = 0.05
        while True:
            self._greeted = False
            try:
                await self._stream()
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                log.info("near cache %s: invalidation stream lost: %s", self.namespace, exc)
            except Exception:  # never let the listener die: the near cache would stay off for good
                log.warning("near cache %s: invalidation stream failed", self.namespace, exc_info=True)
            finally:
                self._down()
            if self.refused is not None:
                return
            delay = 0.05 if self._greeted else min(delay * 2, 5.0)  # back off only while it cannot connect
            await asyncio.sleep(delay)

    async def _stream(self) -> None:
        timeout = httpx.Timeout(5.0, read=self.heartbeat * 3)  # three missed heartbeats: the stream is dead
        async with self._client._http.stream(
            "GET", f"/v1/cache/{self.namespace}/invalidations", params={"heartbeat": self.heartbeat},
            headers={"Accept": "text/event-stream"}, timeout=timeout,
        ) as response:
            if response.status_code >= 400:
                await response.aread()
                if response.status_code < 500 and response.status_code != 429:
                    # refused for good (a distributed namespace, no right to read it): stay off
                    self.refused = api_error(response.status_code, _problem(response))
                    self._up.set()
                    return
                raise ValueError(f"HTTP {response.status_code}: {response.text[:200]}")
            event = ""
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    self._on_event(event, orjson.loads(line[5:]))
                    event = ""

    def _on_event(self, event: str, data: Any) -> None:
        if event == "hello":
            self.flush()  # nothing read before this stream is trusted
            self.listener = str(data["listener"])
            self._greeted = True
            self._up.set()
        elif data.get("flush"):
            self.flush()
        else:
            for key in data.get("keys", ()):
                self.invalidations += 1
                self.drop(key)

    def _down(self) -> None:
        if self.listener is not None or self.entries:
            self.listener = None
            self._up.clear()
            self.flush()


def _problem(response: httpx.Response) -> dict[str, Any]:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = None
    return body if isinstance(body, dict) else {"title": response.reason_phrase, "detail": response.text[:500]}
