"""Audit: ``mezzo tx`` commands each do their own thing — ``abort`` rolls a prepared transaction back,
``list`` filters, ``show`` shows branches, ``retry`` runs one now, and refusals exit non-zero."""

from __future__ import annotations

import json

import httpx

from integration.test_tx_cli import busi, mezzo  # noqa: F401  (the busi fixture)
from mezzo.testing.fixtures import RunningNode, wait_for
from mezzo.transactions.testing import Busi

SLOW = {"retry_interval": 30, "request_timeout": 5}


async def prepared_tcc(http: httpx.AsyncClient, busi: Busi, gid: str) -> None:  # noqa: F811
    body = {"gid": gid, "mode": "tcc", "prepare": True, "options": {"retry_interval": 0.05}}
    assert (await http.post("/v1/tx/transactions", json=body)).status_code == 201
    for branch in ("01", "02"):
        urls = {"confirm": f"{busi.url}/{gid}-confirm{branch}", "cancel": f"{busi.url}/{gid}-cancel{branch}"}
        answer = await http.post(f"/v1/tx/transactions/{gid}/branches", json={"branch_id": branch, "urls": urls})
        assert answer.status_code == 201


async def status(http: httpx.AsyncClient, gid: str) -> str:
    return str((await http.get(f"/v1/tx/transactions/{gid}")).json()["status"])


async def test_cli_abort_rolls_back_a_prepared_transaction(node: RunningNode, busi: Busi) -> None:  # noqa: F811
    async with httpx.AsyncClient(base_url=node.url, headers={"Authorization": f"Bearer {node.token}"}) as http:
        await prepared_tcc(http, busi, "cli-abort")
        code, output = await mezzo(node, "tx", "abort", "cli-abort")
        assert code == 0, output
        assert "cli-abort aborting" in output

        async def failed() -> bool:
            return await status(http, "cli-abort") == "failed"

        await wait_for(failed)
        assert busi.names("cli-abort") == ["cli-abort-cancel02", "cli-abort-cancel01"]
        code, output = await mezzo(node, "tx", "abort", "no-such-gid")
        assert code == 1 and "404" in output


async def test_cli_list_filters_and_show_lists_branches(node: RunningNode, busi: Busi) -> None:  # noqa: F811
    async with httpx.AsyncClient(base_url=node.url, headers={"Authorization": f"Bearer {node.token}"}) as http:
        await prepared_tcc(http, busi, "cli-tcc")
        saga = {"gid": "cli-saga", "mode": "saga", "options": {"retry_interval": 0.05},
                "steps": [{"action": f"{busi.url}/a", "compensate": f"{busi.url}/a-undo"}]}
        assert (await http.post("/v1/tx/transactions", json=saga)).status_code == 201

        async def saga_done() -> bool:
            return await status(http, "cli-saga") == "succeed"

        await wait_for(saga_done)

        code, listing = await mezzo(node, "tx", "list", "--mode", "tcc")
        assert code == 0 and "cli-tcc" in listing and "cli-saga" not in listing
        code, listing = await mezzo(node, "tx", "list", "--status", "succeed")
        assert code == 0 and "cli-saga" in listing and "cli-tcc" not in listing
        code, listing = await mezzo(node, "tx", "list", "-o", "json")
        assert code == 0
        assert sorted(t["gid"] for t in json.loads(listing)["items"]) == ["cli-saga", "cli-tcc"]
        code, page = await mezzo(node, "tx", "list", "--limit", "1", "-o", "json")
        assert code == 0 and [t["gid"] for t in json.loads(page)["items"]] == ["cli-saga"]
        code, rest = await mezzo(node, "tx", "list", "--after", "cli-saga", "-o", "json")
        assert code == 0 and [t["gid"] for t in json.loads(rest)["items"]] == ["cli-tcc"]

        code, shown = await mezzo(node, "tx", "show", "cli-tcc", "-o", "json")
        assert code == 0
        tx = json.loads(shown)
        assert tx["status"] == "prepared"
        assert sorted((b["branch_id"], b["op"]) for b in tx["branches"]) == [
            ("01", "cancel"), ("01", "confirm"), ("02", "cancel"), ("02", "confirm")]
        code, shown = await mezzo(node, "tx", "show", "cli-tcc")
        assert code == 0 and "prepared" in shown and "confirm" in shown and "cancel" in shown
        code, missing = await mezzo(node, "tx", "show", "no-such-gid")
        assert code == 1 and "404" in missing


async def test_cli_retry_runs_an_unfinished_transaction_now(node: RunningNode, busi: Busi) -> None:  # noqa: F811
    async with httpx.AsyncClient(base_url=node.url, headers={"Authorization": f"Bearer {node.token}"}) as http:
        busi.on("later", 425)
        body = {"gid": "cli-retry", "mode": "saga", "options": SLOW, "steps": [{"action": f"{busi.url}/later"}]}
        assert (await http.post("/v1/tx/transactions", json=body)).status_code == 201
        await wait_for(lambda: busi.names("cli-retry") == ["later"])

        async def handed_back() -> bool:
            tx = (await http.get("/v1/tx/transactions/cli-retry")).json()
            return tx["status"] == "submitted" and tx["updated"] > tx["created"]

        await wait_for(handed_back)
        code, output = await mezzo(node, "tx", "retry", "cli-retry")
        assert code == 0 and "cli-retry submitted: due now" in output

        async def done() -> bool:
            return await status(http, "cli-retry") == "succeed"

        await wait_for(done)  # without the retry it would wait out its 30 s interval
        assert busi.names("cli-retry") == ["later", "later"]
        code, output = await mezzo(node, "tx", "retry", "cli-retry")
        assert code == 1 and "409" in output
