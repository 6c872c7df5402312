"""Saga: ordered actions, compensation in reverse order of what ran, concurrency, retries, timeouts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from mezzo.node.outbound import Outbound
from mezzo.testing.fixtures import RunningNode, wait_for
from mezzo.transactions.coordinator import Coordinator

from .conftest import FAST, Busi, final_status, start_tx_node


def saga(busi: Busi, names: list[str], **extra: Any) -> dict[str, Any]:
    return {"mode": "saga", "steps": [{"action": f"{busi.url}/{n}", "compensate": f"{busi.url}/{n}-undo"}
                                      for n in names],
            "payloads": [{"step": n} for n in names], "options": {**FAST, **extra.pop("options", {})}, **extra}


async def test_saga_runs_every_action_in_order(http: httpx.AsyncClient, busi: Busi) -> None:
    response = await http.post("/v1/tx/transactions", json=saga(busi, ["out", "in"]))
    assert response.status_code == 201, response.text
    gid = response.json()["gid"]
    tx = await final_status(http, gid)
    assert tx["status"] == "succeed"
    assert busi.names(gid) == ["out", "in"]
    first = busi.calls[0]
    assert first.params == {"gid": gid, "trans_type": "saga", "branch_id": "01", "op": "action"}
    assert first.body == {"step": "out"}
    assert {(b["branch_id"], b["op"], b["status"]) for b in tx["branches"]} == {
        ("01", "action", "succeed"), ("02", "action", "succeed"),
        ("01", "compensate", "prepared"), ("02", "compensate", "prepared")}


async def test_the_log_holds_only_branches_that_were_tried(http: httpx.AsyncClient, busi: Busi,
                                                            txnode: RunningNode) -> None:
    """Branches still as their step describes them are not written; reads fill them in from the steps."""
    busi.on("b", 409)
    gid = (await http.post("/v1/tx/transactions", json=saga(busi, ["a", "b", "c"]))).json()["gid"]
    tx = await final_status(http, gid)
    assert tx["status"] == "failed"
    stored = (await txnode.node.service(Coordinator).log.store.range(f"/tx/branch/{gid}/")).items
    assert sorted(kv.key.rsplit("/", 2)[-2] + "/" + kv.key.rsplit("/", 1)[-1] for kv in stored) == [
        "01/action", "01/compensate", "02/action", "02/compensate"]  # c neither ran nor was compensated
    shown = {(b["branch_id"], b["op"]): b for b in tx["branches"]}
    assert len(shown) == 6 and shown[("03", "action")]["status"] == "prepared"
    assert shown[("03", "compensate")]["url"] == f"{busi.url}/c-undo"
    assert shown[("03", "action")]["data"] == '{"step":"c"}'
    dtm = (await http.get("/api/dtmsvr/query", params={"gid": gid})).json()
    assert len(dtm["branches"]) == 6


async def test_failed_action_compensates_in_reverse(http: httpx.AsyncClient, busi: Busi) -> None:
    busi.on("c", 409)
    gid = (await http.post("/v1/tx/transactions", json=saga(busi, ["a", "b", "c", "d"]))).json()["gid"]
    tx = await final_status(http, gid)
    assert tx["status"] == "failed"
    # the failed step is compensated too (it may have done part of its work); d never ran
    assert busi.names(gid) == ["a", "b", "c", "c-undo", "b-undo", "a-undo"]
    assert busi.calls[3].params["op"] == "compensate"
    # why it rolled back, as DTM records it: the failed branch and its answer
    assert tx["rollback_reason"].startswith("branch 03 action failed"), tx["rollback_reason"]
    dtm = (await http.get("/api/dtmsvr/query", params={"gid": gid})).json()
    assert dtm["transaction"]["rollback_reason"] == tx["rollback_reason"]


async def test_failure_said_in_a_200_body(http: httpx.AsyncClient, busi: Busi) -> None:
    busi.on("b", (200, b'{"dtm_result":"FAILURE"}'))
    gid = (await http.post("/v1/tx/transactions", json=saga(busi, ["a", "b"]))).json()["gid"]
    assert (await final_status(http, gid))["status"] == "failed"
    assert busi.names(gid) == ["a", "b", "b-undo", "a-undo"]


async def test_ongoing_and_errors_are_retried(http: httpx.AsyncClient, busi: Busi) -> None:
    busi.on("a", 425, (200, b'{"dtm_result":"ONGOING"}'), 500, 503)
    busi.on("b-undo", 500)
    gid = (await http.post("/v1/tx/transactions", json=saga(busi, ["a", "b"]))).json()["gid"]
    assert (await final_status(http, gid))["status"] == "succeed"
    assert busi.names(gid) == ["a"] * 5 + ["b"]


async def test_compensation_is_retried_until_it_succeeds(http: httpx.AsyncClient, busi: Busi) -> None:
    busi.on("b", 409)
    busi.on("a-undo", 500, 425)
    gid = (await http.post("/v1/tx/transactions", json=saga(busi, ["a", "b"]))).json()["gid"]
    assert (await final_status(http, gid))["status"] == "failed"
    assert busi.names(gid) == ["a", "b", "b-undo", "a-undo", "a-undo", "a-undo"]


async def test_concurrent_saga_follows_its_dependency_graph(http: httpx.AsyncClient, busi: Busi) -> None:
    body = saga(busi, ["a", "b", "c"], orders={2: [0, 1]}, options={"concurrent": True})
    gid = (await http.post("/v1/tx/transactions", json=body)).json()["gid"]
    assert (await final_status(http, gid))["status"] == "succeed"
    names = busi.names(gid)
    assert sorted(names[:2]) == ["a", "b"] and names[2] == "c"


async def test_concurrent_saga_compensates_dependents_first(http: httpx.AsyncClient, busi: Busi) -> None:
    busi.on("c", 409)
    body = saga(busi, ["a", "b", "c"], orders={1: [0], 2: [0]}, options={"concurrent": True})
    gid = (await http.post("/v1/tx/transactions", json=body)).json()["gid"]
    assert (await final_status(http, gid))["status"] == "failed"
    names = busi.names(gid)
    undo = [n for n in names if n.endswith("-undo")]
    assert set(undo) == {"a-undo", "b-undo", "c-undo"} and undo[-1] == "a-undo"


async def test_timeout_to_fail_rolls_back(http: httpx.AsyncClient, busi: Busi) -> None:
    busi.on("b", *([425] * 10_000))
    body = saga(busi, ["a", "b"], options={"timeout_to_fail": 0.5})
    gid = (await http.post("/v1/tx/transactions", json=body)).json()["gid"]
    tx = await final_status(http, gid)
    assert tx["status"] == "failed" and "timeout_to_fail" in tx["rollback_reason"]
    assert busi.names(gid)[-2:] == ["b-undo", "a-undo"]


async def test_retry_limit_gives_up_and_rolls_back(http: httpx.AsyncClient, busi: Busi) -> None:
    busi.on("a", *([500] * 100))
    body = saga(busi, ["a"], options={"retry_limit": 3, "retry_interval": 0.01})
    gid = (await http.post("/v1/tx/transactions", json=body)).json()["gid"]
    tx = await final_status(http, gid)
    assert tx["status"] == "failed" and busi.names(gid).count("a") == 3
    assert tx["rollback_reason"] == "gave up after 3 attempts"  # as many as were made


async def test_steps_without_compensation_are_skipped(http: httpx.AsyncClient, busi: Busi) -> None:
    busi.on("b", 409)
    body = saga(busi, ["a", "b"])
    body["steps"][0]["compensate"] = ""
    gid = (await http.post("/v1/tx/transactions", json=body)).json()["gid"]
    assert (await final_status(http, gid))["status"] == "failed"
    assert busi.names(gid) == ["a", "b", "b-undo"]


async def test_bad_input_is_a_400(http: httpx.AsyncClient, busi: Busi) -> None:
    cycle = saga(busi, ["a", "b"], orders={0: [1], 1: [0]}, options={"concurrent": True})
    assert (await http.post("/v1/tx/transactions", json=cycle)).status_code == 400
    assert (await http.post("/v1/tx/transactions", json={**saga(busi, ["a"]), "gid": "bad gid!"})).status_code == 400
    assert (await http.post("/v1/tx/transactions", json={**saga(busi, ["a"]), "payloads": [1, 2]})).status_code == 400
    assert (await http.post("/v1/tx/transactions", json={"mode": "nope"})).status_code == 400


async def test_a_url_the_coordinator_cannot_call_is_a_400_naming_its_field(http: httpx.AsyncClient,
                                                                         busi: Busi) -> None:
    """Not stored and retried for ever: refused at once, with the field and the reason."""
    cases = [
        ({"steps": [{"action": "localhost:9000/a", "compensate": ""}]}, "steps.0.action"),
        ({"steps": [{"action": f"{busi.url}/a", "compensate": "ftp://host/undo"}]}, "steps.0.compensate"),
        ({"steps": [{"action": "http:///no-host"}]}, "steps.0.action"),
        ({"steps": [{"action": "http://host:99999/a"}]}, "steps.0.action"),
        ({"steps": [{"action": "http://host/a b"}]}, "steps.0.action"),
        ({"steps": [{"action": "topic://orders"}]}, "steps.0.action"),  # a topic step is for messages only
    ]
    for change, field in cases:
        body = {**saga(busi, ["a"]), **change, "payloads": ["{}"]}
        answer = await http.post("/v1/tx/transactions", json=body)
        assert answer.status_code == 400, (change, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["errors"][0]["field"] == field, answer.json()
    message = {"mode": "msg", "steps": [{"action": "topic://"}], "prepare": True, "query_prepared": f"{busi.url}/q"}
    assert (await http.post("/v1/tx/transactions", json=message)).json()["errors"][0]["field"] == "steps.0.action"
    message = {"mode": "msg", "steps": [{"action": "topic://orders"}], "prepare": True, "query_prepared": "nowhere"}
    assert (await http.post("/v1/tx/transactions", json=message)).json()["errors"][0]["field"] == "query_prepared"
    tcc = (await http.post("/v1/tx/transactions", json={"mode": "tcc", "prepare": True})).json()["gid"]
    answer = await http.post(f"/v1/tx/transactions/{tcc}/branches",
                             json={"branch_id": "01", "urls": {"confirm": f"{busi.url}/c", "cancel": "busi/cancel"}})
    assert answer.status_code == 400 and answer.json()["errors"][0]["field"] == "cancel"
    listed = (await http.get("/v1/tx/transactions")).json()["items"]
    assert [t["gid"] for t in listed] == [tcc]  # nothing else was stored


async def test_submitting_twice_is_harmless(http: httpx.AsyncClient, busi: Busi) -> None:
    body = {**saga(busi, ["a"]), "gid": "twice-1"}
    assert (await http.post("/v1/tx/transactions", json=body)).status_code == 201
    assert (await http.post("/v1/tx/transactions", json=body)).status_code == 201
    await final_status(http, "twice-1")
    assert busi.names("twice-1") == ["a"]


async def test_allowed_hosts_bound_where_the_coordinator_calls(busi: Busi, store_url: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """MEZZO_TX_ALLOW_HOSTS: a URL to another host is a 400 naming its field; a stored transaction whose
    host is no longer allowed is not called (an error, retried in case the setting changes back)."""
    monkeypatch.setenv("MEZZO_TX_ALLOW_HOSTS", "127.0.0.1, *.svc.cluster.local")
    node = await start_tx_node(tmp_path / "data", store_url)
    try:
        async with httpx.AsyncClient(base_url=node.url, headers={"Authorization": f"Bearer {node.token}"},
                                     timeout=30) as http:
            gid = (await http.post("/v1/tx/transactions", json=saga(busi, ["a"]))).json()["gid"]
            assert (await final_status(http, gid))["status"] == "succeed"
            metadata = {**saga(busi, ["a"]), "steps": [{"action": "http://169.254.169.254/latest/meta-data"}]}
            answer = await http.post("/v1/tx/transactions", json=metadata)
            assert answer.status_code == 400 and answer.json()["errors"][0]["field"] == "steps.0.action"
            assert "MEZZO_TX_ALLOW_HOSTS" in answer.json()["detail"]

            busi.on("b", 425)  # not finished yet: the saga is called again after its interval
            gid = (await http.post("/v1/tx/transactions", json=saga(busi, ["b"]))).json()["gid"]
            await wait_for(lambda: busi.names(gid) == ["b"])
            node.node.service(Coordinator).outbound = Outbound.parse("elsewhere.example")

            async def refused_twice() -> bool:
                return (await http.get(f"/v1/tx/transactions/{gid}")).json()["attempts"] >= 2

            await wait_for(refused_twice)
            assert busi.names(gid) == ["b"]  # never called again while its host is not allowed
    finally:
        await node.node.stop()
