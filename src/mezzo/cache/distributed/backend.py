"""What the proxy needs from a distributed cache backend, the calls it sends, and node settings.

Nothing here needs redis-py: a node without the ``redis`` extra still validates Cache resources
and serves embedded namespaces; the backends themselves are imported when one is applied.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Protocol

Access = Literal["read", "write", "delete"]


class NodeUnavailable(Exception):
    """The node owning a key is failing and has not been ejected yet (inside the detection window)."""


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    timeout: float = 1.0  # per operation and per connect, seconds
    eject_after: int = 3  # consecutive failures
    probe_interval: float = 0.1  # first probe after a failure; doubles each time
    probe_max_interval: float = 5.0
    max_connections: int = 64


@dataclass(frozen=True, slots=True)
class NodeAddress:
    host: str
    port: int
    db: int = 0
    password: str | None = None
    username: str | None = None

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}"


class Call(NamedTuple):
    """One Redis command on one key: routed by ``key`` (its hash tag), sent as ``args``.

    ``access`` matters only while a rebalance runs: a ``read`` that misses is retried at the key's
    old node, a ``write`` moves the key first, a ``delete`` goes to both.
    """

    key: bytes
    args: Sequence[bytes]
    access: Access = "read"


class NotRebalanced(Exception):
    """A rebalance was asked of a backend that cannot move keys (memcached cannot list them)."""


class DistributedBackend(Protocol):
    kind: str  # "redis" | "redis-cluster" | "nodes"

    def refuses(self, command: bytes) -> str | None:
        """Why a client command (lower case) cannot run on this backend, or None when it can."""

    async def run(self, calls: list[Call]) -> list[Any]:
        """Every call's raw reply, in order; a failed call's entry is its exception."""

    def primaries(self) -> int:
        """How many primaries hold keys (the ``SCAN`` cursor addresses them by index)."""

    async def on_primary(self, index: int, args: tuple[bytes, ...]) -> Any:
        """A keyless command (DBSIZE, FLUSHDB, KEYS, SCAN) on one primary; raises on failure."""

    async def rebalance(self) -> dict[str, Any]:
        """Move every key that is not on its owner (no-op where the engine does it itself);
        raises NotRebalanced where keys cannot be moved at all."""

    def status(self) -> dict[str, Any]:
        """Nodes, their health and any migration in progress."""

    async def close(self) -> None: ...
