"""Call the shop service through Mezzo's gateway, then read the order event back from the queue.

Run it after ``mezzo apply -f examples/shop/shop.yaml`` with ``service.py`` running (README.md)::

    .venv/bin/python examples/shop/client.py

It lists the registry's instances of ``shop``, calls ``GET /shop/products/1`` without a key (the gateway answers 401), twice with the consumer's
key (a cache miss, then a hit), places an order (``POST /shop/orders``), pulls the ``order.created``
event from the group ``billing`` of the topic ``shop-orders``, and, when the node traces itself
(``MEZZO_TRACING=otlp``), prints the request's spans from Mezzo's tracing API. Exits 1 when
something is not as expected.

Settings, with the defaults of ``mezzo up``: ``SHOP_GATEWAY_URL`` (http://127.0.0.1:8080),
``SHOP_API_KEY`` (shop-demo-key, the Consumer's key in shop.yaml), ``MEZZO_URL`` and
``MEZZO_TOKEN`` (as for the CLI), ``SHOP_TRACE_WAIT`` (seconds to wait for the trace, 15).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

import httpx

from mezzo import Mezzo
from mezzo.sdk.errors import NotFound

GATEWAY_URL = os.environ.get("SHOP_GATEWAY_URL", "http://127.0.0.1:8080")
API_KEY = os.environ.get("SHOP_API_KEY", "shop-demo-key")
TRACE_WAIT = float(os.environ.get("SHOP_TRACE_WAIT", "15"))
TOPIC, GROUP = "shop-orders", "billing"


def fail(message: str) -> None:
    print(f"FAILED: {message}", file=sys.stderr)
    raise SystemExit(1)


async def show_registry(mezzo: Mezzo) -> None:
    instances = await mezzo.registry.instances("shop", healthy=True)
    if not instances:
        fail("the registry has no healthy instance of shop: is service.py running?")
    print(f"registry: shop has {len(instances)} healthy instance(s): {', '.join(i.address for i in instances)}")


async def call_shop(gateway: httpx.AsyncClient) -> dict[str, Any]:
    r = await gateway.get("/shop/products/1")
    print(f"GET  /shop/products/1 without a key -> {r.status_code} {r.json().get('detail')}")
    if r.status_code != 401:
        fail(f"expected 401 without a key, got {r.status_code}")

    headers = {"apikey": API_KEY}
    for _ in range(2):
        r = await gateway.get("/shop/products/1", headers=headers)
        if r.status_code != 200:
            fail(f"GET /shop/products/1 answered {r.status_code}: {r.text}")
        print(f"GET  /shop/products/1 -> {r.status_code} {json.dumps(r.json())} "
              f"(cache {r.headers.get('x-cache')}, {r.headers.get('x-ratelimit-remaining')} requests left this minute)")

    r = await gateway.post("/shop/orders", json={"product": 1, "quantity": 2}, headers=headers)
    if r.status_code != 201:
        fail(f"POST /shop/orders answered {r.status_code}: {r.text}")
    placed: dict[str, Any] = r.json()
    order = placed["order"]
    print(f"POST /shop/orders -> {r.status_code} order {order['id']} for {order['customer']}, "
          f"message {placed['messageId']}")
    return placed


async def receive_order(mezzo: Mezzo, order_id: str) -> None:
    """Pull the group ``billing`` until this order's event comes (acking older ones on the way)."""
    async with mezzo.messaging.subscribe(TOPIC, GROUP, wait=5) as sub:
        async for message in sub:
            await message.ack()
            if message.data["order"]["id"] == order_id:
                print(f"billing got {message.data['event']} for order {order_id} "
                      f"(key {message.key}, attempt {message.attempt})")
                return


async def show_trace(mezzo: Mezzo, trace_id: str | None) -> None:
    ready = await mezzo.ready()
    if "tracing: none" in ready["modules"]["telemetry"]["detail"]:
        print("trace: the node does not trace itself (start it with MEZZO_TRACING=otlp)")
        return
    if trace_id is None:
        fail("the service got no traceparent from the gateway")
    deadline = time.monotonic() + TRACE_WAIT
    while True:  # the node exports its spans in batches: they take a moment to arrive
        try:
            found = await mezzo.request("GET", f"/v1/traces/{trace_id}")
        except NotFound:
            found = None
        names = sorted(span["name"] for span in found["items"]) if found else []
        if any(":publish" in name for name in names) and any(name.startswith("POST") for name in names):
            print(f"trace {trace_id}: {', '.join(names)}")
            return
        if time.monotonic() > deadline:
            fail(f"trace {trace_id} has only {names} after {TRACE_WAIT:g} s")
        await asyncio.sleep(0.5)


async def main() -> None:
    async with httpx.AsyncClient(base_url=GATEWAY_URL, timeout=10) as gateway, Mezzo() as mezzo:
        await show_registry(mezzo)
        placed = await call_shop(gateway)
        try:
            await asyncio.wait_for(receive_order(mezzo, placed["order"]["id"]), 20)
        except TimeoutError:
            fail(f"no order.created event for order {placed['order']['id']} in the group {GROUP}")
        await show_trace(mezzo, placed["traceId"])


if __name__ == "__main__":
    asyncio.run(main())
