"""What the proxy needs from a distributed cache backend, the calls it sends, and node settings.

Nothing here needs redis-py: a node without the ``redis`` extra still validates Cache resources
and serves embedded namespaces; the backends themselves are imported when one is applied.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

Access = Literal["read", "write", "delete"]


class NodeUnavailable(Exception):
    """The node owning a key is failing and has not been ejected yet (inside the detection window)."""


class NodeSettingError(ConnectionError):
    """A node's settings cannot be used on this Mezzo node (its password variable is unset, a TLS file
    cannot be read): a failure to connect, so it shows in the node's health and status, never a crash."""


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    timeout: float = 1.0  # per operation and per connect, seconds
    eject_after: int = 3  # consecutive failures
    probe_interval: float = 0.1  # first probe after a failure; doubles each time
    probe_max_interval: float = 5.0
    max_connections: int = 64


@dataclass(frozen=True, slots=True)
class NodeTLS:
    """TLS to a node (``rediss://``), with redis-py's URL options: ``ssl_ca_certs`` is a CA bundle
    trusted besides the system's; ``verify=False`` is ``ssl_cert_reqs=none``; ``certfile`` and
    ``keyfile`` are a client certificate. Files are read on each node, when it connects."""

    ca_certs: str | None = None
    verify: bool = True
    certfile: str | None = None
    keyfile: str | None = None

    def context(self) -> ssl.SSLContext:
        """A client context as redis-py builds one (so the data path and control clients agree)."""
        context = ssl.create_default_context()
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        try:
            if self.certfile:
                context.load_cert_chain(self.certfile, self.keyfile)
            if self.ca_certs:
                context.load_verify_locations(cafile=self.ca_certs)
        except (OSError, ssl.SSLError) as exc:  # the paths are settings, not secrets
            raise NodeSettingError(f"TLS files ({self._files()}) cannot be loaded: "
                                   f"{getattr(exc, 'strerror', None) or exc}") from None
        return context

    def _files(self) -> str:
        given = {"ssl_ca_certs": self.ca_certs, "ssl_certfile": self.certfile, "ssl_keyfile": self.keyfile}
        return ", ".join(f"{k}={v}" for k, v in given.items() if v)


@dataclass(frozen=True, slots=True)
class NodeAddress:
    host: str
    port: int
    db: int = 0
    password: str | None = field(default=None, repr=False)
    username: str | None = None
    tls: NodeTLS | None = None
    password_env: str | None = None  # the variable holding the password, read at each connect

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}"

    def auth_password(self) -> str | None:
        """The password to AUTH with, read now: from ``password_env`` when given, else the URL's.
        Raises NodeSettingError naming the variable (never a value) when it is unset or empty."""
        if self.password_env is None:
            return self.password
        value = os.environ.get(self.password_env)
        if not value:
            raise NodeSettingError(f"environment variable {self.password_env} (passwordEnv of {self.label}) "
                                   "is not set on this Mezzo node")
        return value


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
