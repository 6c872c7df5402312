"""Service registry semantics on the KV store: register, heartbeat, deregister, status changes, expiry.

Storage (``{ref}`` is ``{namespace}/{service}/{instance id}``):

- ``/registry/instances/{ref}``  the instance as registered, with its check status. Its store
                                 revision changes only on a real change (registration, status flip),
                                 so watchers and blocking queries never wake for heartbeats.
- ``/registry/leases/{ref}``     ``{"expiresAt": UNIX_TIME}`` for an instance with a TTL. A heartbeat
                                 is one small put of this key, compared against the instance's revision
                                 so it can never revive a removed instance.
- ``/registry/members/{node}``   each node's own lease: which nodes are alive to share the checks.

Every removal (deregister, TTL expiry, critical too long) is one transaction that compares the
revisions it decided on, so any number of nodes may reap the same instance: one wins, the rest
fail their compare and do nothing. Registrations and removals are audited in the same transaction;
heartbeats and status flips are not (they are frequent and carry no intent).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mezzo.jsonutil import dumps, loads
from mezzo.node.audit import audit_put
from mezzo.node.errors import conflict, not_found
from mezzo.registry.metrics import RegistryMetrics
from mezzo.registry.model import Instance, InstanceIn, InstanceRef, Status
from mezzo.storage.kv import Compare, ConflictError, Delete, KeyValue, KVStore, Op, Put

ROOT = "/registry/"
INSTANCES, LEASES, MEMBERS = "/registry/instances/", "/registry/leases/", "/registry/members/"
AUDIT_KIND = "ServiceInstance"
SYSTEM_USER = "mezzo"
COALESCE = 0.1  # a heartbeat within this share of the TTL after the last stored renewal is not written


def now() -> datetime:
    return datetime.now(UTC)


def lease_value(expires_at: float) -> bytes:
    return dumps({"expiresAt": round(expires_at, 3)})


def lease_expiry(value: bytes) -> float:
    return float(loads(value)["expiresAt"])


@dataclass(frozen=True, slots=True)
class Known:
    """What a node knows of an instance: its document, revision, and lease (0 when it has none)."""

    instance: Instance
    revision: int
    lease_revision: int = 0
    expires_at: float = 0.0


class RegistryService:
    def __init__(self, store: KVStore, metrics: RegistryMetrics | None = None) -> None:
        self.store = store
        self.metrics = metrics or RegistryMetrics(None)
        self.last_write = 0  # revision of this node's latest registry write: reads wait for it

    async def _txn(self, ops: list[Op], compares: list[Compare]) -> int:
        result = await self.store.txn(ops, compares)
        self.last_write = max(self.last_write, result.revision)
        return result.revision

    async def load(self, ref: InstanceRef) -> Known | None:
        kv = await self.store.get(INSTANCES + ref.path)
        return None if kv is None else Known(parse(kv), kv.mod_revision)

    # registration ------------------------------------------------------------------------

    async def register(self, namespace: str, service: str, spec: InstanceIn, user: str) -> tuple[Instance, bool]:
        """Register or replace an instance; (instance, created). Registering the same thing
        again only renews its lease: no new revision of the instance, no audit record."""
        ref = InstanceRef(namespace, service, spec.instance_id)
        for _ in range(20):  # a lost race with a concurrent status flip or re-registration: read again
            known = await self.load(ref)
            old = known.instance if known else None
            if old is not None and old.same_spec(spec):
                if spec.ttl is not None:
                    try:
                        await self._renew(ref, known.revision, spec.ttl)  # type: ignore[union-attr]
                    except ConflictError:
                        continue
                return old, False
            keep_status = old is not None and old.check == spec.check
            status = old.status if keep_status else (spec.check.initial_status if spec.check else Status.PASSING)
            instance = Instance(**spec.model_dump(exclude={"id"}), id=ref.id, namespace=namespace, service=service,
                                status=status, status_since=old.status_since if keep_status else now(),  # type: ignore[union-attr]
                                output=old.output if keep_status else "",  # type: ignore[union-attr]
                                registered_at=now(), registered_by=user)
            # the lease goes first: a view applying this revision never sees the instance without it
            ops: list[Op] = [Put(LEASES + ref.path, lease_value(time.time() + spec.ttl)) if spec.ttl is not None
                             else Delete(LEASES + ref.path),
                             Put(INSTANCES + ref.path, dumps(instance.stored()))]
            ops.append(self._audit(user, "registry.register", ref, {**_summary(instance), "replaced": old is not None}))
            try:
                await self._txn(ops, [Compare(INSTANCES + ref.path, known.revision if known else 0)])
            except ConflictError:
                continue
            self.metrics.change(namespace, service, "registered")
            return instance, old is None
        raise conflict(f"instance {ref.path} keeps changing; try again")

    async def heartbeat(self, ref: InstanceRef, known: Known | None) -> float | None:
        """Renew the TTL; the new expiry (None for an instance without TTL). 404 when the
        instance is not registered (any more): the client registers again."""
        for _ in range(5):
            if known is None:
                known = await self.load(ref)
                if known is None:
                    self.metrics.heartbeat(ref.namespace, ref.service, "unknown")
                    raise not_found(f"instance {ref.id!r} of service {ref.service!r}")
            ttl = known.instance.ttl
            if ttl is None:
                return None
            if known.expires_at - time.time() > ttl * (1 - COALESCE):
                self.metrics.heartbeat(ref.namespace, ref.service, "coalesced")
                return known.expires_at  # renewed moments ago: spare the store a write
            try:
                expires = await self._renew(ref, known.revision, ttl)
            except ConflictError:
                known = None  # changed or removed since this node last saw it
                continue
            self.metrics.heartbeat(ref.namespace, ref.service, "renewed")
            return expires
        raise conflict(f"instance {ref.path} keeps changing; try again")

    async def _renew(self, ref: InstanceRef, revision: int, ttl: float) -> float:
        expires = time.time() + ttl
        await self._txn([Put(LEASES + ref.path, lease_value(expires))], [Compare(INSTANCES + ref.path, revision)])
        return expires

    async def deregister(self, ref: InstanceRef, user: str) -> Instance:
        for _ in range(20):
            known = await self.load(ref)
            if known is None:
                raise not_found(f"instance {ref.id!r} of service {ref.service!r}")
            try:
                await self._remove(ref, known, user, "registry.deregister", {}, False)
            except ConflictError:
                continue
            self.metrics.change(ref.namespace, ref.service, "deregistered")
            return known.instance
        raise conflict(f"instance {ref.path} keeps changing; try again")

    # what the registry itself decides -------------------------------------------------------

    async def set_status(self, known: Known, status: Status, output: str) -> bool:
        """Record a check's verdict if the instance is still at the revision it was judged at."""
        ref = _ref(known.instance)
        same = status is known.instance.status  # only the output is recorded: the status has not moved since
        update: dict[str, Any] = {"status": status, "output": output[:500]}
        if not same:
            update["status_since"] = now()
        instance = known.instance.model_copy(update=update)
        try:
            await self._txn([Put(INSTANCES + ref.path, dumps(instance.stored()))],
                            [Compare(INSTANCES + ref.path, known.revision)])
        except ConflictError:
            return False
        if not same:
            self.metrics.change(ref.namespace, ref.service, status.value)
        return True

    async def expire(self, known: Known, reason: str, *, lease: bool = True) -> bool:
        """Remove an instance whose TTL ran out (or, ``lease=False``, that stayed critical too long),
        unless it changed (or, with ``lease``, was renewed) since ``known`` was read; False when
        another node or a heartbeat won."""
        ref = _ref(known.instance)
        try:
            await self._remove(ref, known, SYSTEM_USER, "registry.expire", {"reason": reason}, lease)
        except ConflictError:
            return False
        self.metrics.change(ref.namespace, ref.service, "expired")
        return True

    async def remove_lease(self, path: str, revision: int) -> None:
        """Drop a lease left without its instance (nothing should leave one; be tidy anyway)."""
        try:
            await self._txn([Delete(LEASES + path)], [Compare(LEASES + path, revision), Compare(INSTANCES + path, 0)])
        except ConflictError:
            pass

    async def _remove(self, ref: InstanceRef, known: Known, user: str, action: str, detail: dict[str, Any],
                      lease: bool) -> None:
        compares = [Compare(INSTANCES + ref.path, known.revision)]
        if lease:
            compares.append(Compare(LEASES + ref.path, known.lease_revision))  # a renewal since then wins
        await self._txn([Delete(INSTANCES + ref.path), Delete(LEASES + ref.path),
                         self._audit(user, action, ref, {**_summary(known.instance), **detail})], compares)

    # node membership ---------------------------------------------------------------------------

    async def renew_member(self, node_id: str, ttl: float, info: dict[str, Any]) -> None:
        await self._txn([Put(MEMBERS + node_id, dumps({"expiresAt": round(time.time() + ttl, 3), **info}))], [])

    async def remove_member(self, node_id: str, revision: int | None = None) -> None:
        compares = [Compare(MEMBERS + node_id, revision)] if revision is not None else []
        try:
            await self._txn([Delete(MEMBERS + node_id)], compares)
        except ConflictError:
            pass

    @staticmethod
    def _audit(user: str, action: str, ref: InstanceRef, detail: dict[str, Any]) -> Put:
        return audit_put(user, action, kind=AUDIT_KIND, namespace=ref.namespace, name=f"{ref.service}/{ref.id}",
                         detail={"service": ref.service, "id": ref.id, **detail})


def parse(kv: KeyValue) -> Instance:
    return Instance.model_validate(loads(kv.value))


def _ref(instance: Instance) -> InstanceRef:
    return InstanceRef(instance.namespace, instance.service, instance.id)


def _summary(instance: Instance) -> dict[str, Any]:
    return {"host": instance.host, "port": instance.port, "ttl": instance.ttl,
            "check": instance.check.out() if instance.check else None}
