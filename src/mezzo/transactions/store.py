"""The durable transaction log on the KV store, and leases that share the work between nodes.

Keys:

- ``/tx/global/{gid}``              the global transaction (GlobalTx)
- ``/tx/branch/{gid}/{id}/{op}``    one branch call (Branch)
- ``/tx/active/{gid}``              present while unfinished: when it is next due and which node holds it

On PostgreSQL these keys are plain rows (``PostgresStore.plain``: no history, no watch, no store-wide
revision to serialise on); on SQLite they are in the KV store. Nothing watches them.

The active entry is the lease. A node takes an unfinished transaction with a compare-and-set on it
(only when it is free or its lease ran out) and every write the node then makes compares it again
and renews it in the same store transaction. A node that lost its lease (it stalled, another node
took over) fails its next write and stops: the store, not a clock, decides who may write.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel

from mezzo.jsonutil import dumps, loads
from mezzo.storage.kv import (
    Compare,
    ConflictError,
    Delete,
    KeyValue,
    Op,
    Put,
    RangeResult,
    TxnResult,
)
from mezzo.transactions.model import Branch, GlobalTx, Mode, step_branches

GLOBAL, BRANCH, ACTIVE = "/tx/global/", "/tx/branch/", "/tx/active/"
GID = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")


class LostLease(Exception):
    """Another writer changed the transaction's lease: stop working on it."""


class Active(BaseModel):
    due: float
    owner: str = ""
    until: float = 0.0
    # the holder may call saga actions before their "attempted" marks are written (they go with its next
    # write): whoever resumes the transaction must count every action not yet ended as possibly called
    ahead: bool = False

    def free(self, now: float) -> bool:
        return not self.owner or self.until <= now


@dataclass
class Loaded:
    tx: GlobalTx
    revision: int


def global_put(tx: GlobalTx) -> Put:
    tx.updated = time.time()
    return Put(GLOBAL + tx.gid, dumps(tx.out()))


def branch_put(branch: Branch) -> Put:
    return Put(f"{BRANCH}{branch.gid}/{branch.key}", dumps(branch.out()))


def active_put(gid: str, active: Active) -> Put:
    return Put(ACTIVE + gid, dumps(active.model_dump()))


class Rows(Protocol):
    """What the log needs of a store: a KVStore, or a PostgresStore's plain rows."""

    async def get(self, key: str) -> KeyValue | None: ...

    async def range(self, prefix: str, *, start_after: str | None = None,
                    limit: int | None = None) -> RangeResult: ...

    async def txn(self, ops: Sequence[Op], compares: Sequence[Compare] = ()) -> TxnResult: ...


class TxLog:
    def __init__(self, store: Rows, kv: Rows | None = None) -> None:
        self.store = store
        self.kv = kv or store  # the node's KV store, where what others read (the audit log) goes

    @classmethod
    def on(cls, store: Rows) -> TxLog:
        """The log on a node's store: in its plain rows when it has them (PostgreSQL)."""
        plain = getattr(store, "plain", None)
        return cls(plain(), store) if callable(plain) else cls(store)

    async def load(self, gid: str) -> Loaded | None:
        kv = await self.store.get(GLOBAL + gid)
        return None if kv is None else Loaded(GlobalTx.model_validate(loads(kv.value)), kv.mod_revision)

    async def branches(self, tx: GlobalTx) -> list[Branch]:
        """The transaction's branches: those stored, and for a saga or message the steps' others as
        they start out (only branches that were tried or ended are written, see ``derived``)."""
        items = (await self.store.range(f"{BRANCH}{tx.gid}/")).items
        stored = [Branch.model_validate(loads(kv.value)) for kv in items]
        if tx.mode not in (Mode.SAGA, Mode.MSG):
            return stored
        known = {b.key: b for b in stored}
        steps = step_branches(tx)
        return [known.pop(b.key, b) for b in steps] + list(known.values())

    async def active(self, gid: str) -> tuple[Active | None, int]:
        kv = await self.store.get(ACTIVE + gid)
        return (None, 0) if kv is None else (Active.model_validate(loads(kv.value)), kv.mod_revision)

    async def scan_active(self, page: int = 500) -> AsyncIterator[tuple[str, Active, KeyValue]]:
        cursor: str | None = None
        while True:
            result = await self.store.range(ACTIVE, start_after=cursor, limit=page)
            for kv in result.items:
                yield kv.key[len(ACTIVE):], Active.model_validate(loads(kv.value)), kv
            if not result.more or not result.items:
                return
            cursor = result.items[-1].key

    async def page(self, start_after: str | None, limit: int) -> tuple[list[GlobalTx], bool]:
        result = await self.store.range(GLOBAL, start_after=GLOBAL + start_after if start_after else None,
                                        limit=limit)
        return [GlobalTx.model_validate(loads(kv.value)) for kv in result.items], result.more

    async def txn(self, ops: Sequence[Op], compares: Sequence[Compare] = (), *, audit: Put | None = None) -> int:
        """Apply ``ops`` if the compares hold, with the audit record in the same transaction: in the
        KV store with them, or beside plain rows (PostgreSQL) in one database transaction."""
        if audit is None or self.kv is self.store:
            return (await self.store.txn([*ops, *([audit] if audit else [])], list(compares))).revision
        with_kv = getattr(self.kv, "plain_txn_with", None)
        if with_kv is None:
            raise TypeError(f"{type(self.kv).__name__} cannot write beside {type(self.store).__name__}")
        return (await with_kv(list(ops), list(compares), [audit])).revision

    async def acquire(self, gid: str, owner: str, ttl: float, kv: KeyValue | None = None) -> Lease | None:
        """Take the transaction's lease when it is free (or already ours); None when another node holds it."""
        if kv is None:
            kv = await self.store.get(ACTIVE + gid)
            if kv is None:
                return None
        active = Active.model_validate(loads(kv.value))
        now = time.time()
        if not active.free(now) and active.owner != owner:
            return None
        mine = Active(due=active.due, owner=owner, until=now + ttl, ahead=active.ahead)
        try:
            revision = await self.txn([active_put(gid, mine)], [Compare(ACTIVE + gid, kv.mod_revision)])
        except ConflictError:
            return None
        return Lease(self, gid, owner, ttl, revision, mine)


class Lease:
    """This node's right to drive one transaction; every write goes through it."""

    def __init__(self, log: TxLog, gid: str, owner: str, ttl: float, revision: int, active: Active) -> None:
        self.log, self.gid, self.owner, self.ttl = log, gid, owner, ttl
        self.revision = revision
        self.active = active
        self.ended = False
        self.ahead = active.ahead  # what this lease's writes record as Active.ahead
        self.pending: dict[str, Op] = {}  # results recorded with the next write (see ``defer``)
        self._lock = asyncio.Lock()  # concurrent branches of one saga write one after another

    def defer(self, op: Op) -> None:
        """Record ``op`` with this lease's next write instead of in a store transaction of its own.

        For branch results, and a saga action's "attempted" mark while the log says ``ahead``: a result
        lost in a crash before that write means the branch is called again, which branches tolerate
        (they are idempotent); a lost mark is made up for by whoever resumes (``Active.ahead``). Every
        round ends with a write.
        """
        self.pending[op.key] = op

    def may_call_ahead(self, timeout: float) -> bool:
        """Whether a saga action may be called before its mark is written: the log says so (``ahead``)
        and the lease has time enough left that no other node can take over before the call is over,
        and before this round's next write renews the lease or hands it back."""
        return self.ahead and self.active.until - time.time() > max(self.ttl / 2, timeout + 1.0)

    async def write(self, ops: Sequence[Op], compares: Sequence[Compare] = (), *, finish: bool = False,
                    due: float | None = None, release: bool = False) -> int:
        """Apply ``ops`` if the lease is still ours, renewing it (or ending it when ``finish``)."""
        async with self._lock:
            key = ACTIVE + self.gid
            flushed = dict(self.pending)  # branches running beside this write may defer more meanwhile
            ops = [*{**flushed, **{op.key: op for op in ops}}.values()]
            if finish:
                tail: list[Op] = [Delete(key)]
            else:
                now = time.time()
                self.active = Active(due=self.active.due if due is None else due,
                                     owner="" if release else self.owner, until=0 if release else now + self.ttl,
                                     ahead=self.ahead)
                tail = [active_put(self.gid, self.active)]
            try:
                self.revision = await self.log.txn([*ops, *tail], [Compare(key, self.revision), *compares])
            except ConflictError as exc:
                if exc.key == key:
                    self.ended = True
                    self.pending.clear()
                    raise LostLease(f"transaction {self.gid}: lease taken over") from None
                raise
            for done_key, op in flushed.items():
                if self.pending.get(done_key) is op:
                    del self.pending[done_key]
            self.ended = finish
            return self.revision

    async def renew(self) -> None:
        await self.write([])

    async def release(self, due: float) -> None:
        """Hand the transaction back, due again at ``due``."""
        await self.write([], due=due, release=True)
