"""The NATS JetStream broker: Mezzo's messaging on streams and durable pull consumers shared by many nodes.

Everything lives in JetStream under the URL's prefix (``nats://host:4222?prefix=MEZZO``):
a stream per topic partition, a state stream per topic (delivery and key records, and
the topic's settings), a dedup-claim stream for multi-partition topics, and a durable
consumer per group and partition. Nodes keep only caches that cannot make results
wrong, and tell each other about publishes, acks, nacks and seeks on a core NATS
subject (``<prefix>.w.<topic>``) so waiting fetches wake at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from mezzo.messaging.backend import (
    Delivery,
    Feature,
    GroupStats,
    Position,
    Record,
    StaleReceiptError,
    TopicStats,
)
from mezzo.messaging.backends.nats.deliveries import Deliveries
from mezzo.messaging.backends.nats.groups import Groups
from mezzo.messaging.backends.nats.jetstream import TIMESTAMP, BrokerUnavailable, JetStream
from mezzo.messaging.backends.nats.names import Names, NatsOptions, parse_url, token
from mezzo.messaging.backends.nats.publisher import HEADER_ROOM, Publisher
from mezzo.messaging.backends.nats.topics import (
    Topic,
    apply_stream,
    delete_streams,
    discover,
    ids_config,
    offsets,
    partition_config,
    partition_states,
    state_config,
    stored_spec,
)
from mezzo.messaging.model import TopicSpec
from mezzo.node.settings import Settings

log = structlog.get_logger("mezzo.messaging.nats")
MAX_GROUPS = 1000
TIMEOUT = 5.0  # seconds for any one JetStream request
CONNECT_TIMEOUT = 10.0
DEFAULT_ACK_WAIT = 30.0  # for consumers a seek creates before any fetch named an ack timeout


class NatsBroker:
    """Broker on a NATS JetStream server (or cluster); any number of nodes may share one prefix."""

    engine = "nats"
    features = frozenset({Feature.PARTITIONS, Feature.KEY_ORDERING, Feature.SEEK, Feature.RETENTION})
    record_limit: int | None = None  # known once connected: the server's max_payload less room for headers

    def __init__(self, options: NatsOptions, *, timeout: float = TIMEOUT,
                 connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.options = options
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_groups = MAX_GROUPS
        self._topics: dict[str, Topic] = {}
        self._by_token: dict[str, Topic] = {}
        self._lock = asyncio.Lock()
        self._nc: Client | None = None

    # lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        nc = Client()
        try:  # the first connection must succeed soon; once up, the client reconnects forever
            await asyncio.wait_for(nc.connect(
                servers=self.options.servers, name="mezzo-broker", connect_timeout=3, reconnect_time_wait=1,
                max_reconnect_attempts=-1, error_cb=self._on_error), self.connect_timeout)
        except Exception as exc:
            with contextlib.suppress(Exception):
                await nc.close()
            raise BrokerUnavailable(f"cannot reach NATS at {', '.join(self.options.servers)}: "
                                    f"{type(exc).__name__} {exc}") from exc
        self._nc = nc
        self.record_limit = nc.max_payload - HEADER_ROOM
        self.js = JetStream(self._nc, self.timeout)
        self._groups = Groups(self.js)
        self.deliveries = Deliveries(self.js, self._groups)
        self.publisher = Publisher(self.js)
        await self._nc.subscribe(f"{self.options.prefix}.w.*", cb=self._on_wake)
        for ref, spec in await discover(self.js, self.options.prefix):
            self._remember(ref, spec)

    async def close(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(Exception):  # every request of ours has completed by now: no drain
                await asyncio.wait_for(self._nc.close(), self.timeout)
        self._topics.clear()
        self._by_token.clear()

    async def ready(self) -> bool:
        return self._nc is not None and await self.js.wait_ready()

    @staticmethod
    async def _on_error(exc: Exception) -> None:
        log.warning("NATS connection problem", error=f"{type(exc).__name__}: {exc}")

    # wake-ups --------------------------------------------------------------------------

    async def _on_wake(self, msg: Msg) -> None:
        """Another fetch may find something: now (empty message) or at the announced times (ms)."""
        topic = self._by_token.get(msg.subject.rsplit(".", 1)[-1])
        if topic is None:
            return
        if not msg.data:
            topic.wake()
            return
        with contextlib.suppress(ValueError):
            topic.add_due(int(msg.data) / 1000)

    async def _announce(self, topic: Topic, due: float | None = None) -> None:
        """Tell every node (this one included) to look again now, or at ``due`` (wall clock)."""
        assert self._nc is not None
        with contextlib.suppress(Exception):  # a lost wake-up costs one poll interval, not correctness
            await self._nc.publish(topic.names.wake_subject, b"" if due is None else b"%d" % int(due * 1000))
        if due is None:
            topic.wake()
        else:
            topic.add_due(due)

    # topics ----------------------------------------------------------------------------

    def _remember(self, ref: str, spec: TopicSpec) -> Topic:
        topic = self._topics.get(ref)
        if topic is None:
            topic = Topic(ref, Names(self.options.prefix, token(ref)), spec)
            self._topics[ref] = topic
            self._by_token[topic.names.t] = topic
        topic.spec = spec
        return topic

    async def ensure_topic(self, topic: str, spec: TopicSpec) -> None:
        async with self._lock:
            names = Names(self.options.prefix, token(topic))
            stored = await stored_spec(self.js, names)
            known = self._topics.get(topic)
            partitions = max(spec.partitions, stored.partitions if stored else 0,
                             known.partitions if known else 0)
            spec = spec.model_copy(update={"partitions": partitions})  # partitions only grow
            for p in range(partitions):
                await apply_stream(self.js, partition_config(names, p, topic, spec, self.options))
            if partitions > 1 and spec.dedup_window > 0:
                await apply_stream(self.js, ids_config(names, spec, self.options))
            await apply_stream(self.js, state_config(names, topic, spec, self.options))  # last: now it exists
            self._remember(topic, spec)

    async def delete_topic(self, topic: str) -> None:
        async with self._lock:
            state = self._topics.pop(topic, None)
            names = state.names if state else Names(self.options.prefix, token(topic))
            stored = await stored_spec(self.js, names)
            partitions = max(state.partitions if state else 0, stored.partitions if stored else 0)
            await delete_streams(self.js, names, partitions)
            if state is not None:
                self._by_token.pop(names.t, None)
                self._groups.forget(state)
                state.wake()  # waiting fetches notice and give up

    def topics(self) -> list[str]:
        return sorted(self._topics)

    def has_topic(self, topic: str) -> bool:
        return topic in self._topics

    def _topic(self, topic: str) -> Topic:
        try:
            return self._topics[topic]
        except KeyError:
            raise LookupError(f"topic {topic!r} does not exist") from None

    # publishing and consuming ----------------------------------------------------------

    async def publish(self, topic: str, records: list[Record], partitions: list[int]) -> list[Position]:
        state = self._topic(topic)
        positions = await self.publisher.publish(state, records, partitions)
        if any(not p.duplicate for p in positions):
            await self._announce(state)
        return positions

    async def fetch(
        self, topic: str, group: str, max_messages: int, wait: float, ack_timeout: float
    ) -> list[Delivery]:
        state = self._topic(topic)
        deadline = time.monotonic() + wait
        while True:
            gstate = await self._groups.ensure(state, group, ack_timeout, self.max_groups)
            changed = state.changed
            out = await self.deliveries.take(state, gstate, max_messages)
            if out:
                await self._announce(state, time.time() + ack_timeout)  # when a redelivery may be due
                return out
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(state.wait_time(remaining)):
                    await changed.wait()
            if self._topics.get(topic) is not state:
                raise LookupError(f"topic {topic!r} was deleted")

    async def ack(self, topic: str, group: str, receipts: list[str]) -> None:
        state = self._topic(topic)
        stale = await self.deliveries.ack(state, group, receipts)
        if len(stale) < len(receipts):
            await self._announce(state)  # an ack may release a key or room under the pending limit
        _raise_stale(stale)

    async def nack(self, topic: str, group: str, receipts: list[str], delay: float) -> None:
        state = self._topic(topic)
        stale = await self.deliveries.nack(state, group, receipts, delay)
        if len(stale) < len(receipts):
            await self._announce(state, time.time() + delay if delay > 0 else None)
        _raise_stale(stale)

    async def in_flight(self, topic: str, group: str, receipts: list[str]) -> dict[str, Delivery]:
        return await self.deliveries.in_flight(self._topic(topic), group, receipts)

    async def seek(self, topic: str, group: str, positions: dict[int, int]) -> dict[int, int]:
        state = self._topic(topic)
        applied = await self._groups.seek(state, group, positions, self._groups.ack_wait(state, group, DEFAULT_ACK_WAIT),
                                          self.max_groups)
        await self._announce(state)
        return applied

    # inspection ------------------------------------------------------------------------

    async def offsets_for_time(self, topic: str, timestamp_ms: int) -> dict[int, int]:
        state = self._topic(topic)
        at = datetime.fromtimestamp(max(timestamp_ms, 0) / 1000, UTC)
        found = await asyncio.gather(*(self._offset_at(state, p, at) for p in range(state.partitions)))
        return dict(enumerate(found))

    async def _offset_at(self, state: Topic, p: int, at: datetime) -> int:
        """JetStream finds the first message stored at or after ``at``: an ephemeral consumer starting there."""
        msgs = await self._peek(state, p, ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME,
                                                         opt_start_time=at), 1)
        if msgs:
            return msgs[0].metadata.sequence.stream - 1
        info = await self.js.manager.stream_info(state.names.partition_stream(p))
        return offsets(info.state)[1]

    async def _peek(self, state: Topic, p: int, config: ConsumerConfig, batch: int) -> list[Msg]:
        """Messages from a short-lived consumer (no acks, in memory, deleted right after)."""
        stream = state.names.partition_stream(p)
        config.ack_policy = AckPolicy.NONE
        config.mem_storage = True
        config.inactive_threshold = 30.0
        config.num_replicas = 1
        info = await self.js.manager.add_consumer(stream, config)
        try:
            return await self.js.pull(stream, info.name, batch) or []
        finally:
            with contextlib.suppress(Exception):
                await self.js.manager.delete_consumer(stream, info.name)

    async def bounds(self, topic: str) -> dict[int, tuple[int, int]]:
        return {p: offsets(s) for p, s in enumerate(await partition_states(self.js, self._topic(topic)))}

    async def read(self, topic: str, partition: int, offset: int, max_messages: int) -> list[Delivery]:
        state = self._topic(topic)
        if not 0 <= partition < state.partitions:
            raise LookupError(f"topic {topic!r} has no partition {partition}")
        info = await self.js.manager.stream_info(state.names.partition_stream(partition))
        first, nxt = offsets(info.state)
        start = max(offset, first)
        if start >= nxt or max_messages <= 0:
            return []
        msgs = await self._peek(state, partition, ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start + 1), min(max_messages, nxt - start))
        return [Delivery(topic, partition, m.metadata.sequence.stream - 1, int((m.headers or {}).get(TIMESTAMP) or 0),
                         m.data, 0, "") for m in msgs]

    async def groups(self, topic: str) -> list[str]:
        return await self._groups.names(self._topic(topic))

    async def delete_group(self, topic: str, group: str) -> bool:
        state = self._topic(topic)
        existed = await self._groups.delete(state, group)
        await self._announce(state)  # fetches on the deleted group start over
        return existed

    async def group_stats(self, topic: str, group: str) -> GroupStats:
        return await self._groups.stats(self._topic(topic), group)

    async def topic_stats(self, topic: str) -> TopicStats:
        state = self._topic(topic)
        states = await partition_states(self.js, state)
        bounds = [offsets(s) for s in states]
        return TopicStats(topic, state.partitions, sum(s.messages for s in states), sum(s.bytes for s in states),
                          [b[0] for b in bounds], [b[1] for b in bounds])

    async def enforce_retention(self, now_ms: int) -> None:
        """Nothing to do: each partition stream applies MaxAge and MaxBytes itself, continuously."""


def _raise_stale(stale: list[str]) -> None:
    if stale:
        raise StaleReceiptError(f"not in flight (acked, timed out or redelivered): {', '.join(stale[:10])}")


def open_broker(url: str, settings: Settings) -> NatsBroker:
    """The broker for ``MEZZO_BROKER=nats://host:port?prefix=P`` (``settings`` has nothing NATS-specific)."""
    return NatsBroker(parse_url(url))
