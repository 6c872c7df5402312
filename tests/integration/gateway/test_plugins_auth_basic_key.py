"""basic-auth and key-auth: the right credential passes (as its consumer), anything else gets 401 with a
challenge; where the key is read from; hideCredentials."""

from __future__ import annotations

import base64

import httpx
import pytest

from mezzo.sdk.errors import MezzoError

from .conftest import EchoServer, GatewayHandle, consumer_doc, route_doc, upstream_doc

BASIC_CHALLENGE = 'Basic realm="mezzo"'
KEY_CHALLENGE = 'ApiKey realm="mezzo"'


def _basic(user: str | bytes, password: str | bytes = b"") -> str:
    raw = (user if isinstance(user, bytes) else user.encode()) + b":" + (
        password if isinstance(password, bytes) else password.encode())
    return "Basic " + base64.b64encode(raw).decode()


def _refused(r: httpx.Response, challenge: str, detail: str) -> bool:
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == challenge and r.headers["content-type"] == "application/problem+json"
    assert r.json()["detail"] == detail, r.json()
    return True


# --- basic-auth ------------------------------------------------------------------------------------

async def _basic_setup(gateway: GatewayHandle, upstream: EchoServer, **conf: object) -> None:
    await gateway.apply(upstream_doc("up", upstream), route_doc("r", ["/*"], plugins={"basic-auth": conf}),
                        consumer_doc("alice", {"basic-auth": {"username": "alice", "password": "s3cret:with:colons"}}),
                        consumer_doc("bob", {"basic-auth": {"username": "bob", "password": "hunter2"}}))


async def test_basic_auth_right_password_passes_as_the_consumer(gateway: GatewayHandle,
                                                                upstream: EchoServer) -> None:
    await _basic_setup(gateway, upstream)
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        good = _basic("alice", "s3cret:with:colons")  # a password may hold colons: the user id ends at the first
        r = await http.get("/x", headers={"authorization": good, "x-consumer-username": "bob"})
        assert r.status_code == 200
        seen = r.json()["headers"]
        assert seen["x-consumer-username"] == "alice"  # the client's own value never passes
        assert seen["authorization"] == good  # hideCredentials is off by default
        r = await http.get("/x", headers={"authorization": "basic " + good[6:]})  # the scheme is case-insensitive
        assert r.status_code == 200 and r.json()["headers"]["x-consumer-username"] == "alice"
        r = await http.get("/x", auth=("bob", "hunter2"))
        assert r.status_code == 200 and r.json()["headers"]["x-consumer-username"] == "bob"


async def test_basic_auth_refusals_are_401_with_a_challenge(gateway: GatewayHandle, upstream: EchoServer) -> None:
    await _basic_setup(gateway, upstream)
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        cases = [
            ({"authorization": _basic("alice", "wrong")}, "Invalid user authorization"),
            ({"authorization": _basic("alice", "s3cret")}, "Invalid user authorization"),  # a prefix is not enough
            ({"authorization": _basic("alice", "")}, "Invalid user authorization"),
            ({"authorization": _basic("bob", "s3cret:with:colons")}, "Invalid user authorization"),  # alice's
            ({"authorization": _basic("mallory", "hunter2")}, "Invalid user authorization"),
            ({"authorization": _basic("", "hunter2")}, "Invalid user authorization"),
            ({"authorization": "Basic " + base64.b64encode(b"alice").decode()}, "Invalid user authorization"),
            ({"authorization": _basic(b"\xff\xfe", b"x")}, "Invalid authorization in request"),  # not UTF-8
            ({"authorization": "Basic not-base64!"}, "Invalid authorization in request"),
            ({"authorization": "Bearer abc"}, "Missing authorization in request"),
            ({"authorization": ""}, "Missing authorization in request"),
            ({}, "Missing authorization in request"),
        ]
        for headers, detail in cases:
            assert _refused(await http.get("/x", headers=headers), BASIC_CHALLENGE, detail)
        assert upstream.hits["/x"] == 0


async def test_basic_auth_hide_credentials(gateway: GatewayHandle, upstream: EchoServer) -> None:
    await _basic_setup(gateway, upstream, hideCredentials=True)
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.get("/x", auth=("bob", "hunter2"))
        assert r.status_code == 200 and "authorization" not in r.json()["headers"]
        assert r.json()["headers"]["x-consumer-username"] == "bob"
    with pytest.raises(MezzoError, match="plugin basic-auth"):
        await _basic_setup(gateway, upstream, realm="other")


# --- key-auth --------------------------------------------------------------------------------------

async def _key_setup(gateway: GatewayHandle, upstream: EchoServer, **conf: object) -> None:
    await gateway.apply(upstream_doc("up", upstream), route_doc("r", ["/*"], plugins={"key-auth": conf}),
                        consumer_doc("alice", {"key-auth": {"key": "alice-key"}}),
                        consumer_doc("bob", {"key-auth": {"key": "bob-key"}}))


async def test_key_auth_header_then_query(gateway: GatewayHandle, upstream: EchoServer) -> None:
    await _key_setup(gateway, upstream)
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.get("/x", headers={"apikey": "alice-key", "x-consumer-username": "bob"})
        assert r.status_code == 200 and r.json()["headers"]["x-consumer-username"] == "alice"
        assert r.json()["headers"]["apikey"] == "alice-key"  # not hidden by default
        r = await http.get("/x", params={"apikey": "bob-key", "page": "2"})
        assert r.status_code == 200 and r.json()["headers"]["x-consumer-username"] == "bob"
        assert r.json()["query"] == "apikey=bob-key&page=2"
        # the header, when present, is the key: a good argument does not make up for a bad header
        r = await http.get("/x", headers={"apikey": "nope"}, params={"apikey": "bob-key"})
        assert _refused(r, KEY_CHALLENGE, "Invalid API key in request")


async def test_key_auth_refusals_are_401_with_a_challenge(gateway: GatewayHandle, upstream: EchoServer) -> None:
    await _key_setup(gateway, upstream)
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        for headers, params, detail in [
            ({}, {}, "Missing API key in request"),
            ({"apikey": ""}, {}, "Missing API key in request"),
            ({}, {"apikey": ""}, "Missing API key in request"),
            ({"apikey": "alice-ke"}, {}, "Invalid API key in request"),
            ({"apikey": "ALICE-KEY"}, {}, "Invalid API key in request"),
            ({}, {"apikey": "unknown"}, "Invalid API key in request"),
            ({"x-api-key": "alice-key"}, {}, "Missing API key in request"),  # not the configured header
        ]:
            assert _refused(await http.get("/x", headers=headers, params=params), KEY_CHALLENGE, detail)
        assert upstream.hits["/x"] == 0


async def test_key_auth_custom_header_and_query(gateway: GatewayHandle, upstream: EchoServer) -> None:
    await _key_setup(gateway, upstream, header="X-API-Key", query="key")
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.get("/x", headers={"x-api-key": "alice-key"})
        assert r.status_code == 200 and r.json()["headers"]["x-consumer-username"] == "alice"
        assert (await http.get("/x", params={"key": "bob-key"})).status_code == 200
        assert (await http.get("/x", headers={"apikey": "alice-key"})).status_code == 401
        assert (await http.get("/x", params={"apikey": "alice-key"})).status_code == 401


async def test_key_auth_hide_credentials(gateway: GatewayHandle, upstream: EchoServer) -> None:
    await _key_setup(gateway, upstream, hideCredentials=True)
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.get("/x", headers={"apikey": "alice-key", "x-other": "kept"})
        assert r.status_code == 200 and "apikey" not in r.json()["headers"]
        assert r.json()["headers"]["x-other"] == "kept"
        r = await http.get("/x?page=2&apikey=bob-key&sort=asc")
        assert r.status_code == 200 and r.json()["query"] == "page=2&sort=asc"
    for conf in ({"header": ""}, {"query": ""}, {"hideCredentials": "maybe"}, {"keyName": "x"}):
        with pytest.raises(MezzoError, match="plugin key-auth"):
            await _key_setup(gateway, upstream, **conf)


async def test_key_auth_non_ascii_key_is_not_a_500(gateway: GatewayHandle, upstream: EchoServer) -> None:
    await gateway.apply(upstream_doc("up", upstream), route_doc("r", ["/*"], plugins={"key-auth": {}}),
                        consumer_doc("zoe", {"key-auth": {"key": "clé-de-zoé"}}))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.get("/x", params={"apikey": "clé-de-zoé"})
        assert r.status_code == 200 and r.json()["headers"]["x-consumer-username"] == "zoe"
        r = await http.get("/x", headers={"apikey": "clé-de-zoé".encode()})  # the header carries UTF-8 bytes
        assert r.status_code == 200 and r.json()["headers"]["x-consumer-username"] == "zoe"
        assert (await http.get("/x", headers={"apikey": b"cl\xe9"})).status_code == 401  # not UTF-8: no key


async def test_basic_auth_non_ascii_credentials_are_a_401(gateway: GatewayHandle, upstream: EchoServer) -> None:
    await _basic_setup(gateway, upstream)
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.get("/x", headers={"authorization": "Basic caf\u00e9".encode("latin-1")})
        assert _refused(r, BASIC_CHALLENGE, "Invalid authorization in request")
