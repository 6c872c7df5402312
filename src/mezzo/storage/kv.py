"""The revisioned key-value store every Mezzo service keeps its durable state in.

Semantics follow etcd: one global revision counter; every successful transaction
gets the next revision; each key records the revision that created it and the one
that last modified it; a watch streams changes ordered and gap-free from any
revision not yet compacted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol


class StoreError(Exception):
    """Base class of storage errors."""


class ConflictError(StoreError):
    """A transaction's compare failed: a key was not at the expected revision."""

    def __init__(self, key: str, expected: int, actual: int, message: str | None = None) -> None:
        super().__init__(
            message
            if message
            else f"key {key!r} is at revision {actual}, expected {expected}"
            if actual
            else f"key {key!r} does not exist (expected revision {expected})"
            if expected
            else f"key {key!r} already exists (revision {actual})"
        )
        self.key = key
        self.expected = expected
        self.actual = actual


class CompactedError(StoreError):
    """A watch asked for a revision whose history was compacted away.

    The caller must re-read the current state (``range``) and watch from the
    revision that read returned.
    """

    def __init__(self, requested: int, compact_revision: int) -> None:
        super().__init__(
            f"revision {requested} has been compacted; the oldest revision "
            f"still watchable is {compact_revision + 1}: re-read the state and watch from there"
        )
        self.requested = requested
        self.compact_revision = compact_revision


class EventType(StrEnum):
    PUT = "PUT"
    DELETE = "DELETE"


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int


@dataclass(frozen=True, slots=True)
class Event:
    """One change. Events of one transaction share a revision."""

    revision: int
    type: EventType
    key: str
    value: bytes | None  # the new value; None for DELETE
    prev_value: bytes | None = None


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: bytes


@dataclass(frozen=True, slots=True)
class Delete:
    key: str


Op = Put | Delete


@dataclass(frozen=True, slots=True)
class Compare:
    """Require ``key`` to be at ``mod_revision`` (0 means: the key must not exist)."""

    key: str
    mod_revision: int


@dataclass(frozen=True, slots=True)
class RangeResult:
    items: list[KeyValue]
    revision: int  # store revision at which the read was taken
    more: bool = False


@dataclass(slots=True)
class TxnResult:
    revision: int
    # previous values of the keys the transaction wrote (absent: did not exist)
    prev: dict[str, KeyValue] = field(default_factory=dict)


def prefix_end(prefix: str) -> str | None:
    """The smallest key greater than every key that starts with ``prefix``; None when there is none."""
    stem = prefix.rstrip("\U0010ffff")
    if not stem:
        return None
    after = ord(stem[-1]) + 1
    if 0xD800 <= after <= 0xDFFF:  # surrogates are not valid in keys: skip over them
        after = 0xE000
    return stem[:-1] + chr(after)


class KVStore(Protocol):
    """What an engine provides. ``storage/sqlite.py`` and ``storage/postgres.py`` implement it."""

    url: str

    async def open(self) -> None:
        """Connect and run schema migrations."""

    async def close(self) -> None: ...

    async def ready(self) -> bool:
        """True when a round trip to the engine succeeds."""

    async def get(self, key: str) -> KeyValue | None: ...

    async def range(
        self, prefix: str, *, start_after: str | None = None, limit: int | None = None
    ) -> RangeResult:
        """Keys starting with ``prefix`` in key order, read at one revision."""

    async def txn(self, ops: Sequence[Op], compares: Sequence[Compare] = ()) -> TxnResult:
        """Apply ``ops`` atomically as one revision if every compare holds.

        Raises ConflictError (nothing written) when a compare fails.
        A transaction whose deletes all miss and that has no puts still
        gets no revision: its result carries the current revision.
        """

    async def revision(self) -> tuple[int, int]:
        """(current revision, compact revision)."""

    async def events(self, start: int, prefix: str = "", limit: int = 1000) -> list[Event]:
        """Events with revision >= start for keys under ``prefix``, ordered.

        Raises CompactedError when ``start`` is at or below the compact revision.
        """

    async def compact(self, revision: int) -> None:
        """Forget the history of revisions <= ``revision`` (current values stay)."""

    def watch(self, prefix: str = "", start: int | None = None) -> AsyncIterator[Event]:
        """Changes under ``prefix`` from revision ``start`` (default: the next one), forever."""
