"""Audit: several coordinator nodes on one PostgreSQL store share the transactions through leases —
both look for due work at once, yet each transaction is driven by one node at a time; and a node that
stalls in a branch call past its lease is taken over and then fenced off (its next write is refused)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mezzo.testing.fixtures import RunningNode, start_node, wait_for
from mezzo.transactions.coordinator import Coordinator
from mezzo.transactions.model import GlobalTx, Mode, Options, Status, Step
from mezzo.transactions.store import Active, active_put, global_put
from mezzo.transactions.testing import Busi, serve_busi

pytestmark = pytest.mark.slow


@pytest.fixture
async def busi() -> AsyncIterator[Busi]:
    async with serve_busi() as app:
        yield app


@pytest.fixture
async def nodes(postgres_url: str, tmp_path: Path,
                monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[RunningNode, RunningNode]]:
    monkeypatch.setenv("MEZZO_TX_POLL", "0.05")
    monkeypatch.setenv("MEZZO_TX_LEASE", "2")
    first = await start_node(tmp_path / "a", store=postgres_url, targets=["transactions", "api"])
    try:
        second = await start_node(tmp_path / "b", store=postgres_url, targets=["transactions", "api"])
        try:
            yield first, second
        finally:
            await second.node.stop()
    finally:
        await first.node.stop()


@pytest.fixture
def drivers(nodes: tuple[RunningNode, RunningNode]) -> dict[str, list[str]]:
    """gid -> which node ("first", "second") made each of its branch calls (observation only)."""
    seen: dict[str, list[str]] = {}
    for label, node in zip(("first", "second"), nodes, strict=True):
        caller = node.node.service(Coordinator).caller

        async def recording(method: str, url: str, *, call: Any = caller.call, label: str = label,
                            **kw: Any) -> Any:
            seen.setdefault(kw["params"]["gid"], []).append(label)
            return await call(method, url, **kw)

        caller.call = recording  # type: ignore[method-assign]
    return seen


async def test_nodes_racing_for_due_work_drive_each_transaction_once(nodes: tuple[RunningNode, RunningNode],
                                                                     busi: Busi, drivers: dict[str, list[str]]) -> None:
    first, _ = nodes
    coordinators = [n.node.service(Coordinator) for n in nodes]
    log = coordinators[0].log
    # 40 sagas written straight to the log, due a moment from now and held by nobody: no node was told
    due = time.time() + 0.5
    gids = [f"shared-{n:02d}" for n in range(40)]
    for gid in gids:
        tx = GlobalTx(gid=gid, mode=Mode.SAGA, status=Status.SUBMITTED, options=Options(retry_interval=0.05),
                      steps=[Step(action=f"{busi.url}/{gid}-a"), Step(action=f"{busi.url}/{gid}-b")],
                      payloads=["{}", "{}"])
        await log.txn([global_put(tx), active_put(gid, Active(due=due))])
    await asyncio.sleep(max(0.0, due - time.time()))  # then both nodes scan at once, besides their own loops
    await asyncio.gather(*(c.recover_once() for c in coordinators))

    async with httpx.AsyncClient(base_url=first.url, headers={"Authorization": f"Bearer {first.token}"}) as http:
        async def all_done() -> bool:
            listed = (await http.get("/v1/tx/transactions", params={"status": "succeed", "limit": 100})).json()
            return len(listed["items"]) == len(gids)

        await wait_for(all_done, 30)
    for gid in gids:
        assert busi.names(gid) == [f"{gid}-a", f"{gid}-b"], gid  # each branch once: never two drivers
        assert len(set(drivers[gid])) == 1, (gid, drivers[gid])
    assert (await log.active(gids[0]))[0] is None  # finished: no lease left


async def test_a_stalled_node_is_taken_over_and_fenced_off(nodes: tuple[RunningNode, RunningNode],
                                                           busi: Busi, drivers: dict[str, list[str]]) -> None:
    first, _ = nodes
    busi.gates["b"] = asyncio.Event()  # the first node's call of b hangs past its 2 s lease
    body = {"gid": "stalled", "mode": "saga", "options": {"retry_interval": 0.05, "request_timeout": 60},
            "steps": [{"action": f"{busi.url}/{n}", "compensate": f"{busi.url}/{n}-undo"} for n in "abc"]}
    async with httpx.AsyncClient(base_url=first.url, headers={"Authorization": f"Bearer {first.token}"},
                                 timeout=30) as http:
        assert (await http.post("/v1/tx/transactions", json=body)).status_code == 201
        # the second node takes the transaction over once the lease ran out, and calls b again
        await wait_for(lambda: busi.names("stalled").count("b") == 2, 30)
        assert drivers["stalled"] == ["first", "first", "second"]
        busi.gates["b"].set()  # both calls of b answer now

        async def finished() -> bool:
            return (await http.get("/v1/tx/transactions/stalled")).json()["status"] == "succeed"

        await wait_for(finished, 30)
    # the first node, back from its call, could not write (its lease was gone) and stopped: c ran once
    assert busi.names("stalled") == ["a", "b", "b", "c"]
    assert drivers["stalled"] == ["first", "first", "second", "second"]


async def test_a_node_that_stops_hands_its_transactions_back_at_once(nodes: tuple[RunningNode, RunningNode],
                                                                     busi: Busi) -> None:
    """A graceful stop releases the leases it holds (due now, no owner) instead of leaving them to run out."""
    first, second = nodes
    log = first.node.service(Coordinator).log
    busi.gates["b"] = asyncio.Event()  # the first node is inside b's call when it stops
    body = {"gid": "handed-back", "mode": "saga", "options": {"retry_interval": 0.05, "request_timeout": 60},
            "steps": [{"action": f"{busi.url}/{n}", "compensate": f"{busi.url}/{n}-undo"} for n in "ab"]}
    async with httpx.AsyncClient(base_url=first.url, headers={"Authorization": f"Bearer {first.token}"},
                                 timeout=30) as http:
        assert (await http.post("/v1/tx/transactions", json=body)).status_code == 201
    await wait_for(lambda: busi.names("handed-back") == ["a", "b"])
    held, _ = await log.active("handed-back")
    assert held is not None and held.owner == first.node.service(Coordinator).node_id
    await first.node.stop()
    released, _ = await second.node.service(Coordinator).log.active("handed-back")
    if released is not None:  # (the second node may have taken it and even finished it already)
        assert released.owner in ("", second.node.service(Coordinator).node_id)
    busi.gates["b"].set()
    async with httpx.AsyncClient(base_url=second.url, headers={"Authorization": f"Bearer {second.token}"},
                                 timeout=30) as http:
        async def finished() -> bool:
            return (await http.get("/v1/tx/transactions/handed-back")).json()["status"] == "succeed"

        await wait_for(finished, 30)
    assert busi.names("handed-back") == ["a", "b", "b"]
