"""HTTP routes of the service registry: register, heartbeat, deregister, list (with Consul-style
blocking queries) and a server-sent event stream of a service's instances."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse

from mezzo.jsonutil import dumps
from mezzo.node.auth import Principal, TokenService, Verb
from mezzo.node.auth_module import Caller, require
from mezzo.node.errors import bad_request, not_found, revoked_event
from mezzo.registry.members import Membership
from mezzo.registry.model import (
    INSTANCE_PATTERN,
    SERVICE_PATTERN,
    Instance,
    InstanceIn,
    InstanceRef,
)
from mezzo.registry.service import RegistryService
from mezzo.registry.view import RegistryView
from mezzo.resources.types import NAME_PATTERN, parse_duration

router = APIRouter(prefix="/v1/registry", tags=["registry"])
ServicePath = Annotated[str, Path(pattern=SERVICE_PATTERN)]
InstancePath = Annotated[str, Path(pattern=INSTANCE_PATTERN)]
Namespace = Annotated[str, Query(pattern=NAME_PATTERN, max_length=253)]
Index = Annotated[int | None, Query(ge=0, description="answer when the index is above this (blocking query)")]
Wait = Annotated[str, Query(description="how long a blocking query may wait, e.g. 30s (at most 10m)")]
INSTANCES = "/services/{service}/instances"
INDEX_HEADER = "X-Mezzo-Index"
MAX_WAIT = 600.0


def _parts(request: Request) -> tuple[RegistryService, RegistryView]:
    node = request.app.state.node
    return node.service(RegistryService), node.service(RegistryView)


def _out(view: RegistryView, instance: Instance) -> dict[str, Any]:
    expires = view.expires_at(instance)
    if expires is not None:
        instance = instance.model_copy(update={"expires_at": datetime.fromtimestamp(expires, UTC)})
    return instance.out()


def _time(unix: float | None) -> str | None:
    """A time as the instances show theirs (RFC 3339, UTC, ``Z``)."""
    return None if unix is None else datetime.fromtimestamp(unix, UTC).isoformat().replace("+00:00", "Z")


def _wait(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise bad_request(str(exc), field="wait") from None
    if seconds > MAX_WAIT:
        raise bad_request(f"wait is at most {MAX_WAIT:g}s", field="wait")
    return seconds


async def _block(request: Request, view: RegistryView, namespace: str, service: str | None,
                 index: int | None, wait: float) -> None:
    """A blocking query: return at once when the index has moved past ``index``, else on the next
    change, else after ``wait`` (the caller answers with the unchanged index)."""
    await view.caught_up()
    if not index:
        return
    stopping = request.app.state.node.stopping
    deadline = time.monotonic() + wait
    while view.index(namespace, service) <= index:
        left = deadline - time.monotonic()
        if left <= 0 or stopping.is_set() or view.stopped or await request.is_disconnected():
            return
        await view.wait(namespace, service, min(left, 5.0))


def _json(body: Any, index: int, status: int = 200) -> Response:
    return Response(dumps(body), status_code=status, media_type="application/json",
                    headers={INDEX_HEADER: str(index)})


# registering --------------------------------------------------------------------------------------

@router.post(INSTANCES + "/{instance}:heartbeat", summary="Renew an instance's TTL (404: register again)")
async def heartbeat(request: Request, service: ServicePath, instance: InstancePath, caller: Caller,
                    namespace: Namespace = "default") -> dict[str, Any]:
    require(caller, Verb.USE, namespace)
    svc, view = _parts(request)
    ref = InstanceRef(namespace, service, instance)
    expires = await svc.heartbeat(ref, view.known(ref))
    return {"id": instance, "expiresAt": _time(expires)}


@router.put(INSTANCES, summary="Register or replace an instance; its id defaults to host:port")
async def register(request: Request, service: ServicePath, caller: Caller, body: InstanceIn,
                   namespace: Namespace = "default") -> Response:
    return await _register(request, namespace, service, body, caller)


@router.put(INSTANCES + "/{instance}", summary="Register or replace the instance with this id")
async def register_id(request: Request, service: ServicePath, instance: InstancePath, caller: Caller,
                      body: InstanceIn, namespace: Namespace = "default") -> Response:
    if body.id is not None and body.id != instance:
        raise bad_request(f"the body's id {body.id!r} differs from the path's {instance!r}", field="id")
    return await _register(request, namespace, service, body.model_copy(update={"id": instance}), caller)


async def _register(request: Request, namespace: str, service: str, body: InstanceIn, caller: Principal) -> Response:
    require(caller, Verb.USE, namespace)
    svc, view = _parts(request)
    instance, created = await svc.register(namespace, service, body, caller.name)
    await view.caught_up()
    return _json(_out(view, instance), view.index(namespace, service), 201 if created else 200)


@router.delete(INSTANCES + "/{instance}", status_code=204, summary="Deregister an instance")
async def deregister(request: Request, service: ServicePath, instance: InstancePath, caller: Caller,
                     namespace: Namespace = "default") -> None:
    require(caller, Verb.USE, namespace)
    svc, _ = _parts(request)
    await svc.deregister(InstanceRef(namespace, service, instance), caller.name)


# reading -------------------------------------------------------------------------------------------

@router.get("/services", summary="Services with instances (blocking query with index and wait)")
async def list_services(request: Request, caller: Caller, namespace: Namespace = "default", index: Index = None,
                        wait: Wait = "60s") -> Response:
    require(caller, Verb.READ, namespace)
    _, view = _parts(request)
    await _block(request, view, namespace, None, index, _wait(wait))
    items = [{"name": name, "instances": len(instances), "passing": sum(i.passing for i in instances),
              "critical": sum(not i.passing for i in instances), "index": view.index(namespace, name)}
             for name, instances in view.services(namespace).items()]
    index_now = view.index(namespace)
    return _json({"namespace": namespace, "index": index_now, "items": items}, index_now)


@router.get(INSTANCES, summary="A service's instances (blocking query with index and wait)")
async def list_instances(request: Request, service: ServicePath, caller: Caller, namespace: Namespace = "default",
                         healthy: bool = False, zone: str | None = None, tag: str | None = None,
                         index: Index = None, wait: Wait = "60s") -> Response:
    """``healthy=true``: only passing instances whose TTL has not run out. The ``X-Mezzo-Index``
    header (and ``index`` in the body) is what to send back as ``index`` to wait for a change."""
    require(caller, Verb.READ, namespace)
    _, view = _parts(request)
    await _block(request, view, namespace, service, index, _wait(wait))
    index_now = view.index(namespace, service)
    return _json(_instances_body(view, namespace, service, healthy, zone, tag, index_now), index_now)


def _instances_body(view: RegistryView, namespace: str, service: str, healthy: bool, zone: str | None,
                    tag: str | None, index: int) -> dict[str, Any]:
    instances = [i for i in view.instances(namespace, service, healthy_only=healthy)
                 if (zone is None or i.zone == zone) and (tag is None or tag in i.tags)]
    return {"namespace": namespace, "service": service, "index": index,
            "instances": [_out(view, i) for i in instances]}


@router.get(INSTANCES + "/{instance}", summary="One instance")
async def get_instance(request: Request, service: ServicePath, instance: InstancePath, caller: Caller,
                       namespace: Namespace = "default") -> dict[str, Any]:
    require(caller, Verb.READ, namespace)
    _, view = _parts(request)
    await view.caught_up()
    found = view.get(namespace, service, instance)
    if found is None:
        raise not_found(f"instance {instance!r} of service {service!r}")
    return _out(view, found)


@router.get("/services/{service}:watch", summary="Server-sent events: the service's instances now and on every change")
async def watch(request: Request, service: ServicePath, caller: Caller, namespace: Namespace = "default",
                healthy: bool = False, zone: str | None = None, tag: str | None = None,
                last_event_id: Annotated[str | None, Header()] = None) -> StreamingResponse:
    """Each event is the whole instance list with ``id`` = the service's index; reconnect with
    ``Last-Event-ID`` and the stream skips the first event when nothing changed since."""
    require(caller, Verb.READ, namespace)
    _, view = _parts(request)
    last = int(last_event_id) if last_event_id and last_event_id.strip().isdigit() else 0
    tokens: TokenService = request.app.state.node.service(TokenService)
    events = _events(request, view, namespace, service, healthy, zone, tag, last, lambda: tokens.still_valid(caller))
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _events(request: Request, view: RegistryView, namespace: str, service: str, healthy: bool,
                  zone: str | None, tag: str | None, sent: int, authorized: Callable[[], bool]) -> AsyncIterator[bytes]:
    stopping = request.app.state.node.stopping
    await view.caught_up()
    if sent > view.index(namespace, service):
        sent = 0  # ahead of this registry (a wiped or another store): start over with the full list
    while not stopping.is_set() and not view.stopped:
        if not authorized():  # at every change and every heartbeat: a revoked or expired token ends it
            yield revoked_event()
            return
        index = view.index(namespace, service)
        if index > sent:
            body = _instances_body(view, namespace, service, healthy, zone, tag, index)
            yield b"id: %d\nevent: instances\ndata: %s\n\n" % (index, dumps(body))
            sent = index
        elif not await view.wait(namespace, service, 15.0):
            yield b": heartbeat\n\n"


@router.get("/members", summary="Nodes sharing the registry's checks and expiry")
async def members(request: Request, caller: Caller) -> dict[str, Any]:
    require(caller, Verb.READ)
    node = request.app.state.node
    membership, view = node.service(Membership), node.service(RegistryView)
    live = membership.live()
    return {"self": membership.node_id, "items": [
        {"id": m, "expiresAt": _time(view.members[m][1]) if m in view.members else None}
        for m in live]}
