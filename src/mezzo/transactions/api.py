"""Mezzo's own HTTP routes for transactions: ``/v1/tx/transactions`` with ``:submit``, ``:abort``, ``:retry``."""

from __future__ import annotations

import secrets
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from mezzo.node.auth import Verb
from mezzo.node.auth_module import Caller, require
from mezzo.node.errors import bad_request
from mezzo.telemetry.propagation import extract_context, inject_headers
from mezzo.transactions.model import GlobalTx, Mode, Options, Status, Step
from mezzo.transactions.service import TxService, new_gid, steps_of

router = APIRouter(prefix="/v1/tx", tags=["transactions"])


def _svc(request: Request) -> TxService:
    return request.app.state.node.service(TxService)  # type: ignore[no-any-return]


class TxIn(BaseModel):
    """A new transaction. Payloads are JSON values (sent to each branch as its request body)."""

    model_config = ConfigDict(extra="forbid")

    gid: str | None = Field(None, description="generated when absent")
    mode: Mode
    namespace: str = Field("default", min_length=1, max_length=100)
    steps: list[Step] = Field(default_factory=list, max_length=1000)
    payloads: list[Any] = Field(default_factory=list, max_length=1000)
    orders: dict[int, list[int]] = Field(default_factory=dict, description="saga: step -> steps it waits for")
    query_prepared: str = ""
    options: Options = Field(default_factory=Options)
    prepare: bool = Field(False, description="prepare (TCC, XA, message) instead of submitting")

    def build(self, traceparent: str) -> GlobalTx:
        payloads = [p if isinstance(p, str) else orjson.dumps(p).decode() for p in self.payloads]
        return GlobalTx(gid=self.gid or new_gid(), mode=self.mode, status=Status.PREPARED, namespace=self.namespace,
                        steps=self.steps, payloads=payloads, orders=self.orders, query_prepared=self.query_prepared,
                        options=self.options, traceparent=traceparent)


class BranchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    branch_id: str = Field(min_length=1, max_length=64)
    urls: dict[str, str] = Field(description="tcc: confirm and cancel; xa: commit and rollback")
    data: Any = None


def _out(tx: GlobalTx, branches: list[Any] | None = None) -> dict[str, Any]:
    body = tx.out()
    if branches is not None:
        body["branches"] = [b.out() for b in branches]
    return body


def traceparent_of(request: Request) -> str:
    """The trace every branch call of the new transaction joins: the request's, else a new one."""
    headers: dict[str, str] = {}
    inject_headers(headers)
    if "traceparent" not in headers:  # not tracing: the caller's W3C or B3 (Zipkin) context
        inject_headers(headers, extract_context(request.headers))
    found = headers.get("traceparent") or request.headers.get("traceparent", "")
    return found or f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


@router.post("/gids", summary="A new global transaction id")
async def gid(caller: Caller) -> dict[str, str]:
    return {"gid": new_gid()}


@router.post("/transactions", status_code=201, summary="Submit a saga or message, or prepare a TCC/XA/message")
async def create(request: Request, body: TxIn, caller: Caller) -> dict[str, Any]:
    require(caller, Verb.USE, body.namespace)
    svc = _svc(request)
    tx = body.build(traceparent_of(request))
    if body.prepare:
        return _out(await svc.prepare(tx, caller.name))
    return _out(await svc.submit(tx, caller.name))


@router.get("/transactions", summary="Transactions in gid order, filtered")
async def list_transactions(request: Request, caller: Caller, status: Status | None = None,
                            mode: Mode | None = None, after: str | None = None,
                            limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
    if not caller.has_verb(Verb.READ):
        require(caller, Verb.READ)
    namespaces = None if caller.all_namespaces else set(caller.namespaces)
    items, cursor = await _svc(request).list(start_after=after, limit=limit, status=status.value if status else None,
                                             mode=mode.value if mode else None, namespaces=namespaces)
    return {"items": [_out(t) for t in items], "next": cursor}


@router.get("/transactions/{gid}", summary="A transaction with its branches")
async def show(request: Request, gid: str, caller: Caller) -> dict[str, Any]:
    tx, branches = await _svc(request).query(gid)
    require(caller, Verb.READ, tx.namespace)
    return _out(tx, branches)


async def _owned(request: Request, gid: str, caller: Caller, verb: Verb) -> GlobalTx:
    tx = (await _svc(request).get(gid)).tx
    require(caller, verb, tx.namespace)
    return tx


@router.post("/transactions/{gid}:submit", summary="Submit a prepared transaction")
async def submit(request: Request, gid: str, caller: Caller,
                 body: dict[str, Any] = Body(default_factory=dict)) -> dict[str, Any]:
    tx = await _owned(request, gid, caller, Verb.USE)
    if body.get("wait_result"):
        tx.options.wait_result = True
    steps = body.get("steps")
    if steps is not None:
        if not isinstance(steps, list):
            raise bad_request("steps is a list", field="steps")
        payloads = body.get("payloads", [])
        if not isinstance(payloads, list):
            raise bad_request("payloads is a list of JSON values, one per step", field="payloads")
        tx.steps = steps_of(steps)
        tx.payloads = [p if isinstance(p, str) else orjson.dumps(p).decode() for p in payloads]
    return _out(await _svc(request).submit(tx, caller.name))


@router.post("/transactions/{gid}:abort", summary="Roll back a prepared transaction (operators: a running saga)")
async def abort(request: Request, gid: str, caller: Caller) -> dict[str, Any]:
    tx = await _owned(request, gid, caller, Verb.USE)
    operator = caller.can(Verb.WRITE, tx.namespace)
    return _out(await _svc(request).abort(gid, caller.name, operator=operator))


@router.post("/transactions/{gid}:retry", summary="Run an unfinished transaction now, skipping its backoff")
async def retry(request: Request, gid: str, caller: Caller) -> dict[str, Any]:
    await _owned(request, gid, caller, Verb.WRITE)
    return _out(await _svc(request).retry(gid, caller.name))


@router.post("/transactions/{gid}/branches", status_code=201, summary="Register a TCC or XA branch")
async def register(request: Request, gid: str, body: BranchIn, caller: Caller) -> dict[str, Any]:
    tx = await _owned(request, gid, caller, Verb.USE)
    data = body.data if isinstance(body.data, str) else orjson.dumps(body.data).decode() if body.data is not None else ""
    branch = await _svc(request).register_branch(gid, body.branch_id, tx.mode, body.urls, data, caller.name)
    return branch.out()
