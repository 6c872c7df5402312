"""The Redis-protocol front of the embedded engine: authentication, dispatch, INFO, metrics."""

from __future__ import annotations

import time
from typing import Any

import structlog

from mezzo.cache.commands import COMMANDS, NO_AUTH, CacheError, check_arity
from mezzo.cache.engine import Engine, Keyspace
from mezzo.cache.resp import Reply, RespConnection, Session
from mezzo.node.auth import Verb

log = structlog.get_logger("mezzo.cache")


def space_name(db: int) -> str:
    """``SELECT 0`` is the ``default`` namespace; database N is namespace ``dbN``."""
    return "default" if db == 0 else f"db{db}"


class CacheServer:
    def __init__(self, engine: Engine, tokens: Any = None, require_auth: bool = True, max_memory: int | None = None,
                 metrics: Any = None) -> None:
        self.engine = engine
        self.tokens = tokens
        self.require_auth = require_auth and tokens is not None
        self.max_memory = max_memory
        self.clients: dict[int, RespConnection] = {}
        self.started = time.time()
        self.commands_processed = 0
        self._ops = metrics.counter("cache", "commands", "total", "Redis-protocol commands by name.",
                                    labels=("command",)) if metrics is not None else None
        self._op_children: dict[bytes, Any] = {}

    def protocol(self) -> RespConnection:
        return RespConnection(self)

    def space_for(self, session: Session) -> Keyspace:
        return self.engine.space(space_name(session.db))

    def login(self, session: Session, token: str) -> bool:
        if self.tokens is None:
            session.authed = True
            return True
        principal = self.tokens.authenticate(token)
        if principal is None or not principal.has_verb(Verb.USE):
            return False
        session.authed, session.principal = True, principal
        return True

    def execute(self, session: Session, args: list[bytes]) -> bytes:
        name = args[0].lower()
        entry = COMMANDS.get(name)
        self.commands_processed += 1
        if entry is None:
            shown = " ".join(f"'{a.decode(errors='replace')[:64]}'" for a in args[1:4])
            return Reply.error(f"unknown command '{args[0].decode(errors='replace')[:64]}', with args beginning with: {shown}")
        if not session.authed and name not in NO_AUTH:
            return Reply.error("NOAUTH Authentication required.")
        handler, arity, _ = entry
        if self._ops is not None:
            child = self._op_children.get(name)
            if child is None:
                child = self._op_children[name] = self._ops.labels(name.decode())
            child.inc()
        try:
            check_arity(name, arity, args)
            return handler(self, session, args)
        except CacheError as exc:
            return Reply.error(str(exc))
        except Exception:
            log.exception("cache command failed", command=name.decode(errors="replace"))
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
                 "# Stats", f"total_commands_processed:{self.commands_processed}", f"keyspace_hits:{hits}",
                 f"keyspace_misses:{misses}", f"evicted_keys:{sum(ks.evictions for ks in spaces.values())}",
                 f"expired_keys:{sum(ks.expired for ks in spaces.values())}", "", "# Keyspace"]
        for index in range(16):
            ks = spaces.get(space_name(index))
            if ks is not None and ks.data:
                lines.append(f"db{index}:keys={len(ks.data)},expires={len(ks.expires)},avg_ttl=0")
        return "\r\n".join(lines) + "\r\n"
