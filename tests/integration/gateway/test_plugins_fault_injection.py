"""fault-injection: abort a share of requests with a status and body, delay a share, the delay first."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import httpx
import pytest

from mezzo.gateway.plugins import fault_injection
from mezzo.sdk.errors import MezzoError

from .conftest import EchoServer, GatewayHandle, route_doc, upstream_doc


class Draws:
    """Stands for the module's ``random``: ``randrange(100)`` returns the given draws in turn."""

    def __init__(self, *draws: int) -> None:
        self.draws = list(draws)

    def randrange(self, stop: int) -> int:
        assert stop == 100
        return self.draws.pop(0)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The delays the plugin asks for, recorded instead of slept."""
    asked: list[float] = []

    async def sleep(seconds: float) -> None:
        asked.append(seconds)

    monkeypatch.setattr(fault_injection, "asyncio", SimpleNamespace(sleep=sleep))
    return asked


async def _route(gateway: GatewayHandle, upstream: EchoServer, **conf: object) -> None:
    await gateway.apply(upstream_doc("up", upstream), route_doc("r", ["/*"], plugins={"fault-injection": conf}))


async def test_abort_answers_without_the_upstream(gateway: GatewayHandle, upstream: EchoServer) -> None:
    await _route(gateway, upstream, abort={"httpStatus": 503, "body": "injected"})
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        for _ in range(3):
            r = await http.get("/x")
            assert r.status_code == 503 and r.text == "injected"
        assert upstream.hits["/x"] == 0
    await _route(gateway, upstream, abort={"http_status": 418})  # body defaults to empty
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.post("/x", content=b"payload")
        assert r.status_code == 418 and r.content == b""


async def test_abort_percentage(gateway: GatewayHandle, upstream: EchoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    await _route(gateway, upstream, abort={"httpStatus": 500, "percentage": 0})
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        assert {(await http.get("/x")).status_code for _ in range(20)} == {200}
    await _route(gateway, upstream, abort={"httpStatus": 500, "percentage": 30})
    monkeypatch.setattr(fault_injection, "random", Draws(0, 29, 30, 99))  # 30 %: draws 0-29 abort
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        assert [(await http.get("/x")).status_code for _ in range(4)] == [500, 500, 200, 200]


async def test_delay_and_its_percentage(gateway: GatewayHandle, upstream: EchoServer, sleeps: list[float],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    await _route(gateway, upstream, delay={"duration": "1.5s"})
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.get("/x")
        assert r.status_code == 200 and r.json()["path"] == "/x" and sleeps == [1.5]
        await _route(gateway, upstream, delay={"duration": 2, "percentage": 0})
        assert (await http.get("/x")).status_code == 200 and sleeps == [1.5]
        await _route(gateway, upstream, delay={"duration": "250ms", "percentage": 50})
        monkeypatch.setattr(fault_injection, "random", Draws(49, 50))
        assert (await http.get("/x")).status_code == 200 and (await http.get("/x")).status_code == 200
        assert sleeps == [1.5, 0.25]


async def test_delay_comes_first_then_the_abort(gateway: GatewayHandle, upstream: EchoServer,
                                              sleeps: list[float]) -> None:
    await _route(gateway, upstream, delay={"duration": "500ms"}, abort={"httpStatus": 504, "body": "late"})
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.get("/x")
        assert r.status_code == 504 and r.text == "late" and sleeps == [0.5]
        assert upstream.hits["/x"] == 0


async def test_the_delay_is_real(gateway: GatewayHandle, upstream: EchoServer) -> None:
    await _route(gateway, upstream, delay={"duration": "200ms"})
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        started = time.monotonic()
        r = await http.get("/x")
        assert r.status_code == 200 and time.monotonic() - started >= 0.2


async def test_other_requests_are_not_held_up_by_a_delay(gateway: GatewayHandle, upstream: EchoServer) -> None:
    await gateway.apply(upstream_doc("up", upstream),
                        route_doc("slow", ["/slow"], plugins={"fault-injection": {"delay": {"duration": "1h"}}}),
                        route_doc("fast", ["/fast"]))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        parked = asyncio.create_task(http.get("/slow"))
        try:
            assert (await http.get("/fast")).status_code == 200
            assert not parked.done()
        finally:
            parked.cancel()


async def test_bad_configurations_are_refused_at_apply(gateway: GatewayHandle, upstream: EchoServer) -> None:
    for conf in (
        {},  # neither abort nor delay: APISIX refuses it too
        {"abort": {}}, {"abort": {"httpStatus": 199}}, {"abort": {"httpStatus": 600}},
        {"abort": {"httpStatus": 503, "percentage": 101}}, {"abort": {"httpStatus": 503, "percentage": -1}},
        {"delay": {}}, {"delay": {"duration": 0}}, {"delay": {"duration": "soon"}},
        {"delay": {"duration": 1, "percentage": 200}}, {"abort": {"httpStatus": 503, "headers": {}}},
    ):
        with pytest.raises(MezzoError, match="plugin fault-injection"):
            await _route(gateway, upstream, **conf)
