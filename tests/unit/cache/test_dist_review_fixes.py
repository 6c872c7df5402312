"""Regressions from the distributed cache review (issue 8): the node link, failure counting, proxy planning."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import hiredis
import pytest
from redis.exceptions import ResponseError

from mezzo.cache.distributed.backend import Call, HealthPolicy, NodeAddress
from mezzo.cache.distributed.link import LinkError, NodeLink, _Batch
from mezzo.cache.distributed.pool import Endpoint, NodePool, Shard
from mezzo.cache.distributed.ring import KetamaRing
from mezzo.cache.engine import Engine
from mezzo.cache.proxy import MAX_PENDING, ProxyConnection, ProxyServer, encode
from mezzo.cache.resp import Session
from mezzo.testing.fixtures import wait_for


class EchoNode:
    """A RESP server answering ``ECHO x`` with ``x``; it drops the first ``drop`` connections at once."""

    def __init__(self, drop: int = 0) -> None:
        self.drop = drop
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.connections <= self.drop:
            writer.close()
            return
        parser = hiredis.Reader()
        while data := await reader.read(65536):
            parser.feed(data)
            while (command := parser.gets()) is not False:
                writer.write(b"$%d\r\n%s\r\n" % (len(command[1]), command[1]))
            await writer.drain()
        writer.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])


@pytest.fixture
async def echo_node() -> AsyncIterator[EchoNode]:
    node = EchoNode(drop=1)
    node.server = await asyncio.start_server(node.serve, "127.0.0.1", 0)
    try:
        yield node
    finally:
        node.server.close()


async def test_calls_waiting_for_a_connection_that_breaks_fail_and_never_take_others_replies(
        echo_node: EchoNode) -> None:
    link = NodeLink(NodeAddress("127.0.0.1", echo_node.port), timeout=0.5)
    try:
        wave = [asyncio.ensure_future(link.call([("ECHO", b"w%d" % i)])) for i in range(20)]
        _, pending = await asyncio.wait(wave, timeout=10)  # a deadline against hanging, not a timing
        assert not pending, f"{len(pending)} calls never resolved"
        for i, task in enumerate(wave):  # the first connection was dropped: nothing may answer
            exc = task.exception()
            assert isinstance(exc, LinkError) or task.result() == [b"w%d" % i]
        assert not link.waiting
        calls = [asyncio.ensure_future(link.call([("ECHO", b"c%d" % i)])) for i in range(5)]
        assert await asyncio.gather(*calls) == [[b"c%d" % i] for i in range(5)]
    finally:
        link.close()


async def test_watchdog_fails_batches_left_without_a_stream() -> None:
    link = NodeLink(NodeAddress("127.0.0.1", 1), timeout=0.05)
    loop = asyncio.get_running_loop()
    batch = _Batch(loop.create_future(), 1, loop.time())
    link.waiting.append(batch)  # as an orphan would be: queued while no stream is current
    link._check()
    with pytest.raises(LinkError):
        await asyncio.wait_for(batch.done, 10)


class DictNode:
    """A one-node distributed backend over a dict, answering like Redis in RESP2; ``log`` keeps the order."""

    kind = "nodes"

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.log: list[bytes] = []

    def refuses(self, command: bytes) -> str | None:
        return None

    async def run(self, calls: list[Call]) -> list[Any]:
        out: list[Any] = []
        for call in calls:
            args = [bytes(a) for a in call.args]
            name = args[0].upper()
            self.log.append(name)
            if name == b"SET":
                old, self.data[args[1]] = self.data.get(args[1]), args[2]
                out.append(old if b"GET" in [a.upper() for a in args[3:]] else b"OK")
            elif name == b"GET":
                out.append(self.data.get(args[1]))
            else:
                raise AssertionError(f"unexpected {name!r}")
        return out

    def primaries(self) -> int:
        return 1

    async def on_primary(self, index: int, args: tuple[bytes, ...]) -> Any:
        self.log.append(args[0].upper())
        if args[0].upper() == b"FLUSHDB":
            self.data.clear()
            return b"OK"
        return len(self.data)  # DBSIZE


@pytest.fixture
def proxy() -> tuple[ProxyServer, DictNode]:
    server = ProxyServer(Engine(), None, require_auth=False)
    node = DictNode()
    server.router.backends = {"default": node}  # type: ignore[dict-item]
    return server, node


async def test_old_value_from_set_get_is_a_bulk_reply_even_with_crlf(proxy: tuple[ProxyServer, DictNode]) -> None:
    server, _ = proxy
    session = Session(True, "t")
    await server.run_batch(session, [[b"SET", b"k", b"line1\r\n+INJECTED"]])
    assert await server.run_batch(session, [[b"SET", b"k", b"v2", b"get"]]) == [b"$16\r\nline1\r\n+INJECTED\r\n"]
    assert encode(session, b"a\r\n+OK", simple=True) == b"$6\r\na\r\n+OK\r\n"
    assert encode(session, b"OK", simple=True) == b"+OK\r\n"


async def test_keyless_commands_run_in_pipeline_order(proxy: tuple[ProxyServer, DictNode]) -> None:
    server, node = proxy
    session = Session(True, "t")
    node.data[b"old"] = b"x"
    replies = await server.run_batch(session, [[b"SET", b"b", b"0"], [b"DBSIZE"], [b"FLUSHDB"],
                                               [b"SET", b"a", b"1"], [b"GET", b"a"], [b"DBSIZE"]])
    assert replies == [b"+OK\r\n", b":2\r\n", b"+OK\r\n", b"+OK\r\n", b"$1\r\n1\r\n", b":1\r\n"]
    assert node.log == [b"SET", b"DBSIZE", b"FLUSHDB", b"SET", b"GET", b"DBSIZE"]
    assert node.data == {b"a": b"1"}


async def test_replies_before_hello_keep_the_protocol_they_were_asked_in(
        proxy: tuple[ProxyServer, DictNode]) -> None:
    server, _ = proxy
    session = Session(True, "t")
    replies = await server.run_batch(session, [[b"GET", b"missing"], [b"HELLO", b"3"], [b"GET", b"missing"]])
    assert replies[0] == b"$-1\r\n" and replies[2] == b"_\r\n"


class FakeControl:
    """A node's control client: answers PING and REPLICAOF unless told to fail them."""

    def __init__(self) -> None:
        self.up = True
        self.refuse: set[str] = set()
        self.log: list[tuple[Any, ...]] = []

    async def execute_command(self, *args: Any) -> Any:
        if not self.up:
            raise ConnectionError("down")
        if args[0] in self.refuse:
            raise ResponseError(f"{args[0]} refused")
        self.log.append(args)
        return b"OK"

    async def aclose(self) -> None:
        return None


def fake_shard(name: str, endpoints: int = 1) -> Shard:
    return Shard(name, 1, [Endpoint(NodeAddress(name, 6000 + i), FakeControl(),  # type: ignore[arg-type]
                                    NodeLink(NodeAddress(name, 6000 + i), 0.1)) for i in range(endpoints)])


POLICY = HealthPolicy(timeout=0.2, eject_after=2, probe_interval=0.01, probe_max_interval=0.05)


async def test_failures_of_one_break_count_once_and_a_last_node_is_never_ejected() -> None:
    only = fake_shard("a")
    pool = NodePool([only], POLICY)
    try:
        shared = LinkError("no reply within 0.2 s")
        for _ in range(10):  # ten calls failed by one watchdog firing
            pool.failed(only, only.active, shared)
        assert only.failures == 1 and only.state == "suspect"
        for _ in range(5):  # separate events: still the only node, so never ejected
            pool.failed(only, only.active, LinkError("no reply"))
        await wait_for(lambda: only.probe is not None and only.probe.done())
        assert only.state == "suspect" and pool.ejections == 0 and len(pool.ring) == 1
    finally:
        await pool.close()


async def test_a_replica_that_refuses_to_take_over_does_not_get_the_writes() -> None:
    shard, other = fake_shard("a", endpoints=2), fake_shard("b")
    primary, replica = shard.endpoints
    primary.client.up = False  # type: ignore[attr-defined]
    replica.client.refuse.add("REPLICAOF")  # type: ignore[attr-defined]
    pool = NodePool([shard, other], POLICY)
    try:
        pool.failed(shard, primary, LinkError("one"))
        pool.failed(shard, primary, LinkError("two"))
        await wait_for(lambda: shard.state == "ejected")
        assert shard.active is primary and pool.takeovers == 0
    finally:
        await pool.close()


async def test_an_ejected_node_is_readmitted_after_its_stale_keys_are_deleted_and_only_those() -> None:
    shard, other = fake_shard("a"), fake_shard("b")
    pool = NodePool([shard, other], POLICY)
    deletes: list[list[bytes]] = []

    async def delete_keys(endpoint: Endpoint, keys: list[bytes]) -> None:
        deletes.append(sorted(keys))
        if len(deletes) == 1:
            raise LinkError("failed the first time")

    pool.delete_keys = delete_keys
    full = KetamaRing([("a", 1), ("b", 1)])
    keys = [b"k%d" % i for i in range(100)]
    mine = sorted(k for k in keys if full.node_for(k) == "a")
    try:
        shard.active.client.up = False  # type: ignore[attr-defined]
        pool.failed(shard, shard.active, LinkError("one"))
        pool.failed(shard, shard.active, LinkError("two"))
        await wait_for(lambda: shard.state == "ejected")
        pool.note_written_elsewhere(keys)  # every key written while it is out: only its own are stale
        shard.active.client.up = True  # type: ignore[attr-defined]
        await wait_for(lambda: shard.state == "healthy")
        assert deletes == [mine, mine]  # the failed round was retried before readmission
        assert not any(c[0] == "FLUSHDB" for c in shard.active.client.log)  # type: ignore[attr-defined]
    finally:
        await pool.close()


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.paused = False
        self.pauses = 0
        self.written: list[bytes] = []

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def pause_reading(self) -> None:
        self.paused = True
        self.pauses += 1

    def resume_reading(self) -> None:
        self.paused = False

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.written.append(data)

    def is_closing(self) -> bool:
        return False


async def test_a_client_pipelining_faster_than_the_nodes_answer_is_paused_then_resumed(
        proxy: tuple[ProxyServer, DictNode]) -> None:
    server, node = proxy
    gate = asyncio.Event()
    answer = node.run

    async def slow_run(calls: list[Call]) -> list[Any]:
        await gate.wait()
        return await answer(calls)

    node.run = slow_run  # type: ignore[method-assign]
    connection = ProxyConnection(server)
    transport = FakeTransport()
    connection.connection_made(transport)
    try:
        for i in range(MAX_PENDING + 10):
            if transport.paused:
                break
            connection.data_received(b"*2\r\n$3\r\nGET\r\n$%d\r\nk%d\r\n" % (len(b"k%d" % i), i))
        assert transport.paused and connection.pending == MAX_PENDING
        gate.set()
        await wait_for(lambda: connection.pending == 0)
        assert not transport.paused and transport.pauses == 1
        assert len(transport.written) == MAX_PENDING
    finally:
        connection.connection_lost(None)


async def test_closing_stops_a_probe_even_when_a_cancellation_is_swallowed() -> None:
    for _ in range(20):  # Python 3.11's wait_for drops a cancellation now and then: closing must still end
        shard, other = fake_shard("a", endpoints=2), fake_shard("b")
        shard.endpoints[0].client.up = False  # type: ignore[attr-defined]
        shard.endpoints[1].client.refuse.add("REPLICAOF")  # type: ignore[attr-defined]
        busy = HealthPolicy(timeout=0.2, eject_after=2, probe_interval=0, probe_max_interval=0)  # probes back to back
        pool = NodePool([shard, other], busy)
        pool.failed(shard, shard.active, LinkError("one"))
        pool.failed(shard, shard.active, LinkError("two"))
        await wait_for(lambda: shard.state == "ejected")  # noqa: B023
        await asyncio.wait_for(pool.close(), 30)
