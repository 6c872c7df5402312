"""Waking waiting fetches on every node: one LISTEN connection turns NOTIFYs into per-topic events."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from mezzo.messaging.backends.postgres.database import CONNECT_TIMEOUT

LISTENING_POLL = 5.0  # with LISTEN up, a waiting fetch re-checks this often anyway
DEAF_POLL = 0.5  # while reconnecting, notifications may be lost: poll faster
KEEPALIVE = 15.0  # probe the LISTEN link this often, to notice one dropped silently


class Wakeups:
    """Events per topic, set by publishes, nacks, keyed acks, seeks and deletions on any node.

    A fetch takes ``event(topic)`` before it queries and waits on it afterwards, so a
    change committed after its query always wakes it; early wakes only cost a query.
    """

    def __init__(self, dsn: str, channel: str) -> None:
        self.dsn = dsn
        self.channel = channel
        self.listening = False
        self._events: dict[str, asyncio.Event] = {}
        self._task: asyncio.Task[None] | None = None
        self._up = asyncio.Event()

    @property
    def poll_interval(self) -> float:
        return LISTENING_POLL if self.listening else DEAF_POLL

    def event(self, topic: str) -> asyncio.Event:
        found = self._events.get(topic)
        if found is None:
            found = self._events[topic] = asyncio.Event()
        return found

    def wake(self, topic: str) -> None:
        found = self._events.pop(topic, None)
        if found is not None:
            found.set()

    def wake_all(self) -> None:
        events, self._events = self._events, {}
        for found in events.values():
            found.set()

    async def start(self) -> None:
        """Start listening; returns once LISTEN is up (or after a connect timeout: polling covers it)."""
        self._task = asyncio.create_task(self._listen(), name="mezzo-mq-pg-listen")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await self._up.wait()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.listening = False
        self.wake_all()

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self.wake(payload)

    async def _listen(self) -> None:
        """Hold a LISTEN connection; reconnect with backoff."""
        import asyncpg

        delay = 0.5
        while True:
            conn = None
            try:
                conn = await asyncpg.connect(self.dsn, timeout=CONNECT_TIMEOUT)
                await conn.add_listener(self.channel, self._notified)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                self.listening = True
                self._up.set()
                self.wake_all()  # changes may have happened while nobody listened
                delay = 0.5
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(KEEPALIVE):
                            await lost.wait()
                    if not lost.is_set():
                        await conn.execute("SELECT 1", timeout=5)
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            finally:
                self.listening = False
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await asyncio.shield(conn.close())
