"""Fixes from the docs walkthrough: Redis-backed plugins without a Redis URL refused at apply, a
global rule that fails to build named in /readyz and the log, ``hashOn`` as YAML writes it, the
502 of a missing upstream naming it, and ``:transition`` refusing fields it would drop."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from mezzo.gateway.runtime import Gateway
from mezzo.resources.manifests import SourceDocument
from mezzo.resources.service import ResourceService
from mezzo.testing.fixtures import RunningNode, start_node, wait_for

from .conftest import EchoServer, GatewayHandle, route_doc, upstream_doc

STUCK_LOG = "gateway configuration failed to build; keeping the previous one"


def _api(running: RunningNode) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=running.url, headers={"Authorization": f"Bearer {running.token}"}, timeout=10)


async def _apply_yaml(http: httpx.AsyncClient, text: str, dry_run: bool = False) -> httpx.Response:
    return await http.post("/v1/resources:apply", content=text.encode(), params={"dryRun": str(dry_run).lower()},
                           headers={"content-type": "application/yaml"})


async def _store(running: RunningNode, *docs: dict[str, Any]) -> None:
    """Write resources without the API, as a node with Redis (or an older Mezzo) would have: the
    apply-time check of this node does not run, so what it refuses can still reach its gateway."""
    service = running.node.service(ResourceService)
    full = [SourceDocument("test", i + 1, {"apiVersion": "mezzo.dev/v1", **d}) for i, d in enumerate(docs)]
    await service.apply(service.validate(full), "test")


REDIS_WITHOUT_URL = {
    "route limit-count": """
apiVersion: mezzo.dev/v1
kind: Route
metadata: {name: limited}
spec:
  paths: [/limited]
  upstream: up
  plugins:
    limit-count: {count: 10, window: 60s, policy: redis}
""",
    "global rule hmac-auth": """
apiVersion: mezzo.dev/v1
kind: GlobalRule
metadata: {name: signed}
spec:
  plugins:
    hmac-auth: {nonceStore: redis}
""",
    "upstream limit-count": """
apiVersion: mezzo.dev/v1
kind: Upstream
metadata: {name: up}
spec:
  nodes: [{host: 127.0.0.1, port: 9}]
  plugins:
    limit-count: {count: 10, window: 60s, policy: redis}
""",
}


@pytest.mark.parametrize("case", sorted(REDIS_WITHOUT_URL))
async def test_a_redis_backed_plugin_without_redis_is_refused_at_apply(gateway: GatewayHandle, case: str) -> None:
    text = REDIS_WITHOUT_URL[case]
    async with _api(gateway.node) as http:
        for dry_run in (True, False):
            r = await _apply_yaml(http, text, dry_run)
            assert r.status_code == 400, r.text
            problem = r.json()
            assert r.headers["content-type"] == "application/problem+json"
            assert "needs redisUrl" in problem["detail"] and "MEZZO_CACHE" in problem["detail"]
            (error,) = problem["errors"]
            assert error["field"] == "spec.plugins"
            plugin = "hmac-auth: nonceStore redis" if "hmac" in case else "limit-count: policy redis"
            assert f"plugin {plugin} needs redisUrl" in error["reason"]
        kind = "globalrules" if "global" in case else "routes" if "route" in case else "upstreams"
        name = "signed" if "global" in case else "limited" if "route" in case else "up"
        assert (await http.get(f"/v1/resources/{kind}/{name}")).status_code == 404  # nothing stored


async def test_a_redis_url_or_a_redis_cache_makes_it_valid(gateway: GatewayHandle, tmp_path: Path) -> None:
    with_url = REDIS_WITHOUT_URL["global rule hmac-auth"].replace("nonceStore: redis",
                                                                  "nonceStore: redis, redisUrl: 'redis://127.0.0.1:9'")
    async with _api(gateway.node) as http:
        r = await _apply_yaml(http, with_url, dry_run=True)
        assert r.status_code == 200, r.text
        assert r.json()["items"][0]["action"] == "created"
    # a node whose MEZZO_CACHE is redis:// uses it: nothing to add (no connection is made to apply)
    running = await start_node(tmp_path / "redis-node", targets=["gateway", "api"], cache="redis://127.0.0.1:9/0")
    try:
        async with _api(running) as http:
            for case in sorted(REDIS_WITHOUT_URL):
                r = await _apply_yaml(http, REDIS_WITHOUT_URL[case], dry_run=True)
                assert r.status_code == 200, (case, r.text)
    finally:
        await running.node.stop()


async def test_a_global_rule_that_fails_to_build_is_named_and_makes_the_node_not_ready(
        gateway: GatewayHandle, upstream: EchoServer) -> None:
    runtime: Gateway = gateway.runtime
    await gateway.apply(upstream_doc("up", upstream), route_doc("before", ["/before"]))
    async with _api(gateway.node) as api, httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        assert (await api.get("/readyz")).status_code == 200
        with capture_logs() as logs:
            await _store(gateway.node, {"kind": "GlobalRule", "metadata": {"name": "signed"},
                                        "spec": {"plugins": {"hmac-auth": {"nonceStore": "redis"}}}})
            await wait_for(lambda: runtime.stuck)
        assert list(runtime.stuck) == ["GlobalRule/default/signed"]
        (event,) = [e for e in logs if e["event"] == STUCK_LOG]
        assert event["log_level"] == "error" and event["resource"] == "GlobalRule/default/signed"
        assert "hmac-auth nonceStore redis needs redisUrl" in event["reason"]

        r = await api.get("/readyz")
        assert r.status_code == 503
        health = r.json()["modules"]["gateway"]
        assert health["ok"] is False
        assert "GlobalRule/default/signed" in health["detail"] and "needs redisUrl" in health["detail"]
        assert "no gateway change applies" in health["detail"]

        # while it is there, the previous configuration serves and a new route does not appear
        with capture_logs() as logs:
            await _store(gateway.node, route_doc("after", ["/after"]))
            await wait_for(lambda: runtime.seen.get("Route/default/after") and runtime._rebuild is None)
        assert [e["resource"] for e in logs if e["event"] == STUCK_LOG] == ["GlobalRule/default/signed"]
        assert (await http.get("/before")).status_code == 200
        assert (await http.get("/after")).status_code == 404

        # deleting the rule lets the configuration build again: the new route serves, the node is ready
        await gateway.node.node.service(ResourceService).delete("GlobalRule", "default", "signed", "test")
        await wait_for(lambda: not runtime.stuck)
        assert (await http.get("/after")).status_code == 200
        r = await api.get("/readyz")
        assert r.status_code == 200 and "GlobalRule" not in r.json()["modules"]["gateway"]["detail"]


async def test_a_missing_or_broken_upstream_is_named_in_the_502(gateway: GatewayHandle) -> None:
    await gateway.apply(route_doc("lost", ["/lost"], upstream="nosuch"))
    broken = {"kind": "Upstream", "metadata": {"name": "broken"},
              "spec": {"nodes": [{"host": "127.0.0.1", "port": 9}], "scheme": "https",
                       "tls": {"clientCertificate": "nocert"}}}  # no such Certificate: fails to build
    await gateway.apply(broken, route_doc("cut", ["/cut"], upstream="broken"))
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        r = await http.get("/lost")
        assert r.status_code == 502 and r.headers["content-type"] == "application/problem+json"
        assert r.json()["detail"] == "upstream 'nosuch' does not exist in namespace 'default'"
        r = await http.get("/cut")
        assert r.status_code == 502
        assert r.json()["detail"] == "upstream 'broken' in namespace 'default' is out of service: it failed to build"


HASH_ON = """
apiVersion: mezzo.dev/v1
kind: Upstream
metadata: {name: by-user}
spec:
  nodes: [{host: 127.0.0.1, port: PORT_A}, {host: 127.0.0.1, port: PORT_B}]
  loadBalancer: chash
  hashOn: {on: header, key: X-User}
---
apiVersion: mezzo.dev/v1
kind: Upstream
metadata: {name: by-consumer}
spec:
  nodes: [{host: 127.0.0.1, port: PORT_A}]
  loadBalancer: chash
  hashOn: consumer
---
apiVersion: mezzo.dev/v1
kind: Route
metadata: {name: sticky}
spec: {paths: [/sticky], upstream: by-user}
"""


async def test_hash_on_with_a_bare_yaml_on_and_the_shorthand(gateway: GatewayHandle, upstreams) -> None:
    a, b = await upstreams(2)
    text = HASH_ON.replace("PORT_A", str(a.port)).replace("PORT_B", str(b.port))
    async with _api(gateway.node) as api:
        r = await _apply_yaml(api, text)
        assert r.status_code == 200, r.text
        stored = (await api.get("/v1/resources/upstreams/by-user")).json()["spec"]
        assert stored["hashOn"] == {"on": "header", "key": "X-User"}
        assert (await api.get("/v1/resources/upstreams/by-consumer")).json()["spec"]["hashOn"] == {"on": "consumer"}
        # stored as "on": applying what get returns changes nothing
        r = await api.post("/v1/resources:apply", json={"documents": [
            {"apiVersion": "mezzo.dev/v1", "kind": "Upstream", "metadata": {"name": "by-user"}, "spec": stored}]})
        assert r.json()["items"][0]["action"] == "unchanged"
    await wait_for(lambda: "default/by-user" in gateway.runtime.snapshot.upstreams)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        servers: dict[str, set[str]] = {}
        for user in [f"user-{i}" for i in range(12)] * 3:
            r = await http.get("/sticky", headers={"x-user": user})
            assert r.status_code == 200
            servers.setdefault(user, set()).add(r.json()["server"])
    assert all(len(seen) == 1 for seen in servers.values())  # each user keeps its node
    assert {s for seen in servers.values() for s in seen} == {"a", "b"}  # and users are spread


@pytest.fixture
async def apis_node(tmp_path: Path) -> AsyncIterator[RunningNode]:
    running = await start_node(tmp_path / "data", targets=["gateway", "api", "apis"])
    try:
        yield running
    finally:
        await running.node.stop()


PETS = {"openapi": "3.0.3", "info": {"title": "Pets", "version": "1"},
        "paths": {"/pets": {"get": {"responses": {"200": {"description": "pets"}}}}}}


async def test_transition_refuses_fields_it_would_drop(apis_node: RunningNode) -> None:
    async with _api(apis_node) as http:
        r = await http.post("/v1/apis:import", json={"name": "pets", "document": PETS, "upstream": "pets"})
        assert r.status_code == 200, r.text
        r = await http.post("/v1/apis/pets:transition", json={"state": "published", "sunset": "2030-01-01"})
        assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json"
        (error,) = r.json()["errors"]
        assert error["field"] == "sunset" and error["in"] == "body"
        assert (await http.get("/v1/resources/apis/pets")).json()["spec"]["state"] == "draft"  # not moved
        r = await http.post("/v1/apis/pets:transition", json={"state": "published"})
        assert r.status_code == 200, r.text
