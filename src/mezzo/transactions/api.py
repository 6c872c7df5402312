"""Mezzo's own HTTP routes for transactions: ``/v1/tx/transactions`` with ``:submit``, ``:abort``, ``:retry``;
and ``FastCreate``, which answers the hottest of them, creating one, without FastAPI's machinery."""

from __future__ import annotations

import secrets
from collections import deque
from typing import Annotated, Any

import orjson
import pydantic_core
import structlog
from fastapi import APIRouter, Body, FastAPI, Query, Request
from fastapi.responses import Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mezzo.node.auth import Principal, Verb
from mezzo.node.auth_module import Caller, principal_of, require
from mezzo.node.errors import Problem, bad_request
from mezzo.telemetry.propagation import extract_context, inject_headers
from mezzo.transactions.model import GlobalTx, Mode, Options, Status, Step
from mezzo.transactions.service import TxService, new_gid, steps_of

router = APIRouter(prefix="/v1/tx", tags=["transactions"])


def _svc(request: Request) -> TxService:
    return request.app.state.node.service(TxService)  # type: ignore[no-any-return]


def _storable(payload: Any) -> Any:
    """A payload the transaction log can keep: JSON that orjson writes (integers within 64 bits,
    nesting under its depth limit); refused at the door, naming the payload, not a 500 later."""
    if not isinstance(payload, str):
        try:
            orjson.dumps(payload)
        except orjson.JSONEncodeError as exc:
            raise ValueError(f"cannot be stored: {exc}") from None
    return payload


class TxIn(BaseModel):
    """A new transaction. Payloads are JSON values (sent to each branch as its request body)."""

    model_config = ConfigDict(extra="forbid")

    gid: str | None = Field(None, description="generated when absent")
    mode: Mode
    namespace: str = Field("default", min_length=1, max_length=100)
    steps: list[Step] = Field(default_factory=list, max_length=1000)
    payloads: list[Annotated[Any, AfterValidator(_storable)]] = Field(default_factory=list, max_length=1000)
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


# the headers without which ``extract_context`` finds no context (W3C, single B3, multiple B3)
_CONTEXT_HEADERS = frozenset({b"traceparent", b"b3", b"x-b3-traceid"})


def traceparent_of(request: Request) -> str:
    """The trace every branch call of the new transaction joins: the request's, else a new one."""
    headers: dict[str, str] = {}
    inject_headers(headers)
    # not tracing: the caller's W3C or B3 (Zipkin) context, looked for only when it may be there
    if "traceparent" not in headers and any(name.lower() in _CONTEXT_HEADERS for name, _ in request.headers.raw):
        inject_headers(headers, extract_context(request.headers))
    found = headers.get("traceparent") or request.headers.get("traceparent", "")
    return found or f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


@router.post("/gids", summary="A new global transaction id")
async def gid(caller: Caller) -> dict[str, str]:
    return {"gid": new_gid()}


@router.post("/transactions", status_code=201, summary="Submit a saga or message, or prepare a TCC/XA/message")
async def create(request: Request, body: TxIn, caller: Caller) -> dict[str, Any]:
    return await _create(_svc(request), body, caller, traceparent_of(request))


async def _create(svc: TxService, body: TxIn, caller: Principal, traceparent: str) -> dict[str, Any]:
    """``create``, for the route and for ``FastCreate`` alike."""
    require(caller, Verb.USE, body.namespace)
    tx = body.build(traceparent)
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


# FastCreate ----------------------------------------------------------------------------------

CREATE_PATH = "/v1/tx/transactions"
_TX_IN = TypeAdapter(TxIn)  # validated as FastAPI validates a body: Python mode, from what json.loads gives
_OUT = TypeAdapter(dict[str, Any])  # serialized as FastAPI serializes what a ``-> dict[str, Any]`` route returns
_MAX_BRACKETS = 256  # more (a deep document, perhaps) and json.loads might differ by hitting the recursion limit
_api_log = structlog.get_logger("mezzo.api")  # where FastAPI's handler of unexpected errors logs them (errors.py)


class FastCreate:
    """``POST /v1/tx/transactions`` (the ``create`` route) without FastAPI's routing, dependency solving and
    response validation, which cost a saga more CPU than its own work; in front of the API's FastAPI app,
    inside its telemetry (which labels the request with the route's template, as for the route).

    The answer is the route's, byte for byte: the same functions authenticate (``principal_of``), authorize
    and submit; the body is validated as FastAPI does (in Python mode, the parsed value being what
    ``json.loads`` gives), answered as FastAPI serializes, and every problem is the document FastAPI's
    handlers make of it. What it does not take on goes to FastAPI, with the body it read played again:
    a body that is not ``Content-Type: application/json`` or does not parse or validate, a request cut
    short, a mounted app (``root_path``).
    """

    def __init__(self, app: ASGIApp, api: FastAPI) -> None:
        self.app = app
        self.api = api  # whose ``state.node`` ``principal_of`` reaches through ``scope["app"]``
        self.node = api.state.node
        self.route = next(r for r in router.routes if getattr(r, "endpoint", None) is create)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != CREATE_PATH or scope["method"] != "POST" \
                or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        while True:  # the whole body, as FastAPI reads it before anything else
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        request = Request(scope, receive)
        value = _json(request, messages)
        if value is None:
            await self.app(scope, _replay(messages, receive), send)
            return
        scope["app"] = self.api
        response: Response | None = None
        try:
            caller = principal_of(request)  # before validation, as FastAPI solves the dependency first
            try:
                body = _TX_IN.validate_python(value, from_attributes=True)
            except ValidationError:
                pass  # FastAPI's problem document of it, made by FastAPI (below)
            else:
                out = await _create(self.node.service(TxService), body, caller, traceparent_of(request))
                response = Response(_OUT.dump_json(out), status_code=201, media_type="application/json")
        except Problem as exc:
            response = exc.response(request.url.path)
        except Exception as exc:  # as the app's handler answers it (errors.py), and raised on to the server
            _api_log.error("unhandled error", path=request.url.path, error=f"{type(exc).__name__}: {exc}")
            await self._answer(scope, receive, send, Problem(
                500, "Internal Server Error", "the server failed; the error is in its log", type="internal",
            ).response(request.url.path))
            raise
        if response is None:
            await self.app(scope, _replay(messages, receive), send)
        else:
            await self._answer(scope, receive, send, response)

    async def _answer(self, scope: Scope, receive: Receive, send: Send, response: Response) -> None:
        scope["route"] = self.route  # what the telemetry labels the request with
        await response(scope, receive, send)


def _json(request: Request, messages: list[Message]) -> Any:
    """The body's JSON value, when FastAPI would parse it and ``json.loads`` give the same; else None
    (JSON's own null is not a body ``create`` takes either)."""
    if messages[-1]["type"] != "http.request" or messages[-1].get("more_body", False):
        return None  # the client went away: FastAPI's answer to that
    content_type = request.headers.get("content-type")
    if not content_type or content_type.partition(";")[0].strip().lower() != "application/json":
        return None
    body = b"".join(m.get("body", b"") for m in messages)
    if body.count(b"[") + body.count(b"{") > _MAX_BRACKETS:
        return None
    try:  # pydantic's parser: big integers, NaN and Infinity as json.loads has them; less than it accepts
        return pydantic_core.from_json(body)
    except ValueError:
        return None


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """``receive`` that first hands out ``messages`` again."""
    pending = deque(messages)

    async def again() -> Message:
        return pending.popleft() if pending else await receive()

    return again
