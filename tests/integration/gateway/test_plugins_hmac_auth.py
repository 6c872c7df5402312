"""hmac-auth: APISIX's signature scheme, clock skew on Date, nonce anti-replay (local and Redis), body digest."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from email.utils import formatdate

import httpx

from mezzo.gateway.plugins.hmac_auth import Nonces, sign

from .conftest import EchoServer, GatewayHandle, consumer_doc, route_doc, upstream_doc

SECRET = "my-secret-key"


def _date(offset: float = 0) -> str:
    return formatdate(time.time() + offset, usegmt=True)


async def _setup(gateway: GatewayHandle, upstream: EchoServer, **conf: object) -> None:
    await gateway.apply(
        upstream_doc("up", upstream),
        route_doc("r", ["/*"], plugins={"hmac-auth": conf, "proxy-rewrite": {"uri": "/rewritten"}}),
        consumer_doc("alice", {"hmac-auth": {"keyId": "alice", "secretKey": SECRET}}))


async def test_signature_as_apisix_computes_it(gateway: GatewayHandle, upstream: EchoServer) -> None:
    await _setup(gateway, upstream)
    date = _date()
    # by hand, as APISIX documents it: key id, then one line per signed header, each ending in \n
    signing = f"alice\nGET /orders?id=7&x=y\ndate: {date}\nx-custom: abc\n"
    signature = base64.b64encode(hmac.new(SECRET.encode(), signing.encode(), hashlib.sha256).digest()).decode()
    authorization = (f'Signature keyId="alice",algorithm="hmac-sha256",headers="@request-target date x-custom",'
                     f'signature="{signature}"')
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.get("/orders?id=7&x=y", headers={"date": date, "x-custom": "abc", "authorization": authorization})
        assert r.status_code == 200, r.text
        assert r.json()["headers"]["x-consumer-username"] == "alice"
        assert r.json()["path"] == "/rewritten"  # the client signed what it sent, not what goes upstream
        # any change to a signed part breaks it
        r = await http.get("/orders?id=8&x=y", headers={"date": date, "x-custom": "abc", "authorization": authorization})
        assert r.status_code == 401 and r.json()["detail"] == "Invalid signature"
        r = await http.get("/orders?id=7&x=y", headers={"date": date, "x-custom": "abd", "authorization": authorization})
        assert r.status_code == 401
        r = await http.get("/orders?id=7&x=y", headers={"date": date, "authorization": authorization})
        assert r.status_code == 401 and "x-custom" in r.json()["detail"]
        assert r.headers["www-authenticate"].startswith("Signature")


async def test_refusals(gateway: GatewayHandle, upstream: EchoServer) -> None:
    await _setup(gateway, upstream, allowedAlgorithms=["hmac-sha256", "hmac-sha512"], signedHeaders=["x-tenant"])
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        def get(authorization: str | None, **headers: str):  # type: ignore[no-untyped-def]
            if authorization is not None:
                headers["authorization"] = authorization
            return http.get("/x", headers=headers)

        date = _date()
        good = sign("alice", SECRET, "GET", "/x", {"date": date, "x-tenant": "t1"}, "hmac-sha512")
        r = await get(good, date=date, **{"x-tenant": "t1"})
        assert r.status_code == 200, r.text
        assert (await get(None)).status_code == 401
        assert (await get("Basic abc")).status_code == 401
        r = await get(sign("alice", SECRET, "GET", "/x", {"date": date, "x-tenant": "t1"}, "hmac-sha1"),
                      date=date, **{"x-tenant": "t1"})
        assert r.status_code == 401 and "algorithm" in r.json()["detail"]
        r = await get(sign("alice", SECRET, "GET", "/x", {"date": date}), date=date, **{"x-tenant": "t1"})
        assert r.status_code == 401 and "must be signed" in r.json()["detail"]
        r = await get(sign("bob", SECRET, "GET", "/x", {"date": date, "x-tenant": "t1"}), date=date,
                      **{"x-tenant": "t1"})
        assert r.status_code == 401 and r.json()["detail"] == "Invalid keyId"
        r = await get(sign("alice", "wrong", "GET", "/x", {"date": date, "x-tenant": "t1"}), date=date,
                      **{"x-tenant": "t1"})
        assert r.status_code == 401 and r.json()["detail"] == "Invalid signature"
        old = _date(-400)
        r = await get(sign("alice", SECRET, "GET", "/x", {"date": old, "x-tenant": "t1"}), date=old,
                      **{"x-tenant": "t1"})
        assert r.status_code == 401 and r.json()["detail"] == "Clock skew exceeded"
        r = await get(sign("alice", SECRET, "GET", "/x", {"x-tenant": "t1"}), **{"x-tenant": "t1"})
        assert r.status_code == 401 and "Date header missing" in r.json()["detail"]


async def test_nonce_stops_replays(gateway: GatewayHandle, upstream: EchoServer) -> None:
    await _setup(gateway, upstream, requireNonce=True)
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        date, nonce = _date(), uuid.uuid4().hex
        headers = {"date": date, "x-nonce": nonce}
        headers["authorization"] = sign("alice", SECRET, "GET", "/x", {"date": date, "x-nonce": nonce})
        assert (await http.get("/x", headers=headers)).status_code == 200
        r = await http.get("/x", headers=headers)  # the very same request again
        assert r.status_code == 401 and "Replayed" in r.json()["detail"]
        fresh = uuid.uuid4().hex
        unsigned = {"date": date, "x-nonce": fresh, "authorization": sign("alice", SECRET, "GET", "/x", {"date": date})}
        r = await http.get("/x", headers=unsigned)
        assert r.status_code == 401 and "must be signed" in r.json()["detail"]
        r = await http.get("/x", headers={"date": date, "authorization": sign("alice", SECRET, "GET", "/x",
                                                                              {"date": date})})
        assert r.status_code == 401 and "Missing nonce" in r.json()["detail"]
        signed = {"date": date, "x-nonce": fresh}
        signed["authorization"] = sign("alice", SECRET, "GET", "/x", {"date": date, "x-nonce": fresh})
        assert (await http.get("/x", headers=signed)).status_code == 200


async def test_nonces_shared_through_redis(gateway: GatewayHandle, upstream: EchoServer, redis_url: str,
                                           redis_prefix: str) -> None:
    conf = {"nonceStore": "redis", "redisUrl": redis_url, "redisPrefix": redis_prefix}
    await gateway.apply(
        upstream_doc("up", upstream),
        # two routes: two plugin instances, as on two gateway nodes, sharing what they saw through Redis
        route_doc("one", ["/one"], plugins={"hmac-auth": conf}),
        route_doc("two", ["/two"], plugins={"hmac-auth": {**conf, "clockSkew": 600}}),
        consumer_doc("alice", {"hmac-auth": {"keyId": "alice", "secretKey": SECRET}}))
    date, nonce = _date(), uuid.uuid4().hex
    signed = {"date": date, "x-nonce": nonce}
    authorization = sign("alice", SECRET, "GET", None, signed)  # the same headers pass on either route
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        assert (await http.get("/one", headers={**signed, "authorization": authorization})).status_code == 200
        r = await http.get("/two", headers={**signed, "authorization": authorization})
        assert r.status_code == 401 and "Replayed" in r.json()["detail"]


async def test_body_digest(gateway: GatewayHandle, upstream: EchoServer) -> None:
    await _setup(gateway, upstream, validateRequestBody=True)
    body = b'{"order": 1}'
    digest = "SHA-256=" + base64.b64encode(hashlib.sha256(body).digest()).decode()
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        date = _date()
        headers = {"date": date, "digest": digest}
        headers["authorization"] = sign("alice", SECRET, "POST", "/x", headers)
        assert (await http.post("/x", content=body, headers=headers)).status_code == 200
        r = await http.post("/x", content=b'{"order": 2}', headers=headers)
        assert r.status_code == 401 and r.json()["detail"] == "Invalid digest"


def test_local_nonce_store_is_bounded_and_never_forgets_unsafely() -> None:
    nonces = Nonces(limit=3)
    now = 1000.0
    for i in range(3):
        assert nonces.add(f"n{i}", dated=now + i, ttl=60, now=now + i)
    assert not nonces.add("n1", dated=now + 1, ttl=60, now=now + 3)  # a replay
    assert nonces.add("n3", dated=now + 3, ttl=60, now=now + 3)  # the oldest (n0) is forgotten early...
    assert len(nonces.seen) == 3
    assert not nonces.add("n0", dated=now, ttl=60, now=now + 4)  # ...so a request dated that early is refused
    assert nonces.add("n4", dated=now + 4, ttl=60, now=now + 4)
    assert nonces.add("n1", dated=now + 100, ttl=60, now=now + 100)  # the window is over: all expired
    assert len(nonces.seen) == 1
