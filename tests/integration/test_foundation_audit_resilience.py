"""Audit of issue 2 (foundation), resilience: the `Resiliency` kind names its targets (upstreams,
subscriptions, transaction branches, backends) and promises to apply its policies to them "without
code changes" (docs/resilience.md). The gateway used to apply none to its upstreams (only messaging
asked the PolicyRegistry, for subscriptions); tests/integration/gateway/test_resiliency_upstreams.py
covers the upstream semantics in full."""

from __future__ import annotations

from pathlib import Path

import httpx

from integration.gateway.conftest import EchoServer, apply_docs, route_doc, upstream_doc
from mezzo.resilience.policies import PolicyRegistry
from mezzo.testing.fixtures import start_node, wait_for


async def test_a_resiliency_timeout_on_an_upstream_cuts_a_slow_gateway_call(tmp_path: Path) -> None:
    running = await start_node(tmp_path / "data", targets=["gateway", "resilience", "api"])
    origin = EchoServer()
    await origin.start()
    try:
        await apply_docs(running, [upstream_doc("slow", origin), route_doc("slow", ["/gate/*"], upstream="slow")])
        async with running.client() as client:
            await client.resources.apply({
                "apiVersion": "mezzo.dev/v1", "kind": "Resiliency", "metadata": {"name": "edge"},
                "spec": {"policies": {"timeouts": {"quick": "100ms"}},
                         "targets": {"upstreams": {"slow": {"timeout": "quick"}}}}})
        registry = running.node.service(PolicyRegistry)
        await wait_for(lambda: not registry.policy_for("upstreams", "slow").is_noop)  # the node has the policy
        async with httpx.AsyncClient(base_url=running.node.url("gateway"), timeout=3) as http:
            # the origin never answers by itself: only the 100 ms timeout can end this call in time
            response = await http.get("/gate/order")
        assert response.status_code == 504
    finally:
        await origin.stop()
        await running.node.stop()
