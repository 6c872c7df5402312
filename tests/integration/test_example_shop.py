"""examples/shop works as its README says: registry + gateway + cache + messaging + tracing on one node.

A node runs as ``mezzo up`` does (a subprocess), on free ports, tracing itself; shop.yaml is applied
with the CLI; service.py runs as a subprocess and registers itself; client.py calls it through the
gateway. Its printed results are checked, and then checked again at the source: the cache's key and
statistics, the trace's spans, and the registry after the service stopped.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from mezzo.testing.fixtures import RunningNode, free_port, spawn_node, stop_process

SHOP = Path(__file__).parents[2] / "examples" / "shop"


@pytest.fixture
def shop_node(tmp_path: Path) -> Iterator[RunningNode]:
    """``mezzo up`` with the gateway, the Redis protocol and OTLP on known free ports, tracing itself."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    ports = {"MEZZO_GATEWAY_PORT": free_port(), "MEZZO_RESP_PORT": free_port(), "MEZZO_OTLP_PORT": free_port()}
    running = spawn_node(data_dir, extra_env={**{k: str(v) for k, v in ports.items()}, "MEZZO_TRACING": "otlp",
                                              "OTEL_BSP_SCHEDULE_DELAY": "200"})  # spans exported within 0.2 s
    try:
        yield running
    finally:
        if running.process is not None and running.process.poll() is None:
            stop_process(running, signal.SIGKILL)


def example_env(node: RunningNode, shop_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEZZO_", "SHOP_", "OTEL_"))}
    return {**env, "MEZZO_URL": node.url, "MEZZO_TOKEN": node.token, "SHOP_PORT": str(shop_port),
            "SHOP_GATEWAY_URL": f"http://127.0.0.1:{node.env['MEZZO_GATEWAY_PORT']}",
            "SHOP_REDIS_URL": f"redis://127.0.0.1:{node.env['MEZZO_RESP_PORT']}"}


def wait_until(predicate: Any, what: str, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(0.05)
    return result


def test_shop_example_end_to_end(shop_node: RunningNode, tmp_path: Path) -> None:
    env = example_env(shop_node, free_port())
    gateway = httpx.Client(base_url=env["SHOP_GATEWAY_URL"], timeout=5)
    api = httpx.Client(base_url=shop_node.url, headers={"Authorization": f"Bearer {shop_node.token}"}, timeout=5)

    applied = subprocess.run([sys.executable, "-m", "mezzo", "apply", "-f", str(SHOP / "shop.yaml")], env=env,
                             capture_output=True, text=True, timeout=30)
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.split("\n")[:5] == ["Upstream/shop created", "Route/shop created",
                                               "Consumer/shop-demo created", "Topic/shop-orders created",
                                               "Subscription/shop-billing created"]
    wait_until(lambda: gateway.get("/shop/products/1").status_code == 401, "the gateway serves the route")

    service_log = tmp_path / "service.log"
    with open(service_log, "wb") as log:
        service = subprocess.Popen([sys.executable, str(SHOP / "service.py")], env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
    try:
        def registered() -> bool:
            assert service.poll() is None, service_log.read_text()
            r = api.get("/v1/registry/services/shop/instances", params={"healthy": "true"})
            return r.status_code == 200 and [i["port"] for i in r.json()["instances"]] == [int(env["SHOP_PORT"])]

        wait_until(registered, "service.py registers itself")
        # the gateway follows the registry at once; a product that does not exist caches nothing
        wait_until(lambda: gateway.get("/shop/products/404", headers={"apikey": "shop-demo-key"}).status_code == 404,
                   "the gateway routes to the registered instance")

        result = subprocess.run([sys.executable, str(SHOP / "client.py")], env=env, capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        lines = result.stdout.splitlines()
        assert lines[0] == f"registry: shop has 1 healthy instance(s): 127.0.0.1:{env['SHOP_PORT']}"
        assert lines[1].startswith("GET  /shop/products/1 without a key -> 401 ")
        product = '{"id": 1, "name": "espresso beans", "price": 12.5}'
        assert lines[2].startswith(f"GET  /shop/products/1 -> 200 {product} (cache miss, ")
        assert lines[3].startswith(f"GET  /shop/products/1 -> 200 {product} (cache hit, ")
        placed = re.fullmatch(r"POST /shop/orders -> 201 order (\w+) for shop-demo, message (\w+)", lines[4])
        assert placed is not None, lines[4]
        order_id = placed.group(1)
        assert lines[5] == f"billing got order.created for order {order_id} (key shop-demo, attempt 1)"
        traced = re.fullmatch(r"trace ([0-9a-f]{32}): (.*)", lines[6])
        assert traced is not None, lines[6]
        assert len(lines) == 7, lines

        # the cache holds the product, with the service's TTL, and counted the second read as a hit
        cache = redis.Redis.from_url(env["SHOP_REDIS_URL"], password=shop_node.token)
        try:
            assert cache.get("shop:product:1") == product.encode()
            assert 0 < cache.ttl("shop:product:1") <= 30
        finally:
            cache.close()
        stats = api.get("/v1/cache/default/stats").json()
        assert stats["hits"] >= 1 and stats["misses"] >= 1, stats

        # the order event was taken and acked by the group billing
        groups = api.get("/v1/topics/shop-orders/groups").json()
        billing = next(g for g in groups["items"] if g["group"] == "billing")
        assert billing["lag"] == 0 and billing["inFlight"] == 0, billing

        # one trace: the gateway's span, and the publish the service made inside it
        spans = api.get(f"/v1/traces/{traced.group(1)}").json()["items"]
        gateway_span = next(s for s in spans if s["name"] == "POST shop")
        publish = next(s for s in spans if ":publish" in s["name"])
        assert gateway_span["attributes"]["mezzo.gateway.route"] == "default/shop"
        assert gateway_span["attributes"]["mezzo.gateway.consumer"] == "default/shop-demo"
        assert publish["parentId"] == gateway_span["id"]

        # stopping the service deregisters it: the gateway then has nowhere to send
        service.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then exits by the signal it caught (-15), as it re-raises it
        assert service.wait(15) in (0, -signal.SIGTERM), service_log.read_text()
        assert "Application shutdown complete" in service_log.read_text()
        instances = api.get("/v1/registry/services/shop/instances").json()["instances"]
        assert instances == []
        assert gateway.get("/shop/products/1", headers={"apikey": "shop-demo-key"}).status_code == 503
    finally:
        if service.poll() is None:
            service.kill()
            service.wait()
        gateway.close()
        api.close()
