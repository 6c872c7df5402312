"""DTM's HTTP API (``/api/dtmsvr/...``), so DTM clients such as ``dtmcli`` work against Mezzo unchanged.

DTM clients send no token: the Mezzo token is accepted as the password of HTTP basic auth (a client
configured with ``http://mezzo:TOKEN@host:7700/api/dtmsvr``) as well as a bearer token. Successes
answer ``{"dtm_result": "SUCCESS"}``; a refused state change is a 409, which DTM clients read as FAILURE.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request
from pydantic import ValidationError

from mezzo.node.auth import Principal, Verb
from mezzo.node.auth_module import authenticate, bearer_token, require
from mezzo.node.errors import Problem, bad_request, conflict
from mezzo.transactions.api import traceparent_of
from mezzo.transactions.model import Branch, GlobalTx, Mode, Options, Status, Step
from mezzo.transactions.service import TxService, check_url, new_gid, steps_of

router = APIRouter(prefix="/api/dtmsvr", tags=["dtm"])
SUCCESS = {"dtm_result": "SUCCESS"}
OPTION_FIELDS = ("wait_result", "timeout_to_fail", "request_timeout", "retry_interval", "branch_headers",
                 "concurrent", "retry_limit")


def dtm_caller(request: Request) -> Principal:
    """A bearer token, or the token as the password of basic auth; 401 otherwise."""
    token = bearer_token(request)
    if token is None:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "basic":
            try:
                token = base64.b64decode(value.strip(), validate=True).decode().partition(":")[2] or None
            except (binascii.Error, UnicodeDecodeError):
                token = None
    found = authenticate(request, token)
    if found is None:
        raise Problem(401, "Unauthorized", "send the Mezzo token as a bearer token or as the basic-auth password "
                      "(http://mezzo:TOKEN@host:7700/api/dtmsvr)", type="unauthorized",
                      headers={"WWW-Authenticate": 'Basic realm="mezzo"'})
    return found


DtmCaller = Annotated[Principal, Depends(dtm_caller)]


def _svc(request: Request) -> TxService:
    return request.app.state.node.service(TxService)  # type: ignore[no-any-return]


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise bad_request("the body is not JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("gid"), str) or not body["gid"]:
        raise bad_request("the body is a JSON object with a gid", field="gid")
    return body


def _mode(body: dict[str, Any]) -> Mode:
    try:
        return Mode(body.get("trans_type", ""))
    except ValueError:
        raise bad_request(f"trans_type is one of {', '.join(m.value for m in Mode)}", field="trans_type") from None


def _text(body: dict[str, Any], name: str) -> str:
    """A string field of a DTM body (absent or null: empty); another type is a 400 naming it."""
    value = body.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise bad_request(f"{name} is a string", field=name)
    return value


def transaction_of(body: dict[str, Any], request: Request) -> GlobalTx:
    """DTM's TransBase JSON as a GlobalTx (0 means the server's default, as in DTM)."""
    raw = {k: body[k] for k in OPTION_FIELDS if body.get(k) not in (None, 0, "", {})}
    orders: dict[int, list[int]] = {}
    custom_data = _text(body, "custom_data")
    if custom_data:
        try:
            custom = orjson.loads(custom_data)
        except orjson.JSONDecodeError:
            custom = {}
        if isinstance(custom, dict):
            if custom.get("concurrent"):
                raw["concurrent"] = True
            try:
                orders = {int(k): [int(j) for j in v] for k, v in (custom.get("orders") or {}).items()}
            except (TypeError, ValueError, AttributeError):
                raise bad_request("custom_data.orders maps a step index to the step indexes it waits for",
                                  field="custom_data") from None
    try:
        options = Options.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error.get("loc") else "options"  # DTM's options are top-level fields
        raise bad_request(f"{field}: {error['msg']}", field=field) from None
    payloads = body.get("payloads") or []
    if not isinstance(payloads, list) or not all(isinstance(p, str) for p in payloads):
        raise bad_request("payloads is a list of strings", field="payloads")
    raw_steps = body.get("steps") or []
    if not isinstance(raw_steps, list):
        raise bad_request("steps is a list of {action, compensate} objects", field="steps")
    steps: list[Step] = steps_of(raw_steps)
    return GlobalTx(gid=body["gid"], mode=_mode(body), status=Status.PREPARED, steps=steps, payloads=payloads,
                    orders=orders, query_prepared=_text(body, "query_prepared"), options=options,
                    custom_data=custom_data, traceparent=traceparent_of(request))


@router.get("/newGid")
async def new_gid_route(caller: DtmCaller) -> dict[str, str]:
    return {"gid": new_gid(), **SUCCESS}


@router.post("/prepare")
async def prepare(request: Request, caller: DtmCaller) -> dict[str, str]:
    tx = transaction_of(await _body(request), request)
    require(caller, Verb.USE, tx.namespace)
    await _svc(request).prepare(tx, caller.name)
    return SUCCESS


@router.post("/submit")
async def submit(request: Request, caller: DtmCaller) -> dict[str, str]:
    tx = transaction_of(await _body(request), request)
    require(caller, Verb.USE, tx.namespace)
    done = await _svc(request).submit(tx, caller.name)
    if tx.options.wait_result and done.status in (Status.ABORTING, Status.FAILED):
        raise conflict(f"transaction {tx.gid} is {done.status.value}", dtm_result="FAILURE")
    return SUCCESS


@router.post("/abort")
async def abort(request: Request, caller: DtmCaller) -> dict[str, str]:
    body = await _body(request)
    svc = _svc(request)
    current = (await svc.get(body["gid"])).tx
    require(caller, Verb.USE, current.namespace)
    try:
        await svc.abort(current.gid, caller.name)
    except Problem as exc:
        if exc.status != 403:
            raise
        # DTM itself refuses to abort a running saga as a state error: its clients read a 409 as FAILURE
        raise conflict(exc.detail or exc.title, state=current.status.value) from None
    return SUCCESS


@router.post("/registerBranch")
async def register_branch(request: Request, caller: DtmCaller) -> dict[str, str]:
    body = await _body(request)
    mode = _mode(body)
    svc = _svc(request)
    current = (await svc.get(body["gid"])).tx
    require(caller, Verb.USE, current.namespace)
    if mode is Mode.XA:  # one URL serves both ops: a problem with it names DTM's field
        url = _text(body, "url")
        if not url:
            raise bad_request("an xa branch needs its url", field="url")
        check_url(url, "url", outbound=svc.coordinator.outbound)
        urls = {"commit": url, "rollback": url}
    else:
        urls = {"confirm": _text(body, "confirm"), "cancel": _text(body, "cancel")}
    data = body.get("data") or ""
    if not isinstance(data, str):
        data = orjson.dumps(data).decode()
    await svc.register_branch(current.gid, str(body.get("branch_id", "")), mode, urls, data, caller.name)
    return SUCCESS


@router.get("/query")
async def query(request: Request, caller: DtmCaller, gid: str) -> dict[str, Any]:
    svc = _svc(request)
    loaded = await svc.log.load(gid)
    if loaded is None:
        return {"transaction": None, "branches": []}
    require(caller, Verb.READ, loaded.tx.namespace)
    return {"transaction": dtm_transaction(loaded.tx), "branches": [dtm_branch(b) for b in await svc.log.branches(loaded.tx)]}


@router.get("/all")
async def all_transactions(request: Request, caller: DtmCaller, position: str = "",
                           limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
    require(caller, Verb.READ, None if caller.all_namespaces else caller.namespaces[0])
    namespaces = None if caller.all_namespaces else set(caller.namespaces)
    items, cursor = await _svc(request).list(start_after=position or None, limit=limit, namespaces=namespaces)
    return {"transactions": [dtm_transaction(t) for t in items], "next_position": cursor or ""}


def _time(moment: float | None) -> str | None:
    return None if moment is None else datetime.fromtimestamp(moment, UTC).isoformat()


def dtm_transaction(tx: GlobalTx) -> dict[str, Any]:
    options = tx.options.model_dump(include={"wait_result", "timeout_to_fail", "retry_interval", "request_timeout",
                                             "branch_headers", "concurrent", "retry_limit"})
    return {
        "gid": tx.gid, "trans_type": tx.mode.value, "status": tx.status.value,
        "steps": [s.model_dump() for s in tx.steps], "payloads": tx.payloads,
        "query_prepared": tx.query_prepared, "protocol": "http", "custom_data": tx.custom_data,
        "create_time": _time(tx.created), "update_time": _time(tx.updated),
        "finish_time": _time(tx.finished if tx.status is Status.SUCCEED else None),
        "rollback_time": _time(tx.finished if tx.status is Status.FAILED else None),
        "rollback_reason": tx.rollback_reason, "options": orjson.dumps(options).decode(),
        "next_cron_interval": int(tx.options.retry_interval),
    }


def dtm_branch(branch: Branch) -> dict[str, Any]:
    return {
        "gid": branch.gid, "branch_id": branch.branch_id, "op": branch.op, "url": branch.url,
        "bin_data": base64.b64encode(branch.data.encode()).decode(), "status": branch.status.value,
        "create_time": _time(branch.created),
        "finish_time": _time(branch.finished if branch.status.value == "succeed" else None),
        "rollback_time": _time(branch.finished if branch.status.value == "failed" else None),
    }
