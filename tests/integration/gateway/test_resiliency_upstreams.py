"""Resiliency policies that target gateway upstreams (docs/resilience.md "Targets", docs/gateway.md
Upstreams): the policy's timeout bounds each try's wait for the response head, its retry replaces
the Upstream's ``retries``, its circuit breaker answers 503 without asking the upstream, all looked
up by (the Upstream's namespace, its name) and followed live as Resiliency resources change."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from mezzo.gateway.upstream import Balancer
from mezzo.resilience.breaker import CircuitState
from mezzo.resilience.policies import PolicyRegistry
from mezzo.resources.service import ResourceService
from mezzo.testing.fixtures import wait_for

from . import core_fixtures
from .core_fixtures import GatewayNode, Origin, route, start_gateway, upstream
from .recording_upstream import RecordingUpstream

gw, origins = core_fixtures.gw, core_fixtures.origins  # fixtures


class RawOrigin(RecordingUpstream):
    """An upstream node that misbehaves on purpose, counting what it gets (``RecordingUpstream``'s
    server, another way of answering).

    ``mode``: ``close`` reads the request and closes the connection without a word; ``park`` reads
    it and never answers; ``slow-body`` sends its head at once and its body ``delay`` seconds later.
    ``requests`` counts the requests read, ``ended`` the parked connections the gateway closed."""

    def __init__(self, mode: str, delay: float = 0.0) -> None:
        super().__init__()
        self.mode, self.delay = mode, delay
        self.requests = 0
        self.ended = 0
        self.received = 0  # bytes of parked requests' bodies (chunk framing included)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                if self.mode == "close":
                    break
                if self.mode == "park":  # take the body, if any; then only the gateway closing ends this
                    while data := await reader.read(65536):
                        self.received += len(data)
                    self.ended += 1
                    break
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n")
                await writer.drain()
                await asyncio.sleep(self.delay)
                writer.write(b"done")
                await writer.drain()
        writer.close()
        self.writers.discard(writer)


@pytest.fixture
async def raw_origins() -> AsyncIterator[Callable[..., Awaitable[RawOrigin]]]:
    made: list[RawOrigin] = []

    async def make(mode: str, delay: float = 0.0) -> RawOrigin:
        origin = RawOrigin(mode, delay)
        await origin.start()
        made.append(origin)
        return origin

    try:
        yield make
    finally:
        for origin in made:
            await origin.stop()


def raw_upstream(name: str, *nodes: RawOrigin, namespace: str = "default", **spec: Any) -> dict[str, Any]:
    return {"kind": "Upstream", "metadata": {"name": name, "namespace": namespace},
            "spec": {"nodes": [{"host": "127.0.0.1", "port": n.port} for n in nodes], **spec}}


def resiliency(name: str, targets: dict[str, dict[str, str]], namespace: str = "default", *,
               timeouts: dict[str, str] | None = None, retries: dict[str, Any] | None = None,
               breakers: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"kind": "Resiliency", "metadata": {"name": name, "namespace": namespace},
            "spec": {"policies": {"timeouts": timeouts or {}, "retries": retries or {},
                                  "circuitBreakers": breakers or {}},
                     "targets": {"upstreams": targets}}}


def balancer(gw: GatewayNode, ref: str) -> Balancer:
    return gw.gateway.snapshot.upstreams[ref]


async def guarded(gw: GatewayNode, ref: str = "default/up", on: bool = True) -> Balancer:
    """Wait until the gateway serves upstream ``ref`` with a policy (``on``) or without one."""
    await wait_for(lambda: ref in gw.gateway.snapshot.upstreams and (balancer(gw, ref).policy is not None) is on)
    return balancer(gw, ref)


async def delete(gw: GatewayNode, kind: str, name: str, namespace: str = "default") -> None:
    await gw.running.node.service(ResourceService).delete(kind, namespace, name, "test")


RETRY_3 = {"three": {"policy": "constant", "duration": "10ms", "maxRetries": 3}}


async def test_a_timeout_answers_504_and_ends_the_slow_try(
    gw: GatewayNode, raw_origins: Callable[..., Awaitable[RawOrigin]]
) -> None:
    parked = await raw_origins("park")
    streaming = await raw_origins("slow-body", delay=0.6)
    await gw.apply(raw_upstream("up", parked), route("r", ["/slow"]),
                   raw_upstream("stream", streaming), route("s", ["/stream"], "stream"),
                   resiliency("edge", {"up": {"timeout": "quick"}, "stream": {"timeout": "quick"}},
                              timeouts={"quick": "200ms"}))
    await guarded(gw)
    await guarded(gw, "default/stream")
    async with httpx.AsyncClient(base_url=gw.url, timeout=10) as http:
        # the Upstream's own read timeout is 60 s: only the policy's 200 ms ends this in time
        response = await http.get("/slow")
        assert response.status_code == 504
        assert response.headers["content-type"] == "application/problem+json"
        await wait_for(lambda: parked.ended == 1)  # the gateway closed the try's connection
        assert parked.requests == 1  # no retry policy: a timed-out try is not retried, as a read timeout
        # a streamed request body goes up first, slower than the timeout; the clock starts at its end
        async def body() -> AsyncIterator[bytes]:
            for _ in range(3):
                yield b"x" * 1000
                await asyncio.sleep(0.3)
        response = await http.post("/slow", content=body())
        assert response.status_code == 504
        await wait_for(lambda: parked.ended == 2)
        assert parked.requests == 2
        assert parked.received >= 3000  # all of it went up: the timeout did not cut the upload
        # the head came in time: a body slower than the timeout is not cut by it
        streamed = await http.get("/stream")
        assert (streamed.status_code, streamed.content) == (200, b"done")


async def test_the_retry_policy_sets_the_tries_for_idempotent_requests_only(
    gw: GatewayNode, raw_origins: Callable[..., Awaitable[RawOrigin]], origins: Callable[[int], Awaitable[list[Origin]]]
) -> None:
    closing = await raw_origins("close")
    parked = await raw_origins("park")
    first, second = await raw_origins("close"), await raw_origins("close")
    (answering,) = await origins(1)
    await gw.apply(raw_upstream("up", closing), route("r", ["/fail"]),
                   raw_upstream("slow", parked), route("s", ["/slow"], "slow"),
                   raw_upstream("pair", first, second), route("p", ["/pair"], "pair"),
                   upstream("answers", answering), route("a", ["/status/*"], "answers"),
                   resiliency("edge", {name: {"retry": "three"} for name in ("up", "pair", "answers")}
                              | {"slow": {"retry": "one", "timeout": "quick"}},
                              retries=RETRY_3 | {"one": {"policy": "exponential", "duration": "10ms",
                                                         "maxRetries": 1}},
                              timeouts={"quick": "100ms"}))
    for ref in ("default/up", "default/slow", "default/pair", "default/answers"):
        await guarded(gw, ref)
    async with httpx.AsyncClient(base_url=gw.url, timeout=10) as http:
        assert (await http.get("/fail")).status_code == 502
        assert closing.requests == 4  # 1 + maxRetries, on the one node there is (natively: 1)
        assert (await http.post("/fail", content=b"x")).status_code == 502
        assert closing.requests == 5  # POST is not idempotent: one try
        assert (await http.get("/slow")).status_code == 504
        assert parked.requests == 2  # a timed-out try is retried under the policy; 504 when none is left
        assert (await http.get("/pair")).status_code == 502
        assert (first.requests, second.requests) == (2, 2)  # a retry goes to the other node first
        # an answer is passed on, never retried, whatever its status
        assert (await http.get("/status/503")).status_code == 503
        assert answering.requests == 1


async def test_the_breaker_opens_answers_503_then_a_half_open_probe_closes_it(
    gw: GatewayNode, origins: Callable[[int], Awaitable[list[Origin]]]
) -> None:
    (origin,) = await origins(1)
    await gw.apply(upstream("up", origin), route("r", ["/*"]),
                   resiliency("edge", {"up": {"circuitBreaker": "cb"}},
                              breakers={"cb": {"trip": "consecutiveFailures > 2", "timeout": "30s"}}))
    breaker = (await guarded(gw)).policy.breaker  # type: ignore[union-attr]
    assert breaker is not None
    now = [1000.0]
    breaker._clock = lambda: now[0]  # the open duration passes when the test says so
    async with httpx.AsyncClient(base_url=gw.url, timeout=10) as http:
        for _ in range(3):  # statuses the passive check counts are failures
            assert (await http.get("/status/503")).status_code == 503
        assert origin.requests == 3
        refused = await http.get("/anything")
        assert refused.status_code == 503
        assert refused.headers["content-type"] == "application/problem+json"
        assert "circuit breaker" in refused.json()["detail"]
        assert refused.headers["retry-after"] == "30"
        assert origin.requests == 3  # the upstream was not asked
        scrape = await http.get(f"{gw.running.url}/metrics")
        assert 'mezzo_gateway_upstream_circuit_state{namespace="default",state="open",upstream="up"} 1.0' \
            in scrape.text
        now[0] += 29
        assert (await http.get("/hello")).headers["retry-after"] == "1"
        now[0] += 1
        assert breaker.state is CircuitState.HALF_OPEN  # after the open duration
        probe = asyncio.create_task(http.get("/gate"))  # maxRequests 1: one probe at a time
        await wait_for(lambda: origin.waiting == 1)
        assert (await http.get("/hello")).status_code == 503
        origin.gate.set()
        assert (await probe).status_code == 200
        assert origin.requests == 4
        assert breaker.state is CircuitState.CLOSED  # the probe's success closed it
        assert (await http.get("/hello")).status_code == 200
    # the same breaker across rebuilds of the gateway, a fresh one when the policy changes
    await gw.apply(upstream("up", origin, retries=2))
    assert (await guarded(gw)).policy.breaker is breaker  # type: ignore[union-attr]
    await gw.apply(resiliency("edge", {"up": {"circuitBreaker": "cb"}},
                              breakers={"cb": {"trip": "consecutiveFailures > 5", "timeout": "30s"}}))
    await wait_for(lambda: balancer(gw, "default/up").policy.breaker is not breaker)  # type: ignore[union-attr]


async def test_tries_without_an_answer_count_against_the_breaker(
    gw: GatewayNode, raw_origins: Callable[..., Awaitable[RawOrigin]]
) -> None:
    closing, parked = await raw_origins("close"), await raw_origins("park")
    cb = {"cb": {"trip": "consecutiveFailures > 1", "timeout": "60s"}}
    await gw.apply(raw_upstream("up", closing, retries=0), route("r", ["/fail"]),
                   raw_upstream("slow", parked, retries=0), route("s", ["/slow"], "slow"),
                   resiliency("edge", {"up": {"circuitBreaker": "cb"},
                                       "slow": {"circuitBreaker": "cb", "timeout": "quick"}},
                              breakers=cb, timeouts={"quick": "100ms"}))
    await guarded(gw)
    await guarded(gw, "default/slow")
    async with httpx.AsyncClient(base_url=gw.url, timeout=10) as http:
        assert [(await http.get("/fail")).status_code for _ in range(3)] == [502, 502, 503]
        assert closing.requests == 2  # closed before the head: failures; then the circuit is open
        assert [(await http.get("/slow")).status_code for _ in range(3)] == [504, 504, 503]
        assert parked.requests == 2  # timed out: failures too (each upstream has its own breaker)


async def test_a_changed_or_removed_policy_is_followed_live(
    gw: GatewayNode, raw_origins: Callable[..., Awaitable[RawOrigin]]
) -> None:
    closing = await raw_origins("close")
    await gw.apply(raw_upstream("up", closing), route("r", ["/fail"]),
                   resiliency("edge", {"up": {"retry": "three"}}, retries=RETRY_3))
    await guarded(gw)
    async with httpx.AsyncClient(base_url=gw.url, timeout=10) as http:
        assert (await http.get("/fail")).status_code == 502
        assert closing.requests == 4
        await gw.apply(resiliency("edge", {"up": {"retry": "three"}},
                                  retries={"three": {"policy": "constant", "duration": "10ms", "maxRetries": 1}}))
        await wait_for(lambda: balancer(gw, "default/up").policy.retry.max_attempts == 2)  # type: ignore[union-attr]
        assert (await http.get("/fail")).status_code == 502
        assert closing.requests == 6
        await delete(gw, "Resiliency", "edge")
        await guarded(gw, on=False)
        assert (await http.get("/fail")).status_code == 502
        assert closing.requests == 7  # native again: retries 1, but no other node to try


async def test_policies_apply_by_the_upstreams_namespace_only(
    tmp_path: Path, raw_origins: Callable[..., Awaitable[RawOrigin]]
) -> None:
    # the resilience module starts before the gateway here (as in `mezzo up`); `gw` has none
    node = await start_gateway(tmp_path / "data", targets=["resilience", "gateway", "api"])
    try:
        here, there = await raw_origins("close"), await raw_origins("close")
        await node.apply(raw_upstream("up", here), route("r", ["/here"]),
                         raw_upstream("up", there, namespace="other"),
                         {**route("r", ["/there"]), "metadata": {"name": "r", "namespace": "other"}},
                         resiliency("edge", {"up": {"retry": "three"}}, namespace="other", retries=RETRY_3))
        await guarded(node, "other/up")
        registry = node.running.node.service(PolicyRegistry)
        assert registry.policy_for("upstreams", "up", "default").is_noop
        assert balancer(node, "default/up").policy is None
        async with httpx.AsyncClient(base_url=node.url, timeout=10) as http:
            assert (await http.get("/there")).status_code == 502
            assert there.requests == 4
            assert (await http.get("/here")).status_code == 502
            assert here.requests == 1
    finally:
        await node.running.node.stop()


async def test_an_upstream_no_policy_targets_is_served_as_before(
    gw: GatewayNode, raw_origins: Callable[..., Awaitable[RawOrigin]], origins: Callable[[int], Awaitable[list[Origin]]]
) -> None:
    closing = await raw_origins("close")
    (origin,) = await origins(1)
    await gw.apply(raw_upstream("up", closing), route("r", ["/fail"]),
                   upstream("plain", origin), route("p", ["/*"], "plain"),
                   raw_upstream("other", closing), route("o", ["/other"], "other"),
                   resiliency("edge", {"other": {"retry": "three"}}, retries=RETRY_3))
    await guarded(gw, "default/other")
    assert balancer(gw, "default/up").policy is None  # nothing to look at per request: the fast path stays
    assert balancer(gw, "default/plain").policy is None
    async with httpx.AsyncClient(base_url=gw.url, timeout=10) as http:
        assert (await http.get("/fail")).status_code == 502
        assert closing.requests == 1
        for _ in range(3):
            assert (await http.get("/hello")).status_code == 200
        assert (await http.get("/status/503")).status_code == 503  # no breaker: the upstream is always asked
        assert origin.requests == 4
