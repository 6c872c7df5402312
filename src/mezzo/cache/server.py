"""The Redis-protocol front of the embedded engine: authentication, dispatch, INFO, metrics."""

from __future__ import annotations

import time
from typing import Any

import structlog

from mezzo.cache.commands import COMMANDS, NO_AUTH, CacheError, Cmd, arity_error
from mezzo.cache.engine import Engine, Keyspace
from mezzo.cache.resp import Reply, RespConnection, Session
from mezzo.node.auth import Verb

log = structlog.get_logger("mezzo.cache")
_NO_LIMIT = 1 << 62


def space_name(db: int) -> str:
    """``SELECT 0`` is the ``default`` namespace; database N is namespace ``dbN``."""
    return "default" if db == 0 else f"db{db}"


class _Entry:
    """One command as dispatch needs it, with its call count (a plain int, read at scrape)."""

    __slots__ = ("calls", "handler", "least", "most", "name", "open")

    def __init__(self, name: bytes, handler: Cmd, arity: int) -> None:
        self.name = name
        self.handler = handler
        self.least = abs(arity)  # Redis' arity: N exactly, or -N for at least N
        self.most = arity if arity > 0 else _NO_LIMIT
        self.open = name in NO_AUTH  # allowed before AUTH
        self.calls = 0


class CacheServer:
    def __init__(self, engine: Engine, tokens: Any = None, require_auth: bool = True, max_memory: int | None = None,
                 metrics: Any = None) -> None:
        self.engine = engine
        self.tokens = tokens
        self.require_auth = require_auth and tokens is not None
        self.max_memory = max_memory
        self.clients: dict[int, RespConnection] = {}
        self.started = time.time()
        self.commands_processed = 0  # commands no table entry counts (unknown ones; a subclass may add its own)
        # Dispatch by the name as sent: clients send upper or lower case, so both are keys and
        # only a mixed-case name costs a lower().
        self.table: dict[bytes, _Entry] = {}
        for name, (handler, arity, _) in COMMANDS.items():
            entry = _Entry(name, handler, arity)
            self.table[name] = self.table[name.upper()] = entry
        self._pushed: dict[bytes, int] = {}
        self._ops = None
        if metrics is not None:
            self._ops = metrics.counter("cache", "commands", "total", "Redis-protocol commands by name.",
                                        labels=("command",))
            metrics.on_scrape(self._push_counts)

    def total_commands(self) -> int:
        return sum(entry.calls for entry in self.entries()) + self.commands_processed

    def entries(self) -> list[_Entry]:
        return [entry for name, entry in self.table.items() if name == entry.name]

    async def _push_counts(self) -> None:
        """Move the plain per-command counts into the Prometheus counter, once per scrape."""
        assert self._ops is not None
        for entry in self.entries():
            delta = entry.calls - self._pushed.get(entry.name, 0)
            if delta:
                self._ops.labels(entry.name.decode()).inc(delta)
                self._pushed[entry.name] = entry.calls

    def protocol(self) -> RespConnection:
        return RespConnection(self)

    def space_for(self, session: Session) -> Keyspace:
        ks = self.engine.spaces.get(session.namespace)
        return self.engine.space(session.namespace) if ks is None else ks

    def select(self, session: Session, db: int) -> None:
        session.db, session.namespace = db, space_name(db)

    def login(self, session: Session, token: str) -> bool:
        if self.tokens is None:
            session.authed = True
            return True
        principal = self.tokens.authenticate(token)
        if principal is None or not principal.can(Verb.USE):  # as /v1/cache: every namespace
            return False
        session.authed, session.principal = True, principal
        return True

    def _valid(self, session: Session) -> bool:
        return session.principal is None or self.tokens.still_valid(session.principal)

    def execute_all(self, session: Session, commands: list[list[bytes]]) -> bytes:
        """Run commands in order (stopping after QUIT) and return their replies as one buffer."""
        if len(commands) == 1:
            return self.execute(session, commands[0])
        table = self.table
        replies = []
        for args in commands:
            # ``execute`` inlined for the common case; anything unusual goes through it
            entry = table.get(args[0])
            if entry is None or not (session.authed or entry.open) or not self._valid(session) or not entry.least <= len(args) <= entry.most:
                replies.append(self.execute(session, args))
            else:
                entry.calls += 1
                try:
                    replies.append(entry.handler(self, session, args))
                except Exception as exc:
                    replies.append(self._failed(entry, exc))
            if session.closing:
                break
        return b"".join(replies)

    def execute(self, session: Session, args: list[bytes]) -> bytes:
        entry = self.table.get(args[0])
        if entry is None:
            entry = self.table.get(args[0].lower())
            if entry is None:
                self.commands_processed += 1
                shown = " ".join(f"'{a.decode(errors='replace')[:64]}'" for a in args[1:4])
                return Reply.error(f"unknown command '{args[0].decode(errors='replace')[:64]}', "
                                   f"with args beginning with: {shown}")
        entry.calls += 1
        if session.authed and not self._valid(session):
            session.authed, session.principal = False, None  # revoked or expired since AUTH
        if not session.authed and not entry.open:
            return Reply.error("NOAUTH Authentication required.")
        if not entry.least <= len(args) <= entry.most:
            return Reply.error(arity_error(entry.name))
        try:
            return entry.handler(self, session, args)
        except Exception as exc:
            return self._failed(entry, exc)

    @staticmethod
    def _failed(entry: _Entry, exc: Exception) -> bytes:
        if isinstance(exc, CacheError):
            return Reply.error(str(exc))
        log.error("cache command failed", command=entry.name.decode(), exc_info=exc)
        return Reply.error("internal error running this command")

    def info(self) -> str:
        spaces = self.engine.spaces
        memory = sum(ks.memory for ks in spaces.values())
        hits = sum(ks.hits for ks in spaces.values())
        misses = sum(ks.misses for ks in spaces.values())
        lines = ["# Server", "redis_version:7.0.0", "mezzo:1", "redis_mode:standalone",
                 f"uptime_in_seconds:{int(time.time() - self.started)}", "",
                 "# Clients", f"connected_clients:{len(self.clients)}", "",
                 "# Memory", f"used_memory:{memory}", f"maxmemory:{self.max_memory or 0}", "",
                 "# Stats", f"total_commands_processed:{self.total_commands()}", f"keyspace_hits:{hits}",
                 f"keyspace_misses:{misses}", f"evicted_keys:{sum(ks.evictions for ks in spaces.values())}",
                 f"expired_keys:{sum(ks.expired for ks in spaces.values())}", "", "# Keyspace"]
        for index in range(16):
            ks = spaces.get(space_name(index))
            if ks is not None and ks.data:
                lines.append(f"db{index}:keys={len(ks.data)},expires={len(ks.expires)},avg_ttl=0")
        return "\r\n".join(lines) + "\r\n"
