"""What EXPIREAT, PEXPIREAT, EXPIRETIME, PEXPIRETIME, GETRANGE, SETRANGE, HINCRBYFLOAT and OBJECT do to
the engine beyond their replies (compared with redis-server in
``tests/integration/test_cache_more_commands.py``): near caches hear of their writes, memory limits
hold, snapshots keep their deadlines, the proxy routes them by key; and the OBJECT answers Mezzo gives
where it cannot answer as Redis does (documented in docs/cache.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mezzo.cache import engine
from mezzo.cache.commands import COMMANDS
from mezzo.cache.commands_more import encoding, string_range
from mezzo.cache.engine import CacheError, Engine, Keyspace
from mezzo.cache.proxy import ProxyServer
from mezzo.cache.resp import Session
from mezzo.cache.server import CacheServer

LATER_MS = 4_000_000_000_123  # in 2096


def run(server: CacheServer, session: Session, *args: str | bytes) -> bytes:
    return server.execute(session, [a.encode() if isinstance(a, str) else a for a in args])


@pytest.fixture
def served() -> tuple[CacheServer, Session, Keyspace]:
    server = CacheServer(Engine(), None, require_auth=False)
    session = Session(True, "test")
    return server, session, server.space_for(session)


def test_each_command_is_registered_with_redis_arity_and_flags() -> None:
    expected = {b"expireat": (-3, "write"), b"pexpireat": (-3, "write"), b"expiretime": (2, "readonly"),
                b"pexpiretime": (2, "readonly"), b"getrange": (4, "readonly"), b"substr": (4, "readonly"),
                b"setrange": (4, "write"), b"hincrbyfloat": (4, "write"), b"object": (-2, "")}
    assert {name: COMMANDS[name][1:] for name in expected} == expected


def test_encoding_names_by_type_and_size() -> None:
    assert [encoding(v) for v in (b"0", b"-12", b"9223372036854775807", b"9223372036854775808", b"007", b"1.5",
                                  b"", b"x" * 44, b"x" * 45, b"1" * 21)] == \
        [b"int", b"int", b"int", b"embstr", b"embstr", b"embstr", b"embstr", b"embstr", b"raw", b"embstr"]
    assert encoding({b"f": b"v" * 64, b"g" * 64: b"1"}) == b"listpack"
    assert encoding({b"f": b"v" * 65}) == encoding({b"f" * 65: b"v"}) == b"hashtable"
    assert encoding({b"f%d" % i: b"1" for i in range(128)}) == b"listpack"
    assert encoding({b"f%d" % i: b"1" for i in range(129)}) == b"hashtable"


def test_string_range_clamps_like_redis() -> None:
    assert string_range(b"Hello", 0, -1) == b"Hello" and string_range(b"Hello", -3, 100) == b"llo"
    assert string_range(b"Hello", -1, -3) == b"" and string_range(b"Hello", 3, 1) == b""
    assert string_range(b"", 0, -1) == b"" and string_range(b"Hello", -100, 0) == b"H"


def test_object_answers_what_the_engine_knows_without_touching_the_key(served: tuple[CacheServer, Session, Keyspace]) -> None:
    server, s, ks = served
    run(server, s, "SET", "a", "5")
    run(server, s, "SET", "b", "x")
    hits, misses, order = ks.hits, ks.misses, list(ks.data)
    assert run(server, s, "OBJECT", "ENCODING", "a") == b"$3\r\nint\r\n"
    assert run(server, s, "OBJECT", "REFCOUNT", "a") == b":1\r\n"  # Redis: 2147483647 (a shared integer)
    assert run(server, s, "OBJECT", "IDLETIME", "a") == \
        b"-ERR idle time not tracked: Mezzo's cache keeps no last-access time per key.\r\n"
    assert run(server, s, "OBJECT", "FREQ", "a").startswith(b"-ERR An LFU maxmemory policy is not selected")
    assert run(server, s, "OBJECT", "ENCODING", "gone") == b"$-1\r\n"
    assert (ks.hits, ks.misses, list(ks.data)) == (hits, misses, order)  # no hit, no miss, LRU order kept
    s.resp3 = True
    assert run(server, s, "OBJECT", "IDLETIME", "gone") == b"_\r\n"


def test_object_freq_is_the_lfu_counter_and_idletime_is_redis_lfu_error(served: tuple[CacheServer, Session, Keyspace],
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    server, s, ks = served
    monkeypatch.setattr(engine, "lfu_minutes", lambda: 1000)  # no decay while the test runs
    ks.policy = "lfu"
    run(server, s, "SET", "k", "v")
    assert run(server, s, "OBJECT", "FREQ", "k") == b":5\r\n"  # Redis' LFU_INIT_VAL for a new key
    run(server, s, "GET", "k")
    assert run(server, s, "OBJECT", "FREQ", "k") == b":6\r\n"  # at or below LFU_INIT_VAL a hit always counts
    for _ in range(2):
        run(server, s, "GET", "k")
    freq = ks.frequency(b"k")
    assert 6 <= freq <= 8  # above LFU_INIT_VAL a hit counts with probability 1/((counter - 5) * 10 + 1)
    assert run(server, s, "OBJECT", "FREQ", "k") == b":%d\r\n" % freq  # OBJECT itself does not count
    assert ks.frequency(b"k") == freq
    assert run(server, s, "OBJECT", "IDLETIME", "k").startswith(b"-ERR An LFU maxmemory policy is selected, idle time")


def test_writes_tell_near_caches_and_no_ops_do_not(served: tuple[CacheServer, Session, Keyspace]) -> None:
    server, s, ks = served
    heard: list[bytes | None] = []
    ks.tracker = heard.append
    run(server, s, "SET", "k", "abc")
    run(server, s, "HSET", "h", "f", "1")
    heard.clear()
    run(server, s, "SETRANGE", "k", "1", "Z")
    run(server, s, "HINCRBYFLOAT", "h", "f", "0.5")
    run(server, s, "PEXPIREAT", "k", str(LATER_MS))
    assert heard == [b"k", b"h", b"k"]
    heard.clear()
    run(server, s, "SETRANGE", "k", "1", "")  # nothing written
    run(server, s, "EXPIREAT", "k", "4000000000", "NX")  # has a TTL: not set
    run(server, s, "GETRANGE", "k", "0", "-1")
    run(server, s, "EXPIRETIME", "k")
    assert heard == []
    run(server, s, "EXPIREAT", "h", "1")  # a deadline already past deletes
    assert heard == [b"h"] and not ks.exists(b"h")


def test_setrange_past_the_limit_and_under_noeviction_changes_nothing(served: tuple[CacheServer, Session, Keyspace]) -> None:
    server, s, ks = served
    run(server, s, "SET", "k", "abc")
    for offset in ("9223372036854775807", "536870910"):  # an offset whose sum overflows 64 bits, and one just past
        assert run(server, s, "SETRANGE", "k", offset, "xyz") == \
            b"-ERR string exceeds maximum allowed size (proto-max-bulk-len)\r\n"
    ks.policy, ks.max_memory = "noeviction", ks.memory + 10
    assert run(server, s, "SETRANGE", "k", "100", "x").startswith(b"-OOM")
    assert run(server, s, "HINCRBYFLOAT", "new", "f", "1").startswith(b"-OOM")
    assert run(server, s, "GET", "k") == b"$3\r\nabc\r\n" and not ks.exists(b"new")


def test_append_past_the_limit_is_refused_and_changes_nothing(served: tuple[CacheServer, Session, Keyspace],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import mezzo.cache.commands as commands

    server, s, _ = served
    monkeypatch.setattr(commands, "PROTO_MAX_BULK_LEN", 8)  # the real 512 MB, scaled down
    run(server, s, "SET", "k", "abcde")
    assert run(server, s, "APPEND", "k", "fgh") == b":8\r\n"  # up to the limit is fine
    assert run(server, s, "APPEND", "k", "i") == b"-ERR string exceeds maximum allowed size (proto-max-bulk-len)\r\n"
    assert run(server, s, "APPEND", "new", "123456789").startswith(b"-ERR string exceeds")
    assert run(server, s, "GET", "k") == b"$8\r\nabcdefgh\r\n" and run(server, s, "EXISTS", "new") == b":0\r\n"


def test_new_keys_take_the_namespace_default_ttl_and_edits_keep_theirs(served: tuple[CacheServer, Session, Keyspace]) -> None:
    server, s, ks = served
    ks.default_ttl_ms = 60_000
    run(server, s, "SETRANGE", "made", "3", "x")
    run(server, s, "HINCRBYFLOAT", "h", "f", "1")
    assert 0 < ks.ttl_ms(b"made") <= 60_000 and 0 < ks.ttl_ms(b"h") <= 60_000
    run(server, s, "SET", "kept", "v", "PXAT", str(LATER_MS))
    run(server, s, "SETRANGE", "kept", "0", "w")
    run(server, s, "HINCRBYFLOAT", "h", "f", "1")
    assert ks.expires[b"kept"] == LATER_MS and 0 < ks.ttl_ms(b"h") <= 60_000


def test_a_snapshot_keeps_an_absolute_deadline_to_the_millisecond(tmp_path: Path) -> None:
    server = CacheServer(Engine(), None, require_auth=False)
    s = Session(True, "test")
    run(server, s, "SET", "k", "v")
    run(server, s, "PEXPIREAT", "k", str(LATER_MS))
    run(server, s, "HINCRBYFLOAT", "h", "f", "2.5")
    server.engine.save(tmp_path / "snap")
    again = CacheServer(Engine(), None, require_auth=False)
    again.engine.load(tmp_path / "snap")
    assert run(again, s, "PEXPIRETIME", "k") == b":%d\r\n" % LATER_MS
    assert run(again, s, "HGET", "h", "f") == b"$3\r\n2.5\r\n"


def test_the_proxy_routes_each_by_its_key_and_answers_object_help_itself() -> None:
    server = ProxyServer(Engine(), require_auth=False)
    session = Session(True, "a")
    for args in ([b"EXPIREAT", b"k", b"1"], [b"PEXPIREAT", b"k", b"1", b"NX"], [b"EXPIRETIME", b"k"],
                 [b"PEXPIRETIME", b"k"], [b"GETRANGE", b"k", b"0", b"1"], [b"SUBSTR", b"k", b"0", b"1"],
                 [b"SETRANGE", b"k", b"0", b"x"], [b"HINCRBYFLOAT", b"k", b"f", b"1"], [b"OBJECT", b"ENCODING", b"k"],
                 [b"object", b"freq", b"k"]):
        plan = server.plan(session, args)
        assert [(c.key, tuple(c.args), c.access) for c in plan.calls] == [(b"k", tuple(args), "write")], args
    for bad in ([b"GETRANGE", b"k", b"0"], [b"OBJECT", b"HELP"], [b"OBJECT", b"FOO", b"k"]):
        with pytest.raises(CacheError):  # arity, or not a keyed OBJECT (those run locally: see run_batch)
            server.plan(session, bad)


async def test_object_help_and_errors_run_on_the_proxy_itself_and_memcached_refuses_the_rest() -> None:
    class Memcachedish:  # what a memcached backend says of the commands it cannot serve
        kind = "nodes"

        def refuses(self, command: bytes) -> str | None:
            return f"'{command.decode().upper()}' is not supported on memcached nodes"

        async def run(self, calls: list[object]) -> list[object]:
            raise AssertionError("nothing is sent")

    server = ProxyServer(Engine(), require_auth=False)
    server.router.backends["default"] = Memcachedish()  # type: ignore[assignment]
    session = Session(True, "a")
    help_, foo, expireat = await server.run_batch(session, [[b"OBJECT", b"HELP"], [b"OBJECT", b"FOO"],
                                                            [b"EXPIREAT", b"k", b"1"]])
    assert help_.startswith(b"*11\r\n+OBJECT <subcommand>")
    assert foo == b"-ERR unknown subcommand 'FOO'. Try OBJECT HELP.\r\n"
    assert expireat == b"-ERR 'EXPIREAT' is not supported on memcached nodes\r\n"
