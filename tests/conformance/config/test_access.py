"""Secrets at rest, permissions per namespace, the audit log and key rotation."""

from __future__ import annotations

import base64
import os
from datetime import UTC, datetime, timedelta

import httpx

from mezzo.config.service import ConfigService
from mezzo.testing.fixtures import RunningNode, start_node

NS = "/v1/config/apps/shop/envs/default/clusters/default/namespaces"
APP = f"{NS}/application"


async def _raw_store_holds(cfg: RunningNode, needle: bytes) -> bool:
    store = cfg.node.service(ConfigService).store
    for prefix in ("/config/", "/audit/"):
        for kv in (await store.range(prefix)).items:
            if needle in kv.value:
                return True
    return False


async def test_secrets_are_encrypted_masked_and_clear_only_for_users(cfg: RunningNode, http: httpx.AsyncClient, login) -> None:  # type: ignore[no-untyped-def]
    await http.put(f"{APP}/items/db.password", json={"value": "hunter2", "secret": True})
    await http.put(f"{APP}/items/db.user", json={"value": "app"})
    await http.post(f"{APP}:publish", json={})
    await http.put(f"{APP}/items/db.password", json={"value": "hunter3", "secret": True})
    await http.post(f"{APP}:publish", json={})
    assert not await _raw_store_holds(cfg, b"hunter")  # not in drafts, releases, pointers or the audit log

    assert (await http.get(f"{APP}/items")).json()["items"]["db.password"]["value"] == "******"
    assert (await http.get(f"{APP}/releases/1")).json()["configurations"]["db.password"] == "******"
    diff = (await http.get(f"{APP}/diff", params={"from": 1, "to": 2})).json()
    assert diff["changed"] == ["db.password"] and diff["values"]["db.password"] == {"from": "******", "to": "******"}
    audit = (await http.get("/v1/config/audit", params={"app": "shop"})).json()["items"]
    assert "hunter" not in str(audit) and any("******" in str(a["detail"]) for a in audit)

    assert (await http.get(f"{APP}/config")).json()["configurations"]["db.password"] == "hunter3"  # admin: clear
    async with await login("dashboards", "viewer") as viewer:
        shown = (await viewer.get(f"{APP}/config")).json()["configurations"]
        assert shown == {"db.password": "******", "db.user": "app"}
        assert "hunter" not in (await viewer.get(f"{APP}:export")).text
    async with await login("billing-service", "developer") as app:
        assert (await app.get(f"{APP}/config")).json()["configurations"]["db.password"] == "hunter3"
        assert (await app.put(f"{APP}/items/x", json={"value": "1"})).status_code == 403  # reading is not editing

    # re-saving the masked value keeps the secret; an unchanged draft has nothing to publish
    await http.put(f"{APP}/items/db.password", json={"value": "******"})
    assert (await http.post(f"{APP}:publish", json={})).status_code == 409


async def test_edit_and_publish_rights_and_distinct_publisher(cfg: RunningNode, http: httpx.AsyncClient, login) -> None:  # type: ignore[no-untyped-def]
    await http.put(f"{APP}/items/a", json={"value": "1"})
    r = await http.put(f"{APP}/permissions", json={"edit": ["alice"], "publish": ["bob"],
                                                   "requireDistinctPublisher": True})
    assert r.status_code == 200
    alice, bob, carol = [await login(n, "operator") for n in ("alice", "bob", "carol")]
    async with alice, bob, carol:
        assert (await carol.put(f"{APP}/items/a", json={"value": "2"})).status_code == 403
        assert (await alice.put(f"{APP}/items/a", json={"value": "2"})).status_code == 204
        assert (await alice.post(f"{APP}:publish", json={})).status_code == 403  # alice may edit, not publish
        assert (await carol.post(f"{APP}:publish", json={})).status_code == 403
        assert (await bob.post(f"{APP}:publish", json={})).status_code == 200
        await alice.put(f"{APP}/permissions", json={"edit": []})  # not an admin
        assert (await alice.put(f"{APP}/permissions", json={"edit": []})).status_code == 403
    # with the option on, whoever edited the draft may not publish it
    await http.put(f"{APP}/permissions", json={"edit": [], "publish": [], "requireDistinctPublisher": True})
    async with await login("dave", "operator") as dave, await login("erin", "operator") as erin:
        await dave.put(f"{APP}/items/a", json={"value": "3"})
        r = await dave.post(f"{APP}:publish", json={})
        assert r.status_code == 403 and r.json()["errors"][0]["field"] == "user"
        assert (await erin.post(f"{APP}:publish", json={})).status_code == 200


async def test_audit_is_queryable_by_app_namespace_user_and_time(cfg: RunningNode, http: httpx.AsyncClient, login) -> None:  # type: ignore[no-untyped-def]
    before = datetime.now(UTC) - timedelta(seconds=1)
    await http.put(f"{APP}/items/a", json={"value": "1"})
    await http.put(f"{NS}/other/items/b", json={"value": "2"})
    await http.post(f"{APP}:publish", json={"title": "go"})
    async with await login("frank", "operator") as frank:
        await frank.put(f"{APP}/items/a", json={"value": "9"})
    query = "/v1/config/audit"
    items = (await http.get(query, params={"app": "shop", "namespace": "application"})).json()["items"]
    assert [i["action"] for i in items] == ["config.namespace.create", "config.set", "config.publish", "config.set"]
    change = items[-1]
    assert change["user"] == "frank" and change["detail"]["before"] == {"a": "1"} and change["detail"]["after"] == {"a": "9"}
    assert [i["user"] for i in (await http.get(query, params={"app": "shop", "user": "frank"})).json()["items"]] == ["frank"]
    assert (await http.get(query, params={"app": "shop", "since": (datetime.now(UTC) + timedelta(hours=1)).isoformat()})).json()["items"] == []
    assert len((await http.get(query, params={"app": "shop", "since": before.isoformat()})).json()["items"]) == 6
    async with await login("gina", "viewer") as viewer:
        assert (await viewer.get(query)).status_code == 403  # every app at once needs admin


async def test_key_rotation(cfg: RunningNode, http: httpx.AsyncClient, tmp_path) -> None:  # type: ignore[no-untyped-def]
    await http.put(f"{APP}/items/token", json={"value": "t0ps3cret", "secret": True})
    await http.post(f"{APP}:publish", json={})
    old_key = (cfg.data_dir / "secret.key").read_text().strip()
    new_key = base64.b64encode(os.urandom(32)).decode()
    store_url = cfg.node.settings.store
    await cfg.node.stop()
    rotated = await start_node(cfg.data_dir, store=store_url, secret_keys=f"{new_key},{old_key}")
    try:
        async with rotated.client() as client:
            r = await client._http.post("/v1/config:rotate-keys")
            assert r.status_code == 200 and r.json()["reencrypted"] == 2  # the draft and the release
    finally:
        await rotated.node.stop()
    only_new = await start_node(cfg.data_dir, store=store_url, secret_keys=new_key)
    try:
        async with httpx.AsyncClient(base_url=only_new.url, headers={"Authorization": f"Bearer {only_new.token}"}) as h:
            assert (await h.get(f"{APP}/config")).json()["configurations"]["token"] == "t0ps3cret"
            assert (await h.get(f"{APP}:export", params={"draft": True})).text == "token=t0ps3cret\n"
    finally:
        await only_new.node.stop()
    cfg.node = only_new.node  # the fixture stops it again; stopping twice is harmless
