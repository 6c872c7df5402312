"""Dispatch on the RESP port: command names in any case, arity, auth, QUIT in a pipeline, counts."""

from __future__ import annotations

from typing import Any

from mezzo.cache.engine import Engine
from mezzo.cache.resp import RespConnection
from mezzo.cache.server import CacheServer
from mezzo.telemetry.metrics import Metrics
from mezzo.testing.transport import FakeTransport as Transport


def encode(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def connect(server: CacheServer) -> tuple[RespConnection, Transport]:
    conn, transport = RespConnection(server), Transport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport


def test_names_in_any_case_and_arity_in_one_pipeline() -> None:
    server = CacheServer(Engine(), None, require_auth=False)
    conn, transport = connect(server)
    conn.data_received(encode(b"SET", b"k", b"v") + encode(b"get", b"k") + encode(b"GeT", b"k")
                       + encode(b"GET") + encode(b"GET", b"k", b"extra") + encode(b"NOPE", b"x")
                       + encode(b"set", b"n", b"1", b"EX", b"100") + encode(b"TTL", b"n"))
    assert transport.out == (b"+OK\r\n" + b"$1\r\nv\r\n" * 2
                             + b"-ERR wrong number of arguments for 'get' command\r\n" * 2
                             + b"-ERR unknown command 'NOPE', with args beginning with: 'x'\r\n"
                             + b"+OK\r\n:100\r\n")
    assert not transport.closed


def test_quit_stops_the_pipeline_and_closes() -> None:
    server = CacheServer(Engine(), None, require_auth=False)
    conn, transport = connect(server)
    conn.data_received(encode(b"SET", b"a", b"1") + encode(b"QUIT") + encode(b"SET", b"b", b"2"))
    assert transport.out == b"+OK\r\n+OK\r\n" and transport.closed
    conn.data_received(encode(b"SET", b"c", b"3"))  # anything still arriving is ignored
    assert server.engine.space("default").lookup(b"b") is None
    assert server.engine.space("default").lookup(b"c") is None


def test_commands_before_auth_get_noauth_in_a_pipeline() -> None:
    class Tokens:
        def authenticate(self, token: str) -> Any:
            return None

    server = CacheServer(Engine(), Tokens(), require_auth=True)
    conn, transport = connect(server)
    conn.data_received(encode(b"PING") + encode(b"SET", b"a", b"1") + encode(b"AUTH", b"wrong"))
    assert transport.out == (b"+PONG\r\n-NOAUTH Authentication required.\r\n"
                             b"-WRONGPASS invalid username-password pair or user is disabled.\r\n")
    assert server.engine.space("default").lookup(b"a") is None


def test_select_moves_the_connection_to_another_namespace() -> None:
    server = CacheServer(Engine(), None, require_auth=False)
    conn, transport = connect(server)
    conn.data_received(encode(b"SELECT", b"2") + encode(b"SET", b"k", b"v") + encode(b"SELECT", b"16"))
    assert transport.out == b"+OK\r\n+OK\r\n-ERR DB index is out of range\r\n"
    assert server.engine.space("db2").lookup(b"k") == b"v" and server.engine.space("default").lookup(b"k") is None
    conn.data_received(encode(b"CONFIG", b"SET", b"save", b""))
    assert transport.out.endswith(b"-ERR CONFIG subcommands other than GET are not supported by Mezzo\r\n")


async def test_counts_reach_prometheus_and_info_at_scrape() -> None:
    metrics = Metrics()
    server = CacheServer(Engine(), None, require_auth=False, metrics=metrics)
    conn, _ = connect(server)
    conn.data_received(encode(b"SET", b"k", b"v") + encode(b"GET", b"k") * 3 + encode(b"NOPE"))
    await metrics.refresh()
    body = metrics.render()[0].decode()
    assert 'mezzo_cache_commands_total{command="get"} 3.0' in body
    assert 'mezzo_cache_commands_total{command="set"} 1.0' in body
    conn.data_received(encode(b"get", b"k"))
    await metrics.refresh()
    await metrics.refresh()  # a second scrape adds nothing new
    assert 'mezzo_cache_commands_total{command="get"} 4.0' in metrics.render()[0].decode()
    assert "total_commands_processed:6" in server.info()


def test_a_failing_command_answers_an_error_and_the_pipeline_goes_on() -> None:
    from mezzo.cache.server import _Entry

    def boom(server: Any, session: Any, args: list[bytes]) -> bytes:
        raise RuntimeError("a bug")

    server = CacheServer(Engine(), None, require_auth=False)
    server.table[b"BOOM"] = _Entry(b"boom", boom, 1)
    conn, transport = connect(server)
    conn.data_received(encode(b"BOOM") + encode(b"SET", b"k", b"v"))
    conn.data_received(encode(b"BOOM"))
    assert transport.out == b"-ERR internal error running this command\r\n+OK\r\n" \
                            b"-ERR internal error running this command\r\n"
    assert not transport.closed
