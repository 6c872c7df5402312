"""Audit: a concurrent saga runs independent steps at the same time, a step only after the steps it
needs, and rolls back along the same graph reversed, compensating only what ran.

Order is made observable without timing: a gated call proves two calls were in flight together, and a
step answering "ongoing" once ends the round, so whatever its dependents did in that round shows."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from mezzo.testing.fixtures import RunningNode, wait_for

from .conftest import FAST, Busi, final_status


def concurrent_saga(busi: Busi, gid: str, names: str, orders: dict[int, list[int]]) -> dict[str, Any]:
    return {"gid": gid, "mode": "saga", "orders": orders, "options": {**FAST, "concurrent": True},
            "steps": [{"action": f"{busi.url}/{n}", "compensate": f"{busi.url}/{n}-undo"} for n in names],
            "payloads": [{"step": n} for n in names]}


async def test_independent_steps_run_together_and_a_step_waits_for_its_needs(http: httpx.AsyncClient,
                                                                            busi: Busi) -> None:
    # a (step 0) waits for b (step 1); b and c need nothing: a sequential saga would call a first
    busi.gates["b"] = asyncio.Event()
    busi.on("b", 425)  # b's first answer: not finished yet, so its round ends before anything needing b
    body = concurrent_saga(busi, "graph-1", "abc", {0: [1]})
    assert (await http.post("/v1/tx/transactions", json=body)).status_code == 201
    await wait_for(lambda: {"b", "c"} <= set(busi.names("graph-1")))  # c was called while b was held
    busi.gates["b"].set()
    assert (await final_status(http, "graph-1"))["status"] == "succeed"
    names = busi.names("graph-1")
    assert sorted(names[:2]) == ["b", "c"]
    assert names[2:] == ["b", "a"]  # a ran only once b had succeeded


async def test_rollback_follows_the_graph_reversed_and_skips_what_never_ran(http: httpx.AsyncClient,
                                                                           busi: Busi) -> None:
    # a; then b and c (both need a); d needs b and c. c fails: d never runs, so it is not compensated
    busi.gates["b-undo"], busi.gates["c-undo"] = asyncio.Event(), asyncio.Event()
    busi.on("c", 409)
    busi.on("b-undo", 425)
    body = concurrent_saga(busi, "graph-2", "abcd", {1: [0], 2: [0], 3: [1, 2]})
    assert (await http.post("/v1/tx/transactions", json=body)).status_code == 201
    await wait_for(lambda: {"b-undo", "c-undo"} <= set(busi.names("graph-2")))  # both held: undone together
    busi.gates["b-undo"].set()
    busi.gates["c-undo"].set()
    assert (await final_status(http, "graph-2"))["status"] == "failed"
    names = busi.names("graph-2")
    assert names[0] == "a" and sorted(names[1:3]) == ["b", "c"]
    assert sorted(names[3:5]) == ["b-undo", "c-undo"]
    assert names[5:] == ["b-undo", "a-undo"]  # a is undone only after every step that needed it
    assert "d" not in names and "d-undo" not in names


async def test_sdk_after_builds_the_graph(txnode: RunningNode, http: httpx.AsyncClient, busi: Busi) -> None:
    busi.on("first", 425)
    async with txnode.client() as client:
        async with client.tx.saga(concurrent=True, **FAST) as saga:
            second = saga.add(f"{busi.url}/second", f"{busi.url}/second-undo", {"n": 2})
            saga.add(f"{busi.url}/first", f"{busi.url}/first-undo", {"n": 1})
            saga.add(f"{busi.url}/third", "", {"n": 3}, after=[second + 1])
    tx = await final_status(http, saga.gid or "")
    assert tx["status"] == "succeed" and tx["options"]["concurrent"] is True
    assert tx["orders"] == {"2": [1]}
    names = busi.names(saga.gid)
    assert sorted(names[:2]) == ["first", "second"] and names[2:] == ["first", "third"]
