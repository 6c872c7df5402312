"""Audit: the per-transaction retry interval, exponential backoff on errors (capped), the plain interval
for "ongoing" answers and check-backs, and timeout-to-fail of an XA transaction left prepared.

The schedule is read from the log (when the transaction is next due) rather than measured: a round
that ends with a branch to retry hands the transaction back due ``interval`` (doubled per failed round)
after the moment it wrote it. Intervals are large so that no round runs by itself meanwhile; the test
makes the transaction due again by hand."""

from __future__ import annotations

from typing import Any

import httpx

from mezzo.storage.kv import Compare
from mezzo.testing.fixtures import RunningNode, wait_for
from mezzo.transactions.coordinator import MAX_BACKOFF, Coordinator
from mezzo.transactions.store import ACTIVE, Active, active_put

from .conftest import FAST, Busi, final_status

SLACK = 60.0  # the due time is computed microseconds after the write's own clock reading


async def schedule(txnode: RunningNode, http: httpx.AsyncClient, gid: str, attempts: int) -> tuple[dict[str, Any], float]:
    """Wait until the transaction was handed back after round ``attempts``; returns it and how long after
    its last write it is due."""
    log = txnode.node.service(Coordinator).log

    async def handed_back() -> tuple[dict[str, Any], Active] | None:
        tx = (await http.get(f"/v1/tx/transactions/{gid}")).json()
        active, _ = await log.active(gid)
        if active is None or active.owner or not active.due or tx["attempts"] != attempts:
            return None
        return tx, active

    tx, active = await wait_for(handed_back, 20)
    return tx, active.due - tx["updated"]


async def due_now(txnode: RunningNode, gid: str) -> None:
    """Skip the wait without resetting the attempts (which ``:retry`` does)."""
    coordinator = txnode.node.service(Coordinator)
    active, revision = await coordinator.log.active(gid)
    assert active is not None and not active.owner
    await coordinator.log.txn([active_put(gid, Active(due=0))], [Compare(ACTIVE + gid, revision)])
    coordinator.wake()


async def test_errors_back_off_exponentially_up_to_the_cap(txnode: RunningNode, http: httpx.AsyncClient,
                                                           busi: Busi) -> None:
    interval = 1000.0
    busi.on("flaky", 500, 503, (200, b"not json"))
    body = {"gid": "backoff-1", "mode": "saga", "steps": [{"action": f"{busi.url}/flaky"}],
            "options": {"retry_interval": interval, "request_timeout": 5}}
    assert (await http.post("/v1/tx/transactions", json=body)).status_code == 201
    gaps = []
    for attempts in (1, 2):
        _, gap = await schedule(txnode, http, "backoff-1", attempts)
        gaps.append(gap)
        await due_now(txnode, "backoff-1")
    # the third answer was a 200 that is plain success: done
    assert (await final_status(http, "backoff-1"))["status"] == "succeed"
    assert interval <= gaps[0] < interval + SLACK
    assert 2 * interval <= gaps[1] < 2 * interval + SLACK
    assert busi.names("backoff-1") == ["flaky"] * 3

    busi.on("down", *[500] * 5)
    body = {**body, "gid": "backoff-2", "steps": [{"action": f"{busi.url}/down"}]}
    assert (await http.post("/v1/tx/transactions", json=body)).status_code == 201
    for attempts in (1, 2, 3):
        tx, gap = await schedule(txnode, http, "backoff-2", attempts)
        expected = min(interval * 2 ** (attempts - 1), MAX_BACKOFF)
        assert expected <= gap < expected + SLACK, (attempts, gap)
        assert tx["status"] == "submitted"
        await due_now(txnode, "backoff-2")  # the third gap: 4 * interval, capped


async def test_ongoing_waits_the_plain_interval_and_keeps_the_attempts(txnode: RunningNode,
                                                                       http: httpx.AsyncClient, busi: Busi) -> None:
    busi.on("busy", 500, 425, (200, b'{"dtm_result":"ONGOING"}'))
    body = {"gid": "ongoing-1", "mode": "saga", "steps": [{"action": f"{busi.url}/busy"}],
            "options": {"retry_interval": 700, "request_timeout": 5}}
    assert (await http.post("/v1/tx/transactions", json=body)).status_code == 201
    _, gap = await schedule(txnode, http, "ongoing-1", 1)  # an error: attempt 1
    assert 700 <= gap < 700 + SLACK
    await due_now(txnode, "ongoing-1")

    async def ongoing_round_done() -> bool:
        return busi.names("ongoing-1").count("busy") >= 2

    await wait_for(ongoing_round_done)
    _, gap = await schedule(txnode, http, "ongoing-1", 1)  # 425 is not an error: no doubling, no attempt
    assert 700 <= gap < 700 + SLACK
    await due_now(txnode, "ongoing-1")
    await wait_for(lambda: busi.names("ongoing-1").count("busy") >= 3)
    _, gap = await schedule(txnode, http, "ongoing-1", 1)
    assert 700 <= gap < 700 + SLACK
    await due_now(txnode, "ongoing-1")
    assert (await final_status(http, "ongoing-1"))["status"] == "succeed"


async def test_each_transaction_keeps_its_own_interval(txnode: RunningNode, http: httpx.AsyncClient,
                                                       busi: Busi) -> None:
    for gid, interval in (("own-1", 300), ("own-2", 900)):
        busi.on(gid, 500)
        body = {"gid": gid, "mode": "saga", "steps": [{"action": f"{busi.url}/{gid}"}],
                "options": {"retry_interval": interval}}
        assert (await http.post("/v1/tx/transactions", json=body)).status_code == 201
        _, gap = await schedule(txnode, http, gid, 1)
        assert interval <= gap < interval + SLACK


async def test_a_prepared_message_is_checked_back_after_its_interval(txnode: RunningNode, http: httpx.AsyncClient,
                                                                    busi: Busi) -> None:
    busi.on("query", 425)
    body = {"gid": "checkback-1", "mode": "msg", "prepare": True, "query_prepared": f"{busi.url}/query",
            "steps": [{"action": f"{busi.url}/m"}], "options": {"retry_interval": 800}}
    created = (await http.post("/v1/tx/transactions", json=body)).json()
    active, _ = await txnode.node.service(Coordinator).log.active("checkback-1")
    assert active is not None and 800 <= active.due - created["created"] < 800 + SLACK
    await due_now(txnode, "checkback-1")
    await wait_for(lambda: busi.names("checkback-1") == ["query"])
    _, gap = await schedule(txnode, http, "checkback-1", 0)  # "ongoing": asked again after the interval
    assert 800 <= gap < 800 + SLACK
    await due_now(txnode, "checkback-1")
    assert (await final_status(http, "checkback-1"))["status"] == "succeed"
    assert busi.names("checkback-1") == ["query", "query", "m"]


async def test_an_xa_transaction_left_prepared_times_out_and_rolls_back(http: httpx.AsyncClient, busi: Busi) -> None:
    # 1.5 s: both branches must be registered before it runs out, even on a loaded machine
    body = {"gid": "xa-timeout", "mode": "xa", "prepare": True, "options": {**FAST, "timeout_to_fail": 1.5}}
    assert (await http.post("/v1/tx/transactions", json=body)).status_code == 201
    for branch in ("01", "02"):
        url = f"{busi.url}/xa{branch}"
        answer = await http.post("/v1/tx/transactions/xa-timeout/branches",
                                 json={"branch_id": branch, "urls": {"commit": url, "rollback": url}})
        assert answer.status_code == 201
    tx = await final_status(http, "xa-timeout")
    assert tx["status"] == "failed" and tx["rollback_reason"] == "timed out before submit"
    assert busi.names("xa-timeout") == ["xa02", "xa01"]
    assert [c.params["op"] for c in busi.calls if c.params.get("gid") == "xa-timeout"] == ["rollback"] * 2
