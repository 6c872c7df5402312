"""Transaction operations both HTTP APIs offer: create, prepare, submit, abort, register branches, read, retry.

Every state change is one store transaction that compares the global transaction's revision (so a
concurrent change makes it a 409, never a lost update), writes the ``/tx/active`` entry due now (which
also fences off a node that held the lease); aborts and retries are audited in the same transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import urlsplit

from mezzo.node.audit import audit_put
from mezzo.node.errors import Problem, bad_request, conflict, not_found
from mezzo.node.outbound import Outbound
from mezzo.storage.kv import Compare, ConflictError, Delete, Op, Put
from mezzo.transactions.coordinator import PREPARED_TIMEOUT, Coordinator, Drive, action_key
from mezzo.transactions.model import (
    FINAL,
    OPS,
    TOPIC_SCHEME,
    Branch,
    GlobalTx,
    IllegalTransition,
    Mode,
    Status,
    Step,
    check_move,
    derived,
    step_branches,
)
from mezzo.transactions.store import (
    ACTIVE,
    BRANCH,
    GID,
    GLOBAL,
    Active,
    Loaded,
    TxLog,
    active_put,
    branch_put,
    global_put,
)

AUDIT_KIND = "Transaction"
AUDITED = frozenset({"tx.abort", "tx.retry"})  # operator actions; the apps' own calls are the log itself


def new_gid() -> str:
    return uuid.uuid4().hex


def check_gid(gid: str) -> None:
    if not GID.match(gid):
        raise bad_request("a gid is 1 to 128 letters, digits or ._:@-", field="gid")


MAX_URL = 2048


def check_url(url: str, field: str, *, topic: bool = False, outbound: Outbound | None = None) -> None:
    """A branch or check-back URL the coordinator can call: ``http(s)://host[:port]/...`` (or, for a
    message step, ``topic://NAME``) to a host ``outbound`` allows. Refused at once with the field,
    rather than stored and retried for ever as a call that can never be made."""
    problem = _url_problem(url, topic, outbound)
    if problem is not None:
        raise bad_request(problem, field=field)


_UNSAFE = re.compile(r"[\s\x00-\x1f\x7f]")


@functools.lru_cache(maxsize=4096)  # applications call the same few branch URLs over and over
def _url_problem(url: str, topic: bool, outbound: Outbound | None) -> str | None:
    if topic and url.startswith(TOPIC_SCHEME):
        return None if url[len(TOPIC_SCHEME):] else "a topic step names its topic: topic://NAME"
    if len(url) > MAX_URL:
        return f"a URL is at most {MAX_URL} characters"
    if _UNSAFE.search(url):
        return "a URL has no spaces or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"not a URL: {exc}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        also = " or topic://NAME" if topic else ""
        return f"{url[:100]!r} is not an http:// or https:// URL with a host{also}"
    if port == 0:
        return "port 0 cannot be called"
    if outbound is not None and not outbound.allows(parts.hostname):
        return f"host {parts.hostname!r} is not one the coordinator may call (MEZZO_TX_ALLOW_HOSTS)"
    return None


def validate_steps(tx: GlobalTx, outbound: Outbound | None = None) -> None:
    if tx.query_prepared:
        check_url(tx.query_prepared, "query_prepared", outbound=outbound)
    if tx.mode not in (Mode.SAGA, Mode.MSG):
        return
    if tx.payloads and len(tx.payloads) != len(tx.steps):
        raise bad_request(f"{len(tx.steps)} steps but {len(tx.payloads)} payloads", field="payloads")
    for index, step in enumerate(tx.steps):
        if not step.action:
            raise bad_request(f"step {index} has no action", field=f"steps.{index}.action")
        check_url(step.action, f"steps.{index}.action", topic=tx.mode is Mode.MSG, outbound=outbound)
        if step.compensate:
            check_url(step.compensate, f"steps.{index}.compensate", outbound=outbound)
    for index, needs in tx.orders.items():
        if not 0 <= index < len(tx.steps) or any(not 0 <= j < len(tx.steps) or j == index for j in needs):
            raise bad_request(f"orders name steps outside 0..{len(tx.steps) - 1}", field="orders")
    _acyclic(tx)


def _acyclic(tx: GlobalTx) -> None:
    state: dict[int, int] = {}

    def visit(i: int) -> None:
        if state.get(i) == 2:
            return
        if state.get(i) == 1:
            raise bad_request(f"orders form a cycle through step {i}", field="orders")
        state[i] = 1
        for j in tx.needs(i):
            visit(j)
        state[i] = 2

    for i in range(len(tx.steps)):
        visit(i)


class _Raced(Exception):
    """The transaction changed between our read and our write."""


class TxService:
    def __init__(self, log: TxLog, coordinator: Coordinator) -> None:
        self.log = log
        self.coordinator = coordinator

    # reading -------------------------------------------------------------------------------

    async def get(self, gid: str) -> Loaded:
        loaded = await self.log.load(gid)
        if loaded is None:
            raise not_found(f"transaction {gid!r}")
        return loaded

    async def query(self, gid: str) -> tuple[GlobalTx, list[Branch]]:
        loaded = await self.get(gid)
        return loaded.tx, await self.log.branches(loaded.tx)

    async def list(self, *, start_after: str | None = None, limit: int = 100, status: str | None = None,
                   mode: str | None = None, namespaces: set[str] | None = None) -> tuple[list[GlobalTx], str | None]:
        """Transactions in gid order after ``start_after``; returns the page and the next cursor."""
        out: list[GlobalTx] = []
        cursor = start_after
        while len(out) < limit:
            page, more = await self.log.page(cursor, 500)
            for tx in page:
                cursor = tx.gid
                if (status and tx.status.value != status) or (mode and tx.mode.value != mode) \
                        or (namespaces is not None and tx.namespace not in namespaces):
                    continue
                out.append(tx)
                if len(out) >= limit:
                    return out, cursor
            if not more:
                return out, None
        return out, cursor

    # changing ------------------------------------------------------------------------------

    async def prepare(self, tx: GlobalTx, user: str) -> GlobalTx:
        """Start a TCC, XA or message transaction; the app then runs its part and submits or aborts."""
        check_gid(tx.gid)
        if tx.mode is Mode.SAGA:
            raise bad_request("a saga is submitted, not prepared", field="trans_type")
        validate_steps(tx, self.coordinator.outbound)
        return await self._retrying(tx.gid, lambda: self._prepare_once(tx.model_copy(deep=True), user))

    async def _prepare_once(self, tx: GlobalTx, user: str) -> GlobalTx:
        existing = await self.log.load(tx.gid)
        if existing is not None:
            if existing.tx.namespace != tx.namespace:  # the caller was authorized for tx.namespace only
                raise not_found(f"transaction {tx.gid!r}")
            if existing.tx.mode is tx.mode and existing.tx.status is Status.PREPARED:
                return existing.tx  # a repeated prepare is harmless
            raise conflict(f"transaction {tx.gid} exists ({existing.tx.mode.value}, {existing.tx.status.value})",
                           state=existing.tx.status.value)
        tx.status, tx.created, tx.created_by = Status.PREPARED, time.time(), user
        wait = tx.options.retry_interval if tx.mode is Mode.MSG else (tx.options.timeout_to_fail or PREPARED_TIMEOUT)
        await self._create(tx, step_branches(tx), active=Active(due=tx.created + wait))
        return tx

    async def submit(self, tx: GlobalTx, user: str) -> GlobalTx:
        """Submit a new saga or message, or a prepared transaction of any mode."""
        check_gid(tx.gid)
        validate_steps(tx, self.coordinator.outbound)
        task = None
        if tx.mode in (Mode.SAGA, Mode.MSG):
            with contextlib.suppress(_Raced):  # it exists: decide below what a submit means for it
                done, task = await self._create_submitted(tx, user)  # sets only what a fallback sets again
        if task is None:
            done = await self._retrying(tx.gid, lambda: self._submit_once(tx.model_copy(deep=True), user))
            task = await self.coordinator.take(tx.gid)
        if tx.options.wait_result and task is not None:
            await asyncio.wait([task], timeout=tx.options.request_timeout * max(len(tx.steps), 1) + 5)
            ended = task.result() if task.done() and not task.cancelled() and task.exception() is None else None
            done = ended if ended is not None else (await self.get(tx.gid)).tx  # its round is over: ours now
        return done

    async def _create_submitted(self, tx: GlobalTx, user: str) -> tuple[GlobalTx, Drive]:
        """A new saga or message, written submitted and leased to this node, which drives it at once:
        one store transaction from the request to the first branch call."""
        tx.status, tx.created, tx.created_by = Status.SUBMITTED, time.time(), user
        branches = step_branches(tx)
        if tx.mode is Mode.SAGA:  # this node calls the first steps right after: record them as tried now
            first = {action_key(i) for i in range(len(tx.steps)) if not tx.needs(i)}
            for branch in branches:
                branch.attempted = branch.key in first
        active = self.coordinator.lease_new(tx.gid, tx.created, ahead=tx.mode is Mode.SAGA)
        revision = await self._create(tx, branches, active=active)
        # the coordinator's own copy: it sets its status, attempts, times and reason; shallow, as neither side
        # changes what the two share (steps, payloads, orders, options) once the transaction is written
        task = self.coordinator.adopt(tx.model_copy(), branches, revision, active)
        return tx, task

    async def _submit_once(self, tx: GlobalTx, user: str) -> GlobalTx:
        existing = await self.log.load(tx.gid)
        if existing is None:
            if tx.mode not in (Mode.SAGA, Mode.MSG):
                raise conflict(f"a {tx.mode.value} transaction is prepared before it is submitted")
            tx.status, tx.created, tx.created_by = Status.SUBMITTED, time.time(), user
            await self._create(tx, step_branches(tx), active=Active(due=0))
        else:
            current = existing.tx
            if current.namespace != tx.namespace:  # the caller was authorized for tx.namespace only
                raise not_found(f"transaction {tx.gid!r}")
            if current.mode is not tx.mode:
                raise conflict(f"transaction {tx.gid} is a {current.mode.value} transaction, not {tx.mode.value}",
                               state=current.status.value)
            if current.status in (Status.SUBMITTED, Status.SUCCEED):
                return current  # a repeated submit is harmless
            if current.mode is Mode.MSG and not current.steps and tx.steps:
                current.steps, current.payloads, current.orders = tx.steps, tx.payloads, tx.orders  # its branches
            if tx.options.wait_result:
                current.options.wait_result = True
            tx = await self._change(existing, Status.SUBMITTED, user, "tx.submit")
        return tx

    async def abort(self, gid: str, user: str, *, operator: bool = False) -> GlobalTx:
        """Roll back a prepared transaction (an operator may also abort a saga that is running)."""
        tx = await self._retrying(gid, lambda: self._abort_once(gid, user, operator))
        await self.coordinator.take(gid)
        return tx

    async def _abort_once(self, gid: str, user: str, operator: bool) -> GlobalTx:
        loaded = await self.get(gid)
        tx = loaded.tx
        if tx.status in (Status.ABORTING, Status.FAILED):
            return tx
        if tx.status is Status.SUBMITTED and not (operator and tx.mode is Mode.SAGA):
            if tx.mode is Mode.SAGA:  # a permission, like retry's: 403 with the state, not a 409
                raise Problem(403, "Forbidden", f"transaction {gid} is a running saga; only an operator token "
                              "(write) can abort it", type="forbidden", state=tx.status.value)
            raise conflict(f"transaction {gid} is submitted; a submitted {tx.mode.value} transaction has decided "
                           "to commit", state=tx.status.value)
        wanted = Status.FAILED if tx.mode is Mode.MSG else Status.ABORTING
        tx.rollback_reason = f"aborted by {user}"
        return await self._change(loaded, wanted, user, "tx.abort")

    async def register_branch(self, gid: str, branch_id: str, mode: Mode, urls: dict[str, str], data: str,
                              user: str) -> Branch:
        """Record a TCC or XA branch (the app calls its Try / runs its local part itself)."""
        if not branch_id or len(branch_id) > 64 or "/" in branch_id:
            raise bad_request("branch_id is 1 to 64 characters without '/'", field="branch_id")
        loaded = await self.get(gid)
        tx = loaded.tx
        if tx.mode is not mode or mode not in (Mode.TCC, Mode.XA):
            raise conflict(f"transaction {gid} is a {tx.mode.value} transaction; branches register in tcc or xa",
                           state=tx.status.value)
        if tx.status is not Status.PREPARED:
            raise conflict(f"transaction {gid} is {tx.status.value}; branches register while it is prepared",
                           state=tx.status.value)
        ops_needed = OPS[mode]
        missing = [op for op in ops_needed if not urls.get(op)]
        if missing:
            raise bad_request(f"a {mode.value} branch needs URLs for {', '.join(ops_needed)}", field=missing[0])
        for op in ops_needed:
            check_url(urls[op], op, outbound=self.coordinator.outbound)
        branches = [Branch(gid=gid, branch_id=branch_id, op=op, url=urls[op], data=data) for op in ops_needed]
        existing = {b.key: b for b in await self.log.branches(tx)}
        if all(b.key in existing for b in branches):
            if all(existing[b.key].url == b.url and existing[b.key].data == b.data for b in branches):
                return branches[0]
            raise conflict(f"branch {branch_id} of {gid} is registered with other URLs or data")
        compares = [Compare(GLOBAL + gid, loaded.revision)]
        compares += [Compare(f"{BRANCH}{gid}/{b.key}", 0) for b in branches]
        try:
            await self.log.txn([branch_put(b) for b in branches], compares)
        except ConflictError:
            raise conflict(f"transaction {gid} changed while registering branch {branch_id}") from None
        return branches[0]

    async def retry(self, gid: str, user: str) -> GlobalTx:
        """Make an unfinished transaction due now (skipping the rest of its backoff)."""
        async def once() -> GlobalTx:
            loaded = await self.get(gid)
            if loaded.tx.status in FINAL:
                raise conflict(f"transaction {gid} is {loaded.tx.status.value}: nothing to retry",
                               state=loaded.tx.status.value)
            loaded.tx.attempts = 0
            await self._write(loaded, user, "tx.retry")
            return loaded.tx

        tx = await self._retrying(gid, once)
        await self.coordinator.take(gid)
        return tx

    # plumbing ------------------------------------------------------------------------------

    @staticmethod
    async def _retrying(gid: str, once: Callable[[], Awaitable[GlobalTx]]) -> GlobalTx:
        """Run ``once`` again when the coordinator wrote the transaction between our read and write."""
        for _ in range(20):
            try:
                return await once()
            except _Raced:
                continue
        raise conflict(f"transaction {gid} keeps changing; try again")

    async def _create(self, tx: GlobalTx, branches: Sequence[Branch], *, active: Active) -> int:
        ops: list[Op] = [global_put(tx), *(branch_put(b) for b in branches if not derived(tx, b)),
                         active_put(tx.gid, active)]
        try:
            revision = await self.log.txn(ops, [Compare(GLOBAL + tx.gid, 0)])
        except ConflictError:
            raise _Raced from None  # created concurrently: read it and decide again
        self.coordinator.changed(tx)
        if not active.owner:
            self.coordinator.wake()  # the recovery loop takes it (or learns when it falls due)
        return revision

    async def _change(self, loaded: Loaded, status: Status, user: str, action: str) -> GlobalTx:
        tx = loaded.tx
        try:
            check_move(tx.status, status, f"transaction {tx.gid}")
        except IllegalTransition as exc:
            raise conflict(str(exc), state=exc.current) from None
        tx.status = status
        if status in FINAL:
            tx.finished = time.time()
        await self._write(loaded, user, action, finish=status in FINAL)  # may race: then nothing happened
        if status in FINAL:
            self.coordinator.metrics.finished(tx.mode.value, status.value)
        self.coordinator.changed(tx)
        return tx

    async def _write(self, loaded: Loaded, user: str, action: str, *,
                     finish: bool = False) -> None:
        tx = loaded.tx
        ops: list[Op] = [global_put(tx)]
        audit = self._audit(user, action, tx) if action in AUDITED else None
        if finish:
            ops.append(Delete(ACTIVE + tx.gid))
        else:  # due now; a lease another node held is void, but not what it may have called (ahead)
            current, _ = await self.log.active(tx.gid)  # ahead only ever goes from True to False
            ops.append(active_put(tx.gid, Active(due=0, ahead=current is not None and current.ahead)))
        try:
            await self.log.txn(ops, [Compare(GLOBAL + tx.gid, loaded.revision)], audit=audit)
        except ConflictError:
            raise _Raced from None
        self.coordinator.voided(tx.gid)
        self.coordinator.wake()

    @staticmethod
    def _audit(user: str, action: str, tx: GlobalTx) -> Put:
        return audit_put(user, action, kind=AUDIT_KIND, namespace=tx.namespace, name=tx.gid,
                         detail={"mode": tx.mode.value, "status": tx.status.value})


def steps_of(raw: Sequence[dict[str, str]]) -> list[Step]:
    try:
        return [Step.model_validate(s) for s in raw]
    except ValueError as exc:
        raise bad_request(f"steps: {exc}", field="steps") from None

