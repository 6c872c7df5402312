"""Binary message frames (codec.py) and the bulk histogram update of delivery latencies."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram

from mezzo.messaging.codec import (
    Envelope,
    FrameError,
    decode_delivery_frames,
    decode_publish_frames,
    encode_delivery_frame,
    encode_publish_frame,
    plain_envelope,
)
from mezzo.messaging.metrics import observe_many


def test_publish_frames_round_trip() -> None:
    body = encode_publish_frame(b"\x00raw") + encode_publish_frame(b"", {"key": "k", "tags": ["a"]})
    assert list(decode_publish_frames(body)) == [(None, b"\x00raw"), ({"key": "k", "tags": ["a"]}, b"")]
    assert list(decode_publish_frames(b"")) == []


@pytest.mark.parametrize(("body", "index"), [
    (b"\x00\x00", 0),  # a head length cut short
    (encode_publish_frame(b"abc")[:-1], 0),  # data cut short
    (encode_publish_frame(b"ok") + b"\x05\x00\x00\x00[1]\x00\x00\x00\x00", 1),  # head overruns the body
    (encode_publish_frame(b"ok") + b"\x03\x00\x00\x00[1]\x00\x00\x00\x00", 1),  # head is not an object
    (b"\x01\x00\x00\x00{\x00\x00\x00\x00", 0),  # head is not JSON
])
def test_malformed_publish_frames_name_the_frame(body: bytes, index: int) -> None:
    with pytest.raises(FrameError) as caught:
        list(decode_publish_frames(body))
    assert caught.value.index == index


def test_delivery_frames_carry_the_stored_envelope() -> None:
    stored = Envelope("id-1", b"\xffdata", "application/octet-stream", "k", ["t"], {"a": "b"}, 1234).encode()
    body = encode_delivery_frame(2, 2**40, 3, "2:1099511627776:3:0", stored) + encode_delivery_frame(0, 1, 1, "r", stored)
    first, second = decode_delivery_frames(body)
    assert (first.partition, first.offset, first.attempt, first.receipt) == (2, 2**40, 3, "2:1099511627776:3:0")
    assert first.data == b"\xffdata" and second.receipt == "r"
    assert first.header() == {"id": "id-1", "pub": 1234, "ct": "application/octet-stream", "key": "k",
                              "tags": ["t"], "attrs": {"a": "b"}}
    with pytest.raises(FrameError):
        decode_delivery_frames(body[:-1])


def test_plain_envelope_sees_attributes_and_expiry_but_not_look_alikes() -> None:
    def stored(**fields: object) -> bytes:
        return Envelope(data=b'"attrs":"exp":', **fields).encode()  # type: ignore[arg-type]

    assert plain_envelope(stored(id='x"attrs":"exp":', key='"exp":'))  # inside strings, or in the data: plain
    assert not plain_envelope(stored(id="x", attributes={"a": "b"}))
    assert not plain_envelope(stored(id="x", expires_ms=5))


def test_observe_many_counts_like_observe() -> None:
    registry = CollectorRegistry()
    buckets = (0.001, 0.01, 0.1, 1.0)
    one = Histogram("one", "h", buckets=buckets, registry=registry)
    many = Histogram("many", "h", buckets=buckets, registry=registry)
    values = [-1.0, 0.0, 0.001, 0.002, 0.01, 0.5, 1.0, 7.0]
    for value in values:
        one.observe(max(value, 0.0))
    observe_many(many, values)

    def samples(name: str) -> list[tuple[str, dict[str, str], float]]:
        [metric] = [m for m in registry.collect() if m.name == name]
        return [(s.name.removeprefix(name), s.labels, s.value) for s in metric.samples if "created" not in s.name]

    assert samples("many") == samples("one")


async def test_plain_frames_are_stored_as_envelope_encode_writes_them() -> None:
    from mezzo.messaging.backend import Position, Record
    from mezzo.messaging.model import TopicSpec
    from mezzo.messaging.service import MessagingService

    class Broker:
        records: list[Record] = []

        def has_topic(self, ref: str) -> bool:
            return True

        async def publish(self, ref: str, records: list[Record], partitions: list[int]) -> list[Position]:
            self.records = records
            return [Position(0, i) for i in range(len(records))]

    broker = Broker()
    svc = MessagingService(broker, None)  # type: ignore[arg-type]
    svc.topics["default/t"] = TopicSpec()
    for attributes in ({}, {"traceparent": "00-abc-def-01"}):
        results = await svc.publish_frames("default", "t", [(None, b"\x00one"), (None, b"two")], attributes, "me")
        for result, record, data in zip(results, broker.records, (b"\x00one", b"two"), strict=True):
            expected = Envelope(result.id, data, "application/octet-stream", None, [], attributes, record.timestamp_ms)
            assert record.payload == expected.encode() and record.id == result.id
