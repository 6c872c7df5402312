"""Audit of the config model and workflow against the issue: formats, auto-created namespaces,
what a release records, diffs between any two releases, public namespaces across environments
and clusters, ETags on batch edits, gray rules on the connection's own address, and imports that
parse a file by the namespace's format as the store holds it."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

import httpx

from conformance.config.test_releases import publish, values
from mezzo.config.hub import ConfigHub
from mezzo.testing.fixtures import RunningNode

NS = "/v1/config/apps/shop/envs/default/clusters/default/namespaces"
APP = f"{NS}/application"


def base(app: str, env: str = "default", cluster: str = "default") -> str:
    return f"/v1/config/apps/{app}/envs/{env}/clusters/{cluster}/namespaces"


async def released(http: httpx.AsyncClient, path: str, items: dict[str, str]) -> None:
    r = await http.put(f"{path}/items", json={"items": {k: {"value": v} for k, v in items.items()}})
    assert r.status_code == 204, r.text
    await publish(http, path)


async def test_a_text_namespace_is_served_and_exported_as_written(http: httpx.AsyncClient) -> None:
    path = f"{NS}/notes.txt"
    assert (await http.put(path, json={"format": "text"})).status_code == 201
    document = "not yaml: [ nor json {\n\tjust text\n"
    assert (await http.put(f"{path}/items/content", json={"value": document})).status_code == 204
    assert (await http.put(f"{path}/items/other", json={"value": "x"})).status_code == 400  # one document
    await publish(http, path)  # a text document is never validated
    got = await values(http, path)
    assert got["format"] == "text" and got["configurations"] == {"content": document}
    assert (await http.get(f"{path}:export")).text == document


async def test_set_creates_a_private_properties_namespace(http: httpx.AsyncClient) -> None:
    assert (await http.put(f"{APP}/items/a", json={"value": "1"})).status_code == 204
    meta = (await http.get(APP)).json()
    assert (meta["format"], meta["public"], meta.get("inherits")) == ("properties", False, None)
    assert meta["release"] is None and meta["pending"]["added"] == ["a"]


async def test_a_release_records_title_notes_author_and_time(http: httpx.AsyncClient, login) -> None:  # type: ignore[no-untyped-def]
    before = datetime.now(UTC)
    async with await login("rita", "operator") as rita:
        await rita.put(f"{APP}/items/a", json={"value": "1"})
        r = await rita.post(f"{APP}:publish", json={"title": "first", "message": "why it changed"})
        assert r.status_code == 200, r.text
    after = datetime.now(UTC)
    listed = (await http.get(f"{APP}/releases")).json()["items"][0]
    for release in (r.json(), listed, (await http.get(f"{APP}/releases/1")).json()):
        assert (release["id"], release["title"], release["message"], release["author"]) == (
            1, "first", "why it changed", "rita")
        assert before <= datetime.fromisoformat(release["at"]) <= after


async def test_diffs_between_any_two_releases_and_releases_never_change(http: httpx.AsyncClient) -> None:
    await released(http, APP, {"a": "1", "b": "1"})
    await released(http, APP, {"b": "2", "c": "2"})
    await http.delete(f"{APP}/items/a")
    await released(http, APP, {"c": "3"})
    assert (await http.get(f"{APP}/releases/1")).json()["configurations"] == {"a": "1", "b": "1"}  # immutable
    forward = (await http.get(f"{APP}/diff", params={"from": 1, "to": 3})).json()
    assert (forward["added"], forward["changed"], forward["removed"]) == (["c"], ["b"], ["a"])
    assert forward["values"] == {"a": {"from": "1", "to": None}, "b": {"from": "1", "to": "2"},
                                 "c": {"from": None, "to": "3"}}
    backward = (await http.get(f"{APP}/diff", params={"from": 3, "to": 1})).json()
    assert (backward["added"], backward["changed"], backward["removed"]) == (["a"], ["b"], ["c"])
    same = (await http.get(f"{APP}/diff", params={"from": 2, "to": 2})).json()
    assert same["added"] == same["changed"] == same["removed"] == []
    assert (await http.get(f"{APP}/diff", params={"from": 1, "to": 9})).status_code == 404


async def test_deleting_a_public_namespace_in_one_environment_keeps_it_public_in_the_others(
        http: httpx.AsyncClient) -> None:
    """The owner's public namespace exists in dev and prod; deleting the dev copy dropped the public
    marker for every environment, so apps inheriting it in prod silently lost the owner's keys."""
    for env in ("dev", "prod"):
        common = f"{base('platform', env)}/common"
        assert (await http.put(common, json={"public": True})).status_code == 201
        await released(http, common, {"region": f"eu-{env}"})
    mine = f"{base('shop', 'prod')}/common"
    assert (await http.put(mine)).json()["inherits"] == "platform"
    await released(http, mine, {"own": "1"})
    assert (await values(http, mine))["configurations"] == {"region": "eu-prod", "own": "1"}
    assert (await http.delete(f"{base('platform', 'dev')}/common")).status_code == 204
    assert (await values(http, mine))["configurations"] == {"region": "eu-prod", "own": "1"}
    # the name still belongs to platform: another app cannot take it over
    r = await http.put(f"{base('thief', 'dev')}/common", json={"public": True})
    assert r.status_code == 409, r.text
    # once the last public copy goes, the name is free again and inheritors keep only their own keys
    assert (await http.delete(f"{base('platform', 'prod')}/common")).status_code == 204
    assert (await values(http, mine))["configurations"] == {"own": "1"}
    assert (await http.put(f"{base('other', 'dev')}/common", json={"public": True})).status_code == 201


async def test_an_owners_private_namespace_is_never_layered_under_another_app(http: httpx.AsyncClient) -> None:
    """The public marker is per name, the public flag per environment and cluster: an app inheriting
    the name was served the owner's *private* namespace of another environment or cluster."""
    public = f"{base('infra', 'dev')}/shared"
    assert (await http.put(public, json={"public": True})).status_code == 201
    await released(http, public, {"log.level": "info"})
    private = f"{base('infra', 'test')}/shared"
    assert (await http.put(private, json={"public": False})).status_code == 201
    await released(http, private, {"db.password": "infra-only"})
    mine = f"{base('shop', 'test')}/shared"
    await released(http, mine, {"x": "1"})
    assert (await values(http, mine))["configurations"] == {"x": "1"}

    # a cluster's private copy (here created by `set`) is skipped for the default cluster's public one
    await released(http, f"{base('infra', 'dev', 'bj')}/shared", {"log.level": "trace", "secret.bj": "infra-only"})
    bj = f"{base('shop', 'dev', 'bj')}/shared"
    await released(http, bj, {"y": "2"})
    assert (await values(http, bj))["configurations"] == {"log.level": "info", "y": "2"}


async def test_a_stale_etag_refuses_a_batch_edit(http: httpx.AsyncClient) -> None:
    first = await http.put(f"{APP}/items", json={"items": {"a": {"value": "1"}}})
    etag = first.headers["etag"]
    assert (await http.get(APP)).headers["etag"] == etag  # the namespace shows the draft's ETag too
    await http.put(f"{APP}/items/b", json={"value": "2"})
    stale = await http.put(f"{APP}/items", json={"items": {"a": {"value": "9"}, "c": {"value": "3"}}},
                           headers={"If-Match": etag})
    assert stale.status_code == 409 and stale.headers["content-type"].startswith("application/problem+json")
    items = (await http.get(f"{APP}/items")).json()["items"]
    assert {k: v["value"] for k, v in items.items()} == {"a": "1", "b": "2"}  # nothing of it applied


async def test_an_ip_rule_matches_the_address_the_client_connects_from(http: httpx.AsyncClient) -> None:
    await released(http, APP, {"timeout": "1s"})
    await http.put(f"{APP}/gray")
    await http.put(f"{APP}/gray/items/timeout", json={"value": "5s"})
    await http.put(f"{APP}/gray/rules", json={"rules": [{"ips": ["127.0.0.0/8", "::1/128"]}]})
    await http.post(f"{APP}/gray:publish")
    assert (await values(http))["configurations"]["timeout"] == "5s"  # no ip parameter: the connection's
    assert (await values(http, ip="192.0.2.1"))["configurations"]["timeout"] == "1s"


async def test_import_takes_the_format_from_the_store_not_the_nodes_view(cfg: RunningNode,
                                                                         http: httpx.AsyncClient) -> None:
    """Import chose how to parse a file from the hub's in-memory view of the namespace, which lags the
    store (on PostgreSQL, often by a request): a yaml or json namespace created a moment earlier, or
    one an import creates as an override of another app's public yaml namespace, was parsed as
    properties and refused (400 "holds one document")."""
    common = f"{base('platform')}/common.yaml"
    assert (await http.put(common, json={"format": "yaml", "public": True})).status_code == 201
    await http.put(f"{common}/items/content", json={"value": "log: info\n"})
    await publish(http, common)
    mine = f"{NS}/common.yaml"
    r = await http.post(f"{mine}:import", json={"content": "log: debug\n", "filename": "mine.yaml"})
    assert r.status_code == 204, r.text
    meta = (await http.get(mine)).json()
    assert (meta["format"], meta["inherits"]) == ("yaml", "platform")

    hub = cfg.node.service(ConfigHub)
    assert hub._task is not None
    hub._task.cancel()  # the node's view stops following the store: it lags as long as it likes
    with contextlib.suppress(asyncio.CancelledError):
        await hub._task
    fresh = f"{NS}/fresh.json"
    assert (await http.put(fresh, json={"format": "json"})).status_code == 201
    r = await http.post(f"{fresh}:import", json={"content": '{"a": 1}', "filename": "x.json"})
    assert r.status_code == 204, r.text
    items = (await http.get(f"{fresh}/items")).json()["items"]
    assert {k: v["value"] for k, v in items.items()} == {"content": '{"a": 1}'}
