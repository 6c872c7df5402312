"""The registry as every node sees it: in memory, kept current by one store watch on ``/registry/``.

With PostgreSQL as the store the watch carries changes made on any node, so every node's view
holds every namespace's instances. What other modules use (the gateway picks upstreams here)::

    view = node.service(RegistryView)
    view.instances("default", "orders")              # passing instances, lease not run out
    view.instances("default", "orders", healthy_only=False)
    view.index("default", "orders")                  # grows on every change of the service
    unsubscribe = view.subscribe(on_change)          # on_change(namespace, service), see below
    await view.wait("default", "orders", timeout=5)  # park until the service changes

``subscribe`` callbacks run synchronously on the view's task right after a change is applied
(a registration, a removal, a status flip, or a lease renewed after it had run out); they must
not block: note what changed and act on it elsewhere. ``version`` counts every change on this
node, for consumers that prefer to poll. Instances are shared, frozen models: read, never modify.

A service's *index* is the store revision of its last change. Heartbeats do not change it (they
touch lease keys only), so blocking queries and subscribers wake for real changes only.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from mezzo.registry.model import Instance, InstanceRef, Status
from mezzo.registry.service import (
    INSTANCES,
    LEASES,
    MEMBERS,
    ROOT,
    Known,
    RegistryService,
    lease_expiry,
    parse,
)
from mezzo.storage.kv import Event, EventType, KeyValue
from mezzo.storage.watch import follow

log = structlog.get_logger("mezzo.registry")
Subscriber = Callable[[str, str], None]
LEASE, CRITICAL = "lease", "critical"


@dataclass(slots=True)
class _Service:
    instances: dict[str, Instance] = field(default_factory=dict)
    revisions: dict[str, int] = field(default_factory=dict)  # instance id -> revision of its document
    index: int = 0
    ordered: list[Instance] | None = None  # the instances by id, built on first read after a change


@dataclass(order=True, frozen=True, slots=True)
class Deadline:
    """When the reaper should look at an instance: its lease runs out, or it was critical too long."""

    when: float
    kind: str  # LEASE | CRITICAL
    path: str
    revision: int  # of the lease (LEASE) or of the instance document (CRITICAL)
    deferred: bool = False  # put back by a node that does not own the instance


class RegistryView:
    def __init__(self, service: RegistryService) -> None:
        self.service = service
        self.store = service.store
        self._services: dict[tuple[str, str], _Service] = {}
        self._leases: dict[str, tuple[int, float]] = {}  # path -> (revision, expires at)
        self._ns_index: dict[str, int] = {}
        self.members: dict[str, tuple[int, float]] = {}  # node id -> (revision, expires at)
        self.revision = 0  # everything up to here is applied
        self.version = 0  # counts changes applied on this node
        self._deadlines: list[Deadline] = []
        self.deadline_added = asyncio.Event()  # the reaper sleeps until the first deadline or this
        self._subscribers: list[Subscriber] = []
        self._waiters: dict[tuple[str, str | None], set[asyncio.Future[None]]] = {}
        self._progress = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.synced = asyncio.Event()
        self.stopped = False

    async def start(self) -> None:
        await self._load()
        self._task = asyncio.create_task(self._follow(), name="mezzo-registry-view")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.stopped = True
        self._wake_all()  # parked blocking queries answer now instead of holding the node's drain

    @property
    def following(self) -> bool:
        return self._task is not None and not self._task.done()

    # reading ----------------------------------------------------------------------------------

    def instances(self, namespace: str, service: str, healthy_only: bool = True) -> list[Instance]:
        """The service's instances by id; ``healthy_only``: passing, with a lease that has not run out."""
        entry = self._services.get((namespace, service))
        if entry is None:
            return []
        if entry.ordered is None:
            entry.ordered = [entry.instances[k] for k in sorted(entry.instances)]
        items = entry.ordered
        if not healthy_only:
            return list(items)
        now = time.time()
        return [i for i in items if i.status is Status.PASSING and not self._lapsed(i, now)]

    def get(self, namespace: str, service: str, instance_id: str) -> Instance | None:
        entry = self._services.get((namespace, service))
        return entry.instances.get(instance_id) if entry else None

    def known(self, ref: InstanceRef) -> Known | None:
        entry = self._services.get((ref.namespace, ref.service))
        instance = entry.instances.get(ref.id) if entry else None
        if instance is None:
            return None
        lease_revision, expires = self._leases.get(ref.path, (0, 0.0))
        return Known(instance, entry.revisions[ref.id], lease_revision, expires)  # type: ignore[union-attr]

    def expires_at(self, instance: Instance) -> float | None:
        if instance.ttl is None:
            return None
        lease = self._leases.get(f"{instance.namespace}/{instance.service}/{instance.id}")
        return lease[1] if lease else None

    def services(self, namespace: str) -> dict[str, list[Instance]]:
        """Every service of the namespace that has instances, with all of them."""
        return {name: self.instances(ns, name, healthy_only=False)
                for (ns, name), entry in sorted(self._services.items()) if ns == namespace and entry.instances}

    def all_services(self) -> list[tuple[str, str]]:
        return [key for key, entry in self._services.items() if entry.instances]

    def index(self, namespace: str, service: str | None = None) -> int:
        """The revision of the last change to the service (or, with no service, to the namespace);
        never below 1, so a blocking query with the index it got always blocks."""
        if service is None:
            return max(self._ns_index.get(namespace, 0), 1)
        entry = self._services.get((namespace, service))
        return max(entry.index if entry else 0, 1)

    def _lapsed(self, instance: Instance, now: float) -> bool:
        if instance.ttl is None:
            return False
        lease = self._leases.get(f"{instance.namespace}/{instance.service}/{instance.id}")
        return lease is not None and lease[1] <= now

    # being told -----------------------------------------------------------------------------

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(namespace, service)`` after every change; returns the unsubscribe function."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback) if callback in self._subscribers else None

    async def wait(self, namespace: str, service: str | None, timeout: float) -> bool:
        """Park until the service (or, with None, any service of the namespace) changes; False on timeout."""
        key = (namespace, service)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, set()).add(fut)
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            waiters = self._waiters.get(key)
            if waiters is not None:
                waiters.discard(fut)
                if not waiters:
                    del self._waiters[key]

    async def caught_up(self, timeout: float = 5.0) -> None:
        """Wait (briefly) until the view has seen this node's own latest write: read-your-writes."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.revision < self.service.last_write and not self.stopped:
            self._progress.clear()
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return  # serve what we have rather than fail the read
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._progress.wait()

    def _changed(self, namespace: str, service: str) -> None:
        self.version += 1
        for callback in list(self._subscribers):
            try:
                callback(namespace, service)
            except Exception:
                log.exception("registry subscriber failed", namespace=namespace, service=service)
        for key in ((namespace, service), (namespace, None)):
            for fut in self._waiters.pop(key, ()):
                if not fut.done():
                    fut.set_result(None)

    def _wake_all(self) -> None:
        for key in list(self._waiters):
            for fut in self._waiters.pop(key, ()):
                if not fut.done():
                    fut.set_result(None)

    # deadlines for the reaper -------------------------------------------------------------------

    def due(self, now: float) -> list[Deadline]:
        """Deadlines that have passed, taken off the queue (the reaper puts back what it defers)."""
        out = []
        while self._deadlines and self._deadlines[0].when <= now:
            out.append(heapq.heappop(self._deadlines))
        return out

    def next_deadline(self) -> float | None:
        return self._deadlines[0].when if self._deadlines else None

    def push(self, deadline: Deadline) -> None:
        first = not self._deadlines or deadline < self._deadlines[0]
        heapq.heappush(self._deadlines, deadline)
        if first:
            self.deadline_added.set()

    def lease(self, path: str) -> tuple[int, float] | None:
        return self._leases.get(path)

    def _watch_critical(self, instance: Instance, revision: int, path: str) -> None:
        check = instance.check
        if check and check.deregister_after and instance.status is Status.CRITICAL and instance.status_since:
            self.push(Deadline(instance.status_since.timestamp() + check.deregister_after, CRITICAL, path, revision))

    # following the store -----------------------------------------------------------------------

    async def _load(self) -> None:
        pages = {prefix: await self.store.range(prefix) for prefix in (INSTANCES, LEASES, MEMBERS)}
        revision = min(page.revision for page in pages.values())
        services: dict[tuple[str, str], _Service] = {}
        for kv in pages[INSTANCES].items:
            ref = InstanceRef.from_path(kv.key[len(INSTANCES):])
            entry = services.setdefault((ref.namespace, ref.service), _Service())
            entry.instances[ref.id] = parse(kv)
            entry.revisions[ref.id] = kv.mod_revision
        self._leases = {kv.key[len(LEASES):]: (kv.mod_revision, lease_expiry(kv.value)) for kv in pages[LEASES].items}
        self.members = {kv.key[len(MEMBERS):]: (kv.mod_revision, lease_expiry(kv.value)) for kv in pages[MEMBERS].items}
        changed = self._replace(services, revision)
        self._deadlines = []
        now = time.time()
        for path, (lease_revision, expires) in self._leases.items():
            self.push(Deadline(expires, LEASE, path, lease_revision))
        for (namespace, name), entry in services.items():
            for instance_id, instance in entry.instances.items():
                path = f"{namespace}/{name}/{instance_id}"
                if instance.ttl is not None and path not in self._leases:  # lost its lease: give it one TTL
                    self.push(Deadline(now + instance.ttl, LEASE, path, 0))
                self._watch_critical(instance, entry.revisions[instance_id], path)
        self.revision = max(self.revision, revision)
        self._progress.set()
        self.synced.set()
        for namespace, name in changed:
            self._changed(namespace, name)

    def _replace(self, services: dict[tuple[str, str], _Service], revision: int) -> list[tuple[str, str]]:
        """Swap in freshly read services; indexes only grow. The services that changed."""
        changed = []
        for key in set(services) | set(self._services):
            new = services.setdefault(key, _Service())
            old = self._services.get(key)
            if old is not None and old.revisions == new.revisions:
                new.index = old.index
                continue
            new.index = max(max(new.revisions.values(), default=0), revision if old is not None else 0,
                            old.index if old else 0)
            self._ns_index[key[0]] = max(self._ns_index.get(key[0], 0), new.index)
            changed.append(key)
        self._services = services
        return changed

    async def _follow(self) -> None:
        await follow(self.store, ROOT, lambda: self.revision + 1, self._apply, self._load, "registry")

    def _apply(self, event: Event) -> None:
        key, gone = event.key, event.type == EventType.DELETE or event.value is None
        self.revision = max(self.revision, event.revision)
        self._progress.set()
        if key.startswith(LEASES):
            self._apply_lease(key[len(LEASES):], event, gone)
        elif key.startswith(INSTANCES):
            self._apply_instance(key[len(INSTANCES):], event, gone)
        elif key.startswith(MEMBERS):
            if gone:
                self.members.pop(key[len(MEMBERS):], None)
            else:
                self.members[key[len(MEMBERS):]] = (event.revision, lease_expiry(event.value))  # type: ignore[arg-type]

    def _apply_lease(self, path: str, event: Event, gone: bool) -> None:
        if gone:
            self._leases.pop(path, None)
            return
        expires = lease_expiry(event.value)  # type: ignore[arg-type]
        previous = self._leases.get(path)
        self._leases[path] = (event.revision, expires)
        self.push(Deadline(expires, LEASE, path, event.revision))
        if previous is not None and previous[1] <= time.time():  # it had run out: healthy again
            ref = InstanceRef.from_path(path)
            self._changed(ref.namespace, ref.service)

    def _apply_instance(self, path: str, event: Event, gone: bool) -> None:
        ref = InstanceRef.from_path(path)
        entry = self._services.setdefault((ref.namespace, ref.service), _Service())
        if gone:
            if entry.instances.pop(ref.id, None) is None:
                return
            entry.revisions.pop(ref.id, None)
        else:
            instance = parse(KeyValue(event.key, event.value, 0, event.revision, 0))  # type: ignore[arg-type]
            entry.instances[ref.id] = instance
            entry.revisions[ref.id] = event.revision
            self._watch_critical(instance, event.revision, path)
        entry.index = event.revision
        entry.ordered = None
        self._ns_index[ref.namespace] = max(self._ns_index.get(ref.namespace, 0), event.revision)
        self._changed(ref.namespace, ref.service)
