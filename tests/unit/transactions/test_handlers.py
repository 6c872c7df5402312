"""In-process branch handlers as an ASGI app: answers the coordinator reads the DTM way, problem+json for
bad calls, plain and async functions, mounting, and the barrier around handlers (SQLite)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from mezzo.sdk.barrier import PostgresBarrierDB, SQLiteBarrierDB
from mezzo.sdk.tx_handlers import BranchCall, BranchFailure, BranchOngoing, Handlers
from mezzo.transactions.calls import Outcome, classify

BASE = "http://app.test/tx"


@pytest.fixture
def handlers() -> Handlers:
    return Handlers(BASE)


@pytest.fixture
async def http(handlers: Handlers) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=handlers), base_url="http://app.test") as client:
        yield client


def params(op: str, gid: str = "g1", branch_id: str = "01", trans_type: str = "saga") -> dict[str, str]:
    return {"gid": gid, "op": op, "branch_id": branch_id, "trans_type": trans_type}


async def call(http: httpx.AsyncClient, name: str, op: str, body: Any = None, **kw: str) -> httpx.Response:
    return await http.post(f"/{name}", params=params(op, **kw), json=body if body is not None else {})


def outcome(response: httpx.Response) -> Outcome:
    return classify(response.status_code, response.content).outcome


async def test_answers_are_read_by_the_coordinator_as_meant(handlers: Handlers, http: httpx.AsyncClient) -> None:
    seen: list[BranchCall] = []

    @handlers.handler("ok")
    async def ok(c: BranchCall) -> dict[str, Any]:
        seen.append(c)
        return {"moved": c.payload["amount"]}

    @handlers.handler("no")
    async def no(c: BranchCall) -> None:
        raise BranchFailure("insufficient funds")

    @handlers.handler("later")
    async def later(c: BranchCall) -> None:
        raise BranchOngoing

    @handlers.handler("broken")
    async def broken(c: BranchCall) -> None:
        raise KeyError("account")

    response = await call(http, "ok", "action", {"amount": 30}, gid="g7", branch_id="02")
    assert response.status_code == 200 and response.json() == {"dtm_result": "SUCCESS", "result": {"moved": 30}}
    assert outcome(response) is Outcome.SUCCESS
    assert (seen[0].gid, seen[0].branch_id, seen[0].op, seen[0].trans_type) == ("g7", "02", "action", "saga")
    failed = await call(http, "no", "action")
    assert failed.status_code == 409 and failed.json()["reason"] == "insufficient funds"
    assert outcome(failed) is Outcome.FAILURE
    assert outcome(await call(http, "later", "action")) is Outcome.ONGOING
    error = await call(http, "broken", "action")
    assert error.status_code == 500 and error.headers["content-type"] == "application/problem+json"
    assert "KeyError" in error.json()["detail"] and outcome(error) is Outcome.ERROR


async def test_bad_calls_get_problems_naming_the_field(handlers: Handlers, http: httpx.AsyncClient) -> None:
    tcc = handlers.tcc("hold")

    @tcc.try_
    async def hold(c: BranchCall) -> None:
        return None

    missing = await http.post("/hold", params={"op": "try"}, json={})
    assert missing.status_code == 400 and missing.json()["errors"] == [
        {"field": "gid", "reason": "the query parameter gid is required"}]
    assert (await http.post("/hold", params={"gid": "g"}, json={})).json()["errors"][0]["field"] == "op"
    wrong_op = await call(http, "hold", "confirm")  # no confirm function registered
    assert wrong_op.status_code == 400 and wrong_op.json()["errors"][0]["field"] == "op"
    bad_json = await http.post("/hold", params=params("try"), content=b"{not json")
    assert bad_json.status_code == 400 and bad_json.json()["errors"][0]["field"] == "body"
    unknown = await call(http, "nobody", "action")
    assert unknown.status_code == 404 and unknown.headers["content-type"] == "application/problem+json"
    assert (await http.put("/hold", params=params("try"))).status_code == 405
    for response in (missing, wrong_op, bad_json, unknown):
        assert outcome(response) is Outcome.ERROR  # retried: e.g. an app restarting without the handler yet


async def test_plain_functions_run_in_a_worker_thread(handlers: Handlers, http: httpx.AsyncClient) -> None:
    threads: list[str] = []

    @handlers.handler()
    def audit_log(c: BranchCall) -> str:
        threads.append(threading.current_thread().name)
        return c.op

    assert audit_log.name == "audit-log" and audit_log.url == f"{BASE}/audit-log"
    response = await call(http, "audit-log", "compensate")
    assert response.json()["result"] == "compensate"
    assert threads and threads[0] != threading.main_thread().name


async def test_mounted_into_an_application(handlers: Handlers) -> None:
    @handlers.handler("ping")
    async def ping(c: BranchCall) -> str:
        return "pong"

    app = Starlette(routes=[Mount("/mezzo-tx", app=handlers)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app.test") as client:
        response = await client.post("/mezzo-tx/ping", params=params("action"))
        assert response.status_code == 200 and response.json()["result"] == "pong"
        assert (await client.post("/mezzo-tx/pong", params=params("action"))).status_code == 404


def test_registration_mistakes_are_refused_early(handlers: Handlers, tmp_path: Path) -> None:
    @handlers.handler("a")
    async def a(c: BranchCall) -> None: ...

    with pytest.raises(ValueError, match="already registered"):
        handlers.handler("a")(a.ops["*"])
    with pytest.raises(ValueError, match="URL path segment"):
        handlers.handler("a/b")(a.ops["*"])
    with pytest.raises(TypeError, match="plain"):  # SQLite business code runs in a thread: a plain def
        handlers.handler("s", barrier=SQLiteBarrierDB(tmp_path / "b.db"))(a.ops["*"])
    with pytest.raises(TypeError, match="async"):
        handlers.handler("p", barrier=PostgresBarrierDB(object()))(lambda c, conn: None)
    tcc = handlers.tcc("t")
    tcc.try_(a.ops["*"])
    with pytest.raises(ValueError, match="confirm, cancel"):
        tcc.check()
    with pytest.raises(RuntimeError, match="base_url"):
        Handlers().handler("x")(a.ops["*"]).url  # noqa: B018
    other = Handlers(BASE)
    with pytest.raises(ValueError, match="not registered"):
        other.url(a)


async def test_direct_call_bypasses_http(handlers: Handlers) -> None:
    @handlers.handler("echo")
    async def echo(c: BranchCall) -> Any:
        return c.payload

    assert await echo(BranchCall("g", "saga", "01", "action", {"x": 1})) == {"x": 1}


# the barrier around handlers -----------------------------------------------------------------------

@pytest.fixture
async def ledger(tmp_path: Path) -> SQLiteBarrierDB:
    db = SQLiteBarrierDB(tmp_path / "bank.db")
    await db.create_table()
    with sqlite3.connect(db.path) as conn:
        conn.execute("CREATE TABLE ledger (gid TEXT, op TEXT)")
    return db


def effects(db: SQLiteBarrierDB, gid: str) -> list[str]:
    with sqlite3.connect(db.path) as conn:
        return [op for (op,) in conn.execute("SELECT op FROM ledger WHERE gid = ? ORDER BY rowid", (gid,))]


def register_tcc(handlers: Handlers, db: SQLiteBarrierDB) -> None:
    branch = handlers.tcc("reserve", barrier=db)

    def write(c: BranchCall, conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO ledger VALUES (?, ?)", (c.gid, c.op))
        if c.payload.get("fail"):
            raise BranchFailure("no stock")
        return c.op

    branch.try_(write)
    branch.confirm(write)
    branch.cancel(write)


async def test_barrier_makes_duplicates_no_ops(handlers: Handlers, http: httpx.AsyncClient,
                                               ledger: SQLiteBarrierDB) -> None:
    register_tcc(handlers, ledger)
    first = await call(http, "reserve", "try", trans_type="tcc")
    again = await call(http, "reserve", "try", trans_type="tcc")
    assert first.json() == {"dtm_result": "SUCCESS", "result": "try"}
    assert again.json() == {"dtm_result": "SUCCESS", "skipped": "duplicate"}
    for _ in range(3):
        assert outcome(await call(http, "reserve", "confirm", trans_type="tcc")) is Outcome.SUCCESS
    assert effects(ledger, "g1") == ["try", "confirm"]


async def test_barrier_null_compensation_and_late_try(handlers: Handlers, http: httpx.AsyncClient,
                                                      ledger: SQLiteBarrierDB) -> None:
    register_tcc(handlers, ledger)
    cancel = await call(http, "reserve", "cancel", trans_type="tcc")  # Try never arrived (yet)
    assert cancel.json()["skipped"] == "null compensation"
    late = await call(http, "reserve", "try", trans_type="tcc")  # arrives after its cancel: must not hang
    assert late.json()["skipped"] == "duplicate"
    assert effects(ledger, "g1") == []


async def test_a_failing_handler_rolls_back_its_barrier_row(handlers: Handlers, http: httpx.AsyncClient,
                                                            ledger: SQLiteBarrierDB) -> None:
    register_tcc(handlers, ledger)
    failed = await call(http, "reserve", "try", {"fail": True}, trans_type="tcc")
    assert outcome(failed) is Outcome.FAILURE
    assert effects(ledger, "g1") == []  # the business write rolled back with the barrier row
    cancel = await call(http, "reserve", "cancel", trans_type="tcc")
    assert cancel.json()["skipped"] == "null compensation"  # nothing to undo


def test_saga_and_message_take_registered_handlers_not_bare_functions(handlers: Handlers) -> None:
    from mezzo.sdk.tx import Saga, TxClient, TxMessage

    @handlers.handler("ship")
    async def ship(c: BranchCall) -> None: ...

    async def unregistered(c: BranchCall) -> None: ...

    saga = Saga(TxClient(None, handlers), "g1", "default", {})  # type: ignore[arg-type]
    saga.add(ship, "http://elsewhere/undo", {"n": 1})
    assert saga.steps == [{"action": f"{BASE}/ship", "compensate": "http://elsewhere/undo"}]
    with pytest.raises(TypeError, match="registered handler"):
        saga.add(unregistered)
    msg = TxMessage(TxClient(None, handlers), "g2", "default", "", {})  # type: ignore[arg-type]
    assert msg.add(ship).steps == [{"action": f"{BASE}/ship"}]


async def test_a_call_cut_off_before_its_payload_ends_runs_nothing(handlers: Handlers) -> None:
    ran: list[Any] = []

    @handlers.handler("pay")
    async def pay(call: BranchCall) -> None:
        ran.append(call)

    messages = iter([{"type": "http.request", "body": b'{"amount": ', "more_body": True}, {"type": "http.disconnect"}])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/pay", "root_path": "", "headers": [],
             "query_string": b"gid=g1&op=action&branch_id=01&trans_type=saga"}
    await handlers(scope, receive, send)  # type: ignore[arg-type]
    assert ran == [] and sent == []  # the coordinator calls again; half a payload is never a call
