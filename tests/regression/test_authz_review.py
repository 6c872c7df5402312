"""Authorization review of the node's HTTP API, the DTM compat API and the Redis-protocol cache.

Each test states the guarantee it checks (role verb + namespace scope of the object touched,
revocation reaching long-lived connections) and fails on the code it was written against."""

from __future__ import annotations

import asyncio
import base64
import contextlib

import httpx
import redis.asyncio as aioredis
import redis.exceptions

from mezzo.testing.fixtures import RunningNode, wait_for

RESILIENCY = """\
apiVersion: mezzo.dev/v1
kind: Resiliency
metadata: {{name: {name}, namespace: {ns}}}
spec:
  policies: {{timeouts: {{general: 5s}}}}
  targets: {{upstreams: {{shop: {{timeout: general}}}}}}
"""


def http(node: RunningNode, token: str | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=node.url, headers={"authorization": f"Bearer {token or node.token}"},
                             timeout=10)


async def make_token(node: RunningNode, name: str, role: str, namespaces: list[str]) -> tuple[str, str]:
    """(id, token) of a new token, minted with the node's admin token."""
    async with http(node) as c:
        r = await c.post("/v1/tokens", json={"name": name, "role": role, "namespaces": namespaces})
    assert r.status_code == 201, r.text
    return str(r.json()["id"]), str(r.json()["token"])


async def revoke(node: RunningNode, token_id: str) -> None:
    async with http(node) as c:
        r = await c.delete(f"/v1/tokens/{token_id}")
    assert r.status_code == 200, r.text


async def prepared_tcc(node: RunningNode, namespace: str, gid: str) -> None:
    async with http(node) as c:
        r = await c.post("/v1/tx/transactions", json={"gid": gid, "mode": "tcc", "namespace": namespace,
                                                       "prepare": True})
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "prepared"


async def tx_status(node: RunningNode, gid: str) -> str:
    async with http(node) as c:
        r = await c.get(f"/v1/tx/transactions/{gid}")
    assert r.status_code == 200, r.text
    return str(r.json()["status"])


def resp(node: RunningNode, password: str) -> aioredis.Redis:
    port = int(node.node.url("resp").rsplit(":", 1)[1])
    return aioredis.Redis(host="127.0.0.1", port=port, password=password, single_connection_client=True)


# transactions: a gid is the id of an object in one namespace ------------------------------------------------

async def test_tx_scope_holds_for_the_gid_not_the_body(node: RunningNode) -> None:
    """The control: a token scoped to namespace a may not look at or submit b's transaction by gid."""
    await prepared_tcc(node, "b", "authz-control-b")
    _, token = await make_token(node, "dev-a", "developer", ["a"])
    async with http(node, token) as c:
        assert (await c.get("/v1/tx/transactions/authz-control-b")).status_code == 403
        assert (await c.post("/v1/tx/transactions/authz-control-b:submit")).status_code == 403
        assert (await c.post("/v1/tx/transactions/authz-control-b:abort")).status_code == 403
    assert await tx_status(node, "authz-control-b") == "prepared"


async def test_create_with_a_foreign_gid_cannot_submit_another_namespaces_transaction(node: RunningNode) -> None:
    """POST /v1/tx/transactions checks ``use`` on the body's namespace only; TxService.submit then finds
    the stored transaction by gid (any namespace) and commits it. A developer of namespace a thereby
    submits namespace b's prepared TCC (its confirm branches run) — what :submit refuses with 403."""
    await prepared_tcc(node, "b", "authz-tcc-b")
    _, token = await make_token(node, "dev-a", "developer", ["a"])
    async with http(node, token) as c:
        r = await c.post("/v1/tx/transactions", json={"gid": "authz-tcc-b", "mode": "tcc", "namespace": "a"})
    assert r.status_code in (403, 404, 409), f"{r.status_code}: {r.text}"
    assert await tx_status(node, "authz-tcc-b") == "prepared"


async def test_prepare_with_a_foreign_gid_does_not_answer_the_other_transaction(node: RunningNode) -> None:
    """A repeated prepare answers the stored transaction (``_prepare_once``): with another namespace's gid
    the caller gets that transaction's steps, payloads and namespace, which GET refuses it (403)."""
    await prepared_tcc(node, "b", "authz-leak-b")
    _, token = await make_token(node, "dev-a", "developer", ["a"])
    async with http(node, token) as c:
        r = await c.post("/v1/tx/transactions", json={"gid": "authz-leak-b", "mode": "tcc", "namespace": "a",
                                                       "prepare": True})
    assert r.status_code in (403, 404, 409), f"{r.status_code}: {r.text}"
    assert "b" != r.json().get("namespace"), r.text


async def test_dtm_submit_is_scoped_to_the_stored_transaction(node: RunningNode) -> None:
    """DTM's /submit takes the namespace from the new GlobalTx built from the body (always ``default``),
    not from the stored transaction: a DTM client whose token is scoped to ``default`` submits the
    prepared TCC of namespace b."""
    await prepared_tcc(node, "b", "authz-dtm-b")
    _, token = await make_token(node, "dtm-default", "developer", ["default"])
    auth = "Basic " + base64.b64encode(f"mezzo:{token}".encode()).decode()
    async with httpx.AsyncClient(base_url=node.url, headers={"authorization": auth}, timeout=10) as c:
        assert (await c.get("/api/dtmsvr/query", params={"gid": "authz-dtm-b"})).status_code == 403  # control
        r = await c.post("/api/dtmsvr/submit", json={"gid": "authz-dtm-b", "trans_type": "tcc"})
    assert r.status_code in (403, 404, 409), f"{r.status_code}: {r.text}"
    assert await tx_status(node, "authz-dtm-b") == "prepared"


async def test_dtm_basic_auth_checks_the_password(node: RunningNode) -> None:
    """Guarantee (holds): the basic-auth password is the token; a wrong one or none is 401."""
    _, token = await make_token(node, "dtm-user", "developer", ["*"])
    async with httpx.AsyncClient(base_url=node.url, timeout=10) as c:
        for userinfo in ("mezzo:wrong", f"{token}:", "mezzo:", f"mezzo:{token}x"):
            auth = "Basic " + base64.b64encode(userinfo.encode()).decode()
            r = await c.get("/api/dtmsvr/newGid", headers={"authorization": auth})
            assert r.status_code == 401, (userinfo, r.status_code)
        good = "Basic " + base64.b64encode(f"mezzo:{token}".encode()).decode()
        assert (await c.get("/api/dtmsvr/newGid", headers={"authorization": good})).status_code == 200


# the Redis-protocol cache -----------------------------------------------------------------------------------

async def test_resp_auth_refuses_what_the_http_cache_api_refuses(node: RunningNode) -> None:
    """The HTTP cache API requires ``use`` across every namespace (a token scoped to namespace a gets 403
    on /v1/cache/default/...). The Redis-protocol AUTH checks only that the role has ``use``
    (``CacheServer.login``: ``has_verb``), so the same token reads and writes every cache namespace
    (SELECT N included) and FLUSHALL empties all of them."""
    _, token = await make_token(node, "dev-a", "developer", ["a"])
    async with http(node) as c:
        assert (await c.put("/v1/cache/default/keys/owned", json={"value": "admin"})).status_code == 204
    async with http(node, token) as c:
        assert (await c.get("/v1/cache/default/keys/owned")).status_code == 403  # the HTTP API's answer
    scoped = resp(node, token)
    try:
        with contextlib.suppress(redis.exceptions.ResponseError, redis.exceptions.AuthenticationError):
            await scoped.flushall()
    finally:
        await scoped.aclose()
    async with http(node) as c:
        r = await c.get("/v1/cache/default/keys/owned")
    assert r.status_code == 200 and r.json()["value"] == "admin", "a namespace-scoped token flushed every cache"


async def test_resp_connection_stops_working_when_its_token_is_revoked(node: RunningNode) -> None:
    """AUTH is checked once per connection and never again: after ``DELETE /v1/tokens/{id}`` (which the HTTP
    API honours at once) an open RESP connection keeps reading and writing."""
    token_id, token = await make_token(node, "cache-app", "developer", ["*"])
    client = resp(node, token)
    try:
        assert await client.set("k", "v")
        await revoke(node, token_id)
        async with http(node, token) as c:
            assert (await c.get("/v1/whoami")).status_code == 401  # revoked for HTTP
        try:
            value = await client.get("k")
        except (redis.exceptions.ResponseError, redis.exceptions.AuthenticationError,
                redis.exceptions.ConnectionError):
            return
        raise AssertionError(f"a revoked token's RESP connection still reads: GET k -> {value!r}")
    finally:
        await client.aclose()


# server-sent event streams ----------------------------------------------------------------------------------

async def test_resource_watch_ends_when_its_token_is_revoked(node: RunningNode) -> None:
    """The watch stream checks the token when it opens only; once revoked, the holder keeps receiving
    every change of the kind (here: a resource created after the revocation)."""
    token_id, token = await make_token(node, "watcher", "viewer", ["default"])
    received: list[bytes] = []
    async with http(node, token) as c, c.stream("GET", "/v1/resources/Resiliency:watch",
                                                params={"namespace": "default"}) as r:
        assert r.status_code == 200

        async def read() -> None:
            async for chunk in r.aiter_bytes():
                received.append(chunk)

        reader = asyncio.create_task(read())
        try:
            await wait_for(lambda: b"watching" in b"".join(received), timeout=5)
            await revoke(node, token_id)
            async with http(node) as admin:
                doc = RESILIENCY.format(name="after-revoke", ns="default")
                applied = await admin.post("/v1/resources:apply", content=doc,
                                           headers={"content-type": "application/yaml"})
                assert applied.status_code == 200, applied.text
            await asyncio.sleep(1.0)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await reader
    assert b"after-revoke" not in b"".join(received), "a revoked token still receives resource changes"


# config: public namespaces and tenants ----------------------------------------------------------------------

async def test_public_namespace_secrets_stay_in_their_tenant(node: RunningNode) -> None:
    """An app's config is guarded by its tenant (``hub.tenant(app)``: ``default`` for an app that does not
    exist) and ``ConfigHub.layers`` puts the owner's release of a public namespace under any app asking
    for that name, even one with no namespace of its own. So a developer of tenant ``default`` asks an
    app that does not exist for tenant b's public namespace and gets b's secrets decrypted."""
    base = "/v1/config/apps/billing/envs/prod/clusters/default/namespaces/shared"
    async with http(node) as c:
        assert (await c.put(base, params={"tenant": "b"}, json={"public": True})).status_code == 201
        r = await c.put(base + "/items/db.password", params={"tenant": "b"}, json={"value": "s3cret", "secret": True})
        assert r.status_code == 204, r.text
        assert (await c.post(base + ":publish", json={})).status_code == 200
    _, token = await make_token(node, "dev-default", "developer", ["default"])
    async with http(node, token) as c:
        assert (await c.get(base + "/config")).status_code == 403  # control: b's own app is refused
        r = await c.get("/v1/config/apps/ghost/envs/prod/clusters/default/namespaces/shared/config")
    assert "s3cret" not in r.text, f"tenant b's secret leaked to a tenant-default token: {r.status_code} {r.text}"


async def test_create_with_a_foreign_gid_cannot_give_another_namespaces_message_its_steps(node: RunningNode) -> None:
    """The same hole for a prepared message without steps: ``_submit_once`` copies the request's steps into
    the stored transaction, so a developer of namespace a decides what namespace b's message publishes."""
    async with http(node) as c:
        r = await c.post("/v1/tx/transactions", json={"gid": "authz-msg-b", "mode": "msg", "namespace": "b",
                                                       "prepare": True})
        assert r.status_code == 201, r.text
    _, token = await make_token(node, "dev-a", "developer", ["a"])
    async with http(node, token) as c:
        await c.post("/v1/tx/transactions", json={"gid": "authz-msg-b", "mode": "msg", "namespace": "a",
                                                   "steps": [{"action": "topic://orders"}], "payloads": ["forged"]})
    async with http(node) as c:
        stored = (await c.get("/v1/tx/transactions/authz-msg-b")).json()
    assert stored["steps"] == [] and stored["status"] == "prepared", f"b's message was rewritten: {stored}"
