"""ip-restriction, mocking, redirect, and the refusals plugins answer with a configured status (reject)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import httpx
import pytest

from mezzo.sdk.errors import MezzoError
from mezzo.testing.fixtures import start_node

from .conftest import EchoServer, GatewayHandle, apply_docs, consumer_doc, route_doc, upstream_doc
from .core_fixtures import RawClient, get
from .test_core_tls import certificate, self_signed

# --- ip-restriction --------------------------------------------------------------------------------


async def test_ip_restriction_whitelist_and_blacklist(gateway: GatewayHandle, upstream: EchoServer) -> None:
    await gateway.apply(
        upstream_doc("up", upstream),
        route_doc("in", ["/in"], plugins={"ip-restriction": {"whitelist": ["127.0.0.0/8", "2001:db8::/32"]}}),
        route_doc("out", ["/out"], plugins={"ip-restriction": {"whitelist": ["10.0.0.0/8", "2001:db8::1"]}}),
        route_doc("deny", ["/deny"], plugins={"ip-restriction": {"blacklist": ["127.0.0.1"], "message": "not you"}}),
        route_doc("other", ["/other"], plugins={"ip-restriction": {"blacklist": ["192.168.0.0/16"]}}))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        assert (await http.get("/in")).status_code == 200
        r = await http.get("/out")
        assert r.status_code == 403 and r.headers["content-type"] == "application/problem+json"
        assert r.json()["detail"] == "Your IP address is not allowed"
        r = await http.get("/deny")
        assert r.status_code == 403 and r.json()["detail"] == "not you"
        assert (await http.get("/other")).status_code == 200
        assert upstream.hits["/out"] == upstream.hits["/deny"] == 0


async def test_ip_restriction_bad_configurations_are_refused(gateway: GatewayHandle, upstream: EchoServer) -> None:
    for conf, reason in [({}, "whitelist or blacklist"), ({"whitelist": ["10.0.0.0/8"], "blacklist": ["10.1.0.0/16"]},
                                                          "whitelist or blacklist"),
                         ({"whitelist": ["10.0.0.300"]}, "10.0.0.300"), ({"blacklist": ["example.com"]}, "example.com"),
                         ({"whitelist": ["10.0.0.0/33"]}, "10.0.0.0/33")]:
        with pytest.raises(MezzoError, match="plugin ip-restriction") as refused:
            await gateway.apply(upstream_doc("up", upstream), route_doc("r", ["/*"], plugins={"ip-restriction": conf}))
        assert reason in str(refused.value)


def _dual_stack() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::", 0))
            return sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
    except OSError:
        return False


@pytest.mark.skipif(not _dual_stack(), reason="needs a dual-stack IPv6 socket")
async def test_ip_restriction_sees_ipv4_clients_of_a_dual_stack_listener(tmp_path: Path,
                                                                       upstream: EchoServer) -> None:
    """A gateway listening on ``::`` sees an IPv4 client as ``::ffff:a.b.c.d``; an IPv4 blacklist must
    still refuse it, and an IPv4 whitelist still let it in."""
    running = await start_node(tmp_path / "data", targets=["gateway", "api"], host="::")
    try:
        await apply_docs(running, [
            upstream_doc("up", upstream),
            route_doc("deny", ["/deny"], plugins={"ip-restriction": {"blacklist": ["127.0.0.0/8"]}}),
            route_doc("allow", ["/allow"], plugins={"ip-restriction": {"whitelist": ["127.0.0.1"]}})])
        port = int(running.node.url("gateway").rsplit(":", 1)[1])
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            assert (await http.get("/deny")).status_code == 403
            r = await http.get("/allow")
            assert r.status_code == 200
            # and the upstream is told the client's IPv4 address, not its IPv4-mapped IPv6 form
            assert r.json()["headers"]["x-real-ip"] == "127.0.0.1"
            assert r.json()["headers"]["x-forwarded-for"] == "127.0.0.1"
    finally:
        await running.node.stop()


# --- mocking ---------------------------------------------------------------------------------------


async def test_mocking_defaults_and_fields(gateway: GatewayHandle, upstream: EchoServer) -> None:
    await gateway.apply(
        upstream_doc("up", upstream),
        route_doc("plain", ["/plain"], upstream=None, plugins={"mocking": {}}),
        route_doc("json", ["/json"], plugins={"mocking": {"status": 201, "body": {"id": 1, "tags": ["a"]},
                                                          "headers": {"X-Sample": "yes", "Cache-Control": "no-store"}}}),
        route_doc("text", ["/text"], upstream=None, plugins={"mocking": {
            "body": "id,name\n1,sample\n", "contentType": "text/csv", "status": 503}}))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.get("/plain")
        assert r.status_code == 200 and r.content == b""
        assert r.headers["content-type"] == "application/json" and r.headers["x-mock-by"] == "mezzo"
        r = await http.post("/json", json={"ignored": True})
        assert r.status_code == 201 and r.json() == {"id": 1, "tags": ["a"]}
        assert r.headers["x-sample"] == "yes" and r.headers["cache-control"] == "no-store"
        assert upstream.hits["/json"] == 0  # the route's upstream is never asked
        r = await http.get("/text")
        assert r.status_code == 503 and r.text == "id,name\n1,sample\n" and r.headers["content-type"] == "text/csv"
        r = await http.head("/json")
        assert r.status_code == 201 and r.content == b"" and r.headers["content-length"] == "21"


async def test_mocking_headers_are_not_doubled(gateway: GatewayHandle) -> None:
    await gateway.apply(route_doc("r", ["/*"], upstream=None, plugins={"mocking": {
        "body": "<p>hi</p>", "headers": {"Content-Type": "text/html", "X-Mock-By": "design-team"}}}))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.get("/x")
        assert r.headers.get_list("content-type") == ["text/html"]  # the header given wins over contentType
        assert r.headers.get_list("x-mock-by") == ["design-team"]


async def test_mocking_runs_after_authentication(gateway: GatewayHandle, upstream: EchoServer) -> None:
    """As in APISIX (auth in the rewrite phase, mocking in access): a mocked route keeps its auth."""
    await gateway.apply(upstream_doc("up", upstream), consumer_doc("alice", {"key-auth": {"key": "ka"}}),
                        route_doc("r", ["/*"], plugins={"key-auth": {}, "mocking": {"body": {"ok": True}}}))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        assert (await http.get("/x")).status_code == 401
        r = await http.get("/x", headers={"apikey": "ka"})
        assert r.status_code == 200 and r.json() == {"ok": True}


async def test_mocking_bad_configurations_are_refused(gateway: GatewayHandle) -> None:
    for conf in ({"status": 99}, {"status": 600}, {"status": 101}, {"headers": {"Content-Length": "5"}},
                 {"headers": {"Transfer-Encoding": "chunked"}}, {"headers": {"X-Bad": "a\r\nSet-Cookie: x=1"}},
                 {"headers": {"X-Note": "café ☕"}}, {"contentType": "text/plain\r\nX-A: b"}, {"delay": 1}):
        with pytest.raises(MezzoError, match="plugin mocking"):
            await gateway.apply(route_doc("r", ["/*"], upstream=None, plugins={"mocking": conf}))


# --- redirect --------------------------------------------------------------------------------------


async def test_redirect_to_a_uri(gateway: GatewayHandle, upstream: EchoServer) -> None:
    await gateway.apply(
        upstream_doc("up", upstream),
        route_doc("a", ["/v1/items/{id}"], upstream=None, plugins={"redirect": {"uri": "/v2/items/{id}"}}),
        route_doc("b", ["/old/{id}"], upstream=None, plugins={"redirect": {
            "uri": "/new/{id}", "retCode": 301, "appendQueryString": True}}),
        route_doc("c", ["/search"], upstream=None, plugins={"redirect": {
            "uri": "/find?lang=en", "ret_code": 307, "append_query_string": True}}))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.get("/v1/items/42?color=red")
        assert r.status_code == 302 and r.headers["location"] == "/v2/items/42"  # the query is dropped by default
        r = await http.get("/old/7?color=red&size=m")
        assert r.status_code == 301 and r.headers["location"] == "/new/7?color=red&size=m"
        assert (await http.get("/old/7")).headers["location"] == "/new/7"
        r = await http.post("/search?q=shoes")
        assert r.status_code == 307 and r.headers["location"] == "/find?lang=en&q=shoes"


async def test_redirect_parameters_cannot_inject(gateway: GatewayHandle) -> None:
    """A path parameter is decoded from the request: put back into Location, it is percent-encoded, so
    an encoded CR LF cannot add a header, and ``?``, ``#`` or ``\\`` cannot change what the URI means."""
    await gateway.apply(route_doc("a", ["/v1/items/{id}"], upstream=None,
                                  plugins={"redirect": {"uri": "/v2/items/{id}"}}))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.get("/v1/items/a%0D%0ASet-Cookie:%20session=evil")
        assert r.status_code == 302 and "set-cookie" not in r.headers
        assert r.headers["location"] == "/v2/items/a%0D%0ASet-Cookie:%20session=evil"
        for sent, location in [("a%3Fadmin=1", "/v2/items/a%3Fadmin=1"), ("a%23top", "/v2/items/a%23top"),
                               ("%5Cevil.example", "/v2/items/%5Cevil.example"), ("%E2%98%95", "/v2/items/%E2%98%95"),
                               ("caf%C3%A9", "/v2/items/caf%C3%A9")]:
            r = await http.get(f"/v1/items/{sent}")
            assert r.status_code == 302 and r.headers["location"] == location, sent


async def test_redirect_http_to_https(gateway: GatewayHandle, upstream: EchoServer) -> None:
    await gateway.apply(
        upstream_doc("up", upstream),
        route_doc("a", ["/a/*"], plugins={"redirect": {"httpToHttps": True}}),
        route_doc("b", ["/b/*"], plugins={"redirect": {"httpToHttps": True, "retCode": 302}}),
        route_doc("c", ["/c/*"], plugins={"redirect": {"httpToHttps": True, "retCode": 308}}))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.get("/a/x?q=1", headers={"host": "shop.example.com:8080"})
        assert r.status_code == 301 and r.headers["location"] == "https://shop.example.com/a/x?q=1"
        r = await http.get("/a/x", headers={"host": "[2001:db8::1]:8080"})
        assert r.headers["location"] == "https://[2001:db8::1]/a/x"
        r = await http.get("/b/x", headers={"host": "shop.example.com"})
        assert r.status_code == 302 and r.headers["location"] == "https://shop.example.com/b/x"  # as asked
        assert (await http.post("/c/x", headers={"host": "shop.example.com"})).status_code == 308


async def test_redirect_http_to_https_lets_https_through(gateway: GatewayHandle, upstream: EchoServer) -> None:
    """A request that came over TLS is not sent round again (a redirect loop in the browser): it is proxied."""
    pem = self_signed("shop.test")
    await gateway.apply(upstream_doc("up", upstream), certificate("shop", pem, "shop.test"),
                        route_doc("a", ["/*"], plugins={"redirect": {"httpToHttps": True}}))
    context = ssl.create_default_context(cadata=pem[0])
    port = int(gateway.node.node.url("gateway-tls").rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="shop.test")
    client = RawClient(reader, writer)
    try:
        await client.send(get("/x?q=1", host="shop.test"))
        r = await client.response()
        assert r.status == 200 and r.json()["path"] == "/x", (r.status, r.headers)
    finally:
        client.close()


async def test_redirect_runs_after_authentication(gateway: GatewayHandle) -> None:
    await gateway.apply(consumer_doc("alice", {"key-auth": {"key": "ka"}}),
                        route_doc("a", ["/*"], upstream=None, plugins={"key-auth": {}, "redirect": {"uri": "/b"}}))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        assert (await http.get("/x")).status_code == 401
        assert (await http.get("/x", headers={"apikey": "ka"})).status_code == 302


async def test_redirect_bad_configurations_are_refused(gateway: GatewayHandle) -> None:
    for conf in ({}, {"uri": "/b", "httpToHttps": True}, {"uri": "/b", "retCode": 200}, {"uri": "/b", "retCode": 400},
                 {"uri": ""}, {"uri": "/b\r\nSet-Cookie: a=b"}, {"uri": "/caf☕"}, {"httpToHttps": False}):
        with pytest.raises(MezzoError, match="plugin redirect"):
            await gateway.apply(route_doc("a", ["/*"], upstream=None, plugins={"redirect": conf}))


# --- reject: a refusal with a configured status ----------------------------------------------------


async def test_refusals_with_a_configured_status_are_problem_documents(gateway: GatewayHandle,
                                                                       upstream: EchoServer) -> None:
    """Every answer a plugin makes itself is application/problem+json, also for a status HTTP has no
    name for (599 here): the status line says ``Unknown`` and so does the title."""
    await gateway.apply(
        upstream_doc("up", upstream), consumer_doc("alice", {"key-auth": {"key": "ka"}}),
        route_doc("known", ["/known"], plugins={"key-auth": {}, "consumer-restriction": {
            "blacklist": ["alice"], "rejectedCode": 451, "rejectedMsg": "not here"}}),
        route_doc("unknown", ["/unknown"], plugins={"key-auth": {}, "consumer-restriction": {
            "blacklist": ["alice"], "rejectedCode": 599, "rejectedMsg": "no, in a rare way"}}),
        route_doc("validated", ["/validated"], plugins={"request-validation": {
            "headerSchema": {"required": ["x-tenant"]}, "rejectedCode": 599}}))
    async with httpx.AsyncClient(base_url=gateway.url, headers={"apikey": "ka"}) as http:
        r = await http.get("/known")
        assert r.status_code == 451 and r.headers["content-type"] == "application/problem+json"
        assert r.json() == {"type": "about:blank", "title": "Unavailable For Legal Reasons", "status": 451,
                            "detail": "not here"}
        r = await http.get("/unknown")
        assert r.status_code == 599 and r.reason_phrase == "Unknown"
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json() == {"type": "about:blank", "title": "Unknown", "status": 599, "detail": "no, in a rare way"}
        r = await http.get("/validated")
        assert r.status_code == 599 and r.headers["content-type"] == "application/problem+json"
        assert r.json()["errors"][0]["in"] == "header"


async def test_limit_count_refusal_with_an_unnamed_status(gateway: GatewayHandle, upstream: EchoServer) -> None:
    await gateway.apply(upstream_doc("up", upstream), route_doc("r", ["/*"], plugins={"limit-count": {
        "count": 1, "window": "1h", "rejectedCode": 599}}))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        assert (await http.get("/x")).status_code == 200
        assert (await http.get("/x")).status_code == 599
