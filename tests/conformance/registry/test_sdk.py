"""The SDK: ``client.registry``, registrations kept alive, ``registered(app)`` for ASGI apps, MezzoSync."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx
import pytest

from mezzo import MezzoSync
from mezzo.registry.model import Check, Status
from mezzo.sdk.errors import APIError, NotFound
from mezzo.sdk.registry import local_address, registered
from mezzo.testing.fixtures import RunningNode, wait_for

from .conftest import SVC, audit, ids


async def test_client_surface(reg: RunningNode) -> None:
    async with reg.client() as client:
        one = await client.registry.register("orders", host="10.0.0.1", port=80, ttl=30, zone="z1",
                                             metadata={"team": "core"})
        assert (one.id, one.status, one.ttl, one.zone) == ("10.0.0.1:80", Status.PASSING, 30.0, "z1")
        assert one.expires_at is not None
        await client.registry.register("orders", id="checked", host="127.0.0.1", port=1,
                                       check=Check(tcp=True, interval=3600))
        assert [i.id for i in await client.registry.instances("orders")] == ["10.0.0.1:80", "checked"]
        assert [i.id for i in await client.registry.instances("orders", healthy=True)] == ["10.0.0.1:80"]
        assert (await client.registry.instance("orders", "checked")).status is Status.CRITICAL
        assert await client.registry.heartbeat("orders", "10.0.0.1:80") is not None
        assert [s["name"] for s in await client.registry.services()] == ["orders"]
        assert await client.registry.deregister("orders", "checked") is True
        assert await client.registry.deregister("orders", "checked") is False
        with pytest.raises(NotFound):
            await client.registry.deregister("orders", "checked", missing_ok=False)
        with pytest.raises(NotFound):
            await client.registry.heartbeat("orders", "checked")
        with pytest.raises(APIError) as bad:
            await client.registry.register("orders", host="10.0.0.1", port=0)
        assert bad.value.status == 400 and bad.value.errors[0]["field"] == "port"


async def test_watch_yields_the_list_then_every_change(reg: RunningNode) -> None:
    async with reg.client() as client:
        await client.registry.register("orders", id="a", host="h", port=1)
        stream = client.registry.watch("orders", wait=30)
        assert [i.id for i in await asyncio.wait_for(anext(stream), 30)] == ["a"]
        await client.registry.register("orders", id="b", host="h", port=2)
        assert [i.id for i in await asyncio.wait_for(anext(stream), 30)] == ["a", "b"]
        await client.registry.deregister("orders", "a")
        assert [i.id for i in await asyncio.wait_for(anext(stream), 30)] == ["b"]
        await stream.aclose()


async def test_registration_keeps_the_instance_and_comes_back_after_a_lapse(reg: RunningNode,
                                                                            http: httpx.AsyncClient) -> None:
    async with reg.client() as client:
        async with client.registry.registration("orders", host="127.0.0.1", port=7000, ttl=2) as registration:
            assert registration.instance is not None and registration.id == "127.0.0.1:7000"
            assert await ids(http, "orders") == ["127.0.0.1:7000"]
            # the registry forgets it (as after a long pause): the next heartbeat's 404 registers it again
            await http.delete(f"{SVC}/orders/instances/127.0.0.1:7000")
            await wait_for(lambda: _listed(http, "orders", "127.0.0.1:7000"), timeout=15)
            assert len(await audit(http, "registry.register")) == 2
        assert await ids(http, "orders") == []  # deregistered on exit


def test_local_address_is_the_route_to_mezzo() -> None:
    assert local_address("http://127.0.0.1:7700") == "127.0.0.1"


class Lifespan:
    """Drives an ASGI app's lifespan the way a server does."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def startup(self) -> dict[str, Any]:
        self.task = asyncio.create_task(self.app({"type": "lifespan", "asgi": {"version": "3.0"}},
                                                 self.inbox.get, self.outbox.put))
        await self.inbox.put({"type": "lifespan.startup"})
        return await asyncio.wait_for(self.outbox.get(), 30)

    async def shutdown(self) -> dict[str, Any]:
        await self.inbox.put({"type": "lifespan.shutdown"})
        message = await asyncio.wait_for(self.outbox.get(), 30)
        await asyncio.wait_for(self.task, 30)  # type: ignore[arg-type]
        return message


async def test_registered_asgi_app(reg: RunningNode, http: httpx.AsyncClient) -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    events: list[str] = []

    async def lifespan(app: Any):  # type: ignore[no-untyped-def]
        events.append("app started")
        yield
        events.append(f"app stopping, registered: {await ids(http, 'shop')}")

    app = Starlette(routes=[Route("/", lambda r: PlainTextResponse("hi"))],
                    lifespan=contextlib.asynccontextmanager(lifespan))
    async with reg.client() as client:
        wrapped = registered(app, service="shop", host="127.0.0.1", port=8123, ttl=5, client=client,
                             version="1.2.3", check={"tcp": True, "interval": "1h"})
        driver = Lifespan(wrapped)
        assert (await driver.startup())["type"] == "lifespan.startup.complete"
        [instance] = (await http.get(f"{SVC}/shop/instances")).json()["instances"]
        assert (instance["id"], instance["version"], instance["check"]["tcp"]) == ("127.0.0.1:8123", "1.2.3", True)
        # requests pass through untouched
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=wrapped), base_url="http://app") as local:
            assert (await local.get("/")).text == "hi"
        assert (await driver.shutdown())["type"] == "lifespan.shutdown.complete"
        # deregistered before the app's own shutdown ran: traffic stops first
        assert events == ["app started", "app stopping, registered: []"]


async def test_registered_app_without_lifespan_and_a_failing_registration(reg: RunningNode,
                                                                           http: httpx.AsyncClient) -> None:
    async def bare(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError("only http")

    async with reg.client() as client:
        driver = Lifespan(registered(bare, service="bare", host="127.0.0.1", port=8124, ttl=5, client=client))
        assert (await driver.startup())["type"] == "lifespan.startup.complete"
        assert await ids(http, "bare") == ["127.0.0.1:8124"]
        assert (await driver.shutdown())["type"] == "lifespan.shutdown.complete"
        assert await ids(http, "bare") == []

        failing = Lifespan(registered(bare, service="bare", host="127.0.0.1", port=0, client=client))
        message = await failing.startup()
        assert message["type"] == "lifespan.startup.failed" and "port" in message["message"]
        await asyncio.wait_for(failing.task, 30)  # type: ignore[arg-type]


async def test_sync_client(reg: RunningNode) -> None:
    def use() -> list[str]:
        with MezzoSync(reg.url, reg.token) as client:
            client.registry.register("orders", host="h", port=1)
            with client.registry.registration("orders", host="h", port=2, ttl=5):
                seen = [i.id for i in client.registry.instances("orders")]
            return seen + [i.id for i in client.registry.instances("orders")]

    assert await asyncio.to_thread(use) == ["h:1", "h:2", "h:1"]


async def _listed(http: httpx.AsyncClient, service: str, instance: str) -> bool:
    return instance in await ids(http, service)
