"""Audit: every call a transaction can receive, in every global state: legal moves change the state,
anything else is a 409 problem naming the state found, and a refused call changes nothing."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from mezzo.testing.fixtures import RunningNode, wait_for

from .conftest import Busi, final_status

SLOW = {"retry_interval": 30, "request_timeout": 5}  # a failing branch is retried much later than the test runs
STATES = ("prepared", "submitted", "aborting", "succeed", "failed")
CALLS = ("register", "submit", "abort", "retry", "prepare", "as-saga")

# (state, call) -> (status code, states the transaction may be in afterwards)
EXPECTED: dict[tuple[str, str], tuple[int, set[str]]] = {
    ("prepared", "register"): (201, {"prepared"}),
    ("prepared", "submit"): (200, {"submitted", "succeed"}),
    ("prepared", "abort"): (200, {"aborting", "failed"}),
    ("prepared", "retry"): (200, {"prepared"}),
    ("prepared", "prepare"): (201, {"prepared"}),  # a repeated prepare is harmless
    ("submitted", "register"): (409, {"submitted"}),
    ("submitted", "submit"): (200, {"submitted"}),  # a repeated submit is harmless
    ("submitted", "abort"): (409, {"submitted"}),  # a submitted TCC decided to commit
    ("submitted", "retry"): (200, {"submitted"}),
    ("submitted", "prepare"): (409, {"submitted"}),
    ("aborting", "register"): (409, {"aborting"}),
    ("aborting", "submit"): (409, {"aborting"}),
    ("aborting", "abort"): (200, {"aborting"}),  # a repeated abort is harmless
    ("aborting", "retry"): (200, {"aborting"}),
    ("aborting", "prepare"): (409, {"aborting"}),
    ("succeed", "register"): (409, {"succeed"}),
    ("succeed", "submit"): (200, {"succeed"}),
    ("succeed", "abort"): (409, {"succeed"}),
    ("succeed", "retry"): (409, {"succeed"}),
    ("succeed", "prepare"): (409, {"succeed"}),
    ("failed", "register"): (409, {"failed"}),
    ("failed", "submit"): (409, {"failed"}),
    ("failed", "abort"): (200, {"failed"}),
    ("failed", "retry"): (409, {"failed"}),
    ("failed", "prepare"): (409, {"failed"}),
}
for _state in STATES:  # another mode under the same gid is never the same transaction
    EXPECTED[(_state, "as-saga")] = (409, {_state})


async def status_of(http: httpx.AsyncClient, gid: str) -> dict[str, Any]:
    answer = await http.get(f"/v1/tx/transactions/{gid}")
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


async def tcc_in(http: httpx.AsyncClient, busi: Busi, gid: str, state: str) -> None:
    """A TCC transaction with one branch, brought into ``state`` and left there."""
    created = await http.post("/v1/tx/transactions", json={"gid": gid, "mode": "tcc", "prepare": True,
                                                            "options": SLOW})
    assert created.status_code == 201, created.text
    urls = {"confirm": f"{busi.url}/{gid}-confirm", "cancel": f"{busi.url}/{gid}-cancel"}
    registered = await http.post(f"/v1/tx/transactions/{gid}/branches", json={"branch_id": "01", "urls": urls})
    assert registered.status_code == 201, registered.text
    if state == "prepared":
        return
    verb = "submit" if state in ("submitted", "succeed") else "abort"
    if state in ("submitted", "aborting"):  # its confirm/cancel fails: it stays there until the retry
        busi.on(f"{gid}-{'confirm' if verb == 'submit' else 'cancel'}", *[500] * 100)
    assert (await http.post(f"/v1/tx/transactions/{gid}:{verb}")).status_code == 200
    if state in ("succeed", "failed"):
        assert (await final_status(http, gid))["status"] == state
        return

    async def tried_once() -> bool:
        tx = await status_of(http, gid)
        return tx["status"] == state and tx["attempts"] >= 1

    await wait_for(tried_once, 20)


async def call(http: httpx.AsyncClient, busi: Busi, gid: str, what: str) -> httpx.Response:
    if what == "register":
        urls = {"confirm": f"{busi.url}/{gid}-confirm2", "cancel": f"{busi.url}/{gid}-cancel2"}
        return await http.post(f"/v1/tx/transactions/{gid}/branches", json={"branch_id": "02", "urls": urls})
    if what in ("submit", "abort", "retry"):
        return await http.post(f"/v1/tx/transactions/{gid}:{what}")
    if what == "prepare":
        return await http.post("/v1/tx/transactions", json={"gid": gid, "mode": "tcc", "prepare": True,
                                                             "options": SLOW})
    saga = {"gid": gid, "mode": "saga", "steps": [{"action": f"{busi.url}/{gid}-saga"}], "options": SLOW}
    return await http.post("/v1/tx/transactions", json=saga)


@pytest.mark.parametrize("state", STATES)
async def test_every_call_in_every_state(http: httpx.AsyncClient, busi: Busi, state: str) -> None:
    problems = []
    for what in CALLS:
        gid = f"audit-{state}-{what}"
        await tcc_in(http, busi, gid, state)
        before = await status_of(http, gid)
        answer = await call(http, busi, gid, what)
        code, after = EXPECTED[(state, what)]
        now = await status_of(http, gid)
        if answer.status_code != code or now["status"] not in after:
            problems.append(f"{what} in {state}: {answer.status_code} {answer.text[:200]} -> {now['status']}")
            continue
        if code == 409:
            assert answer.headers["content-type"] == "application/problem+json", (what, state)
            assert answer.json()["state"] == state, (what, state, answer.json())  # another mode's too
            # nothing half-applied: the refused call left the transaction as it was
            assert {k: now[k] for k in ("status", "mode", "steps", "branches")} == {
                k: before[k] for k in ("status", "mode", "steps", "branches")}, (what, state)
    assert problems == []
    names = busi.names()
    assert not any(n.endswith("-saga") for n in names)  # a refused saga never ran
    assert not any(n.endswith("confirm2") for n in names)  # a branch refused registration is never called


async def test_a_running_saga_is_aborted_only_by_an_operator(http: httpx.AsyncClient, busi: Busi,
                                                             txnode: RunningNode) -> None:
    """A developer token (use) cannot abort a submitted saga nor skip a backoff (403 both: it takes write)."""
    created = await http.post("/v1/tokens", json={"name": "audit-dev", "role": "developer", "namespaces": ["*"]})
    assert created.status_code == 201, created.text
    busi.on("slow", *[425] * 10_000)
    body = {"gid": "audit-running", "mode": "saga", "options": SLOW,
            "steps": [{"action": f"{busi.url}/slow", "compensate": f"{busi.url}/slow-undo"}]}
    assert (await http.post("/v1/tx/transactions", json=body)).status_code == 201
    await wait_for(lambda: busi.names("audit-running") == ["slow"])
    async with httpx.AsyncClient(base_url=txnode.url, timeout=30,
                                 headers={"Authorization": f"Bearer {created.json()['token']}"}) as developer:
        refused = await developer.post("/v1/tx/transactions/audit-running:abort")
        assert refused.status_code == 403 and refused.json()["state"] == "submitted"
        assert "operator" in refused.json()["detail"] and refused.json()["type"].endswith("/forbidden")
        dtm = await developer.post("/api/dtmsvr/abort", json={"gid": "audit-running", "trans_type": "saga"})
        assert dtm.status_code == 409 and dtm.json()["state"] == "submitted"  # DTM's clients read it as FAILURE
        forbidden = await developer.post("/v1/tx/transactions/audit-running:retry")
        assert forbidden.status_code == 403
        assert forbidden.headers["content-type"] == "application/problem+json"
    assert (await status_of(http, "audit-running"))["status"] == "submitted"
    assert (await http.post("/v1/tx/transactions/audit-running:abort")).status_code == 200  # the admin: an operator
    assert (await final_status(http, "audit-running"))["status"] == "failed"
    assert busi.names("audit-running")[-1] == "slow-undo"


async def test_message_states(http: httpx.AsyncClient, busi: Busi) -> None:
    """A prepared message aborts straight to failed (prepared -> failed); a failed one takes no submit,
    and a message cannot register TCC/XA branches."""
    body = {"gid": "audit-msg", "mode": "msg", "prepare": True, "query_prepared": f"{busi.url}/query",
            "steps": [{"action": f"{busi.url}/m"}], "options": SLOW}
    assert (await http.post("/v1/tx/transactions", json=body)).status_code == 201
    register = await http.post("/v1/tx/transactions/audit-msg/branches", json={
        "branch_id": "01", "urls": {"confirm": f"{busi.url}/c", "cancel": f"{busi.url}/x"}})
    assert register.status_code == 409 and register.headers["content-type"] == "application/problem+json"
    aborted = await http.post("/v1/tx/transactions/audit-msg:abort")
    assert aborted.status_code == 200 and aborted.json()["status"] == "failed"
    again = await http.post("/v1/tx/transactions/audit-msg:submit")
    assert again.status_code == 409 and again.json()["state"] == "failed"
    assert busi.names("audit-msg") == []
