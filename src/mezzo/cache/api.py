"""HTTP for the cache: keys of a namespace, their values and TTLs, and statistics.

Values are bytes: answered as ``value`` when they are UTF-8 text, else as ``valueBase64``.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mezzo.cache.engine import CacheError, Engine, Keyspace
from mezzo.node.auth import Verb
from mezzo.node.auth_module import Caller, require
from mezzo.node.errors import Problem, bad_request, conflict, not_found
from mezzo.resources.types import Duration

router = APIRouter(prefix="/v1/cache", tags=["cache"])
SpaceName = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")]
MAX_VALUE = 64 * 1024 * 1024


class SetIn(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    value: str | None = None
    value_base64: str | None = Field(None, alias="valueBase64")
    ttl: Duration | None = Field(None, gt=0)
    nx: bool = Field(False, description="only if the key does not exist")
    xx: bool = Field(False, description="only if the key exists")

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
    engine = _engine(request)
    if not create and name not in engine.spaces:
        raise not_found(f"cache namespace {name!r}")
    return engine.space(name)


def _shown(key: bytes, value: Any, ks: Keyspace) -> dict[str, Any]:
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
    ttl = ks.ttl_ms(key)
    out["ttlMs"] = None if ttl < 0 else ttl
    return out


def stats(ks: Keyspace) -> dict[str, Any]:
    lookups = ks.hits + ks.misses
    return {"namespace": ks.name, "keys": len(ks.data), "memoryBytes": ks.memory, "maxMemoryBytes": ks.max_memory,
            "policy": ks.policy, "hits": ks.hits, "misses": ks.misses,
            "hitRatio": ks.hits / lookups if lookups else None, "evictions": ks.evictions, "expired": ks.expired}


@router.get("", summary="Cache namespaces with their statistics")
async def namespaces(request: Request, caller: Caller) -> dict[str, Any]:
    require(caller, Verb.READ)
    return {"items": [stats(ks) for ks in _engine(request).spaces.values()]}


@router.get("/{namespace}/stats", summary="Hits, misses, memory, evictions of a namespace")
async def namespace_stats(request: Request, namespace: SpaceName, caller: Caller) -> dict[str, Any]:
    require(caller, Verb.READ)
    return stats(_space(request, namespace))


@router.get("/{namespace}/keys", summary="Keys of a namespace (a SCAN page)")
async def list_keys(request: Request, namespace: SpaceName, caller: Caller, match: str | None = None,
                    cursor: Annotated[int, Query(ge=0)] = 0,
                    count: Annotated[int, Query(ge=1, le=10_000)] = 100) -> dict[str, Any]:
    require(caller, Verb.READ)
    nxt, keys = _space(request, namespace).scan(cursor, match.encode() if match else None, count)
    return {"items": [k.decode("utf-8", "replace") for k in keys], "cursor": nxt}


@router.get("/{namespace}/keys/{key:path}", summary="A key's value and TTL")
async def get_key(request: Request, namespace: SpaceName, key: str, caller: Caller) -> dict[str, Any]:
    require(caller, Verb.USE)
    ks = _space(request, namespace)
    value = ks.lookup(key.encode())
    if value is None:
        raise not_found(f"key {key!r} in cache namespace {namespace!r}")
    return _shown(key.encode(), value, ks)


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
    ks = _space(request, namespace, create=True)
    exists = ks.exists(key.encode())
    if (body.nx and exists) or (body.xx and not exists):
        raise conflict(f"key {key!r} {'exists' if exists else 'does not exist'}")
    try:
        ks.store(key.encode(), value, ttl_ms=int(body.ttl * 1000) if body.ttl else None)
    except CacheError as exc:
        raise Problem(507, "Insufficient Storage", str(exc)) from None
    return Response(status_code=204)


@router.delete("/{namespace}/keys/{key:path}", status_code=204, summary="Delete a key")
async def delete_key(request: Request, namespace: SpaceName, key: str, caller: Caller) -> Response:
    require(caller, Verb.USE)
    if not _space(request, namespace).delete(key.encode()):
        raise not_found(f"key {key!r} in cache namespace {namespace!r}")
    return Response(status_code=204)
