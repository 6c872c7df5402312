"""limit-count, local policy: the count per key, the X-RateLimit-* headers, 429 with Retry-After, windows."""

from __future__ import annotations

import httpx

from mezzo.gateway.plugins.limit_count import _FixedCounts

from . import core_fixtures
from .core_fixtures import GatewayNode, route, upstream

gw, origins = core_fixtures.gw, core_fixtures.origins  # fixtures


async def test_fixed_window_counts_per_key_with_headers(gw: GatewayNode, origins) -> None:
    (a,) = await origins(1)
    await gw.apply(upstream("up", a),
                   route("ip", ["/ip/*"], plugins={"limit-count": {"count": 2, "window": "60s"}}),
                   route("hdr", ["/hdr/*"], plugins={"limit-count": {"count": 1, "window": "60s", "key": "header",
                                                                     "keyName": "X-User", "rejectedCode": 503,
                                                                     "rejectedMsg": "slow down"}}),
                   route("quiet", ["/quiet/*"], plugins={"limit-count": {"count": 1, "window": "60s",
                                                                         "showHeaders": False}}))
    async with httpx.AsyncClient(base_url=gw.url, timeout=10) as http:
        answers = [await http.get("/ip/x") for _ in range(3)]
        assert [r.status_code for r in answers] == [200, 200, 429]
        assert [r.headers["x-ratelimit-remaining"] for r in answers] == ["1", "0", "0"]
        assert all(r.headers["x-ratelimit-limit"] == "2" for r in answers)
        assert all(0 < int(r.headers["x-ratelimit-reset"]) <= 60 for r in answers)
        refused = answers[2]
        assert refused.headers["content-type"] == "application/problem+json"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert refused.json()["status"] == 429 and refused.json()["detail"] == "Too Many Requests"
        assert a.requests == 2  # the refused request never went upstream

        # a header key: each value has its own count; the code and message are the route's
        assert (await http.get("/hdr/x", headers={"x-user": "ann"})).status_code == 200
        assert (await http.get("/hdr/x", headers={"x-user": "bob"})).status_code == 200
        r = await http.get("/hdr/x", headers={"x-user": "ann"})
        assert r.status_code == 503 and r.json()["detail"] == "slow down"

        r = await http.get("/quiet/x")
        assert r.status_code == 200 and "x-ratelimit-limit" not in r.headers
        assert (await http.get("/quiet/x")).status_code == 429


async def test_sliding_window(gw: GatewayNode, origins) -> None:
    (a,) = await origins(1)
    await gw.apply(upstream("up", a), route("r", ["/*"], plugins={
        "limit-count": {"count": 2, "window": "60s", "algorithm": "sliding"}}))
    async with httpx.AsyncClient(base_url=gw.url, timeout=10) as http:
        answers = [await http.get("/x") for _ in range(3)]
        assert [r.status_code for r in answers] == [200, 200, 429]
        assert answers[0].headers["x-ratelimit-remaining"] == "1" and "retry-after" in answers[2].headers


def test_fixed_counts_start_over_each_window_and_stay_bounded() -> None:
    counts = _FixedCounts(limit=2, window=10.0, max_keys=3)
    assert [counts.take("a", 100.0) for _ in range(3)] == [1, 2, 3]  # 3 = limit + 1: refused
    assert counts.ends == 110.0
    assert counts.take("a", 109.9) == 3  # still the same window
    assert counts.take("a", 110.0) == 1  # the next window begins at its bound
    assert counts.ends == 120.0
    for key in ("b", "c", "d"):
        counts.take(key, 111.0)
    assert len(counts.counts) == 3 and "a" not in counts.counts  # the oldest key of the window went first
