"""Config center defects found in review: each test failed before its fix."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mezzo.config.gray import GrayReleases
from mezzo.config.hub import ConfigHub
from mezzo.config.model import NsRef
from mezzo.config.secrets import Keyring
from mezzo.config.service import DRAFT, ConfigService
from mezzo.testing.fixtures import RunningNode, start_node, wait_for

NS = "/v1/config/apps/shop/envs/default/clusters/default/namespaces"
APP = f"{NS}/application"
REF = NsRef("shop", "default", "default", "application")


@pytest.fixture
async def cfg(tmp_path: Path) -> AsyncIterator[RunningNode]:
    running = await start_node(tmp_path / "data")
    try:
        yield running
    finally:
        await running.node.stop()


@pytest.fixture
async def http(cfg: RunningNode) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=cfg.url, headers={"Authorization": f"Bearer {cfg.token}"},
                                 timeout=30) as client:
        yield client


async def _login(cfg: RunningNode, name: str, role: str, namespaces: list[str] | None = None) -> httpx.AsyncClient:
    async with cfg.client() as admin:
        token = (await admin.tokens.create(name, role, namespaces))["token"]
    return httpx.AsyncClient(base_url=cfg.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def _problem(r: httpx.Response, status: int, field: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert any(e.get("field") == field and e.get("reason") for e in r.json().get("errors", [])), r.text


async def test_recreated_namespace_does_not_serve_the_deleted_namespaces_release(http: httpx.AsyncClient) -> None:
    """The hub caches releases by (path, release id); release ids restart at 1 when a namespace
    is deleted and created again, so clients kept getting the deleted namespace's values."""
    await http.put(f"{APP}/items/a", json={"value": "old"})
    await http.post(f"{APP}:publish", json={})
    assert (await http.get(f"{APP}/config")).json()["configurations"] == {"a": "old"}
    assert (await http.delete(APP)).status_code == 204
    await http.put(f"{APP}/items/a", json={"value": "new"})
    assert (await http.post(f"{APP}:publish", json={})).json()["id"] == 1
    assert (await http.get(f"{APP}/config")).json()["configurations"] == {"a": "new"}


async def test_import_of_multi_document_yaml_is_a_400_not_a_500(http: httpx.AsyncClient) -> None:
    """Import validated yaml with safe_load_all but parsed it with safe_load, whose 'expected a
    single document' error escaped as a 500."""
    r = await http.post(f"{APP}:import", json={"filename": "app.yaml", "content": "a: 1\n---\nb: 2\n"})
    _problem(r, 400, "content")


async def test_gray_publish_validates_a_typed_namespace(http: httpx.AsyncClient) -> None:
    """Publish refuses invalid yaml, but the gray branch of a yaml namespace took any keys and any
    document and served them to gray clients, which then could not parse their configuration."""
    await http.put(f"{NS}/db", json={"format": "yaml"})
    await http.put(f"{NS}/db/items/content", json={"value": "pool: 10\n"})
    await http.post(f"{NS}/db:publish", json={})
    await http.put(f"{NS}/db/gray")
    _problem(await http.put(f"{NS}/db/gray/items/pool", json={"value": "20"}), 400, "key")
    await http.put(f"{NS}/db/gray/items/content", json={"value": "pool: [20\n"})
    await http.put(f"{NS}/db/gray/rules", json={"rules": [{"labels": {"canary": "true"}}]})
    r = await http.post(f"{NS}/db/gray:publish")
    _problem(r, 400, "content")
    assert r.json()["line"] == 2
    got = await http.get(f"{NS}/db/config", params={"label": "canary=true"})
    assert got.json()["configurations"] == {"content": "pool: 10\n"}


async def test_json_namespace_refuses_nan_and_infinity(http: httpx.AsyncClient) -> None:
    """Python's json accepts NaN and Infinity, which are not JSON: such a release was published
    and broke every client with a strict parser."""
    await http.put(f"{NS}/flags", json={"format": "json"})
    await http.put(f"{NS}/flags/items/content", json={"value": '{"ratio": NaN}'})
    r = await http.post(f"{NS}/flags:publish", json={})
    _problem(r, 400, "content")
    assert (r.json()["line"], r.json()["column"]) == (1, 11)


async def test_promote_does_not_revert_a_concurrent_publish(cfg: RunningNode, http: httpx.AsyncClient) -> None:
    """promote() built its release from the release it read, but publish() only compared the
    pointer it read itself: a publish landing in between was silently reverted by the promote."""
    await http.put(f"{APP}/items/a", json={"value": "1"})
    await http.put(f"{APP}/items/b", json={"value": "1"})
    await http.post(f"{APP}:publish", json={})
    await http.put(f"{APP}/gray")
    await http.put(f"{APP}/gray/items/a", json={"value": "gray"})
    await http.post(f"{APP}/gray:publish")
    svc = cfg.node.service(ConfigService)
    gray = cfg.node.service(GrayReleases)
    real = svc.publish
    raced = False

    async def racing(ref: NsRef, *args: Any, **kwargs: Any) -> Any:
        nonlocal raced
        if not raced:
            raced = True  # another operator publishes b=2 after promote read the namespace
            await svc.set_items(ref, {"b": ("2", False, "")}, "bob")
            await real(ref, "bob")
        return await real(ref, *args, **kwargs)

    svc.publish = racing  # type: ignore[method-assign]
    try:
        await gray.promote(REF, "alice")
    except Exception as exc:  # a conflict is a correct answer; a silent revert is not
        assert getattr(exc, "status", None) == 409
    finally:
        svc.publish = real  # type: ignore[method-assign]
    assert raced
    assert (await http.get(f"{APP}/config")).json()["configurations"]["b"] == "2"


async def test_rollback_does_not_wipe_a_draft_edit_made_after_its_check(cfg: RunningNode,
                                                                        http: httpx.AsyncClient) -> None:
    """rollback() checked that the draft had no unpublished changes, then publish() read the draft
    again and reset it: an edit landing in between was discarded without force."""
    for value in ("1", "2"):
        await http.put(f"{APP}/items/a", json={"value": value})
        await http.post(f"{APP}:publish", json={})
    svc = cfg.node.service(ConfigService)
    real = svc.publish
    raced = False

    async def racing(ref: NsRef, *args: Any, **kwargs: Any) -> Any:
        nonlocal raced
        if not raced:
            raced = True  # someone edits the draft after rollback checked it
            await svc.set_items(ref, {"wip": ("keep me", False, "")}, "bob")
        return await real(ref, *args, **kwargs)

    svc.publish = racing  # type: ignore[method-assign]
    try:
        await svc.rollback(REF, "alice")
    except Exception as exc:
        assert getattr(exc, "status", None) == 409
    finally:
        svc.publish = real  # type: ignore[method-assign]
    assert raced
    assert "wip" in (await http.get(f"{APP}/items")).json()["items"]


async def test_distinct_publisher_also_guards_gray_publish_and_promote(cfg: RunningNode,
                                                                      http: httpx.AsyncClient) -> None:
    """requireDistinctPublisher was only checked on a normal publish: the editor of the gray keys
    could gray-publish them (to 100% of clients) and promote them to everyone on their own."""
    await http.put(f"{APP}/items/a", json={"value": "1"})
    await http.post(f"{APP}:publish", json={})
    await http.put(f"{APP}/permissions", json={"requireDistinctPublisher": True})
    async with await _login(cfg, "dave", "operator") as dave, await _login(cfg, "erin", "operator") as erin:
        await dave.put(f"{APP}/gray")
        assert (await dave.put(f"{APP}/gray/items/a", json={"value": "unreviewed"})).status_code == 200
        await dave.put(f"{APP}/gray/rules", json={"rules": [{"percentage": 100}]})
        r = await dave.post(f"{APP}/gray:publish")
        assert r.status_code == 403 and r.json()["errors"][0]["field"] == "user"
        assert (await erin.post(f"{APP}/gray:publish")).status_code == 200
        r = await dave.post(f"{APP}/gray:promote")
        assert r.status_code == 403 and r.json()["errors"][0]["field"] == "user"
        assert (await erin.post(f"{APP}/gray:promote")).status_code == 200


async def test_a_public_namespace_does_not_leak_into_an_older_private_one(cfg: RunningNode,
                                                                         http: httpx.AsyncClient) -> None:
    """The hub layered any app's namespace over the current owner of a public namespace of the
    same name, even a private namespace created before it (recorded ``inherits: null``): another
    app, even of another tenant, could inject keys into every app's ``application``."""
    await http.put(f"{APP}/items/db.url", json={"value": "postgres://shop"})
    await http.post(f"{APP}:publish", json={})
    evil = "/v1/config/apps/evil/envs/default/clusters/default/namespaces/application"
    assert (await http.put(evil, json={"public": True}, params={"tenant": "other"})).status_code == 201
    await http.put(f"{evil}/items/feature.debug", json={"value": "true"})
    await http.post(f"{evil}:publish", json={})
    await wait_for(lambda: "evil" in cfg.node.service(ConfigHub).public.values())
    assert (await http.get(f"{APP}/config")).json()["configurations"] == {"db.url": "postgres://shop"}


async def test_import_cannot_create_an_app_in_a_tenant_the_caller_cannot_write(cfg: RunningNode) -> None:
    """PUT items checks write access to ``?tenant=`` before creating an app there; import did not,
    so a token of one tenant could create (squat) apps owned by another tenant."""
    async with await _login(cfg, "mallory", "operator", ["default"]) as mallory:
        r = await mallory.post("/v1/config/apps/payroll/envs/default/clusters/default/namespaces/application:import",
                               params={"tenant": "finance"}, json={"filename": "a.properties", "content": "a=1\n"})
        assert r.status_code == 403, r.text
    assert await cfg.node.service(ConfigService).app("payroll") is None


async def test_a_tenant_scoped_token_can_create_an_app_in_its_own_tenant(cfg: RunningNode) -> None:
    """For an app that does not exist yet, authorize() checked the ``default`` tenant instead of
    the ``?tenant=`` it would be created in: a token scoped to its own tenant could not create
    any app there (and only tokens of ``default`` could)."""
    base = "/v1/config/apps/payroll/envs/default/clusters/default/namespaces/application"
    async with await _login(cfg, "fin-ops", "operator", ["finance"]) as ops:
        assert (await ops.put(f"{base}/items/a", params={"tenant": "finance"}, json={"value": "1"})).status_code == 204
        assert (await ops.post(f"{base}:publish", json={})).status_code == 200
    app = await cfg.node.service(ConfigService).app("payroll")
    assert app is not None and app.tenant == "finance"


async def test_a_new_app_s_tenant_must_be_a_namespace_name(cfg: RunningNode, http: httpx.AsyncClient) -> None:
    """``?tenant=`` was any string: an admin could create an app in tenant ``*`` or ``Finance!``,
    which no namespace-scoped token can ever reach. It is a namespace name now, checked first."""
    base = "/v1/config/apps/odd/envs/default/clusters/default/namespaces/application"
    for bad in ("*", "Finance!"):
        r = await http.put(f"{base}/items/a", params={"tenant": bad}, json={"value": "1"})
        assert r.status_code == 400, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["errors"][0]["field"] == "tenant"
    assert (await http.put(base, params={"tenant": "*"}, json={})).status_code == 400
    assert await cfg.node.service(ConfigService).app("odd") is None


async def _cluster_fallback(http: httpx.AsyncClient) -> str:
    """``application`` released in the default cluster and in cluster ``bj``; returns bj's URL."""
    bj = "/v1/config/apps/shop/envs/default/clusters/bj/namespaces/application"
    await http.put(f"{APP}/items/a", json={"value": "default"})
    await http.post(f"{APP}:publish", json={})
    await http.put(f"{bj}/items/a", json={"value": "bj"})
    await http.post(f"{bj}:publish", json={})
    return bj


async def test_deleting_a_cluster_namespace_moves_the_notification_id_forward(http: httpx.AsyncClient) -> None:
    """A client of cluster bj falls back to the default cluster when bj's namespace is deleted,
    but its notification id fell back too (to the default cluster's older revision): the id went
    backwards, so a long poll holding bj's id was never answered and kept bj's deleted values."""
    bj = await _cluster_fallback(http)
    before = (await http.get(f"{bj}/config")).json()
    assert before["configurations"] == {"a": "bj"}
    assert (await http.delete(bj)).status_code == 204
    after = (await http.get(f"{bj}/config")).json()
    assert after["configurations"] == {"a": "default"} and after["notificationId"] > before["notificationId"]
    poll = [{"namespaceName": "application", "notificationId": before["notificationId"]}]
    r = await http.get("/v1/config/notifications", params={"app": "shop", "cluster": "bj", "timeout": 0,
                                                           "notifications": json.dumps(poll)})
    assert r.status_code == 200 and r.json()[0]["notificationId"] == after["notificationId"]


async def _events(http: httpx.AsyncClient, params: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    async with http.stream("GET", "/v1/config/stream", params=params) as response:
        event: dict[str, Any] = {}
        async for line in response.aiter_lines():
            if line.startswith("id: "):
                event["id"] = int(line[4:])
            elif line.startswith("event: "):
                event["event"] = line[7:]
            elif line.startswith("data: "):
                event["data"] = json.loads(line[6:])
            elif line == "" and "data" in event:
                yield event
                event = {}


async def test_stream_follows_the_fallback_when_a_cluster_namespace_is_deleted(http: httpx.AsyncClient) -> None:
    """The stream only watched the layers a namespace resolved to at that moment: when cluster
    bj's namespace was deleted, the deletion (of a path no longer resolved) was dropped and the
    watcher never learned that it now gets the default cluster's values."""
    bj = await _cluster_fallback(http)
    stream = _events(http, {"app": "shop", "cluster": "bj", "namespace": "application"})
    try:
        first = await asyncio.wait_for(anext(stream), 30)
        assert first["data"]["configurations"] == {"a": "bj"}
        await http.delete(bj)
        second = await asyncio.wait_for(anext(stream), 20)
        assert second["event"] == "config" and second["data"]["configurations"] == {"a": "default"}
        assert second["id"] > first["id"]
    finally:
        await stream.aclose()


async def test_key_rotation_does_not_skip_a_document_edited_meanwhile(cfg: RunningNode, http: httpx.AsyncClient) -> None:
    """rotate_keys() skipped a document whose write lost a race, assuming the other writer used
    the active key; but an edit of *another* key rewrites the document with the old ciphertexts
    untouched, so the secret stayed on the old key and broke once that key was dropped."""
    svc = cfg.node.service(ConfigService)
    old, new = os.urandom(32), os.urandom(32)
    svc.keyring = Keyring([old])
    await http.put(f"{APP}/items/db.password", json={"value": "hunter2", "secret": True})
    svc.keyring = Keyring([new, old])
    real = svc._txn
    raced = False

    async def racing(ops: list[Any], compares: list[Any] | None = None) -> Any:
        nonlocal raced
        if not raced and ops[0].key == DRAFT + REF.path:
            raced = True  # someone edits another key of the draft while rotation runs
            await svc.set_items(REF, {"db.user": ("app", False, "")}, "bob")
        return await real(ops, compares)

    svc._txn = racing  # type: ignore[method-assign]
    try:
        await svc.rotate_keys("admin")
    finally:
        svc._txn = real  # type: ignore[method-assign]
    assert raced
    svc.keyring = Keyring([new])  # the old key is dropped
    draft, _ = await svc.draft(REF)
    assert svc.keyring.decrypt(draft.items["db.password"].value, f"{REF.path}/db.password") == "hunter2"


async def test_setting_a_secret_again_without_the_flag_keeps_it_secret(cfg, http) -> None:  # type: ignore[no-untyped-def]
    """A secret key set again without ``"secret": true`` (as the SDK and CLI did by default) was
    stored in clear and shown to viewers; leaving the flag out now keeps the key secret."""
    path = "/v1/config/apps/shop/envs/default/clusters/default/namespaces/application"
    await http.put(f"{path}/items/db.password", json={"value": "one", "secret": True})
    await http.put(f"{path}/items/db.password", json={"value": "two"})
    await http.post(f"{path}:import", json={"content": "db.password=three\n", "filename": "x.properties"})
    items = (await http.get(f"{path}/items")).json()["items"]
    assert items["db.password"]["secret"] is True and items["db.password"]["value"] == "******"
    await http.put(f"{path}/items/db.password", json={"value": "plain now", "secret": False})  # only when said
    assert (await http.get(f"{path}/items")).json()["items"]["db.password"]["value"] == "plain now"
