"""HTTP routes of the declarative API under /v1/resources."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from mezzo.jsonutil import dumps, loads
from mezzo.node.auth import Verb
from mezzo.node.auth_module import Caller, require
from mezzo.node.errors import Problem, bad_request, conflict, not_found
from mezzo.resources.catalog import UnknownKindError
from mezzo.resources.manifests import (
    ManifestError,
    SourceDocument,
    describe,
    from_objects,
    parse_yaml,
)
from mezzo.resources.model import ApplyResult, HistoryEntry, Resource
from mezzo.resources.service import NotFoundError, ResourceService, parse_selector
from mezzo.storage.kv import CompactedError, ConflictError
from mezzo.telemetry.metrics import Metrics

router = APIRouter(prefix="/v1", tags=["resources"])
MAX_MANIFEST_BYTES = 10 * 1024 * 1024
HEARTBEAT = 15.0


def service(request: Request) -> ResourceService:
    return request.app.state.node.service(ResourceService)


def count_changes(request: Request, results: list[ApplyResult]) -> None:
    counter = request.app.state.node.service(Metrics).counter(
        "resources", "changes", "total", "Resource changes by kind and action.", labels=("kind", "action"))
    for result in results:
        if result.action != "unchanged":
            counter.labels(result.kind, result.action).inc()


async def read_documents(request: Request) -> list[SourceDocument]:
    """Documents from a YAML body, or JSON ``{"documents": [...]}`` / ``{"manifests": [{"source", "text"}]}``."""
    body = await request.body()
    if len(body) > MAX_MANIFEST_BYTES:
        raise Problem(413, "Content Too Large", f"manifests are limited to {MAX_MANIFEST_BYTES} bytes", type="too-large")
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    source = request.query_params.get("source", "request")
    try:
        if ctype in ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml", "text/plain"):
            return parse_yaml(body.decode("utf-8"), source)
        if ctype in ("application/json", ""):
            try:
                payload = loads(body) if body else None
            except ValueError as exc:
                raise bad_request(f"body is not valid JSON: {exc}") from None
            if isinstance(payload, dict) and isinstance(payload.get("manifests"), list):
                docs: list[SourceDocument] = []
                for i, item in enumerate(payload["manifests"]):
                    if not isinstance(item, dict) or not isinstance(item.get("text"), str):
                        raise bad_request("each manifest is {source, text}", field=f"manifests[{i}]")
                    docs += parse_yaml(item["text"], str(item.get("source") or f"manifest {i + 1}"))
                return docs
            if isinstance(payload, dict) and isinstance(payload.get("documents"), list):
                return from_objects(payload["documents"], source)
            if isinstance(payload, list):
                return from_objects(payload, source)
            raise bad_request('expected {"documents": [...]} or {"manifests": [{"source", "text"}]}', field="body")
    except UnicodeDecodeError:
        raise bad_request("manifests must be UTF-8 text") from None
    except ManifestError as exc:
        raise invalid_manifest(exc) from None
    raise Problem(415, "Unsupported Media Type", f"use application/yaml or application/json, not {ctype}")


def invalid_manifest(exc: ManifestError) -> Problem:
    return Problem(400, "Invalid manifest", "; ".join(describe(e) for e in exc.errors),
                   type="invalid-manifest", errors=exc.errors)


def _kind_problem(exc: UnknownKindError) -> Problem:
    return Problem(404, "Unknown kind", str(exc), type="unknown-kind")


@contextlib.contextmanager
def problems() -> Iterator[None]:
    """Answer the service's lookup and concurrency errors as problem documents."""
    try:
        yield
    except UnknownKindError as exc:
        raise _kind_problem(exc) from None
    except NotFoundError as exc:
        raise not_found(str(exc)) from None
    except ConflictError as exc:
        raise conflict(f"{exc}; it changed meanwhile, try again") from None


async def _apply(request: Request, caller: Any, dry_run: bool) -> dict[str, Any]:
    docs = await read_documents(request)
    if not docs:
        raise bad_request("no documents to apply", field="body")
    svc = service(request)
    try:
        desired = svc.validate(docs)
    except ManifestError as exc:
        raise invalid_manifest(exc) from None
    for item in desired:
        require(caller, Verb.READ if dry_run else Verb.WRITE, item.namespace)
    try:
        results = await svc.apply(desired, caller.name, dry_run=dry_run)
    except ConflictError as exc:
        raise conflict(f"{exc}; the resources keep changing, try again") from None
    if not dry_run:
        count_changes(request, results)
    return {"dryRun": dry_run, "items": [r.model_dump(mode="json", exclude_none=True) for r in results]}


@router.post("/resources:apply", summary="Create or replace resources, all or nothing")
async def apply(request: Request, caller: Caller, dryRun: bool = False) -> dict[str, Any]:
    return await _apply(request, caller, dryRun)


@router.post("/resources:diff", summary="What an apply would change, without changing anything")
async def diff(request: Request, caller: Caller) -> dict[str, Any]:
    return await _apply(request, caller, True)


@router.get("/kinds", summary="Kinds this node knows")
async def kinds(request: Request, caller: Caller) -> dict[str, Any]:
    require(caller, Verb.READ)
    return {"items": [
        {"kind": k.kind, "plural": k.plural, "shortNames": list(k.short_names), "namespaced": k.namespaced,
         "description": k.description, "columns": [{"header": c.header, "path": c.path} for c in k.columns],
         "schema": k.spec.model_json_schema(by_alias=True)}
        for k in service(request).catalog
    ]}


@router.get("/resources/{kind}:watch", summary="Server-sent events for every change of a kind")
async def watch(
    request: Request, kind: str, caller: Caller,
    namespace: str | None = None, fromRevision: int | None = Query(None, ge=1),
) -> StreamingResponse:
    require(caller, Verb.READ, namespace)
    svc = service(request)
    try:
        svc.catalog.resolve(kind)
    except UnknownKindError as exc:
        raise _kind_problem(exc) from None
    last_id = request.headers.get("last-event-id")
    if fromRevision is None and last_id and last_id.isdigit():
        fromRevision = int(last_id) + 1
    current, compacted = await svc.store.revision()
    start = fromRevision or current + 1
    if start <= compacted:
        raise Problem(410, "Gone", str(CompactedError(start, compacted)), type="compacted",
                      compactRevision=compacted, currentRevision=current)
    if not caller.can(Verb.READ, None) and namespace is None:
        raise Problem(403, "Forbidden", "name a namespace to watch", type="forbidden")
    return StreamingResponse(_sse(svc, kind, namespace, start), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _sse(svc: ResourceService, kind: str, namespace: str | None, start: int) -> AsyncIterator[bytes]:
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=1000)

    async def pump() -> None:
        try:
            async for event in svc.watch(kind, namespace, start):
                data = dumps({"type": event.type, "revision": event.revision,
                              "object": event.resource.model_dump(mode="json")})
                await queue.put(b"id: %d\nevent: %s\ndata: %s\n\n" % (event.revision, event.type.encode(), data))
        except CompactedError as exc:
            problem = {"type": "https://mezzo.dev/problems/compacted", "title": "Gone", "status": 410,
                       "detail": str(exc), "compactRevision": exc.compact_revision}
            await queue.put(b"event: error\ndata: %s\n\n" % dumps(problem))
            await queue.put(b"")

    task = asyncio.create_task(pump())
    try:
        yield b": watching\n\n"
        while True:
            try:
                chunk = await asyncio.wait_for(queue.get(), HEARTBEAT)
            except TimeoutError:
                yield b": heartbeat\n\n"
                continue
            if not chunk:
                return
            yield chunk
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@router.get("/resources/{kind}", summary="List resources of a kind")
async def list_resources(
    request: Request, kind: str, caller: Caller,
    namespace: str | None = None, selector: str | None = None,
) -> dict[str, Any]:
    require(caller, Verb.READ, namespace)
    with problems():
        items, revision = await service(request).list(kind, namespace, parse_selector(selector))
    visible = [r for r in items if caller.can(Verb.READ, r.metadata.namespace)]
    return {"revision": revision, "items": [r.model_dump(mode="json") for r in visible]}


@router.post("/resources/{kind}/{name}:rollback", summary="Return a resource to an earlier version")
async def rollback(
    request: Request, kind: str, name: str, caller: Caller,
    namespace: str = "default", to: int | None = Query(None, ge=1),
) -> ApplyResult:
    require(caller, Verb.WRITE, namespace)
    try:
        with problems():
            result = await service(request).rollback(kind, namespace, name, caller.name, to)
    except ValueError as exc:
        raise bad_request(str(exc), field="to") from None
    count_changes(request, [result])
    return result


@router.get("/resources/{kind}/{name}/history", summary="Every version of a resource")
async def history(
    request: Request, kind: str, name: str, caller: Caller, namespace: str = "default"
) -> dict[str, list[HistoryEntry]]:
    require(caller, Verb.READ, namespace)
    with problems():
        entries = await service(request).history(kind, namespace, name)
    if not entries:
        raise not_found(f"{kind} {namespace}/{name}")
    return {"items": entries}


@router.get("/resources/{kind}/{name}", summary="One resource")
async def get_resource(
    request: Request, kind: str, name: str, caller: Caller, namespace: str = "default"
) -> Resource:
    require(caller, Verb.READ, namespace)
    with problems():
        found = await service(request).get(kind, namespace, name)
    if found is None:
        raise not_found(f"{kind} {namespace}/{name}")
    return found


@router.delete("/resources/{kind}/{name}", summary="Delete a resource (its history stays)")
async def delete_resource(
    request: Request, kind: str, name: str, caller: Caller, namespace: str = "default"
) -> ApplyResult:
    require(caller, Verb.WRITE, namespace)
    with problems():
        result = await service(request).delete(kind, namespace, name, caller.name)
    count_changes(request, [result])
    return result
