"""Audit of rights, the audit log and secrets against the issue: edit and publish are separate rights
for every operation, every operation is audited with before/after (secrets masked) and queryable
by time, gray keys marked secret are encrypted and masked like the main ones, and a watch opened
on an app before it exists never serves another tenant's app."""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import UTC, datetime
from typing import Any

import httpx

from conformance.config.test_access import _raw_store_holds
from mezzo.config.hub import ConfigHub
from mezzo.config.model import NsRef
from mezzo.testing.fixtures import RunningNode, wait_for

NS = "/v1/config/apps/shop/envs/default/clusters/default/namespaces"
APP = f"{NS}/application"
IMPORT = {"content": "c=3\n", "filename": "x.properties"}


async def call(client: httpx.AsyncClient, method: str, path: str, body: Any = None) -> int:
    return (await client.request(method, path, json=body)).status_code


async def test_edit_and_publish_rights_guard_every_operation(http: httpx.AsyncClient, login) -> None:  # type: ignore[no-untyped-def]
    for value in ("1", "2"):
        await http.put(f"{APP}/items/a", json={"value": value})
        assert (await http.post(f"{APP}:publish", json={})).status_code == 200
    await http.put(f"{APP}/permissions", json={"edit": ["alice"], "publish": ["bob"]})
    editing = [("PUT", f"{APP}/items/b", {"value": "1"}), ("DELETE", f"{APP}/items/b", None),
               ("POST", f"{APP}:import", IMPORT), ("POST", f"{APP}:discard", None),
               ("PUT", f"{APP}/gray", None), ("PUT", f"{APP}/gray/items/a", {"value": "g"}),
               ("DELETE", f"{APP}/gray/items/a", None)]
    publishing = [("PUT", f"{APP}/gray/rules", {"rules": [{"clientIds": ["c1"]}]}), ("POST", f"{APP}/gray:publish", None),
                  ("POST", f"{APP}/gray:promote", None), ("POST", f"{APP}:rollback", {"to": 1}),
                  ("DELETE", f"{APP}/gray", None), ("POST", f"{APP}:publish", {}), ("DELETE", APP, None)]
    alice, bob = await login("alice", "operator"), await login("bob", "operator")
    async with alice, bob:
        for method, path, body in publishing:  # refused first, so nothing has changed yet
            assert await call(alice, method, path, body) == 403, (method, path)
        for method, path, body in editing:
            assert await call(bob, method, path, body) == 403, (method, path)
        for method, path, body in editing:
            assert await call(alice, method, path, body) in (200, 201, 204), (method, path)
        await alice.put(f"{APP}/gray/items/a", json={"value": "g"})
        await alice.post(f"{APP}:discard")
        assert await call(bob, "PUT", f"{APP}/gray/rules", {"rules": [{"clientIds": ["c1"]}]}) == 200
        assert await call(bob, "POST", f"{APP}/gray:publish") == 200
        assert await call(bob, "POST", f"{APP}/gray:promote") == 200
        assert await call(bob, "POST", f"{APP}:rollback", {"to": 1}) == 200
        assert await call(alice, "PUT", f"{APP}/gray") == 201
        assert await call(bob, "DELETE", f"{APP}/gray") == 204
        await alice.put(f"{APP}/items/z", json={"value": "1"})
        assert await call(bob, "POST", f"{APP}:publish", {}) == 200
        assert await call(bob, "DELETE", APP) == 204


def detail(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record["detail"].items() if k not in ("app", "env", "cluster", "namespace")}


async def test_every_operation_is_audited_with_before_and_after(http: httpx.AsyncClient) -> None:
    await http.put(f"{APP}/items/a", json={"value": "1"})
    await http.put(f"{APP}/items/pw", json={"value": "hunter2", "secret": True})
    await http.post(f"{APP}:publish", json={"title": "one"})
    middle = datetime.now(UTC)
    await http.put(f"{APP}/items/a", json={"value": "2"})
    await http.put(f"{APP}/items/b", json={"value": "x"})
    await http.put(f"{APP}/items/pw", json={"value": "hunter3"})
    await http.post(f"{APP}:publish", json={"title": "two"})
    await http.delete(f"{APP}/items/b")
    await http.post(f"{APP}:import", json=IMPORT)
    await http.post(f"{APP}:discard")
    await http.post(f"{APP}:rollback", json={"to": 1})
    await http.put(f"{APP}/permissions", json={"publish": ["admin"]})
    await http.put(f"{APP}/gray")
    await http.put(f"{APP}/gray/items/a", json={"value": "g1"})
    await http.put(f"{APP}/gray/items/a", json={"value": "g2"})
    await http.put(f"{APP}/gray/items/pw", json={"value": "hunter4", "secret": True})
    await http.put(f"{APP}/gray/items/tmp", json={"value": "t"})
    await http.delete(f"{APP}/gray/items/tmp")
    await http.put(f"{APP}/gray/rules", json={"rules": [{"labels": {"canary": "true"}}]})
    await http.post(f"{APP}/gray:publish")
    await http.post(f"{APP}/gray:promote")
    await http.put(f"{APP}/gray")
    await http.put(f"{APP}/gray/items/a", json={"value": "g3"})
    await http.put(f"{APP}/gray/rules", json={"rules": [{"clientIds": ["c1"]}]})
    await http.post(f"{APP}/gray:publish")
    await http.delete(f"{APP}/gray")
    await http.delete(APP)

    records = (await http.get("/v1/config/audit", params={"app": "shop", "namespace": "application"})).json()["items"]
    assert "hunter" not in str(records)  # secrets are masked everywhere in the log
    assert all(r["user"] == "admin" and r["at"] for r in records)
    actions = [r["action"] for r in records]
    assert actions == [
        "config.namespace.create", "config.set", "config.set", "config.publish", "config.set", "config.set",
        "config.set", "config.publish", "config.unset", "config.import", "config.discard", "config.rollback",
        "config.permissions", "config.gray.create", "config.gray.set", "config.gray.set", "config.gray.set",
        "config.gray.set", "config.gray.unset", "config.gray.rules", "config.gray.publish", "config.promote",
        "config.gray.create", "config.gray.set", "config.gray.rules", "config.gray.publish", "config.gray.abandon",
        "config.namespace.delete"]
    by = {i: detail(r) for i, r in enumerate(records)}
    second = by[7]
    assert second["release"] == 2 and second["changes"]["added"] == ["b"]
    assert second["before"] == {"a": "1", "pw": "******"} and second["after"] == {"a": "2", "b": "x", "pw": "******"}
    assert by[8]["before"] == {"b": "x"}
    assert by[10]["before"]["c"] == "3" and by[10]["after"] == {"a": "2", "b": "x", "pw": "******"}
    assert by[11]["before"] == {"b": "x", "a": "2", "pw": "******"} and by[11]["after"] == {"a": "1", "pw": "******"}
    assert by[12]["before"]["publish"] == [] and by[12]["after"]["publish"] == ["admin"]
    assert (by[14]["before"], by[14]["after"]) == ({"a": None}, {"a": "g1"})
    assert (by[15]["before"], by[15]["after"]) == ({"a": "g1"}, {"a": "g2"})
    assert (by[16]["before"], by[16]["after"]) == ({"pw": None}, {"pw": "******"})
    assert by[18]["before"] == {"tmp": "t"}
    assert by[20]["after"] == {"a": "g2", "pw": "******"}
    assert by[21]["before"] == {"a": "1", "pw": "******"} and by[21]["after"] == {"a": "g2", "pw": "******"}
    abandoned = by[26]["before"]
    assert abandoned["items"] == {"a": "g3"} and abandoned["release"] == {"a": "g3"}
    assert abandoned["rules"] == [{"labels": {}, "clientIds": ["c1"], "ips": []}]
    assert by[27]["before"]["format"] == "properties"

    later = (await http.get("/v1/config/audit", params={"app": "shop", "since": middle.isoformat()})).json()["items"]
    assert [r["action"] for r in later] == actions[4:]
    earlier = (await http.get("/v1/config/audit", params={"app": "shop", "until": middle.isoformat()})).json()["items"]
    assert [r["action"] for r in earlier] == actions[:4]


async def test_gray_secrets_are_encrypted_and_shown_only_to_users(cfg: RunningNode, http: httpx.AsyncClient,
                                                                  login) -> None:  # type: ignore[no-untyped-def]
    await http.put(f"{APP}/items/db.password", json={"value": "main-pass", "secret": True})
    await http.post(f"{APP}:publish", json={})
    await http.put(f"{APP}/gray")
    r = await http.put(f"{APP}/gray/items/db.password", json={"value": "gray-pass", "secret": True})
    assert r.json()["items"]["db.password"]["value"] == "******"
    await http.put(f"{APP}/gray/rules", json={"rules": [{"labels": {"canary": "true"}}]})
    published = (await http.post(f"{APP}/gray:publish")).json()
    assert published["release"]["overrides"] == {"db.password": "******"}
    assert not await _raw_store_holds(cfg, b"gray-pass")  # not in the branch, the pointer or the audit log
    shown = (await http.get(f"{APP}/gray")).json()
    assert "gray-pass" not in str(shown)
    canary = {"label": "canary=true"}
    assert (await http.get(f"{APP}/config", params=canary)).json()["configurations"]["db.password"] == "gray-pass"
    async with await login("viewer", "viewer") as viewer, await login("svc", "developer") as svc:
        assert (await viewer.get(f"{APP}/config", params=canary)).json()["configurations"]["db.password"] == "******"
        assert (await svc.get(f"{APP}/config", params=canary)).json()["configurations"]["db.password"] == "gray-pass"
    await http.post(f"{APP}/gray:promote")
    assert not await _raw_store_holds(cfg, b"gray-pass")
    assert (await http.get(f"{APP}/config")).json()["configurations"]["db.password"] == "gray-pass"
    assert (await http.get(f"{APP}/releases/2")).json()["configurations"]["db.password"] == "******"


async def test_a_watch_opened_before_an_app_exists_gets_nothing_of_another_tenant(cfg: RunningNode,
                                                                                http: httpx.AsyncClient) -> None:
    """An app that does not exist yet counts as tenant ``default``: a developer of ``default`` could open
    a stream (or a long poll) on it, and when another tenant then created the app, the open stream pushed
    that tenant's configuration to them, secrets in clear."""
    async with cfg.client() as admin:
        token = (await admin.tokens.create("dev-default", "developer", ["default"]))["token"]
    payroll = "/v1/config/apps/payroll/envs/default/clusters/default/namespaces/application"
    poll_ids = json.dumps([{"namespaceName": "application", "notificationId": -1}])
    received: list[str] = []
    async with httpx.AsyncClient(base_url=cfg.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as dev:

        async def watch() -> None:
            async with dev.stream("GET", "/v1/config/stream", params={"app": "payroll", "namespace": "application"}) as r:
                received.append(f"status {r.status_code}")
                async for line in r.aiter_lines():
                    received.append(line)
                    if line.startswith("data:"):
                        return  # the first event tells: the new app's config, or the end of the watch

        stream = asyncio.create_task(watch())
        poll = asyncio.create_task(dev.get("/v1/config/notifications",
                                           params={"app": "payroll", "notifications": poll_ids}))
        await wait_for(lambda: any(line.startswith(": live") for line in received) or stream.done())
        r = await http.put(f"{payroll}/items/db.password", params={"tenant": "finance"},
                           json={"value": "s3cret", "secret": True})
        assert r.status_code == 204, r.text
        assert (await http.post(f"{payroll}:publish", json={})).status_code == 200
        polled = await asyncio.wait_for(poll, 30)
        assert polled.status_code == 403, polled.text  # not the app's notification id
        try:
            await asyncio.wait_for(stream, 30)
        finally:
            stream.cancel()
    text = "\n".join(received)
    assert "s3cret" not in text and "db.password" not in text, text
    assert "event: error" in text and '"status":403' in text, text


async def test_reads_are_authorized_by_the_apps_tenant_in_the_store(cfg: RunningNode, http: httpx.AsyncClient) -> None:
    """Listing an app's namespaces and reading its audit log took the app's tenant from the node's
    in-memory view, which lags the store (another node's write, on PostgreSQL): until it caught up, a
    token of tenant ``default`` could list a new app of another tenant and read its audit log (values
    of plain keys included)."""
    async with cfg.client() as admin:
        token = (await admin.tokens.create("dev-default", "developer", ["default"]))["token"]
    hub = cfg.node.service(ConfigHub)
    assert hub._task is not None
    hub._task.cancel()  # this node's view stops following the store, as a lagging node's would
    with contextlib.suppress(asyncio.CancelledError):
        await hub._task
    payroll = "/v1/config/apps/payroll/envs/default/clusters/default/namespaces/application"
    r = await http.put(f"{payroll}/items/salary.max", params={"tenant": "finance"}, json={"value": "250000"})
    assert r.status_code == 204, r.text
    async with httpx.AsyncClient(base_url=cfg.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as dev:
        assert (await dev.get("/v1/config/apps/payroll/namespaces")).status_code == 403
        r = await dev.get("/v1/config/audit", params={"app": "payroll"})
        assert r.status_code == 403 and "250000" not in r.text, r.text


async def test_a_stream_checks_the_tenant_again_before_its_first_event(cfg: RunningNode,
                                                                      http: httpx.AsyncClient) -> None:
    """The same hole in a narrower window: the app is created in another tenant after the request was
    authorized but before the stream sends the current state."""
    async with cfg.client() as admin:
        token = (await admin.tokens.create("dev-default", "developer", ["default"]))["token"]
    hub = cfg.node.service(ConfigHub)
    real = hub.caught_up
    calls = 0
    payroll = "/v1/config/apps/payroll/envs/default/clusters/default/namespaces/application"

    async def created_meanwhile(timeout: float = 5.0) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:  # the stream's own catch-up, after the request was let in
            await http.put(f"{payroll}/items/salary.max", params={"tenant": "finance"}, json={"value": "250000"})
            await http.post(f"{payroll}:publish", json={})
            ref = NsRef.from_path("payroll/default/default/application")
            await wait_for(lambda: hub.tenant("payroll") == "finance" and hub.layers(ref))
        await real(timeout)

    hub.caught_up = created_meanwhile  # type: ignore[method-assign]
    try:
        async with httpx.AsyncClient(base_url=cfg.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as dev:
            async with dev.stream("GET", "/v1/config/stream", params={"app": "payroll", "namespace": "application"}) as r:
                text = (await asyncio.wait_for(r.aread(), 30)).decode()
    finally:
        hub.caught_up = real  # type: ignore[method-assign]
    assert calls >= 2
    assert "250000" not in text and '"status":403' in text, text
