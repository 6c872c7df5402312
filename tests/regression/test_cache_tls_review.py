"""Review of rediss:// and passwordEnv for cache nodes (bd2de53): each test fails on that commit."""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError

from integration.cache_distributed.tls_nodes import TLSProxy, make_certs
from mezzo.cache.distributed.backend import Call, NodeUnavailable
from mezzo.cache.distributed.cluster import ClusterBackend
from mezzo.cache.distributed.namespaces import shard_configs
from mezzo.cache.distributed.sharded import ShardedBackend
from mezzo.cache.model import CacheSpec
from mezzo.jsonutil import dumps
from mezzo.resources.service import ResourceService, resource_key
from mezzo.storage.kv import Put
from mezzo.testing.fixtures import RunningNode, wait_for

SHARED_REDIS = 6379

# Accepted before bd2de53 (the query of a redis:// URL was ignored), refused after it.
STORED_BEFORE = ["redis://127.0.0.1:6379/0?timeout", "redis://:pw@127.0.0.1:6379?x", "redis://127.0.0.1?a=1&&b=2",
                 "redis://127.0.0.1?&"]


@pytest.mark.parametrize("url", STORED_BEFORE)
def test_a_redis_url_stored_with_a_bare_query_flag_still_validates(url: str) -> None:
    """_tls() parses every query strictly, redis:// included: a stored resource no longer validates."""
    CacheSpec.model_validate({"backend": "redis", "url": url})


async def test_a_cache_stored_before_the_upgrade_is_still_applied(node: RunningNode) -> None:
    """The informer re-validates the stored spec: it fails, the namespace is never applied (its keys
    fall to the embedded engine or fail) and the traceback logged carries the URL, password included."""
    now = datetime.now(UTC).isoformat()
    doc = {"apiVersion": "mezzo.dev/v1", "kind": "Cache",
           "metadata": {"name": "legacy", "namespace": "default", "labels": {}, "annotations": {}, "uid": "u-legacy",
                        "generation": 1, "createdAt": now, "updatedAt": now, "createdBy": "admin",
                        "updatedBy": "admin"},
           "spec": {"backend": "redis", "database": 5, "url": "redis://127.0.0.1:6379/0?timeout"}}
    store = node.node.service(ResourceService).store
    await store.txn([Put(resource_key("Cache", "default", "legacy"), dumps(doc))])
    async with httpx.AsyncClient(base_url=node.url, headers={"authorization": f"Bearer {node.token}"}) as http:

        async def applied() -> bool:
            response = await http.get("/v1/cache/legacy/nodes")
            return response.status_code == 200 and response.json()["backend"] == "redis"

        await wait_for(applied, timeout=5)


@pytest.mark.parametrize("spec", [
    {"backend": "redis", "url": "memcached://u:topsecret@h"},  # _not_memcached() quotes the URL as given
    {"backend": "redis-cluster", "urls": ["memcached://u:topsecret@h"]},
    {"backend": "redis", "url": "redis://:top#secret@h:1"},  # unescaped # / ?: urlsplit sees no password
    {"backend": "redis", "url": "redis://:top/secret@h"},
    {"backend": "redis", "url": "redis://u:top?secret@h"},
])
def test_errors_about_a_url_never_show_its_password(spec: dict[str, object]) -> None:
    """The reasons go back in problem+json (and into CI logs of `mezzo apply`)."""
    with pytest.raises(ValidationError) as info:
        CacheSpec.model_validate(spec)
    reasons = " ".join(e["msg"] for e in info.value.errors())
    assert "top" not in reasons, reasons


async def test_a_cluster_without_its_password_variable_is_unavailable_and_says_why() -> None:
    """No seed usable: redis-py raises RedisClusterException (not a RedisError nor a ConnectionError),
    which escapes run(): RESP clients get the raw exception, HTTP a 500, the proxy logs a traceback per
    batch, and the nodes endpoint shows errors 0, lastError null."""
    variable = "MEZZO_REVIEW_UNSET_CLUSTER_PASSWORD"
    assert variable not in os.environ
    spec = CacheSpec.model_validate({"backend": "redis-cluster", "urls": [f"redis://127.0.0.1:{SHARED_REDIS}"],
                                     "passwordEnv": variable})
    backend = ClusterBackend(spec.seeds(), spec.failure_detection.policy())
    try:
        (reply,) = await backend.run([Call(b"k", (b"GET", b"k"))])
        assert isinstance(reply, NodeUnavailable), reply
        status = backend.status()
        assert status["errors"] == 1 and variable in (status["lastError"] or ""), status
    finally:
        await backend.close()


async def test_the_control_client_reads_a_rotated_ca_bundle_when_it_reconnects(tmp_path: Path) -> None:
    """redis-py keeps each connection's TLS context once built: after the CA file is replaced, the data
    link connects but the control client (probes, promotion, SCAN) keeps failing, so an ejected node
    is never readmitted until Mezzo restarts."""
    right, other = make_certs(tmp_path / "right"), make_certs(tmp_path / "other")
    bundle = tmp_path / "bundle.pem"
    shutil.copy(other.ca, bundle)
    proxy = await TLSProxy(right, SHARED_REDIS).start()
    spec = CacheSpec.model_validate({"backend": "redis", "url": f"rediss://127.0.0.1:{proxy.port}?ssl_ca_certs={bundle}"})
    backend = ShardedBackend(shard_configs(spec), spec.failure_detection.policy(), kind="redis")
    (shard,) = backend.pool.shards.values()
    try:
        with pytest.raises(RedisConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            await shard.active.client.execute_command("PING")
        shutil.copy(right.ca, bundle)  # rotated
        assert await backend.run([Call(b"k", (b"PING",))]) == [b"PONG"]  # the link reads it again
        assert await shard.active.client.execute_command("PING") == b"PONG"
    finally:
        await backend.close()
        await proxy.close()
