"""Resources/API bugs found in review: each test fails on the current code."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from mezzo.resources.informer import Informer
from mezzo.resources.service import ResourceService
from mezzo.testing.fixtures import RunningNode, start_node, wait_for

DOC = """\
apiVersion: mezzo.dev/v1
kind: Resiliency
metadata: {{name: {name}, namespace: {ns}}}
spec:
  policies: {{timeouts: {{general: {timeout}}}}}
  targets: {{upstreams: {{shop: {{timeout: general}}}}}}
"""


def doc(name: str = "shop", ns: str = "default", timeout: str = "5s") -> str:
    return DOC.format(name=name, ns=ns, timeout=timeout)


def http(node: RunningNode, token: str | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=node.url, headers={"authorization": f"Bearer {token or node.token}"}, timeout=10)


async def apply(c: httpx.AsyncClient, text: str) -> httpx.Response:
    return await c.post("/v1/resources:apply", content=text, headers={"content-type": "application/yaml"})


async def make_token(c: httpx.AsyncClient, name: str, role: str, namespaces: list[str]) -> str:
    r = await c.post("/v1/tokens", json={"name": name, "role": role, "namespaces": namespaces})
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


async def test_informer_survives_a_failing_handler(node: RunningNode) -> None:
    """informer.py:51 passes ``event=`` to structlog's log.exception (whose first parameter is
    named ``event``): TypeError escapes _emit, _follow retries the same revision forever, the
    bad event is re-delivered every second and no later change of the kind is ever delivered."""
    svc = node.node.service(ResourceService)
    seen: list[tuple[str, str]] = []

    def handler(event: str, res) -> None:  # type: ignore[no-untyped-def]
        seen.append((event, res.metadata.name))
        if res.metadata.name == "bad":
            raise RuntimeError("handler bug")

    informer = Informer(svc, "Resiliency", handler)
    await informer.start()
    try:
        async with http(node) as c:
            assert (await apply(c, doc("bad"))).status_code == 200
            assert (await apply(c, doc("good"))).status_code == 200
        await wait_for(lambda: ("ADDED", "good") in seen, timeout=5)
        assert seen.count(("ADDED", "bad")) == 1
    finally:
        await informer.stop()


async def test_accepted_duration_round_trips(node: RunningNode) -> None:
    """Duration accepts 'inf' (and '1e400'), stores it as 'infs', which no longer validates:
    the stored resource poisons every informer handler, rollback to it fails, and re-applying
    `get` output is rejected. Whatever apply accepts must be re-appliable."""
    async with http(node) as c:
        r = await apply(c, doc("forever", timeout="inf"))
        if r.status_code == 400:
            return  # rejecting it up front is fine
        assert r.status_code == 200, r.text
        stored = (await c.get("/v1/resources/resiliency/forever")).json()
        again = await c.post("/v1/resources:apply", json=[{
            "apiVersion": "mezzo.dev/v1", "kind": "Resiliency",
            "metadata": {"name": "forever"}, "spec": stored["spec"]}])
        assert again.status_code == 200, again.text


async def test_namespace_scoped_token_cannot_watch_other_namespaces(node: RunningNode) -> None:
    """api.py:139: caller.can(READ, None) is True for every reader, so a token scoped to
    namespace 'team-a' may omit ?namespace= and watch every namespace."""
    async with http(node) as admin:
        token = await make_token(admin, "scoped", "viewer", ["team-a"])
        async with http(node, token) as scoped:
            async with scoped.stream("GET", "/v1/resources/resiliency:watch", params={"fromRevision": 1}) as resp:
                if resp.status_code == 403:
                    return
                assert resp.status_code == 200
                assert (await apply(admin, doc("secret", ns="team-b"))).status_code == 200
                assert (await apply(admin, doc("mine", ns="team-a"))).status_code == 200
                got = ""

                async def read() -> None:
                    nonlocal got
                    async for line in resp.aiter_lines():
                        got += line + "\n"
                        if '"team-a"' in got:  # its own namespace's event arrives, the other's never
                            return

                await asyncio.wait_for(read(), 10)
                assert "team-b" not in got, f"scoped token received another namespace's resource: {got[:200]}"


async def test_audit_empty_namespace_is_not_an_admin_bypass(node: RunningNode) -> None:
    """api.py (node) audit: namespace=None needs ADMIN, but namespace='' only needs READ and then
    applies no filter: a viewer reads the whole audit log, token.create records included."""
    async with http(node) as admin:
        token = await make_token(admin, "peek", "viewer", ["*"])
        async with http(node, token) as viewer:
            assert (await viewer.get("/v1/audit")).status_code == 403
            r = await viewer.get("/v1/audit", params={"namespace": ""})
            if r.status_code == 403:
                return
            actions = {i["action"] for i in r.json()["items"]}
            assert not any(a.startswith("token.") for a in actions), actions


async def test_audit_naive_datetimes_are_not_500(node: RunningNode) -> None:
    """until without offset → comparing aware and naive datetimes raises TypeError; since=0001-01-01
    overflows .timestamp(). Both give a 500."""
    async with http(node) as c:
        assert (await apply(c, doc())).status_code == 200
        for params in ({"until": "2020-01-01T00:00:00"}, {"since": "0001-01-01T00:00:00"}):
            r = await c.get("/v1/audit", params=params)
            assert r.status_code < 500, (params, r.status_code)


async def test_bad_manifests_are_problems_not_500(node: RunningNode) -> None:
    bodies = [
        b"[" * 10000,  # RecursionError in the YAML composer
        b'apiVersion: mezzo.dev/v1\nkind: Resiliency\nmetadata: {name: "\\ud800"}\nspec: {}\n',  # surrogate echoed in the problem
        b'apiVersion: mezzo.dev/v1\nkind: "\\ud800"\nmetadata: {name: x}\nspec: {}\n',
    ]
    async with http(node) as c:
        for body in bodies:
            r = await c.post("/v1/resources:apply", content=body, headers={"content-type": "application/yaml"})
            assert r.status_code == 400 and r.headers["content-type"].startswith("application/problem+json"), (
                body[:60], r.status_code)


async def test_token_ttl_out_of_range_is_400(node: RunningNode) -> None:
    """ttl 'inf' / 'nan' / '1e20' / 1e300 pass Duration, then datetime.fromtimestamp() raises → 500."""
    async with http(node) as c:
        for ttl in ("inf", "nan", "1e20", 1e300):
            r = await c.post("/v1/tokens", json={"name": "t", "role": "viewer", "ttl": ttl})
            assert r.status_code == 400, (ttl, r.status_code)


async def test_watch_stream_reports_failure_instead_of_hanging(node: RunningNode) -> None:
    """_sse's pump only handles CompactedError; any other error (here OverflowError binding a
    revision > 2**63 in SQLite; in production a dropped DB connection) kills the pump silently
    and the client gets heartbeats forever, never an error nor end of stream."""
    async with http(node) as c:
        async with c.stream("GET", "/v1/resources/resiliency:watch", params={"fromRevision": 2**64}) as resp:
            if resp.status_code >= 400:
                assert resp.status_code < 500
                return

            async def drain() -> None:
                async for _ in resp.aiter_lines():
                    pass

            await asyncio.wait_for(drain(), 5)  # must end (or carry an error event), not hang


async def test_postgres_nul_in_namespace_is_not_500(postgres_url: str, tmp_path: Path) -> None:
    """PostgreSQL text rejects NUL: asyncpg raises CharacterNotInRepertoireError → 500."""
    running = await start_node(tmp_path / "a", store=postgres_url)
    try:
        async with http(running) as c:
            for path in ("/v1/resources/resiliency/x", "/v1/resources/resiliency/x/history"):
                r = await c.get(path, params={"namespace": "a\x00b"})
                assert r.status_code < 500, (path, r.status_code)
    finally:
        await running.node.stop()
