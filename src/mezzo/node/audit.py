"""The audit log: one record per change (who, when, what), written in the same transaction as the change."""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from mezzo.jsonutil import dumps
from mezzo.storage.kv import Put

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
