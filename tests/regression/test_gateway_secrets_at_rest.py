"""Gateway secrets at rest: consumer credentials and certificate keys are stored sealed.

A Consumer's key-auth key, basic-auth password, jwt-auth secret and hmac-auth secret key, and a
Certificate's private key, were stored as given and shown by ``get``. They are now AES-256-GCM
ciphertexts bound to kind/namespace/name/field, opened only by the gateway's data plane.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import ssl
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.utils import formatdate
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from structlog.testing import capture_logs

from integration.gateway import conftest as gateway_fixtures
from integration.gateway.conftest import (
    EchoServer,
    GatewayHandle,
    consumer_doc,
    route_doc,
    upstream_doc,
)
from integration.gateway.test_core_tls import certificate, self_signed
from mezzo.config.secrets import PREFIX, Keyring
from mezzo.gateway.model import CONSUMER_KIND
from mezzo.gateway.plugins.hmac_auth import sign
from mezzo.gateway.runtime import Gateway
from mezzo.jsonutil import dumps, loads
from mezzo.resources.service import HISTORY, ResourceService, resource_key
from mezzo.sdk.errors import APIError
from mezzo.storage.kv import Put
from mezzo.testing.fixtures import start_node, wait_for

# the gateway tests' fixtures, by name: a node running the gateway (SQLite), echo upstreams
gateway = gateway_fixtures.gateway
upstreams = gateway_fixtures.upstreams
upstream = gateway_fixtures.upstream

KEY = "alice-api-key-0123456789"
PASSWORD = "alice-basic-password-0123"
JWT_SECRET = "alice-jwt-secret-0123456789-abcdefghijklmnop"
HMAC_SECRET = "alice-hmac-secret-0123456789"
SECRETS = (KEY, PASSWORD, JWT_SECRET, HMAC_SECRET)
CREDENTIALS = {"key-auth": {"key": KEY}, "basic-auth": {"username": "alice", "password": PASSWORD},
               "jwt-auth": {"key": "alice-jwt", "secret": JWT_SECRET},
               "hmac-auth": {"keyId": "alice-hmac", "secretKey": HMAC_SECRET}}
AUTH_ROUTES = [route_doc(f"r-{p}", [f"/{p}/*"], plugins={p: {}})
               for p in ("key-auth", "basic-auth", "jwt-auth", "hmac-auth")]


@contextlib.asynccontextmanager
async def _gateway_node(data_dir: Path, **settings: Any) -> AsyncIterator[GatewayHandle]:
    """The ``gateway`` fixture's node, with other settings (a store, keys)."""
    running = await start_node(data_dir, targets=["gateway", "api"], **settings)
    try:
        yield GatewayHandle(running, running.node.url("gateway") or "")
    finally:
        await running.node.stop()


@pytest.fixture
async def gateway_on(store_url: str, tmp_path: Path) -> AsyncIterator[GatewayHandle]:
    """A node running the gateway on the SQLite and on the PostgreSQL store."""
    async with _gateway_node(tmp_path / "data", store=store_url) as gw:
        yield gw


def _store(gw: GatewayHandle) -> Any:
    return gw.node.node.service(ResourceService).store


async def _raw(gw: GatewayHandle, kind: str, name: str, namespace: str = "default") -> bytes:
    kv = await _store(gw).get(resource_key(kind, namespace, name))
    assert kv is not None
    return bytes(kv.value)


async def _raw_history(gw: GatewayHandle, kind: str, name: str) -> list[bytes]:
    snapshot = await _store(gw).range(f"{HISTORY}{kind}/default/{name}/")
    return [bytes(kv.value) for kv in snapshot.items]


async def _put_raw(gw: GatewayHandle, name: str, spec: dict[str, Any]) -> None:
    """Write a Consumer into the store as another (or an older) node would have."""
    now = datetime.now(UTC).isoformat()
    doc = {"apiVersion": "mezzo.dev/v1", "kind": "Consumer",
           "metadata": {"name": name, "namespace": "default", "labels": {}, "annotations": {},
                        "uid": f"u-{name}", "generation": 1, "createdAt": now, "updatedAt": now,
                        "createdBy": "admin", "updatedBy": "admin"},
           "spec": spec}
    revision = (await _store(gw).txn([Put(resource_key("Consumer", "default", name), dumps(doc))])).revision
    runtime = gw.node.node.service(Gateway)
    await wait_for(lambda: runtime.snapshot.revision >= revision and runtime._rebuild is None)


def _basic(user: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def _all_authenticate(http: httpx.AsyncClient) -> None:
    assert (await http.get("/key-auth/x", headers={"apikey": KEY})).status_code == 200
    assert (await http.get("/key-auth/x", headers={"apikey": "wrong"})).status_code == 401
    assert (await http.get("/basic-auth/x", headers=_basic("alice", PASSWORD))).status_code == 200
    assert (await http.get("/basic-auth/x", headers=_basic("alice", "wrong"))).status_code == 401
    token = jwt.encode({"key": "alice-jwt", "exp": int(time.time()) + 60}, JWT_SECRET, algorithm="HS256")
    assert (await http.get("/jwt-auth/x", headers={"authorization": f"Bearer {token}"})).status_code == 200
    date = formatdate(time.time(), usegmt=True)
    signed = sign("alice-hmac", HMAC_SECRET, "GET", "/hmac-auth/x", {"date": date})
    r = await http.get("/hmac-auth/x", headers={"authorization": signed, "date": date})
    assert r.status_code == 200, r.text


def _secret_values(spec: dict[str, Any]) -> list[str]:
    creds = spec["credentials"]
    return [creds["key-auth"]["key"], creds["basic-auth"]["password"], creds["jwt-auth"]["secret"],
            creds["hmac-auth"]["secretKey"]]


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # a short numeric secret, on purpose
async def test_consumer_secrets_are_sealed_in_the_store_and_in_what_get_shows(
        gateway_on: GatewayHandle, upstream: EchoServer) -> None:
    gw = gateway_on
    await gw.apply(upstream_doc("up", upstream), *AUTH_ROUTES, consumer_doc("alice", CREDENTIALS))
    stored = [await _raw(gw, "Consumer", "alice"), *await _raw_history(gw, "Consumer", "alice")]
    for raw in stored:
        for secret in SECRETS:
            assert secret.encode() not in raw
    assert all(v.startswith(PREFIX) for v in _secret_values(loads(stored[0])["spec"]))
    assert loads(stored[0])["spec"]["credentials"]["jwt-auth"]["key"] == "alice-jwt"  # ids of jwt/hmac/basic stay

    async with gw.node.client() as client:
        shown = await client.resources.get("Consumer", "alice")
        listed = (await client.resources.list("Consumer"))[0]
        history = await client.resources.history("Consumer", "alice")
        events = client.resources.stream("Consumer", from_revision=1)
        watched = await anext(events)
        await events.aclose()
    for spec in (shown.spec, listed.spec, history[-1].spec, watched.resource.spec):
        assert all(v.startswith(PREFIX) for v in _secret_values(spec))
        assert not any(s in str(spec) for s in SECRETS)

    async with httpx.AsyncClient(base_url=gw.url) as http:
        await _all_authenticate(http)

    # a number (YAML's `secret: 3141592653589793238`) is sealed too, as its text, and still verifies
    numeric = consumer_doc("numbers", {"jwt-auth": {"key": "numbers", "secret": 3141592653589793238}})
    await gw.apply(numeric)
    raw = await _raw(gw, "Consumer", "numbers")
    assert b"3141592653589793238" not in raw
    async with gw.node.client() as client:
        (again,) = await client.resources.apply([{"apiVersion": "mezzo.dev/v1", **numeric}])
    assert again.action == "unchanged"
    token = jwt.encode({"key": "numbers"}, "3141592653589793238", algorithm="HS256")
    async with httpx.AsyncClient(base_url=gw.url) as http:
        assert (await http.get("/jwt-auth/x", headers={"authorization": f"Bearer {token}"})).status_code == 200


async def test_reapplying_the_same_secrets_or_what_get_shows_is_unchanged(
        gateway: GatewayHandle, upstream: EchoServer) -> None:
    await gateway.apply(upstream_doc("up", upstream), consumer_doc("alice", CREDENTIALS))
    before = await _raw(gateway, "Consumer", "alice")
    async with gateway.node.client() as client:
        (again,) = await client.resources.apply([{"apiVersion": "mezzo.dev/v1", **consumer_doc("alice", CREDENTIALS)}])
        assert again.action == "unchanged"
        shown = await client.resources.get("Consumer", "alice")
        doc = shown.model_dump(mode="json")  # what `mezzo get -o yaml` prints, back into apply
        (round_trip,) = await client.resources.apply([doc])
        assert round_trip.action == "unchanged"
        assert await _raw(gateway, "Consumer", "alice") == before

        # one changed secret: only its ciphertext changes, the diff shows no plaintext
        changed = {**CREDENTIALS, "basic-auth": {"username": "alice", "password": "a-new-password"}}
        (diff,) = await client.resources.diff([{"apiVersion": "mezzo.dev/v1", **consumer_doc("alice", changed)}])
        assert diff.action == "configured" and diff.diff is not None
        assert "a-new-password" not in diff.diff and PASSWORD not in diff.diff
        changed_lines = [line for line in diff.diff.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")]
        assert len(changed_lines) == 2 and all("password: mzenc:v1:" in line for line in changed_lines), diff.diff


async def test_rollback_to_an_older_version_opens_its_ciphertexts(gateway: GatewayHandle,
                                                                  upstream: EchoServer) -> None:
    await gateway.apply(upstream_doc("up", upstream), *AUTH_ROUTES, consumer_doc("alice", CREDENTIALS))
    await gateway.apply(consumer_doc("alice", {**CREDENTIALS, "key-auth": {"key": "second-key-0123456789"}}))
    async with gateway.node.client() as client:
        result = await client.resources.rollback("Consumer", "alice", to=1)
        assert result.action == "rolled-back"
        history = await client.resources.history("Consumer", "alice")
    assert all(KEY not in str(h.spec) and "second-key" not in str(h.spec) for h in history)
    runtime = gateway.runtime
    await wait_for(lambda: runtime.snapshot.revision >= result.revision and runtime._rebuild is None)
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        await _all_authenticate(http)
        assert (await http.get("/key-auth/x", headers={"apikey": "second-key-0123456789"})).status_code == 401


async def test_a_sealed_certificate_key_still_serves_tls(gateway: GatewayHandle, upstream: EchoServer) -> None:
    pem = self_signed("sealed.test")
    await gateway.apply(upstream_doc("up", upstream), route_doc("r", ["/*"]),
                        certificate("sealed", pem, "sealed.test"))
    raw = await _raw(gateway, "Certificate", "sealed")
    body = pem[1].split("-----")[2].strip()  # the key's base64 body
    assert body.splitlines()[0].encode() not in raw and loads(raw)["spec"]["key"].startswith(PREFIX)
    assert loads(raw)["spec"]["cert"] == pem[0]  # the certificate is public
    async with gateway.node.client() as client:
        shown = await client.resources.get("Certificate", "sealed")
        (again,) = await client.resources.apply([shown.model_dump(mode="json")])
    assert shown.spec["key"].startswith(PREFIX) and again.action == "unchanged"

    await wait_for(lambda: gateway.runtime._certificates_changed is False)
    ctx = ssl.create_default_context(cadata=pem[0])
    port = int(gateway.node.node.url("gateway-tls").rsplit(":", 1)[1])  # type: ignore[union-attr]
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="sealed.test")
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        cn = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        assert cn == "sealed.test"
        writer.write(b"GET /tls HTTP/1.1\r\nHost: sealed.test\r\nConnection: close\r\n\r\n")
        answer = await reader.read()
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


async def test_a_consumer_sealed_with_another_key_is_taken_out_of_service(
        gateway: GatewayHandle, upstream: EchoServer) -> None:
    """A store written by a node with other keys: the consumer cannot be opened, so none of its
    credentials lets anyone in, and the log says which resource and why (never a value)."""
    await gateway.apply(upstream_doc("up", upstream), *AUTH_ROUTES, consumer_doc("alice", CREDENTIALS))
    other = Keyring([os.urandom(32)])
    where = CONSUMER_KIND.where("default", "alice", ("credentials", "key-auth", "key"))
    spec = {"credentials": {"key-auth": {"key": other.encrypt(KEY, where)}}, "groups": []}
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        assert (await http.get("/key-auth/x", headers={"apikey": KEY})).status_code == 200
        with capture_logs() as logs:
            await _put_raw(gateway, "alice", spec)
        assert (await http.get("/key-auth/x", headers={"apikey": KEY})).status_code == 401
        assert (await http.get("/key-auth/x", headers={"apikey": spec["credentials"]["key-auth"]["key"]})).status_code == 401
    (entry,) = [e for e in logs if "taken out of service" in e["event"]]
    assert entry["resource"] == "Consumer/default/alice" and entry["log_level"] == "error"
    assert f"key {other.active}, which is not configured" in entry["reason"]
    assert not any(KEY in str(e) for e in logs)


async def test_a_consumer_stored_in_clear_works_and_is_sealed_on_its_next_write(
        gateway: GatewayHandle, upstream: EchoServer) -> None:
    await gateway.apply(upstream_doc("up", upstream), *AUTH_ROUTES)
    await _put_raw(gateway, "alice", {"credentials": CREDENTIALS, "groups": []})  # an older Mezzo's store
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        await _all_authenticate(http)
        async with gateway.node.client() as client:
            (result,) = await client.resources.apply([{"apiVersion": "mezzo.dev/v1", **consumer_doc("alice", CREDENTIALS)}])
        assert result.action == "configured"  # the same values, now sealed
        raw = await _raw(gateway, "Consumer", "alice")
        assert not any(s.encode() in raw for s in SECRETS)
        runtime = gateway.runtime
        await wait_for(lambda: runtime.snapshot.revision >= result.revision and runtime._rebuild is None)
        await _all_authenticate(http)


async def test_a_ciphertext_copied_to_another_consumer_does_not_decrypt(
        gateway: GatewayHandle, upstream: EchoServer) -> None:
    await gateway.apply(upstream_doc("up", upstream), *AUTH_ROUTES, consumer_doc("alice", CREDENTIALS))
    async with gateway.node.client() as client:
        sealed = (await client.resources.get("Consumer", "alice")).spec["credentials"]["key-auth"]["key"]
        with pytest.raises(APIError) as refused:
            await client.resources.apply([{"apiVersion": "mezzo.dev/v1",
                                           **consumer_doc("bob", {"key-auth": {"key": sealed}})}])
        moved = {**CREDENTIALS, "basic-auth": {"username": "alice", "password": sealed}}  # to another field
        with pytest.raises(APIError) as elsewhere:
            await client.resources.apply([{"apiVersion": "mezzo.dev/v1", **consumer_doc("alice", moved)}])
    for exc, field in ((refused, "spec.credentials.key-auth.key"), (elsewhere, "spec.credentials.basic-auth.password")):
        assert exc.value.status == 400
        assert [e["field"] for e in exc.value.errors] == [field]
        assert "does not decrypt" in exc.value.errors[0]["reason"] and KEY not in str(exc.value.problem)

    # copied in the store itself: bob is out of service, alice still gets in
    with capture_logs() as logs:
        await _put_raw(gateway, "bob", {"credentials": {"key-auth": {"key": sealed}}, "groups": []})
    assert [e["resource"] for e in logs if "taken out of service" in e["event"]] == ["Consumer/default/bob"]
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.get("/key-auth/x", headers={"apikey": KEY})
        assert r.status_code == 200 and r.json()["headers"]["x-consumer-username"] == "alice"


async def test_validation_errors_never_echo_a_secret(gateway: GatewayHandle) -> None:
    async with gateway.node.client() as client:
        junk = "-----BEGIN PRIVATE KEY-----\nTOPSECRETKEYMATERIAL0123456789\n-----END PRIVATE KEY-----\n"
        with pytest.raises(APIError) as bad_key:
            await client.resources.apply([{"apiVersion": "mezzo.dev/v1", **certificate(
                "c", (self_signed("c.test")[0], junk), "c.test")}])
        assert "TOPSECRETKEYMATERIAL" not in str(bad_key.value.problem)

        # a version stored under looser rules that no longer validates: the rollback says why, not what
        await gateway.apply(consumer_doc("carol", {"key-auth": {"key": "carol-key-0123456789"}}))
        now = datetime.now(UTC).isoformat()
        entry = {"generation": 1, "action": "created", "at": now, "by": "admin", "labels": {},
                 "spec": {"credentials": {"basic-auth": {"username": "carol"}, "key-auth": {"key": "oldsecret1"}},
                          "groups": []}}
        await _store(gateway).txn([Put(f"{HISTORY}Consumer/default/carol/0000000001", dumps(entry))])
        with pytest.raises(APIError) as old:
            await client.resources.rollback("Consumer", "carol", to=1)
    assert old.value.status == 400 and "no longer validates" in str(old.value.problem)
    assert "oldsecret1" not in str(old.value.problem), old.value.problem


async def test_after_a_key_rotation_applying_again_reseals_with_the_new_key(
        tmp_path: Path, upstream: EchoServer) -> None:
    """Resources sealed with the old key keep working after a rotation; applying them again moves
    them to the new key, after which the old one can be dropped (as docs/gateway.md says)."""
    old_key, new_key = (base64.b64encode(os.urandom(32)).decode() for _ in range(2))
    new_id = Keyring([base64.b64decode(new_key)]).active

    async def authenticates(gw: GatewayHandle) -> None:
        async with httpx.AsyncClient(base_url=gw.url) as http:
            async def ok() -> bool:
                return (await http.get("/key-auth/x", headers={"apikey": KEY})).status_code == 200
            await wait_for(ok, timeout=10)

    async with _gateway_node(tmp_path / "data", secret_keys=old_key) as gw:
        await gw.apply(upstream_doc("up", upstream), *AUTH_ROUTES, consumer_doc("alice", CREDENTIALS))
        await authenticates(gw)
    async with _gateway_node(tmp_path / "data", secret_keys=f"{new_key},{old_key}") as gw:
        await authenticates(gw)
        async with gw.node.client() as client:
            shown = await client.resources.get("Consumer", "alice")
            assert not any(v.startswith(f"{PREFIX}{new_id}:") for v in _secret_values(shown.spec))
            (result,) = await client.resources.apply([shown.model_dump(mode="json")])
            assert result.action == "configured"
            assert all(v.startswith(f"{PREFIX}{new_id}:") for v in _secret_values(loads(await _raw(gw, "Consumer", "alice"))["spec"]))
            (again,) = await client.resources.apply([{"apiVersion": "mezzo.dev/v1", **consumer_doc("alice", CREDENTIALS)}])
            assert again.action == "unchanged"
    async with _gateway_node(tmp_path / "data", secret_keys=new_key) as gw:
        await authenticates(gw)
