"""Messaging semantics on any broker engine: publish, pull, ack/nack with backoff, dead letters, delays, TTL, filters."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import re
import time
import uuid
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Literal

import orjson
import structlog
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from mezzo.messaging.backend import Broker, Delivery, Position, Record, StaleReceiptError
from mezzo.messaging.codec import Envelope, data_fields, is_json, plain_envelope, split_envelope
from mezzo.messaging.filters import compile_filter
from mezzo.messaging.metrics import MessagingMetrics
from mezzo.messaging.model import SubscriptionSpec, Tag, TopicSpec
from mezzo.messaging.trace import MessageTrace
from mezzo.resources.types import Duration, Name
from mezzo.storage.kv import Delete, KVStore, Put
from mezzo.telemetry.metrics import Metrics

log = structlog.get_logger("mezzo.messaging")
DELAYED = "/messaging/delayed/"  # KV keys: DELAYED + due_ms (15 digits) + "/" + topic ref + "/" + id
DLQ_ATTR = "mezzo.dlq."
LETTER_ROOM = 1024  # what dead-letter attributes add to a message (topic and group names up to 253 each)
REPLAY_GROUP = "_replay"  # a name no user group can have (names start with a letter or digit)
REPLAY_FOR = "mezzo.replay.group"  # a replayed dead letter goes to the group that gave up on it only
OCTETS = "application/octet-stream"
RECEIPT = re.compile(r"[0-9]{1,19}(?::[0-9]{1,19}){3}")  # partition:offset:attempt:n, from every engine
SEEK_TO = TypeAdapter(Literal["earliest", "latest"] | int | dict[int, int] | datetime)
SEEK_HELP = "to is earliest, latest, an offset, {partition: offset} or an RFC 3339 time"


class TopicNotFound(LookupError):
    pass


class MessageTooLarge(Exception):
    def __init__(self, index: int, size: int, limit: int, detail: str | None = None) -> None:
        super().__init__(detail or f"message {index} is {size} bytes; topic limit is {limit} bytes")
        self.index, self.size, self.limit = index, size, limit


def checked_receipts(receipts: list[str]) -> list[str]:
    """``receipts``, if each has the shape every engine gives them (a stale one has it too)."""
    if all(map(RECEIPT.fullmatch, receipts)):
        return receipts
    bad = next(r for r in receipts if not RECEIPT.fullmatch(r))
    raise PydanticCustomError("receipt", "{bad} is not a receipt: send them as deliveries carry them "
                              "(partition:offset:attempt:n)", {"bad": repr(bad[:40])})


def engine_limit(broker: Broker, index: int, size: int) -> None:
    """Refuse a message (at publish time, delayed and half messages too) that the engine could not
    store with Mezzo's envelope, or not as a dead letter (which adds attributes): NATS takes at most
    its server's ``max_payload``."""
    limit = getattr(broker, "record_limit", None)  # engines written before it have no limit of their own
    if limit is not None and size > limit - LETTER_ROOM:
        raise MessageTooLarge(index, size, limit - LETTER_ROOM,
                              f"message {index} is {size} bytes with Mezzo's envelope; the {broker.engine} engine "
                              f"takes at most {limit - LETTER_ROOM} bytes per message")


class PublishMessage(BaseModel):
    """One message to publish (HTTP JSON body, SDK)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    id: str | None = Field(None, min_length=1, max_length=200, description="dedup id; generated when absent")
    key: str | None = Field(None, min_length=1, max_length=512, description="ordering key")
    tags: list[Tag] = Field(default_factory=list, max_length=32)
    attributes: dict[str, str] = Field(default_factory=dict, max_length=64)
    data: Any = None
    data_base64: str | None = Field(None, alias="dataBase64")
    content_type: str | None = Field(None, alias="contentType", max_length=200)
    delay: Duration | None = Field(None, description="deliver after this long")
    deliver_at: datetime | None = Field(None, alias="deliverAt", description="deliver at this time")
    ttl: Duration | None = Field(None, gt=0, description="drop if not delivered within this long")

    # on the second field of each pair, so an error names it (``data`` and ``delay`` come first)
    @field_validator("data_base64")
    @classmethod
    def _one_data(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("data") is not None:
            raise PydanticCustomError("conflict", "give data or dataBase64, not both")
        if value is not None:
            try:
                base64.b64decode(value, validate=True)
            except ValueError:
                raise PydanticCustomError("base64", "not valid base64 (RFC 4648, with padding)") from None
        return value

    @field_validator("deliver_at")
    @classmethod
    def _one_time(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        if value is not None and info.data.get("delay") is not None:
            raise PydanticCustomError("conflict", "give delay or deliverAt, not both")
        return value

    @classmethod
    def options(cls, head: dict[str, Any]) -> PublishMessage:
        """A binary frame's options (the JSON API's message fields without its data)."""
        if "data" in head or "dataBase64" in head or "data_base64" in head:
            raise ValueError("a frame carries its data after the head, not in it")
        return cls.model_validate(head)

    def body(self) -> tuple[bytes, str | None]:
        if self.data_base64 is not None:
            try:
                return base64.b64decode(self.data_base64, validate=True), self.content_type or "application/octet-stream"
            except ValueError:
                raise ValueError("dataBase64 is not valid base64") from None
        if self.data is None:
            return b"", self.content_type
        if isinstance(self.data, str) and self.content_type and not is_json(self.content_type):
            return self.data.encode(), self.content_type
        return orjson.dumps(self.data), self.content_type or "application/json"


_PLAIN = PublishMessage()  # the options of a frame that has none


@dataclass(slots=True)
class PublishResult:
    id: str
    partition: int | None = None
    offset: int | None = None
    duplicate: bool = False
    scheduled_ms: int | None = None

    def to_json(self) -> dict[str, Any]:
        if self.scheduled_ms is not None:
            return {"id": self.id, "scheduledAt": iso(self.scheduled_ms)}
        return {"id": self.id, "partition": self.partition, "offset": self.offset, "duplicate": self.duplicate}


@dataclass(slots=True)
class Delivered:
    """A message handed to a consumer. Plain data: the hot path builds thousands per second."""

    id: str
    topic: str
    partition: int
    offset: int
    key: str | None
    tags: list[str]
    attributes: dict[str, str]
    content_type: str | None
    data: Any
    data_base64: str | None
    published_ms: int
    attempt: int
    receipt: str | None

    @property
    def published_at(self) -> datetime:
        return datetime.fromtimestamp(self.published_ms / 1000, UTC)

    def to_json(self) -> dict[str, Any]:
        """The wire shape (``OutMessage`` in the SDK), without empty fields."""
        out: dict[str, Any] = {"id": self.id, "topic": self.topic, "partition": self.partition, "offset": self.offset,
                               "tags": self.tags, "attributes": self.attributes, "publishedAt": iso(self.published_ms),
                               "attempt": self.attempt}
        if self.key is not None:
            out["key"] = self.key
        if self.content_type is not None:
            out["contentType"] = self.content_type
        if self.data_base64 is not None:
            out["dataBase64"] = self.data_base64
        elif self.data is not None:
            out["data"] = self.data
        if self.receipt:
            out["receipt"] = self.receipt
        return out


@lru_cache(maxsize=256)  # the messages of a batch share their publish time: format it once
def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


@dataclass(slots=True)
class Prepared:
    envelope: Envelope
    key: str | None
    due_ms: int | None


def topic_ref(namespace: str, topic: str) -> str:
    return f"{namespace}/{topic}"


def dead_letter_topic(topic: str, group: str, spec: SubscriptionSpec | None) -> str:
    if spec is not None and spec.dead_letter_topic:
        return spec.dead_letter_topic
    return f"{topic}.{group}.dlq"[:253]


class MessagingService:
    def __init__(self, broker: Broker, store: KVStore, *, auto_create: bool = True, metrics: Metrics | None = None) -> None:
        self.broker = broker
        self.store = store
        self.auto_create = auto_create
        self.topics: dict[str, TopicSpec] = {}  # ref -> spec, from Topic resources
        self.subscriptions: dict[tuple[str, str], SubscriptionSpec] = {}  # (topic ref, group) -> spec
        self.create_topic: Any = None  # async (namespace, topic, user) -> None, set by the module
        self._rr = itertools.count()
        self._next_id = 0
        self._id_prefix = uuid.uuid4().hex[:16]  # unique per start; a counter makes the rest
        self._scheduler_wake = asyncio.Event()
        self.metrics = MessagingMetrics(metrics, broker)
        self.trace = MessageTrace(broker)

    # topics ------------------------------------------------------------------------

    async def topic_changed(self, namespace: str, name: str, spec: TopicSpec | None) -> None:
        ref = topic_ref(namespace, name)
        if spec is None:
            self.topics.pop(ref, None)
            await self.broker.delete_topic(ref)
        else:
            await self.broker.ensure_topic(ref, spec)  # before publishers can see it
            actual = len(await self.broker.bounds(ref))
            if spec.partitions < actual:  # partitions only grow: keys keep their partition
                log.warning("ignoring a lower partition count", topic=name, asked=spec.partitions, kept=actual)
                spec = spec.model_copy(update={"partitions": actual})
            if spec.trace:
                await self.trace.enable(namespace, name, spec)
            self.topics[ref] = spec

    async def topic_spec(self, namespace: str, topic: str, user: str | None) -> TopicSpec:
        """The topic's settings; creates it when ``user`` is given and auto-create is on."""
        ref = topic_ref(namespace, topic)
        spec = self.topics.get(ref)
        if spec is not None and not self.broker.has_topic(ref):
            await self.broker.ensure_topic(ref, spec)
        if spec is None and self.broker.has_topic(ref):
            spec = self.topics[ref] = TopicSpec()
        if spec is None:
            if not (self.auto_create and user and self.create_topic):
                raise TopicNotFound(f"topic {topic!r} does not exist in namespace {namespace!r}")
            await self.create_topic(namespace, topic, user)
            spec = TopicSpec()
            await self.broker.ensure_topic(ref, spec)
            self.topics.setdefault(ref, spec)
        return spec

    # publishing --------------------------------------------------------------------

    async def publish(
        self, namespace: str, topic: str, messages: list[PublishMessage], user: str | None
    ) -> list[PublishResult]:
        spec = await self.topic_spec(namespace, topic, user)
        now_ms = int(time.time() * 1000)
        prepared = await self.prepare_batch(spec, messages, now_ms)
        return await self.store_prepared(namespace, topic, spec, prepared, now_ms)

    async def prepare_batch(self, spec: TopicSpec, messages: list[PublishMessage], now_ms: int) -> list[Prepared]:
        """Validate sizes and turn messages into stored envelopes (ids, due and expiry times)."""
        prepared: list[Prepared] = []
        for index, message in enumerate(messages):
            data, ctype = message.body()
            prepared.append(self._prepare(spec, index, message, data, ctype, message.attributes, now_ms))
        return prepared

    def _prepare(self, spec: TopicSpec, index: int, message: PublishMessage, data: bytes, ctype: str | None,
                 attributes: dict[str, str], now_ms: int) -> Prepared:
        if len(data) > spec.max_message_bytes:
            raise MessageTooLarge(index, len(data), spec.max_message_bytes)
        due = None
        if message.delay:
            due = now_ms + int(message.delay * 1000)
        elif message.deliver_at is not None:
            at = message.deliver_at if message.deliver_at.tzinfo else message.deliver_at.replace(tzinfo=UTC)
            due = int(at.timestamp() * 1000)
        env = Envelope(
            id=message.id or self._new_id(), data=data, content_type=ctype, key=message.key, tags=message.tags,
            attributes=attributes, published_ms=now_ms,
            expires_ms=(due or now_ms) + int(message.ttl * 1000) if message.ttl else None,
        )
        if getattr(self.broker, "record_limit", None) is not None:
            engine_limit(self.broker, index, len(env.encode()))
        return Prepared(env, message.key, due if due and due > now_ms else None)

    async def publish_frames(
        self, namespace: str, topic: str, frames: list[tuple[PublishMessage | None, bytes]],
        attributes: dict[str, str], user: str | None,
    ) -> list[PublishResult]:
        """Publish binary frames: raw data, with options where a frame has them. ``attributes``
        (the publisher's trace context) go on every message that does not set them itself."""
        spec = await self.topic_spec(namespace, topic, user)
        now_ms = int(time.time() * 1000)
        if all(options is None for options, _ in frames):
            return await self._store_plain(namespace, topic, spec, [data for _, data in frames], attributes, now_ms)
        prepared = [
            self._prepare(spec, index, options, data, options.content_type or OCTETS,
                          {**attributes, **options.attributes}, now_ms)
            if options is not None else
            self._prepare(spec, index, _PLAIN, data, OCTETS, attributes, now_ms)
            for index, (options, data) in enumerate(frames)
        ]
        return await self.store_prepared(namespace, topic, spec, prepared, now_ms)

    async def _store_plain(self, namespace: str, topic: str, spec: TopicSpec, datas: list[bytes],
                           attributes: dict[str, str], now_ms: int) -> list[PublishResult]:
        """``store_prepared`` for messages without options, their envelopes written from a template
        (the same bytes ``Envelope.encode`` writes, in a third of the time)."""
        limit = spec.max_message_bytes
        for index, data in enumerate(datas):
            if len(data) > limit:
                raise MessageTooLarge(index, len(data), limit)
        ids = self._new_ids(len(datas))
        attrs = b',"attrs":' + orjson.dumps(attributes) if attributes else b""
        suffix = b'","pub":%d,"ct":"%s"%s}' % (now_ms, OCTETS.encode(), attrs)
        head = b'{"id":"'
        prefix = (len(head) + len(ids[0]) + len(suffix)).to_bytes(4, "little") + head  # ids have one length
        records = [Record(rid, b"".join((prefix, rid.encode(), suffix, data)), None, now_ms)
                   for rid, data in zip(ids, datas, strict=True)]
        if getattr(self.broker, "record_limit", None) is not None:
            for index, record in enumerate(records):
                engine_limit(self.broker, index, len(record.payload))
        partitions = spec.partitions
        parts = [0] * len(records) if partitions == 1 else [next(self._rr) % partitions for _ in records]
        positions = await self.broker.publish(topic_ref(namespace, topic), records, parts)
        results = [PublishResult(rid, pos.partition, pos.offset, pos.duplicate) for rid, pos in zip(ids, positions, strict=True)]
        if spec.trace:
            await self._trace_published(namespace, topic, results)
        self.metrics.count("published", namespace, topic, "", len(results))
        return results

    async def store_prepared(
        self, namespace: str, topic: str, spec: TopicSpec, prepared: list[Prepared], now_ms: int
    ) -> list[PublishResult]:
        ref = topic_ref(namespace, topic)
        results: list[PublishResult | None] = [None] * len(prepared)
        ready = [i for i, p in enumerate(prepared) if p.due_ms is None]
        later = [i for i, p in enumerate(prepared) if p.due_ms is not None]
        if ready:
            envelopes = [prepared[i].envelope for i in ready]
            records = [Record(env.id, env.encode(), env.key, now_ms) for env in envelopes]
            if spec.partitions == 1:
                parts = [0] * len(ready)
            else:
                parts = [self._partition(prepared[i].key, spec.partitions) for i in ready]
            positions = await self.broker.publish(ref, records, parts)
            for i, env, pos in zip(ready, envelopes, positions, strict=True):
                results[i] = PublishResult(env.id, pos.partition, pos.offset, pos.duplicate)
            if spec.trace:
                await self._trace_published(namespace, topic, [r for r in (results[i] for i in ready) if r is not None])
        if later:
            ops = []
            if spec.trace:
                await self.trace.record(namespace, topic, [
                    {"id": prepared[i].envelope.id, "event": "scheduled", "due": prepared[i].due_ms} for i in later])
            for i in later:
                p = prepared[i]
                body = orjson.dumps({"key": p.key, "payload": base64.b64encode(p.envelope.encode()).decode()})
                ops.append(Put(f"{DELAYED}{p.due_ms:015d}/{ref}/{p.envelope.id}", body))
                results[i] = PublishResult(id=p.envelope.id, scheduled_ms=p.due_ms)
            await self.store.txn(ops)
            self._scheduler_wake.set()
        self.metrics.count("published", namespace, topic, "", len(prepared))
        return results  # type: ignore[return-value]

    async def _trace_published(self, namespace: str, topic: str, results: list[PublishResult]) -> None:
        await self.trace.record(namespace, topic, [
            {"id": r.id, "event": "duplicate" if r.duplicate else "published", "partition": r.partition, "offset": r.offset}
            for r in results])

    def _traced(self, ref: str) -> bool:
        spec = self.topics.get(ref)
        return spec is not None and spec.trace

    def _new_id(self) -> str:
        return self._new_ids(1)[0]

    def _new_ids(self, n: int) -> list[str]:
        first, prefix = self._next_id, self._id_prefix
        self._next_id = first + n
        return [f"{prefix}{i:016x}" for i in range(first, first + n)]

    def _partition(self, key: str | None, partitions: int) -> int:
        if partitions == 1:
            return 0
        if key is None:
            return next(self._rr) % partitions
        return zlib.crc32(key.encode()) % partitions

    async def run_scheduler(self) -> None:
        """Move delayed messages whose time has come into their topics (at least once, deduplicated by id)."""
        while True:
            self._scheduler_wake.clear()  # before reading: a message scheduled after this read wakes us
            now_ms = int(time.time() * 1000)
            page = await self.store.range(DELAYED, limit=500)
            due = [kv for kv in page.items if int(kv.key[len(DELAYED):].split("/", 1)[0]) <= now_ms]
            for kv in due:
                try:
                    parsed = _parse_delayed(kv.key, kv.value)
                except (ValueError, KeyError, TypeError):  # malformed: it could never be released
                    log.exception("malformed delayed message dropped", key=kv.key)
                    parsed = None
                if parsed is not None:
                    # any error of the release (the broker, the disk) propagates: the loop restarts after
                    # a pause and tries again; an acknowledged message is never dropped for it
                    await self._release_delayed(*parsed, now_ms)
                await self.store.txn([Delete(kv.key)])
            if due:
                continue
            wait = 1.0
            if page.items:
                first = int(page.items[0].key[len(DELAYED):].split("/", 1)[0])
                wait = min(max((first - now_ms) / 1000, 0.001), 1.0)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._scheduler_wake.wait()

    async def _release_delayed(self, namespace: str, topic: str, item: dict[str, Any], payload: bytes,
                               env: Envelope, now_ms: int) -> None:
        try:
            spec = await self.topic_spec(namespace, topic, None)
        except TopicNotFound:
            log.warning("dropping delayed message: topic is gone", topic=topic, id=env.id)
            return
        await self.broker.publish(topic_ref(namespace, topic), [Record(env.id, payload, item["key"], now_ms)],
                                  [self._partition(item["key"], spec.partitions)])

    # consuming ---------------------------------------------------------------------

    def subscription(self, namespace: str, topic: str, group: str) -> SubscriptionSpec:
        found = self.subscriptions.get((topic_ref(namespace, topic), group))
        return found or SubscriptionSpec(topic=topic, group=group)

    async def pull(
        self, namespace: str, topic: str, group: str, max_messages: int = 10, wait: float = 0.0,
        consumer: str | None = None,
    ) -> list[Delivered]:
        kept = await self.pull_deliveries(namespace, topic, group, max_messages, wait, consumer)
        return [to_message(topic, d, meta) for d, meta in kept]

    async def pull_deliveries(
        self, namespace: str, topic: str, group: str, max_messages: int = 10, wait: float = 0.0,
        consumer: str | None = None,
    ) -> list[tuple[Delivery, dict[str, Any] | None]]:
        """What ``pull`` hands out, before it becomes ``Delivered``: each delivery with its envelope
        header when screening had to decode it (None otherwise). Binary frames carry them as they are."""
        spec = await self.topic_spec(namespace, topic, None)
        sub = self.subscription(namespace, topic, group)
        ref = topic_ref(namespace, topic)
        deadline = time.monotonic() + wait
        while True:
            remaining = max(deadline - time.monotonic(), 0.0)
            deliveries = await self.broker.fetch(ref, group, max_messages, remaining, sub.ack_timeout)
            out = await self._screen(namespace, topic, group, sub, deliveries)
            if spec.trace and out:
                await self.trace.record(namespace, topic, [
                    {"id": header(d.payload, meta)["id"], "event": "delivered", "group": group, "consumer": consumer,
                     "attempt": d.attempt, "partition": d.partition, "offset": d.offset} for d, meta in out])
            if out or time.monotonic() >= deadline or not deliveries:
                return out

    async def _screen(
        self, namespace: str, topic: str, group: str, sub: SubscriptionSpec, deliveries: list[Delivery]
    ) -> list[tuple[Delivery, dict[str, Any] | None]]:
        """Drop expired and filtered-out messages, dead-letter exhausted ones, return the rest.

        An envelope header is decoded only when it may matter: a filter, attributes or an expiry."""
        ref = topic_ref(namespace, topic)
        now_ms = int(time.time() * 1000)
        predicate = compile_filter(sub.filter) if sub.filter else None
        max_deliveries = sub.max_deliveries
        out: list[tuple[Delivery, dict[str, Any] | None]] = []
        done: list[str] = []
        latencies: list[float] = []
        expired = filtered = redelivered = 0
        for d in deliveries:
            payload = d.payload
            meta = None
            if predicate is not None or not plain_envelope(payload):
                meta = header(payload, None)
                expires = meta.get("exp")
                if expires is not None and expires <= now_ms:
                    done.append(d.receipt)
                    expired += 1
                    continue
                attributes = meta.get("attrs") or {}
                only = attributes.get(REPLAY_FOR)
                if (only is not None and only != group) or (
                        predicate is not None and not predicate(meta.get("tags") or [], meta.get("key"), attributes)):
                    done.append(d.receipt)
                    filtered += 1
                    continue
            if d.attempt > max_deliveries:
                d.attempt -= 1  # this delivery was never handed out: count only those that were
                await self._dead_letter(namespace, topic, group, sub, d, Envelope.decode(payload), "max deliveries exceeded")
                done.append(d.receipt)
                continue
            out.append((d, meta))
            if d.attempt == 1:
                latencies.append((now_ms - d.timestamp_ms) / 1000)
            else:
                redelivered += 1
        if done:
            with contextlib.suppress(LookupError):
                await self.broker.ack(ref, group, done)
        metrics = self.metrics
        metrics.count("expired", namespace, topic, group, expired)
        metrics.count("filtered", namespace, topic, group, filtered)
        metrics.count("redelivered", namespace, topic, group, redelivered)
        metrics.delivered_after(latencies, namespace, topic, group)
        metrics.count("delivered", namespace, topic, group, len(out))
        return out

    async def ack(self, namespace: str, topic: str, group: str, receipts: list[str]) -> None:
        spec = await self.topic_spec(namespace, topic, None)
        ref = topic_ref(namespace, topic)
        traced = await self.broker.in_flight(ref, group, receipts) if spec.trace else {}
        await self.broker.ack(ref, group, receipts)
        if traced:
            await self.trace.record(namespace, topic, [
                {"id": Envelope.decode(d.payload).id, "event": "acked", "group": group, "attempt": d.attempt}
                for d in traced.values()])
        self.metrics.count("acked", namespace, topic, group, len(receipts))

    async def nack(
        self, namespace: str, topic: str, group: str, receipts: list[str], delay: float | None = None
    ) -> None:
        """Redeliver after ``delay`` (default: the subscription's backoff for that attempt);
        a message that used its last attempt goes to the dead-letter topic instead."""
        await self.topic_spec(namespace, topic, None)
        sub = self.subscription(namespace, topic, group)
        ref = topic_ref(namespace, topic)
        live = await self.broker.in_flight(ref, group, receipts)
        stale = [r for r in receipts if r not in live]
        exhausted = [r for r, d in live.items() if d.attempt >= sub.max_deliveries]
        for receipt in exhausted:  # dead-letter first, then ack: a crash between repeats, never loses
            d = live[receipt]
            await self._dead_letter(namespace, topic, group, sub, d, Envelope.decode(d.payload), "rejected on last attempt")
        if exhausted:
            await self.broker.ack(ref, group, exhausted)
        by_delay: dict[float, list[str]] = {}
        for receipt, d in live.items():
            if receipt not in exhausted:
                by_delay.setdefault(sub.backoff.delay(d.attempt) if delay is None else delay, []).append(receipt)
        for wait, batch in by_delay.items():
            await self.broker.nack(ref, group, batch, wait)
            if self._traced(ref):
                await self.trace.record(namespace, topic, [
                    {"id": Envelope.decode(live[r].payload).id, "event": "nacked", "group": group,
                     "attempt": live[r].attempt, "retryIn": wait} for r in batch])
        self.metrics.count("nacked", namespace, topic, group, len(live))
        if stale:
            raise StaleReceiptError(f"not in flight (acked, timed out or redelivered): {', '.join(stale[:10])}")

    async def drop(self, namespace: str, topic: str, group: str, receipts: list[str], reason: str) -> None:
        """Give up on these deliveries: to the dead-letter topic if the subscription names one."""
        sub = self.subscription(namespace, topic, group)
        ref = topic_ref(namespace, topic)
        live = await self.broker.in_flight(ref, group, receipts)
        if sub.dead_letter_topic:
            for d in live.values():
                await self._dead_letter(namespace, topic, group, sub, d, Envelope.decode(d.payload), reason)
        if live:
            await self.broker.ack(ref, group, list(live))
        self.metrics.count("dropped", namespace, topic, group, len(live))

    async def _dead_letter(
        self, namespace: str, topic: str, group: str, sub: SubscriptionSpec, d: Delivery, env: Envelope, reason: str
    ) -> None:
        target = dead_letter_topic(topic, group, sub)
        attrs = {**env.attributes, f"{DLQ_ATTR}topic": topic, f"{DLQ_ATTR}group": group,
                 f"{DLQ_ATTR}partition": str(d.partition), f"{DLQ_ATTR}offset": str(d.offset),
                 f"{DLQ_ATTR}attempts": str(d.attempt), f"{DLQ_ATTR}reason": reason}
        letter = Envelope(env.id, env.data, env.content_type, env.key, env.tags, attrs, int(time.time() * 1000))
        spec = await self.topic_spec(namespace, target, "mezzo")
        await self.store_prepared(namespace, target, spec, [Prepared(letter, env.key, None)], letter.published_ms)
        self.metrics.count("dead_lettered", namespace, topic, group)
        if self._traced(topic_ref(namespace, topic)):
            await self.trace.record(namespace, topic, [{"id": env.id, "event": "dead-lettered", "group": group,
                                                        "attempt": d.attempt, "deadLetterTopic": target,
                                                        "reason": reason}])
        log.info("message dead-lettered", topic=topic, group=group, id=env.id, dlq=target, reason=reason)

    async def seek(self, namespace: str, topic: str, group: str, to: Any) -> dict[int, int]:
        """``earliest``, ``latest``, an offset for every partition, ``{partition: offset}``, or a time."""
        try:
            to = SEEK_TO.validate_python(to)
        except ValidationError:
            raise ValueError(SEEK_HELP) from None
        await self.topic_spec(namespace, topic, None)
        ref = topic_ref(namespace, topic)
        bounds = await self.broker.bounds(ref)
        if to == "earliest":
            positions = {p: b[0] for p, b in bounds.items()}
        elif to == "latest":
            positions = {p: b[1] for p, b in bounds.items()}
        elif isinstance(to, datetime):
            moment = to if to.tzinfo else to.replace(tzinfo=UTC)
            positions = await self.broker.offsets_for_time(ref, int(moment.timestamp() * 1000))
        elif isinstance(to, int):
            positions = dict.fromkeys(bounds, to)
        elif isinstance(to, dict):
            unknown = set(to) - set(bounds)
            if unknown:
                raise ValueError(f"no partition {sorted(unknown)[0]} in topic {topic!r}")
            positions = dict(to)
        else:
            raise ValueError(SEEK_HELP)
        return await self.broker.seek(ref, group, positions)

    async def replay_dead_letters(self, namespace: str, dlq_topic: str, limit: int = 1000) -> int:
        """Publish dead letters back to the topics they came from; each letter is replayed once."""
        await self.topic_spec(namespace, dlq_topic, None)
        ref = topic_ref(namespace, dlq_topic)
        replayed = 0
        while replayed < limit:
            deliveries = await self.broker.fetch(ref, REPLAY_GROUP, min(100, limit - replayed), 0.0, 60.0)
            if not deliveries:
                break
            for d in deliveries:
                env = Envelope.decode(d.payload)
                origin = env.attributes.get(f"{DLQ_ATTR}topic")
                if origin:
                    group = env.attributes.get(f"{DLQ_ATTR}group")
                    env.attributes = {k: v for k, v in env.attributes.items() if not k.startswith(DLQ_ATTR)}
                    if group:
                        env.attributes[REPLAY_FOR] = group
                    env.id = f"{env.id}.replay.{d.offset}"  # the original id may still be in the dedup window
                    env.published_ms = int(time.time() * 1000)
                    spec = await self.topic_spec(namespace, origin, "mezzo")
                    await self.store_prepared(namespace, origin, spec, [Prepared(env, env.key, None)], env.published_ms)
                    replayed += 1
                await self.broker.ack(ref, REPLAY_GROUP, [d.receipt])
        return replayed


def header(payload: bytes, meta: dict[str, Any] | None) -> dict[str, Any]:
    """The envelope header of a stored payload (``meta`` when already decoded)."""
    return meta if meta is not None else orjson.loads(split_envelope(payload)[0])  # type: ignore[no-any-return]


def to_message(topic: str, d: Delivery, meta: dict[str, Any] | None = None) -> Delivered:
    """The consumer's view of a delivery; ``meta`` is its envelope header if already decoded."""
    head, data = split_envelope(d.payload)
    if meta is None:
        meta = orjson.loads(head)
    ctype = meta.get("ct")
    body = data_fields(data, ctype)
    return Delivered(meta["id"], topic, d.partition, d.offset, meta.get("key"), meta.get("tags") or [],
                     meta.get("attrs") or {}, ctype, body.get("data"), body.get("dataBase64"), meta.get("pub", 0),
                     d.attempt, d.receipt or None)


__all__ = ["MessagingService", "Name", "Position", "PublishMessage", "PublishResult", "TopicNotFound"]


def _parse_delayed(key: str, value: bytes) -> tuple[str, str, dict[str, Any], bytes, Envelope]:
    """A stored delayed message: (namespace, topic, the stored item, its payload, its envelope);
    raises ValueError, KeyError or TypeError when it is malformed."""
    _, ref_and_id = key[len(DELAYED):].split("/", 1)
    namespace, topic, _ = ref_and_id.split("/", 2)
    item = orjson.loads(value)
    payload = base64.b64decode(item["payload"])
    return namespace, topic, item, payload, Envelope.decode(payload)
