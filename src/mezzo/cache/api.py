"""HTTP for the cache: keys of a namespace, their values, TTLs and tags, statistics, hot keys,
and the invalidation stream near caches listen to.

Values are bytes: answered as ``value`` when they are UTF-8 text, else as ``valueBase64``.
A read with a ``Mezzo-Tracking: <listener id>`` header is tracked for that listener (the
answer then carries ``Mezzo-Tracking: on``) and the listener's stream
(``/v1/cache/{namespace}/invalidations``) will name the key when it changes.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from mezzo.cache import remote_keys
from mezzo.cache import stats as cache_stats
from mezzo.cache.engine import CacheError, Engine, Keyspace
from mezzo.cache.invalidation import Listener, Tracking, tracking_of
from mezzo.jsonutil import dumps
from mezzo.node.auth import TokenService, Verb
from mezzo.node.auth_module import Caller, require
from mezzo.node.errors import Problem, bad_request, conflict, not_found, revoked_event
from mezzo.resources.types import Duration

router = APIRouter(prefix="/v1/cache", tags=["cache"])
SpaceName = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")]
TagName = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f/]+$")]
MAX_VALUE = 64 * 1024 * 1024
MAX_TAGS = 32
MAX_META = 1024
TRACKING = "Mezzo-Tracking"


class SetIn(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    value: str | None = None
    value_base64: str | None = Field(None, alias="valueBase64")
    ttl: Duration | None = Field(None, gt=0)
    nx: bool = Field(False, description="only if the key does not exist")
    xx: bool = Field(False, description="only if the key exists")
    tags: list[TagName] = Field(default_factory=list, max_length=MAX_TAGS,
                                description="labels for invalidate-by-tag (replace the key's earlier ones)")
    meta: str | None = Field(None, min_length=1, max_length=MAX_META,
                             description="a short note kept with this value and answered with it (the SDK's "
                                         "load time and soft expiry); a later write drops it")

    @model_validator(mode="after")
    def _one(self) -> SetIn:
        if (self.value is None) == (self.value_base64 is None):
            raise ValueError("give value or valueBase64")
        if self.nx and self.xx:
            raise ValueError("nx and xx exclude each other")
        return self


def _engine(request: Request) -> Engine:
    return request.app.state.node.service(Engine)  # type: ignore[no-any-return]


def _space(request: Request, name: str, create: bool = False) -> Keyspace:
    if remote_keys.distributed(request, name) is not None:
        raise conflict(f"cache namespace {name!r} is distributed: its keys, statistics and tags live on its "
                       f"nodes (see /v1/cache/{name}/nodes; list keys with SCAN over the Redis protocol)")
    engine = _engine(request)
    if not create and name not in engine.spaces:
        raise not_found(f"cache namespace {name!r}")
    return engine.space(name)


def _shown(key: bytes, value: Any, ks: Keyspace | None) -> dict[str, Any]:
    out: dict[str, Any] = {"key": key.decode("utf-8", "replace")}
    if isinstance(value, dict):
        out["type"] = "hash"
        out["value"] = {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in value.items()}
    else:
        out["type"] = "string"
        try:
            out["value"] = value.decode()
        except UnicodeDecodeError:
            out["valueBase64"] = base64.b64encode(value).decode()
    if ks is not None:
        ttl = ks.ttl_ms(key)
        out["ttlMs"] = None if ttl < 0 else ttl
        meta = ks.meta.get(key)
        if meta is not None:
            out["meta"] = meta.decode("utf-8", "replace")
    return out


@router.get("", summary="Cache namespaces with their statistics")
async def namespaces(request: Request, caller: Caller) -> dict[str, Any]:
    require(caller, Verb.READ)
    return {"items": [cache_stats.stats(ks) for ks in _engine(request).spaces.values()]}


@router.get("/{namespace}/stats", summary="Hits, misses, hit ratio, memory, evictions, ops/s of a namespace")
async def namespace_stats(request: Request, namespace: SpaceName, caller: Caller) -> dict[str, Any]:
    require(caller, Verb.READ)
    return cache_stats.stats(_space(request, namespace))


@router.get("/{namespace}/hotkeys", summary="Hot keys (sampled Space-Saving top-k) and big keys (sampled sizes)")
async def hot_keys(request: Request, namespace: SpaceName, caller: Caller,
                   limit: Annotated[int, Query(ge=1, le=64)] = 10) -> dict[str, Any]:
    require(caller, Verb.READ)
    return cache_stats.report(_space(request, namespace), limit)


@router.get("/{namespace}/keys", summary="Keys of a namespace (a SCAN page)")
async def list_keys(request: Request, namespace: SpaceName, caller: Caller, match: str | None = None,
                    cursor: Annotated[int, Query(ge=0)] = 0,
                    count: Annotated[int, Query(ge=1, le=10_000)] = 100) -> dict[str, Any]:
    require(caller, Verb.READ)
    nxt, keys = _space(request, namespace).scan(cursor, match.encode() if match else None, count)
    return {"items": [k.decode("utf-8", "replace") for k in keys], "cursor": nxt}


@router.get("/{namespace}/keys/{key:path}", summary="A key's value and TTL")
async def get_key(request: Request, response: Response, namespace: SpaceName, key: str, caller: Caller,
                  tracking: Annotated[str | None, Header(alias=TRACKING, max_length=64)] = None) -> dict[str, Any]:
    require(caller, Verb.USE)
    backend = remote_keys.distributed(request, namespace)
    if backend is not None:
        stored, ttl_ms, meta = await remote_keys.get(backend, namespace, key)
        return {**_shown(key.encode(), stored, None), "ttlMs": ttl_ms, **({"meta": meta} if meta else {})}
    ks = _space(request, namespace)
    raw = key.encode()
    value = ks.lookup(raw)
    if value is None:
        raise not_found(f"key {key!r} in cache namespace {namespace!r}")
    if tracking and tracking_of(_engine(request)).track(ks, raw, tracking):
        response.headers[TRACKING] = "on"
    return _shown(raw, value, ks)


@router.put("/{namespace}/keys/{key:path}", status_code=204, summary="Set a string value, with an optional TTL")
async def set_key(request: Request, namespace: SpaceName, key: str, caller: Caller, body: SetIn = Body(...)) -> Response:
    require(caller, Verb.USE)
    if body.value_base64 is not None:
        try:
            value = base64.b64decode(body.value_base64, validate=True)
        except ValueError:
            raise bad_request("valueBase64 is not base64", field="valueBase64") from None
    else:
        value = (body.value or "").encode()
    if len(value) > MAX_VALUE:
        raise Problem(413, "Payload Too Large", f"a value is at most {MAX_VALUE} bytes",
                      errors=[{"field": "value", "reason": "too large"}])
    ttl_ms = max(int(body.ttl * 1000), 1) if body.ttl else None
    backend = remote_keys.distributed(request, namespace)
    if backend is not None:
        ttl_ms = ttl_ms or remote_keys.default_ttl_ms(request, namespace)
        await remote_keys.set(backend, key, value, ttl_ms, body.nx, body.xx, body.tags, body.meta)
        return Response(status_code=204)
    ks = _space(request, namespace, create=True)
    exists = ks.exists(key.encode())
    if (body.nx and exists) or (body.xx and not exists):
        raise conflict(f"key {key!r} {'exists' if exists else 'does not exist'}")
    try:
        ks.store(key.encode(), value, ttl_ms=ttl_ms)
    except CacheError as exc:
        raise Problem(507, "Insufficient Storage", str(exc)) from None
    ks.annotate(key.encode(), body.tags, body.meta.encode() if body.meta is not None else None)
    return Response(status_code=204)


@router.delete("/{namespace}/keys/{key:path}", status_code=204, summary="Delete a key (only if it holds ifValue)")
async def delete_key(request: Request, namespace: SpaceName, key: str, caller: Caller,
                     if_value: Annotated[str | None, Query(alias="ifValue", max_length=4096,
                                                           description="compare-and-delete, e.g. a lock's owner")] = None
                     ) -> Response:
    require(caller, Verb.USE)
    backend = remote_keys.distributed(request, namespace)
    if backend is not None:
        await remote_keys.delete(backend, namespace, key, if_value)
        return Response(status_code=204)
    ks = _space(request, namespace)
    raw = key.encode()
    if if_value is not None:
        current = ks.lookup(raw, count=False)
        if current is not None and current != if_value.encode():
            raise Problem(412, "Precondition Failed", f"key {key!r} holds another value", type="precondition-failed",
                          errors=[{"field": "ifValue", "reason": "does not match the key's value"}])
    if not ks.delete(raw):
        raise not_found(f"key {key!r} in cache namespace {namespace!r}")
    return Response(status_code=204)


@router.post("/{namespace}/tags/{tag}:invalidate", summary="Delete every key labelled with a tag")
async def invalidate_tag(request: Request, namespace: SpaceName, tag: str, caller: Caller) -> dict[str, Any]:
    require(caller, Verb.USE)
    if len(tag) > 256 or "/" in tag:
        raise bad_request("a tag is at most 256 characters, without '/'", field="tag")
    if remote_keys.distributed(request, namespace) is not None:
        raise conflict(f"cache namespace {namespace!r} is distributed: tags need an embedded cache namespace")
    engine = _engine(request)
    deleted = engine.space(namespace).drop_tag(tag) if namespace in engine.spaces else 0
    return {"tag": tag, "deleted": deleted}


@router.get("/{namespace}/invalidations", summary="Server-sent events: keys a near cache read that changed since")
async def invalidations(request: Request, namespace: SpaceName, caller: Caller,
                        heartbeat: Annotated[float, Query(ge=0.05, le=300)] = 15.0) -> StreamingResponse:
    """The first event (``event: hello``) gives the listener id to send as ``Mezzo-Tracking`` on reads;
    then each event is ``{"keys": [...]}`` (drop these) or ``{"flush": true}`` (drop everything).
    A comment line every ``heartbeat`` seconds tells the client the stream is alive."""
    require(caller, Verb.USE)
    _space(request, namespace, create=True)  # refused for a distributed namespace: nothing to track there
    tracking = tracking_of(_engine(request))
    tokens: TokenService = request.app.state.node.service(TokenService)
    events = _invalidation_events(request, tracking, namespace, heartbeat, lambda: tokens.still_valid(caller))
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _invalidation_events(request: Request, tracking: Tracking, namespace: str, heartbeat: float,
                               authorized: Callable[[], bool]) -> AsyncIterator[bytes]:
    stopping: asyncio.Event = request.app.state.node.stopping
    listener: Listener = tracking.listen(namespace)  # here, not in the handler: the finally below always runs
    try:
        yield b"event: hello\ndata: " + dumps({"listener": listener.id, "namespace": namespace}) + b"\n\n"
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()
        while not stopping.is_set():
            if not authorized():  # before every event and at least every heartbeat: a revoked or expired token ends it
                yield revoked_event()
                return
            event = listener.take()
            if event is not None:
                yield b"data: " + dumps(event) + b"\n\n"
                quiet_since = loop.time()
                continue
            if loop.time() - quiet_since >= heartbeat:
                yield b": ping\n\n"
                quiet_since = loop.time()
            try:  # wake at least once a second to notice a stopping node
                async with asyncio.timeout(min(heartbeat, 1.0)):
                    await listener.ready.wait()
            except TimeoutError:
                pass
    finally:
        tracking.leave(listener)
