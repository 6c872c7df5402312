"""The Cache kind's schema, how resources map to namespaces, and how the proxy plans commands."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from mezzo.cache.distributed.backend import NodeUnavailable
from mezzo.cache.distributed.namespaces import CacheNamespaces
from mezzo.cache.engine import CacheError, Engine
from mezzo.cache.model import CacheSpec, cache_namespace, parse_redis_url
from mezzo.cache.proxy import ProxyServer, encode, error_reply
from mezzo.cache.resp import Session


def test_redis_urls() -> None:
    address = parse_redis_url("redis://user:p%40ss@cache-1:6390/3")
    assert (address.host, address.port, address.db, address.username, address.password) == \
        ("cache-1", 6390, 3, "user", "p@ss")
    assert parse_redis_url("redis://h").port == 6379
    for bad in ("http://h:1", "redis://:1", "redis://h:99999", "redis://h/16", "redis://h/x", "rediss://h?ssl=1"):
        with pytest.raises(ValueError):
            parse_redis_url(bad)


def errors(spec: dict) -> dict[tuple, str]:
    with pytest.raises(ValidationError) as info:
        CacheSpec.model_validate(spec)
    return {e["loc"]: e["msg"] for e in info.value.errors()}


def test_spec_defaults_and_fields_by_backend() -> None:
    spec = CacheSpec.model_validate({})
    assert spec.backend == "embedded" and not spec.distributed and spec.near_cache.max_keys == 10_000
    nodes = CacheSpec.model_validate({"backend": "nodes", "nodes": [
        {"url": "redis://a:1", "weight": 2, "replica": "redis://a2:1"}, {"url": "redis://b:1", "name": "b"}],
        "failureDetection": {"timeout": "250ms", "ejectAfter": 5}, "defaultTTL": "10m", "maxMemory": "1GiB"})
    assert [n.ring_name for n in nodes.nodes] == ["a:1", "b"] and nodes.default_ttl == 600
    assert nodes.failure_detection.policy().timeout == 0.25 and nodes.max_memory == 1024**3
    assert "url" in str(errors({"backend": "redis"})) and ("url",) in errors({"backend": "redis"})
    assert ("url",) in errors({"url": "redis://a:1"})  # only with backend redis
    assert ("urls",) in errors({"backend": "redis-cluster"})
    assert ("urls",) in errors({"backend": "redis-cluster", "urls": ["redis://a:1/2"]})
    assert ("nodes",) in errors({"backend": "nodes"})
    assert ("nodes",) in errors({"backend": "nodes", "nodes": [{"url": "redis://a:1"}, {"url": "redis://b:1",
                                                                                       "replica": "redis://a:1"}]})
    assert ("nodes", 0, "weight") in errors({"backend": "nodes", "nodes": [{"url": "redis://a:1", "weight": 0}]})
    assert ("failureDetection", "ejectAfter") in errors({"failureDetection": {"ejectAfter": 0}})
    assert ("nearCache", "maxTTL") in errors({"nearCache": {"maxTTL": "0s"}})
    assert ("defaultTTL",) in errors({"defaultTTL": "soon"})
    assert ("bogus",) in errors({"bogus": 1})


def test_namespace_names() -> None:
    assert cache_namespace("default", "sessions") == "sessions"
    assert cache_namespace("team-a", "sessions") == "team-a.sessions"


async def test_database_bindings_older_resource_wins_and_sessions_follow() -> None:
    engine = Engine()
    server = ProxyServer(engine, require_auth=False)
    namespaces = CacheNamespaces(engine, server)
    session = Session(True, "test")
    server.select(session, 4)
    assert session.namespace == "db4"
    now = datetime.now(UTC)
    await namespaces.apply("older", CacheSpec.model_validate({"database": 4, "eviction": "lfu"}), now)
    await namespaces.apply("newer", CacheSpec.model_validate({"database": 4}), now + timedelta(seconds=1))
    assert server.router.by_db == {4: "older"} and engine.space("older").policy == "lfu"
    server.clients[session.id] = type("Conn", (), {"session": session})()  # a connected client
    await namespaces.remove("older")
    assert server.router.by_db == {4: "newer"} and session.namespace == "newer"
    assert engine.space("older").policy == "lru"  # limits back to the defaults
    await namespaces.close()


def test_replies_are_reencoded_for_the_client_protocol() -> None:
    two, three = Session(True, "a"), Session(True, "b")
    three.resp3 = True
    assert encode(two, None) == b"$-1\r\n" and encode(three, None) == b"_\r\n"
    assert encode(two, b"OK", simple=True) == b"+OK\r\n" and encode(two, b"OK") == b"$2\r\nOK\r\n"
    assert encode(two, [b"a", b"1"], as_map=True) == b"*2\r\n$1\r\na\r\n$1\r\n1\r\n"
    assert encode(three, [b"a", b"1"], as_map=True) == b"%1\r\n$1\r\na\r\n$1\r\n1\r\n"
    assert encode(two, [b"0", [b"k"]]) == b"*2\r\n$1\r\n0\r\n*1\r\n$1\r\nk\r\n"
    assert error_reply(NodeUnavailable("cache node x is unavailable")).startswith(b"-TRYAGAIN cache node x")


def test_plans_split_multi_key_commands_and_add_the_default_ttl() -> None:
    server = ProxyServer(Engine(), require_auth=False)
    session = Session(True, "a")
    server.router.default_ttl_ms["db2"] = 5000
    server.select(session, 2)
    plan = server.plan(session, [b"MGET", b"a", b"b"])
    assert [tuple(c.args) for c in plan.calls] == [(b"GET", b"a"), (b"GET", b"b")]
    assert plan.merge([b"1", None]) == b"*2\r\n$1\r\n1\r\n$-1\r\n"
    plan = server.plan(session, [b"GET", b"k"])
    assert plan.merge is None and encode(session, b"v") == b"$1\r\nv\r\n"
    plan = server.plan(session, [b"SET", b"k", b"v"])
    assert tuple(plan.calls[0].args) == (b"SET", b"k", b"v", b"PX", b"5000")
    assert server.plan(session, [b"SET", b"k", b"v", b"ex", b"9"]).calls[0].args[-2:] == [b"ex", b"9"]
    plan = server.plan(session, [b"SETNX", b"k", b"v"])
    assert plan.calls[0].args == (b"SET", b"k", b"v", b"NX", b"PX", b"5000") and plan.merge([None]) == b":0\r\n"
    plan = server.plan(session, [b"MSET", b"a", b"1", b"b", b"2"])
    assert [c.access for c in plan.calls] == ["write", "write"] and plan.merge([b"OK", b"OK"]) == b"+OK\r\n"
    plan = server.plan(session, [b"DEL", b"a", b"b"])
    assert [c.access for c in plan.calls] == ["delete", "delete"] and plan.merge([1, 0]) == b":1\r\n"
    assert server.plan(session, [b"DBSIZE"]).calls == []
    for bad in ([b"GET"], [b"MSET", b"a"], [b"FLUSHALL"], [b"LPUSH", b"l", b"x"]):
        with pytest.raises(CacheError):
            server.plan(session, bad)
