"""Checks shared by every engine before a transaction reaches it."""

from __future__ import annotations

from collections.abc import Sequence

from mezzo.storage.kv import Op, StoreError

MAX_KEY_BYTES = 1024


class InvalidTxnError(StoreError):
    """The transaction itself is malformed (duplicate or oversized keys)."""


def check_ops(ops: Sequence[Op]) -> None:
    seen: set[str] = set()
    for op in ops:
        if not op.key:
            raise InvalidTxnError("empty key")
        if len(op.key.encode()) > MAX_KEY_BYTES:
            raise InvalidTxnError(f"key longer than {MAX_KEY_BYTES} bytes: {op.key[:64]!r}...")
        if op.key in seen:
            raise InvalidTxnError(f"duplicate key in one transaction: {op.key!r}")
        seen.add(op.key)
