"""traffic-split: canary by weight, blue-green and A/B by match, sticky picks, the route's own upstream."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest

from mezzo.sdk.errors import MezzoError

from .conftest import GatewayHandle, route_doc, upstream_doc


async def test_canary_by_weight(gateway: GatewayHandle, upstreams) -> None:
    stable, canary = await upstreams(2)
    await gateway.apply(
        upstream_doc("up", stable), upstream_doc("canary", canary),
        route_doc("r", ["/*"], plugins={"traffic-split": {"rules": [
            {"weightedUpstreams": [{"upstream": "canary", "weight": 1}, {"weight": 3}]}]}}))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        servers = Counter([(await http.get("/x")).json()["server"] for _ in range(20)])
    assert servers == {"a": 15, "b": 5}  # smooth weighted round robin: exact over every 4


async def test_blue_green_and_ab_by_match(gateway: GatewayHandle, upstreams) -> None:
    blue, green, beta = await upstreams(3)
    rules = [
        {"match": [{"vars": [["http_release", "==", "green"]]}], "weightedUpstreams": [{"upstream": "green"}]},
        {"match": [{"vars": [["cookie_group", "in", ["beta", "staff"]], ["arg_v", "!", "==", "1"]]},
                   {"vars": [["http_user_agent", "~*", "BETA-CLIENT"]]}],
         "weightedUpstreams": [{"upstreamId": "beta"}]},
        {"match": [{"vars": [["arg_score", ">=", 90]]}], "weightedUpstreams": [{"upstream": "green"}]},
    ]
    await gateway.apply(
        upstream_doc("up", blue), upstream_doc("green", green), upstream_doc("beta", beta),
        route_doc("r", ["/*"], plugins={"traffic-split": {"rules": rules}}))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        async def server(**kwargs) -> str:  # type: ignore[no-untyped-def]
            return (await http.get("/x", **kwargs)).json()["server"]  # type: ignore[no-any-return]

        assert await server() == "a"
        assert await server(headers={"release": "green"}) == "b"
        assert await server(headers={"release": "blue"}) == "a"
        assert await server(headers={"cookie": "group=staff"}) == "c"
        assert await server(headers={"cookie": "group=staff"}, params={"v": "1"}) == "a"  # negated
        assert await server(headers={"cookie": "group=other"}) == "a"
        assert await server(headers={"user-agent": "my-beta-client/1.0"}) == "c"  # the second group
        assert await server(params={"score": "95"}) == "b"
        assert await server(params={"score": "12"}) == "a"
        assert await server(params={"score": "high"}) == "a"  # not a number: no match


async def test_sticky_by_header(gateway: GatewayHandle, upstreams) -> None:
    a, b = await upstreams(2)
    await gateway.apply(
        upstream_doc("up", a), upstream_doc("b", b),
        route_doc("r", ["/*"], plugins={"traffic-split": {
            "sticky": {"key": "header", "keyName": "x-user"},
            "rules": [{"weightedUpstreams": [{"upstream": "b", "weight": 1}, {"weight": 1}]}]}}))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        picks: dict[str, set[str]] = {}
        for _ in range(3):
            for user in range(30):
                r = await http.get("/x", headers={"x-user": f"user-{user}"})
                picks.setdefault(f"user-{user}", set()).add(r.json()["server"])
        assert all(len(servers) == 1 for servers in picks.values())  # each user always lands on one side
        assert {s for servers in picks.values() for s in servers} == {"a", "b"}  # and both sides get users
        anonymous = Counter([(await http.get("/x")).json()["server"] for _ in range(4)])
        assert anonymous == {"a": 2, "b": 2}  # without the header: by weight


async def test_route_without_upstream_and_missing_upstream(gateway: GatewayHandle, upstreams) -> None:
    (a,) = await upstreams(1)
    await gateway.apply(
        upstream_doc("only", a),
        route_doc("r", ["/r"], upstream=None, plugins={"traffic-split": {"rules": [
            {"weightedUpstreams": [{"upstream": "only"}]}]}}),
        route_doc("gone", ["/gone"], upstream="only", plugins={"traffic-split": {"rules": [
            {"weightedUpstreams": [{"upstream": "nowhere"}]}]}}))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        assert (await http.get("/r")).json()["server"] == "a"
        r = await http.get("/gone")
        assert r.status_code == 502 and "nowhere" in r.json()["detail"]


@pytest.mark.parametrize("rules", [
    [{"match": [{"vars": [["http_x", "=~", "a"]]}], "weightedUpstreams": [{}]}],
    [{"match": [{"vars": [["nonsense_var", "==", "a"]]}], "weightedUpstreams": [{}]}],
    [{"match": [{"vars": [["arg_a", "~~", "("]]}], "weightedUpstreams": [{}]}],
    [{"weightedUpstreams": [{"weight": 0}]}],
])
async def test_bad_rules_are_refused(gateway: GatewayHandle, upstreams, rules) -> None:  # type: ignore[no-untyped-def]
    (a,) = await upstreams(1)
    with pytest.raises(MezzoError):
        await gateway.apply(upstream_doc("up", a), route_doc("r", ["/*"], plugins={"traffic-split": {"rules": rules}}))
