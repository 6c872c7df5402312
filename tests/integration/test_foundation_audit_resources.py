"""Audit of issue 2 (foundation): declarative resources and the API basics against an in-process node.
Watch after compaction (410 before a stream, an error event in one, the SDK's and the informer's
re-list), all-or-nothing under scopes, the audit trail, hashed tokens, problem documents."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import httpx
import orjson
import pytest

from mezzo.resources.informer import Informer
from mezzo.resources.model import Resource
from mezzo.resources.service import ResourceService
from mezzo.sdk.errors import APIError, Forbidden, NotFound
from mezzo.storage.kv import KVStore
from mezzo.testing.fixtures import RunningNode, wait_for

DOC = """\
apiVersion: mezzo.dev/v1
kind: Resiliency
metadata: {{name: {name}, namespace: {ns}}}
spec:
  policies: {{timeouts: {{general: {timeout}}}}}
"""


def doc(name: str, ns: str = "default", timeout: str = "5s") -> str:
    return DOC.format(name=name, ns=ns, timeout=timeout)


def http(node: RunningNode, token: str | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=node.url, headers={"Authorization": f"Bearer {token or node.token}"},
                             timeout=30)


async def compact_everything(node: RunningNode) -> int:
    """Move the store's revision on with writes no resource watch sees, then forget all history."""
    async with node.client() as admin:
        await admin.tokens.create("revision-mover", "viewer")
    store = node.node.service(KVStore)
    current, _ = await store.revision()
    await store.compact(current)
    return current


# watch and compaction -----------------------------------------------------------------------------


async def test_watch_from_a_compacted_revision_is_410_with_the_revisions(node: RunningNode) -> None:
    async with node.client() as client:
        await client.resources.apply(doc("early"))
        await client.resources.apply(doc("early", timeout="6s"))
    compacted = await compact_everything(node)
    async with http(node) as c:
        for request in ({"params": {"fromRevision": 1}}, {"headers": {"Last-Event-ID": "1.0"}}):
            response = await c.get("/v1/resources/resiliency:watch", **request)  # type: ignore[arg-type]
            assert response.status_code == 410, request
            assert response.headers["content-type"] == "application/problem+json"
            problem = response.json()
            assert problem["type"] == "https://mezzo.dev/problems/compacted"
            assert (problem["compactRevision"], problem["currentRevision"]) == (compacted, compacted)
            assert "re-read the state" in problem["detail"]


async def test_a_running_watch_overtaken_by_compaction_ends_with_a_410_event(node: RunningNode) -> None:
    async with http(node) as c:
        start = int((await c.get("/v1/resources/resiliency")).json()["revision"]) + 1
        async with c.stream("GET", "/v1/resources/resiliency:watch", params={"fromRevision": start}) as stream:
            assert stream.status_code == 200
            lines = stream.aiter_lines()
            assert await anext(lines) == ": watching"
            await compact_everything(node)  # the watch has not read past `start` yet
            assert (await c.post("/v1/resources:apply", content=doc("late"),
                                 headers={"Content-Type": "application/yaml"})).status_code == 200
            rest = [line async for line in lines]  # the stream ends by itself
    assert "event: error" in rest
    problem = orjson.loads(next(line for line in rest if line.startswith("data: "))[6:])
    assert (problem["status"], problem["type"]) == (410, "https://mezzo.dev/problems/compacted")
    assert problem["compactRevision"] >= start


async def test_sdk_watch_relists_after_compaction_and_reports_what_vanished(node: RunningNode) -> None:
    async with node.client() as setup:
        await setup.resources.apply(doc("gone") + "---\n" + doc("kept"))
    async with node.client() as client:
        request = client.request
        listed = 0

        async def request_then_race(method: str, path: str, **kwargs: Any) -> Any:
            """Between the watch's first list and its stream, the node deletes one resource and
            compacts past the listed revision: the stream must answer 410, and the SDK re-list."""
            nonlocal listed
            answer = await request(method, path, **kwargs)
            if method == "GET" and path == "/v1/resources/Resiliency":
                listed += 1
                if listed == 1:
                    async with node.client() as other:
                        await other.resources.delete("Resiliency", "gone")
                    await compact_everything(node)
            return answer

        client.request = request_then_race  # type: ignore[method-assign]
        seen: list[tuple[str, str]] = []
        watch = client.resources.watch("Resiliency")
        async for event in watch:
            seen.append((event.type, event.resource.metadata.name))
            if len(seen) == 3:
                break
        await watch.aclose()  # type: ignore[attr-defined]
    assert sorted(seen[:2]) == [("ADDED", "gone"), ("ADDED", "kept")]
    assert seen[2] == ("DELETED", "gone")
    assert listed == 2  # the second list is the recovery


async def test_informer_relists_after_compaction_even_when_the_first_relist_fails(node: RunningNode) -> None:
    """A store error while re-listing after compaction escaped the informer's loop: the informer
    stopped for good, and the module behind it never saw another change (until a restart)."""
    service = node.node.service(ResourceService)
    async with node.client() as client:
        await client.resources.apply(doc("gone") + "---\n" + doc("kept"))
    seen: list[tuple[str, str]] = []
    informer = Informer(service, "Resiliency", lambda event, res: seen.append((event, res.metadata.name)))
    revision = await informer._relist()  # what start() does, split so that the race is certain
    async with node.client() as client:
        await client.resources.delete("Resiliency", "gone")
    await compact_everything(node)

    real_list, failures = service.list, []

    async def flaky_list(*args: Any, **kwargs: Any) -> tuple[list[Resource], int]:
        if not failures:
            failures.append(1)
            raise ConnectionResetError("store connection lost")
        return await real_list(*args, **kwargs)

    service.list = flaky_list  # type: ignore[method-assign]
    informer._task = asyncio.create_task(informer._follow(revision + 1))
    try:
        async with node.client() as client:
            await client.resources.apply(doc("late"))
        await wait_for(lambda: ("ADDED", "late") in seen)
        assert ("DELETED", "gone") in seen and set(informer.items) == {
            "Resiliency/default/kept", "Resiliency/default/late"}
        assert failures == [1]
    finally:
        service.list = real_list  # type: ignore[method-assign]
        await informer.stop()


# resources -----------------------------------------------------------------------------------------


async def test_a_set_with_a_document_outside_the_tokens_scope_writes_nothing(node: RunningNode) -> None:
    async with node.client() as admin:
        scoped = await admin.tokens.create("team-a-deployer", "operator", ["team-a"])
    async with node.client(scoped["token"]) as client:
        with pytest.raises(Forbidden) as info:
            await client.resources.apply(doc("mine", ns="team-a") + "---\n" + doc("theirs", ns="team-b"))
        assert "team-b" in (info.value.detail or "")
        assert await client.resources.list("Resiliency", "team-a") == []  # the allowed one was not applied


async def test_every_change_is_audited_with_who_when_and_what(node: RunningNode) -> None:
    async with node.client() as admin:
        deployer = await admin.tokens.create("deployer", "operator")
    async with node.client(deployer["token"]) as client:
        created = (await client.resources.apply(doc("shop")))[0]
        configured = (await client.resources.apply(doc("shop", timeout="9s")))[0]
        assert (await client.resources.apply(doc("shop", timeout="9s")))[0].action == "unchanged"
        rolled = await client.resources.rollback("Resiliency", "shop", to=1)
        deleted = await client.resources.delete("Resiliency", "shop")
    revisions = [r.revision for r in (created, configured, rolled, deleted)]
    assert revisions == sorted(revisions) and len(set(revisions)) == 4  # each change its own revision
    async with node.client() as admin:
        records = (await admin.request("GET", "/v1/audit", params={"kind": "resiliencies", "name": "shop"}))["items"]
        history = await admin.resources.history("Resiliency", "shop")
    assert [(r["action"], r["user"], r["detail"]) for r in records] == [
        ("resource.create", "deployer", {"generation": 1}),
        ("resource.configure", "deployer", {"generation": 2}),
        ("resource.rollback", "deployer", {"generation": 3, "rolledBackTo": 1}),
        ("resource.delete", "deployer", {"generation": 4}),
    ]
    assert [r["at"] for r in records] == sorted(r["at"] for r in records)
    assert [h.revision for h in history] == revisions  # the history entry of each change is its revision


async def test_rollback_and_delete_not_found_details_read_as_sentences(node: RunningNode) -> None:
    """The 404 detail was the service's reason with " not found" appended:
    "Resiliency default/x has no history not found"."""
    async with node.client() as client:
        await client.resources.apply(doc("one"))
        details = []
        for call in (client.resources.rollback("Resiliency", "never"),
                     client.resources.rollback("Resiliency", "one"),
                     client.resources.rollback("Resiliency", "one", to=9),
                     client.resources.delete("Resiliency", "never")):
            with pytest.raises(NotFound) as info:
                await call
            details.append(info.value.detail)
    assert details == [
        "Resiliency default/never has no history",
        "Resiliency default/one has no earlier version to roll back to",
        "Resiliency default/one has no version 9",
        "Resiliency default/never not found",
    ]


# auth ----------------------------------------------------------------------------------------------


async def test_tokens_are_stored_only_as_hashes(node: RunningNode) -> None:
    async with node.client() as admin:
        created = await admin.tokens.create("hashed", "developer", ["shop"], "1h")
    plaintext = created["token"]
    secret = plaintext.split("_", 2)[2]  # mzo_<id>_<secret>: the secret (URL-safe base64) may hold "_" itself
    stored = await node.node.service(KVStore).range("/")  # every key the node keeps, audit included
    assert stored.items and not any(secret.encode() in kv.key.encode() + kv.value for kv in stored.items)
    [record] = [orjson.loads(kv.value) for kv in stored.items if kv.key == f"/auth/tokens/{created['id']}"]
    assert record["hash"] == hashlib.sha256(plaintext.encode()).hexdigest()
    assert (record["role"], record["namespaces"]) == ("developer", ["shop"])


async def test_token_changes_are_audited_too(node: RunningNode) -> None:
    async with node.client() as admin:
        created = await admin.tokens.create("short-lived", "viewer", ["shop"])
        await admin.tokens.revoke(created["id"])
        records = (await admin.request("GET", "/v1/audit", params={"kind": "Token", "name": "short-lived"}))["items"]
    assert [(r["action"], r["user"], r["detail"]["id"]) for r in records] == [
        ("token.create", "admin", created["id"]), ("token.revoke", "admin", created["id"])]
    assert created["token"] not in str(records)


@pytest.mark.parametrize("namespaces", [[""], ["Team A"], ["a\x00b"], ["*", "UPPER"]])
async def test_token_scopes_must_be_namespace_names(node: RunningNode, namespaces: list[str]) -> None:
    """A token scoped to a namespace no resource can have was created: it could never be used, and
    nothing told its creator why (every other namespace the API takes is checked)."""
    async with http(node) as c:
        response = await c.post("/v1/tokens", json={"name": "odd", "role": "viewer", "namespaces": namespaces})
        assert response.status_code == 400, response.text
        assert response.headers["content-type"] == "application/problem+json"
        [error] = response.json()["errors"]
        assert error["field"].startswith("namespaces") and "namespace" in error["reason"]
        names = [t["name"] for t in (await c.get("/v1/tokens")).json()["items"]]
        assert "odd" not in names


async def test_unauthenticated_calls_to_every_foundation_route_are_401_problems(node: RunningNode) -> None:
    routes = [("GET", "/v1/kinds"), ("GET", "/v1/whoami"), ("GET", "/v1/audit"), ("GET", "/v1/tokens"),
              ("POST", "/v1/tokens"), ("DELETE", "/v1/tokens/x"), ("POST", "/v1/resources:apply"),
              ("POST", "/v1/resources:diff"), ("GET", "/v1/resources/resiliency"),
              ("GET", "/v1/resources/resiliency:watch"), ("GET", "/v1/resources/resiliency/x"),
              ("DELETE", "/v1/resources/resiliency/x"), ("GET", "/v1/resources/resiliency/x/history"),
              ("POST", "/v1/resources/resiliency/x:rollback")]
    async with httpx.AsyncClient(base_url=node.url) as anonymous:
        for method, path in routes:
            response = await anonymous.request(method, path)
            assert response.status_code == 401, (method, path)
            assert response.headers["content-type"] == "application/problem+json"


async def test_metric_families_are_all_mezzo_prefixed(node: RunningNode) -> None:
    async with node.client() as client:
        await client.resources.apply(doc("counted"))
        with pytest.raises(APIError):
            await client.resources.get("Resiliency", "missing")
    async with httpx.AsyncClient(base_url=node.url) as c:
        assert (await c.get("/v1/kinds")).status_code == 401
        text = (await c.get("/metrics")).text
    families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    assert {"mezzo_api_requests_total", "mezzo_resources_changes_total", "mezzo_auth_failures_total"} <= families
    assert all(name.startswith("mezzo_") for name in families), sorted(families)


async def test_dapr_api_token_header_authenticates_like_a_bearer_token(node: RunningNode) -> None:
    async with node.client() as admin:
        viewer = await admin.tokens.create("dapr-viewer", "viewer")
    async with httpx.AsyncClient(base_url=node.url) as c:
        who = await c.get("/v1/whoami", headers={"dapr-api-token": viewer["token"]})
        assert (who.status_code, who.json()["name"], who.json()["role"]) == (200, "dapr-viewer", "viewer")
        denied = await c.post("/v1/resources:apply", content=doc("x"),
                              headers={"dapr-api-token": viewer["token"], "Content-Type": "application/yaml"})
        assert denied.status_code == 403
        assert (await c.get("/v1/whoami", headers={"dapr-api-token": "mzo_bad_bad"})).status_code == 401
