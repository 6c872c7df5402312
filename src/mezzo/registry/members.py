"""Which nodes share the registry's work, and which of them owns each instance.

Each node keeps a lease under ``/registry/members/`` (renewed every third of ``MEMBER_TTL``,
deleted on a clean stop). Every node sees the same live members through its view, so rendezvous
hashing gives every node the same owner for an instance without any coordination: the owner runs
the instance's active check and reaps it first. When membership changes, two nodes may briefly
both act on an instance; their writes compare revisions, so that costs a probe, never a wrong write.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import socket
import time

import structlog

from mezzo.registry.service import RegistryService
from mezzo.registry.view import RegistryView

log = structlog.get_logger("mezzo.registry")
MEMBER_TTL = 10.0


def _score(member: str, path: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{member}\0{path}".encode(), digest_size=8).digest(), "big")


class Membership:
    def __init__(self, service: RegistryService, view: RegistryView, ttl: float = MEMBER_TTL) -> None:
        self.service = service
        self.view = view
        self.ttl = ttl
        self.node_id = secrets.token_hex(6)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._renew()
        self._task = asyncio.create_task(self._renew_forever(), name="mezzo-registry-membership")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.service.remove_member(self.node_id)  # the others take over at once

    async def _renew(self) -> None:
        await self.service.renew_member(self.node_id, self.ttl, {"host": socket.gethostname(), "pid": os.getpid()})

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                await self._renew()
            except Exception as exc:
                log.warning("registry membership renewal failed", error=str(exc))

    def live(self, now: float | None = None) -> list[str]:
        """Members whose lease has not run out; this node always counts itself."""
        now = time.time() if now is None else now
        members = {m for m, (_, expires) in self.view.members.items() if expires > now}
        members.add(self.node_id)
        return sorted(members)

    def owner(self, path: str, members: list[str] | None = None) -> str:
        return max(members or self.live(), key=lambda m: _score(m, path))

    def owns(self, path: str, members: list[str] | None = None) -> bool:
        return self.owner(path, members) == self.node_id
