"""The reaper: removes instances whose TTL ran out or that stayed critical past ``deregisterAfter``.

Every node runs one. It sleeps until the view's earliest deadline, so a lapsed instance goes
within moments of its expiry. The instance's owner (see members.py) acts at the deadline; the
other nodes wait ``GRACE`` longer in case the owner is gone. Expiry times live in the store, so a
restarted node (or any other) finds what lapsed while nothing ran and removes it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time

import structlog

from mezzo.registry.members import Membership
from mezzo.registry.model import InstanceRef
from mezzo.registry.service import RegistryService
from mezzo.registry.view import CRITICAL, LEASE, Deadline, RegistryView

log = structlog.get_logger("mezzo.registry")
GRACE = 1.0  # how long non-owners wait past a deadline before acting
RETRY = 1.0  # after a failed write (the store is unreachable), look again this much later
MAX_SLEEP = 1.0


class Reaper:
    def __init__(self, service: RegistryService, view: RegistryView, members: Membership) -> None:
        self.service = service
        self.view = view
        self.members = members
        self._last_sweep = 0.0

    async def run(self) -> None:
        while True:
            now = time.time()
            members = self.members.live(now)
            for deadline in self.view.due(now):
                try:
                    await self._consider(deadline, members)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("registry expiry failed; retrying", path=deadline.path, error=str(exc))
                    self.view.push(dataclasses.replace(deadline, when=time.time() + RETRY))
            if now - self._last_sweep > self.members.ttl:
                self._last_sweep = now
                try:
                    await self._sweep_members(now)
                except Exception as exc:
                    log.warning("registry member sweep failed", error=str(exc))
            self.view.deadline_added.clear()
            first = self.view.next_deadline()
            delay = MAX_SLEEP if first is None else min(max(first - time.time(), 0.0), MAX_SLEEP)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self.view.deadline_added.wait()

    async def _consider(self, deadline: Deadline, members: list[str]) -> None:
        ref = InstanceRef.from_path(deadline.path)
        known = self.view.known(ref)
        if deadline.kind == LEASE:
            lease = self.view.lease(deadline.path)
            if (lease[0] if lease else 0) != deadline.revision:
                return  # renewed (a later deadline is queued) or removed
            if known is None:
                if lease is not None:
                    await self.service.remove_lease(deadline.path, lease[0])
                return
        elif deadline.kind == CRITICAL:
            if known is None or known.revision != deadline.revision:
                return  # removed, re-registered or passing again
        if not deadline.deferred and not self.members.owns(deadline.path, members):
            self.view.push(dataclasses.replace(deadline, when=deadline.when + GRACE, deferred=True))
            return
        if deadline.kind == LEASE:
            await self.service.expire(known, "ttl", lease=True)  # type: ignore[arg-type]
        else:
            await self.service.expire(known, "critical", lease=False)  # type: ignore[arg-type]

    async def _sweep_members(self, now: float) -> None:
        """Forget nodes that stopped renewing long ago (they crashed; a clean stop removes itself)."""
        for member, (revision, expires) in list(self.view.members.items()):
            if member != self.members.node_id and expires + self.members.ttl < now:
                await self.service.remove_member(member, revision)
