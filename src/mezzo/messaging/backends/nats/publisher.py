"""Appending records: JetStream dedup by message id, per-key chains, topic-wide dedup across partitions.

Records keep their batch order within a partition. Each keyed record goes to its own subject (one per key) in the partition stream and
is published with ``Nats-Expected-Last-Subject-Sequence``: the server stores it only
if the key's last record is the one we name, which we also write into the record as
its predecessor (``Mezzo-Prev``); that chain is what delivery uses for per-key order,
and it holds however many nodes publish at once. JetStream answers a duplicate
``Nats-Msg-Id`` with the original's sequence. A topic with several partitions may
receive the same id on another partition (unkeyed records go round robin), so ids are
first claimed in a small stream with one message per id (create-if-absent), and a
later copy goes to the claimed partition, where the stream's own dedup finds it.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from mezzo.messaging.backend import Position, Record
from mezzo.messaging.backends.nats.jetstream import (
    EXPECTED_LAST,
    MSG_ID,
    PREVIOUS,
    TIMESTAMP,
    JetStream,
    WrongLastSequence,
)
from mezzo.messaging.backends.nats.names import key_token
from mezzo.messaging.backends.nats.topics import Topic

HEADER_ROOM = 512  # NATS counts headers (Nats-Msg-Id, Mezzo-Prev, ...) in max_payload
LAST_SEQ_CACHE = 100_000  # (stream, key) -> last sequence: a guess; a wrong one costs one retry
CHAIN_TRIES = 20


class Publisher:
    def __init__(self, js: JetStream) -> None:
        self.js = js
        self._last: OrderedDict[str, int] = OrderedDict()

    async def publish(self, topic: Topic, records: list[Record], partitions: list[int]) -> list[Position]:
        dedup = topic.spec.dedup_window > 0
        limit = self.js.nc.max_payload
        for record in records:
            if len(record.payload) + HEADER_ROOM > limit:  # the service checks first; the server may have changed
                raise ValueError(f"a {len(record.payload)}-byte message exceeds the NATS server's "
                                 f"max_payload of {limit} bytes")
        first: dict[str, int] = {}
        todo: list[int] = []
        for i, record in enumerate(records):
            if dedup and record.id in first:
                continue  # a copy within this batch: resolved from the first one below
            first[record.id] = i
            todo.append(i)
        target = {i: partitions[i] % topic.partitions for i in todo}
        owner = dict.fromkeys(todo, True)
        if dedup and topic.partitions > 1:
            claims = await asyncio.gather(*(self._claim(topic, records[i].id, target[i]) for i in todo))
            for i, (partition, mine) in zip(todo, claims, strict=True):
                target[i], owner[i] = partition, mine
        stored = await self._send_all(topic, records, todo, target, dedup)
        positions: list[Position] = []
        for i, record in enumerate(records):
            j = first[record.id] if dedup else i
            seq, duplicate = stored[j]
            positions.append(Position(target[j], seq - 1, duplicate or not owner[j] or i != j))
        return positions

    async def _send_all(self, topic: Topic, records: list[Record], todo: list[int], target: dict[int, int],
                        dedup: bool) -> dict[int, tuple[int, bool]]:
        """Publish in order: partitions side by side, a partition's records pipelined in batch order,
        except that a record whose key came earlier in the batch waits for that one's sequence."""
        by_partition: dict[int, list[int]] = {}
        for i in todo:
            by_partition.setdefault(target[i], []).append(i)
        results: dict[int, tuple[int, bool]] = {}

        async def flush(segment: list[int]) -> None:
            sent = await asyncio.gather(*(self._send(topic, records[i], target[i], dedup) for i in segment))
            results.update(zip(segment, sent, strict=True))

        async def run(indexes: list[int]) -> None:
            segment: list[int] = []
            keys: set[str] = set()
            for i in indexes:
                key = records[i].key
                if key is not None and key in keys:
                    await flush(segment)
                    segment, keys = [], set()
                segment.append(i)
                if key is not None:
                    keys.add(key)
            await flush(segment)

        await asyncio.gather(*(run(indexes) for indexes in by_partition.values()))
        return results

    async def _send(self, topic: Topic, record: Record, partition: int, dedup: bool) -> tuple[int, bool]:
        headers = {TIMESTAMP: str(record.timestamp_ms)}
        if dedup:
            headers[MSG_ID] = record.id
        if record.key is None:
            return await self.js.publish(topic.names.partition_subject(partition), record.payload, headers)
        subject = topic.names.partition_subject(partition, key_token(record.key))
        cached = self._last.get(subject)
        expected: int | None = 0 if cached is None else cached
        for _ in range(CHAIN_TRIES):
            if expected is None:
                found = await self.js.last(topic.names.partition_stream(partition), subject)
                expected = found.seq if found else 0
            headers[EXPECTED_LAST] = headers[PREVIOUS] = str(expected)
            try:
                seq, duplicate = await self.js.publish(subject, record.payload, headers)
            except WrongLastSequence as exc:  # another node published this key meanwhile
                expected = exc.actual
                continue
            if not duplicate:
                self._remember(subject, seq)
            return seq, duplicate
        raise RuntimeError(f"could not append to the chain of key {record.key!r}: too much contention")

    def _remember(self, subject: str, seq: int) -> None:
        self._last[subject] = seq
        self._last.move_to_end(subject)
        while len(self._last) > LAST_SEQ_CACHE:
            self._last.popitem(last=False)

    async def _claim(self, topic: Topic, record_id: str, partition: int) -> tuple[int, bool]:
        """(partition, True) when this id is new to the topic; else the partition it was claimed for."""
        subject = topic.names.ids_subject(record_id)
        for _ in range(CHAIN_TRIES):
            try:
                await self.js.publish(subject, str(partition).encode(), {EXPECTED_LAST: "0"})
                return partition, True
            except WrongLastSequence:
                found = await self.js.last(topic.names.ids_stream, subject)
                if found is not None:  # else it expired just now: claim again
                    return int(found.data), False
        raise RuntimeError(f"could not claim message id {record_id!r}")
