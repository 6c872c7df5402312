"""Wakes fetches waiting on this node when any node publishes, acks, nacks or seeks.

The Lua scripts PUBLISH the topic name on one channel per prefix; each broker keeps one
subscription and sets the topic's event. A fetch takes the event *before* it runs its script,
so a wake-up sent while the script runs is never lost. Should the subscription drop, waiting
fetches fall back to polling (``poll_interval``) until it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

log = structlog.get_logger("mezzo.messaging")
HEALTHY_POLL = 2.0  # a safety net only: notifications normally wake fetches at once
DEGRADED_POLL = 0.2


class Wakeups:
    def __init__(self, client: Redis, channel: str) -> None:
        self.client = client
        self.channel = channel
        self.healthy = False
        self._events: dict[str, asyncio.Event] = {}
        self._pubsub: PubSub | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def poll_interval(self) -> float:
        return HEALTHY_POLL if self.healthy else DEGRADED_POLL

    async def start(self) -> None:
        """Subscribe and wait for Redis to confirm, so no wake-up after this returns is missed."""
        await self._subscribe()
        self._task = asyncio.create_task(self._listen(), name="mezzo-mq-redis-wakeups")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._drop_pubsub()

    def event(self, topic: str) -> asyncio.Event:
        """The event the next wake-up of ``topic`` sets (take it before looking for messages)."""
        event = self._events.get(topic)
        if event is None:
            event = self._events[topic] = asyncio.Event()
        return event

    def wake(self, topic: str) -> None:
        event = self._events.pop(topic, None)
        if event is not None:
            event.set()

    def wake_all(self) -> None:
        events, self._events = self._events, {}
        for event in events.values():
            event.set()

    async def _subscribe(self) -> None:
        pubsub = self.client.pubsub()
        try:
            await pubsub.subscribe(self.channel)
            while True:  # the confirmation is the first message
                message = await pubsub.get_message(timeout=5.0)
                if message is None:
                    raise TimeoutError(f"Redis did not confirm the subscription to {self.channel}")
                if message["type"] == "subscribe":
                    break
        except BaseException:
            await pubsub.aclose()
            raise
        self._pubsub = pubsub
        self.healthy = True

    async def _drop_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        self.healthy = False
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def _listen(self) -> None:
        pause = 0.1
        while True:
            try:
                if self._pubsub is None:
                    await self._subscribe()
                    self.wake_all()  # something may have happened while we were away
                    pause = 0.1
                assert self._pubsub is not None
                message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=30.0)
                if message is not None and message["type"] == "message":
                    data = message["data"]
                    self.wake(data.decode() if isinstance(data, bytes) else str(data))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.healthy:
                    log.warning("redis wake-up subscription lost; fetches poll until it is back", error=str(exc))
                await self._drop_pubsub()
                self.wake_all()
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)
