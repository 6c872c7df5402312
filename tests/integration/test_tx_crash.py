"""The transaction crash suite, small sample: bank transfers under saga, TCC, XA and two-phase messages
while the coordinator is SIGKILLed and restarted; every transaction must end whole (``tx_bank.py``).
The long run (100+ kills, on a PostgreSQL and on an embedded SQLite store) is
``tests/long/test_tx_crash_long.py``."""

from __future__ import annotations

import random
from pathlib import Path

import httpx
import pytest

from integration.tx_bank import Bank, CoordinatorProcess, bank_fixture, chaos  # noqa: F401  (the bank fixture)
from mezzo.storage.kv import KVStore, Put
from mezzo.testing.fixtures import spawn_node, start_node, wait_for
from mezzo.transactions.store import Active, TxLog, active_put
from mezzo.transactions.testing import Busi, serve_busi

pytestmark = pytest.mark.slow


async def test_transfers_survive_coordinator_kills(bank: Bank, postgres_url: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    coordinator = CoordinatorProcess(data, postgres_url)
    try:
        stats, problems = await chaos(bank, coordinator, iterations=2, clients=4, seed=7,
                                      run_for=lambda rng: rng.uniform(1.0, 2.5))
    finally:
        coordinator.kill()
    assert problems == []
    assert stats.kills == 2
    assert stats.statuses.get("succeed", 0) > 0


def test_a_coordinator_that_cannot_start_fails_at_once_with_its_output(tmp_path: Path) -> None:
    """The crash suite restarts nodes under load, so spawn_node waits long for readiness; a node that exits
    must not be waited for: the error comes when it exits, with the end of what it printed."""
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(RuntimeError, match="exited with") as failed:
        spawn_node(data, {"MEZZO_STORE": "nosuch://x"}, ready_timeout=600)
    assert "MEZZO_STORE" in str(failed.value)


async def test_the_check_sees_a_half_done_transfer(bank: Bank) -> None:
    """The checker itself: a failed saga whose debit ran and was never compensated is three violations."""
    gid = "bank-saga-half-done"
    bank.gids.add(gid)
    async with bank.pg.acquire() as conn, conn.transaction():
        await bank.apply_pg(conn, (gid, "01", "action", 1, -10, 0, 0), covered=True, fail=False)
    problems = await bank.check({gid: "failed"})
    assert any("moved money" in p for p in problems)
    assert any("never undone" in p for p in problems)
    assert any("not conserved" in p for p in problems)


async def test_submitted_tcc_is_never_cancelled_by_its_timeout(tmp_path: Path) -> None:
    """timeout_to_fail aborts a TCC left prepared; once submitted, its decision is made: the coordinator
    keeps confirming past the timeout and never cancels a branch it may have confirmed already."""
    node = await start_node(tmp_path / "data", targets=["transactions", "api"])
    try:
        async with serve_busi() as busi, httpx.AsyncClient(
                base_url=node.url, headers={"Authorization": f"Bearer {node.token}"}) as http:
            await _confirm_past_timeout(http, busi)
    finally:
        await node.node.stop()


async def _confirm_past_timeout(http: httpx.AsyncClient, busi: Busi) -> None:
    busi.on("confirm2", *[500] * 6)  # with backoff from 0.05 s, six errors outlast the 1 s timeout
    body = {"gid": f"tcc-timeout-{random.getrandbits(32)}", "mode": "tcc", "prepare": True,
            "options": {"retry_interval": 0.05, "timeout_to_fail": 1}}
    gid = (await http.post("/v1/tx/transactions", json=body)).json()["gid"]
    for n in ("1", "2"):
        urls = {"confirm": f"{busi.url}/confirm{n}", "cancel": f"{busi.url}/cancel{n}"}
        reply = await http.post(f"/v1/tx/transactions/{gid}/branches", json={"branch_id": f"0{n}", "urls": urls})
        assert reply.status_code == 201
    assert (await http.post(f"/v1/tx/transactions/{gid}:submit")).status_code == 200

    async def ended() -> str | None:
        status = (await http.get(f"/v1/tx/transactions/{gid}")).json()["status"]
        return status if status in ("succeed", "failed") else None

    assert await wait_for(ended, 30) == "succeed"
    assert busi.names(gid).count("confirm2") == 7
    assert not [n for n in busi.names(gid) if n.startswith("cancel")]


async def test_deferred_results_ride_on_the_next_write(sqlite_store: KVStore) -> None:
    """A branch result is not a commit of its own: it is written with the lease's next write."""
    log = TxLog(sqlite_store)
    await log.txn([active_put("g1", Active(due=0))])
    lease = await log.acquire("g1", "node-a", ttl=30)
    assert lease is not None
    lease.defer(Put("/tx/branch/g1/01/action", b"succeed"))
    assert await sqlite_store.get("/tx/branch/g1/01/action") is None
    await lease.write([Put("/tx/branch/g1/02/action", b"tried")])
    done = await sqlite_store.get("/tx/branch/g1/01/action")
    assert done is not None and done.value == b"succeed"
    assert lease.pending == {}
