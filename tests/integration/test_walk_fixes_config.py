"""What the walkthrough of docs/config.md found: 403 and 413 problems typed ``about:blank`` while
every other error has a https://mezzo.dev/problems/ type; ``mezzo config export -o FILE`` wrote
secrets in clear to a file anyone could read; the event stream sent ``: live`` before the changes
it replays to a client reconnecting with ``Last-Event-ID``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import stat
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from mezzo.cli.main import app
from mezzo.testing.fixtures import RunningNode

PROBLEMS = "https://mezzo.dev/problems/"
NS = "/v1/config/apps/shop/envs/default/clusters/default/namespaces"
APP = f"{NS}/application"
RUNNER = CliRunner()


def _http(node: RunningNode, token: str | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=node.url, headers={"Authorization": f"Bearer {token or node.token}"},
                             timeout=30)


async def _token(node: RunningNode, name: str, role: str, namespaces: list[str]) -> str:
    async with _http(node) as http:
        r = await http.post("/v1/tokens", json={"name": name, "role": role, "namespaces": namespaces})
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def _forbidden(r: httpx.Response) -> None:
    assert r.status_code == 403, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"] == PROBLEMS + "forbidden", r.json()


async def _publish(http: httpx.AsyncClient, key: str, value: str, path: str = APP) -> int:
    """Set and release ``key``; the namespace's notification id (what stream events carry as ``id``)."""
    assert (await http.put(f"{path}/items/{key}", json={"value": value})).status_code == 204
    r = await http.post(f"{path}:publish", json={})
    assert r.status_code == 200, r.text
    return int((await http.get(f"{path}/config")).json()["notificationId"])


# 403 and 413 problem types --------------------------------------------------------------------

async def test_a_write_into_an_unreachable_tenant_is_typed_forbidden(node: RunningNode) -> None:
    operator = await _token(node, "ops", "operator", ["default"])
    async with _http(node, operator) as http:
        r = await http.put("/v1/config/apps/elsewhere/envs/default/clusters/default/namespaces/application/items/a",
                           params={"tenant": "t2"}, json={"value": "1"})
    _forbidden(r)
    assert "tenant 't2'" in r.json()["detail"]


async def test_namespace_permissions_refusals_are_typed_forbidden(node: RunningNode) -> None:
    bob = await _token(node, "bob", "operator", ["default"])
    async with _http(node) as admin, _http(node, bob) as http:
        await _publish(admin, "a", "1")
        r = await admin.put(f"{APP}/permissions", json={"edit": ["alice"], "requireDistinctPublisher": True})
        assert r.status_code < 300, r.text
        _forbidden(await http.put(f"{APP}/items/a", json={"value": "2"}))  # not on the edit list
        # the admin edits (admins pass the lists), then may not publish what it edited
        assert (await admin.put(f"{APP}/items/a", json={"value": "2"})).status_code == 204
        refused = await admin.post(f"{APP}:publish", json={})
        _forbidden(refused)
        assert refused.json()["errors"] == [{"field": "user", "reason": "edited the draft"}]
        assert (await admin.post(f"{APP}:discard", json={})).status_code == 204
        # the same for the gray keys
        assert (await admin.put(f"{APP}/gray")).status_code == 201
        assert (await admin.put(f"{APP}/gray/items/a", json={"value": "3"})).status_code == 200
        gray = await admin.post(f"{APP}/gray:publish")
        _forbidden(gray)
        assert gray.json()["errors"] == [{"field": "user", "reason": "edited the gray release"}]


async def test_audit_across_apps_without_admin_is_typed_forbidden(node: RunningNode) -> None:
    operator = await _token(node, "ops", "operator", ["default"])
    async with _http(node, operator) as http:
        _forbidden(await http.get("/v1/config/audit"))
        assert (await http.get("/v1/config/audit", params={"app": "shop"})).status_code == 200


async def test_a_long_poll_that_loses_its_app_to_another_tenant_is_typed_forbidden(node: RunningNode) -> None:
    viewer = await _token(node, "watcher", "viewer", ["default"])
    params = {"app": "ghost", "notifications": json.dumps([{"namespaceName": "application", "notificationId": -1}]),
              "timeout": "30"}
    async with _http(node) as admin, _http(node, viewer) as http:
        poll = asyncio.create_task(http.get("/v1/config/notifications", params=params))
        await asyncio.sleep(0.1)  # parked (a poll that starts later is refused the same way)
        ghost = "/v1/config/apps/ghost/envs/default/clusters/default/namespaces/application"
        assert (await admin.put(f"{ghost}/items/a", params={"tenant": "t2"}, json={"value": "1"})).status_code == 204
        assert (await admin.post(f"{ghost}:publish", json={})).status_code == 200
        _forbidden(await asyncio.wait_for(poll, 30))


async def test_a_value_over_the_limit_is_typed_too_large(node: RunningNode) -> None:
    async with _http(node) as http:
        r = await http.put(f"{APP}/items/big", json={"value": "x" * (1024 * 1024 + 1)})
        assert r.status_code == 413, r.text
        body = r.json()
        assert body["type"] == PROBLEMS + "too-large"
        assert body["title"] == "Content Too Large"
        assert body["errors"] == [{"field": "value", "reason": "too large"}]
        many = await http.put(f"{APP}/items", json={"items": {"big": {"value": "x" * (1024 * 1024 + 1)}}})
        assert many.status_code == 413 and many.json()["type"] == PROBLEMS + "too-large", many.text


# export -o: owner only ----------------------------------------------------------------------------

async def _export(node: RunningNode, *args: str) -> None:
    env = {"MEZZO_URL": node.url, "MEZZO_TOKEN": node.token, "COLUMNS": "200"}
    result = await asyncio.to_thread(RUNNER.invoke, app, ["config", "export", "shop", "application", *args], env=env)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("name", ["app.properties", "app.yaml"])
async def test_export_writes_a_file_only_its_owner_can_read(node: RunningNode, tmp_path: Path, name: str) -> None:
    async with _http(node) as http:
        assert (await http.put(f"{APP}/items/db.password", json={"value": "s3cret", "secret": True})).status_code == 204
        assert (await http.post(f"{APP}:publish", json={})).status_code == 200
    fresh = tmp_path / name
    await _export(node, "-o", str(fresh))
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600
    assert "s3cret" in fresh.read_text()  # the admin's export holds the secret in clear: hence the mode
    existing = tmp_path / f"old-{name}"
    existing.write_text("a much longer file that was there before the export overwrote it\n" * 10)
    existing.chmod(0o644)
    await _export(node, "-o", str(existing))
    assert stat.S_IMODE(existing.stat().st_mode) == 0o600
    assert existing.read_text() == fresh.read_text()  # replaced whole, not written over the old text


# the event stream: replay, then ": live" ----------------------------------------------------------

async def _until_live(http: httpx.AsyncClient, headers: dict[str, str], **extra: str) -> list[str]:
    """The stream's lines up to and including ``: live``."""
    params = {"app": "shop", "namespace": "application", **extra}
    lines: list[str] = []
    async with asyncio.timeout(30), http.stream("GET", "/v1/config/stream", params=params,
                                                headers=headers) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            lines.append(line)
            if line == ": live":
                return lines
    raise AssertionError(f"the stream ended before : live: {lines}")


def _release_keys(lines: list[str]) -> list[str]:
    return [json.loads(line[6:])["releaseKey"] for line in lines if line.startswith("data: ")]


async def test_a_reconnect_gets_the_replay_before_live(node: RunningNode) -> None:
    async with _http(node) as http:
        first = await _publish(http, "n", "0")
        first_lines = await _until_live(http, {})
        assert _release_keys(first_lines) == ["shop-1"]  # a first connect: the state, then live
        assert first_lines[0] == f"id: {first}"
        for i in range(1, 4):
            await _publish(http, "n", str(i))
        replayed = await _until_live(http, {"Last-Event-ID": str(first)})
        assert _release_keys(replayed) == ["shop-2", "shop-3", "shop-4"]  # every change after it, then live
        assert replayed[-1] == ": live"
        assert _release_keys(await _until_live(http, {}, since=str(first))) == ["shop-2", "shop-3", "shop-4"]
        fresh = await _until_live(http, {})
        assert _release_keys(fresh) == ["shop-4"]
        current = int(fresh[0].removeprefix("id: "))
        caught_up = await _until_live(http, {"Last-Event-ID": str(current)})
        assert caught_up == [": live"]  # nothing to replay: live at once


async def test_after_live_the_stream_goes_on_with_new_releases(node: RunningNode) -> None:
    params = {"app": "shop", "namespace": "application"}
    async with _http(node) as http:
        first = await _publish(http, "n", "0")
        await _publish(http, "n", "1")
        seen: list[str] = []
        async with http.stream("GET", "/v1/config/stream", params=params,
                               headers={"Last-Event-ID": str(first)}) as response:
            lines = response.aiter_lines()
            async with asyncio.timeout(30):
                async for line in lines:
                    seen.append(line)
                    if line == ": live":
                        break
                await _publish(http, "n", "2")
                async for line in lines:
                    seen.append(line)
                    if line.startswith("data: "):
                        break
            with contextlib.suppress(Exception):
                await lines.aclose()
    keys = _release_keys(seen)
    assert keys == ["shop-2", "shop-3"], seen
    assert seen.index(": live") < next(i for i, line in enumerate(seen) if '"shop-3"' in line)
