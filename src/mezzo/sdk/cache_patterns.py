"""Stampede protection over ``client.cache``: ``get_or_set`` and the ``@cached`` decorator.

- **Single flight** in a process (one load per key however many coroutines ask) and across
  processes: the loader runs under a short lock key (``<key>.mezzo-lock``, set-if-absent with a
  TTL, released by compare-and-delete); others poll for the value with backoff, and take the
  lock over when its TTL runs out because the holder died.
- **Probabilistic early refresh** (XFetch, Vattani et al., VLDB 2015): an entry records how
  long its load took (``delta``) and when it goes stale; a reader refreshes it early when
  ``now - delta * beta * ln(rand()) >= fresh_until``, so one caller reloads a hot key shortly
  before it expires instead of all of them just after.
- **Soft TTL / stale-while-revalidate**: with ``stale_ttl``, an entry outlives its TTL by that
  much; a stale read triggers one refresh and is served while it runs elsewhere, or when the
  loader fails (stale-if-error).
- **Negative caching**: a loader returning None is remembered as absent for ``negative_ttl``.
- **Tags**: every entry can carry tags; ``client.cache.invalidate_tag`` drops them all.

The value is stored as it is, so any client (redis-cli, another language) reads it; the
bookkeeping travels in the key's ``meta`` note, ``{"f": fresh_until, "d": delta, "n": absent}``,
which the server keeps with the value and drops on any other write. An absence is stored as an
empty value with ``"n": true`` (``client.cache.get`` answers None for it). A value found without
a note (written by another client) is used as it is.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import logging
import math
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import orjson

from mezzo.resources.types import parse_duration

if TYPE_CHECKING:
    from mezzo.sdk.cache import CacheClient

log = logging.getLogger("mezzo.sdk.cache")
LOCK_SUFFIX = ".mezzo-lock"
# an async function, or a plain one (run in a worker thread, so it may block)
Loader = Callable[[], Awaitable[bytes | str | None] | bytes | str | None]


def seconds(value: float | str) -> float:
    return parse_duration(value)


def xfetch_due(delta: float, fresh_until: float, now: float, beta: float, rand: Callable[[], float] = random.random) -> bool:
    """XFetch's test: refresh now, ahead of ``fresh_until``, with a probability rising as it nears."""
    return now - delta * beta * math.log(1.0 - rand()) >= fresh_until


@dataclass(frozen=True)
class Meta:
    """What ``get_or_set`` keeps with a value."""

    fresh_until: float  # wall-clock seconds: after this the entry is stale
    delta: float  # seconds the load took
    absent: bool = False  # the loader said there is no such thing

    def encode(self) -> str:
        return orjson.dumps({"f": round(self.fresh_until, 6), "d": round(self.delta, 6), "n": self.absent}).decode()

    @staticmethod
    def decode(note: str | None) -> Meta | None:
        """The bookkeeping in ``note``, or None when there is none (a plain value)."""
        if not note:
            return None
        try:
            meta = orjson.loads(note)
            return Meta(float(meta["f"]), float(meta["d"]), bool(meta["n"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None


def visible(value: bytes, note: str) -> bytes | None:
    """What a plain read answers for a value with a note: None for a remembered absence."""
    meta = Meta.decode(note)
    return None if meta is not None and meta.absent else value


@dataclass(frozen=True)
class Policy:
    ttl: float
    stale: float
    negative: float | None
    beta: float
    tags: tuple[str, ...]
    lock_ttl: float

    @staticmethod
    def of(ttl: float | str, stale_ttl: float | str, negative_ttl: float | str | None, beta: float,
           tags: list[str] | tuple[str, ...], lock_ttl: float) -> Policy:
        policy = Policy(seconds(ttl), seconds(stale_ttl), None if negative_ttl is None else seconds(negative_ttl),
                        float(beta), tuple(tags), float(lock_ttl))
        if policy.ttl <= 0 or policy.stale < 0 or (policy.negative is not None and policy.negative <= 0):
            raise ValueError("ttl and negative_ttl must be positive, stale_ttl not negative")
        if policy.beta < 0 or policy.lock_ttl <= 0:
            raise ValueError("beta must not be negative, lock_ttl must be positive")
        return policy


async def get_or_set(cache: CacheClient, key: str, loader: Loader, policy: Policy, namespace: str) -> bytes | None:
    found = await cache.get_entry(key, namespace)
    if found is not None:
        value, note = found
        meta = Meta.decode(note)
        if meta is None:
            return value  # a plain value stored by someone else: it is the value
        current = None if meta.absent else value
        now = time.time()
        if now < meta.fresh_until and not xfetch_due(meta.delta, meta.fresh_until, now, policy.beta):
            return current
        return await _refresh(cache, key, loader, policy, namespace, current)
    return await _single_flight(cache, (namespace, key), lambda: _load_locked(cache, key, loader, policy, namespace))


async def _single_flight(cache: CacheClient, flight: tuple[str, str],
                         work: Callable[[], Awaitable[bytes | None]]) -> bytes | None:
    """One ``work()`` per flight, in a task of its own: a caller that is cancelled (the first one
    included) stops waiting without cancelling the load the others wait for."""
    running = cache._flights.get(flight)
    if running is None:
        running = asyncio.ensure_future(work())
        cache._flights[flight] = running

        def landed(task: asyncio.Future[Any]) -> None:
            if cache._flights.get(flight) is task:
                del cache._flights[flight]
            if not task.cancelled():
                task.exception()  # retrieved: the waiters get it, nobody is warned about it

        running.add_done_callback(landed)
    return await asyncio.shield(running)  # type: ignore[no-any-return]


async def _refresh(cache: CacheClient, key: str, loader: Loader, policy: Policy, namespace: str,
                   current: bytes | None) -> bytes | None:
    """Reload a stale (or XFetch-elected) entry once; everyone else, and a failed load, gets ``current``."""
    if (namespace, key) in cache._flights:
        return current

    async def reload() -> bytes | None:
        owner = uuid.uuid4().hex
        if not await cache.set(key + LOCK_SUFFIX, owner, policy.lock_ttl, namespace=namespace, nx=True):
            return current  # another process refreshes it
        try:
            return await _load_store(cache, key, loader, policy, namespace)
        except Exception:
            log.warning("cache loader for %r failed; serving the stale value", key, exc_info=True)
            return current
        finally:
            await cache.delete(key + LOCK_SUFFIX, namespace, if_value=owner)

    return await _single_flight(cache, (namespace, key), reload)


async def _load_locked(cache: CacheClient, key: str, loader: Loader, policy: Policy, namespace: str) -> bytes | None:
    lock = key + LOCK_SUFFIX
    owner: str | None = uuid.uuid4().hex
    loop = asyncio.get_running_loop()
    give_up = loop.time() + policy.lock_ttl * 2
    delay = 0.01
    while not await cache.set(lock, owner or "", policy.lock_ttl, namespace=namespace, nx=True):
        await asyncio.sleep(delay * (0.5 + random.random()))  # another process loads it: wait for its value
        found = await cache.get_entry(key, namespace)
        if found is not None:
            return _current(found)
        if loop.time() > give_up:  # a lock that never frees and no value: load without it
            owner = None
            break
        delay = min(delay * 2, 0.2)
    try:
        # read again under the lock: another process may have loaded and stored it since our miss
        found = await cache.get_entry(key, namespace)
        if found is not None:
            return _current(found)
        return await _load_store(cache, key, loader, policy, namespace)
    finally:
        if owner is not None:
            await cache.delete(lock, namespace, if_value=owner)


async def _load_store(cache: CacheClient, key: str, loader: Loader, policy: Policy, namespace: str) -> bytes | None:
    started = time.monotonic()
    if inspect.iscoroutinefunction(loader):
        loaded = await loader()
    else:
        loaded = await asyncio.to_thread(loader)
        if inspect.isawaitable(loaded):  # a lambda around a coroutine
            loaded = await loaded
    delta = time.monotonic() - started
    value = loaded.encode() if isinstance(loaded, str) else loaded
    if value is None:
        if policy.negative is None:
            return None
        fresh = life = policy.negative
    else:
        fresh, life = policy.ttl, policy.ttl + policy.stale
    meta = Meta(time.time() + fresh, delta, absent=value is None)
    await cache.set(key, value or b"", life, namespace=namespace, tags=policy.tags, meta=meta.encode())
    return value


def _current(found: tuple[bytes, str | None]) -> bytes | None:
    value, note = found
    return value if note is None else visible(value, note)


# the decorator ------------------------------------------------------------------------------

def decorator(cache: CacheClient, policy: Policy, key: str | Callable[..., str] | None,
              namespace: str) -> Callable[[Any], Any]:
    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(fn)

        def names(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, Policy]:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = bound.arguments
            if callable(key):
                name = key(*args, **kwargs)
            elif key is not None:
                name = key.format(**arguments)
            else:
                digest = hashlib.sha256(repr(sorted(arguments.items())).encode()).hexdigest()[:24]
                name = f"{fn.__module__}.{fn.__qualname__}:{digest}"
            return name, replace(policy, tags=tuple(t.format(**arguments) for t in policy.tags))

        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                name, bound_policy = names(args, kwargs)

                async def load() -> bytes | None:
                    return _dump(await fn(*args, **kwargs))

                if cache._loop is None:
                    cache._loop = asyncio.get_running_loop()
                return _undump(await get_or_set(cache, name, load, bound_policy, namespace))

            return wrapper

        @functools.wraps(fn)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            loop = cache._loop
            if loop is None:
                raise RuntimeError("@cached on a sync function needs MezzoSync, or an async Mezzo client already in use")
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                raise RuntimeError("a sync function under @cached would block the client's own event loop")
            name, bound_policy = names(args, kwargs)

            def load() -> bytes | None:
                return _dump(fn(*args, **kwargs))  # get_or_set runs a plain loader in a worker thread

            future = asyncio.run_coroutine_threadsafe(get_or_set(cache, name, load, bound_policy, namespace), loop)
            return _undump(future.result())

        return sync_wrapper

    return decorate


def _dump(result: Any) -> bytes | None:
    return None if result is None else orjson.dumps(result)


def _undump(raw: bytes | None) -> Any:
    return None if raw is None else orjson.loads(raw)
