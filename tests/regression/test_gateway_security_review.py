"""Security review of the gateway's auth and access plugins and of its data plane.

The tests named ``test_defect_*`` fail on the code reviewed: each shows a way past an auth or
access check, or a credential or identity reaching the upstream when it must not. The others
cover security guarantees the suite did not test yet (request smuggling, path traversal,
algorithm confusion); they pass and must keep passing.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from email.utils import formatdate
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from integration.gateway import conftest as gateway_fixtures
from integration.gateway.conftest import (
    EchoServer,
    GatewayHandle,
    consumer_doc,
    route_doc,
    upstream_doc,
)
from mezzo.gateway.plugins.hmac_auth import sign
from mezzo.sdk.errors import MezzoError
from mezzo.testing.fixtures import wait_for

# the gateway tests' fixtures, by name: a node running the gateway, echo upstreams
gateway = gateway_fixtures.gateway
upstreams = gateway_fixtures.upstreams
upstream = gateway_fixtures.upstream

SECRET = "alice-secret-that-is-long-enough-for-sha512-" + "s" * 40


def _in_namespace(doc: dict[str, Any], namespace: str) -> dict[str, Any]:
    return {**doc, "metadata": {**doc["metadata"], "namespace": namespace}}


def _date(offset: float = 0) -> str:
    return formatdate(time.time() + offset, usegmt=True)


async def _raw(url: str, data: bytes, wait: float = 5.0) -> bytes:
    """Send bytes to the gateway as they are; what it answers before closing or ``wait`` runs out."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    await writer.drain()
    out = b""
    try:
        while True:
            part = await asyncio.wait_for(reader.read(65536), wait)
            if not part:
                break
            out += part
    except TimeoutError:
        pass
    writer.close()
    return out


# --- consumers and credentials ---------------------------------------------------------------

async def test_defect_consumer_of_another_namespace_passes_a_name_acl(gateway: GatewayHandle,
                                                                      upstream: EchoServer) -> None:
    """Credentials are indexed across namespaces, and consumer-restriction matches the bare name:
    whoever may create a Consumer in namespace ``team-b`` (a token scoped to it) names it ``alice``
    and gets through a ``default`` route that only lets ``default/alice`` in."""
    await gateway.apply(
        upstream_doc("up", upstream),
        route_doc("r", ["/*"], plugins={"key-auth": {}, "consumer-restriction": {"whitelist": ["alice"]}}),
        consumer_doc("alice", {"key-auth": {"key": "alice-key"}}),
        _in_namespace(consumer_doc("alice", {"key-auth": {"key": "team-b-key"}}), "team-b"))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        assert (await http.get("/x", headers={"apikey": "alice-key"})).status_code == 200
        r = await http.get("/x", headers={"apikey": "team-b-key"})
        assert r.status_code in (401, 403), f"team-b/alice reached default's upstream as {r.json()['headers']}"


async def test_defect_jwt_key_claimed_by_another_consumer_takes_over(gateway: GatewayHandle,
                                                                     upstream: EchoServer) -> None:
    """A jwt-auth ``key`` is public (it is in every token). A second consumer registering the same
    key (here in another namespace) silently replaces the first in the credential index: tokens it
    signs with its own secret are accepted, and alice's own tokens stop working."""
    await gateway.apply(
        upstream_doc("up", upstream),
        route_doc("r", ["/*"], plugins={"jwt-auth": {}}),
        consumer_doc("alice", {"jwt-auth": {"key": "alice", "secret": SECRET}}))
    await gateway.apply(_in_namespace(consumer_doc("mallory", {"jwt-auth": {"key": "alice",
                                                                           "secret": "mallory-" + "m" * 40}}),
                                      "team-b"))
    exp = int(time.time()) + 60
    good = jwt.encode({"key": "alice", "exp": exp}, SECRET, algorithm="HS256")
    forged = jwt.encode({"key": "alice", "exp": exp}, "mallory-" + "m" * 40, algorithm="HS256")
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.get("/x", headers={"authorization": f"Bearer {forged}"})
        assert r.status_code == 401, f"a token signed with mallory's secret passed: {r.json()['headers']}"
        r = await http.get("/x", headers={"authorization": f"Bearer {good}"})
        assert r.status_code == 200 and r.json()["headers"]["x-consumer-username"] == "alice", r.text


async def test_defect_basic_auth_credential_without_password(gateway: GatewayHandle,
                                                             upstream: EchoServer) -> None:
    """Consumer credentials are not validated; a basic-auth credential whose password is missing
    (forgotten, or misspelled ``passwd``) is compared against "" and ``alice:`` logs in."""
    await gateway.apply(upstream_doc("up", upstream), route_doc("r", ["/*"], plugins={"basic-auth": {}}))
    try:
        await gateway.apply(consumer_doc("alice", {"basic-auth": {"username": "alice", "passwd": "s3cret"}}))
    except MezzoError:
        return  # refused when applied: fine
    empty = "Basic " + base64.b64encode(b"alice:").decode()
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.get("/x", headers={"authorization": empty})
        assert r.status_code == 401, "an empty password authenticated alice"


async def test_defect_consumer_plugins_are_accepted_but_never_run(gateway: GatewayHandle,
                                                                  upstream: EchoServer) -> None:
    """``Consumer.spec.plugins`` is validated and stored (as APISIX's consumer plugins are), but the
    runtime never adds them to a chain: a per-consumer limit (or ip-restriction) silently does
    nothing. Either refuse it when applied or run it after authentication."""
    try:
        await gateway.apply(
            upstream_doc("up", upstream),
            route_doc("r", ["/*"], plugins={"key-auth": {}}),
            {"kind": "Consumer", "metadata": {"name": "alice"},
             "spec": {"credentials": {"key-auth": {"key": "alice-key"}},
                      "plugins": {"limit-count": {"count": 1, "window": "60s", "key": "consumer"}}}})
    except MezzoError:
        return  # refused: fine, nobody is misled
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        statuses = [(await http.get("/x", headers={"apikey": "alice-key"})).status_code for _ in range(3)]
    assert 429 in statuses, f"the consumer's limit-count (1 per minute) never applied: {statuses}"


# --- what reaches the upstream -----------------------------------------------------------------

def _rsa_jwk(kid: str) -> tuple[Any, dict[str, Any]]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    data = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    return private, {**data, "kid": kid, "use": "sig"}


async def test_defect_client_sets_x_consumer_username_on_a_jwks_route(gateway: GatewayHandle, upstreams) -> None:
    """With ``jwksUri`` a valid token whose key claim names no consumer is let through without one,
    and the client's own ``X-Consumer-Username`` goes upstream: the upstream, trusting the
    gateway's header on an authenticated route, takes the caller for ``admin``."""
    app, idp = await upstreams(2)
    private, jwk = _rsa_jwk("k1")
    idp.canned["/jwks"] = (200, {"content-type": "application/json"}, json.dumps({"keys": [jwk]}).encode())
    await gateway.apply(upstream_doc("up", app),
                        route_doc("r", ["/*"], plugins={"jwt-auth": {"jwksUri": f"{idp.url}/jwks"}}),
                        consumer_doc("admin", {"jwt-auth": {"key": "admin"}}))
    token = jwt.encode({"sub": "u1", "exp": int(time.time()) + 60}, private, algorithm="RS256",
                       headers={"kid": "k1"})
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.get("/x", headers={"authorization": f"Bearer {token}", "x-consumer-username": "admin"})
        assert r.status_code == 200, r.text
        assert r.json()["headers"].get("x-consumer-username") != "admin", "the client chose its consumer name"


async def test_defect_client_x_real_ip_and_forwarded_headers_reach_the_upstream(gateway: GatewayHandle,
                                                                                 upstream: EchoServer) -> None:
    """The docs say X-Real-IP, X-Forwarded-Proto and X-Forwarded-Host are set on the way up; the
    client's own copies are forwarded too, *before* the gateway's, so an upstream reading the first
    value (Starlette, Werkzeug, ``headers.get`` almost everywhere) sees the client's choice."""
    await gateway.apply(upstream_doc("up", upstream), route_doc("r", ["/*"]))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.get("/x", headers={"x-real-ip": "10.1.2.3", "x-forwarded-proto": "https",
                                          "x-forwarded-host": "admin.internal"})
    seen = r.json()["headers"]
    assert seen["x-real-ip"] == "127.0.0.1", f"upstream sees X-Real-IP {seen['x-real-ip']}"
    assert seen["x-forwarded-proto"] == "http", f"upstream sees X-Forwarded-Proto {seen['x-forwarded-proto']}"


async def test_defect_hidden_api_key_leaks_through_an_encoded_argument_name(gateway: GatewayHandle,
                                                                            upstream: EchoServer) -> None:
    """key-auth reads the decoded query (``api%6Bey`` is ``apikey``) but ``hideCredentials``
    strips only the literal ``apikey=``: the consumer's key goes upstream anyway (and into its
    access logs). jwt-auth strips the same way."""
    await gateway.apply(upstream_doc("up", upstream),
                        route_doc("r", ["/*"], plugins={"key-auth": {"hideCredentials": True}}),
                        consumer_doc("alice", {"key-auth": {"key": "alice-secret-key"}}))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.get("/x?a=1&apikey=alice-secret-key")
        assert r.status_code == 200 and "alice-secret-key" not in r.json()["query"]  # the plain case works
        r = await http.get("/x?a=1&api%6Bey=alice-secret-key")
        assert r.status_code == 200, r.text
        assert "alice-secret-key" not in r.json()["query"], f"key sent upstream: {r.json()['query']}"


# --- hmac-auth -----------------------------------------------------------------------------------

async def _hmac_setup(gateway: GatewayHandle, upstream: EchoServer, **conf: object) -> None:
    await gateway.apply(
        upstream_doc("up", upstream),
        route_doc("r", ["/*"], plugins={"hmac-auth": conf}),
        consumer_doc("alice", {"hmac-auth": {"keyId": "alice", "secretKey": "hmac-secret"}}))


async def test_defect_hmac_body_digest_not_signed_gives_no_integrity(gateway: GatewayHandle,
                                                                     upstream: EchoServer) -> None:
    """With ``validateRequestBody`` the body must match the ``Digest`` header, but nothing requires
    ``digest`` to be signed: whoever holds a signed request swaps the body and recomputes the
    digest, and the gateway forwards the new body as alice's."""
    await _hmac_setup(gateway, upstream, validateRequestBody=True)
    body = b'{"transfer": 10}'
    headers = {"date": _date(), "digest": "SHA-256=" + base64.b64encode(hashlib.sha256(body).digest()).decode()}
    headers["authorization"] = sign("alice", "hmac-secret", "POST", "/pay", {"date": headers["date"]})
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        assert (await http.post("/pay", content=body, headers=headers)).status_code in (200, 401)
        tampered = b'{"transfer": 10000}'
        headers["digest"] = "SHA-256=" + base64.b64encode(hashlib.sha256(tampered).digest()).decode()
        r = await http.post("/pay", content=tampered, headers=headers)
        assert r.status_code == 401, f"a tampered body went upstream as alice's: {r.json().get('body')}"


async def test_defect_hmac_nonce_replay_once_the_nonce_expires(gateway: GatewayHandle,
                                                               upstream: EchoServer) -> None:
    """``requireNonce`` remembers a nonce for twice the clock skew, but does not make ``date``
    signed: once the nonce is forgotten, the captured request is replayed with a fresh, unsigned
    Date and passes again."""
    await _hmac_setup(gateway, upstream, requireNonce=True, clockSkew=1)
    nonce = uuid.uuid4().hex
    headers = {"x-nonce": nonce}
    authorization = sign("alice", "hmac-secret", "POST", "/pay", headers)
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        first = await http.post("/pay", headers={**headers, "authorization": authorization, "date": _date()})
        if first.status_code == 401 and "date" in first.json()["detail"]:
            return  # a nonce without a signed Date is refused: fine
        assert first.status_code == 200, first.text
        again = await http.post("/pay", headers={**headers, "authorization": authorization, "date": _date()})
        assert again.status_code == 401  # the nonce is remembered...
        await asyncio.sleep(2.3)  # ...for 2 x clockSkew
        replay = await http.post("/pay", headers={**headers, "authorization": authorization, "date": _date()})
        assert replay.status_code == 401, "the same signed request was accepted a second time"


# --- consumer-side guarantees that hold (not covered before) ------------------------------------

async def test_jwt_algorithm_confusion_and_none_are_refused(gateway: GatewayHandle, upstream: EchoServer) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = private.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    await gateway.apply(upstream_doc("up", upstream), route_doc("r", ["/*"], plugins={"jwt-auth": {}}),
                        consumer_doc("rs", {"jwt-auth": {"key": "rs", "publicKey": public.decode(),
                                                         "algorithm": "RS256"}}))

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    claims = b64(json.dumps({"key": "rs"}).encode())
    signing = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + claims
    confused = signing + "." + b64(hmac.new(public, signing.encode(), hashlib.sha256).digest())
    none = b64(b'{"alg":"none","typ":"JWT"}') + "." + claims + "."
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        for token in (confused, none):
            assert (await http.get("/x", headers={"authorization": f"Bearer {token}"})).status_code == 401


async def test_consumer_restriction_runs_after_every_auth_plugin(gateway: GatewayHandle,
                                                                 upstream: EchoServer) -> None:
    """Every auth plugin sets the consumer before consumer-restriction and limit-count read it."""
    await gateway.apply(
        upstream_doc("up", upstream),
        route_doc("k", ["/k"], plugins={"key-auth": {}, "consumer-restriction": {"whitelist": ["alice"]},
                                        "limit-count": {"count": 1, "window": "60s", "key": "consumer"}}),
        route_doc("b", ["/b"], plugins={"basic-auth": {}, "consumer-restriction": {"whitelist": ["alice"]}}),
        consumer_doc("alice", {"key-auth": {"key": "ka"}, "basic-auth": {"username": "alice", "password": "pw"}}))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        assert (await http.get("/k", headers={"apikey": "ka"})).status_code == 200
        assert (await http.get("/k", headers={"apikey": "ka"})).status_code == 429
        assert (await http.get("/k")).status_code == 401  # no key: auth answers before the limit
        assert (await http.get("/b", auth=("alice", "pw"))).status_code == 200
        for header in ("Basic", "Basic !!!", "Basic " + base64.b64encode(b"alice").decode(), "Bearer x"):
            assert (await http.get("/b", headers={"authorization": header})).status_code == 401


# --- the data plane: smuggling and paths ---------------------------------------------------------

SMUGGLING = {
    "cl+te": b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"0\r\n\r\nGET /admin/secret HTTP/1.1\r\nHost: a\r\n\r\n",
    "two content-lengths": b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd",
    "obs-fold": b"GET /x HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n  apikey: ka\r\n\r\n",
    "space before colon": b"GET /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "te not ending in chunked": b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n"
                                b"0\r\n\r\n",
    "bare lf in header": b"GET /x HTTP/1.1\r\nHost: a\r\nX-A: 1\nX-B: 2\r\n\r\n",
    "two hosts": b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
}


@pytest.mark.parametrize("case", list(SMUGGLING))
async def test_ambiguous_framing_is_refused(gateway: GatewayHandle, upstream: EchoServer, case: str) -> None:
    await gateway.apply(upstream_doc("up", upstream), route_doc("r", ["/*"]),
                        route_doc("admin", ["/admin/*"], plugins={"key-auth": {}}))
    answer = await _raw(gateway.url, SMUGGLING[case])
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert upstream.hits["/admin/secret"] == 0


@pytest.mark.parametrize("path", ["/public/../admin/secret", "/public/%2e%2e/admin/secret",
                                  "/public/%2E%2E%2Fadmin/secret", "/public/..%2fadmin/secret",
                                  "/admin/./secret", "/public/%2e%2e/%2e%2e/admin/secret"])
async def test_dot_segments_route_and_forward_the_same_path(gateway: GatewayHandle, upstream: EchoServer,
                                                           path: str) -> None:
    await gateway.apply(upstream_doc("up", upstream), route_doc("pub", ["/public/*"]),
                        route_doc("admin", ["/admin/*"], plugins={"key-auth": {}}))
    answer = await _raw(gateway.url, b"GET %s HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" % path.encode())
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert not upstream.hits


async def test_absolute_form_target_does_not_skip_a_route(gateway: GatewayHandle, upstream: EchoServer) -> None:
    await gateway.apply(upstream_doc("up", upstream), route_doc("admin", ["/admin/*"], plugins={"key-auth": {}}),
                        route_doc("pub", ["/*"]))
    answer = await _raw(gateway.url, b"GET http://other.example/admin/secret HTTP/1.1\r\nHost: a\r\n"
                                     b"Connection: close\r\n\r\n")
    assert not answer.startswith(b"HTTP/1.1 200"), answer[:300]
    assert not upstream.hits


async def test_defect_double_slash_skips_the_protected_prefix(gateway: GatewayHandle,
                                                              upstream: EchoServer) -> None:
    """Routes match the path with its empty segments, so ``//admin/secret`` misses ``/admin/*``
    (key-auth) and takes the open ``/*`` route; it is forwarded as is, and an upstream that merges
    slashes (nginx's default, Spring, many routers) serves ``/admin/secret``. APISIX matches on
    nginx's ``$uri``, where the slashes are merged, so the same configuration is safe there."""
    await gateway.apply(upstream_doc("up", upstream), route_doc("admin", ["/admin/*"], plugins={"key-auth": {}}),
                        route_doc("pub", ["/*"]))
    answer = await _raw(gateway.url, b"GET //admin/secret HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 401"), answer[:400]


async def test_a_stored_consumer_that_no_longer_validates_is_taken_out_of_service(
        gateway: GatewayHandle, upstream: EchoServer) -> None:
    """A consumer stored under looser rules (here: a basic-auth credential without a password, beside
    its key) fails validation when the gateway loads it: the gateway fails closed, so none of its
    credentials opens a route any more, rather than keeping the old one live or stopping."""
    from datetime import UTC, datetime

    from mezzo.jsonutil import dumps
    from mezzo.resources.service import ResourceService, resource_key
    from mezzo.storage.kv import Put

    await gateway.apply(upstream_doc("up", upstream), route_doc("r", ["/k/*"], plugins={"key-auth": {}}),
                        consumer_doc("legacy", {"key-auth": {"key": "legacy-key"}}))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        assert (await http.get("/k/x", headers={"apikey": "legacy-key"})).status_code == 200
        now = datetime.now(UTC).isoformat()
        doc = {"apiVersion": "mezzo.dev/v1", "kind": "Consumer",
               "metadata": {"name": "legacy", "namespace": "default", "labels": {}, "annotations": {},
                            "uid": "u-legacy", "generation": 2, "createdAt": now, "updatedAt": now,
                            "createdBy": "admin", "updatedBy": "admin"},
               "spec": {"credentials": {"key-auth": {"key": "legacy-key"}, "basic-auth": {"username": "legacy"}},
                        "groups": []}}
        store = gateway.node.node.service(ResourceService).store
        await store.txn([Put(resource_key("Consumer", "default", "legacy"), dumps(doc))])

        async def refused() -> bool:
            return (await http.get("/k/x", headers={"apikey": "legacy-key"})).status_code == 401

        await wait_for(refused, timeout=5)
