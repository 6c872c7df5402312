"""In-process branch handlers: Python functions of the application that the coordinator calls.

The handlers of an application form one ASGI app (``Handlers``): mount it into the application's own
web app, or serve it on a port of its own (``mezzo.sdk.tx_server``). A branch's URL is
``{base_url}/{name}``, stored by the coordinator like any other branch URL, so a branch call reaches the
function wherever it runs: after a coordinator restart (the URL is in the transaction log), after an
application restart (decorators register the handlers again at import; the coordinator retries until
the application answers), on any replica behind the application's address.

    @client.tx.handler("transfer-out", barrier=db)         # db: a mezzo.sdk.barrier.BarrierDB
    async def transfer_out(call: BranchCall, conn) -> None:
        await conn.execute("UPDATE account SET balance = balance - $1 WHERE id = 1", call.payload["amount"])

A handler returns a JSON value (success), raises ``BranchFailure`` (failure: a saga rolls back) or
``BranchOngoing`` (ask again later); any other exception is an error the coordinator retries.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import orjson
import structlog

from mezzo.sdk.barrier import Barrier, BarrierDB, MessageRolledBack

if TYPE_CHECKING:
    from mezzo.transactions.xa import XaResource

log = structlog.get_logger("mezzo.sdk.tx")
Fn = Callable[..., Any]
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._~-]{0,99}$")
MAX_BODY = 8 * 1024 * 1024
PROBLEM = "https://mezzo.dev/problems/"


class BranchFailure(Exception):
    """Raised by a handler: the branch failed for good (answered 409; a saga action then rolls back)."""


class BranchOngoing(Exception):
    """Raised by a handler: not finished yet; the coordinator asks again after the retry interval (425)."""


@dataclass
class BranchCall:
    """One call of a branch: who calls (gid, trans_type, branch_id, op) and the branch's payload."""

    gid: str
    trans_type: str
    branch_id: str
    op: str
    payload: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    skipped: str = ""  # set by the barrier: "duplicate" or "null compensation" when the business code did not run

    @property
    def barrier(self) -> Barrier:
        return Barrier(self.trans_type, self.gid, self.branch_id, self.op)


class Handler:
    """One named endpoint: the function that serves each op (``*``: every op)."""

    def __init__(self, handlers: Handlers, name: str, barrier: BarrierDB | None = None) -> None:
        self.handlers, self.name, self.barrier = handlers, name, barrier
        self.ops: dict[str, Fn] = {}

    @property
    def url(self) -> str:
        return self.handlers.url(self)

    def serve(self, op: str, fn: Fn) -> Fn:
        _check_fn(fn, self.barrier)
        self.ops[op] = fn
        return fn

    def accepts(self, op: str) -> bool:
        return op in self.ops or "*" in self.ops

    async def run(self, call: BranchCall) -> Any:
        fn = self.ops.get(call.op) or self.ops["*"]
        return await invoke(fn, call, self.barrier)

    def __call__(self, call: BranchCall, *args: Any) -> Any:
        """Call the function directly (as in a unit test of the application), without barrier or HTTP."""
        fn = self.ops.get(call.op) or self.ops.get("*")
        if fn is None:
            raise LookupError(f"handler {self.name!r} does not serve op {call.op!r}")
        return fn(call, *args)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} ops={sorted(self.ops)}>"


class TccBranch(Handler):
    """A TCC branch: ``@branch.try_``, ``@branch.confirm``, ``@branch.cancel`` (one URL; op picks the function)."""

    def try_(self, fn: Fn) -> Fn:
        return self.serve("try", fn)

    def confirm(self, fn: Fn) -> Fn:
        return self.serve("confirm", fn)

    def cancel(self, fn: Fn) -> Fn:
        return self.serve("cancel", fn)

    def check(self) -> None:
        missing = [op for op in ("try", "confirm", "cancel") if op not in self.ops]
        if missing:
            raise ValueError(f"TCC branch {self.name!r} has no {', '.join(missing)} function")


class XaBranch(Handler):
    """An XA branch: ``fn(call, conn)`` runs in a local XA transaction of ``resource`` that is prepared
    (op ``action``); the coordinator's ``commit``/``rollback`` finish it."""

    def __init__(self, handlers: Handlers, name: str, resource: XaResource, fn: Fn) -> None:
        super().__init__(handlers, name)
        if not _is_async(fn):
            raise TypeError(f"the XA handler {name!r} must be an async function (call, conn)")
        self.resource, self.fn = resource, fn

    def accepts(self, op: str) -> bool:
        return op in ("action", "commit", "rollback")

    def __call__(self, call: BranchCall, *args: Any) -> Any:
        return self.fn(call, *args)

    async def run(self, call: BranchCall) -> Any:
        if call.op == "action":
            return await self.resource.run(call.gid, call.branch_id, lambda conn: self.fn(call, conn))
        await self.resource.finish(call.gid, call.branch_id, call.op)
        return None


class MessageCheck(Handler):
    """A two-phase message's check-back: committed (200) or rolled back for good (409), from the barrier."""

    def __init__(self, handlers: Handlers, name: str, db: BarrierDB) -> None:
        super().__init__(handlers, name)
        self.db = db

    def accepts(self, op: str) -> bool:
        return op == "msg"

    async def run(self, call: BranchCall) -> Any:
        try:
            await self.db.query_prepared(call.gid)
        except MessageRolledBack as exc:
            raise BranchFailure(f"the local transaction of {call.gid} did not commit") from exc
        return None


def _is_async(fn: Fn) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004


def _check_fn(fn: Fn, barrier: BarrierDB | None) -> None:
    if not callable(fn):
        raise TypeError(f"a handler is a function, not {type(fn).__name__}")
    if barrier is not None and barrier.sync_business == _is_async(fn):
        kind = "a plain (def)" if barrier.sync_business else "an async (async def)"
        raise TypeError(f"{getattr(fn, '__name__', fn)!r} must be {kind} function (call, conn) for "
                        f"{type(barrier).__name__}")


async def invoke(fn: Fn, call: BranchCall, barrier: BarrierDB | None) -> Any:
    """Run a handler function: under the barrier in its local transaction, or alone (plain functions in a
    worker thread, so they may block)."""
    if barrier is not None:
        guard = call.barrier
        result = await barrier.guard(guard, lambda conn: fn(call, conn))
        call.skipped = guard.skipped
        return result
    if _is_async(fn):
        return await fn(call)
    result = await asyncio.to_thread(fn, call)
    return await result if inspect.isawaitable(result) else result


class Handlers:
    """The application's branch handlers; an ASGI app answering ``POST|GET {base_url}/{name}?gid=..&op=..``.

    ``base_url`` is where the coordinator reaches them: the address of the mount point in the
    application (``app.mount("/mezzo-tx", handlers)`` → ``http://orders:8000/mezzo-tx``) or of
    ``serve()``. It must stay the same across restarts: the coordinator stores the URLs.
    """

    def __init__(self, base_url: str | None = None) -> None:
        self.base_url = base_url.rstrip("/") if base_url else None
        self.by_name: dict[str, Handler] = {}

    # registering ---------------------------------------------------------------------------

    def _add(self, handler: Handler) -> Handler:
        if not _NAME.match(handler.name):
            raise ValueError(f"handler name {handler.name!r}: 1-100 letters, digits or ._~- (a URL path segment)")
        if handler.name in self.by_name:
            raise ValueError(f"a handler named {handler.name!r} is already registered")
        self.by_name[handler.name] = handler
        return handler

    def handler(self, name: str | None = None, *, barrier: BarrierDB | None = None) -> Callable[[Fn], Handler]:
        """Decorator: ``fn(call)`` (or ``fn(call, conn)`` inside ``barrier``) serves every op of ``name``."""
        def register(fn: Fn) -> Handler:
            handler = Handler(self, name or fn.__name__.replace("_", "-"), barrier)
            handler.serve("*", fn)
            return self._add(handler)

        return register

    def tcc(self, name: str, *, barrier: BarrierDB | None = None) -> TccBranch:
        """A TCC branch to fill with ``@branch.try_``, ``@branch.confirm``, ``@branch.cancel``."""
        return self._add(TccBranch(self, name, barrier))  # type: ignore[return-value]

    def xa(self, name: str, resource: XaResource) -> Callable[[Fn], XaBranch]:
        """Decorator: ``async fn(call, conn)`` is the local work of an XA branch on ``resource``."""
        def register(fn: Fn) -> XaBranch:
            return self._add(XaBranch(self, name, resource, fn))  # type: ignore[return-value]

        return register

    def check_back(self, name: str, db: BarrierDB) -> MessageCheck:
        """The ``query_prepared`` endpoint of two-phase messages whose local transactions use ``db``."""
        return self._add(MessageCheck(self, name, db))  # type: ignore[return-value]

    def url(self, target: Handler | str) -> str:
        name = target.name if isinstance(target, Handler) else target
        if isinstance(target, Handler) and self.by_name.get(name) is not target:
            raise ValueError(f"{target!r} is not registered with these handlers")
        if self.base_url is None:
            raise RuntimeError("the handlers have no base_url yet: mount them and set base_url, or await serve()")
        return f"{self.base_url}/{name}"

    def resources(self) -> list[XaResource]:
        found: list[XaResource] = []
        for handler in self.by_name.values():
            if isinstance(handler, XaBranch) and all(r is not handler.resource for r in found):
                found.append(handler.resource)
        return found

    # answering -----------------------------------------------------------------------------

    async def answer(self, name: str, params: Mapping[str, str], body: bytes,
                     headers: Mapping[str, str]) -> tuple[int, dict[str, Any], str]:
        """(status, JSON body, media type) for one branch call."""
        handler = self.by_name.get(name)
        if handler is None:
            return _problem(404, "Not Found", f"no branch handler named {name!r}", "name")
        for key in ("gid", "op"):
            if not params.get(key):
                return _problem(400, "Bad Request", f"the query parameter {key} is required", key)
        op = params["op"]
        if not handler.accepts(op):
            return _problem(400, "Bad Request", f"handler {name!r} does not serve op {op!r}", "op")
        try:
            payload = orjson.loads(body) if body.strip() else None
        except orjson.JSONDecodeError as exc:
            return _problem(400, "Bad Request", f"the body is not JSON: {exc}", "body")
        call = BranchCall(params["gid"], params.get("trans_type", ""), params.get("branch_id", ""), op, payload,
                          headers)
        try:
            result = await handler.run(call)
        except BranchFailure as exc:
            return 409, {"dtm_result": "FAILURE", "reason": str(exc)}, "application/json"
        except BranchOngoing as exc:
            return 425, {"dtm_result": "ONGOING", "reason": str(exc)}, "application/json"
        except Exception as exc:
            log.warning("branch handler raised", handler=name, gid=call.gid, op=op,
                        error=f"{type(exc).__name__}: {exc}")
            return _problem(500, "Branch handler raised", f"{type(exc).__name__}: {str(exc)[:300]}")
        out: dict[str, Any] = {"dtm_result": "SUCCESS"}
        if result is not None:
            out["result"] = result
        if call.skipped:
            out["skipped"] = call.skipped
        return 200, out, "application/json"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, root = scope["path"], scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        name = path.strip("/")
        if scope["method"] not in ("POST", "GET"):
            status, body, media = _problem(405, "Method Not Allowed", "branch calls are POST (check-backs GET)")
        else:
            raw = await _read_body(receive)
            if raw is _GONE:
                return  # the coordinator hung up before the whole payload came: run nothing, it calls again
            if raw is None:
                status, body, media = _problem(413, "Content Too Large", f"a payload is at most {MAX_BODY} bytes",
                                               "body")
            else:
                params = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
                headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
                status, body, media = await self.answer(name, params, raw, headers)
        content = orjson.dumps(body, default=str)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", media.encode()), (b"content-length", str(len(content)).encode())]})
        await send({"type": "http.response.body", "body": content})


def _problem(status: int, title: str, detail: str, field_name: str | None = None) -> tuple[int, dict[str, Any], str]:
    body: dict[str, Any] = {"type": PROBLEM + title.lower().replace(" ", "-"), "title": title, "status": status,
                            "detail": detail}
    if field_name:
        body["errors"] = [{"field": field_name, "reason": detail}]
    return status, body, "application/problem+json"


_GONE = b"<disconnected>"  # a marker compared by identity


async def _read_body(receive: Receive) -> bytes | None:
    """The whole payload; None when it is too large; ``_GONE`` when the caller left before its end."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return _GONE
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
