"""Audit: bad input to either transactions API is a 400 ``application/problem+json`` naming the field,
never a 500, and nothing of it is stored."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from .conftest import Busi

DTM = "/api/dtmsvr"


def saga(busi: Busi, gid: str, change: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"gid": gid, "trans_type": "saga", "steps": [{"action": f"{busi.url}/a", "compensate": ""}],
            "payloads": ["{}"], **(change or {})}


async def refused(http: httpx.AsyncClient, method: str, path: str, body: Any, field: str) -> None:
    answer = await http.request(method, path, json=body)
    assert answer.status_code == 400, (path, body, answer.status_code, answer.text)
    assert answer.headers["content-type"] == "application/problem+json", answer.headers
    problem = answer.json()
    assert problem["status"] == 400 and problem["detail"]
    assert [e["field"] for e in problem["errors"]][:1] == [field], (body, problem)


DTM_SUBMITS = [
    ({"steps": 5}, "steps"),
    ({"steps": "abc"}, "steps"),
    ({"steps": [{"action": 5}]}, "steps"),
    ({"steps": [["x"]]}, "steps"),
    ({"payloads": "{}"}, "payloads"),
    ({"payloads": [{}]}, "payloads"),
    ({"custom_data": {"orders": {}}}, "custom_data"),
    ({"custom_data": '{"orders": {"x": [0]}}'}, "custom_data"),
    ({"query_prepared": 5}, "query_prepared"),
    ({"trans_type": ["saga"]}, "trans_type"),
    ({"trans_type": "nope"}, "trans_type"),
    ({"retry_interval": -1}, "retry_interval"),
    ({"timeout_to_fail": "soon"}, "timeout_to_fail"),
    ({"request_timeout": -5}, "request_timeout"),
    ({"retry_limit": -1}, "retry_limit"),
    ({"branch_headers": "x"}, "branch_headers"),
    ({"branch_headers": {"bad name": "v"}}, "branch_headers"),
    ({"gid": "bad gid!"}, "gid"),
]


@pytest.mark.parametrize(("change", "field"), DTM_SUBMITS, ids=[f for _, f in DTM_SUBMITS])
async def test_dtm_submit_refuses_bad_fields(http: httpx.AsyncClient, busi: Busi, change: dict[str, Any],
                                             field: str) -> None:
    await refused(http, "POST", f"{DTM}/submit", saga(busi, "bad-dtm", change), field)
    await refused(http, "POST", f"{DTM}/prepare", saga(busi, "bad-dtm", {"trans_type": "msg", **change}), field)
    assert (await http.get(f"{DTM}/query", params={"gid": "bad-dtm"})).json()["transaction"] is None


async def test_dtm_bodies_that_are_not_transactions(http: httpx.AsyncClient) -> None:
    for path in ("submit", "prepare", "abort", "registerBranch"):
        for body in ([1], {"gid": 5}, {}, "gid"):
            await refused(http, "POST", f"{DTM}/{path}", body, "gid")
        answer = await http.post(f"{DTM}/{path}", content=b"{not json", headers={"content-type": "application/json"})
        assert answer.status_code == 400 and answer.headers["content-type"] == "application/problem+json"


async def test_dtm_register_branch_refuses_bad_fields(http: httpx.AsyncClient, busi: Busi) -> None:
    for gid, mode in (("bad-tcc", "tcc"), ("bad-xa", "xa")):
        answer = await http.post(f"{DTM}/prepare", json={"gid": gid, "trans_type": mode})
        assert answer.status_code == 200, answer.text
    ok = f"{busi.url}/ok"
    tcc = {"gid": "bad-tcc", "trans_type": "tcc", "branch_id": "01", "confirm": ok, "cancel": ok}
    for change, field in [({"confirm": 5}, "confirm"), ({"cancel": {"u": 1}}, "cancel"), ({"confirm": ""}, "confirm"),
                          ({"cancel": "ftp://host/x"}, "cancel"), ({"branch_id": ""}, "branch_id"),
                          ({"branch_id": "a/b"}, "branch_id"), ({"trans_type": "nope"}, "trans_type")]:
        await refused(http, "POST", f"{DTM}/registerBranch", {**tcc, **change}, field)
    xa = {"gid": "bad-xa", "trans_type": "xa", "branch_id": "01", "url": ok}
    for change, field in [({"url": 5}, "url"), ({"url": ""}, "url"), ({"url": "nowhere"}, "url"),
                          ({"url": ["http://x/"]}, "url")]:
        await refused(http, "POST", f"{DTM}/registerBranch", {**xa, **change}, field)
    for gid in ("bad-tcc", "bad-xa"):
        assert (await http.get(f"{DTM}/query", params={"gid": gid})).json()["branches"] == []


async def test_dtm_queries_refuse_bad_parameters(http: httpx.AsyncClient) -> None:
    for path, params, field in [("query", {}, "gid"), ("all", {"limit": 0}, "limit"),
                                ("all", {"limit": "many"}, "limit")]:
        answer = await http.get(f"{DTM}/{path}", params=params)
        assert answer.status_code == 400 and answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["errors"][0]["field"] == field


async def test_mezzo_api_refuses_bad_fields(http: httpx.AsyncClient, busi: Busi) -> None:
    base = {"mode": "saga", "steps": [{"action": f"{busi.url}/a"}]}
    for change, field in [({"mode": "nope"}, "mode"), ({"steps": "x"}, "steps"),
                          ({"options": {"retry_interval": -1}}, "options.retry_interval"),
                          ({"options": {"request_timeout": 0}}, "options.request_timeout"),
                          ({"options": {"branch_headers": {"a b": "c"}}}, "options.branch_headers"),
                          ({"namespace": ""}, "namespace"), ({"unknown": 1}, "unknown"),
                          ({"payloads": [1, 2]}, "payloads"), ({"gid": "x" * 200}, "gid"),
                          ({"orders": {"0": [7]}, "options": {"concurrent": True}}, "orders")]:
        await refused(http, "POST", "/v1/tx/transactions", {**base, **change}, field)
    assert (await http.get("/v1/tx/transactions")).json()["items"] == []


async def test_mezzo_submit_of_a_message_refuses_bad_steps(http: httpx.AsyncClient, busi: Busi) -> None:
    """``:submit`` may give a prepared message its steps: they are checked like those of a create."""
    body = {"gid": "bad-msg", "mode": "msg", "prepare": True, "query_prepared": f"{busi.url}/q",
            "options": {"retry_interval": 300}}
    assert (await http.post("/v1/tx/transactions", json=body)).status_code == 201
    action = {"action": f"{busi.url}/a"}
    for change, field in [({"steps": ["x"]}, "steps"), ({"steps": [{"action": 5}]}, "steps"),
                          ({"steps": {"action": "x"}}, "steps"), ({"steps": [action], "payloads": 5}, "payloads"),
                          ({"steps": [action], "payloads": "{}"}, "payloads"),
                          ({"steps": [action], "payloads": [{}, {}]}, "payloads"),
                          ({"steps": [{"action": "ftp://x/"}]}, "steps.0.action")]:
        await refused(http, "POST", "/v1/tx/transactions/bad-msg:submit", change, field)
    stored = (await http.get("/v1/tx/transactions/bad-msg")).json()
    assert stored["status"] == "prepared" and stored["steps"] == [] and stored["payloads"] == []
    ok = await http.post("/v1/tx/transactions/bad-msg:submit", json={"steps": [action], "payloads": [{"n": 1}]})
    assert ok.status_code == 200 and ok.json()["steps"] == [{"action": action["action"], "compensate": ""}]


async def test_mezzo_register_branch_refuses_bad_fields(http: httpx.AsyncClient, busi: Busi) -> None:
    assert (await http.post("/v1/tx/transactions", json={"gid": "bad-reg", "mode": "tcc",
                                                          "prepare": True})).status_code == 201
    ok = f"{busi.url}/ok"
    for body, field in [({"branch_id": "01", "urls": {"confirm": ok}}, "cancel"),
                        ({"branch_id": "01", "urls": {"confirm": ok, "cancel": 5}}, "urls.cancel"),
                        ({"branch_id": "", "urls": {"confirm": ok, "cancel": ok}}, "branch_id"),
                        ({"branch_id": "a/b", "urls": {"confirm": ok, "cancel": ok}}, "branch_id"),
                        ({"urls": {"confirm": ok, "cancel": ok}}, "branch_id")]:
        await refused(http, "POST", "/v1/tx/transactions/bad-reg/branches", body, field)
    assert (await http.get("/v1/tx/transactions/bad-reg")).json()["branches"] == []
