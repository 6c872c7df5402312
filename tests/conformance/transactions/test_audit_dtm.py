"""Audit: DTM's HTTP API endpoint by endpoint — XA and TCC through ``prepare``/``registerBranch``/
``submit``/``abort``, the JSON of ``query`` and the paging of ``all``, the query parameters branches are
called with — and the unchanged ``dtmcli`` package on its failure and check-back paths."""

from __future__ import annotations

import asyncio
import base64
from datetime import datetime
from typing import Any

import httpx
import orjson
import pytest

from mezzo.testing.fixtures import RunningNode

from .conftest import FAST, Busi, final_status
from .test_clients import dtm_url

DTM = "/api/dtmsvr"
SUCCESS = {"dtm_result": "SUCCESS"}


async def dtm(http: httpx.AsyncClient, path: str, body: dict[str, Any], status: int = 200) -> dict[str, Any]:
    answer = await http.post(f"{DTM}/{path}", json=body)
    assert answer.status_code == status, (path, body, answer.text)
    return answer.json()  # type: ignore[no-any-return]


def params(busi: Busi, gid: str) -> list[tuple[str, dict[str, str], Any]]:
    return [(c.name, c.params, c.body) for c in busi.calls if c.params.get("gid") == gid]


async def test_xa_through_the_dtm_api(http: httpx.AsyncClient, busi: Busi) -> None:
    for gid in ("dtm-xa-1", "dtm-xa-2"):
        assert await dtm(http, "prepare", {"gid": gid, "trans_type": "xa", "retry_interval": 1}) == SUCCESS
        for branch, data in (("01", '{"n": 1}'), ("02", {"n": 2})):
            body = {"gid": gid, "trans_type": "xa", "branch_id": branch, "url": f"{busi.url}/xa{branch}",
                    "data": data}
            assert await dtm(http, "registerBranch", body) == SUCCESS
    assert await dtm(http, "submit", {"gid": "dtm-xa-1", "trans_type": "xa"}) == SUCCESS
    assert await dtm(http, "abort", {"gid": "dtm-xa-2", "trans_type": "xa"}) == SUCCESS
    assert (await final_status(http, "dtm-xa-1"))["status"] == "succeed"
    assert (await final_status(http, "dtm-xa-2"))["status"] == "failed"
    assert params(busi, "dtm-xa-1") == [
        ("xa01", {"gid": "dtm-xa-1", "trans_type": "xa", "branch_id": "01", "op": "commit"}, {"n": 1}),
        ("xa02", {"gid": "dtm-xa-1", "trans_type": "xa", "branch_id": "02", "op": "commit"}, {"n": 2})]
    assert params(busi, "dtm-xa-2") == [  # rolled back in reverse
        ("xa02", {"gid": "dtm-xa-2", "trans_type": "xa", "branch_id": "02", "op": "rollback"}, {"n": 2}),
        ("xa01", {"gid": "dtm-xa-2", "trans_type": "xa", "branch_id": "01", "op": "rollback"}, {"n": 1})]
    query = (await http.get(f"{DTM}/query", params={"gid": "dtm-xa-1"})).json()
    assert {(b["branch_id"], b["op"], b["status"]) for b in query["branches"]} == {
        ("01", "commit", "succeed"), ("02", "commit", "succeed"),
        ("01", "rollback", "prepared"), ("02", "rollback", "prepared")}


async def test_tcc_through_the_dtm_api(http: httpx.AsyncClient, busi: Busi) -> None:
    gid = "dtm-tcc-1"
    assert await dtm(http, "prepare", {"gid": gid, "trans_type": "tcc"}) == SUCCESS
    assert await dtm(http, "prepare", {"gid": gid, "trans_type": "tcc"}) == SUCCESS  # a repeat is harmless
    first = {"gid": gid, "trans_type": "tcc", "branch_id": "01", "status": "prepared", "data": '{"n": 1}',
             "confirm": f"{busi.url}/confirm1", "cancel": f"{busi.url}/cancel1"}
    assert await dtm(http, "registerBranch", first) == SUCCESS
    assert await dtm(http, "registerBranch", first) == SUCCESS  # dtmcli may register again after a lost answer
    await dtm(http, "registerBranch", {**first, "confirm": f"{busi.url}/elsewhere"}, 409)
    second = {**first, "branch_id": "02", "confirm": f"{busi.url}/confirm2", "cancel": f"{busi.url}/cancel2"}
    assert await dtm(http, "registerBranch", second) == SUCCESS
    assert await dtm(http, "abort", {"gid": gid, "trans_type": "tcc"}) == SUCCESS
    assert (await final_status(http, gid))["status"] == "failed"
    assert await dtm(http, "abort", {"gid": gid, "trans_type": "tcc"}) == SUCCESS  # a repeated abort too
    refused = await http.post(f"{DTM}/submit", json={"gid": gid, "trans_type": "tcc"})
    assert refused.status_code == 409  # dtmcli reads a 409 as FAILURE
    late = await http.post(f"{DTM}/registerBranch", json={**second, "branch_id": "03"})
    assert late.status_code == 409
    assert params(busi, gid) == [
        ("cancel2", {"gid": gid, "trans_type": "tcc", "branch_id": "02", "op": "cancel"}, {"n": 1}),
        ("cancel1", {"gid": gid, "trans_type": "tcc", "branch_id": "01", "op": "cancel"}, {"n": 1})]


def _when(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


async def test_query_answers_dtms_json(http: httpx.AsyncClient, busi: Busi) -> None:
    busi.on("b", 409)
    options = {"retry_interval": 2, "request_timeout": 3, "timeout_to_fail": 100, "retry_limit": 4,
               "branch_headers": {"X-Tenant": "t1"}}
    for gid, names in (("dtm-q-ok", "a"), ("dtm-q-failed", "ab")):
        body = {"gid": gid, "trans_type": "saga", "wait_result": True, "custom_data": '{"any": "thing"}', **options,
                "steps": [{"action": f"{busi.url}/{n}", "compensate": f"{busi.url}/{n}-undo"} for n in names],
                "payloads": [orjson.dumps({"step": n}).decode() for n in names]}
        await http.post(f"{DTM}/submit", json=body)
        await final_status(http, gid)
    ok = (await http.get(f"{DTM}/query", params={"gid": "dtm-q-ok"})).json()
    tx = ok["transaction"]
    assert {"gid", "trans_type", "status", "steps", "payloads", "query_prepared", "protocol", "custom_data",
            "create_time", "update_time", "finish_time", "rollback_time", "rollback_reason", "options",
            "next_cron_interval"} <= set(tx)
    assert (tx["gid"], tx["trans_type"], tx["status"], tx["protocol"]) == ("dtm-q-ok", "saga", "succeed", "http")
    assert tx["steps"] == [{"action": f"{busi.url}/a", "compensate": f"{busi.url}/a-undo"}]
    assert tx["payloads"] == ['{"step":"a"}'] and tx["custom_data"] == '{"any": "thing"}'
    created, finished = _when(tx["create_time"]), _when(tx["finish_time"])
    assert created is not None and finished is not None and created <= finished and tx["rollback_time"] is None
    stored = orjson.loads(tx["options"])
    assert {k: stored[k] for k in options} == {**options, "retry_interval": 2.0, "request_timeout": 3.0,
                                               "timeout_to_fail": 100.0}
    assert tx["next_cron_interval"] == 2
    branches = {(b["branch_id"], b["op"]): b for b in ok["branches"]}
    action = branches[("01", "action")]
    assert {"gid", "branch_id", "op", "url", "bin_data", "status", "create_time", "finish_time",
            "rollback_time"} <= set(action)
    assert base64.b64decode(action["bin_data"]) == b'{"step":"a"}'
    assert action["status"] == "succeed" and _when(action["finish_time"]) is not None
    assert branches[("01", "compensate")]["status"] == "prepared"

    failed = (await http.get(f"{DTM}/query", params={"gid": "dtm-q-failed"})).json()
    assert failed["transaction"]["status"] == "failed" and failed["transaction"]["finish_time"] is None
    assert _when(failed["transaction"]["rollback_time"]) is not None
    states = {(b["branch_id"], b["op"]): b["status"] for b in failed["branches"]}
    assert states == {("01", "action"): "succeed", ("02", "action"): "failed",
                      ("01", "compensate"): "succeed", ("02", "compensate"): "succeed"}
    assert _when(next(b for b in failed["branches"] if b["status"] == "failed")["rollback_time"]) is not None


async def test_all_pages_through_every_transaction(http: httpx.AsyncClient, busi: Busi) -> None:
    gids = [f"dtm-page-{n}" for n in range(5)]
    for gid in gids:
        body = {"gid": gid, "trans_type": "saga", "steps": [{"action": f"{busi.url}/a", "compensate": ""}],
                "payloads": ["{}"], "wait_result": True}
        assert await dtm(http, "submit", body) == SUCCESS
    seen: list[str] = []
    position = ""
    for _ in range(20):
        page = (await http.get(f"{DTM}/all", params={"position": position, "limit": 2})).json()
        assert set(page) == {"transactions", "next_position"} and len(page["transactions"]) <= 2
        seen += [t["gid"] for t in page["transactions"]]
        assert all(t["trans_type"] == "saga" and t["status"] == "succeed" for t in page["transactions"])
        position = page["next_position"]
        if not position:
            break
    assert seen == gids  # each once, in gid order, and the walk ends


@pytest.fixture
def dtm_base(txnode: RunningNode) -> str:
    return dtm_url(txnode)


async def test_dtmcli_tcc_whose_try_fails_is_aborted_and_cancelled(dtm_base: str, http: httpx.AsyncClient,
                                                                   busi: Busi) -> None:
    from dtmcli import tcc as dtm_tcc

    busi.on("try2", 409)

    def body(tcc: dtm_tcc.Tcc) -> None:
        tcc.call_branch({"n": 1}, f"{busi.url}/try1", f"{busi.url}/confirm1", f"{busi.url}/cancel1")
        tcc.call_branch({"n": 2}, f"{busi.url}/try2", f"{busi.url}/confirm2", f"{busi.url}/cancel2")

    gid = await asyncio.to_thread(dtm_tcc.tcc_global_transaction, dtm_base, "dtmcli-tcc-fails", body)
    assert gid == ""  # dtmcli aborted it
    assert (await final_status(http, "dtmcli-tcc-fails"))["status"] == "failed"
    assert busi.names("dtmcli-tcc-fails") == ["try1", "try2", "cancel2", "cancel1"]
    assert busi.calls[-1].body == {"n": 1} and busi.calls[-1].params["op"] == "cancel"


async def test_dtmcli_saga_waiting_for_a_failed_result_raises(dtm_base: str, http: httpx.AsyncClient,
                                                              busi: Busi) -> None:
    from dtmcli import saga as dtm_saga
    from dtmcli import utils

    busi.on("in", 409)
    saga = dtm_saga.Saga(dtm_base, "dtmcli-saga-fails").add({"n": 1}, f"{busi.url}/out", f"{busi.url}/out-undo")
    saga.add({"n": 1}, f"{busi.url}/in", f"{busi.url}/in-undo")
    saga.trans_base.wait_result = True
    saga.trans_base.retry_interval = 1
    with pytest.raises(utils.DTMFailureError):
        await asyncio.to_thread(saga.submit)
    assert (await final_status(http, "dtmcli-saga-fails"))["status"] == "failed"
    assert busi.names("dtmcli-saga-fails") == ["out", "in", "in-undo", "out-undo"]


async def test_dtmcli_message_left_prepared_is_checked_back(dtm_base: str, http: httpx.AsyncClient,
                                                            busi: Busi) -> None:
    """The app prepares and dies before submit: Mezzo asks its query endpoint, as DTM would."""
    from dtmcli import msg as dtm_msg

    busi.on("query-lost", 409)
    for gid, query in (("dtmcli-msg-done", "query-done"), ("dtmcli-msg-lost", "query-lost")):
        message = dtm_msg.Msg(dtm_base, gid).add({"order": 7}, f"{busi.url}/notify")
        message.trans_base.retry_interval = 1
        await asyncio.to_thread(message.prepare, f"{busi.url}/{query}")
    assert (await final_status(http, "dtmcli-msg-done"))["status"] == "succeed"
    assert (await final_status(http, "dtmcli-msg-lost"))["status"] == "failed"
    assert params(busi, "dtmcli-msg-done") == [
        ("query-done", {"gid": "dtmcli-msg-done", "trans_type": "msg", "branch_id": "00", "op": "msg"}, None),
        ("notify", {"gid": "dtmcli-msg-done", "trans_type": "msg", "branch_id": "01", "op": "action"},
         {"order": 7})]
    assert busi.names("dtmcli-msg-lost") == ["query-lost"]


async def test_transactions_made_through_one_api_are_seen_through_the_other(http: httpx.AsyncClient,
                                                                          busi: Busi) -> None:
    body = {"gid": "both-apis", "mode": "tcc", "prepare": True, "options": FAST}
    assert (await http.post("/v1/tx/transactions", json=body)).status_code == 201
    branch = {"gid": "both-apis", "trans_type": "tcc", "branch_id": "01", "data": "{}",
              "confirm": f"{busi.url}/c", "cancel": f"{busi.url}/x"}
    assert await dtm(http, "registerBranch", branch) == SUCCESS
    assert (await http.post("/v1/tx/transactions/both-apis:submit")).status_code == 200
    assert (await final_status(http, "both-apis"))["status"] == "succeed"
    query = (await http.get(f"{DTM}/query", params={"gid": "both-apis"})).json()
    assert query["transaction"]["trans_type"] == "tcc" and query["transaction"]["status"] == "succeed"
    assert busi.names("both-apis") == ["c"]
