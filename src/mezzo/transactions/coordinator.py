"""The engine that drives global transactions to their end, on this node and after any crash.

A round of one transaction runs under its lease (store.py): load it and its branches, call the
branches that are due, record every result, and either finish it or hand it back due again after
the retry interval (doubled for errors). A loop on every node looks for transactions that are due
and free; so a transaction whose node died is resumed by another node once its lease runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import math
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import structlog
from opentelemetry import trace
from opentelemetry.context import Context

from mezzo.node.outbound import Outbound
from mezzo.resilience.errors import CircuitOpenError, TimeoutExceeded
from mezzo.resilience.policies import PolicyRegistry, ResiliencePolicy
from mezzo.storage.kv import Compare
from mezzo.telemetry.propagation import extract_context, inject_headers
from mezzo.transactions.calls import BranchCaller, Outcome, Result
from mezzo.transactions.metrics import TxMetrics
from mezzo.transactions.model import (
    OPS,
    TOPIC_SCHEME,
    Branch,
    BranchStatus,
    GlobalTx,
    Mode,
    Status,
    check_branch_move,
    check_move,
)
from mezzo.transactions.store import GLOBAL, Active, Lease, LostLease, TxLog, branch_put, global_put

log = structlog.get_logger("mezzo.transactions")
_stdlib_log = logging.getLogger("mezzo.transactions")
Publish = Callable[[str, str, str, str], Awaitable[None]]  # (namespace, topic, payload, message id)
Notify = Callable[[GlobalTx], Awaitable[None]]  # a global state change, e.g. as a CloudEvent
Drive = asyncio.Task[GlobalTx | None]  # one round; its result: the transaction when the round ended it
MAX_BACKOFF = 3600.0
PREPARED_TIMEOUT = 60.0  # a TCC/XA transaction left prepared this long without a timeout of its own is aborted
_HTTP_STATUS = re.compile(r"^HTTP (\d{3}):")  # how calls.classify words an answer that is an error
_W3C_PARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")  # a W3C traceparent, as written
_NONZERO = re.compile(r"[1-9a-f]")  # an all-zero trace or span id is not valid


class Progress(StrEnum):
    DONE = "done"
    FAILED = "failed"  # a saga action failed for good: roll back
    RETRY = "retry"


def action_key(index: int) -> str:
    return f"{index + 1:02d}/action"


def compensate_key(index: int) -> str:
    return f"{index + 1:02d}/compensate"


@dataclass
class Known:
    """A transaction as this node last wrote it (its branches too when known), so a round need not read it."""

    tx: GlobalTx
    revision: int
    branches: list[Branch] | None


class Coordinator:
    def __init__(self, txlog: TxLog, metrics: TxMetrics, *, tracer: trace.Tracer | None = None,
                 spans: Callable[[], bool] | None = None, publish: Publish | None = None,
                 notify: Notify | None = None, listening: Callable[[], bool] | None = None,
                 lease_ttl: float = 30.0, poll: float = 1.0,
                 outbound: Outbound | None = None, policies: PolicyRegistry | None = None) -> None:
        self.log = txlog
        self.metrics = metrics
        self.tracer = tracer  # None: no spans; each branch call carries the transaction's own trace context
        self.spans = spans  # whether a span would go anywhere just now (None: always, with a tracer)
        self.publish = publish
        self.notify = notify
        self.listening = listening or (lambda: True)  # whether anyone takes ``notify``'s events just now
        self._notices: set[asyncio.Task[None]] = set()
        self.lease_ttl = lease_ttl
        self.poll = poll
        self.node_id = uuid.uuid4().hex[:12]
        self.caller = BranchCaller()
        self.outbound = outbound or Outbound()  # the hosts branch calls may go to
        self.policies = policies  # the node's Resiliency policies (targets.branches), when it runs them
        self.running: dict[str, Drive] = {}
        self.leases: dict[str, Lease] = {}
        self._wake = asyncio.Event()
        self._claim = asyncio.Lock()
        self._loop_task: asyncio.Task[None] | None = None
        self._contexts: dict[str, Context] = {}
        self._carried: dict[str, dict[str, str]] = {}

    # lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop_task = asyncio.create_task(self._recover_forever(), name="mezzo-tx-recovery")

    async def stop(self) -> None:
        """Stop driving; hand back what this node held so another node resumes it without waiting
        for the leases to run out (a branch call cut short here is simply called again)."""
        tasks = [t for t in (self._loop_task, *self.running.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for lease in list(self.leases.values()):
            with contextlib.suppress(Exception):
                await lease.release(time.time())
        self.leases.clear()
        await self.caller.aclose()

    @property
    def alive(self) -> bool:
        return self._loop_task is not None and not self._loop_task.done()

    def wake(self) -> None:
        self._wake.set()

    def changed(self, tx: GlobalTx) -> None:
        """Announce a state change in the background; a failed announcement never stops a transaction."""
        if self.notify is None or not self.listening():
            return
        task = asyncio.create_task(self.notify(tx.model_copy(deep=True)))
        self._notices.add(task)
        task.add_done_callback(self._notices.discard)

    def voided(self, gid: str) -> None:
        """A write on this node voided the transaction's lease (an abort or a retry): a round this node
        drives writes before its next call, and so learns that it lost the lease, instead of calling ahead."""
        lease = self.leases.get(gid)
        if lease is not None:
            lease.ahead = False

    def kick(self, lease: Lease, known: Known | None = None) -> Drive:
        """Drive the transaction this node holds the lease of, now, in the background."""
        task = self.running.get(lease.gid)
        if task is None:
            task = asyncio.create_task(self._drive(lease, known), name=f"mezzo-tx-{lease.gid}")
            self.running[lease.gid] = task
            self.leases[lease.gid] = lease
            task.add_done_callback(lambda _: self._done(lease.gid))
        return task

    def _done(self, gid: str) -> None:
        self.running.pop(gid, None)
        lease = self.leases.get(gid)
        if lease is not None and (lease.ended or not lease.active.owner):
            self.leases.pop(gid, None)

    def lease_new(self, gid: str, now: float, *, ahead: bool = False) -> Active:
        """The active entry of a transaction created on this node to be driven here at once: leased to
        this node, and due (for other nodes) when that lease runs out. ``ahead`` (a saga): its first
        round records the actions it calls with its next write, not one write before each call."""
        return Active(due=now + self.lease_ttl, owner=self.node_id, until=now + self.lease_ttl, ahead=ahead)

    def adopt(self, tx: GlobalTx, branches: list[Branch], revision: int, active: Active) -> Drive:
        """Drive a transaction just written at ``revision`` with the ``lease_new`` entry ``active``,
        from what was written (no acquire, no reads: the create was the claim)."""
        lease = Lease(self.log, tx.gid, self.node_id, self.lease_ttl, revision, active)
        return self.kick(lease, Known(tx, revision, branches))

    async def take(self, gid: str) -> Drive | None:
        """Drive ``gid`` here now if it is due-able and free (after a submit, abort or retry)."""
        async with self._claim:
            if gid in self.running:
                return self.running[gid]
            lease = await self.log.acquire(gid, self.node_id, self.lease_ttl)
            return self.kick(lease) if lease is not None else None

    # recovery ------------------------------------------------------------------------------

    async def _recover_forever(self) -> None:
        while True:
            try:
                earliest = await self.recover_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("transaction recovery scan failed", error=f"{type(exc).__name__}: {exc}")
                earliest = math.inf
            wait = max(0.0, min(self.poll, earliest - time.time()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            self._wake.clear()

    async def recover_once(self) -> float:
        """Take every due, free transaction; returns when the next known one falls due."""
        earliest = math.inf
        now = time.time()
        async for gid, active, kv in self.log.scan_active():
            if gid in self.running:
                continue
            if active.due > now:
                earliest = min(earliest, active.due)
                continue
            if not active.free(now) and active.owner != self.node_id:
                earliest = min(earliest, active.until)
                continue
            async with self._claim:  # with ``take``: a gid is claimed once, and then it is in ``running``
                if gid in self.running:
                    continue
                lease = await self.log.acquire(gid, self.node_id, self.lease_ttl, kv)
                if lease is not None:
                    self.kick(lease)
        return earliest

    # one round -----------------------------------------------------------------------------

    async def _drive(self, lease: Lease, known: Known | None = None) -> GlobalTx | None:
        """One round; returns the transaction when this round ended it (so a waiting submit need not read it)."""
        gid = lease.gid
        tx: GlobalTx | None = None
        try:
            if known is None:
                loaded = await self.log.load(gid)
                if loaded is None or loaded.tx.status in (Status.SUCCEED, Status.FAILED):
                    await lease.write([], finish=True)
                    return None
                known = Known(loaded.tx, loaded.revision, None)
            tx = known.tx
            await self._round(lease, tx, known.revision, known.branches)
            return tx if tx.status in (Status.SUCCEED, Status.FAILED) else None
        except LostLease:
            log.info("transaction taken over by another node", gid=gid)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("transaction round failed", gid=gid, error=f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(Exception):
                interval = tx.options.retry_interval if tx else 10.0
                await lease.release(time.time() + max(interval, 1.0))
        return None

    async def _round(self, lease: Lease, tx: GlobalTx, revision: int, known: list[Branch] | None) -> None:
        now = time.time()
        if tx.status is Status.PREPARED:
            if tx.mode is Mode.MSG:
                result = await self._check_back(lease, tx)
                if result.outcome is Outcome.SUCCESS:
                    revision = await self._move(lease, tx, revision, Status.SUBMITTED)
                elif result.outcome is Outcome.FAILURE:
                    tx.rollback_reason = f"check-back said the local transaction failed: {result.detail}"
                    await self._move(lease, tx, revision, Status.FAILED, finish=True)
                    return
                else:
                    await self._again(lease, tx, revision, result.outcome)
                    return
            else:
                deadline = tx.created + (tx.options.timeout_to_fail or PREPARED_TIMEOUT)
                if now < deadline:
                    await lease.release(deadline)
                    return
                tx.rollback_reason = "timed out before submit"
                revision = await self._move(lease, tx, revision, Status.ABORTING)
        # only a saga may still roll back once submitted: a submitted TCC/XA decided to commit, and some
        # of its branches may be confirmed already (cancelling them would undo half a transaction)
        if tx.status is Status.SUBMITTED and tx.mode is Mode.SAGA and tx.options.timeout_to_fail \
                and now >= tx.created + tx.options.timeout_to_fail:
            tx.rollback_reason = f"not finished within timeout_to_fail ({tx.options.timeout_to_fail:g} s)"
            revision = await self._move(lease, tx, revision, Status.ABORTING)
        branches = {b.key: b for b in (known if known is not None else await self.log.branches(tx))}
        if known is None and lease.ahead:
            # resumed after a round that may have called actions it had not recorded yet: any action not
            # ended may have run, so a rollback compensates it (the barrier makes a compensation of work
            # that never happened a no-op); recorded with the next write, which then clears ``ahead``
            for branch in branches.values():
                if tx.mode is Mode.SAGA and branch.op == "action" and not _tried(branch):
                    branch.attempted = True
                    lease.defer(branch_put(branch))
            lease.ahead = False
        if tx.status is Status.SUBMITTED:
            progress, worst = await self._forward(lease, tx, branches)
            lease.ahead = False  # every action called so far is marked, written with the next write
            if progress is Progress.DONE:
                await self._move(lease, tx, revision, Status.SUCCEED, finish=True)
                return
            if progress is Progress.RETRY and not self._over_limit(tx, worst):
                await self._again(lease, tx, revision, worst)
                return
            if progress is Progress.RETRY:
                tx.rollback_reason = f"gave up after {tx.attempts + 1} attempts"  # rounds made, this one included
            revision = await self._move(lease, tx, revision, Status.ABORTING)
        if tx.status is Status.ABORTING:
            progress, worst = await self._backward(lease, tx, branches)
            if progress is Progress.DONE:
                await self._move(lease, tx, revision, Status.FAILED, finish=True)
            else:
                await self._again(lease, tx, revision, worst)

    def _over_limit(self, tx: GlobalTx, worst: Outcome) -> bool:
        limit = tx.options.retry_limit
        return tx.mode is Mode.SAGA and limit > 0 and worst is Outcome.ERROR and tx.attempts + 1 >= limit

    async def _move(self, lease: Lease, tx: GlobalTx, revision: int, status: Status, *, finish: bool = False) -> int:
        check_move(tx.status, status, f"transaction {tx.gid}")
        tx.status = status
        tx.attempts = 0
        if finish:
            tx.finished = time.time()
        revision = await lease.write([global_put(tx)], [Compare(GLOBAL + tx.gid, revision)], finish=finish)
        # counted and announced once written: a write refused (the lease was lost) did not end anything
        if _logs(logging.INFO):
            log.info("transaction state", gid=tx.gid, mode=tx.mode.value, status=status.value)
        if finish:
            self.metrics.finished(tx.mode.value, status.value)
        self.changed(tx)
        return revision

    async def _again(self, lease: Lease, tx: GlobalTx, revision: int, worst: Outcome) -> None:
        """Hand the transaction back, due after the interval (doubled per failed round when errors)."""
        interval = tx.options.retry_interval
        if worst is Outcome.ERROR:
            tx.attempts += 1
            interval = min(interval * 2 ** min(tx.attempts - 1, 20), MAX_BACKOFF)
        await lease.write([global_put(tx)], [Compare(GLOBAL + tx.gid, revision)], due=time.time() + interval,
                          release=True)
        self.metrics.retry(tx.mode.value)  # once written: a round fenced off did not schedule a retry

    # forward and backward ------------------------------------------------------------------

    async def _forward(self, lease: Lease, tx: GlobalTx, branches: dict[str, Branch]) -> tuple[Progress, Outcome]:
        if tx.mode is Mode.SAGA or tx.mode is Mode.MSG:
            return await self._run_graph(lease, tx, branches, [action_key(i) for i in range(len(tx.steps))],
                                         lambda i: tx.needs(i))
        forward = sorted(b.key for b in branches.values() if b.op == OPS[tx.mode][0])
        return await self._run_graph(lease, tx, branches, forward, lambda i: [i - 1] if i else [])

    async def _backward(self, lease: Lease, tx: GlobalTx, branches: dict[str, Branch]) -> tuple[Progress, Outcome]:
        if tx.mode is Mode.SAGA:
            tried = [i for i in range(len(tx.steps)) if _tried(branches.get(action_key(i)))]
            keys = [compensate_key(i) if tx.steps[i].compensate else "" for i in range(len(tx.steps))]
            # compensate i only after every tried step that depended on it is compensated
            order = list(range(len(tx.steps)))
            dependents = {i: [k for k in order if i in tx.needs(k) and k in tried] for i in order}
            return await self._run_graph(lease, tx, branches, keys, lambda i: dependents[i], only=set(tried))
        if tx.mode is Mode.MSG:
            return Progress.DONE, Outcome.SUCCESS
        undo = sorted((b.key for b in branches.values() if b.op == OPS[tx.mode][1]), reverse=True)
        return await self._run_graph(lease, tx, branches, undo, lambda i: [i - 1] if i else [])

    async def _run_graph(self, lease: Lease, tx: GlobalTx, branches: dict[str, Branch], keys: list[str],
                         needs: Callable[[int], list[int]], only: set[int] | None = None) -> tuple[Progress, Outcome]:
        """Call the branches ``keys`` (by index) once their ``needs`` succeeded, concurrently where the graph allows."""
        wanted = [i for i in range(len(keys)) if (only is None or i in only)]
        done = {i for i in range(len(keys)) if i not in wanted or not keys[i]
                or branches[keys[i]].status is BranchStatus.SUCCEED}
        failed = next((branches[keys[i]] for i in wanted if keys[i] and branches[keys[i]].status is BranchStatus.FAILED),
                      None)
        if failed is not None:  # found on a later round (or after a restart): the reason is its answer
            tx.rollback_reason = tx.rollback_reason or _failure_reason(failed, failed.result)
            return Progress.FAILED, Outcome.FAILURE
        blocked: set[int] = set()
        worst = Outcome.SUCCESS
        while True:
            runnable = [i for i in wanted if i not in done and i not in blocked
                        and all(j in done for j in needs(i))]
            if not runnable:
                break
            fresh = [branches[keys[i]] for i in runnable if tx.mode is Mode.SAGA
                     and branches[keys[i]].op == "action" and not branches[keys[i]].attempted]
            if fresh:  # recorded before the calls (or known to be made up for): after a crash we
                for branch in fresh:  # compensate what may have run
                    branch.attempted = True
                if lease.may_call_ahead(tx.options.request_timeout):  # the log says Active.ahead
                    for branch in fresh:
                        lease.defer(branch_put(branch))
                else:
                    await lease.write([branch_put(b) for b in fresh])  # with the results deferred so far
            if len(runnable) == 1:  # the usual case (a sequential saga): no task to wrap the one call in
                results = [await self._call(lease, tx, branches[keys[runnable[0]]])]
            else:
                results = await asyncio.gather(*(self._call(lease, tx, branches[keys[i]]) for i in runnable))
            for i, result in zip(runnable, results, strict=True):
                if result.outcome is Outcome.SUCCESS:
                    done.add(i)
                elif result.outcome is Outcome.FAILURE and tx.mode is Mode.SAGA and branches[keys[i]].op == "action":
                    tx.rollback_reason = tx.rollback_reason or _failure_reason(branches[keys[i]], result.detail)
                    return Progress.FAILED, Outcome.FAILURE
                else:
                    blocked.add(i)
                    if worst is not Outcome.ERROR:
                        worst = Outcome.ERROR if result.outcome is not Outcome.ONGOING else Outcome.ONGOING
        if len(done) == len(keys):
            return Progress.DONE, Outcome.SUCCESS
        return Progress.RETRY, worst if worst is not Outcome.SUCCESS else Outcome.ERROR

    async def _call(self, lease: Lease, tx: GlobalTx, branch: Branch) -> Result:
        started = time.perf_counter()
        invoke = functools.partial(self._invoke, tx, branch)
        result = await self._traced(tx, branch.op, branch.branch_id, branch.url,
                                    lambda: self._attempts(lease, tx, branch.url, invoke))
        self.metrics.branch(tx.mode.value, branch.op, result.outcome.value, time.perf_counter() - started)
        final = result.outcome is Outcome.SUCCESS or (
            result.outcome is Outcome.FAILURE and tx.mode is Mode.SAGA and branch.op == "action")
        if final:
            status = BranchStatus.SUCCEED if result.outcome is Outcome.SUCCESS else BranchStatus.FAILED
            check_branch_move(branch.status, status, f"branch {branch.key} of {tx.gid}")
            branch.status = status
            branch.finished, branch.result = time.time(), result.detail
            branch.attempted = True
            lease.defer(branch_put(branch))  # written with the next write of this round (each round ends with one)
        else:
            log.info("branch to retry", gid=tx.gid, branch=branch.key, outcome=result.outcome.value,
                     detail=result.detail[:200])
        return result

    async def _traced(self, tx: GlobalTx, op: str, branch_id: str, url: str,
                      call: Callable[[], Awaitable[Result]]) -> Result:
        """``call`` in a client span ``tx <mode> <op>`` of the transaction's trace (whose context it sends),
        when tracing (see ``_propagate``)."""
        if not self._tracing():
            return await call()
        assert self.tracer is not None
        context = self._context(tx.traceparent) if tx.traceparent else None
        with self.tracer.start_as_current_span(f"tx {tx.mode.value} {op}", context=context,
                                               kind=trace.SpanKind.CLIENT) as span:
            span.set_attribute("mezzo.tx.gid", tx.gid)
            span.set_attribute("mezzo.tx.branch_id", branch_id)
            span.set_attribute("url.full", url)
            result = await call()
            span.set_attribute("mezzo.tx.outcome", result.outcome.value)
            if result.outcome in (Outcome.ERROR, Outcome.FAILURE):
                span.set_status(trace.StatusCode.ERROR, result.detail[:200])
        return result

    def _tracing(self) -> bool:
        return self.tracer is not None and (self.spans is None or self.spans())

    def _propagate(self, headers: dict[str, str], tx: GlobalTx) -> None:
        """The trace context a branch call sends: its span's when tracing, else the transaction's (a span
        nobody sees is not made to send its id), or, when the transaction has none valid, a new trace,
        as a span would start."""
        if self._tracing():
            inject_headers(headers)
            return
        traceparent = tx.traceparent
        if _W3C_PARENT.fullmatch(traceparent) and _NONZERO.search(traceparent, 3, 35) \
                and _NONZERO.search(traceparent, 36, 52):
            headers["traceparent"] = traceparent  # what parsing and writing it again would give
            return
        carried = self._carried.get(traceparent)
        if carried is None:
            if len(self._carried) >= 4096:
                self._carried.clear()
            carried = self._carried[traceparent] = {}
            inject_headers(carried, self._context(traceparent))
        if carried:
            headers.update(carried)
        else:
            headers["traceparent"] = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"

    def _context(self, traceparent: str) -> Context:
        """The trace a transaction's branch calls join, parsed once per transaction, not per call."""
        context = self._contexts.get(traceparent)
        if context is None:
            if len(self._contexts) >= 4096:
                self._contexts.clear()
            context = self._contexts[traceparent] = extract_context({"traceparent": traceparent})
        return context

    def _attempts(self, lease: Lease, tx: GlobalTx, url: str, call: Callable[[float], Awaitable[Result]]
                  ) -> Awaitable[Result]:
        """``call(timeout)``, the call of the branch at ``url``: once, bounded by the transaction's
        ``request_timeout``, or under the Resiliency policy that targets the branch."""
        policy = None
        if self.policies is not None:
            policy = self.policies.policy_for("branches", branch_target(url), tx.namespace)
        if policy is None or policy.is_noop:
            return call(tx.options.request_timeout)
        return self._resilient(policy, lease, tx, call)

    async def _resilient(self, policy: ResiliencePolicy, lease: Lease, tx: GlobalTx,
                         call: Callable[[float], Awaitable[Result]]) -> Result:
        """A branch call under ``policy`` (retry -> circuit breaker -> timeout). An error raises inside
        the policy, so its retry retries it and its breaker counts it; success, failure (a business
        answer: the service works) and ongoing are answers, never retried here, counted as successes.
        An open breaker is an error without a call: the coordinator's backoff tries again later."""
        timeout = policy.timeout or tx.options.request_timeout
        attempts = 0

        async def attempt() -> Result:
            nonlocal attempts
            attempts += 1
            result = await call(timeout)
            if result.outcome is Outcome.ERROR:
                raise _BranchError(result)
            return result

        try:
            result = await _within_lease(policy, lease, timeout).execute(attempt)
        except _BranchError as exc:
            result = exc.result
        except TimeoutExceeded as exc:
            result = Result(Outcome.ERROR, f"timed out after {exc.seconds:g} s")
        except CircuitOpenError as exc:
            result = Result(Outcome.ERROR, f"{'' if attempts else 'not called: '}{exc}")
        if attempts > 1:
            trace.get_current_span().set_attribute("mezzo.tx.attempts", attempts)
            if result.outcome is Outcome.ERROR:
                result = Result(Outcome.ERROR, f"{result.detail} (after {attempts} attempts)")
        return result

    async def _invoke(self, tx: GlobalTx, branch: Branch, timeout: float) -> Result:
        if branch.url.startswith(TOPIC_SCHEME):
            if self.publish is None:
                return Result(Outcome.ERROR, "messaging is not running on this node")
            try:
                await self.publish(tx.namespace, branch.url[len(TOPIC_SCHEME):], branch.data,
                                   f"{tx.gid}-{branch.branch_id}")
            except Exception as exc:
                return Result(Outcome.ERROR, f"publish failed: {exc}")
            return Result(Outcome.SUCCESS)
        refused = self._refused(branch.url)
        if refused is not None:
            return refused
        headers = dict(tx.options.branch_headers)
        self._propagate(headers, tx)
        params = {"gid": tx.gid, "trans_type": tx.mode.value, "branch_id": branch.branch_id, "op": branch.op}
        return await self.caller.call("POST", branch.url, params=params, data=branch.data, timeout=timeout,
                                      headers=headers)

    async def _check_back(self, lease: Lease, tx: GlobalTx) -> Result:
        """Ask the application whether a prepared message's local transaction committed."""
        if not tx.query_prepared:
            return Result(Outcome.FAILURE, "no query_prepared URL to ask")
        refused = self._refused(tx.query_prepared)
        if refused is not None:
            return refused
        ask = functools.partial(self._ask, tx)
        return await self._traced(tx, "check-back", "00", tx.query_prepared,
                                  lambda: self._attempts(lease, tx, tx.query_prepared, ask))

    async def _ask(self, tx: GlobalTx, timeout: float) -> Result:
        headers = dict(tx.options.branch_headers)
        self._propagate(headers, tx)
        params = {"gid": tx.gid, "trans_type": tx.mode.value, "branch_id": "00", "op": "msg"}
        return await self.caller.call("GET", tx.query_prepared, params=params, data="", timeout=timeout,
                                      headers=headers)

    def _refused(self, url: str) -> Result | None:
        """A call to a host no longer allowed (the setting changed since the transaction was written)
        is not made: an error, retried with backoff in case the setting changes back."""
        if self.outbound.open:
            return None
        host = urlsplit(url).hostname or ""
        if self.outbound.allows(host):
            return None
        return Result(Outcome.ERROR, f"host {host!r} is not one the coordinator may call (MEZZO_TX_ALLOW_HOSTS)")


@functools.lru_cache(maxsize=4096)
def branch_target(url: str) -> str:
    """The name a Resiliency document gives a branch under ``spec.targets.branches``: the host of its
    URL (the service, as Dapr's ``apps`` targets name an app), ``topic:NAME`` for a topic step."""
    if url.startswith(TOPIC_SCHEME):
        return "topic:" + url[len(TOPIC_SCHEME):]
    return urlsplit(url).hostname or ""


class _BranchError(Exception):
    """An error answer (or no answer) of one attempt, raised for a Resiliency retry and breaker to see."""

    def __init__(self, result: Result) -> None:
        super().__init__(result.detail)
        self.result = result
        status = _HTTP_STATUS.match(result.detail)
        self.status_code = int(status.group(1)) if status else None  # matched against httpStatusCodes


def _within_lease(policy: ResiliencePolicy, lease: Lease, timeout: float) -> ResiliencePolicy:
    """``policy`` with retries that end, timeout included, before this node's lease on the transaction
    runs out: the round must write (and renew it) before another node may take the transaction over,
    so "retry forever" means "as long as the lease allows", and then the coordinator's backoff."""
    retry = policy.retry
    if retry is None:
        return policy
    budget = max(lease.active.until - time.time() - timeout, 0.0)
    if retry.max_duration is not None:
        budget = min(budget, retry.max_duration)
    return ResiliencePolicy(policy.name, timeout=policy.timeout, breaker=policy.breaker,
                            retry=dataclasses.replace(retry, max_duration=budget))


def _logs(level: int) -> bool:
    """Whether ``log`` writes at ``level``, so a hot path skips a call that would be dropped (structlog makes
    a bound logger and runs a processor for it first). Known under Mezzo's logging (configure_logging),
    where the stdlib level filters first; under any other set-up, yes."""
    return structlog.stdlib.filter_by_level not in structlog.get_config()["processors"] \
        or _stdlib_log.isEnabledFor(level)


def _tried(branch: Branch | None) -> bool:
    return branch is not None and (branch.attempted or branch.status is not BranchStatus.PREPARED)


def describe(tx: GlobalTx, branches: list[Branch]) -> dict[str, Any]:
    return {**tx.out(), "branches": [b.out() for b in branches]}


def _failure_reason(branch: Branch, detail: str) -> str:
    """The rollback reason of a saga whose action failed, as DTM records it: the branch's answer."""
    return f"branch {branch.branch_id} {branch.op} failed: {detail[:500] or 'FAILURE'}"
