"""HTTP for distributed namespaces: their nodes with health and rebalance progress, and a rebalance verb."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request

from mezzo.cache.distributed.backend import NotRebalanced
from mezzo.cache.distributed.namespaces import CacheNamespaces
from mezzo.node.auth import Verb
from mezzo.node.auth_module import Caller, require
from mezzo.node.errors import conflict, not_found

router = APIRouter(prefix="/v1/cache", tags=["cache"])
SpaceName = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")]


def _namespaces(request: Request) -> CacheNamespaces:
    return request.app.state.node.service(CacheNamespaces)  # type: ignore[no-any-return]


@router.get("/{namespace}/nodes", summary="The nodes of a namespace, their health, and the last rebalance")
async def nodes(request: Request, namespace: SpaceName, caller: Caller) -> dict[str, Any]:
    require(caller, Verb.READ)
    status = _namespaces(request).status(namespace)
    if status is None:
        raise not_found(f"cache namespace {namespace!r}")
    return status


@router.post("/{namespace}:rebalance", status_code=202,
             summary="Move every key that is not on its owner node, in the background")
async def rebalance(request: Request, namespace: SpaceName, caller: Caller) -> dict[str, Any]:
    require(caller, Verb.WRITE)
    namespaces = _namespaces(request)
    backend = namespaces.backend(namespace)
    if backend is None:
        if namespaces.status(namespace) is None:
            raise not_found(f"cache namespace {namespace!r}")
        raise conflict(f"cache namespace {namespace!r} is embedded: there is nothing to rebalance")
    try:
        return {"namespace": namespace, "rebalance": await backend.rebalance()}
    except NotRebalanced as exc:
        raise conflict(f"cache namespace {namespace!r}: {exc}") from None
