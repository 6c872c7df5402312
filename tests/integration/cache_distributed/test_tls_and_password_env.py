"""TLS to cache nodes (``rediss://``) and passwords read from the environment (``passwordEnv``),
end to end: Cache resources on a node, the RESP proxy, the nodes endpoint, and both ways Mezzo
connects to a node (link.py's pipelined connection and pool.py's redis-py control client).

There is no TLS Redis to test against: a TLS-terminating proxy of the test's own (certificates
made here) forwards to the shared Redis, or to redis-server processes of the test."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from structlog.testing import capture_logs

from mezzo.cache.distributed.backend import Call, NodeUnavailable
from mezzo.cache.distributed.cluster import ClusterBackend
from mezzo.cache.distributed.namespaces import CacheNamespaces, shard_configs
from mezzo.cache.distributed.pool import Endpoint
from mezzo.cache.distributed.sharded import ShardedBackend
from mezzo.cache.model import CacheSpec
from mezzo.sdk.errors import APIError
from mezzo.testing.fixtures import RunningNode, wait_for

from .redis_procs import RedisServers
from .tls_nodes import AuthNode, Certs, TLSProxy, make_certs

SHARED_REDIS = 6379


def resp_port(node: RunningNode) -> int:
    return int(node.node.url("resp").rsplit(":", 1)[1])


async def status(node: RunningNode, namespace: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=node.url, headers={"authorization": f"Bearer {node.token}"}) as http:
        response = await http.get(f"/v1/cache/{namespace}/nodes")
        return response.json() if response.status_code == 200 else {}  # type: ignore[no-any-return]


async def declare(node: RunningNode, name: str, spec: dict[str, Any]) -> None:
    """Apply a Cache resource and wait until this node runs its backend."""
    async with node.client() as client:
        await client.resources.apply([{"apiVersion": "mezzo.dev/v1", "kind": "Cache", "metadata": {"name": name},
                                       "spec": spec}])

    async def live() -> bool:
        return (await status(node, name)).get("backend") == spec["backend"]

    await wait_for(live, timeout=10)


def endpoint(node: RunningNode, namespace: str) -> Endpoint:
    backend = node.node.service(CacheNamespaces).backend(namespace)
    assert isinstance(backend, ShardedBackend)
    (shard,) = backend.pool.shards.values()
    return shard.active


def standalone(url: str) -> ShardedBackend:
    spec = CacheSpec.model_validate({"backend": "redis", "url": url, "failureDetection": {"timeout": "2s"}})
    return ShardedBackend(shard_configs(spec), spec.failure_detection.policy(), kind="redis")


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return make_certs(tmp_path / "tls")


@pytest.fixture
async def tls_redis(certs: Certs, redis_url: str) -> AsyncIterator[TLSProxy]:
    """TLS in front of the shared Redis."""
    proxy = await TLSProxy(certs, SHARED_REDIS).start()
    try:
        yield proxy
    finally:
        await proxy.close()


async def test_bad_tls_options_and_password_env_are_400s_naming_the_field(node: RunningNode) -> None:
    bad = [({"backend": "redis", "url": "rediss://h?ssl_cert_reqs=maybe"}, "spec.url", "ssl_cert_reqs"),
           ({"backend": "redis", "url": "redis://:hunter2@h", "passwordEnv": "P"}, "spec.passwordEnv", "not both"),
           ({"backend": "nodes", "nodes": [{"url": "rediss://a:1?ssl_keyfile=/k"}]}, "spec.nodes.0.url", "ssl_certfile"),
           ({"backend": "nodes", "nodes": [{"url": "rediss://a:1", "passwordEnv": "1X"}]},
            "spec.nodes.0.passwordEnv", "pattern")]
    async with node.client() as client:
        for spec, field, reason in bad:
            with pytest.raises(APIError) as info:
                await client.resources.apply([{"apiVersion": "mezzo.dev/v1", "kind": "Cache",
                                               "metadata": {"name": "x"}, "spec": spec}])
            assert info.value.status == 400
            [error] = info.value.errors
            assert error["field"] == field and reason in error["reason"], (spec, error)
            assert "hunter2" not in json.dumps(info.value.problem)


# TLS ---------------------------------------------------------------------------------------------------------


async def test_a_rediss_node_with_its_ca_serves_the_proxy_and_the_control_client(
        node: RunningNode, certs: Certs, tls_redis: TLSProxy, redis_url: str, redis_prefix: str) -> None:
    await declare(node, "secure", {"backend": "redis", "database": 7,
                                   "url": f"rediss://127.0.0.1:{tls_redis.port}/0?ssl_ca_certs={certs.ca}"})
    key = f"{redis_prefix}tls"
    r = aioredis.Redis(port=resp_port(node), password=node.token, db=7)
    direct = aioredis.Redis.from_url(redis_url)
    try:
        assert await r.set(key, "over tls") and await r.get(key) == b"over tls"
        assert await direct.get(key) == b"over tls"  # it reached the shared Redis, through the TLS proxy
        ep = endpoint(node, "secure")
        assert ep.link._stream is not None and ep.link._stream.transport is not None
        assert ep.link._stream.transport.get_extra_info("ssl_object") is not None  # link.py speaks TLS
        before = tls_redis.handshakes
        assert await ep.client.execute_command("GET", key) == b"over tls"  # pool.py's redis-py client too
        assert tls_redis.handshakes == before + 1
        (shown,) = (await status(node, "secure"))["nodes"]
        assert shown["state"] == "healthy" and shown["lastError"] is None, shown
    finally:
        await r.aclose()
        await direct.aclose()


async def test_without_the_ca_the_node_reports_a_verification_failure(
        node: RunningNode, tls_redis: TLSProxy) -> None:
    await declare(node, "unverified", {"backend": "redis", "database": 9, "url": f"rediss://127.0.0.1:{tls_redis.port}",
                                       "failureDetection": {"timeout": "1s"}})
    r = aioredis.Redis(port=resp_port(node), password=node.token, db=9)
    try:
        with pytest.raises(aioredis.ResponseError, match=r"unavailable .*TLS certificate verification failed"):
            await r.get("anything")
        (shown,) = (await status(node, "unverified"))["nodes"]
        assert shown["state"] == "suspect" and "TLS certificate verification failed" in shown["lastError"], shown
        with pytest.raises(RedisConnectionError, match="certificate verify failed"):
            await endpoint(node, "unverified").client.execute_command("PING")
        assert tls_redis.handshakes == 0  # nothing got through
    finally:
        await r.aclose()


async def test_the_hostname_is_verified_and_ssl_cert_reqs_none_turns_verification_off(
        certs: Certs, tls_redis: TLSProxy, redis_prefix: str) -> None:
    key = f"{redis_prefix}none".encode()
    # The certificate names 127.0.0.1 only: reached as localhost, it is refused by both clients.
    mismatch = standalone(f"rediss://localhost:{tls_redis.port}?ssl_ca_certs={certs.ca}")
    unverified = standalone(f"rediss://localhost:{tls_redis.port}?ssl_cert_reqs=none")
    try:
        (reply,) = await mismatch.run([Call(key, (b"GET", key))])
        assert isinstance(reply, NodeUnavailable) and "Hostname mismatch" in str(reply), reply
        (shard,) = mismatch.pool.shards.values()
        with pytest.raises(RedisConnectionError, match="Hostname mismatch"):
            await shard.active.client.execute_command("PING")
        assert tls_redis.handshakes == 0
        assert await unverified.run([Call(key, (b"SET", key, b"v"), "write"), Call(key, (b"GET", key))]) == \
            [b"OK", b"v"]
        (shard,) = unverified.pool.shards.values()
        assert await shard.active.client.execute_command("PING") == b"PONG"
    finally:
        await mismatch.close()
        await unverified.close()


async def test_a_client_certificate_is_presented_to_a_node_that_requires_one(
        certs: Certs, redis_url: str, redis_prefix: str) -> None:
    proxy = await TLSProxy(certs, SHARED_REDIS, require_client_cert=True).start()
    base = f"rediss://127.0.0.1:{proxy.port}?ssl_ca_certs={certs.ca}"
    with_cert = standalone(f"{base}&ssl_certfile={certs.client_cert}&ssl_keyfile={certs.client_key}")
    without = standalone(base)
    key = f"{redis_prefix}mtls".encode()
    try:
        assert await with_cert.run([Call(key, (b"SET", key, b"m"), "write")]) == [b"OK"]
        (shard,) = with_cert.pool.shards.values()
        assert await shard.active.client.execute_command("GET", key) == b"m"
        assert len(proxy.client_certs) == 2  # the link and the control client each showed it
        (reply,) = await without.run([Call(key, (b"GET", key))])
        assert isinstance(reply, NodeUnavailable), reply
    finally:
        await with_cert.close()
        await without.close()
        await proxy.close()


async def test_redis_cluster_over_rediss(redis_servers: RedisServers, certs: Certs) -> None:
    members = redis_servers.cluster(3)
    proxies = [await TLSProxy(certs, m.port).start() for m in members]
    plain = [aioredis.Redis(port=m.port) for m in members]
    backend: ClusterBackend | None = None
    try:
        for client, proxy in zip(plain, proxies, strict=True):  # the cluster names the TLS ports to clients
            await client.config_set("cluster-announce-port", proxy.port)
        ports = {p.port for p in proxies}

        async def announced() -> bool:
            for client in plain:
                slots = await client.execute_command("CLUSTER", "SLOTS")
                if {int(node[1]) for entry in slots for node in entry[2:]} != ports:
                    return False
            return True

        await wait_for(announced, timeout=20)
        spec = CacheSpec.model_validate({"backend": "redis-cluster",
                                         "urls": [f"rediss://127.0.0.1:{p.port}?ssl_ca_certs={certs.ca}"
                                                  for p in proxies]})
        backend = ClusterBackend(spec.seeds(), spec.failure_detection.policy())
        keys = [f"item:{i}".encode() for i in range(40)]
        assert await backend.run([Call(k, (b"SET", k, k.upper()), "write") for k in keys]) == [b"OK"] * 40
        assert await backend.run([Call(k, (b"GET", k)) for k in keys]) == [k.upper() for k in keys]
        assert sum([await c.dbsize() for c in plain]) == 40  # in the cluster, spread over its nodes
        assert all(p.handshakes for p in proxies), [p.handshakes for p in proxies]
        assert backend.status()["lastError"] is None
    finally:
        if backend is not None:
            await backend.close()
        for client in plain:
            await client.aclose()
        for proxy in proxies:
            await proxy.close()


# passwordEnv -----------------------------------------------------------------------------------------------


async def test_password_env_authenticates_each_connection_and_stays_out_of_the_resource(
        node: RunningNode, unique: str, monkeypatch: pytest.MonkeyPatch) -> None:
    secret, variable = f"s3cret-{unique}", f"MEZZO_TEST_CACHE_PASSWORD_{unique.upper()}"
    fake = await AuthNode(secret, user="app").start()
    monkeypatch.setenv(variable, secret)
    r = aioredis.Redis(port=resp_port(node), password=node.token, db=10)
    try:
        await declare(node, "guarded", {"backend": "redis", "database": 10, "url": f"redis://app@127.0.0.1:{fake.port}",
                                        "passwordEnv": variable})
        assert await r.set("k", "v") and await r.get("k") == b"v"
        assert await endpoint(node, "guarded").client.execute_command("PING") == b"PONG"
        assert fake.connections == 2 and fake.auths == [(b"app", secret.encode())] * 2  # link and control client
        async with node.client() as client:
            stored = await client.resources.get("Cache", "guarded")
        shown = json.dumps(stored.model_dump(mode="json"))
        assert variable in shown and secret not in shown
    finally:
        await r.aclose()
        await fake.close()


async def test_an_unset_or_wrong_password_variable_is_a_clear_node_error_without_the_value(
        node: RunningNode, unique: str, monkeypatch: pytest.MonkeyPatch) -> None:
    secret, wrong = f"right-{unique}", f"wrong-{unique}"
    variable = f"MEZZO_TEST_CACHE_PASSWORD_{unique.upper()}"
    monkeypatch.delenv(variable, raising=False)
    fake = await AuthNode(secret).start()  # AUTH <password>: no user in the URL
    r = aioredis.Redis(port=resp_port(node), password=node.token, db=11)
    seen: list[str] = []
    try:
        await declare(node, "locked", {"backend": "redis", "database": 11, "url": f"redis://127.0.0.1:{fake.port}",
                                       "passwordEnv": variable, "failureDetection": {"timeout": "1s"}})
        with capture_logs() as logs:
            with pytest.raises(aioredis.ResponseError) as unset:
                await r.get("k")
            seen.append(str(unset.value))
            assert f"environment variable {variable}" in str(unset.value) and "is not set" in str(unset.value)
            (shown,) = (await status(node, "locked"))["nodes"]
            assert shown["state"] == "suspect" and variable in shown["lastError"], shown
            with pytest.raises(RedisConnectionError, match=variable):
                await endpoint(node, "locked").client.execute_command("PING")
            assert fake.auths == []  # nothing was sent for a password Mezzo does not have

            monkeypatch.setenv(variable, wrong)  # read again at the next connect: no re-apply needed
            with pytest.raises(aioredis.ResponseError, match="WRONGPASS") as refused:
                await r.get("k")
            seen += [str(refused.value), json.dumps(await status(node, "locked"))]
            assert fake.auths == [(wrong.encode(),)]

            monkeypatch.setenv(variable, secret)
            assert await r.set("k", "v") and await r.get("k") == b"v"
            assert (await status(node, "locked"))["nodes"][0]["state"] == "healthy"
        seen += [json.dumps(logs, default=str)]
        assert any(variable in text for text in seen)
        for text in seen:
            assert wrong not in text and secret not in text
    finally:
        await r.aclose()
        await fake.close()
