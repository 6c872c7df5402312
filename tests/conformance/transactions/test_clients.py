"""Clients: the Mezzo SDK (``client.tx``) and the unchanged ``dtmcli`` package over the DTM-compatible API."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from mezzo.sdk.tx import BranchFailed
from mezzo.testing.fixtures import RunningNode

from .conftest import FAST, Busi, final_status


async def test_sdk_saga_submits_on_exit(txnode: RunningNode, http: httpx.AsyncClient, busi: Busi) -> None:
    async with txnode.client() as client:
        async with client.tx.saga(**FAST) as saga:
            saga.add(f"{busi.url}/out", f"{busi.url}/out-undo", {"amount": 30})
            saga.add(f"{busi.url}/in", f"{busi.url}/in-undo", {"amount": 30})
        assert saga.gid
        assert (await final_status(http, saga.gid))["status"] == "succeed"
        assert busi.names(saga.gid) == ["out", "in"] and busi.calls[0].body == {"amount": 30}
        listed = await client.tx.list(status="succeed")
        assert saga.gid in [t["gid"] for t in listed["items"]]


async def test_sdk_saga_is_not_submitted_when_the_block_raises(txnode: RunningNode, busi: Busi) -> None:
    async with txnode.client() as client:
        with pytest.raises(RuntimeError):
            async with client.tx.saga(**FAST) as saga:
                saga.add(f"{busi.url}/out", f"{busi.url}/out-undo")
                raise RuntimeError("changed my mind")
        assert (await client.tx.list())["items"] == []


async def test_sdk_tcc_confirms_or_cancels(txnode: RunningNode, http: httpx.AsyncClient, busi: Busi) -> None:
    async with txnode.client() as client:
        async with client.tx.tcc(**FAST) as tcc:
            await tcc.call(f"{busi.url}/try", f"{busi.url}/confirm", f"{busi.url}/cancel", {"n": 1})
        assert (await final_status(http, tcc.gid))["status"] == "succeed"  # type: ignore[arg-type]
        assert busi.names(tcc.gid) == ["try", "confirm"]
        assert busi.calls[0].params["op"] == "try"
        busi.on("try2", 409)
        with pytest.raises(BranchFailed):
            async with client.tx.tcc(**FAST) as failing:
                await failing.call(f"{busi.url}/try", f"{busi.url}/confirm", f"{busi.url}/cancel")
                await failing.call(f"{busi.url}/try2", f"{busi.url}/confirm2", f"{busi.url}/cancel2")
        assert (await final_status(http, failing.gid))["status"] == "failed"  # type: ignore[arg-type]
        assert busi.names(failing.gid) == ["try", "try2", "cancel2", "cancel"]


async def test_sdk_message_outbox(txnode: RunningNode, http: httpx.AsyncClient, busi: Busi) -> None:
    async with txnode.client() as client:
        async with client.tx.message(f"{busi.url}/query", retry_interval=30) as msg:  # no check-back
            msg.add(f"{busi.url}/notify", {"order": 7})
            await msg.prepare()
            assert (await client.tx.get(msg.gid))["status"] == "prepared"  # type: ignore[arg-type]
        assert (await final_status(http, msg.gid))["status"] == "succeed"  # type: ignore[arg-type]
        assert busi.names(msg.gid) == ["notify"]


def dtm_url(node: RunningNode, token: str | None = None) -> str:
    host = node.url.removeprefix("http://")
    return f"http://mezzo:{token or node.token}@{host}/api/dtmsvr"


async def test_dtmcli_saga_tcc_and_msg(txnode: RunningNode, http: httpx.AsyncClient, busi: Busi) -> None:
    from dtmcli import msg as dtm_msg
    from dtmcli import saga as dtm_saga
    from dtmcli import tcc as dtm_tcc
    from dtmcli import utils

    dtm = dtm_url(txnode)
    gid = await asyncio.to_thread(utils.gen_gid, dtm)
    s = dtm_saga.Saga(dtm, gid).add({"amount": 30}, f"{busi.url}/out", f"{busi.url}/out-undo")
    s.add({"amount": 30}, f"{busi.url}/in", f"{busi.url}/in-undo")
    s.trans_base.retry_interval = 1
    await asyncio.to_thread(s.submit)
    assert (await final_status(http, gid))["status"] == "succeed"
    assert busi.names(gid) == ["out", "in"] and busi.calls[0].body == {"amount": 30}

    def tcc_body(tcc: dtm_tcc.Tcc) -> None:
        tcc.call_branch({"amount": 5}, f"{busi.url}/try", f"{busi.url}/confirm", f"{busi.url}/cancel")

    tgid = await asyncio.to_thread(dtm_tcc.tcc_global_transaction, dtm, "tcc-dtmcli", tcc_body)
    assert tgid == "tcc-dtmcli"
    assert (await final_status(http, tgid))["status"] == "succeed"
    assert busi.names(tgid) == ["try", "confirm"] and busi.calls[-1].body == {"amount": 5}

    m = dtm_msg.Msg(dtm, "msg-dtmcli").add({"n": 1}, f"{busi.url}/notify")
    await asyncio.to_thread(m.prepare, f"{busi.url}/query")
    await asyncio.to_thread(m.submit)
    assert (await final_status(http, "msg-dtmcli"))["status"] == "succeed"

    r = await asyncio.to_thread(__import__("requests").get, dtm + "/query", params={"gid": gid})
    body = r.json()
    assert body["transaction"]["status"] == "succeed" and body["transaction"]["trans_type"] == "saga"
    assert {b["op"] for b in body["branches"]} == {"action", "compensate"}
    listed = await asyncio.to_thread(__import__("requests").get, dtm + "/all", params={"limit": 2})
    assert len(listed.json()["transactions"]) == 2 and listed.json()["next_position"]


async def test_dtm_api_auth_and_failures(txnode: RunningNode, busi: Busi) -> None:
    base = txnode.url + "/api/dtmsvr"
    async with httpx.AsyncClient() as anon:
        assert (await anon.get(base + "/newGid")).status_code == 401
        assert (await anon.get(base + "/newGid", auth=("mezzo", "wrong"))).status_code == 401
        assert (await anon.get(base + "/newGid", auth=("mezzo", txnode.token))).json()["dtm_result"] == "SUCCESS"
        bearer = {"Authorization": f"Bearer {txnode.token}"}
        assert (await anon.get(base + "/newGid", headers=bearer)).status_code == 200
        # a saga cannot be aborted by the app; a second prepare with another mode is a conflict
        saga = {"gid": "d1", "trans_type": "saga", "steps": [{"action": f"{busi.url}/a", "compensate": ""}],
                "payloads": ["{}"], "wait_result": True}
        assert (await anon.post(base + "/submit", json=saga, headers=bearer)).json() == {"dtm_result": "SUCCESS"}
        assert (await anon.post(base + "/abort", json={"gid": "d1", "trans_type": "saga"},
                                headers=bearer)).status_code == 409
        busi.on("b", 409)
        failing = {**saga, "gid": "d2", "steps": [{"action": f"{busi.url}/b", "compensate": ""}]}
        answer = await anon.post(base + "/submit", json=failing, headers=bearer)
        assert answer.status_code == 409 and "FAILURE" in answer.text  # wait_result reports the outcome
        assert (await anon.post(base + "/submit", json={"gid": "d3", "trans_type": "nope"},
                                headers=bearer)).status_code == 400
        assert (await anon.post(base + "/prepare", content=b"not json", headers=bearer)).status_code == 400
        missing = await anon.get(base + "/query", params={"gid": "none"}, headers=bearer)
        assert missing.json() == {"transaction": None, "branches": []}


async def test_dtm_concurrent_saga_custom_data(txnode: RunningNode, http: httpx.AsyncClient, busi: Busi) -> None:
    body = {"gid": "dc", "trans_type": "saga", "retry_interval": 1,
            "steps": [{"action": f"{busi.url}/{n}", "compensate": ""} for n in "abc"], "payloads": ["{}"] * 3,
            "custom_data": '{"orders": {"2": [0, 1]}, "concurrent": true}'}
    answer = await http.post("/api/dtmsvr/submit", json=body)
    assert answer.status_code == 200, answer.text
    assert (await final_status(http, "dc"))["status"] == "succeed"
    assert busi.names("dc")[-1] == "c"
    assert (await http.get("/v1/tx/transactions/dc")).json()["options"]["concurrent"] is True
