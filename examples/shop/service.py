"""The shop service: a small Starlette app that uses Mezzo's registry, cache and message queue.

- It registers itself as the registry service ``shop`` while it runs (``registered``: after
  startup, with heartbeats; deregistered on shutdown), so the gateway's Upstream ``shop`` finds it.
- ``GET /shop/products/{id}`` reads through Mezzo's cache over the Redis protocol (cache-aside:
  look in the cache, else load from the "database" and store it with a TTL).
- ``POST /shop/orders`` publishes an ``order.created`` event to the topic ``shop-orders``.

Run it against ``mezzo up`` (see README.md)::

    .venv/bin/python examples/shop/service.py --port 8000

Settings, with the defaults of ``mezzo up``: ``MEZZO_URL`` (http://127.0.0.1:7700), ``MEZZO_TOKEN``
(else ``MEZZO_ADMIN_TOKEN``, else ``.mezzo/admin.token``), ``SHOP_REDIS_URL``
(redis://127.0.0.1:6380; the token is its password), ``SHOP_PORT`` (8000, or ``--port``),
``SHOP_CACHE_TTL`` (seconds, 30).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator

import redis.asyncio as redis
import uvicorn
from opentelemetry import context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from mezzo import Mezzo
from mezzo.sdk.config import default_token
from mezzo.sdk.registry import registered

SERVICE = "shop"
TOPIC = "shop-orders"
REDIS_URL = os.environ.get("SHOP_REDIS_URL", "redis://127.0.0.1:6380")
CACHE_TTL = int(os.environ.get("SHOP_CACHE_TTL", "30"))

# the "database": what a real service would query, slowly
PRODUCTS = {
    1: {"id": 1, "name": "espresso beans", "price": 12.5},
    2: {"id": 2, "name": "milk frother", "price": 39.0},
    3: {"id": 3, "name": "ceramic cup", "price": 8.0},
}


async def load_product(product_id: int) -> dict[str, object] | None:
    await asyncio.sleep(0.05)  # stands for a database round trip
    return PRODUCTS.get(product_id)


async def get_product(request: Request) -> JSONResponse:
    product_id = int(request.path_params["id"])
    cache: redis.Redis = request.app.state.cache
    key = f"shop:product:{product_id}"
    cached = await cache.get(key)
    if cached is not None:
        return JSONResponse(json.loads(cached), headers={"X-Cache": "hit"})
    product = await load_product(product_id)
    if product is None:
        return JSONResponse({"detail": f"no product {product_id}"}, status_code=404)
    await cache.set(key, json.dumps(product), ex=CACHE_TTL)
    return JSONResponse(product, headers={"X-Cache": "miss"})


async def create_order(request: Request) -> JSONResponse:
    try:
        body = await request.json()
        product, quantity = int(body["product"]), int(body.get("quantity", 1))
    except (ValueError, TypeError, KeyError, AttributeError):
        return JSONResponse({"detail": 'the body must be JSON: {"product": <id>, "quantity": <n>}'}, status_code=400)
    if product not in PRODUCTS or quantity < 1:
        return JSONResponse({"detail": f"no product {product}, or a quantity below 1"}, status_code=400)
    customer = request.headers.get("x-consumer-username", "anonymous")  # set by the gateway's key-auth
    order = {"id": uuid.uuid4().hex[:12], "customer": customer, "product": product, "quantity": quantity}
    # continue the gateway's trace: the SDK sends the current span as `traceparent`, so the publish
    # (and the message) join the trace the gateway's opentelemetry plugin started
    parent = TraceContextTextMapPropagator().extract(dict(request.headers))
    token = context.attach(parent)
    try:
        published = await request.app.state.mezzo.messaging.publish(
            TOPIC, {"event": "order.created", "order": order}, key=customer, tags=["order.created"])
    finally:
        context.detach(token)
    traceparent = request.headers.get("traceparent", "").split("-")
    trace_id = traceparent[1] if len(traceparent) == 4 else None
    return JSONResponse({"order": order, "messageId": published["id"], "traceId": trace_id}, status_code=201)


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    app.state.mezzo = Mezzo()
    app.state.cache = redis.Redis.from_url(REDIS_URL, password=default_token())
    try:
        yield
    finally:
        await app.state.cache.aclose()
        await app.state.mezzo.aclose()


def make_app(port: int) -> ASGIApp:
    app = Starlette(routes=[Route("/shop/products/{id:int}", get_product, methods=["GET"]),
                            Route("/shop/orders", create_order, methods=["POST"]),
                            Route("/healthz", healthz)],
                    lifespan=lifespan)
    # registered while it runs: the gateway's Upstream `shop` routes to it
    return registered(app, service=SERVICE, port=port, ttl=10, version="1.0.0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("SHOP_PORT", "8000")))
    parser.add_argument("--host", default=os.environ.get("SHOP_HOST", "127.0.0.1"))
    args = parser.parse_args()
    uvicorn.run(make_app(args.port), host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
