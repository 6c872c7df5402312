"""A group's deliveries: attempts, receipts and per-key order, on top of JetStream's pull consumers.

JetStream tracks what is pending and redelivers after the ack wait, but it does not
reject an ack for an outdated delivery, and it has no per-key limit. So each
delivery handed out writes a record (``d.<group>.<partition>.<seq>``: attempt, ack
subject, key) into the topic's state stream with a compare-and-set on the subject's
last sequence; that record's own sequence goes into the receipt, and an ack deletes
exactly that record (a compare-and-delete), so a receipt is current only while its
record is. Records live until acked: the attempt count survives nacks and timeouts.

Per-key order: every record carries the sequence of the previous record with the same
key in its partition (``Mezzo-Prev``, set at publish with a per-subject compare-and-set).
A record is handed out only once that predecessor is acked: the key's record
(``k.<group>.<partition>.<key>``) holds the last acked sequence of the key, and the
consumer's ack floor covers keys whose record is gone. A record whose predecessor is
still out is parked: left pending in JetStream, with a waiter record
(``w.<group>.<partition>.<seq>``: its ack subject); the ack of its predecessor finds
it (JetStream's next-by-subject lookup names the key's next record) and nacks it, so
JetStream hands it out again at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import orjson
from nats.aio.msg import Msg

from mezzo.messaging.backend import Delivery
from mezzo.messaging.backends.nats.groups import Group, Groups
from mezzo.messaging.backends.nats.jetstream import (
    EXPECTED_LAST,
    PREVIOUS,
    TIMESTAMP,
    BrokerUnavailable,
    JetStream,
    StoredMsg,
    WrongLastSequence,
)
from mezzo.messaging.backends.nats.names import NO_KEY, token
from mezzo.messaging.backends.nats.topics import Topic

CAS_TRIES = 10


@dataclass(frozen=True, slots=True)
class Receipt:
    """``partition:seq:attempt:rev``; rev is the sequence of the delivery record in the state stream."""

    partition: int
    seq: int
    attempt: int
    rev: int

    def __str__(self) -> str:
        return f"{self.partition}:{self.seq}:{self.attempt}:{self.rev}"

    @classmethod
    def parse(cls, text: str, partitions: int) -> Receipt | None:
        parts = text.split(":")
        if len(parts) != 4 or not all(p.isdigit() and len(p) < 20 for p in parts):
            return None
        receipt = cls(*(int(p) for p in parts))
        return receipt if receipt.partition < partitions else None


def _nak(delay: float) -> bytes:
    return b'-NAK {"delay": %d}' % int(delay * 1e9) if delay > 0 else b"-NAK"


def _record(stored: StoredMsg | None) -> dict[str, Any]:
    return orjson.loads(stored.data) if stored is not None and stored.data else {}


class Deliveries:
    def __init__(self, js: JetStream, groups: Groups) -> None:
        self.js = js
        self.groups = groups

    # handing out -----------------------------------------------------------------------

    async def take(self, topic: Topic, group: Group, max_messages: int) -> list[Delivery]:
        """Pull what is ready from each partition's consumer, round robin, and hand out what may go."""
        out: list[Delivery] = []
        count = topic.partitions
        for step in range(count):
            # One pull per partition: pulling again when records were parked would only run further
            # ahead of the keys that hold them back.
            p = (group.rr + step) % count
            msgs = await self.js.pull(topic.names.partition_stream(p), group.consumer, max_messages - len(out))
            if msgs is None:
                group.missing.add(p)  # deleted by a seek or delete_group elsewhere: ensure() again
                continue
            got = await asyncio.gather(*(self._consider(topic, group, p, m) for m in msgs))
            out += [d for d in got if d is not None]
            if len(out) >= max_messages:
                break
        group.rr = (group.rr + 1) % count
        return out

    async def _consider(self, topic: Topic, group: Group, p: int, msg: Msg) -> Delivery | None:
        meta = msg.metadata
        seq = meta.sequence.stream
        headers = msg.headers or {}
        key = msg.subject.rsplit(".", 1)[-1]
        previous = int(headers.get(PREVIOUS) or 0)
        if key != NO_KEY and previous and not await self._gate(
                topic, group, p, key, previous, seq, meta.num_delivered, msg.reply):
            return None
        attempt, rev = await self._claim(topic, group.token, p, seq, meta.num_delivered, msg.reply, key)
        return Delivery(topic.ref, p, seq - 1, int(headers.get(TIMESTAMP) or 0), msg.data, attempt,
                        str(Receipt(p, seq, attempt, rev)))

    async def _claim(self, topic: Topic, g: str, p: int, seq: int, delivered: int, reply: str,
                     key: str) -> tuple[int, int]:
        """Write the delivery record (attempt + 1); (attempt, record sequence)."""
        stream, subject = topic.names.state_stream, topic.names.delivery_subject(g, p, seq)
        current = await self.js.last(stream, subject) if delivered > 1 else None
        for _ in range(CAS_TRIES):
            attempt = int(_record(current).get("a", 0)) + 1
            body = orjson.dumps({"a": attempt, "r": reply, "k": key})
            try:
                rev, _ = await self.js.publish(subject, body, {EXPECTED_LAST: str(current.seq if current else 0)})
                return attempt, rev
            except WrongLastSequence:
                current = await self.js.last(stream, subject)
        raise BrokerUnavailable(f"delivery record {subject} keeps changing")

    async def _gate(self, topic: Topic, group: Group, p: int, key: str, previous: int, seq: int,
                    delivered: int, reply: str) -> bool:
        """True when the key's previous record is acked; otherwise park this one and return False.

        Parking writes a waiter record (this delivery's ack subject), then looks at the key again:
        an ack that landed meanwhile either finds the waiter and nacks it, or we find the ack and take
        the waiter back. Deleting the waiter record (by its sequence) decides which of the two acts."""
        stream, subject = topic.names.state_stream, topic.names.key_subject(group.token, p, key)
        current = await self.js.last(stream, subject)
        if int(_record(current).get("l", 0)) >= previous:
            return True
        # The ack floor stands in for a key record that is missing (a seek, age) or behind (retention
        # removed the predecessor, a node died between its JetStream ack and the key record): look at
        # it then, and on redeliveries; not for every record of a busy key.
        if (current is None or delivered > 1) and previous <= await self.groups.floor(topic, group.name, p):
            return True
        rev, _ = await self.js.publish(topic.names.waiter_subject(group.token, p, seq), reply.encode())
        current = await self.js.last(stream, subject)
        if int(_record(current).get("l", 0)) >= previous:
            return await self.js.delete(stream, rev)  # else the acker took it and nacks it: it comes back
        return False

    # settling --------------------------------------------------------------------------

    async def _current(self, topic: Topic, g: str, text: str) -> tuple[Receipt, StoredMsg, dict[str, Any]] | None:
        """The receipt, its delivery record and the record's content, when the receipt is current."""
        receipt = Receipt.parse(text, topic.partitions)
        if receipt is None:
            return None
        stored = await self.js.last(topic.names.state_stream,
                                    topic.names.delivery_subject(g, receipt.partition, receipt.seq))
        if stored is None or stored.seq != receipt.rev:
            return None
        rec = _record(stored)
        if rec.get("a") != receipt.attempt or rec.get("n"):
            return None
        return receipt, stored, rec

    async def ack(self, topic: Topic, group: str, receipts: list[str]) -> list[str]:
        """Ack these deliveries; returns the receipts that were not current."""
        g = token(group)
        done = await asyncio.gather(*(self._ack(topic, g, r) for r in receipts))
        return [r for r, ok in zip(receipts, done, strict=True) if not ok]

    async def _ack(self, topic: Topic, g: str, text: str) -> bool:
        found = await self._current(topic, g, text)
        if found is None:
            return False
        receipt, stored, rec = found
        if not await self.js.delete(topic.names.state_stream, stored.seq):
            return False  # acked or redelivered meanwhile
        await self.js.reply(rec["r"], b"+ACK")
        if rec.get("k", NO_KEY) != NO_KEY:
            await self._key_done(topic, g, receipt.partition, rec["k"], receipt.seq)
        return True

    async def _key_done(self, topic: Topic, g: str, p: int, key: str, seq: int) -> None:
        """Record that the key's message ``seq`` is done and release the next one if it is parked."""
        stream, subject = topic.names.state_stream, topic.names.key_subject(g, p, key)
        for _ in range(CAS_TRIES):
            current = await self.js.last(stream, subject)
            last = max(int(_record(current).get("l", 0)), seq)
            try:
                await self.js.publish(subject, orjson.dumps({"l": last}),
                                      {EXPECTED_LAST: str(current.seq if current else 0)})
                break
            except WrongLastSequence:
                continue
        following = await self.js.next_on(topic.names.partition_stream(p),
                                          topic.names.partition_subject(p, key), seq + 1)
        if following is None:
            return
        waiter = await self.js.last(stream, topic.names.waiter_subject(g, p, following.seq))
        if waiter is not None and await self.js.delete(stream, waiter.seq):
            with contextlib.suppress(BrokerUnavailable):  # else it comes back after its ack wait
                await self.js.reply(waiter.data.decode(), b"-NAK")

    async def nack(self, topic: Topic, group: str, receipts: list[str], delay: float) -> list[str]:
        """Redeliver these after ``delay``; returns the receipts that were not current."""
        g = token(group)
        done = await asyncio.gather(*(self._nack(topic, g, r, delay) for r in receipts))
        return [r for r, ok in zip(receipts, done, strict=True) if not ok]

    async def _nack(self, topic: Topic, g: str, text: str, delay: float) -> bool:
        found = await self._current(topic, g, text)
        if found is None:
            return False
        receipt, stored, rec = found
        subject = topic.names.delivery_subject(g, receipt.partition, receipt.seq)
        try:  # marked nacked: this receipt is stale from now on, the attempt count stays
            await self.js.publish(subject, orjson.dumps({**rec, "n": 1}), {EXPECTED_LAST: str(stored.seq)})
        except WrongLastSequence:
            return False
        await self.js.reply(rec["r"], _nak(delay))
        return True

    async def in_flight(self, topic: Topic, group: str, receipts: list[str]) -> dict[str, Delivery]:
        g = token(group)
        found = await asyncio.gather(*(self._current(topic, g, r) for r in receipts))
        live = [(text, f[0]) for text, f in zip(receipts, found, strict=True) if f is not None]
        stored = await asyncio.gather(*(self.js.at(topic.names.partition_stream(r.partition), r.seq)
                                        for _, r in live))
        out: dict[str, Delivery] = {}
        for (text, receipt), msg in zip(live, stored, strict=True):
            if msg is not None:
                out[text] = Delivery(topic.ref, receipt.partition, receipt.seq - 1,
                                     int(msg.headers.get(TIMESTAMP) or 0), msg.data, receipt.attempt, text)
        return out


