"""The per-request paths of key-auth, limit-count (local, fixed) and prometheus answer as before.

Each was made cheaper per request (prometheus counts in per-series cells found by one dict lookup,
limit-count's fixed windows take their common case inline and send X-RateLimit-Reset from bytes
made once a second, key-auth looks its consumer up without a second comparison). The reference
implementations below are the code they replaced, kept here verbatim in what they compute: the
scrape text, the X-RateLimit-* headers and the refusals must be byte for byte the same.
"""

from __future__ import annotations

import asyncio
import math
from bisect import bisect_left
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from mezzo.gateway.client import ClientConnection, Limits
from mezzo.gateway.model import ConsumerSpec, RouteSpec, UpstreamSpec
from mezzo.gateway.plugins import limit_count, prometheus
from mezzo.gateway.plugins.limit_count import LimitCount, LimitCountConfig, _FixedCounts
from mezzo.gateway.plugins.prometheus import BUCKETS, Counts, Prometheus, PrometheusConfig
from mezzo.gateway.plugins.reject import reject
from mezzo.gateway.runtime import Gateway
from mezzo.gateway.upstream import UpstreamConnection
from mezzo.telemetry.metrics import Metrics

from .fakes import OK, Transport

# prometheus ---------------------------------------------------------------------------------


class ReferenceCounts:
    """The Counts this replaced: dicts of ints keyed by labels."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str, int], int] = {}
        self.latency: dict[tuple[str, str], list[Any]] = {}
        self.bytes: dict[tuple[str, str], int] = {}

    def add(self, route: str, upstream: str, node: str, status: int, seconds: float, sent: int) -> None:
        key = (route, upstream, node, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        pair = (route, upstream)
        latency = self.latency.get(pair)
        if latency is None:
            latency = self.latency[pair] = [[0] * (len(BUCKETS) + 1), 0.0]
        latency[0][bisect_left(BUCKETS, seconds)] += 1
        latency[1] += seconds
        if sent:
            self.bytes[pair] = self.bytes.get(pair, 0) + sent

    def collect(self) -> Iterator[Any]:
        requests = CounterMetricFamily("mezzo_gateway_requests", "Requests through the gateway.",
                                       labels=("route", "upstream", "node", "code"))
        for (route, upstream, node, status), count in list(self.requests.items()):
            requests.add_metric((route, upstream, node, str(status)), count)
        latency = HistogramMetricFamily("mezzo_gateway_request_duration_seconds",
                                        "From the request's headers to the end of the response.",
                                        labels=("route", "upstream"), unit="seconds")
        for pair, (counts, total) in list(self.latency.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*map(str, BUCKETS), "+Inf"), list(counts), strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            latency.add_metric(pair, buckets, total)
        sent = CounterMetricFamily("mezzo_gateway_response_bytes", "Response body bytes sent to clients.",
                                   labels=("route", "upstream"), unit="bytes")
        for pair, count in list(self.bytes.items()):
            sent.add_metric(pair, count)
        yield from (requests, latency, sent)

    def describe(self) -> list[Any]:
        return []


SECONDS = st.one_of(st.sampled_from([0.0, *BUCKETS, 20.0, 1e-9]),
                    st.floats(min_value=0.0, max_value=30.0, allow_nan=False))
EVENT = st.tuples(st.sampled_from(["a", "b", "c"]),  # route name
                  st.sampled_from([None, "up", "other"]),  # upstream (None: the route had none)
                  st.sampled_from([None, "10.0.0.1:80", "10.0.0.2:8080"]),  # node (None: none answered)
                  st.sampled_from([200, 404, 429, 502]), SECONDS, st.sampled_from([0, 0, 1, 3, 1000]),
                  st.booleans())  # through the plugin's log (else Counts.add)


def _scrapes(collector: Any) -> tuple[bytes, bytes]:
    registry = CollectorRegistry()
    registry.register(collector)
    return generate_latest(registry), generate_openmetrics(registry)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(EVENT, max_size=40), prefer_name=st.booleans())
def test_prometheus_scrape_is_what_the_dict_of_ints_gave(monkeypatch: pytest.MonkeyPatch, events: list[Any],
                                                         prefer_name: bool) -> None:
    reference, counts = ReferenceCounts(), Counts()
    metrics = SimpleNamespace(_mezzo_gateway_counts=counts)  # counts_for finds it: nothing registered
    plugin = Prometheus(PrometheusConfig(prefer_name=prefer_name), SimpleNamespace(metrics=metrics))
    assert plugin.counts is counts
    clock = [0.0]
    monkeypatch.setattr(prometheus, "monotonic", lambda: clock[0])
    for name, upstream, node, status, seconds, sent, through_log in events:
        route = SimpleNamespace(name=name, ref=f"default/{name}")
        label = name if prefer_name else route.ref
        reference.add(label, upstream or "", node or "", status, seconds, sent)
        if through_log:
            ctx = SimpleNamespace(route=route, upstream=upstream and SimpleNamespace(short_name=upstream),
                                  node=node and SimpleNamespace(key=node), status=status, started=0.0,
                                  bytes_sent=sent)
            clock[0] = seconds  # seconds - 0.0: the very float the reference got
            plugin.log(ctx)  # type: ignore[arg-type]
        else:
            counts.add(label, upstream or "", node or "", status, seconds, sent)
    assert _scrapes(counts) == _scrapes(reference)


def test_prometheus_without_metrics_counts_nothing() -> None:
    plugin = Prometheus(PrometheusConfig(), SimpleNamespace(metrics=None))
    assert plugin.counts is None and plugin.log(None) is None  # type: ignore[arg-type]


# limit-count, local fixed windows -----------------------------------------------------------


def reference_fixed(fixed: _FixedCounts, conf: LimitCountConfig, key: str, now: float,
                    headers: list[tuple[bytes, bytes]]) -> Any:
    """limit-count's fixed path as it was (its key already found)."""
    used = fixed.take(key, now)
    allowed = used <= conf.count
    if conf.show_headers:
        reset = b"%d" % math.ceil(fixed.ends - now)
        headers += ((b"x-ratelimit-limit", b"%d" % conf.count),
                    (b"x-ratelimit-remaining", b"%d" % (conf.count - min(used, conf.count))),
                    (b"x-ratelimit-reset", reset))
    if allowed:
        return None
    reply = reject(conf.rejected_code, conf.rejected_msg)
    reply.headers["retry-after"] = str(max(1, math.ceil(fixed.ends - now)))
    return reply


def _reply(reply: Any) -> Any:
    return None if reply is None else reply.encode(True)  # status line, headers and body, as sent


STEP = st.one_of(st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.5, 7.0, 60.0]), st.floats(min_value=0.0, max_value=5.0))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(count=st.integers(1, 4), window=st.sampled_from([1.0, 2.5, 10.0, 60.0, 0.3]),
       key=st.sampled_from(["remote_addr", "consumer", "header", "route"]), show=st.booleans(),
       start=st.sampled_from([0.0, 1000.0, 1234.5678, 86400.125]),
       steps=st.lists(st.tuples(STEP, st.sampled_from(["ann", "bob", None])), max_size=40))
def test_limit_count_fixed_answers_as_before(monkeypatch: pytest.MonkeyPatch, count: int, window: float, key: str,
                                             show: bool, start: float, steps: list[Any]) -> None:
    conf = LimitCountConfig.model_validate({"count": count, "window": window, "key": key, "keyName": "x-user",
                                            "showHeaders": show, "rejectedCode": 503, "rejectedMsg": "slow"})
    plugin = LimitCount(conf, SimpleNamespace())
    reference = _FixedCounts(conf.count, conf.window)
    clock = [start]
    monkeypatch.setattr(limit_count, "monotonic", lambda: clock[0])
    for step, who in steps:
        clock[0] += step
        consumer = SimpleNamespace(ref=f"default/{who}") if who is not None else None
        request = SimpleNamespace(client_ip="192.0.2.7" if who is None else f"192.0.2.{len(who)}",
                                  header=lambda name, who=who: who if name == b"x-user" else None)
        ctx = SimpleNamespace(request=request, consumer=consumer, response_headers=[])
        expected_key = plugin._value(ctx)  # type: ignore[arg-type]
        expected_headers: list[tuple[bytes, bytes]] = []
        expected = reference_fixed(reference, conf, expected_key, clock[0], expected_headers)
        assert _reply(plugin.access(ctx)) == _reply(expected)  # type: ignore[arg-type]
        assert ctx.response_headers == expected_headers
        assert plugin.fixed.counts == reference.counts and plugin.fixed.ends == reference.ends  # type: ignore[union-attr]


def test_limit_count_reset_header_turns_on_whole_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    plugin = LimitCount(LimitCountConfig.model_validate({"count": 100, "window": "60s"}), SimpleNamespace())
    clock = [1000.0]  # the window is [960, 1020): 20 s to go
    monkeypatch.setattr(limit_count, "monotonic", lambda: clock[0])
    seen = []
    for now in (1000.0, 1000.5, 1000.999, 1001.0, 1001.0000001, 1019.5, 1020.0, 1020.0):
        clock[0] = now
        ctx = SimpleNamespace(request=SimpleNamespace(client_ip="192.0.2.1"), consumer=None, response_headers=[])
        assert plugin.access(ctx) is None  # type: ignore[arg-type]
        headers = dict(ctx.response_headers)
        seen.append((headers[b"x-ratelimit-remaining"], headers[b"x-ratelimit-reset"]))
    assert seen == [(b"99", b"20"), (b"98", b"20"), (b"97", b"20"), (b"96", b"19"), (b"95", b"19"),
                    (b"94", b"1"), (b"99", b"60"), (b"98", b"60")]


# the three together, through the data plane ------------------------------------------------

async def _plane(count: int) -> tuple[Gateway, Any]:
    gateway = Gateway(Limits(), Metrics())
    gateway.changed("Upstream", "ADDED", "default", "up",
                    UpstreamSpec.model_validate({"nodes": [{"host": "10.0.0.1", "port": 80}]}), 1)
    gateway.changed("Route", "ADDED", "default", "r", RouteSpec.model_validate({
        "paths": ["/x/*"], "upstream": "up",
        "plugins": {"key-auth": {}, "limit-count": {"count": count, "window": "60s", "key": "consumer"},
                    "prometheus": {}}}), 1)
    gateway.changed("Consumer", "ADDED", "default", "alice",
                    ConsumerSpec.model_validate({"credentials": {"key-auth": {"key": "alice-key"}}}), 1)
    gateway.changed("Consumer", "ADDED", "other", "bob",
                    ConsumerSpec.model_validate({"credentials": {"key-auth": {"key": "bob-key"}}}), 1)
    gateway._apply()
    node = gateway.snapshot.upstreams["default/up"].nodes[0]

    async def exchange(request: bytes) -> tuple[bytes, bytes]:
        conn = UpstreamConnection(node)
        upstream = Transport()
        conn.connection_made(upstream)  # type: ignore[arg-type]
        node.idle[:] = [conn]
        client = ClientConnection(gateway)
        transport = Transport()
        client.connection_made(transport)  # type: ignore[arg-type]
        client.data_received(request)
        await asyncio.sleep(0)  # the end of the loop's pass: writes held to it go out
        if upstream.out:
            conn.data_received(OK)
            await asyncio.sleep(0)
        return bytes(upstream.out), bytes(transport.out)

    return gateway, exchange


def _head(response: bytes) -> dict[bytes, bytes]:
    lines = response.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    return {k.lower(): v for k, _, v in (line.partition(b": ") for line in lines[1:])} | {b"": lines[0]}


@pytest.mark.parametrize("apikey", [b"alice-key", b"bob-key", b"", None])
def test_key_auth_limit_count_prometheus_route(apikey: bytes | None) -> None:
    loop = asyncio.new_event_loop()
    try:
        gateway, exchange = loop.run_until_complete(_plane(2))

        async def run() -> list[tuple[bytes, bytes]]:
            request = b"GET /x/y HTTP/1.1\r\nHost: gw\r\n" + (b"ApiKey: %s\r\n" % apikey if apikey is not None else b"")
            return [await exchange(request + b"\r\n") for _ in range(3)]

        answers = loop.run_until_complete(run())
    finally:
        loop.close()
    if apikey != b"alice-key":  # no key, an empty one, or the key of another namespace's consumer
        for upstream, response in answers:
            head = _head(response)
            assert upstream == b"" and head[b""] == b"HTTP/1.1 401 Unauthorized"
            assert head[b"www-authenticate"] == b'ApiKey realm="mezzo"' and b"x-ratelimit-limit" not in head
            detail = "Invalid API key in request" if apikey else "Missing API key in request"
            assert orjson.loads(response.split(b"\r\n\r\n", 1)[1])["detail"] == detail
        return
    heads = [_head(response) for _, response in answers]
    assert [h[b""] for h in heads] == [b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK", b"HTTP/1.1 429 Too Many Requests"]
    assert [h[b"x-ratelimit-limit"] for h in heads] == [b"2"] * 3
    assert [h[b"x-ratelimit-remaining"] for h in heads] == [b"1", b"0", b"0"]
    assert all(0 < int(h[b"x-ratelimit-reset"]) <= 60 for h in heads)
    assert 1 <= int(heads[2][b"retry-after"]) <= 60
    for upstream, _ in answers[:2]:
        assert b"\r\nx-consumer-username: alice\r\n" in upstream and b"\r\nApiKey: alice-key\r\n" in upstream
    assert answers[2][0] == b""
    text = generate_latest(gateway.metrics.registry).decode()
    assert 'mezzo_gateway_requests_total{code="200",node="10.0.0.1:80",route="r",upstream="up"} 2.0' in text
    assert 'mezzo_gateway_requests_total{code="429",node="",route="r",upstream="up"} 1.0' in text
    assert 'mezzo_gateway_request_duration_seconds_count{route="r",upstream="up"} 3.0' in text
    assert 'mezzo_gateway_response_bytes_total{route="r",upstream="up"} 6.0' in text
