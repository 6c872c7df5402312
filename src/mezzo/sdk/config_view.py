"""Live views of config namespaces for ``client.config.watch``: typed reads, changes, binding, offline cache."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import random
import re
import tempfile
import threading
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

import yaml
from pydantic import BaseModel, ValidationError

from mezzo.config.formats import flatten
from mezzo.jsonutil import dumps, loads
from mezzo.sdk.errors import APIError, ConnectError, MezzoError, NotFound

if TYPE_CHECKING:
    from mezzo.sdk.configcenter import ConfigClient
    pass

log = logging.getLogger("mezzo.sdk.config")
DEFAULT = "default"
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
Listener = Callable[["ConfigChange"], Awaitable[Any] | Any]

IDLE = 45.0  # the stream sends a heartbeat every 15 s: this long without a line means it is dead
MIN_BACKOFF = 0.5
SYNC_INTERVAL = 300.0  # the full re-read that covers anything the stream could have missed
_TRUE, _FALSE = {"true", "1", "yes", "y", "on"}, {"false", "0", "no", "n", "off"}
_SEGMENT = re.compile(r"([^\[\]]*)((?:\[\d+\])*)")


class ConfigValueError(MezzoError, ValueError):
    """A configuration value that does not convert to the type asked for."""


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/mezzo/config``, by default ``~/.cache/mezzo/config``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mezzo" / "config"


# changes ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class KeyChange:
    key: str
    old: str | None  # None: the key was added
    new: str | None  # None: the key was removed


@dataclass(frozen=True, slots=True)
class ConfigChange:
    """What one update of a watched namespace changed, key by key, with old and new values."""

    app: str
    env: str
    cluster: str
    namespace: str
    revision: int  # the namespace's notification id after the change
    release_key: str
    keys: dict[str, KeyChange]

    @property
    def added(self) -> list[str]:
        return sorted(k for k, c in self.keys.items() if c.old is None)

    @property
    def changed(self) -> list[str]:
        return sorted(k for k, c in self.keys.items() if c.old is not None and c.new is not None)

    @property
    def removed(self) -> list[str]:
        return sorted(k for k, c in self.keys.items() if c.new is None)

    def __contains__(self, key: object) -> bool:
        return key in self.keys

    def out(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "revision": self.revision, "releaseKey": self.release_key,
                "added": {k: self.keys[k].new for k in self.added},
                "changed": {k: {"from": self.keys[k].old, "to": self.keys[k].new} for k in self.changed},
                "removed": {k: self.keys[k].old for k in self.removed}}


def _key_changes(old: Mapping[str, str], new: Mapping[str, str]) -> dict[str, KeyChange]:
    return {k: KeyChange(k, old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)}


# typed values and models ----------------------------------------------------------------------

def convert(value: str, kind: Callable[[str], T] | type[T], key: str = "value") -> T:
    """``value`` as ``kind``: bool takes true/false, 1/0, yes/no, on/off; list and dict parse JSON;
    anything else is called with the text. Raises ConfigValueError naming the key."""
    try:
        if kind is bool:
            word = value.strip().lower()
            if word not in _TRUE | _FALSE:
                raise ValueError
            return word in _TRUE  # type: ignore[return-value]
        if kind in (list, dict):
            parsed = json.loads(value)
            if not isinstance(parsed, kind):  # type: ignore[arg-type]
                raise ValueError
            return parsed  # type: ignore[no-any-return]
        if kind in (int, float):
            return kind(value.strip())  # type: ignore[call-arg]
        return kind(value)  # type: ignore[call-arg]
    except (ValueError, TypeError, ArithmeticError):
        name = getattr(kind, "__name__", repr(kind))
        raise ConfigValueError(f"config key {key!r} is {value!r}, which is not a valid {name}") from None


def unflatten(values: Mapping[str, str]) -> dict[str, Any]:
    """Dotted keys as nested mappings: ``db.pool`` -> ``{"db": {"pool": ...}}``, ``hosts[0]`` -> a list.
    Where a key is also the prefix of others (``db`` and ``db.pool``), the nested keys win."""
    root: dict[Any, Any] = {}
    for key, value in sorted(values.items()):
        parts = _parts(key)
        if not parts:
            continue
        node = root
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        if not isinstance(node.get(parts[-1]), dict):
            node[parts[-1]] = value
    return _lists(root)  # type: ignore[no-any-return]


def _parts(key: str) -> list[str | int]:
    out: list[str | int] = []
    for segment in key.split("."):
        match = _SEGMENT.fullmatch(segment)
        if match is None or not (match.group(1) or out):
            return []
        if match.group(1):
            out.append(match.group(1))
        out += [int(i) for i in re.findall(r"\d+", match.group(2))]
    return out


def _lists(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    items = {k: _lists(v) for k, v in node.items()}
    if items and all(isinstance(k, int) for k in items) and sorted(items) == list(range(len(items))):
        return [items[i] for i in range(len(items))]
    return {str(k): v for k, v in items.items()}


def model_input(model: type[BaseModel], values: Mapping[str, str]) -> dict[str, Any]:
    """What a model is built from: each field by its alias (which may be a dotted key, ``db.pool``)
    or its name; a nested model gets the keys under its name (``db.pool`` -> ``db: {pool}``)."""
    nested = unflatten(values)
    data: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        alias = info.validation_alias if isinstance(info.validation_alias, str) else None
        for key in dict.fromkeys(k for k in (alias, info.alias, name) if k):
            if key in nested:
                data[key] = nested[key]
                break
            if key in values:
                data[key] = values[key]
                break
    return data


class Binding(Generic[M]):
    """A model kept equal to a watched namespace: ``binding.value`` is rebuilt on every change.
    A change the model rejects leaves ``value`` as it was and sets ``error``."""

    def __init__(self, view: ConfigView, model: type[M]) -> None:
        self.model = model
        self.value: M = view.bind(model)
        self.error: ValidationError | None = None

    def _update(self, view: ConfigView) -> None:
        try:
            self.value, self.error = view.bind(self.model), None
        except ValidationError as exc:
            self.error = exc
            log.warning("config %s no longer fits %s; keeping the previous values: %s",
                        view.path, self.model.__name__, exc)


# the live view ---------------------------------------------------------------------------------

class _Changes:
    """One ``async for change in view`` loop: every change from when it began."""

    def __init__(self, view: ConfigView) -> None:
        self._view = view
        self._queue: asyncio.Queue[ConfigChange | None] = asyncio.Queue()

    def __aiter__(self) -> _Changes:
        return self

    async def __anext__(self) -> ConfigChange:
        change = await self._queue.get()
        if change is None:
            raise StopAsyncIteration
        return change

    async def aclose(self) -> None:
        self._view._forget(self)


class ConfigView:
    """The configuration one client gets from one namespace, kept current by ``ConfigClient.watch``.

    Values arrive over the event stream (``GET /v1/config/stream``), which is reopened with
    ``Last-Event-ID`` after a drop so every change is seen, with a full re-read every
    ``sync_interval`` seconds as the fallback. Each update is written to the cache file first.
    """

    def __init__(self, api: ConfigClient, app: str, namespace: str, env: str, cluster: str, *,
                 params: dict[str, Any], cache_path: Path | None, sync_interval: float, max_backoff: float) -> None:
        self._api = api
        self.app, self.namespace, self.env, self.cluster = app, namespace, env, cluster
        self.revision = -1  # the notification id of the values held; -1 before any release
        self.release_key = ""
        self.format = "properties"
        self.connected = False  # the event stream is open and live
        self.from_cache = False  # the values come from the cache file and no server has confirmed them yet
        self.cache_path = cache_path
        self._params = params
        self._values: dict[str, str] = {}
        self._flat: dict[str, str] = {}  # a yaml/json document's values as dotted keys
        self._document: Any = None
        self._sync_interval, self._max_backoff = sync_interval, max_backoff
        self._listeners: list[Listener] = []
        self._bindings: list[Binding[Any]] = []
        self._iterators: weakref.WeakSet[_Changes] = weakref.WeakSet()
        self._guard = threading.Lock()  # the sync client starts iterations from its own thread
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._confirmed = False  # the values were read from the server (not only from the cache)
        self._closed = False

    @property
    def path(self) -> str:
        return f"{self.app}/{self.env}/{self.cluster}/{self.namespace}"

    # reading ---------------------------------------------------------------------------------

    @overload
    def get(self, key: str) -> str | None: ...
    @overload
    def get(self, key: str, default: T) -> T: ...
    @overload
    def get(self, key: str, default: Any, type: Callable[[str], T] | type[T]) -> T: ...

    def get(self, key: str, default: Any = None, type: Any = None) -> Any:
        """The value of ``key`` as ``type`` (default: the type of ``default`` when it is a bool, int,
        float, str, list or dict, else str); ``default`` when the key is absent. In a yaml or json
        namespace, dotted keys reach into the document (``db.pool``, ``hosts[0]``)."""
        value = self._values.get(key, self._flat.get(key))
        if value is None:
            return default
        if type is None:
            type = default.__class__ if isinstance(default, bool | int | float | str | list | dict) else str
        return value if type is str else convert(value, type, key)

    def all(self) -> dict[str, str]:
        """Every key and value, as served (a yaml/json/text namespace has one key, ``content``)."""
        return dict(self._values)

    def document(self) -> Any:
        """A yaml or json namespace's document, parsed (None for other formats or before a release)."""
        return self._document

    def bind(self, model: type[M]) -> M:
        """A ``model`` built from the current values: see ``model_input``; a yaml or json namespace's
        document is validated as it is. Raises pydantic's ValidationError naming the field."""
        if isinstance(self._document, dict):
            return model.model_validate(self._document)
        return model.model_validate(model_input(model, self._values))

    def binding(self, model: type[M]) -> Binding[M]:
        """A ``model`` instance that follows every change: read ``binding.value``."""
        bound = Binding(self, model)
        self._bindings.append(bound)
        return bound

    def on_change(self, fn: Listener) -> Listener:
        """Call ``fn(change)`` (sync or async) after each update that changes a value; usable as a
        decorator. Callbacks run one after the other, in order; an exception is logged."""
        self._listeners.append(fn)
        return fn

    def off_change(self, fn: Listener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(fn)

    def __aiter__(self) -> _Changes:
        """``async for change in view``: every change from now until the view is closed."""
        changes = _Changes(self)
        with self._guard:
            if self._closed:
                changes._queue.put_nowait(None)
            else:
                self._iterators.add(changes)
        return changes

    def _forget(self, changes: _Changes) -> None:
        with self._guard:
            self._iterators.discard(changes)

    # lifecycle -------------------------------------------------------------------------------

    async def _start(self, missing_ok: bool) -> None:
        cached = self._read_cache()
        try:
            await self._sync(force=True)
        except NotFound:
            if not missing_ok:
                raise
            self._confirmed = True  # no release yet: the stream brings the first one
        except (ConnectError, APIError) as exc:
            if cached is None or (isinstance(exc, APIError) and exc.status < 500):
                raise
            log.warning("Mezzo is unreachable (%s); config %s starts from the cache %s", exc, self.path,
                        self.cache_path)
            self._set(cached, int(cached.get("notificationId", -1)))
            self.from_cache, self._confirmed = True, False
        self._tasks.append(asyncio.create_task(self._follow(), name=f"mezzo-config-{self.path}"))
        if self._sync_interval > 0:
            self._tasks.append(asyncio.create_task(self._poll(), name=f"mezzo-config-sync-{self.path}"))

    async def aclose(self) -> None:
        """Stop following; ``async for`` loops over the view end."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self.connected = False
        with self._guard:
            for changes in list(self._iterators):
                changes._queue.put_nowait(None)
            self._iterators.clear()
        self._api._views.discard(self)

    async def __aenter__(self) -> ConfigView:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # following the server ---------------------------------------------------------------------

    async def _follow(self) -> None:
        delay = MIN_BACKOFF
        failures = 0
        while True:
            error: Exception | None = None
            try:
                if not self._confirmed:  # values from the cache: read the server's before streaming
                    await self._sync(force=True)
                await self._stream()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # unreachable, a problem answer, a broken stream: all retried
                error = exc
            if self.connected:  # it was live: start the backoff over
                delay, failures = MIN_BACKOFF, 0
            self.connected = False
            if error is not None:
                failures += 1
                log.log(logging.WARNING if failures == 1 else logging.DEBUG, "config %s: %s; reconnecting",
                        self.path, error)
            await asyncio.sleep(random.uniform(delay / 2, delay))
            delay = min(delay * 2, self._max_backoff)

    async def _stream(self) -> None:
        """Read the event stream until it ends; from the last revision held, so none is skipped."""
        headers = {"Last-Event-ID": str(self.revision)} if self.revision >= 0 else None
        lines = self._api._client.stream_lines("/v1/config/stream", self._params, headers)
        kind, event_id, data = "message", -1, []
        try:
            while True:
                try:
                    async with asyncio.timeout(IDLE):  # not wait_for: on 3.11 it can swallow a cancel
                        line = await anext(lines)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise ConnectError(f"no event or heartbeat for {IDLE:.0f} s") from None
                if line.startswith(":"):
                    if line[1:].strip() == "live":
                        self.connected = True
                elif line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("id:"):
                    event_id = int(line[3:].strip() or -1)
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif not line and data:
                    await self._event(kind, event_id, loads("\n".join(data)))
                    kind, event_id, data = "message", -1, []
        finally:
            await lines.aclose()

    async def _event(self, kind: str, event_id: int, doc: dict[str, Any]) -> None:
        if kind == "config":
            await self._apply(doc, event_id)
        elif kind == "deleted" and event_id > self.revision:
            try:  # an app's own layer went; a public namespace it inherits may still serve it
                current = await self._api.read(self.app, self.namespace, env=self.env, cluster=self.cluster,
                                               **self._client_args())
            except NotFound:
                current = {"configurations": {}, "releaseKey": ""}
            await self._apply(current, event_id)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._sync_interval)
            try:
                await self._sync()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("config %s: periodic read failed: %s", self.path, exc)

    async def _sync(self, force: bool = False) -> None:
        doc = await self._api.read(self.app, self.namespace, env=self.env, cluster=self.cluster, **self._client_args())
        await self._apply(doc, int(doc["notificationId"]), force=force, confirmed=True)

    def _client_args(self) -> dict[str, Any]:
        labels = dict(item.split("=", 1) for item in self._params.get("label") or [])
        return {"client_id": self._params.get("clientId"), "ip": self._params.get("ip"), "labels": labels}

    # applying updates -------------------------------------------------------------------------

    async def _apply(self, doc: dict[str, Any], revision: int, force: bool = False, confirmed: bool = False) -> None:
        """Take a newer state (an older one only when ``force``: the server's word over the cache's),
        write the cache, update bindings, then tell listeners what changed. ``confirmed``: ``doc`` is
        the server's read, so the values stop being the cache's the moment they are in place."""
        async with self._lock:
            if revision <= self.revision and not force:
                if confirmed:
                    self._confirmed, self.from_cache = True, False
                return
            old = self._values
            self._set(doc, revision)
            if confirmed:
                self._confirmed, self.from_cache = True, False
            await self._write_cache()
            changes = _key_changes(old, self._values)
            if not changes:
                return
            for bound in self._bindings:
                bound._update(self)
            change = ConfigChange(self.app, self.env, self.cluster, self.namespace, revision, self.release_key,
                                  changes)
            with self._guard:
                queues = [c._queue for c in self._iterators]
            for queue in queues:
                queue.put_nowait(change)
            for fn in list(self._listeners):
                try:
                    result = fn(change)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    log.exception("config %s: change callback %r failed", self.path, fn)

    def _set(self, doc: Mapping[str, Any], revision: int) -> None:
        self._values = {str(k): str(v) for k, v in (doc.get("configurations") or {}).items()}
        self.revision = revision
        self.release_key = str(doc.get("releaseKey") or "")
        self.format = str(doc.get("format") or self.format)
        self._document, self._flat = None, {}
        content = self._values.get("content")
        if self.format in ("yaml", "json") and content is not None:
            try:
                self._document = yaml.safe_load(content) if self.format == "yaml" else json.loads(content)
                self._flat = flatten(self._document) if isinstance(self._document, dict | list) else {}
            except (yaml.YAMLError, ValueError):
                log.warning("config %s: the %s document does not parse", self.path, self.format)

    # the cache file ---------------------------------------------------------------------------

    def _read_cache(self) -> dict[str, Any] | None:
        if self.cache_path is None:
            return None
        try:
            doc = loads(self.cache_path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("config cache %s is unreadable (%s); ignoring it", self.cache_path, exc)
            return None
        same = isinstance(doc, dict) and [doc.get(k) for k in ("app", "env", "cluster", "namespace")] == [
            self.app, self.env, self.cluster, self.namespace]
        if not same or not isinstance(doc.get("configurations"), dict):
            log.warning("config cache %s is not a cache of %s; ignoring it", self.cache_path, self.path)
            return None
        return doc  # type: ignore[no-any-return]

    async def _write_cache(self) -> None:
        if self.cache_path is None:
            return
        doc = {"app": self.app, "env": self.env, "cluster": self.cluster, "namespace": self.namespace,
               "format": self.format, "notificationId": self.revision, "releaseKey": self.release_key,
               "configurations": self._values, "server": self._api._client.url,
               "savedAt": datetime.now().astimezone().isoformat()}
        try:
            await asyncio.to_thread(write_atomic, self.cache_path, dumps(doc))
        except OSError as exc:
            log.warning("config %s: cannot write the cache %s: %s", self.path, self.cache_path, exc)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so a reader sees the old file or the new one, never a part;
    readable by the owner only (the cache holds secrets in clear)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


# the sub-client --------------------------------------------------------------------------------
