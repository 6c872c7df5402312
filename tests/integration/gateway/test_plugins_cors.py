"""cors: preflights answered by the gateway, CORS headers on answers, origins by list or by regex, and the
refusal of ``*`` with credentials (at apply, and for a route stored by an older Mezzo)."""

from __future__ import annotations

import httpx
import orjson
import pytest
from structlog.testing import capture_logs

from mezzo.resources.service import ResourceService, resource_key
from mezzo.sdk.errors import MezzoError
from mezzo.storage.kv import Put
from mezzo.testing.fixtures import wait_for

from .conftest import EchoServer, GatewayHandle, consumer_doc, route_doc, upstream_doc

SHOP = "https://shop.example.com"
EVIL = "https://evil.example.net"


def _preflight(origin: str, method: str = "PUT", headers: str | None = None) -> dict[str, str]:
    asked = {"origin": origin, "access-control-request-method": method}
    if headers is not None:
        asked["access-control-request-headers"] = headers
    return asked


async def _cors_route(gateway: GatewayHandle, upstream: EchoServer, **conf: object) -> None:
    await gateway.apply(upstream_doc("up", upstream), route_doc("r", ["/*"], plugins={"cors": conf}))


async def test_defaults_allow_any_origin_without_credentials(gateway: GatewayHandle, upstream: EchoServer) -> None:
    await _cors_route(gateway, upstream)
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.get("/x", headers={"origin": SHOP})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"
        for absent in ("vary", "access-control-allow-credentials", "access-control-expose-headers"):
            assert absent not in r.headers, absent
        r = await http.get("/x")  # no Origin: not a CORS request
        assert "access-control-allow-origin" not in r.headers

        r = await http.options("/x", headers=_preflight(EVIL, "DELETE", "X-Token, Content-Type"))
        assert r.status_code == 204 and r.content == b""
        assert r.headers["access-control-allow-origin"] == "*"
        assert r.headers["access-control-allow-methods"] == "GET,POST,PUT,PATCH,DELETE,OPTIONS"
        assert r.headers["access-control-allow-headers"] == "X-Token, Content-Type"  # `*`: what was asked
        assert r.headers["access-control-max-age"] == "5"
        assert upstream.hits["/x"] == 2  # the preflight never reached the upstream

        r = await http.options("/x", headers={"origin": SHOP})  # OPTIONS without Access-Control-Request-Method
        assert r.status_code == 200 and r.json()["method"] == "OPTIONS"  # not a preflight: proxied


async def test_listed_origins_with_credentials(gateway: GatewayHandle, upstream: EchoServer) -> None:
    await _cors_route(gateway, upstream, allowOrigins=[SHOP, "http://localhost:3000"], allowCredentials=True,
                      allowMethods=["GET", "PUT"], allowHeaders=["X-Token", "Content-Type"],
                      exposeHeaders=["X-Total", "X-Page"], maxAge=600)
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        for origin in (SHOP, "http://localhost:3000"):
            r = await http.get("/x", headers={"origin": origin})
            assert r.headers["access-control-allow-origin"] == origin
            assert r.headers["vary"] == "Origin" and r.headers["access-control-allow-credentials"] == "true"
            assert r.headers["access-control-expose-headers"] == "X-Total,X-Page"

        r = await http.get("/x")  # no Origin (a same-origin or non-browser request): still varies on it
        assert r.headers["vary"] == "Origin" and "access-control-allow-origin" not in r.headers

        r = await http.options("/x", headers=_preflight(SHOP, "PUT", "x-token"))
        assert r.status_code == 204
        assert r.headers["access-control-allow-origin"] == SHOP and r.headers["access-control-allow-credentials"] == "true"
        assert r.headers["access-control-allow-methods"] == "GET,PUT"
        assert r.headers["access-control-allow-headers"] == "X-Token,Content-Type"  # the list, not what was asked
        assert r.headers["access-control-max-age"] == "600"

        for origin in (EVIL, "https://shop.example.com.evil.net", "null"):
            r = await http.get("/x", headers={"origin": origin})
            assert r.status_code == 200 and not [h for h in r.headers if h.startswith("access-control-")], origin
            assert r.headers["vary"] == "Origin"  # a cache must not give this answer to the shop's page
            r = await http.options("/x", headers=_preflight(origin))
            assert "access-control-allow-origin" not in r.headers
            assert r.json()["method"] == "OPTIONS"  # not answered by cors: the upstream saw it


async def test_credentialed_preflight_echoes_requested_headers_and_method(gateway: GatewayHandle,
                                                                         upstream: EchoServer) -> None:
    """Browsers read ``*`` literally in Access-Control-Allow-Headers and -Methods of a credentialed
    request, so the gateway answers what was asked instead of ``*``."""
    await _cors_route(gateway, upstream, allowOrigins=[SHOP], allowCredentials=True, allowMethods=["*"])
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.options("/x", headers=_preflight(SHOP, "PURGE", "Authorization, X-Token"))
        assert r.status_code == 204 and r.headers["access-control-allow-credentials"] == "true"
        assert r.headers["access-control-allow-origin"] == SHOP
        assert r.headers["access-control-allow-headers"] == "Authorization, X-Token"
        assert r.headers["access-control-allow-methods"] == "PURGE"
        r = await http.options("/x", headers=_preflight(SHOP, "GET"))  # no headers asked: none allowed
        assert r.status_code == 204 and "access-control-allow-headers" not in r.headers


async def test_any_origin_with_credentials_is_refused_at_apply(gateway: GatewayHandle, upstream: EchoServer) -> None:
    for conf in ({"allowCredentials": True}, {"allowOrigins": ["*"], "allowCredentials": True},
                 {"allowOrigins": [SHOP, "*"], "allow_credentials": True}):
        with pytest.raises(MezzoError, match="allowOrigins") as refused:
            await _cors_route(gateway, upstream, **conf)
        assert "allowCredentials" in str(refused.value) and "allowOriginsByRegex" in str(refused.value)
    await _cors_route(gateway, upstream, allowOrigins=["*"])  # without credentials, any origin is fine


async def test_origins_by_regex(gateway: GatewayHandle, upstream: EchoServer) -> None:
    await _cors_route(gateway, upstream, allowOriginsByRegex=[r"https://([a-z0-9-]+\.)?shop\.example\.com"],
                      allowOrigins=["https://partner.example.org"], allowCredentials=True)
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        for origin in (SHOP, "https://eu.shop.example.com", "https://partner.example.org"):
            r = await http.get("/x", headers={"origin": origin})
            assert r.headers.get("access-control-allow-origin") == origin, origin
            assert r.headers["vary"] == "Origin" and r.headers["access-control-allow-credentials"] == "true"
            r = await http.options("/x", headers=_preflight(origin))
            assert r.status_code == 204 and r.headers["access-control-allow-origin"] == origin
        # a full match: neither a longer host, nor another scheme, nor the pattern somewhere inside
        for origin in ("https://shop.example.com.evil.net", "http://shop.example.com", "https://evilshop.example.com",
                       "https://evil.net/?https://shop.example.com", EVIL):
            r = await http.get("/x", headers={"origin": origin})
            assert "access-control-allow-origin" not in r.headers, origin

    # regexes alone: the default `*` of allowOrigins does not apply beside them
    await _cors_route(gateway, upstream, allowOriginsByRegex=[r"https://.*\.example\.com"])
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        assert (await http.get("/x", headers={"origin": SHOP})).headers["access-control-allow-origin"] == SHOP
        assert "access-control-allow-origin" not in (await http.get("/x", headers={"origin": EVIL})).headers


async def test_bad_origin_regexes_are_refused_at_apply(gateway: GatewayHandle, upstream: EchoServer) -> None:
    with pytest.raises(MezzoError, match=r"allowOriginsByRegex.*\(unclosed"):
        await _cors_route(gateway, upstream, allowOriginsByRegex=[r"https://ok\.example\.com", "https://(unclosed"])
    with pytest.raises(MezzoError, match="allowOriginsByRegex"):  # `*` would make the regexes pointless
        await _cors_route(gateway, upstream, allowOrigins=["*"], allowOriginsByRegex=[r"https://a\.example\.com"])


async def test_bad_header_and_method_names_are_refused_at_apply(gateway: GatewayHandle,
                                                                upstream: EchoServer) -> None:
    for conf in ({"allowHeaders": ["X Token"]}, {"exposeHeaders": ["X-Total\r\nSet-Cookie: a=b"]},
                 {"allowMethods": ["GE T"]}, {"maxAge": -1}, {"allowOrigins": [SHOP], "cookies": True}):
        with pytest.raises(MezzoError, match="plugin cors"):
            await _cors_route(gateway, upstream, **conf)


async def test_headers_on_the_gateways_own_answers_and_preflights_skip_auth(gateway: GatewayHandle,
                                                                          upstream: EchoServer) -> None:
    """A preflight carries no credentials, so it is answered before auth; a 401 carries the CORS headers
    so the page's script can read it."""
    await gateway.apply(upstream_doc("up", upstream), consumer_doc("alice", {"key-auth": {"key": "ka"}}),
                        route_doc("r", ["/*"], plugins={"key-auth": {}, "cors": {"allowOrigins": [SHOP]}}))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.options("/x", headers=_preflight(SHOP, "GET", "apikey"))
        assert r.status_code == 204 and r.headers["access-control-allow-headers"] == "apikey"
        r = await http.get("/x", headers={"origin": SHOP})
        assert r.status_code == 401 and r.headers["access-control-allow-origin"] == SHOP
        r = await http.get("/x", headers={"origin": SHOP, "apikey": "ka"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == SHOP


async def test_the_upstreams_own_cors_headers_are_replaced(gateway: GatewayHandle, upstream: EchoServer) -> None:
    """An upstream that does CORS itself must not add a second Access-Control-Allow-Origin (browsers
    refuse two) nor widen the gateway's answer with its own credentials or exposed headers."""
    await _cors_route(gateway, upstream, allowOrigins=[SHOP], exposeHeaders=["X-Total"])
    widen = {"set-access-control-allow-origin": "*", "set-access-control-allow-credentials": "true",
             "set-access-control-expose-headers": "X-Secret"}
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.get("/x", params=widen, headers={"origin": SHOP})
        assert r.headers.get_list("access-control-allow-origin") == [SHOP]
        assert r.headers.get_list("access-control-expose-headers") == ["X-Total"]
        assert "access-control-allow-credentials" not in r.headers
        r = await http.get("/x", params=widen)  # not a CORS request: the upstream's answer passes unchanged
        assert r.headers["access-control-allow-origin"] == "*"


async def test_a_stored_route_with_any_origin_and_credentials_is_taken_out_of_service(
        gateway: GatewayHandle, upstream: EchoServer) -> None:
    """A route stored by an older Mezzo with ``*`` and credentials (any site could make credentialed
    requests) no longer validates: the gateway takes it out of service and logs why."""
    await _cors_route(gateway, upstream, allowOrigins=[SHOP], allowCredentials=True)
    store = gateway.node.node.service(ResourceService).store
    key = resource_key("Route", "default", "r")
    stored = await store.get(key)
    assert stored is not None
    doc = orjson.loads(stored.value)
    doc["spec"]["plugins"]["cors"] = {"allowOrigins": ["*"], "allowCredentials": True}
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        assert (await http.get("/x", headers={"origin": SHOP})).status_code == 200
        with capture_logs() as logs:
            await store.txn([Put(key, orjson.dumps(doc))])

            async def gone() -> bool:
                return (await http.get("/x", headers={"origin": EVIL})).status_code == 404

            await wait_for(gone, timeout=5)
    (event,) = [e for e in logs if e["event"] == "gateway resource does not validate: taken out of service"]
    assert event["log_level"] == "error" and event["kind"] == "Route" and event["resource"] == "Route/default/r"
    assert "allowCredentials" in str(event["errors"])
