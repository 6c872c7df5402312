"""The Redis-protocol port in front of distributed namespaces (proxy mode).

A client picks a namespace with ``SELECT n``: database 0 is ``default``, database n is ``dbn``,
and a Cache resource with ``spec.database: n`` takes database n for its own name. Commands on an
embedded namespace run in the engine as before, on the connection's fast path. Commands on a
distributed namespace are planned into per-key calls (``MGET``, ``MSET``, ``DEL``, ``EXISTS`` are
split by node, hash tags keep ``{tagged}`` keys together), every call of a pipelined batch goes
to its node in one pipeline, and the replies are put back together in the client's order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, NamedTuple

import structlog

from mezzo.cache.commands import COMMANDS, CacheError
from mezzo.cache.commands_more import object_key
from mezzo.cache.distributed.backend import Call, DistributedBackend, NodeUnavailable
from mezzo.cache.resp import Reply, RespConnection, Session
from mezzo.cache.server import CacheServer, space_name

log = structlog.get_logger("mezzo.cache")

READ_NIL = {b"get", b"hget"}  # a miss is nil: mid-rebalance, the old owner is asked next
KEYED = {
    **dict.fromkeys([b"strlen", b"ttl", b"pttl", b"type", b"hmget", b"hgetall", b"hkeys", b"hvals", b"hexists",
                     b"hlen", b"set", b"setnx", b"setex", b"psetex", b"getex", b"append", b"incr", b"decr",
                     b"incrby", b"decrby", b"incrbyfloat", b"expire", b"pexpire", b"persist", b"hset", b"hmset",
                     b"hdel", b"hincrby", b"expireat", b"pexpireat", b"expiretime", b"pexpiretime", b"getrange",
                     b"substr", b"setrange", b"hincrbyfloat"], "write"),
    **dict.fromkeys(READ_NIL, "read"),
    b"getdel": "delete",
}
SIMPLE = {b"set", b"setex", b"psetex", b"hmset", b"type", b"flushdb", b"mset"}
NO_TTL_OPTIONS = {b"EX", b"PX", b"EXAT", b"PXAT", b"KEEPTTL"}

Merge = Callable[[list[Any]], bytes]


class Plan(NamedTuple):
    """The calls a client command becomes, and how their replies make its reply: ``merge``, or
    for a single-key command (``merge`` None) the one reply re-encoded."""

    calls: list[Call]
    merge: Merge | None = None
    simple: bool = False  # the reply is a simple string (+OK), not a bulk one
    as_map: bool = False  # HGETALL: a map for RESP3 clients
    sees_errors: bool = False  # ``merge`` gets failed calls too (MGET answers nil for a key of another type)


class NamespaceRouter:
    """Which namespace a SELECT index reaches, and which namespaces live on a distributed backend."""

    def __init__(self) -> None:
        self.by_db: dict[int, str] = {}
        self.backends: dict[str, DistributedBackend] = {}
        self.default_ttl_ms: dict[str, int] = {}

    def namespace(self, db: int) -> str:
        return self.by_db.get(db) or space_name(db)

    def backend(self, namespace: str) -> DistributedBackend | None:
        return self.backends.get(namespace) if self.backends else None


class ProxyServer(CacheServer):
    """The embedded server, with SELECT mapped through Cache resources and a proxy for distributed namespaces."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.router = NamespaceRouter()

    def protocol(self) -> RespConnection:
        return ProxyConnection(self)

    def select(self, session: Session, db: int) -> None:
        session.db, session.namespace = db, self.router.namespace(db)

    def remap(self) -> None:
        """Database indexes were bound anew: connected clients follow."""
        for conn in list(self.clients.values()):
            if conn.session is not None:
                self.select(conn.session, conn.session.db)

    async def run_batch(self, session: Session, commands: list[list[bytes]]) -> list[bytes]:
        """Replies in order: local ones now, distributed ones from per-node pipelines, one round per
        segment: a keyless command (FLUSHDB, KEYS) or one that changes the session (HELLO) first
        waits for the calls before it, so it sees their effects and they are encoded as planned."""
        replies: list[bytes | None] = [None] * len(commands)
        plans: dict[int, tuple[DistributedBackend, Plan]] = {}
        for i, args in enumerate(commands):
            if session.closing:  # after QUIT nothing more runs
                commands, replies = commands[:i], replies[:i]
                break
            backend = self.router.backend(session.namespace) if session.authed else None
            name = args[0].lower()
            if backend is None or name in LOCAL or (name == b"object" and object_key(args) is None):
                if plans and name in SESSION:
                    await self._run_plans(session, plans, replies)
                replies[i] = self.execute(session, args)
                continue
            try:
                plan = self.plan(session, args, name, backend)
            except CacheError as exc:
                replies[i] = Reply.error(str(exc))
                continue
            if plan.calls:
                plans[i] = (backend, plan)
                continue
            if plans:
                await self._run_plans(session, plans, replies)
            replies[i] = await self._keyless(session, backend, args)
        if plans:
            await self._run_plans(session, plans, replies)
        return [r if r is not None else Reply.error("internal error") for r in replies]

    async def _run_plans(self, session: Session, plans: dict[int, tuple[DistributedBackend, Plan]],
                         replies: list[bytes | None]) -> None:
        """Run the planned calls, one pipeline per backend, fill in their replies and forget them."""
        for backend, indexes in _by_backend(plans).items():
            calls = [c for i in indexes for c in plans[i][1].calls]
            try:
                results = await backend.run(calls)
            except Exception as exc:  # a bug, not a node failure: answer it, keep the connection
                log.exception("cache proxy batch failed", backend=backend.kind)
                results = [exc] * len(calls)
            pos = 0
            for i in indexes:
                plan = plans[i][1]
                part, pos = results[pos:pos + len(plan.calls)], pos + len(plan.calls)
                replies[i] = self._merge(session, plan, part)
        plans.clear()

    def _merge(self, session: Session, plan: Plan, part: list[Any]) -> bytes:
        failed = None if plan.sees_errors else next((r for r in part if isinstance(r, Exception)), None)
        if failed is not None:
            return error_reply(failed)
        if plan.merge is None:
            return encode(session, part[0], plan.simple, plan.as_map)
        try:
            return plan.merge(part)
        except Exception:
            log.exception("cache proxy could not merge replies")
            return Reply.error("internal error merging node replies")

    def plan(self, session: Session, args: list[bytes], name: bytes | None = None,
             backend: DistributedBackend | None = None) -> Plan:
        name = name or args[0].lower()
        entry = COMMANDS.get(name)
        if entry is None or name in UNSUPPORTED:
            raise CacheError(f"ERR '{args[0].decode(errors='replace')[:64]}' is not available on a distributed "
                             f"namespace")
        refusal = backend.refuses(name) if backend is not None else None
        if refusal is not None:
            raise CacheError(f"ERR {refusal}")
        arity = entry[1]
        if (arity > 0 and len(args) != arity) or len(args) < abs(arity):
            raise CacheError(f"wrong number of arguments for '{name.decode()}' command")
        ttl = self.router.default_ttl_ms.get(session.namespace)
        access = KEYED.get(name)
        if access is not None:
            if ttl and name == b"set" and not NO_TTL_OPTIONS.intersection(a.upper() for a in args[3:]):
                args = [*args, b"PX", b"%d" % ttl]
            elif ttl and name == b"setnx":
                call_args = (b"SET", args[1], args[2], b"NX", b"PX", b"%d" % ttl)
                return Plan([Call(args[1], call_args, "write")], lambda r: Reply.integer(int(r[0] is not None)))
            simple = name in SIMPLE and not (name == b"set" and any(a.upper() == b"GET" for a in args[3:]))
            return Plan([Call(args[1], args, access)], None, simple, name == b"hgetall")  # type: ignore[arg-type]
        keys = args[1:]
        if name == b"mget":
            return Plan([Call(k, (b"GET", k), "read") for k in keys], lambda r: _mget_reply(session, r),
                        sees_errors=True)
        if name in (b"del", b"unlink"):
            return Plan([Call(k, (name.upper(), k), "delete") for k in keys], lambda r: Reply.integer(sum(r)))
        if name == b"exists":
            return Plan([Call(k, (b"EXISTS", k), "write") for k in keys], lambda r: Reply.integer(sum(r)))
        if name == b"mset":
            if len(keys) % 2:
                raise CacheError("wrong number of arguments for 'mset' command")
            extra = (b"PX", b"%d" % ttl) if ttl else ()
            calls = [Call(keys[i], (b"SET", keys[i], keys[i + 1], *extra), "write") for i in range(0, len(keys), 2)]
            return Plan(calls, lambda r: Reply.ok())
        if name == b"object" and (key := object_key(args)) is not None:
            return Plan([Call(key, args, "write")])  # the key is the third argument (OBJECT ENCODING key)
        if name in KEYLESS:
            return Plan([])  # run on the primaries by _keyless
        raise CacheError(f"ERR '{args[0].decode(errors='replace')[:64]}' is not available on a distributed "
                         f"namespace")

    async def _keyless(self, session: Session, backend: DistributedBackend, args: list[bytes]) -> bytes:
        name = args[0].lower()
        try:
            if name == b"scan":
                return await self._scan(session, backend, args)
            replies = [await backend.on_primary(i, (name.upper(), *args[1:])) for i in range(backend.primaries())]
            replies = [r for r in replies if r is not None]
            if name == b"dbsize":
                return Reply.integer(sum(replies))
            if name == b"keys":
                return encode(session, [k for part in replies for k in part])
            return Reply.ok()  # flushdb
        except Exception as exc:  # a node's error reply or its failure: answered, never raised
            return error_reply(exc)

    async def _scan(self, session: Session, backend: DistributedBackend, args: list[bytes]) -> bytes:
        """The cursor carries the node: ``node_cursor * primaries + node_index``."""
        try:
            cursor = int(args[1])
        except ValueError:
            return Reply.error("invalid cursor")
        count = backend.primaries()
        index, node_cursor = cursor % count, cursor // count
        reply = await backend.on_primary(index, (b"SCAN", b"%d" % node_cursor, *args[2:]))
        nxt, keys = (0, []) if reply is None else (int(reply[0]), reply[1])
        if nxt == 0:
            index += 1
            following = 0 if index >= count else index
        else:
            following = nxt * count + index
        return session.raw_array([session.bulk(b"%d" % following), encode(session, keys)])


LOCAL = {b"ping", b"echo", b"quit", b"select", b"auth", b"hello", b"client", b"info", b"command", b"config"}
UNSUPPORTED = {b"flushall"}
KEYLESS = {b"dbsize", b"keys", b"flushdb", b"scan"}
SESSION = {b"hello", b"select", b"auth"}  # change how later commands are planned or encoded
MAX_PENDING = 64  # batches queued on one connection before it stops reading from the client


def _by_backend(plans: dict[int, tuple[DistributedBackend, Plan]]) -> dict[DistributedBackend, list[int]]:
    grouped: dict[DistributedBackend, list[int]] = {}
    for i, (backend, plan) in plans.items():
        if plan.calls:
            grouped.setdefault(backend, []).append(i)
    return grouped


def _mget_reply(session: Session, replies: list[Any]) -> bytes:
    """MGET from per-key GETs: as Redis, a key holding another type is nil; any other failure fails it."""
    failed = next((r for r in replies if isinstance(r, Exception) and not str(r).startswith("WRONGTYPE")), None)
    if failed is not None:
        return error_reply(failed)
    return encode(session, [None if isinstance(r, Exception) else r for r in replies])


def error_reply(exc: BaseException) -> bytes:
    if isinstance(exc, NodeUnavailable):
        return Reply.error(f"TRYAGAIN {exc}")
    text = str(exc) or type(exc).__name__
    return Reply.error(text)


def encode(session: Session, value: Any, simple: bool = False, as_map: bool = False) -> bytes:
    """A node's raw (RESP2) reply, re-encoded for this client's protocol version."""
    if value is None:
        return session.null()
    if isinstance(value, bytes):  # a status reply never holds CR or LF: a value that does is bulk
        return b"+%s\r\n" % value if simple and b"\r" not in value and b"\n" not in value \
            else session.bulk(value)
    if isinstance(value, int):
        return Reply.integer(value)
    if isinstance(value, Exception):
        return error_reply(value)
    if isinstance(value, list):
        if as_map:
            return session.map([(value[i], value[i + 1]) for i in range(0, len(value), 2)])
        return session.raw_array([encode(session, v) for v in value])
    return session.bulk(str(value).encode())


class ProxyConnection(RespConnection):
    """Commands on embedded namespaces keep the synchronous fast path; a batch that touches a
    distributed namespace (or arrives while one is still being answered) queues, and a task
    answers the queue in order."""

    def __init__(self, server: ProxyServer) -> None:
        super().__init__(server)
        self.proxy = server
        self.queue: asyncio.Queue[tuple[list[list[bytes]], str | None]] | None = None
        self.worker: asyncio.Task[None] | None = None
        self.pending = 0  # batches queued and not answered yet
        self.throttled = False  # reading paused until the queue drains below half

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.session is not None and self.proxy.router.by_db:
            self.proxy.select(self.session, 0)  # database 0 may be bound to a named namespace

    def data_received(self, data: bytes) -> None:
        router = self.proxy.router
        if not self.pending and not router.backends:
            super().data_received(data)
            return
        session, transport = self.session, self.transport
        assert session is not None and transport is not None
        if session.closing or self.parser.error is not None:
            return
        commands = self.parser.feed(data)
        error = self.parser.error
        if not commands and error is None:
            return
        if (not self.pending and error is None and router.backend(session.namespace) is None
                and not any(c[0].lower() == b"select" for c in commands)):
            transport.write(self.server.execute_all(session, commands))  # embedded only: answer now
            if session.closing:
                transport.close()
            return
        if self.worker is None:
            self.queue = asyncio.Queue()
            self.worker = asyncio.get_running_loop().create_task(self._work(), name="mezzo-cache-proxy-conn")
        assert self.queue is not None
        self.pending += 1
        self.queue.put_nowait((commands, error))
        if error is not None:
            transport.pause_reading()
        elif self.pending >= MAX_PENDING and not self.throttled:  # a client pipelining faster than nodes answer
            self.throttled = True
            transport.pause_reading()

    async def _work(self) -> None:
        assert self.queue is not None and self.session is not None
        session = self.session
        while True:
            commands, error = await self.queue.get()
            try:
                replies = await self.proxy.run_batch(session, commands) if commands else []
            except Exception:
                log.exception("cache proxy batch failed")
                replies = [Reply.error("internal error running this command")] * len(commands)
            closing = session.closing
            if error is not None and not closing:
                replies.append(Reply.error(error))
                closing = True
            self.pending -= 1
            if self.transport is None or self.transport.is_closing():
                return
            self.transport.write(b"".join(replies))
            if self.throttled and self.pending <= MAX_PENDING // 2 and self.parser.error is None and not closing:
                self.throttled = False
                self.transport.resume_reading()
            if closing:
                self.transport.close()
                return

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.worker is not None and not self.worker.done():
            self.worker.cancel()
