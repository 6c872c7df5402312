"""Checks shared by every engine before a transaction reaches it."""

from __future__ import annotations

from collections.abc import Sequence

from mezzo.storage.kv import Compare, Op, StoreError

MAX_KEY_BYTES = 1024


class InvalidTxnError(StoreError):
    """The transaction itself is malformed (bad, duplicate or oversized keys)."""


InvalidKeyError = InvalidTxnError


def check_key(key: str, *, allow_empty: bool = False) -> None:
    """Keys are UTF-8 text without NUL (PostgreSQL text cannot hold it), at most MAX_KEY_BYTES."""
    if not key and not allow_empty:
        raise InvalidKeyError("empty key")
    if "\x00" in key:
        raise InvalidKeyError(f"key contains NUL: {key[:64]!r}")
    try:
        size = len(key.encode())
    except UnicodeEncodeError:
        raise InvalidKeyError(f"key is not valid Unicode text: {key[:64]!r}") from None
    if size > MAX_KEY_BYTES:
        raise InvalidKeyError(f"key longer than {MAX_KEY_BYTES} bytes: {key[:64]!r}...")


def check_ops(ops: Sequence[Op], compares: Sequence[Compare] = ()) -> None:
    for compare in compares:
        check_key(compare.key)
    seen: set[str] = set()
    for op in ops:
        check_key(op.key)
        if op.key in seen:
            raise InvalidTxnError(f"duplicate key in one transaction: {op.key!r}")
        seen.add(op.key)


def check_range(prefix: str, limit: int | None) -> None:
    check_key(prefix, allow_empty=True)
    if limit is not None and limit < 1:
        raise ValueError("limit must be at least 1 (or None for no limit)")
