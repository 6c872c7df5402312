"""jwt-auth: HS/RS/ES tokens of consumers, from header, query or cookie; exp/nbf with leeway; JWKS."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mezzo.sdk.errors import MezzoError

from .conftest import EchoServer, GatewayHandle, consumer_doc, route_doc, upstream_doc

SECRET = "alice-secret-that-is-long-enough-for-sha512-" + "s" * 40


def _pem_pair(kind: str) -> tuple[object, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048) if kind == "rsa" \
        else ec.generate_private_key(ec.SECP256R1() if kind == "p256" else ec.SECP384R1())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return key, public


async def test_hs256_consumer_token_from_header_query_and_cookie(gateway: GatewayHandle,
                                                                  upstream: EchoServer) -> None:
    await gateway.apply(
        upstream_doc("up", upstream),
        route_doc("r", ["/*"], plugins={"jwt-auth": {}}),
        consumer_doc("alice", {"jwt-auth": {"key": "alice-key", "secret": SECRET}}))
    token = jwt.encode({"key": "alice-key", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.get("/x")
        assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"
        assert "Missing JWT token" in r.json()["detail"]
        r = await http.get("/x", headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
        assert r.json()["headers"]["x-consumer-username"] == "alice"
        assert r.json()["headers"]["authorization"] == f"Bearer {token}"  # kept without hideCredentials
        assert (await http.get("/x", headers={"authorization": token})).status_code == 200  # bare token too
        assert (await http.get("/x", params={"jwt": token})).status_code == 200
        assert (await http.get("/x", headers={"cookie": f"a=1; jwt={token}"})).status_code == 200

        forged = jwt.encode({"key": "alice-key"}, "not-the-secret-" + "x" * 50, algorithm="HS256")
        r = await http.get("/x", headers={"authorization": f"Bearer {forged}"})
        assert r.status_code == 401 and "verify" in r.json()["detail"]
        stranger = jwt.encode({"key": "nobody"}, SECRET, algorithm="HS256")
        r = await http.get("/x", headers={"authorization": f"Bearer {stranger}"})
        assert r.status_code == 401 and "Invalid user key" in r.json()["detail"]
        keyless = jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256")
        r = await http.get("/x", headers={"authorization": f"Bearer {keyless}"})
        assert r.status_code == 401 and "Missing user key" in r.json()["detail"]
        r = await http.get("/x", headers={"authorization": "Bearer not.a.jwt"})
        assert r.status_code == 401 and r.json()["detail"] == "JWT token invalid"
        # the token cannot pick its own algorithm: the consumer's is HS256
        other_alg = jwt.encode({"key": "alice-key"}, SECRET, algorithm="HS512")
        r = await http.get("/x", headers={"authorization": f"Bearer {other_alg}"})
        assert r.status_code == 401 and "algorithm" in r.json()["detail"]
        unsigned = jwt.encode({"key": "alice-key"}, None, algorithm="none")
        assert (await http.get("/x", headers={"authorization": f"Bearer {unsigned}"})).status_code == 401


async def test_exp_and_nbf_with_leeway(gateway: GatewayHandle, upstream: EchoServer) -> None:
    await gateway.apply(
        upstream_doc("up", upstream),
        route_doc("strict", ["/strict"], plugins={"jwt-auth": {}}),
        route_doc("lenient", ["/lenient"], plugins={"jwt-auth": {"leeway": "120s"}}),
        consumer_doc("alice", {"jwt-auth": {"key": "k", "secret": SECRET}}))
    now = int(time.time())
    expired = jwt.encode({"key": "k", "exp": now - 60}, SECRET, algorithm="HS256")
    early = jwt.encode({"key": "k", "nbf": now + 60}, SECRET, algorithm="HS256")
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.get("/strict", headers={"authorization": f"Bearer {expired}"})
        assert r.status_code == 401 and r.json()["detail"] == "JWT token expired"
        r = await http.get("/strict", headers={"authorization": f"Bearer {early}"})
        assert r.status_code == 401 and r.json()["detail"] == "JWT token not valid yet"
        assert (await http.get("/lenient", headers={"authorization": f"Bearer {expired}"})).status_code == 200
        assert (await http.get("/lenient", headers={"authorization": f"Bearer {early}"})).status_code == 200


@pytest.mark.parametrize(("kind", "algorithm"), [("rsa", "RS256"), ("rsa", "RS512"), ("p256", "ES256"),
                                                 ("p384", "ES384")])
async def test_asymmetric_consumer_keys(gateway: GatewayHandle, upstream: EchoServer, kind: str,
                                        algorithm: str) -> None:
    private, public = _pem_pair(kind)
    await gateway.apply(
        upstream_doc("up", upstream),
        route_doc("r", ["/*"], plugins={"jwt-auth": {}}),
        consumer_doc("bob", {"jwt-auth": {"key": "bob-key", "publicKey": public, "algorithm": algorithm}}))
    token = jwt.encode({"key": "bob-key"}, private, algorithm=algorithm)
    other, _ = _pem_pair(kind)
    forged = jwt.encode({"key": "bob-key"}, other, algorithm=algorithm)
    # the public key used as an HMAC secret (the classic confusion attack) must not pass
    confused = _hs256_by_hand({"key": "bob-key"}, public.encode())
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.get("/x", headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 200 and r.json()["headers"]["x-consumer-username"] == "bob"
        assert (await http.get("/x", headers={"authorization": f"Bearer {forged}"})).status_code == 401
        assert (await http.get("/x", headers={"authorization": f"Bearer {confused}"})).status_code == 401


async def test_base64_secret_and_hidden_credentials(gateway: GatewayHandle, upstream: EchoServer) -> None:
    secret = b"\x00\x01binary-secret\xff" * 4
    await gateway.apply(
        upstream_doc("up", upstream),
        route_doc("r", ["/*"], plugins={"jwt-auth": {"hideCredentials": True}}),
        consumer_doc("carol", {"jwt-auth": {"key": "c", "secret": base64.b64encode(secret).decode(),
                                            "base64Secret": True, "algorithm": "HS384"}}))
    token = jwt.encode({"key": "c"}, secret, algorithm="HS384")
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.get("/x", headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 200 and "authorization" not in r.json()["headers"]
        r = await http.get("/x", params={"jwt": token, "q": "1"})
        assert r.status_code == 200 and r.json()["query"] == "q=1"
        r = await http.get("/x", headers={"cookie": f"jwt={token}; theme=dark"})
        assert r.status_code == 200 and r.json()["headers"]["cookie"] == "theme=dark"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hs256_by_hand(claims: dict[str, object], secret: bytes) -> str:
    """An HS256 token PyJWT refuses to make (a PEM public key as the secret)."""
    signing = _b64url(b'{"alg":"HS256","typ":"JWT"}') + "." + _b64url(json.dumps(claims).encode())
    return signing + "." + _b64url(hmac.new(secret, signing.encode(), hashlib.sha256).digest())


def _jwk(private: object, kid: str) -> dict[str, object]:
    public = private.public_key()  # type: ignore[attr-defined]
    algorithm = jwt.algorithms.RSAAlgorithm if isinstance(public, rsa.RSAPublicKey) else jwt.algorithms.ECAlgorithm
    data = json.loads(algorithm.to_jwk(public))
    return {**data, "kid": kid, "use": "sig"}


async def test_jwks_verifies_and_refreshes_on_unknown_kid(gateway: GatewayHandle, upstreams) -> None:
    app, idp = await upstreams(2)
    first, _ = _pem_pair("rsa")
    second, _ = _pem_pair("p256")
    idp.canned["/jwks"] = (200, {"content-type": "application/json"}, json.dumps({"keys": [_jwk(first, "k1")]}).encode())
    jwks = {"jwksUri": f"{idp.url}/jwks", "jwksRefreshInterval": 0}
    await gateway.apply(
        upstream_doc("up", app),
        route_doc("r", ["/*"], plugins={"jwt-auth": jwks}),
        route_doc("aud", ["/aud/*"], plugins={"jwt-auth": {**jwks, "audience": ["shop"], "issuer": "https://idp"}}),
        consumer_doc("dave", {"jwt-auth": {"key": "dave"}}))
    token = jwt.encode({"sub": "u1", "key": "dave"}, first, algorithm="RS256", headers={"kid": "k1"})
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.get("/x", headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
        assert r.json()["headers"]["x-consumer-username"] == "dave"  # the key claim names a consumer
        assert (await http.get("/x", headers={"authorization": f"Bearer {token}"})).status_code == 200
        assert idp.hits["/jwks"] == 1  # cached

        rotated = jwt.encode({"sub": "u1"}, second, algorithm="ES256", headers={"kid": "k2"})
        r = await http.get("/x", headers={"authorization": f"Bearer {rotated}"})
        assert r.status_code == 401 and "unknown key" in r.json()["detail"]
        assert idp.hits["/jwks"] == 2  # an unknown kid refetched once
        idp.canned["/jwks"] = (200, {}, json.dumps({"keys": [_jwk(first, "k1"), _jwk(second, "k2")]}).encode())
        r = await http.get("/x", headers={"authorization": f"Bearer {rotated}"})
        assert r.status_code == 200 and "x-consumer-username" not in r.json()["headers"]

        # a kid naming an RSA key cannot be used with an EC algorithm, nor HS with any JWK
        mixed = jwt.encode({"sub": "u1"}, second, algorithm="ES256", headers={"kid": "k1"})
        assert (await http.get("/x", headers={"authorization": f"Bearer {mixed}"})).status_code == 401
        hs = jwt.encode({"sub": "u1"}, SECRET, algorithm="HS256", headers={"kid": "k1"})
        r = await http.get("/x", headers={"authorization": f"Bearer {hs}"})
        assert r.status_code == 401 and "not accepted" in r.json()["detail"]

        good = jwt.encode({"aud": "shop", "iss": "https://idp"}, first, algorithm="RS256", headers={"kid": "k1"})
        wrong_aud = jwt.encode({"aud": "other", "iss": "https://idp"}, first, algorithm="RS256", headers={"kid": "k1"})
        assert (await http.get("/aud/x", headers={"authorization": f"Bearer {good}"})).status_code == 200
        assert (await http.get("/aud/x", headers={"authorization": f"Bearer {wrong_aud}"})).status_code == 401


async def test_jwks_refetches_are_bounded(gateway: GatewayHandle, upstreams) -> None:
    app, idp = await upstreams(2)
    key, _ = _pem_pair("rsa")
    idp.canned["/jwks"] = (200, {}, json.dumps({"keys": [_jwk(key, "k1")]}).encode())
    await gateway.apply(upstream_doc("up", app),
                        route_doc("r", ["/*"], plugins={"jwt-auth": {"jwksUri": f"{idp.url}/jwks",
                                                                     "jwksRefreshInterval": "1h"}}))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        for i in range(5):  # random kids must not make the gateway hammer the identity provider
            token = jwt.encode({"sub": "u"}, key, algorithm="RS256", headers={"kid": f"random-{i}"})
            assert (await http.get("/x", headers={"authorization": f"Bearer {token}"})).status_code == 401
        assert idp.hits["/jwks"] == 1
        token = jwt.encode({"sub": "u"}, key, algorithm="RS256", headers={"kid": "k1"})
        assert (await http.get("/x", headers={"authorization": f"Bearer {token}"})).status_code == 200


async def test_jwks_unreachable_is_401(gateway: GatewayHandle, upstream: EchoServer) -> None:
    await gateway.apply(upstream_doc("up", upstream),
                        route_doc("r", ["/*"], plugins={"jwt-auth": {"jwksUri": "http://127.0.0.1:1/jwks"}}))
    key, _ = _pem_pair("rsa")
    token = jwt.encode({"sub": "u"}, key, algorithm="RS256", headers={"kid": "k1"})
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        assert (await http.get("/x", headers={"authorization": f"Bearer {token}"})).status_code == 401


async def test_invalid_config_is_refused(gateway: GatewayHandle, upstream: EchoServer) -> None:
    with pytest.raises(MezzoError):
        await gateway.apply(upstream_doc("up", upstream),
                            route_doc("r", ["/*"], plugins={"jwt-auth": {"jwksUri": "ftp://idp/jwks"}}))
    with pytest.raises(MezzoError):
        await gateway.apply(upstream_doc("up", upstream),
                            route_doc("r", ["/*"], plugins={"jwt-auth": {"algorithms": ["none"]}}))
