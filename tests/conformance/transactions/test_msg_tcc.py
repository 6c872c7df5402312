"""Two-phase messages (prepare, submit, check-back, topics), TCC, and the legal state transitions."""

from __future__ import annotations

from pathlib import Path

import httpx

from mezzo.testing.fixtures import wait_for

from .conftest import FAST, Busi, final_status, start_tx_node


def msg(busi: Busi, gid: str, names: list[str], **extra: object) -> dict[str, object]:
    return {"gid": gid, "mode": "msg", "steps": [{"action": f"{busi.url}/{n}"} for n in names],
            "payloads": [{"m": n} for n in names], "query_prepared": f"{busi.url}/query",
            "options": FAST, "prepare": True, **extra}


async def test_message_prepare_then_submit(http: httpx.AsyncClient, busi: Busi) -> None:
    body = {**msg(busi, "m1", ["a", "b"]), "options": {**FAST, "retry_interval": 30}}  # no check-back meanwhile
    assert (await http.post("/v1/tx/transactions", json=body)).status_code == 201
    assert (await http.get("/v1/tx/transactions/m1")).json()["status"] == "prepared"
    assert (await http.post("/v1/tx/transactions/m1:submit")).status_code == 200
    assert (await final_status(http, "m1"))["status"] == "succeed"
    assert busi.names("m1") == ["a", "b"]
    assert busi.calls[0].params == {"gid": "m1", "trans_type": "msg", "branch_id": "01", "op": "action"}


async def test_unsubmitted_message_is_checked_back_and_committed(http: httpx.AsyncClient, busi: Busi) -> None:
    busi.on("query", 425)  # the local transaction is still running
    await http.post("/v1/tx/transactions", json=msg(busi, "m2", ["a"]))
    assert (await final_status(http, "m2"))["status"] == "succeed"
    assert busi.names("m2") == ["query", "query", "a"]
    assert busi.calls[0].params == {"gid": "m2", "trans_type": "msg", "branch_id": "00", "op": "msg"}


async def test_unsubmitted_message_whose_local_transaction_failed(http: httpx.AsyncClient, busi: Busi) -> None:
    busi.on("query", 409)
    await http.post("/v1/tx/transactions", json=msg(busi, "m3", ["a"]))
    tx = await final_status(http, "m3")
    assert tx["status"] == "failed" and "check-back" in tx["rollback_reason"]
    assert busi.names("m3") == ["query"]


async def test_message_branches_are_retried_until_they_succeed(http: httpx.AsyncClient, busi: Busi) -> None:
    busi.on("a", 409, 500)  # a message branch has no way back: it is retried
    await http.post("/v1/tx/transactions", json={**msg(busi, "m4", ["a"]), "prepare": False})
    assert (await final_status(http, "m4"))["status"] == "succeed"
    assert busi.names("m4") == ["a", "a", "a"]


async def test_aborted_message_fails_without_calls(http: httpx.AsyncClient, busi: Busi) -> None:
    await http.post("/v1/tx/transactions", json={**msg(busi, "m5", ["a"]), "options": {"retry_interval": 30}})
    assert (await http.post("/v1/tx/transactions/m5:abort")).json()["status"] == "failed"
    assert (await http.post("/v1/tx/transactions/m5:submit")).status_code == 409
    assert busi.names("m5") == []


async def tcc(http: httpx.AsyncClient, busi: Busi, gid: str, names: list[str]) -> None:
    assert (await http.post("/v1/tx/transactions", json={"gid": gid, "mode": "tcc", "prepare": True,
                                                          "options": FAST})).status_code == 201
    for index, name in enumerate(names, 1):
        response = await http.post(f"/v1/tx/transactions/{gid}/branches", json={
            "branch_id": f"{index:02d}", "data": {"n": name},
            "urls": {"confirm": f"{busi.url}/{name}-confirm", "cancel": f"{busi.url}/{name}-cancel"}})
        assert response.status_code == 201, response.text


async def test_tcc_submit_confirms_every_branch(http: httpx.AsyncClient, busi: Busi) -> None:
    await tcc(http, busi, "t1", ["a", "b"])
    await http.post("/v1/tx/transactions/t1:submit")
    assert (await final_status(http, "t1"))["status"] == "succeed"
    assert busi.names("t1") == ["a-confirm", "b-confirm"]
    assert busi.calls[0].params["op"] == "confirm" and busi.calls[0].body == {"n": "a"}


async def test_tcc_abort_cancels_in_reverse(http: httpx.AsyncClient, busi: Busi) -> None:
    await tcc(http, busi, "t2", ["a", "b"])
    assert (await http.post("/v1/tx/transactions/t2:abort")).status_code == 200
    assert (await final_status(http, "t2"))["status"] == "failed"
    assert busi.names("t2") == ["b-cancel", "a-cancel"]


async def test_tcc_left_prepared_times_out_and_cancels(http: httpx.AsyncClient, busi: Busi) -> None:
    await http.post("/v1/tx/transactions", json={"gid": "t3", "mode": "tcc", "prepare": True,
                                                 "options": {**FAST, "timeout_to_fail": 0.2}})
    await http.post("/v1/tx/transactions/t3/branches", json={
        "branch_id": "01", "urls": {"confirm": f"{busi.url}/c", "cancel": f"{busi.url}/x"}})
    tx = await final_status(http, "t3")
    assert tx["status"] == "failed" and busi.names("t3") == ["x"]


async def test_illegal_transitions_are_409(http: httpx.AsyncClient, busi: Busi) -> None:
    await tcc(http, busi, "t4", ["a"])
    await http.post("/v1/tx/transactions/t4:submit")
    await final_status(http, "t4")
    late = await http.post("/v1/tx/transactions/t4/branches", json={
        "branch_id": "02", "urls": {"confirm": f"{busi.url}/c", "cancel": f"{busi.url}/x"}})
    assert late.status_code == 409 and late.headers["content-type"] == "application/problem+json"
    assert late.json()["state"] == "succeed"  # every refused move names the state it found
    for verb in ("abort", "retry"):
        refused = await http.post(f"/v1/tx/transactions/t4:{verb}")
        assert refused.status_code == 409 and refused.json()["state"] == "succeed"
    assert (await http.post("/v1/tx/transactions", json={"gid": "t5", "mode": "tcc"})).status_code == 409
    other = await http.post("/v1/tx/transactions", json={**msg(busi, "t4", ["a"])})
    assert other.status_code == 409
    assert (await http.get("/v1/tx/transactions/nope")).status_code == 404


async def test_a_submitted_tcc_cannot_be_aborted(http: httpx.AsyncClient, busi: Busi) -> None:
    """Submitted, a TCC has decided to commit (some branches may be confirmed): no abort, operator or not."""
    busi.on("a-confirm", *[500] * 30)  # keeps it submitted while the confirm is retried
    await tcc(http, busi, "t6", ["a"])
    assert (await http.post("/v1/tx/transactions/t6:submit")).status_code == 200
    refused = await http.post("/v1/tx/transactions/t6:abort")
    assert refused.status_code == 409 and refused.json()["state"] == "submitted"
    assert "decided to commit" in refused.json()["detail"]


async def test_operator_abort_rolls_back_a_running_saga(http: httpx.AsyncClient, busi: Busi) -> None:
    busi.on("b", *([425] * 10_000))
    body = {"gid": "s1", "mode": "saga", "options": {**FAST, "retry_interval": 0.2},
            "steps": [{"action": f"{busi.url}/{n}", "compensate": f"{busi.url}/{n}-undo"} for n in "ab"]}
    await http.post("/v1/tx/transactions", json=body)
    await wait_for(lambda: "b" in busi.names("s1"))
    assert (await http.post("/v1/tx/transactions/s1:abort")).status_code == 200
    assert (await final_status(http, "s1"))["status"] == "failed"
    assert busi.names("s1")[-2:] == ["b-undo", "a-undo"]


async def test_message_publishes_to_a_topic(store_url: str, tmp_path: Path, busi: Busi) -> None:
    running = await start_tx_node(tmp_path / "data", store_url, ["transactions", "messaging", "api"])
    try:
        async with running.client() as client:
            await client.messaging.publish("mezzo-tx-events", {"hello": 1})  # the events topic exists: events flow
            await client.request("POST", "/v1/tx/transactions", json={
                "gid": "mt", "mode": "msg", "steps": [{"action": "topic://orders"}],
                "payloads": [{"order": 7}], "options": FAST})
            async with httpx.AsyncClient(base_url=running.url, headers={"Authorization": f"Bearer {running.token}"}) as http:
                assert (await final_status(http, "mt"))["status"] == "succeed"
            sub = client.messaging.subscribe("orders", "g", wait=5)
            messages = await wait_for(lambda: sub.pull())
            assert messages[0].data == {"order": 7}
            events = client.messaging.subscribe("mezzo-tx-events", "g", wait=0.2)
            seen: list[str] = []

            async def states() -> bool:
                seen.extend(m.attributes.get("ce.type", "") for m in await events.pull())
                return "dev.mezzo.tx.succeed" in seen

            await wait_for(states)
            assert "dev.mezzo.tx.submitted" in seen
    finally:
        await running.node.stop()
