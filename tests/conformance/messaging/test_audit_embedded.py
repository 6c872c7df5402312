"""Audit of issue 3's embedded-engine promises at the node level: the data directory, torn tails of
both the partition log and the group journal cut off on start, and MEZZO_BROKER_FSYNC reaching them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mezzo.messaging.service import MessagingService
from mezzo.testing.fixtures import start_node

from .test_messaging import drain


async def test_torn_tails_of_log_and_journal_are_cut_off_on_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    node = await start_node(data)
    try:
        async with node.client() as client:
            await client.messaging.publish_batch("torn", [{"data": i} for i in range(3)])
            sub = client.messaging.subscribe("torn", "g", batch=1)
            await sub.ack(await drain(sub, 1))
    finally:
        await node.node.stop()
    topic_dir = data / "broker" / "topics" / "default" / "torn"  # durable in the data directory
    segments = [sorted((topic_dir / "p0").glob("*.log"))[-1], sorted((topic_dir / "groups" / "g" / "journal").glob("*.log"))[-1]]
    for segment in segments:
        with segment.open("ab") as f:
            f.write(os.urandom(9))  # a write torn by a crash
    sizes = [s.stat().st_size for s in segments]
    again = await start_node(data)
    try:
        assert [s.stat().st_size for s in segments] == [size - 9 for size in sizes]
        async with again.client() as client:
            await client.messaging.publish("torn", 3)
            got = await drain(client.messaging.subscribe("torn", "g", batch=10), 3)
            assert [m.data for m in got] == [1, 2, 3]  # the ack before the tear is kept
    finally:
        await again.node.stop()


@pytest.mark.parametrize(("policy", "fsyncs"), [("os", False), ("always", True), ("batch", True)])
async def test_fsync_policy_reaches_publishes_and_acks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       policy: str, fsyncs: bool) -> None:
    node = await start_node(tmp_path / "data", broker_fsync=policy)
    try:
        broker = node.node.service(MessagingService).broker
        assert broker.fsync == policy
        async with node.client() as client:
            await client.messaging.publish("synced", "warm-up")  # creates the topic and its files
            sub = client.messaging.subscribe("synced", "g")
            await sub.ack(await drain(sub, 1))
            calls: list[int] = []
            real = os.fsync
            monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
            await client.messaging.publish("synced", "durable")
            after_publish = len(calls)
            await sub.ack(await drain(sub, 1))
        assert (after_publish > 0) == fsyncs
        assert (len(calls) > after_publish) == fsyncs  # the ack's journal entry too
    finally:
        await node.node.stop()


async def test_a_delayed_message_the_broker_refuses_once_is_released_later_not_dropped(tmp_path: Path) -> None:
    """The scheduler dropped a due delayed message on any ValueError, the broker's own included (taken
    for a malformed record): an acknowledged message lost to one refused publish. Now only a record
    that does not parse is dropped; a failed release is tried again."""
    running = await start_node(tmp_path / "data", targets=["messaging", "api"])
    try:
        svc = running.node.service(MessagingService)
        publish, refused = svc.broker.publish, []

        async def refuse_once(*args, **kwargs):  # type: ignore[no-untyped-def]
            if not refused:
                refused.append(args)
                raise ValueError("the broker refused it this time")
            return await publish(*args, **kwargs)

        svc.broker.publish = refuse_once  # type: ignore[method-assign]
        async with running.client() as client:
            await client.messaging.publish("timers", "due soon", delay="50ms")
            async with client.messaging.subscribe("timers", "g") as sub:
                got = await drain(sub, 1, timeout=20)
        assert refused and [m.data for m in got] == ["due soon"]
    finally:
        await running.node.stop()
