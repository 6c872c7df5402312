"""proxy-rewrite (what goes upstream: path, query, Host, method, headers) and response-rewrite (the status
and headers of the upstream's answer)."""

from __future__ import annotations

import httpx
import pytest

from mezzo.sdk.errors import MezzoError

from . import recording_upstream
from .conftest import EchoServer, GatewayHandle, route_doc, upstream_doc
from .recording_upstream import RecordingUpstream

recording = recording_upstream.recording  # fixture


# --- proxy-rewrite ---------------------------------------------------------------------------------


async def test_proxy_rewrite_uri_and_templates(gateway: GatewayHandle, upstream: EchoServer) -> None:
    await gateway.apply(
        upstream_doc("up", upstream),
        route_doc("plain", ["/plain/*"], plugins={"proxy-rewrite": {"uri": "/internal/plain"}}),
        route_doc("user", ["/v1/users/{id}"], plugins={"proxy-rewrite": {"uri": "/internal/users/{id}"}}),
        route_doc("args", ["/v1/orders/{id}"], plugins={"proxy-rewrite": {"uri": "/orders?id={id}&v=1"}}))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.get("/plain/a/b?page=2")
        assert r.json()["path"] == "/internal/plain" and r.json()["query"] == "page=2"
        r = await http.get("/v1/users/42?x=1")
        assert r.json()["path"] == "/internal/users/42" and r.json()["query"] == "x=1"
        r = await http.get("/v1/users/caf%C3%A9")  # the parameter is decoded, and encoded again upstream
        assert r.json()["path"] == "/internal/users/café"
        r = await http.get("/v1/orders/7?page=2")  # the uri's arguments first, then the client's
        assert r.json()["path"] == "/orders" and r.json()["query"] == "id=7&v=1&page=2"


async def test_proxy_rewrite_parameters_cannot_inject_a_query(gateway: GatewayHandle, upstream: EchoServer) -> None:
    """An encoded ``?`` (or ``&``, ``#``) in a path parameter stays data: it cannot add arguments upstream."""
    await gateway.apply(
        upstream_doc("up", upstream),
        route_doc("user", ["/v1/users/{id}"], plugins={"proxy-rewrite": {"uri": "/internal/users/{id}"}}),
        route_doc("args", ["/v1/orders/{id}"], plugins={"proxy-rewrite": {"uri": "/orders?id={id}"}}))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.get("/v1/users/alice%3Fadmin=true")
        assert r.json()["path"] == "/internal/users/alice%3Fadmin=true" and r.json()["query"] == ""
        r = await http.get("/v1/orders/7%26admin=true%23x")
        assert r.json()["path"] == "/orders" and r.json()["query"] == "id=7%26admin%3Dtrue%23x"


async def test_proxy_rewrite_regex_uri(gateway: GatewayHandle, upstream: EchoServer) -> None:
    await gateway.apply(
        upstream_doc("up", upstream),
        route_doc("dollar", ["/api/*"], plugins={"proxy-rewrite": {"regexUri": [r"^/api/(\w+)/(.*)", "/$1/v2/$2"]}}),
        route_doc("slash", ["/old/*"], plugins={"proxy-rewrite": {"regex_uri": [r"^/old/(?P<rest>.*)", r"/new/\1"]}}),
        route_doc("named", ["/n/*"], plugins={"proxy-rewrite": {"regexUri": [r"^/n/(?P<rest>.*)", r"/m/\g<rest>"]}}))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.get("/api/users/1/2?q=x")
        assert r.json()["path"] == "/users/v2/1/2" and r.json()["query"] == "q=x"
        assert (await http.get("/api/")).json()["path"] == "/api/"  # no match: the path is left alone
        assert (await http.get("/old/a/b")).json()["path"] == "/new/a/b"
        assert (await http.get("/n/a")).json()["path"] == "/m/a"


async def test_proxy_rewrite_host_method_and_headers(gateway: GatewayHandle, recording) -> None:
    node: RecordingUpstream = await recording()
    await gateway.apply(
        {"kind": "Upstream", "metadata": {"name": "up"}, "spec": {"nodes": [{"host": "127.0.0.1", "port": node.port}]}},
        route_doc("r", ["/*"], plugins={"proxy-rewrite": {
            "host": "internal.example", "method": "put",
            "headers": {"set": {"X-Api-Version": "v1", "X-Tenant": "t1"}, "add": {"X-Tag": "gw"},
                        "remove": ["Cookie", "x-debug"]}}}))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.post("/x", content=b"body", headers={"x-tenant": "client", "x-tag": "client",
                                                            "cookie": "a=b", "X-Debug": "1", "x-other": "kept"})
        assert r.status_code == 200
    head = node.heads[-1]
    assert head.request_line == "PUT /x HTTP/1.1"
    assert head.all("host") == ["internal.example"] and head.all("x-forwarded-host") == ["internal.example"]
    assert head.all("x-api-version") == ["v1"] and head.all("x-tenant") == ["t1"]  # set replaces the client's
    assert head.all("x-tag") == ["client", "gw"]  # add keeps it
    assert head.all("cookie") == [] and head.all("x-debug") == [] and head.all("x-other") == ["kept"]


async def test_proxy_rewrite_bad_configurations_are_refused(gateway: GatewayHandle, upstream: EchoServer) -> None:
    for conf, reason in [
        ({"regexUri": ["^/a"]}, "regexUri"),
        ({"regexUri": ["^/a(", "/b"]}, "regexUri"),
        ({"regexUri": ["^/a/(.*)", "/b/$2"]}, "regexUri"),  # no group 2
        ({"regexUri": ["^/a/(.*)", "/b/\\g<name>"]}, "regexUri"),
        ({"regexUri": ["^/a/(.*)", "/b/\\q"]}, "regexUri"),
        ({"method": "GE T"}, "method"),
        ({"host": "a.example\r\nX-Injected: 1"}, "host"),
        ({"headers": {"set": {"X Bad": "v"}}}, "X Bad"),
        ({"headers": {"add": {"X-Note": "caf\u00e9 \u2615"}}}, "X-Note"),
        ({"headers": {"remove": ["a:b"]}}, "remove"),
        ({"headers": {"rename": {"a": "b"}}}, "rename"),
        ({"uri": ""}, "uri"),
        ({"uri": "/orders?note=hello world"}, "uri"),  # would break the request line upstream
    ]:
        with pytest.raises(MezzoError, match="plugin proxy-rewrite") as refused:
            await gateway.apply(upstream_doc("up", upstream), route_doc("r", ["/*"], plugins={"proxy-rewrite": conf}))
        assert reason in str(refused.value), refused.value


# --- response-rewrite ------------------------------------------------------------------------------


async def test_response_rewrite_status_and_headers(gateway: GatewayHandle, upstream: EchoServer) -> None:
    await gateway.apply(
        upstream_doc("up", upstream),
        route_doc("r", ["/*"], plugins={"response-rewrite": {
            "statusCode": 202, "headers": {"Server": "", "X-Frame-Options": "DENY", "x-kind": "gateway"}}}))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.get("/x", params={"set-X-Kind": "upstream", "set-x-kept": "1"})
        assert r.status_code == 202 and r.json()["path"] == "/x"  # the body is the upstream's
        assert "server" not in r.headers  # an empty value removes
        assert r.headers["x-frame-options"] == "DENY" and r.headers.get_list("x-kind") == ["gateway"]
        assert r.headers["x-kept"] == "1"
        r = await http.get("/x", params={"status": "503"})
        assert r.status_code == 202


async def test_response_rewrite_leaves_the_gateways_own_answers(gateway: GatewayHandle, upstream: EchoServer) -> None:
    await gateway.apply(upstream_doc("up", upstream), route_doc("r", ["/*"], plugins={
        "key-auth": {}, "response-rewrite": {"statusCode": 200, "headers": {"X-Frame-Options": "DENY"}}}))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.get("/x")
        assert r.status_code == 401 and "x-frame-options" not in r.headers


async def test_response_rewrite_bad_configurations_are_refused(gateway: GatewayHandle, upstream: EchoServer) -> None:
    """Refused at apply, not accepted and then failing: a header the gateway cannot send used to stop
    every later configuration change from reaching the gateway."""
    for conf, reason in [({"statusCode": 199}, "statusCode"), ({"statusCode": 600}, "statusCode"),
                         ({"headers": {"X-Note": "caf\u00e9 \u2615"}}, "X-Note"),
                         ({"headers": {"X-Bad": "a\r\nSet-Cookie: x=1"}}, "X-Bad"),
                         ({"headers": {"Bad Name": "v"}}, "Bad Name"),
                         ({"headers": {"Content-Length": "3"}}, "Content-Length"),
                         ({"headers": {"Connection": "close"}}, "Connection"),
                         ({"body": "x"}, "body")]:
        with pytest.raises(MezzoError, match="plugin response-rewrite") as refused:
            await gateway.apply(upstream_doc("up", upstream), route_doc("r", ["/*"],
                                                                         plugins={"response-rewrite": conf}))
        assert reason in str(refused.value), refused.value
    await gateway.apply(upstream_doc("up", upstream), route_doc("r", ["/*"], plugins={
        "response-rewrite": {"headers": {"X-Note": "caf\u00e9"}}}))  # Latin-1 is fine
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        assert (await http.get("/x")).status_code == 200
