"""Active checks: HTTP and TCP probes flip an instance between passing and critical, writing only on change."""

from __future__ import annotations

import asyncio

import httpx

from mezzo.testing.fixtures import wait_for

from .conftest import SVC, HealthServer, ids, listed, register

FAST = {"interval": "100ms", "timeout": "1s", "failures": 1, "successes": 1}


async def status(http: httpx.AsyncClient, service: str, instance: str) -> str | None:
    r = await http.get(f"{SVC}/{service}/instances/{instance}")
    return r.json()["status"] if r.status_code == 200 else None


async def test_http_check_flips_status_and_writes_only_changes(http: httpx.AsyncClient,
                                                               health_server: HealthServer) -> None:
    created = await register(http, "web", id="w1", host="127.0.0.1", port=health_server.port,
                             check={"http": "/health", **FAST})
    assert created["status"] == "critical"  # until the first probe passes
    await wait_for(lambda: _is(http, "web", "w1", "passing"), timeout=15)
    assert await ids(http, "web", healthy="true") == ["w1"]

    # a stable verdict is not written again: the index and the status time stay put over many probes
    before = await listed(http, "web")
    hits = health_server.hits
    await wait_for(lambda: health_server.hits >= hits + 5, timeout=15)
    after = await listed(http, "web")
    assert after["index"] == before["index"]
    assert after["instances"][0]["statusSince"] == before["instances"][0]["statusSince"]

    health_server.status = 503
    await wait_for(lambda: _is(http, "web", "w1", "critical"), timeout=15)
    got = (await http.get(f"{SVC}/web/instances/w1")).json()
    assert "503" in got["output"]
    assert await ids(http, "web", healthy="true") == []
    assert await ids(http, "web") == ["w1"]  # still registered, just not routable

    health_server.status = 204
    await wait_for(lambda: _is(http, "web", "w1", "passing"), timeout=15)


async def test_http_check_with_a_full_url(http: httpx.AsyncClient, health_server: HealthServer) -> None:
    url = f"http://127.0.0.1:{health_server.port}/ready"
    await register(http, "web", id="w1", host="192.0.2.1", port=9, check={"http": url, **FAST})
    await wait_for(lambda: _is(http, "web", "w1", "passing"), timeout=15)


async def test_failures_threshold_counts_consecutive_failures(http: httpx.AsyncClient,
                                                              health_server: HealthServer) -> None:
    await register(http, "web", id="w1", host="127.0.0.1", port=health_server.port,
                   check={"http": "/health", **FAST, "failures": 3, "initialStatus": "passing"})
    health_server.status = 500
    hits = health_server.hits
    await wait_for(lambda: _is(http, "web", "w1", "critical"), timeout=15)
    assert health_server.hits >= hits + 3


async def test_tcp_check(http: httpx.AsyncClient) -> None:
    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await register(http, "db", id="d1", host="127.0.0.1", port=port, check={"tcp": True, **FAST})
        await wait_for(lambda: _is(http, "db", "d1", "passing"), timeout=15)
    finally:
        server.close()
        await server.wait_closed()
    await wait_for(lambda: _is(http, "db", "d1", "critical"), timeout=15)  # nothing listens any more
    got = (await http.get(f"{SVC}/db/instances/d1")).json()
    assert got["output"].startswith(f"TCP 127.0.0.1:{port}")


async def test_critical_from_registration_says_why_once(http: httpx.AsyncClient) -> None:
    closed = await _closed_port()
    created = await register(http, "db", id="never", host="127.0.0.1", port=closed,
                             check={"tcp": True, **FAST, "failures": 2})
    assert created["status"] == "critical" and created["output"] == ""

    async def explained() -> bool:
        got = (await http.get(f"{SVC}/db/instances/never")).json()
        return bool(got["output"])

    await wait_for(explained, timeout=15)
    got = (await http.get(f"{SVC}/db/instances/never")).json()
    assert got["status"] == "critical" and got["output"].startswith(f"TCP 127.0.0.1:{closed}")
    assert got["statusSince"] == created["statusSince"]  # critical since registration: only the reason was added
    index = (await listed(http, "db"))["index"]
    await asyncio.sleep(0.6)  # several more failed probes: nothing more is written
    assert (await listed(http, "db"))["index"] == index


async def test_critical_too_long_is_deregistered(http: httpx.AsyncClient) -> None:
    closed = await _closed_port()
    await register(http, "db", id="dead", host="127.0.0.1", port=closed,
                   check={"tcp": True, **FAST, "deregisterAfter": "1s"})
    await register(http, "db", id="other", host="127.0.0.1", port=closed, check={"tcp": True, **FAST})
    await wait_for(lambda: _gone(http, "db", "dead"), timeout=15)
    assert await ids(http, "db") == ["other"]  # critical as well, but without deregisterAfter it stays


async def test_re_registering_with_another_check_restarts_it(http: httpx.AsyncClient,
                                                             health_server: HealthServer) -> None:
    closed = await _closed_port()
    await register(http, "web", id="w1", host="127.0.0.1", port=closed, check={"tcp": True, **FAST})
    await register(http, "web", id="w1", host="127.0.0.1", port=health_server.port, check={"http": "/", **FAST})
    await wait_for(lambda: _is(http, "web", "w1", "passing"), timeout=15)
    await register(http, "web", id="w1", host="127.0.0.1", port=health_server.port)  # no check any more
    assert await status(http, "web", "w1") == "passing"


async def _is(http: httpx.AsyncClient, service: str, instance: str, wanted: str) -> bool:
    return await status(http, service, instance) == wanted


async def _gone(http: httpx.AsyncClient, service: str, instance: str) -> bool:
    return instance not in await ids(http, service)


async def _closed_port() -> int:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    return port
