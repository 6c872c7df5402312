"""A fresh saga's first round calls its actions without a write before each call: the "attempted" marks go
with the round's next write, and the lease record says so (``Active.ahead``) for whoever resumes the saga.
Here: how many writes a saga takes, what the log holds mid-round, the fallback to a write per call when
the lease is short, and an operator's abort stopping such a round. (A crash in the middle of such a round
is in test_tx_recovery.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from mezzo.testing.fixtures import RunningNode, start_node, wait_for
from mezzo.transactions.store import TxLog
from mezzo.transactions.testing import Busi, serve_busi


@pytest.fixture
async def busi() -> AsyncIterator[Busi]:
    async with serve_busi() as app:
        yield app


@pytest.fixture
async def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[RunningNode]:
    monkeypatch.setenv("MEZZO_TX_LEASE", "4")  # a call may go ahead with over 2 s of lease left
    monkeypatch.setenv("MEZZO_TX_POLL", "0.05")
    running = await start_node(tmp_path / "data", targets=["transactions", "api"])
    try:
        yield running
    finally:
        await running.node.stop()


def txlog(node: RunningNode) -> TxLog:
    log: TxLog = node.node.modules["transactions"].service.log
    return log


def count_writes(log: TxLog, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], int]:
    """Count the log's writes that touch a transaction (by gid), from now on."""
    writes: list[list[str]] = []
    txn = log.txn

    async def counting(ops: Any, compares: Any = (), **kwargs: Any) -> int:
        writes.append([op.key for op in ops])
        return await txn(ops, compares, **kwargs)

    monkeypatch.setattr(log, "txn", counting)
    return lambda gid: sum(any(gid in key for key in keys) for keys in writes)


def saga(gid: str, busi: Busi, names: str, **options: Any) -> dict[str, Any]:
    return {"gid": gid, "mode": "saga", "options": {"retry_interval": 0.05, **options},
            "steps": [{"action": f"{busi.url}/{n}", "compensate": f"{busi.url}/{n}-undo"} for n in names]}


def http_for(node: RunningNode) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=node.url, headers={"Authorization": f"Bearer {node.token}"}, timeout=30)


async def test_a_fresh_saga_writes_when_created_and_when_ended(node: RunningNode, busi: Busi,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    log = txlog(node)
    writes = count_writes(log, monkeypatch)
    busi.gates["b"] = asyncio.Event()
    async with http_for(node) as http:
        created = asyncio.create_task(http.post("/v1/tx/transactions",
                                                json=saga("ahead-1", busi, "abc", request_timeout=1,
                                                          wait_result=True)))
        await wait_for(lambda: "b" in busi.names("ahead-1"), 10)
        # mid-round: the log says the holder calls ahead, and holds a mark for the first step only
        active, _ = await log.active("ahead-1")
        assert active is not None and active.ahead
        loaded = await log.load("ahead-1")
        assert loaded is not None
        stored = {b.key: b for b in await log.branches(loaded.tx)}
        assert stored["01/action"].attempted and not stored["02/action"].attempted
        assert writes("ahead-1") == 1
        busi.gates["b"].set()
        answer = await created
        assert answer.status_code == 201 and answer.json()["status"] == "succeed", answer.text
    assert writes("ahead-1") == 2  # created, ended: no write before b's or c's call
    loaded = await log.load("ahead-1")
    assert loaded is not None
    actions = [b for b in await log.branches(loaded.tx) if b.op == "action"]
    assert all(b.attempted and b.status.value == "succeed" for b in actions)
    assert (await log.active("ahead-1"))[0] is None
    assert busi.names("ahead-1") == ["a", "b", "c"]


async def test_a_call_that_could_outlast_the_lease_is_marked_first(node: RunningNode, busi: Busi,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A branch timeout of 5 s with a lease of 4 s: each call is marked (and the lease renewed) before it."""
    writes = count_writes(txlog(node), monkeypatch)
    async with http_for(node) as http:
        answer = await http.post("/v1/tx/transactions",
                                 json=saga("eager-1", busi, "abc", request_timeout=5, wait_result=True))
        assert answer.json()["status"] == "succeed", answer.text
    assert writes("eager-1") == 4  # created, b marked, c marked, ended


async def test_a_failed_step_compensates_exactly_what_ran(node: RunningNode, busi: Busi) -> None:
    """Without a crash, the marks the round kept are exact: a step that never started is not compensated."""
    busi.on("b", 409)
    async with http_for(node) as http:
        answer = await http.post("/v1/tx/transactions",
                                 json=saga("fail-1", busi, "abcd", request_timeout=1, wait_result=True))
        assert answer.json()["status"] == "failed", answer.text
    assert busi.names("fail-1") == ["a", "b", "b-undo", "a-undo"]


async def test_an_operator_abort_on_this_node_stops_a_round_calling_ahead(node: RunningNode, busi: Busi) -> None:
    busi.gates["b"] = asyncio.Event()
    async with http_for(node) as http:
        assert (await http.post("/v1/tx/transactions",
                                json=saga("abort-1", busi, "abc", request_timeout=2))).status_code == 201
        await wait_for(lambda: "b" in busi.names("abort-1"), 10)
        answer = await http.post("/v1/tx/transactions/abort-1:abort")
        assert answer.status_code == 200, answer.text
        active, _ = await txlog(node).active("abort-1")
        assert active is not None and active.ahead  # kept: the round may have called ahead of its marks
        busi.gates["b"].set()  # b answers; the round must not go on to c

        async def ended() -> bool:
            return (await http.get("/v1/tx/transactions/abort-1")).json()["status"] == "failed"

        await wait_for(ended, 15)
    # c was never called; it is compensated all the same (a null compensation, the barrier's to ignore),
    # since whoever rolled back could not know how far the round had got
    assert busi.names("abort-1") == ["a", "b", "c-undo", "b-undo", "a-undo"]


async def test_a_round_after_a_retry_compensates_exactly_what_ran(node: RunningNode, busi: Busi) -> None:
    """A first round that ended in a retry wrote its marks and cleared ``ahead``: the next round, and a
    rollback in it, know exactly what ran (d never started: no compensation for it)."""
    busi.on("b", 500)  # an error: the round ends, to be retried
    busi.on("c", 409)
    async with http_for(node) as http:
        assert (await http.post("/v1/tx/transactions",
                                json=saga("retry-1", busi, "abcd", request_timeout=1))).status_code == 201

        async def ended() -> bool:
            return (await http.get("/v1/tx/transactions/retry-1")).json()["status"] == "failed"

        await wait_for(ended, 15)
    assert busi.names("retry-1") == ["a", "b", "b", "c", "c-undo", "b-undo", "a-undo"]
