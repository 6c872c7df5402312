"""``client.tx``: sagas, TCC, XA and two-phase messages (outbox) on Mezzo's transaction coordinator.

    async with client.tx.saga() as saga:                 # submitted when the block ends
        saga.add(f"{app}/transfer-out", f"{app}/transfer-out-undo", {"amount": 30})
        saga.add(transfer_in, transfer_in_undo, {"amount": 30})   # in-process handlers (tx_handlers.py)

    async with client.tx.tcc() as tcc:                   # submitted, or aborted on an exception
        await tcc.call(f"{app}/try", f"{app}/confirm", f"{app}/cancel", {"amount": 30})
        await tcc.call_branch(transfer_out, {"amount": 30})        # a TccBranch: Try runs here

    async with client.tx.message(query_prepared=f"{app}/query") as msg:
        msg.add(f"{app}/notify", {"order": 7})
        msg.add_topic("orders", {"order": 7})
        await msg.prepare()
        ...                                              # the local transaction, with the barrier
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import httpx
import orjson

from mezzo.sdk.barrier import BarrierDB, message_barrier
from mezzo.sdk.errors import MezzoError, NotFound
from mezzo.sdk.tx_handlers import (
    BranchCall,
    BranchFailure,
    Fn,
    Handler,
    Handlers,
    MessageCheck,
    TccBranch,
    XaBranch,
)
from mezzo.sdk.tx_server import HandlerServer

if TYPE_CHECKING:
    from mezzo.sdk.client import Mezzo
    from mezzo.transactions.xa import XaResource

BASE = "/v1/tx/transactions"


class BranchFailed(MezzoError):
    """A TCC Try answered failure (409 or dtm_result FAILURE) or could not be completed."""

    def __init__(self, url: str, status: int, body: str) -> None:
        super().__init__(f"branch {url} answered {status}: {body[:200]}")
        self.url, self.status, self.body = url, status, body


def _payload(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _url(target: str | Handler) -> str:
    if isinstance(target, Handler):
        return target.url
    if not isinstance(target, str):
        raise TypeError(f"a branch is a URL or a registered handler (@client.tx.handler), not {target!r}")
    return target


class TxClient:
    def __init__(self, client: Mezzo, handlers: Handlers | None = None) -> None:
        self._client = client
        self.handlers = handlers or Handlers()

    # in-process branch handlers (tx_handlers.py) ---------------------------------------------

    def handler(self, name: str | None = None, *, barrier: BarrierDB | None = None) -> Callable[[Fn], Handler]:
        """Decorator: a Python function as a branch (saga action or compensation, message step...)."""
        return self.handlers.handler(name, barrier=barrier)

    def tcc_branch(self, name: str, *, barrier: BarrierDB | None = None) -> TccBranch:
        """A TCC branch whose Try, Confirm and Cancel are decorated functions of this process."""
        return self.handlers.tcc(name, barrier=barrier)

    def xa_branch(self, name: str, resource: XaResource) -> Callable[[Fn], XaBranch]:
        """Decorator: ``async fn(call, conn)`` is an XA branch's local work on ``resource``."""
        return self.handlers.xa(name, resource)

    def check_back(self, name: str, db: BarrierDB) -> MessageCheck:
        return self.handlers.check_back(name, db)

    def serve(self, *, host: str = "127.0.0.1", port: int = 0, advertise: str | None = None) -> HandlerServer:
        """The handlers on a port of their own: ``async with client.tx.serve(port=8701): ...``."""
        return HandlerServer(self.handlers, host=host, port=port, advertise=advertise)

    async def status_of(self, gid: str) -> str | None:
        """A global transaction's status; None for one this coordinator does not know: it may belong to
        another installation sharing the database, so its in-doubt branches are left alone."""
        try:
            return (await self.get(gid))["status"]  # type: ignore[no-any-return]
        except NotFound:
            return None

    async def recover_xa(self, *resources: XaResource) -> dict[str, str]:
        """Commit or roll back the in-doubt XA branches of ``resources`` (default: those of the XA
        handlers) whose global transaction decided; run it when the application starts, and periodically."""
        done: dict[str, str] = {}
        for resource in resources or tuple(self.handlers.resources()):
            done.update(await resource.recover(self.status_of))
        return done

    async def new_gid(self) -> str:
        return (await self._client.request("POST", "/v1/tx/gids"))["gid"]  # type: ignore[no-any-return]

    def saga(self, gid: str | None = None, *, namespace: str = "default", concurrent: bool = False,
             **options: Any) -> Saga:
        """A saga to fill with ``add``; options: retry_interval, request_timeout, timeout_to_fail, wait_result..."""
        return Saga(self, gid, namespace, {**options, "concurrent": concurrent})

    def tcc(self, gid: str | None = None, *, namespace: str = "default", **options: Any) -> Tcc:
        return Tcc(self, gid, namespace, options)

    def xa(self, gid: str | None = None, *, namespace: str = "default", **options: Any) -> Xa:
        """XA: ``await xa.call(url, payload)`` runs a branch that prepares its local XA transaction
        (``mezzo.transactions.xa``); the coordinator then calls the same URL with op=commit or rollback."""
        return Xa(self, gid, namespace, options)

    def message(self, query_prepared: str | Handler = "", gid: str | None = None, *, namespace: str = "default",
                **options: Any) -> TxMessage:
        return TxMessage(self, gid, namespace, _url(query_prepared) if query_prepared else "", options)

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._client.request("POST", BASE, json=body)  # type: ignore[no-any-return]

    async def get(self, gid: str) -> dict[str, Any]:
        return await self._client.request("GET", f"{BASE}/{gid}")  # type: ignore[no-any-return]

    async def list(self, *, status: str | None = None, mode: str | None = None, after: str | None = None,
                   limit: int = 100) -> dict[str, Any]:
        return await self._client.request(  # type: ignore[no-any-return]
            "GET", BASE, params={"status": status, "mode": mode, "after": after, "limit": limit})

    async def submit(self, gid: str, **body: Any) -> dict[str, Any]:
        return await self._client.request("POST", f"{BASE}/{gid}:submit", json=body)  # type: ignore[no-any-return]

    async def abort(self, gid: str) -> dict[str, Any]:
        return await self._client.request("POST", f"{BASE}/{gid}:abort")  # type: ignore[no-any-return]

    async def retry(self, gid: str) -> dict[str, Any]:
        return await self._client.request("POST", f"{BASE}/{gid}:retry")  # type: ignore[no-any-return]

    async def register(self, gid: str, branch_id: str, urls: dict[str, str], data: Any = None) -> dict[str, Any]:
        return await self._client.request(  # type: ignore[no-any-return]
            "POST", f"{BASE}/{gid}/branches", json={"branch_id": branch_id, "urls": urls, "data": data})


class _Tx:
    mode = ""

    def __init__(self, api: TxClient, gid: str | None, namespace: str, options: dict[str, Any]) -> None:
        self._api, self.gid, self.namespace = api, gid, namespace
        self.options = {k: v for k, v in options.items() if v is not None}
        self.result: dict[str, Any] | None = None

    async def _gid(self) -> str:
        if self.gid is None:
            self.gid = await self._api.new_gid()
        return self.gid

    async def submit(self) -> dict[str, Any]:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self._gid()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if kind is None:
            await self.submit()


class Saga(_Tx):
    mode = "saga"

    def __init__(self, api: TxClient, gid: str | None, namespace: str, options: dict[str, Any]) -> None:
        super().__init__(api, gid, namespace, options)
        self.steps: list[dict[str, str]] = []
        self.payloads: list[str] = []
        self.orders: dict[int, list[int]] = {}

    def add(self, action: str | Handler, compensate: str | Handler = "", payload: Any = None, *,
            after: list[int] | None = None) -> int:
        """Add a step (URLs or registered handlers); returns its index. ``after`` (concurrent sagas) names
        the steps it waits for."""
        self.steps.append({"action": _url(action), "compensate": _url(compensate) if compensate else ""})
        self.payloads.append(_payload(payload if payload is not None else {}))
        index = len(self.steps) - 1
        if after:
            self.orders[index] = list(after)
        return index

    async def submit(self) -> dict[str, Any]:
        self.result = await self._api.create({
            "gid": await self._gid(), "mode": "saga", "namespace": self.namespace, "steps": self.steps,
            "payloads": self.payloads, "orders": self.orders, "options": self.options})
        return self.result


class Tcc(_Tx):
    mode = "tcc"

    def __init__(self, api: TxClient, gid: str | None, namespace: str, options: dict[str, Any]) -> None:
        super().__init__(api, gid, namespace, options)
        self._branches = 0
        self._http: httpx.AsyncClient | None = None  # made on entry: a block never entered holds nothing

    async def __aenter__(self) -> Self:
        await self._api.create({"gid": await self._gid(), "mode": self.mode, "namespace": self.namespace,
                                "options": self.options, "prepare": True})
        self._http = httpx.AsyncClient(timeout=float(self.options.get("request_timeout", 8.0)))
        return self

    async def call(self, try_url: str, confirm_url: str, cancel_url: str, payload: Any = None) -> Any:
        """Register a branch, then call its Try; raises BranchFailed when Try fails (the block then aborts)."""
        return await self._branch(try_url, "try", {"confirm": confirm_url, "cancel": cancel_url}, payload)

    async def call_branch(self, branch: TccBranch, payload: Any = None) -> Any:
        """Register an in-process TCC branch, then run its Try here (with its barrier); the coordinator
        calls its Confirm or Cancel. Raises BranchFailed when Try raises BranchFailure."""
        branch.check()
        return await self._local(branch, "try", {"confirm": branch.url, "cancel": branch.url}, payload)

    async def _register(self, urls: dict[str, str], payload: Any) -> tuple[str, str]:
        self._branches += 1
        branch_id = f"{self._branches:02d}"
        data = _payload(payload if payload is not None else {})
        assert self.gid is not None
        await self._api.register(self.gid, branch_id, urls, data)
        return branch_id, data

    async def _local(self, branch: Handler, op: str, urls: dict[str, str], payload: Any) -> Any:
        branch_id, data = await self._register(urls, payload)
        assert self.gid is not None
        call = BranchCall(self.gid, self.mode, branch_id, op, orjson.loads(data))
        try:
            result = await branch.run(call)
        except BranchFailure as exc:
            raise BranchFailed(branch.url, 409, str(exc)) from exc
        if call.skipped:  # the barrier found the branch cancelled already: this transaction is rolling back
            raise BranchFailed(branch.url, 409, f"{op} skipped by the barrier ({call.skipped})")
        return result

    async def _branch(self, url: str, op: str, urls: dict[str, str], payload: Any) -> Any:
        branch_id, data = await self._register(urls, payload)
        assert self._http is not None, "use the transaction in `async with`"
        response = await self._http.post(url, content=data, headers={"Content-Type": "application/json"},
                                         params={"gid": self.gid, "trans_type": self.mode, "branch_id": branch_id,
                                                 "op": op})
        if response.status_code != 200 or b'"FAILURE"' in response.content:
            raise BranchFailed(url, response.status_code, response.text)
        return response.json() if response.content else None

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        try:
            assert self.gid is not None
            self.result = await (self._api.submit(self.gid) if kind is None else self._api.abort(self.gid))
        finally:
            if self._http is not None:
                await self._http.aclose()


class Xa(Tcc):
    """An XA transaction: each branch runs and prepares its local XA transaction when called with op=action."""

    mode = "xa"

    async def call(self, url: str, payload: Any = None) -> Any:  # type: ignore[override]
        return await self._branch(url, "action", {"commit": url, "rollback": url}, payload)

    async def call_branch(self, branch: XaBranch, payload: Any = None) -> Any:  # type: ignore[override]
        """Register an in-process XA branch and run its local work here, prepared; the coordinator
        then calls it to commit or roll back."""
        return await self._local(branch, "action", {"commit": branch.url, "rollback": branch.url}, payload)


class TxMessage(_Tx):
    """A two-phase message: ``prepare`` before the local transaction, submitted when the block ends."""

    mode = "msg"

    def __init__(self, api: TxClient, gid: str | None, namespace: str, query_prepared: str,
                 options: dict[str, Any]) -> None:
        super().__init__(api, gid, namespace, options)
        self.query_prepared = query_prepared
        self.steps: list[dict[str, str]] = []
        self.payloads: list[str] = []
        self.prepared = False

    def add(self, action: str | Handler, payload: Any = None) -> TxMessage:
        self.steps.append({"action": _url(action)})
        self.payloads.append(_payload(payload if payload is not None else {}))
        return self

    def add_topic(self, topic: str, data: Any) -> TxMessage:
        """Publish ``data`` to a Mezzo topic when the message commits."""
        return self.add(f"topic://{topic}", data)

    def _body(self, prepare: bool) -> dict[str, Any]:
        return {"gid": self.gid, "mode": "msg", "namespace": self.namespace, "steps": self.steps,
                "payloads": self.payloads, "query_prepared": self.query_prepared, "options": self.options,
                "prepare": prepare}

    async def prepare(self) -> None:
        await self._gid()
        await self._api.create(self._body(prepare=True))
        self.prepared = True

    async def local(self, db: BarrierDB, business: Callable[[Any], Any]) -> Any:
        """Prepare (once), then run the local transaction ``business(conn)`` in ``db`` under the message's
        barrier, which the check-back (``client.tx.check_back``) reads."""
        if not self.prepared:
            await self.prepare()
        assert self.gid is not None
        return await db.guard(message_barrier(self.gid), business)

    async def submit(self) -> dict[str, Any]:
        await self._gid()
        assert self.gid is not None
        self.result = await (self._api.submit(self.gid) if self.prepared else self._api.create(self._body(False)))
        return self.result

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if kind is None:
            await self.submit()
        elif self.prepared:
            assert self.gid is not None
            self.result = await self._api.abort(self.gid)
