"""The audit log: one record per change (who, when, what), written in the same transaction as the change."""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from mezzo.jsonutil import dumps, loads
from mezzo.storage.kv import KVStore, Put

AUDIT_PREFIX = "/audit/"


class AuditRecord(BaseModel):
    at: datetime
    user: str
    action: str  # e.g. resource.create, resource.configure, resource.delete, token.create
    kind: str | None = None
    namespace: str | None = None
    name: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)


def audit_put(
    user: str,
    action: str,
    *,
    kind: str | None = None,
    namespace: str | None = None,
    name: str | None = None,
    detail: dict[str, Any] | None = None,
) -> Put:
    """The Put that records an audit entry; keys sort by time."""
    now = time.time_ns()
    record = AuditRecord(
        at=datetime.fromtimestamp(now / 1e9, UTC), user=user, action=action,
        kind=kind, namespace=namespace, name=name, detail=detail or {},
    )
    key = f"{AUDIT_PREFIX}{now:020d}-{secrets.token_hex(4)}"
    return Put(key, dumps(record.model_dump(mode="json")))


async def read_audit(store: KVStore, keep: Callable[[AuditRecord], bool], since: datetime | None,
                     until: datetime | None, limit: int, newest: bool = False) -> list[dict[str, Any]]:
    """Audit records from ``since`` to ``until`` that ``keep`` accepts, at most ``limit``: the oldest
    ones, oldest first; with ``newest``, the most recent ones, newest first (every record of the
    window is read to find them)."""
    cursor = f"{AUDIT_PREFIX}{max(int(since.timestamp() * 1e9), 0):020d}" if since else None
    items: deque[dict[str, Any]] = deque(maxlen=limit if newest else None)
    while newest or len(items) < limit:
        page = await store.range(AUDIT_PREFIX, start_after=cursor, limit=500)
        for kv in page.items:
            record = AuditRecord.model_validate(loads(kv.value))
            if until and record.at > until:
                return _ordered(items, newest)
            if keep(record):
                items.append(record.model_dump(mode="json"))
                if not newest and len(items) >= limit:
                    return list(items)
        if not page.more:
            break
        cursor = page.items[-1].key
    return _ordered(items, newest)


def _ordered(items: deque[dict[str, Any]], newest: bool) -> list[dict[str, Any]]:
    return list(reversed(items)) if newest else list(items)
