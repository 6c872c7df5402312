"""The HTTP key operations on a distributed namespace: the same answers as the embedded ones, from its backend.

Reads, writes (TTL, NX/XX), deletes and compare-and-delete go to the node owning the key
through the namespace's ``DistributedBackend``. A value's ``meta`` note lives in a sibling key
``<key>.mezzo-meta`` with the same TTL (deleted before every write of the key and written after
it; it may sit on another node, so a node failure can lose a note but never a value, and a lost
note only makes the value read as a plain one). Tags and near-cache
tracking need the embedded engine: a write with tags is refused, and the invalidation stream
is refused, so a near cache is never in front of a distributed namespace.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request

from mezzo.cache.distributed.backend import Call, DistributedBackend, NodeUnavailable
from mezzo.node.errors import Problem, bad_request, conflict, not_found

META_SUFFIX = ".mezzo-meta"
# compare-and-delete in one step on the owning node
_DELETE_IF = (b"local v = redis.call('GET', KEYS[1]) if not v then return 0 elseif v == ARGV[1] then "
              b"return redis.call('DEL', KEYS[1]) else return -1 end")


def distributed(request: Request, namespace: str) -> DistributedBackend | None:
    """The backend of ``namespace`` when a Cache resource made it distributed."""
    from mezzo.cache.distributed.namespaces import CacheNamespaces

    node = request.app.state.node
    if not node.has(CacheNamespaces):
        return None
    return node.service(CacheNamespaces).backend(namespace)  # type: ignore[no-any-return]


def default_ttl_ms(request: Request, namespace: str) -> int | None:
    from mezzo.cache.distributed.namespaces import CacheNamespaces

    return request.app.state.node.service(CacheNamespaces).router.default_ttl_ms.get(namespace)  # type: ignore[no-any-return]


async def _run(backend: DistributedBackend, calls: list[Call]) -> list[Any]:
    replies = await backend.run(calls)
    for reply in replies:
        if isinstance(reply, NodeUnavailable):
            raise Problem(503, "Service Unavailable", str(reply), type="cache-node-unavailable",
                          headers={"Retry-After": "1"})
        if isinstance(reply, Exception):
            raise conflict(str(reply))
    return replies


async def get(backend: DistributedBackend, namespace: str, key: str) -> tuple[bytes, int | None, str | None]:
    """The value, its TTL in ms (None: none) and its meta note."""
    raw, meta_key = key.encode(), (key + META_SUFFIX).encode()
    value, ttl, meta = await _run(backend, [Call(raw, (b"GET", raw)), Call(raw, (b"PTTL", raw)),
                                            Call(meta_key, (b"GET", meta_key))])
    if value is None:
        raise not_found(f"key {key!r} in cache namespace {namespace!r}")
    return bytes(value), (int(ttl) if int(ttl) >= 0 else None), (bytes(meta).decode("utf-8", "replace")
                                                                 if meta is not None else None)


async def set(backend: DistributedBackend, key: str, value: bytes, ttl_ms: int | None, nx: bool, xx: bool,
              tags: list[str], meta: str | None) -> None:
    if tags:
        raise bad_request("tags need an embedded cache namespace", field="tags")
    raw, meta_key = key.encode(), (key + META_SUFFIX).encode()
    args: tuple[bytes, ...] = (b"SET", raw, value)
    expiry: tuple[bytes, ...] = (b"PX", b"%d" % ttl_ms) if ttl_ms else ()
    args += expiry
    if nx:
        args += (b"NX",)
    elif xx:
        args += (b"XX",)
    # The old note goes first: a value without a note reads as a plain value, but a new value paired
    # with the old note (say, a negative-cache mark) would read wrong until the note expired. With NX
    # the key, and so its note, may belong to someone else: the note is then settled after.
    if not nx:
        await _run(backend, [Call(meta_key, (b"DEL", meta_key), "delete")])
    (reply,) = await _run(backend, [Call(raw, args, "write")])
    if reply is None:
        raise conflict(f"key {key!r} {'exists' if nx else 'does not exist'}")
    if meta is not None:
        await _run(backend, [Call(meta_key, (b"SET", meta_key, meta.encode(), *expiry), "write")])
    elif nx:
        await _run(backend, [Call(meta_key, (b"DEL", meta_key), "delete")])


async def delete(backend: DistributedBackend, namespace: str, key: str, if_value: str | None) -> None:
    raw, meta_key = key.encode(), (key + META_SUFFIX).encode()
    if if_value is None:
        (deleted,) = await _run(backend, [Call(raw, (b"DEL", raw), "delete")])
    else:
        (deleted,) = await _run(backend, [Call(raw, (b"EVAL", _DELETE_IF, b"1", raw, if_value.encode()), "delete")])
        if int(deleted) == -1:
            raise Problem(412, "Precondition Failed", f"key {key!r} holds another value", type="precondition-failed",
                          errors=[{"field": "ifValue", "reason": "does not match the key's value"}])
    if not int(deleted):
        raise not_found(f"key {key!r} in cache namespace {namespace!r}")
    await _run(backend, [Call(meta_key, (b"DEL", meta_key), "delete")])
