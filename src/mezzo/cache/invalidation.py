"""Server side of near caches: which listening client read which key, and telling it when that key changes.

Like Redis's client tracking (default mode): a read made with a listener's id remembers
(key -> listener ids); the first write, delete, expiry, eviction or TTL change of that key sends
the key to those listeners once and forgets it, since they have dropped their copy. A listener
only hears of keys it read, so its stream costs in proportion to what it caches.

Keys queued for a listener are coalesced in a set; if one falls more than ``MAX_PENDING`` keys
behind, it gets "flush everything" instead, never an unbounded queue. The table is bounded
too: past ``max_keys`` tracked keys, the oldest are invalidated to make room (as Redis's
``tracking-table-max-keys``).
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from mezzo.cache.engine import Engine, Keyspace

MAX_PENDING = 10_000
MAX_TRACKED = 1_000_000


class Listener:
    """One near cache's stream: the keys it must drop, waiting to be sent."""

    def __init__(self, namespace: str) -> None:
        self.id = secrets.token_urlsafe(12)
        self.namespace = namespace
        self.pending: set[bytes] = set()
        self.flush = False
        self.ready = asyncio.Event()

    def push(self, key: bytes | None) -> None:
        if key is None or len(self.pending) >= MAX_PENDING:
            self.flush = True
            self.pending.clear()
        elif not self.flush:
            self.pending.add(key)
        self.ready.set()

    def take(self) -> dict[str, Any] | None:
        """The next event to send, or None when nothing is due."""
        self.ready.clear()
        if self.flush:
            self.flush = False
            return {"flush": True}
        if not self.pending:
            return None
        keys, self.pending = self.pending, set()
        return {"keys": [k.decode("utf-8", "replace") for k in keys]}


class Tracking:
    """Every listener of an engine and the keys each one read, per namespace."""

    def __init__(self, engine: Engine, max_keys: int = MAX_TRACKED) -> None:
        self.engine = engine
        self.max_keys = max_keys
        self.listeners: dict[str, Listener] = {}
        self.tables: dict[str, dict[bytes, set[str]]] = {}

    def listen(self, namespace: str) -> Listener:
        listener = Listener(namespace)
        self.listeners[listener.id] = listener
        ks = self.engine.space(namespace)
        if ks.tracker is None:
            table: dict[bytes, set[str]] = {}
            self.tables[namespace] = table
            ks.tracker = lambda key: self._changed(namespace, table, key)
        return listener

    def leave(self, listener: Listener) -> None:
        self.listeners.pop(listener.id, None)
        if not any(other.namespace == listener.namespace for other in self.listeners.values()):
            table = self.tables.pop(listener.namespace, None)
            ks = self.engine.spaces.get(listener.namespace)
            if ks is not None and table is not None:
                ks.tracker = None

    def track(self, ks: Keyspace, key: bytes, listener_id: str) -> bool:
        """Remember that ``listener_id`` read ``key``; False when there is no such listener here."""
        listener = self.listeners.get(listener_id)
        table = self.tables.get(ks.name)
        if listener is None or listener.namespace != ks.name or table is None:
            return False
        readers = table.get(key)
        if readers is None:
            if len(table) >= self.max_keys:
                self._changed(ks.name, table, next(iter(table)))
            readers = table[key] = set()
        readers.add(listener_id)
        return True

    def _changed(self, namespace: str, table: dict[bytes, set[str]], key: bytes | None) -> None:
        if key is None:
            table.clear()
            for listener in self.listeners.values():
                if listener.namespace == namespace:
                    listener.push(None)
            return
        readers = table.pop(key, None)
        if readers:
            for listener_id in readers:
                listener = self.listeners.get(listener_id)
                if listener is not None:
                    listener.push(key)

    def close(self) -> None:
        """Tell every listener to flush (the node stops)."""
        for listener in self.listeners.values():
            listener.push(None)


def tracking_of(engine: Engine) -> Tracking:
    if not isinstance(engine.tracking, Tracking):
        engine.tracking = Tracking(engine)
    return engine.tracking
