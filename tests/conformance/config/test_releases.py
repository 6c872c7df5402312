"""Drafts, releases, history, diff, rollback, formats and ETags."""

from __future__ import annotations

import asyncio

import httpx

NS = "/v1/config/apps/shop/envs/default/clusters/default/namespaces"

APP = f"{NS}/application"


def field(r: httpx.Response) -> str:
    return r.json()["errors"][0]["field"]  # type: ignore[no-any-return]


async def publish(http: httpx.AsyncClient, path: str = APP, **body: str) -> dict:  # type: ignore[type-arg]
    r = await http.post(f"{path}:publish", json=body)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def values(http: httpx.AsyncClient, path: str = APP, **params: str) -> dict:  # type: ignore[type-arg]
    r = await http.get(f"{path}/config", params=params)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def test_draft_publish_history_diff_rollback(http: httpx.AsyncClient) -> None:
    assert (await http.put(f"{APP}/items/db.pool", json={"value": "10"})).status_code == 204  # creates the namespace
    await http.put(f"{APP}/items/db.url", json={"value": "pg://a"})
    assert (await http.get(f"{APP}/config")).status_code == 404  # nothing released yet
    first = await publish(http, title="initial", message="first cut")
    assert first["id"] == 1 and first["title"] == "initial" and first["author"] == "admin" and first["keys"] == 2
    assert (await values(http))["configurations"] == {"db.pool": "10", "db.url": "pg://a"}

    r = await http.post(f"{APP}:publish", json={})
    assert r.status_code == 409  # nothing changed since release 1
    await http.put(f"{APP}/items/db.pool", json={"value": "20"})
    await http.delete(f"{APP}/items/db.url")
    await http.put(f"{APP}/items/feature.x", json={"value": "on"})
    assert (await values(http))["configurations"]["db.pool"] == "10"  # drafts are not served
    meta = (await http.get(APP)).json()
    assert meta["pending"] == {"added": ["feature.x"], "changed": ["db.pool"], "removed": ["db.url"]}
    await publish(http)

    diff = (await http.get(f"{APP}/diff", params={"from": 1, "to": 2})).json()
    assert diff["added"] == ["feature.x"] and diff["changed"] == ["db.pool"] and diff["removed"] == ["db.url"]
    assert diff["values"]["db.pool"] == {"from": "10", "to": "20"}
    history = (await http.get(f"{APP}/releases")).json()["items"]
    assert [h["id"] for h in history] == [2, 1]
    assert (await http.get(f"{APP}/releases/1")).json()["configurations"] == {"db.pool": "10", "db.url": "pg://a"}

    await http.put(f"{APP}/items/late", json={"value": "1"})
    r = await http.post(f"{APP}:rollback", json={})
    assert r.status_code == 409 and "unpublished" in r.json()["detail"]  # a rollback would drop the edit
    rolled = (await http.post(f"{APP}:rollback", json={"to": 1, "force": True})).json()
    assert rolled["id"] == 3 and rolled["kind"] == "rollback" and rolled["rolledBackTo"] == 1
    assert (await values(http))["configurations"] == {"db.pool": "10", "db.url": "pg://a"}
    assert (await http.get(APP)).json()["pending"] == {"added": [], "changed": [], "removed": []}
    assert (await http.post(f"{APP}:rollback", json={"to": 3})).status_code == 400


async def test_discard_resets_the_draft(http: httpx.AsyncClient) -> None:
    await http.put(f"{APP}/items/a", json={"value": "1"})
    await publish(http)
    await http.put(f"{APP}/items/a", json={"value": "2"})
    await http.put(f"{APP}/items/b", json={"value": "3"})
    assert (await http.post(f"{APP}:discard")).status_code == 204
    items = (await http.get(f"{APP}/items")).json()["items"]
    assert {k: v["value"] for k, v in items.items()} == {"a": "1"}


async def test_typed_namespaces_are_validated_on_publish(http: httpx.AsyncClient) -> None:
    path = f"{NS}/app.yaml"
    r = await http.put(path, json={"format": "yaml"})
    assert r.status_code == 201
    r = await http.put(f"{path}/items/other", json={"value": "x"})
    assert r.status_code == 400 and field(r) == "key"
    await http.put(f"{path}/items/content", json={"value": "db:\n  pool: 10\n  url: [a, b\nx: 1\n"})
    r = await http.post(f"{path}:publish", json={})
    body = r.json()
    assert r.status_code == 400 and field(r) == "content" and body["line"] == 4 and body["column"] == 2
    assert (await http.get(f"{path}/releases")).json()["items"] == []  # no release was created
    await http.put(f"{path}/items/content", json={"value": "db:\n  pool: 10\n"})
    await publish(http, path)
    got = await values(http, path)
    assert got["format"] == "yaml" and got["configurations"] == {"content": "db:\n  pool: 10\n"}

    json_path = f"{NS}/settings.json"
    await http.put(json_path, json={"format": "json"})
    await http.put(f"{json_path}/items/content", json={"value": '{"a": 1,}'})
    r = await http.post(f"{json_path}:publish", json={})
    assert r.status_code == 400 and r.json()["line"] == 1 and r.json()["column"] == 9


async def test_etags_reject_stale_writes_and_merge_blind_ones(http: httpx.AsyncClient) -> None:
    r = await http.put(f"{APP}/items/a", json={"value": "1"})
    etag = r.headers["etag"]
    assert (await http.get(f"{APP}/items")).headers["etag"] == etag
    ok = await http.put(f"{APP}/items/a", json={"value": "2"}, headers={"If-Match": etag})
    assert ok.status_code == 204 and ok.headers["etag"] != etag
    stale = await http.put(f"{APP}/items/a", json={"value": "3"}, headers={"If-Match": etag})
    assert stale.status_code == 409
    assert (await http.delete(f"{APP}/items/a", headers={"If-Match": etag})).status_code == 409
    # edits without If-Match retry on a lost race: concurrent edits of different keys all land
    results = await asyncio.gather(*(http.put(f"{APP}/items/k{i}", json={"value": str(i)}) for i in range(20)))
    assert all(r.status_code == 204 for r in results)
    items = (await http.get(f"{APP}/items")).json()["items"]
    assert {f"k{i}" for i in range(20)} <= set(items)


async def test_import_and_export(http: httpx.AsyncClient) -> None:
    props = "# comment\ndb.pool = 10\ndb.url: pg://x\nmsg=hello \\\n  world\n"
    r = await http.post(f"{APP}:import", json={"content": props, "filename": "app.properties"})
    assert r.status_code == 204
    r = await http.post(f"{APP}:import", json={"content": "cache:\n  ttl: 30\n  enabled: true\n", "filename": "x.yaml"})
    assert r.status_code == 204
    await publish(http)
    assert (await values(http))["configurations"] == {
        "db.pool": "10", "db.url": "pg://x", "msg": "hello world", "cache.ttl": "30", "cache.enabled": "true"}
    exported = (await http.get(f"{APP}:export")).text
    assert "db.pool=10\n" in exported and "cache.enabled=true\n" in exported
    bad = await http.post(f"{APP}:import", json={"content": "a: [1\n", "filename": "x.yaml"})
    assert bad.status_code == 400 and bad.json()["line"] == 2


async def test_bad_input_is_a_clear_error(http: httpx.AsyncClient) -> None:
    r = await http.put(f"{NS}/bad%2Fname/items/a", json={"value": "1"})
    assert r.status_code in (400, 404, 422)
    r = await http.put(f"{APP}/items/a", json={"value": "x" * (1024 * 1024 + 1)})
    assert r.status_code == 413
    r = await http.put(f"{APP}/items/a", json={"valu": "1"})
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/problem+json")
    r = await http.put(f"{APP}/items/a", json={"value": "1"}, headers={"If-Match": "nonsense"})
    assert r.status_code == 400 and field(r) == "If-Match"
    assert (await http.get(f"{NS}/missing/releases")).status_code == 404
    r = await http.get("/v1/config/notifications", params={"app": "shop", "notifications": "{oops"})
    assert r.status_code == 400 and field(r) == "notifications"
