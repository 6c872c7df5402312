"""The declarative API over HTTP and the SDK, against an in-process node."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from mezzo.resilience.policies import PolicyRegistry
from mezzo.sdk.errors import APIError, Forbidden, NotFound, Unauthorized
from mezzo.testing.fixtures import RunningNode, wait_for

DOC = """\
apiVersion: mezzo.dev/v1
kind: Resiliency
metadata:
  name: {name}
  labels: {{team: shop}}
spec:
  policies:
    timeouts:
      general: {timeout}
  targets:
    upstreams:
      shop: {{timeout: general}}
"""


def doc(name: str = "shop", timeout: str = "5s") -> str:
    return DOC.format(name=name, timeout=timeout)


async def test_apply_get_unchanged_history_rollback(node: RunningNode) -> None:
    async with node.client() as client:
        first = await client.resources.apply(doc())
        assert [(r.kind, r.name, r.action, r.generation) for r in first] == [("Resiliency", "shop", "created", 1)]
        again = await client.resources.apply(doc())
        assert again[0].action == "unchanged"
        changed = await client.resources.apply(doc(timeout="7s"))
        assert changed[0].action == "configured" and changed[0].generation == 2

        res = await client.resources.get("resiliency", "shop")
        assert res.spec["policies"]["timeouts"]["general"] == "7s"
        assert res.metadata.labels == {"team": "shop"} and res.metadata.generation == 2
        assert res.metadata.createdBy == "admin"

        history = await client.resources.history("Resiliency", "shop")
        assert [(h.generation, h.action) for h in history] == [(1, "created"), (2, "configured")]

        back = await client.resources.rollback("Resiliency", "shop")
        assert (back.action, back.generation) == ("rolled-back", 3)
        assert (await client.resources.get("Resiliency", "shop")).spec["policies"]["timeouts"]["general"] == "5s"
        history = await client.resources.history("Resiliency", "shop")
        assert history[-1].rolledBackTo == 1

        to_two = await client.resources.rollback("Resiliency", "shop", to=2)
        assert to_two.generation == 4
        assert (await client.resources.get("Resiliency", "shop")).spec["policies"]["timeouts"]["general"] == "7s"


async def test_diff_shows_changes_without_applying(node: RunningNode) -> None:
    async with node.client() as client:
        await client.resources.apply(doc())
        results = await client.resources.diff(doc(timeout="9s") + "---\n" + doc(name="other"))
        assert [r.action for r in results] == ["configured", "created"]
        assert "-      general: 5s" in (results[0].diff or "") and "+      general: 9s" in (results[0].diff or "")
        assert (await client.resources.get("Resiliency", "shop")).spec["policies"]["timeouts"]["general"] == "5s"
        with pytest.raises(NotFound):
            await client.resources.get("Resiliency", "other")


async def test_set_is_all_or_nothing_and_errors_point_at_the_line(node: RunningNode) -> None:
    bad = doc(name="good") + "---\n" + doc(name="bad", timeout="soon")
    async with node.client() as client:
        with pytest.raises(APIError) as info:
            await client.resources.apply(bad)
        assert info.value.status == 400
        [error] = info.value.errors
        assert error["document"] == 2 and error["name"] == "bad"
        assert error["field"] == "spec.policies.timeouts.general"
        assert error["line"] == 22  # the 'general: soon' line of the second document
        assert "invalid duration" in error["reason"]
        assert await client.resources.list("Resiliency") == []  # the good one was not applied either


async def test_bad_yaml_names_the_line(node: RunningNode) -> None:
    async with node.client() as client:
        with pytest.raises(APIError) as info:
            await client.resources.apply("apiVersion: mezzo.dev/v1\nkind: [Resiliency\n")
        assert info.value.status == 400
        assert info.value.errors[0]["line"] == 3
        assert "invalid YAML" in info.value.errors[0]["reason"]


async def test_unknown_kind_and_envelope_errors(node: RunningNode) -> None:
    async with node.client() as client:
        with pytest.raises(APIError) as info:
            await client.resources.apply("apiVersion: mezzo.dev/v1\nkind: Topik\nmetadata: {name: x}\nspec: {}\n")
        assert info.value.errors[0]["field"] == "kind" and "known kinds" in info.value.errors[0]["reason"]
        with pytest.raises(APIError) as info:
            await client.resources.apply("apiVersion: v2\nkind: Resiliency\nmetadata: {name: Bad_Name}\n")
        fields = {e["field"] for e in info.value.errors}
        assert {"apiVersion", "metadata.name"} <= fields
        with pytest.raises(APIError) as info:
            await client.resources.apply(doc() + "---\n" + doc())
        assert "also defined" in info.value.errors[0]["reason"]
        with pytest.raises(NotFound):
            await client.resources.list("nosuchkind")


async def test_delete_keeps_history_and_rollback_restores(node: RunningNode) -> None:
    async with node.client() as client:
        await client.resources.apply(doc())
        deleted = await client.resources.delete("Resiliency", "shop")
        assert deleted.action == "deleted"
        with pytest.raises(NotFound):
            await client.resources.get("Resiliency", "shop")
        restored = await client.resources.rollback("Resiliency", "shop")
        assert restored.generation == 3
        assert (await client.resources.get("Resiliency", "shop")).metadata.generation == 3
        with pytest.raises(NotFound):
            await client.resources.delete("Resiliency", "missing")


async def test_label_selector_and_namespaces(node: RunningNode) -> None:
    async with node.client() as client:
        await client.resources.apply(doc(name="a") + "---\n" + doc(name="b").replace("team: shop", "team: ops"))
        await client.resources.apply(doc(name="c").replace("  name: c", "  name: c\n  namespace: prod"))
        assert [r.metadata.name for r in await client.resources.list("Resiliency", "default", "team=ops")] == ["b"]
        assert [r.metadata.name for r in await client.resources.list("Resiliency", "default", "team!=ops")] == ["a"]
        assert len(await client.resources.list("Resiliency")) == 3
        assert [r.metadata.name for r in await client.resources.list("Resiliency", "prod")] == ["c"]


async def test_auth_401_and_roles(node: RunningNode) -> None:
    async with httpx.AsyncClient(base_url=node.url) as http:
        response = await http.get("/v1/resources/Resiliency")
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["www-authenticate"].startswith("Bearer")
        bad = await http.get("/v1/resources/Resiliency", headers={"Authorization": "Bearer mzo_nope_nope"})
        assert bad.status_code == 401
    async with node.client() as admin:
        viewer = await admin.tokens.create("ci-viewer", "viewer")
        scoped = await admin.tokens.create("team-a", "operator", ["team-a"])
    async with node.client(viewer["token"]) as client:
        assert await client.resources.list("Resiliency") == []
        with pytest.raises(Forbidden):
            await client.resources.apply(doc())
        with pytest.raises(Forbidden):  # its "unchanged" would confirm a guessed secret to a reader
            await client.resources.apply(doc(), dry_run=True)
        with pytest.raises(Forbidden):
            await client.resources.diff(doc())
        with pytest.raises(Forbidden):
            await client.tokens.list()
    async with node.client(scoped["token"]) as client:
        with pytest.raises(Forbidden):
            await client.resources.apply(doc())  # namespace default is outside its scope
        applied = await client.resources.apply(doc().replace("  name: shop", "  name: shop\n  namespace: team-a"))
        assert applied[0].namespace == "team-a"
    async with node.client() as admin:
        await admin.tokens.revoke("ci-viewer")
    async with node.client(viewer["token"]) as client:
        with pytest.raises(Unauthorized):
            await client.resources.list("Resiliency")


async def test_problem_json_for_malformed_bodies(node: RunningNode) -> None:
    headers = {"Authorization": f"Bearer {node.token}"}
    async with httpx.AsyncClient(base_url=node.url, headers=headers) as http:
        cases = [
            http.post("/v1/resources:apply", content=b"{not json", headers={"Content-Type": "application/json"}),
            http.post("/v1/resources:apply", content=b'{"documents": 3}', headers={"Content-Type": "application/json"}),
            http.post("/v1/resources:apply", content=b"\xff\xfe", headers={"Content-Type": "application/yaml"}),
            http.post("/v1/resources:apply", content=b"", headers={"Content-Type": "application/yaml"}),
            http.post("/v1/resources:apply", content=b"- 1\n- 2\n", headers={"Content-Type": "application/yaml"}),
            http.post("/v1/tokens", json={"name": "x", "role": "king"}),
            http.get("/v1/resources/Resiliency/x/history", params={"namespace": "default"}),
            http.post("/v1/resources/Resiliency/x:rollback", params={"to": "zero"}),
        ]
        for response in await asyncio.gather(*cases):
            assert 400 <= response.status_code < 500, response.text
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["status"] == response.status_code


async def test_watch_streams_changes_and_resumes(node: RunningNode) -> None:
    async with node.client() as client:
        await client.resources.apply(doc(name="before"))
        seen: list[tuple[str, str]] = []

        async def consume() -> None:
            async for event in client.resources.watch("Resiliency"):
                seen.append((event.type, event.resource.metadata.name))
                if len(seen) == 4:
                    return

        task = asyncio.create_task(consume())
        await wait_for(lambda: seen)
        await client.resources.apply(doc(name="after"))
        await client.resources.apply(doc(name="after", timeout="1s"))
        await client.resources.delete("Resiliency", "before")
        await asyncio.wait_for(task, 10)
        assert seen == [("ADDED", "before"), ("ADDED", "after"), ("MODIFIED", "after"), ("DELETED", "before")]

        history = await client.resources.history("Resiliency", "after")
        resumed = []
        async for event in client.resources.stream("Resiliency", from_revision=history[0].revision):
            resumed.append(event.type)
            if len(resumed) == 3:
                break
        assert resumed == ["ADDED", "MODIFIED", "DELETED"]


async def test_running_modules_see_changes_without_restart(node: RunningNode) -> None:
    registry = node.node.service(PolicyRegistry)
    assert registry.policy_for("upstreams", "shop").is_noop
    async with node.client() as client:
        await client.resources.apply(doc())
        await wait_for(lambda: not registry.policy_for("upstreams", "shop").is_noop)
        await client.resources.delete("Resiliency", "shop")
        await wait_for(lambda: registry.policy_for("upstreams", "shop").is_noop)


async def test_audit_records_who_did_what(node: RunningNode) -> None:
    async with node.client() as client:
        await client.resources.apply(doc())
        await client.resources.delete("Resiliency", "shop")
        records = (await client.request("GET", "/v1/audit", params={"kind": "Resiliency"}))["items"]
        assert [r["action"] for r in records] == ["resource.create", "resource.delete"]
        metrics = (await client._http.get("/metrics")).text
        assert 'mezzo_resources_changes_total{action="created",kind="Resiliency"} 1.0' in metrics
        assert all(r["user"] == "admin" and r["name"] == "shop" for r in records)
        for i in range(3):  # more changes than the limit below: newest=true gives the last ones, newest first
            await client.resources.apply(doc(timeout=f"{i + 2}s"))
        oldest = (await client.request("GET", "/v1/audit", params={"kind": "Resiliency", "limit": 2}))["items"]
        assert [r["action"] for r in oldest] == ["resource.create", "resource.delete"]
        newest = (await client.request("GET", "/v1/audit", params={"kind": "Resiliency", "limit": 2,
                                                                   "newest": "true"}))["items"]
        assert [r["action"] for r in newest] == ["resource.configure", "resource.configure"]
        assert newest[0]["at"] >= newest[1]["at"]
        everything = (await client.request("GET", "/v1/audit", params={"kind": "Resiliency"}))["items"]
        assert newest == list(reversed(everything))[:2]


async def test_probes_metrics_and_openapi(node: RunningNode) -> None:
    async with httpx.AsyncClient(base_url=node.url) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        ready = (await http.get("/readyz")).json()
        assert ready["status"] == "ready" and set(ready["modules"]) >= {"store", "auth", "resources", "api"}
        await http.get("/v1/kinds")
        metrics = (await http.get("/metrics")).text
        assert 'mezzo_api_requests_total{method="GET",route="/v1/kinds",status="401"}' in metrics
        assert 'mezzo_auth_failures_total{reason="missing"}' in metrics
        spec = (await http.get("/openapi.json")).json()
        assert "/v1/resources:apply" in spec["paths"]
        assert (await http.get("/docs")).status_code == 200
