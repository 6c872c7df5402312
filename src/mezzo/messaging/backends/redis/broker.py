"""The Redis Streams broker: topics as streams per partition, groups as native consumer groups.

Each operation is one Lua script on the Redis server (``lua_delivery``, ``lua_admin``), so it
is atomic however many Mezzo nodes share the Redis, and costs one round trip: offsets are
assigned, duplicates detected and records appended by one call per publish batch; a fetch
creates the group, hands on due redeliveries and reads new entries in one call. All state
lives in Redis (``keys.py`` lists every key); this process keeps only the set of topics it
has ensured and a pub/sub subscription that wakes its waiting fetches.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Iterator
from typing import Any

import orjson
import structlog
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mezzo.messaging.backend import (
    Delivery,
    Feature,
    GroupStats,
    Position,
    Record,
    StaleReceiptError,
    TooManyGroupsError,
    TopicStats,
)
from mezzo.messaging.backends.redis import lua_admin, lua_delivery
from mezzo.messaging.backends.redis.keys import (
    RedisTarget,
    TopicKeys,
    parse_url,
    registry_key,
    wake_channel,
)
from mezzo.messaging.backends.redis.wakeup import Wakeups
from mezzo.messaging.model import TopicSpec
from mezzo.node.settings import Settings

log = structlog.get_logger("mezzo.messaging")
MAX_GROUPS = 1000


class BrokerUnavailableError(ConnectionError):
    """Redis cannot be reached (the service answers 5xx; the node reports not ready)."""


def open_broker(url: str, settings: Settings) -> RedisBroker:
    return RedisBroker(url)


def parse_receipt(receipt: str) -> tuple[int, int, int, int] | None:
    """``partition:offset:attempt:epoch``; None for anything else (forged or foreign)."""
    parts = receipt.split(":")
    if len(parts) != 4 or not all(p.isdigit() and len(p) < 20 for p in parts):
        return None
    partition, offset, attempt, epoch = (int(p) for p in parts)
    return partition, offset, attempt, epoch


class RedisBroker:
    """Broker on a Redis server shared by every Mezzo node started with the same URL and prefix."""

    engine = "redis"
    features = frozenset({Feature.PARTITIONS, Feature.KEY_ORDERING, Feature.SEEK, Feature.RETENTION})
    record_limit: int | None = None

    def __init__(self, url: str, *, socket_timeout: float = 15.0, connect_timeout: float = 3.0) -> None:
        self.target: RedisTarget = parse_url(url)
        self.prefix = self.target.prefix
        self.max_groups = MAX_GROUPS
        self.client: Redis = Redis.from_url(
            self.target.url, socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout,
            health_check_interval=30, retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        )
        self._topics: dict[str, TopicSpec] = {}
        self._keys: dict[str, TopicKeys] = {}
        self._channel = wake_channel(self.prefix)
        self.wakeups = Wakeups(self.client, self._channel)
        self._rr = itertools.count()
        self._scripts = {name: self.client.register_script(source) for name, source in _SOURCES.items()}

    # lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Subscribe to wake-ups, then learn the topics that already exist (a restarted node)."""
        try:
            await self.wakeups.start()
            stored = await self.client.hgetall(registry_key(self.prefix))
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            await self.wakeups.close()
            raise BrokerUnavailableError(f"Redis broker at {self._where()} is unreachable: {exc}") from exc
        for name, spec in stored.items():
            self._topics[name.decode()] = TopicSpec.model_validate(orjson.loads(spec))

    async def close(self) -> None:
        await self.wakeups.close()
        await self.client.aclose()

    async def ready(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self.client.ping(), 2.0))
        except Exception:
            return False

    def _where(self) -> str:
        kwargs = self.client.connection_pool.connection_kwargs
        return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Connection trouble becomes one clear error naming the server."""
        try:
            yield
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise BrokerUnavailableError(f"Redis broker at {self._where()}: {exc}") from exc

    # scripts -----------------------------------------------------------------------------

    def _key(self, topic: str) -> TopicKeys:
        keys = self._keys.get(topic)
        if keys is None:
            keys = self._keys[topic] = TopicKeys.of(self.prefix, topic)
        return keys

    async def _run(self, name: str, topic: str, *args: Any, client: Any = None) -> Any:
        """Run script ``name`` on ``topic`` (KEYS[1] = its meta key; ARGV[1..3] = base, channel, topic)."""
        keys = self._key(topic)
        with self._guard():
            return await self._scripts[name](
                keys=[keys.meta], args=[keys.base, self._channel, topic, *args], client=client)

    def _spec(self, topic: str) -> TopicSpec:
        try:
            return self._topics[topic]
        except KeyError:
            raise LookupError(f"topic {topic!r} does not exist") from None

    # topics ------------------------------------------------------------------------------

    async def ensure_topic(self, topic: str, spec: TopicSpec) -> None:
        partitions = int(await self._run("ensure", topic, spec.partitions))
        if partitions != spec.partitions:
            spec = spec.model_copy(update={"partitions": partitions})  # partitions only grow
        document = orjson.dumps(spec.model_dump(mode="json", by_alias=True))
        with self._guard():
            await self.client.hset(registry_key(self.prefix), topic, document)
        self._topics[topic] = spec

    async def delete_topic(self, topic: str) -> None:
        self._topics.pop(topic, None)
        with self._guard():
            await self.client.hdel(registry_key(self.prefix), topic)
        await self._run("drop_topic", topic)

    def topics(self) -> list[str]:
        return sorted(self._topics)

    def has_topic(self, topic: str) -> bool:
        return topic in self._topics

    # publishing --------------------------------------------------------------------------

    async def publish(self, topic: str, records: list[Record], partitions: list[int]) -> list[Position]:
        spec = self._spec(topic)
        if not records:
            return []
        args: list[Any] = [int(spec.dedup_window * 1000)]
        for record, partition in zip(records, partitions, strict=True):
            key = "" if record.key is None else "=" + record.key
            args += (partition, record.id, key, record.timestamp_ms, record.payload)
        if self.target.replicas > 0:
            reply = await self._publish_replicated(topic, args)
        else:
            reply = await self._run("publish", topic, *args)
        if reply and reply[0] == -1:
            raise LookupError(f"topic {topic!r} does not exist")
        return [Position(reply[i], reply[i + 1], bool(reply[i + 2])) for i in range(0, len(reply), 3)]

    async def _publish_replicated(self, topic: str, args: list[Any]) -> Any:
        """Publish and WAIT on the same connection, so the wait covers this write."""
        with self._guard():
            async with self.client.pipeline(transaction=False) as pipe:
                await self._run("publish", topic, *args, client=pipe)
                pipe.execute_command("WAIT", self.target.replicas, self.target.wait_timeout_ms)
                reply, acknowledged = await pipe.execute()
        if int(acknowledged) < self.target.replicas:
            log.warning("publish reached fewer replicas than asked", topic=topic,
                        asked=self.target.replicas, reached=int(acknowledged))
        return reply

    # consuming ---------------------------------------------------------------------------

    async def fetch(
        self, topic: str, group: str, max_messages: int, wait: float, ack_timeout: float
    ) -> list[Delivery]:
        self._spec(topic)
        deadline = time.monotonic() + wait
        ack_ms = max(int(ack_timeout * 1000), 1)
        epoch = ""
        while True:
            woken = self.wakeups.event(topic)  # before looking: a wake-up from now on is not lost
            reply = await self._run("fetch", topic, group, max(max_messages, 1), ack_ms, epoch,
                                    self.max_groups, next(self._rr))
            status = reply[0]
            if status == 1:
                raise LookupError(f"topic {topic!r} does not exist")
            if status == 2:
                raise TooManyGroupsError(
                    f"topic {topic!r} already has {self.max_groups} consumer groups; delete unused ones")
            if status == 3:
                raise LookupError(f"group {group!r} of topic {topic!r} was deleted")
            epoch = reply[1].decode()
            if len(reply) > 3:
                return _deliveries(topic, reply)
            now = time.monotonic()
            if now >= deadline:
                return []
            pause = min(deadline - now, self.wakeups.poll_interval)
            if reply[2] >= 0:
                pause = min(pause, reply[2] / 1000 + 0.001)
            try:
                async with asyncio.timeout(max(pause, 0.001)):
                    await woken.wait()
            except TimeoutError:
                pass

    async def _settle(self, topic: str, group: str, mode: str, receipts: list[str], delay_ms: int = 0
                      ) -> tuple[list[int], list[Any], list[str]]:
        """Run the settle script for the well-formed receipts; (their indexes, reply, malformed)."""
        self._spec(topic)
        args: list[Any] = [group, mode, delay_ms]
        valid: list[int] = []
        malformed: list[str] = []
        for index, receipt in enumerate(receipts):
            parsed = parse_receipt(receipt)
            if parsed is None:
                malformed.append(receipt)
                continue
            valid.append(index)
            args += parsed
        reply = await self._run("settle", topic, *args) if valid else []
        return valid, reply, malformed

    async def ack(self, topic: str, group: str, receipts: list[str]) -> None:
        valid, stale_at, malformed = await self._settle(topic, group, "ack", receipts)
        _raise_stale(malformed + [receipts[valid[i - 1]] for i in stale_at])

    async def nack(self, topic: str, group: str, receipts: list[str], delay: float) -> None:
        valid, stale_at, malformed = await self._settle(topic, group, "nack", receipts,
                                                        max(int(delay * 1000), 0))
        _raise_stale(malformed + [receipts[valid[i - 1]] for i in stale_at])

    async def in_flight(self, topic: str, group: str, receipts: list[str]) -> dict[str, Delivery]:
        valid, reply, _ = await self._settle(topic, group, "peek", receipts)
        out: dict[str, Delivery] = {}
        for i in range(0, len(reply), 4):
            receipt = receipts[valid[reply[i] - 1]]
            partition, offset, _, _ = parse_receipt(receipt)  # type: ignore[misc]
            out[receipt] = Delivery(topic, partition, offset, reply[i + 1], reply[i + 3], reply[i + 2], receipt)
        return out

    async def seek(self, topic: str, group: str, positions: dict[int, int]) -> dict[int, int]:
        self._spec(topic)
        args: list[Any] = [group, self.max_groups]
        for partition, offset in positions.items():
            args += (partition, max(offset, 0))
        reply = await self._run("seek", topic, *args)
        if reply and reply[0] == -1:
            raise LookupError(f"topic {topic!r} does not exist")
        if reply and reply[0] == -2:
            raise TooManyGroupsError(
                f"topic {topic!r} already has {self.max_groups} consumer groups; delete unused ones")
        return {reply[i]: reply[i + 1] for i in range(0, len(reply), 2)}

    # inspection --------------------------------------------------------------------------

    async def _stats(self, topic: str) -> list[tuple[int, int, int]]:
        self._spec(topic)
        reply = await self._run("stats", topic)
        if not reply:
            raise LookupError(f"topic {topic!r} does not exist")
        return [(reply[i], reply[i + 1], reply[i + 2]) for i in range(0, len(reply), 3)]

    async def offsets_for_time(self, topic: str, timestamp_ms: int) -> dict[int, int]:
        self._spec(topic)
        return dict(enumerate(await self._run("times", topic, timestamp_ms)))

    async def bounds(self, topic: str) -> dict[int, tuple[int, int]]:
        return {p: (first, nxt) for p, (first, nxt, _) in enumerate(await self._stats(topic))}

    async def read(self, topic: str, partition: int, offset: int, max_messages: int) -> list[Delivery]:
        spec = self._spec(topic)
        if not 0 <= partition < spec.partitions:
            raise LookupError(f"topic {topic!r} has no partition {partition}")
        with self._guard():
            entries = await self.client.xrange(self._key(topic).stream(partition), min=str(max(offset, 0)),
                                               max="+", count=max(max_messages, 1))
        return [_delivery(topic, partition, entry_id, fields, 0, "") for entry_id, fields in entries]

    async def groups(self, topic: str) -> list[str]:
        self._spec(topic)
        with self._guard():
            names = await self.client.hkeys(self._key(topic).base + "groups")
        return sorted(g.decode() for g in names)

    async def delete_group(self, topic: str, group: str) -> bool:
        self._spec(topic)
        return bool(await self._run("drop_group", topic, group))

    async def group_stats(self, topic: str, group: str) -> GroupStats:
        self._spec(topic)
        reply = await self._run("group_stats", topic, group)
        if reply and reply[0] == -1:
            raise LookupError(f"group {group!r} has not consumed {topic!r}")
        parts = {i // 4: {"committed": reply[i], "next": reply[i + 1], "lag": reply[i + 2],
                          "inFlight": reply[i + 3]} for i in range(0, len(reply), 4)}
        return GroupStats(group, sum(v["lag"] for v in parts.values()),
                          sum(v["inFlight"] for v in parts.values()), parts)

    async def topic_stats(self, topic: str) -> TopicStats:
        stats = await self._stats(topic)
        return TopicStats(topic, len(stats), sum(n - f for f, n, _ in stats), sum(b for _, _, b in stats),
                          [f for f, _, _ in stats], [n for _, n, _ in stats])

    async def enforce_retention(self, now_ms: int) -> None:
        for topic, spec in list(self._topics.items()):
            removed = await self._run("retention", topic, now_ms, int(spec.retention * 1000),
                                      int(spec.retention_bytes or 0))
            if removed:
                log.debug("retention removed messages", topic=topic, count=removed)


_SOURCES = {
    "publish": lua_delivery.PUBLISH, "fetch": lua_delivery.FETCH, "settle": lua_delivery.SETTLE,
    "ensure": lua_admin.ENSURE, "drop_topic": lua_admin.DROP_TOPIC, "seek": lua_admin.SEEK,
    "drop_group": lua_admin.DROP_GROUP, "stats": lua_admin.STATS, "group_stats": lua_admin.GROUP_STATS,
    "retention": lua_admin.RETENTION, "times": lua_admin.TIMES,
}


def _raise_stale(stale: list[str]) -> None:
    if stale:
        raise StaleReceiptError(f"not in flight (acked, timed out or redelivered): {', '.join(stale[:10])}")


def _deliveries(topic: str, reply: list[Any]) -> list[Delivery]:
    """Deliveries from a fetch reply: six values each after the three-value header."""
    out = []
    for i in range(3, len(reply), 6):
        partition, offset, ts, attempt, epoch, payload = reply[i : i + 6]
        out.append(Delivery(topic, partition, offset, ts, payload, attempt,
                            f"{partition}:{offset}:{attempt}:{epoch.decode()}"))
    return out


def _delivery(topic: str, partition: int, entry_id: bytes, fields: dict[bytes, bytes], attempt: int,
              receipt: str) -> Delivery:
    offset = int(entry_id.split(b"-", 1)[0])
    return Delivery(topic, partition, offset, int(fields.get(b"t", b"0")), fields.get(b"d", b""), attempt, receipt)
