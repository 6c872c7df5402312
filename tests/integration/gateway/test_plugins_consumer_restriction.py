"""consumer-restriction: consumer ACLs by name or group, and per-method allowances."""

from __future__ import annotations

import httpx
import pytest

from mezzo.sdk.errors import MezzoError

from .conftest import EchoServer, GatewayHandle, consumer_doc, route_doc, upstream_doc


def _consumers() -> list[dict]:
    return [consumer_doc("alice", {"key-auth": {"key": "ka"}}, groups=["admins", "staff"]),
            consumer_doc("bob", {"key-auth": {"key": "kb"}}, groups=["staff"]),
            consumer_doc("eve", {"key-auth": {"key": "ke"}})]


async def test_whitelist_and_blacklist_by_name(gateway: GatewayHandle, upstream: EchoServer) -> None:
    await gateway.apply(
        upstream_doc("up", upstream),
        route_doc("allow", ["/allow"], plugins={"key-auth": {}, "consumer-restriction": {"whitelist": ["alice", "bob"]}}),
        route_doc("deny", ["/deny"], plugins={"key-auth": {}, "consumer-restriction": {
            "blacklist": ["eve"], "rejectedCode": 451, "rejectedMsg": "not you"}}),
        *_consumers())
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        assert (await http.get("/allow", headers={"apikey": "ka"})).status_code == 200
        assert (await http.get("/allow", headers={"apikey": "kb"})).status_code == 200
        r = await http.get("/allow", headers={"apikey": "ke"})
        assert r.status_code == 403 and r.headers["content-type"] == "application/problem+json"
        assert (await http.get("/deny", headers={"apikey": "ka"})).status_code == 200
        r = await http.get("/deny", headers={"apikey": "ke"})
        assert r.status_code == 451 and r.json()["detail"] == "not you"
        assert (await http.get("/allow")).status_code == 401  # key-auth refuses first


async def test_groups_and_methods(gateway: GatewayHandle, upstream: EchoServer) -> None:
    await gateway.apply(
        upstream_doc("up", upstream),
        route_doc("admin", ["/admin"], plugins={"key-auth": {}, "consumer-restriction": {
            "type": "consumer_group_id", "whitelist": ["admins"]}}),
        route_doc("staff", ["/staff"], plugins={"key-auth": {}, "consumer-restriction": {
            "type": "consumer_group_id", "blacklist": ["contractors"],
            "allowedByMethods": [{"user": "bob", "methods": ["GET"]}]}}),
        *_consumers())
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        assert (await http.get("/admin", headers={"apikey": "ka"})).status_code == 200
        assert (await http.get("/admin", headers={"apikey": "kb"})).status_code == 403
        assert (await http.get("/admin", headers={"apikey": "ke"})).status_code == 403  # no groups at all
        assert (await http.get("/staff", headers={"apikey": "kb"})).status_code == 200
        assert (await http.post("/staff", headers={"apikey": "kb"})).status_code == 403
        assert (await http.post("/staff", headers={"apikey": "ka"})).status_code == 200


async def test_without_an_auth_plugin_it_is_401(gateway: GatewayHandle, upstream: EchoServer) -> None:
    await gateway.apply(upstream_doc("up", upstream),
                        route_doc("r", ["/*"], plugins={"consumer-restriction": {"whitelist": ["alice"]}}))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        assert (await http.get("/x")).status_code == 401
    with pytest.raises(MezzoError):
        await gateway.apply(route_doc("bad", ["/*"], plugins={"consumer-restriction": {}}))
