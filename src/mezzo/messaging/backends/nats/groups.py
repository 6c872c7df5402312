"""Consumer groups as durable JetStream pull consumers, one per group and partition.

JetStream keeps each group's progress (ack floor, pending deliveries, redelivery
timers) on the server, so every node sees the same group. A seek deletes and
recreates the partition's consumer at a start sequence, and drops the group's
delivery and key records for that partition, so receipts from before it go stale.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy, ReplayPolicy
from nats.js.errors import APIError, NotFoundError

from mezzo.messaging.backend import GroupStats, TooManyGroupsError
from mezzo.messaging.backends.nats.jetstream import CONSUMER_NOT_FOUND, JetStream
from mezzo.messaging.backends.nats.names import consumer_name, token, untoken
from mezzo.messaging.backends.nats.topics import Topic, offsets, partition_states

MAX_ACK_PENDING = 20_000  # deliveries (handed out, parked or waiting for a retry) per group and partition


@dataclass(slots=True)
class Group:
    """A group this node has made sure exists, with the ack wait its consumers were last given."""

    name: str
    consumer: str
    token: str
    ack_wait: float
    partitions: int
    rr: int = 0  # partition to look at first, for fairness
    missing: set[int] = field(default_factory=set)  # partitions whose consumer did not answer a pull


def _config(group: str, ack_wait: float, start_seq: int | None = None) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=consumer_name(group), description=group, ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait, max_deliver=-1, max_ack_pending=MAX_ACK_PENDING, replay_policy=ReplayPolicy.INSTANT,
        deliver_policy=DeliverPolicy.ALL if start_seq is None else DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=start_seq)


class Groups:
    def __init__(self, js: JetStream) -> None:
        self.js = js
        self._known: dict[tuple[str, str], Group] = {}

    async def ensure(self, topic: Topic, group: str, ack_wait: float, max_groups: int) -> Group:
        """The group's consumers exist on every partition with this ack wait (created on first use)."""
        known = self._known.get((topic.ref, group))
        if known and known.partitions == topic.partitions and known.ack_wait == ack_wait and not known.missing:
            return known
        if known is None and await self._info(topic, group, 0) is None:
            if await self._count(topic) >= max_groups:
                raise TooManyGroupsError(
                    f"topic {topic.ref!r} already has {max_groups} consumer groups; delete unused ones")
        await asyncio.gather(*(self._ensure_partition(topic, group, p, ack_wait) for p in range(topic.partitions)))
        state = Group(group, consumer_name(group), token(group), ack_wait, topic.partitions,
                      known.rr if known else 0)
        self._known[(topic.ref, group)] = state
        return state

    async def _ensure_partition(self, topic: Topic, group: str, p: int, ack_wait: float) -> None:
        info = await self._info(topic, group, p)
        if info is None:
            try:
                await self.js.manager.add_consumer(topic.names.partition_stream(p), _config(group, ack_wait))
                return
            except APIError:  # another node created it meanwhile, perhaps at a seek position
                info = await self._info(topic, group, p)
                if info is None:
                    raise
        if info.config.ack_wait != ack_wait:
            info.config.ack_wait = ack_wait  # an updatable setting: the rest of the config stays
            await self.js.manager.add_consumer(topic.names.partition_stream(p), info.config)

    async def _info(self, topic: Topic, group: str, p: int) -> ConsumerInfo | None:
        try:
            return await self.js.manager.consumer_info(topic.names.partition_stream(p), consumer_name(group))
        except NotFoundError:
            return None
        except APIError as exc:
            if exc.err_code == CONSUMER_NOT_FOUND:
                return None
            raise

    async def _names(self, topic: Topic) -> list[str]:
        """Durable consumer names on partition 0: one per group."""
        stream = topic.names.partition_stream(0)
        out: list[str] = []
        while True:
            page = await self.js.api(f"CONSUMER.NAMES.{stream}", {"offset": len(out)})
            batch = page.get("consumers") or []
            out += batch
            if not batch or len(out) >= page.get("total", 0):
                return [n for n in out if n.startswith("G_")]

    async def _count(self, topic: Topic) -> int:
        return len(await self._names(topic))

    async def names(self, topic: Topic) -> list[str]:
        found: list[str] = []
        for name in await self._names(topic):
            decoded = untoken(name[2:])
            if decoded is None:  # a hashed name: the group's name is in the description
                info = await self._info_by_consumer(topic, name)
                decoded = info.config.description if info else None
            if decoded:
                found.append(decoded)
        return sorted(found)

    async def _info_by_consumer(self, topic: Topic, consumer: str) -> ConsumerInfo | None:
        with contextlib.suppress(NotFoundError):
            return await self.js.manager.consumer_info(topic.names.partition_stream(0), consumer)
        return None

    def ack_wait(self, topic: Topic, group: str, default: float) -> float:
        known = self._known.get((topic.ref, group))
        return known.ack_wait if known else default

    def forget(self, topic: Topic, group: str | None = None) -> None:
        for ref, name in list(self._known):
            if ref == topic.ref and (group is None or name == group):
                del self._known[(ref, name)]

    async def delete(self, topic: Topic, group: str) -> bool:
        existed = await self._info(topic, group, 0) is not None
        for p in range(topic.partitions):
            await self._delete_consumer(topic, group, p)
        await self.js.purge(topic.names.state_stream, topic.names.group_records(token(group)))
        self.forget(topic, group)
        return existed

    async def _delete_consumer(self, topic: Topic, group: str, p: int) -> None:
        try:
            await self.js.manager.delete_consumer(topic.names.partition_stream(p), consumer_name(group))
        except NotFoundError:
            pass
        except APIError as exc:
            if exc.err_code != CONSUMER_NOT_FOUND:
                raise

    async def seek(self, topic: Topic, group: str, positions: dict[int, int], ack_wait: float,
                   max_groups: int) -> dict[int, int]:
        """Restart the group's consumers at these offsets (clamped to what is retained)."""
        await self.ensure(topic, group, ack_wait, max_groups)
        states = await partition_states(self.js, topic)
        applied: dict[int, int] = {}
        for p, offset in positions.items():
            if not 0 <= p < topic.partitions:
                raise LookupError(f"topic {topic.ref!r} has no partition {p}")
            first, nxt = offsets(states[p])
            target = min(max(offset, first), nxt)
            await self._restart(topic, group, p, target + 1, ack_wait)
            applied[p] = target
        return applied

    async def _restart(self, topic: Topic, group: str, p: int, start_seq: int, ack_wait: float) -> None:
        stream = topic.names.partition_stream(p)
        for _ in range(5):  # a fetch on another node may recreate the consumer between delete and create
            await self._delete_consumer(topic, group, p)
            await self.js.purge(topic.names.state_stream, topic.names.group_records(token(group), p))
            try:
                await self.js.manager.add_consumer(stream, _config(group, ack_wait, start_seq))
                return
            except APIError:
                continue
        raise RuntimeError(f"could not seek group {group!r} of {topic.ref!r}: its consumer keeps being recreated")

    async def floor(self, topic: Topic, group: str, p: int) -> int:
        """The highest sequence below which the group has acked or skipped every message."""
        info, stream = await asyncio.gather(self._info(topic, group, p),
                                            self.js.manager.stream_info(topic.names.partition_stream(p)))
        first, _ = offsets(stream.state)
        if info is None:
            return first
        floors = [first, info.ack_floor.stream_seq if info.ack_floor else 0]
        if info.config.opt_start_seq:  # a consumer a seek created: everything before its start counts as done
            floors.append(info.config.opt_start_seq - 1)
        if not info.num_ack_pending and info.delivered:  # JetStream's ack floor lags when nothing is pending
            floors.append(info.delivered.stream_seq)
        return max(floors)

    async def stats(self, topic: Topic, group: str) -> GroupStats:
        infos = await asyncio.gather(*(self._info(topic, group, p) for p in range(topic.partitions)))
        if infos[0] is None:
            raise LookupError(f"group {group!r} has not consumed {topic.ref!r}")
        states = await partition_states(self.js, topic)
        parts: dict[int, dict[str, int]] = {}
        for p, (info, state) in enumerate(zip(infos, states, strict=True)):
            first, nxt = offsets(state)
            if info is None:
                parts[p] = {"committed": first, "next": nxt, "lag": nxt - first, "inFlight": 0}
                continue
            floor = info.ack_floor.stream_seq if info.ack_floor else 0
            parts[p] = {"committed": max(floor, first), "next": nxt,
                        "lag": (info.num_pending or 0) + (info.num_ack_pending or 0),
                        "inFlight": info.num_ack_pending or 0}
        return GroupStats(group, sum(v["lag"] for v in parts.values()),
                          sum(v["inFlight"] for v in parts.values()), parts)
