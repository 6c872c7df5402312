"""Topics as JetStream streams: one stream per partition, one for group state, one for topic-wide dedup.

A partition stream's sequence numbers are the partition's offsets (offset = seq - 1):
messages are never deleted from the inside, so offsets stay contiguous, and
JetStream's MaxAge / MaxBytes limits are the topic's retention. The state stream
(one message per subject) holds delivery and key records of every consumer group;
its description carries the topic's name and settings, which is how a node that
starts later finds the topics that already exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import orjson
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig, StreamInfo
from nats.js.errors import APIError, NotFoundError

from mezzo.messaging.backends.nats.jetstream import STREAM_NOT_FOUND, JetStream
from mezzo.messaging.backends.nats.names import Names, NatsOptions, state_stream_prefix
from mezzo.messaging.model import TopicSpec

STREAM_NAME_IN_USE = 10058
POLL = 1.0  # a waiting fetch looks again at least this often (redeliveries it was not told about)
STATE_MIN_AGE = 86400.0  # key records of keys quiet for longer go (the ack floor stands in for them)
DUE_GRACE = 0.03  # JetStream's redelivery timer fires a little after the due time we announce


class Topic:
    """What a node knows about one topic: names, settings, and the signal that wakes waiting fetches."""

    def __init__(self, ref: str, names: Names, spec: TopicSpec) -> None:
        self.ref = ref
        self.names = names
        self.spec = spec
        self.changed = asyncio.Event()  # replaced on every wake-up
        self._dues: list[float] = []  # wall-clock times when a redelivery becomes due (sorted, short)

    @property
    def partitions(self) -> int:
        return self.spec.partitions

    def wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    def add_due(self, at: float) -> None:
        """Remember when JetStream will redeliver something (announced by whichever node caused it).

        Waiting fetches wake when this is earlier than anything they knew, to shorten their sleep."""
        now = time.time()
        at += DUE_GRACE
        dues = [d for d in self._dues if d > now]
        earliest = dues[0] if dues else float("inf")
        if all(abs(d - at) > 0.01 for d in dues):
            dues.append(at)
            dues.sort()
        self._dues = dues[:256]
        if at < earliest:
            self.wake()

    def wait_time(self, remaining: float) -> float:
        """How long a fetch may sleep: until the deadline, the next due redelivery, or the next poll."""
        now = time.time()
        due = next((d for d in self._dues if d > now), None)
        limit = min(remaining, POLL)
        return max(min(limit, due - now) if due is not None else limit, 0.001)


def partition_config(names: Names, p: int, ref: str, spec: TopicSpec, options: NatsOptions) -> StreamConfig:
    return StreamConfig(
        name=names.partition_stream(p), description=orjson.dumps({"topic": ref, "partition": p}).decode(),
        subjects=[names.partition_subject(p, "*")], retention=RetentionPolicy.LIMITS,
        max_age=spec.retention, max_bytes=spec.retention_bytes or -1, discard=DiscardPolicy.OLD,
        duplicate_window=_window(spec.dedup_window, spec.retention), **_placement(options))


def state_config(names: Names, ref: str, spec: TopicSpec, options: NatsOptions) -> StreamConfig:
    meta = {"topic": ref, "spec": spec.model_dump(mode="json", by_alias=True)}
    return StreamConfig(
        name=names.state_stream, description=orjson.dumps(meta).decode(), subjects=[names.state_subjects],
        retention=RetentionPolicy.LIMITS, max_msgs_per_subject=1, discard=DiscardPolicy.OLD,
        max_age=max(spec.retention, STATE_MIN_AGE), **_placement(options))


def ids_config(names: Names, spec: TopicSpec, options: NatsOptions) -> StreamConfig:
    return StreamConfig(
        name=names.ids_stream, subjects=[f"{names.prefix}.i.{names.t}.*"], retention=RetentionPolicy.LIMITS,
        max_msgs_per_subject=1, max_age=max(min(spec.dedup_window, spec.retention), 0.1),
        discard=DiscardPolicy.OLD, **_placement(options))


def _window(dedup: float, max_age: float) -> float:
    """JetStream's duplicate window: at least 100 ms and at most MaxAge; 0 lets the server choose (unused)."""
    window = min(dedup, max_age)
    return window if window >= 0.1 else 0


def _placement(options: NatsOptions) -> dict[str, Any]:
    return {"storage": StorageType.MEMORY if options.memory else StorageType.FILE,
            "num_replicas": options.replicas, "allow_direct": True}


async def apply_stream(js: JetStream, config: StreamConfig) -> None:
    """Create the stream, or bring an existing one to ``config``."""
    try:
        await js.manager.add_stream(config)
    except APIError as exc:
        if exc.err_code != STREAM_NAME_IN_USE:
            raise
        await js.manager.update_stream(config)


async def stored_spec(js: JetStream, names: Names) -> TopicSpec | None:
    """The settings a topic was last ensured with (by any node), or None when it does not exist."""
    try:
        info = await js.manager.stream_info(names.state_stream)
    except NotFoundError:
        return None
    return _meta(info)[1]


def _meta(info: StreamInfo) -> tuple[str, TopicSpec]:
    meta = orjson.loads(info.config.description or "{}")
    return meta["topic"], TopicSpec.model_validate(meta["spec"])


async def discover(js: JetStream, prefix: str) -> list[tuple[str, TopicSpec]]:
    """Every topic under ``prefix``: the state streams, found by their subjects."""
    found: list[tuple[str, TopicSpec]] = []
    offset = 0
    while True:
        page = await js.api("STREAM.NAMES", {"offset": offset, "subject": f"{prefix}.s.>"})
        names = [n for n in page.get("streams") or [] if n.startswith(state_stream_prefix(prefix))]
        for name in names:
            with contextlib.suppress(NotFoundError, KeyError, ValueError):  # deleted meanwhile, or not ours
                found.append(_meta(await js.manager.stream_info(name)))
        offset += len(page.get("streams") or [])
        if not page.get("streams") or offset >= page.get("total", 0):
            return found


async def delete_streams(js: JetStream, names: Names, partitions: int) -> None:
    streams = [names.state_stream, names.ids_stream, *(names.partition_stream(p) for p in range(partitions))]
    for name in streams:
        try:
            await js.manager.delete_stream(name)
        except NotFoundError:
            pass
        except APIError as exc:
            if exc.err_code != STREAM_NOT_FOUND:
                raise


async def partition_states(js: JetStream, topic: Topic) -> list[Any]:
    """Each partition stream's state (messages, bytes, first_seq, last_seq)."""
    infos = await asyncio.gather(*(js.manager.stream_info(topic.names.partition_stream(p))
                                   for p in range(topic.partitions)))
    return [info.state for info in infos]


def offsets(state: Any) -> tuple[int, int]:
    """(first offset, next offset) of a partition: offsets are sequences minus one."""
    return (state.first_seq - 1 if state.messages else state.last_seq), state.last_seq
