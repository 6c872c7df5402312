"""What watchers and clients read, kept in memory on every node and pushed on change.

One store watch per node follows ``/config/``; with PostgreSQL as the store it carries changes
made on any node. A namespace's notification id is the store revision of its ``latest`` pointer
(the larger of its own and, for an override of a public namespace, the owner's), so ids only
grow and a client that sends the id it has is answered at once when anything newer exists.
The hub keeps the last ``RECENT`` pointer changes so a reconnecting stream replays every release
it missed, in order; a client further behind gets the current state marked as a resync.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from mezzo.config.formats import Format
from mezzo.config.gray import in_gray
from mezzo.config.model import App, ClientInfo, Latest, NamespaceMeta, NsRef, Release, Stored
from mezzo.config.service import APPS, DEFAULT, LATEST, META, PUBLIC, ROOT, ConfigService
from mezzo.jsonutil import dumps, loads
from mezzo.storage.kv import Event, EventType
from mezzo.storage.watch import follow

log = structlog.get_logger("mezzo.config")
RECENT = 50_000  # pointer changes kept for catching up
RELEASE_CACHE = 4096


@dataclass(slots=True)
class Change:
    revision: int
    path: str
    latest: Latest | None  # None: the namespace was deleted


@dataclass(slots=True)
class Resolved:
    """A client's view of one namespace."""

    ref: NsRef
    cluster: str  # where it was found (the asked cluster, or default)
    format: Format
    notification_id: int
    release_key: str
    config: dict[str, str]
    resync: bool = False

    def out(self) -> dict[str, Any]:
        return {"app": self.ref.app, "env": self.ref.env, "cluster": self.cluster, "namespace": self.ref.namespace,
                "format": self.format.value, "notificationId": self.notification_id, "releaseKey": self.release_key,
                "configurations": self.config, **({"resync": True} if self.resync else {})}


class ConfigHub:
    def __init__(self, service: ConfigService) -> None:
        self.service = service
        self.store = service.store
        self.latest: dict[str, tuple[int, Latest]] = {}
        self.metas: dict[str, NamespaceMeta] = {}
        self.apps: dict[str, App] = {}
        self.public: dict[str, str] = {}  # namespace name -> owning app
        self.gone: dict[str, int] = {}  # deleted pointer -> revision of the deletion (ids never go back)
        self.recent: list[Change] = []  # ordered by revision; trimmed to RECENT in chunks
        self._events: OrderedDict[tuple[Any, ...], asyncio.Future[bytes]] = OrderedDict()  # rendered stream events
        self.revision = 0  # everything up to here is applied
        self.floor = 0  # ``recent`` holds every pointer change after this revision
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}  # namespace name -> parked watchers
        self._releases: OrderedDict[tuple[str, int], asyncio.Future[Release]] = OrderedDict()
        self._task: asyncio.Task[None] | None = None
        self.synced = asyncio.Event()
        self.stopped = False
        self._progress = asyncio.Event()  # set whenever ``revision`` moves

    async def start(self) -> None:
        await self._load()
        self._task = asyncio.create_task(self._follow(), name="mezzo-config-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.stopped = True
        self._wake_all()  # parked long polls answer now instead of holding the node's drain

    # following the store ------------------------------------------------------------------

    async def _load(self) -> None:
        latest, metas, apps, public = {}, {}, {}, {}
        revision = None
        for prefix in (LATEST, META, APPS, PUBLIC):
            page = await self.store.range(prefix)
            revision = page.revision if revision is None else min(revision, page.revision)
            for kv in page.items:
                name = kv.key[len(prefix):]
                if prefix == LATEST:
                    latest[name] = (kv.mod_revision, Latest.model_validate(loads(kv.value)))
                elif prefix == META:
                    metas[name] = NamespaceMeta.model_validate(loads(kv.value))
                elif prefix == APPS:
                    apps[name] = App.model_validate(loads(kv.value))
                else:
                    public[name] = loads(kv.value)["app"]
        self.latest, self.metas, self.apps, self.public = latest, metas, apps, public
        self.gone = {}
        self._releases.clear()  # a namespace may have been deleted and recreated while we were away
        self.revision = max(revision or 0, max((r for r, _ in latest.values()), default=0))
        self._progress.set()
        self.recent.clear()  # a reload breaks the replay chain: older clients resync
        self.floor = self.revision
        self.synced.set()
        self._wake_all()

    async def _follow(self) -> None:
        await follow(self.store, ROOT, lambda: self.revision + 1, self._apply, self._load, "config")

    def _apply(self, event: Event) -> None:
        key, gone = event.key, event.type == EventType.DELETE or event.value is None
        self.revision = max(self.revision, event.revision)
        self._progress.set()
        if key.startswith(LATEST):
            path = key[len(LATEST):]
            if len(self.recent) >= 2 * RECENT:
                self.floor = self.recent[-RECENT - 1].revision  # what is dropped can no longer be replayed
                del self.recent[:-RECENT]
            if gone:
                self.latest.pop(path, None)
                self.gone[path] = event.revision
                self.recent.append(Change(event.revision, path, None))
                # release ids start again at 1 if the namespace is created anew: forget the old ones
                for cached in [k for k in self._releases if k[0] == path]:
                    del self._releases[cached]
            else:
                doc = Latest.model_validate(loads(event.value))  # type: ignore[arg-type]
                self.latest[path] = (event.revision, doc)
                self.gone.pop(path, None)
                self.recent.append(Change(event.revision, path, doc))
            self._wake(path.rsplit("/", 1)[1])
        elif key.startswith(META):
            path = key[len(META):]
            if gone:
                self.metas.pop(path, None)
            else:
                self.metas[path] = NamespaceMeta.model_validate(loads(event.value))  # type: ignore[arg-type]
        elif key.startswith(APPS):
            name = key[len(APPS):]
            if gone:
                self.apps.pop(name, None)
            else:
                self.apps[name] = App.model_validate(loads(event.value))  # type: ignore[arg-type]
        elif key.startswith(PUBLIC):
            name = key[len(PUBLIC):]
            if gone:
                self.public.pop(name, None)
            else:
                self.public[name] = loads(event.value)["app"]  # type: ignore[arg-type]
            self._wake(name)

    # waiting ------------------------------------------------------------------------------

    async def caught_up(self, timeout: float = 5.0) -> None:
        """Wait (briefly) until the hub has seen this node's own latest write: read-your-writes."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.revision < self.service.last_write and not self.stopped:
            self._progress.clear()
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return  # serve what we have rather than fail the read
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._progress.wait()

    def _wake(self, namespace: str) -> None:
        for fut in self._waiters.pop(namespace, ()):
            if not fut.done():
                fut.set_result(None)

    def _wake_all(self) -> None:
        for name in list(self._waiters):
            self._wake(name)

    async def wait(self, namespaces: list[str], timeout: float) -> bool:
        """Park until a pointer of one of these namespace names changes; False on timeout."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for name in namespaces:
            self._waiters.setdefault(name, set()).add(fut)
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            for name in namespaces:
                waiters = self._waiters.get(name)
                if waiters is not None:
                    waiters.discard(fut)
                    if not waiters:
                        del self._waiters[name]

    # resolving ----------------------------------------------------------------------------

    def tenant(self, app: str) -> str:
        known = self.apps.get(app)
        return known.tenant if known else DEFAULT

    def _pick(self, ref: NsRef, public: bool = False) -> NsRef | None:
        """The namespace in the asked cluster if it has a release there, else in the default cluster;
        with ``public``, only a copy created public (another app's base layer: never a private one)."""
        for candidate in (ref, ref.in_cluster(DEFAULT)):
            entry = self.latest.get(candidate.path)
            if entry is not None and entry[1].release:
                meta = self.metas.get(candidate.path)
                if not public or (meta is not None and meta.public):
                    return candidate
        return None

    def layers(self, ref: NsRef) -> list[NsRef]:
        """Base first: the public namespace's owner (when this app overrides it), then the app's own.

        An app's own namespace sits on the public one only if it was created as its override
        (``inherits``); a private namespace of the same name stays private."""
        out = []
        own = self._pick(ref)
        owner = self.public.get(ref.namespace)
        if owner is not None and owner != ref.app and self.tenant(owner) == self.tenant(ref.app):
            mine = next((m for m in (self.metas.get(p.path) for p in ([own] if own else self.candidates(ref)))
                         if m is not None), None)
            base = self._pick(ref.of_app(owner), public=True)
            if base is not None and (mine is None or mine.inherits == owner):
                out.append(base)
        if own is not None:
            out.append(own)
        return out

    def candidates(self, ref: NsRef) -> list[NsRef]:
        """The app's own pointers ``ref`` may resolve to: its cluster's, else the default cluster's."""
        return [ref, ref.in_cluster(DEFAULT)] if ref.cluster != DEFAULT else [ref]

    def notification_id(self, ref: NsRef) -> int:
        """The newest revision among its layers and its deleted fallbacks: deleting a cluster's
        namespace moves its clients to the default cluster with a *newer* id."""
        layers = self.layers(ref)
        if not layers:
            return -1
        deleted = (self.gone.get(c.path, -1) for c in self.candidates(ref))
        return max(max(self.latest[layer.path][0] for layer in layers), *deleted)

    def exists(self, ref: NsRef) -> bool:
        return bool(self.layers(ref)) or any(
            p in self.metas for p in (ref.path, ref.in_cluster(DEFAULT).path))

    async def resolve(self, ref: NsRef, client: ClientInfo, clear: bool,
                      override: tuple[str, Latest] | None = None) -> Resolved:
        """The configuration ``client`` gets: releases of each layer, gray keys where its rules match.

        ``override`` replaces one pointer (a stream replaying a past change)."""
        merged: dict[str, tuple[Stored, str]] = {}  # key -> (value, path it was encrypted under)
        keys, found_in, fmt, revision = [], DEFAULT, Format.PROPERTIES, -1
        for layer in self.layers(ref):
            entry_revision, latest = self.latest[layer.path]
            if override is not None and override[0] == layer.path:
                latest = override[1]
            if latest is None or not latest.release:  # replaying the deletion of a since recreated layer
                continue
            revision = max(revision, entry_revision)
            release = await self._release(layer, latest.release)
            merged.update({k: (v, layer.path) for k, v in release.config.items()})
            key = f"{layer.app}-{latest.release}"
            if in_gray(latest, client, layer.path):
                merged.update({k: (v, layer.path) for k, v in latest.gray_release.overrides.items()})  # type: ignore[union-attr]
                key += f"-gray{latest.gray_release.id}"  # type: ignore[union-attr]
            keys.append(key)
            meta = self.metas.get(layer.path)
            if meta is not None:
                fmt = meta.format
            if layer.app == ref.app:
                found_in = layer.cluster
        values = {name: self.service.reveal(NsRef.from_path(path), {name: stored}, clear)[name]
                  for name, (stored, path) in merged.items()}
        revision = max(revision, *(self.gone.get(c.path, -1) for c in self.candidates(ref))) if keys else revision
        return Resolved(ref, found_in, fmt, revision, "+".join(keys), values)

    async def event(self, ref: NsRef, client: ClientInfo, clear: bool, change: Change) -> bytes:
        """The stream event for ``change`` as ``client`` sees it; rendered once for every client
        that sees the same thing (same namespace, change, gray side and clearance)."""
        sides = tuple(in_gray(latest, client, layer.path) for layer in self.layers(ref) if layer.path in self.latest
                      and (latest := self.latest[layer.path][1] if layer.path != change.path else change.latest))
        key = (ref.path, change.revision, sides, clear)

        async def render() -> bytes:
            resolved = await self.resolve(ref, client, clear, override=(change.path, change.latest))  # type: ignore[arg-type]
            resolved.notification_id = change.revision
            return b"id: %d\nevent: config\ndata: %s\n\n" % (change.revision, dumps(resolved.out()))

        return await _once(self._events, key, render, 1024)  # type: ignore[no-any-return]

    async def _release(self, ref: NsRef, release_id: int) -> Release:
        return await _once(self._releases, (ref.path, release_id),  # type: ignore[no-any-return]
                           lambda: self.service.release(ref, release_id), RELEASE_CACHE)

    def changes_since(self, revision: int, refs: list[NsRef]) -> list[tuple[NsRef, Change]] | None:
        """Pointer changes after ``revision`` touching these namespaces, oldest first;
        None when the hub no longer holds them all (the caller resyncs)."""
        if revision < self.floor:
            return None
        out = []
        watched = {}
        for ref in refs:  # its layers, and its own pointers it could fall back from or move to
            for layer in dict.fromkeys([*self.layers(ref), *self.candidates(ref)]):
                watched.setdefault(layer.path, []).append(ref)
        for change in self.recent[bisect.bisect_right(self.recent, revision, key=lambda c: c.revision):]:
            for ref in watched.get(change.path, ()):
                out.append((ref, change))
        return out


async def _once(cache: OrderedDict[Any, asyncio.Future[Any]], key: Any, make: Callable[[], Awaitable[Any]],
                size: int) -> Any:
    """``make()`` computed once per key however many callers ask at the same moment (a publish
    wakes every watcher at once); failures are not cached."""
    fut = cache.get(key)
    if fut is None:
        fut = cache[key] = asyncio.ensure_future(make())
        if len(cache) > size:
            cache.popitem(last=False)
    else:
        cache.move_to_end(key)
    try:
        return await asyncio.shield(fut)
    except Exception:
        if cache.get(key) is fut:
            del cache[key]
        raise
