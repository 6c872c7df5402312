"""HTTP routes of the declarative API under /v1/resources."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import StreamingResponse

from mezzo.jsonutil import dumps, loads
from mezzo.node.auth import TokenService, Verb
from mezzo.node.auth_module import Caller, require
from mezzo.node.errors import (
    Problem,
    bad_request,
    conflict,
    not_found,
    problem_event,
    revoked_event,
)
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
from mezzo.resources.types import NAME_PATTERN
from mezzo.storage.kv import CompactedError, ConflictError
from mezzo.telemetry.metrics import Metrics

router = APIRouter(prefix="/v1", tags=["resources"])
MAX_REVISION = 2**62
KindPath = Annotated[str, Path(pattern=r"^[A-Za-z][A-Za-z0-9]{0,62}$")]
NamePath = Annotated[str, Path(pattern=NAME_PATTERN, max_length=253)]
Namespace = Annotated[str, Query(pattern=NAME_PATTERN, max_length=253)]
OptionalNamespace = Annotated[str | None, Query(pattern=NAME_PATTERN, max_length=253)]
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
    except NotFoundError as exc:  # its message is the whole sentence
        raise Problem(404, "Not Found", str(exc), type="not-found") from None
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
        # a dry run (and a diff) needs write too, as in Kubernetes: its "unchanged" would tell a reader
        # whether a guessed secret (a consumer's key) is the stored one
        require(caller, Verb.WRITE, item.namespace)
    try:
        results = await svc.apply(desired, caller.name, dry_run=dry_run)
    except ConflictError as exc:
        raise conflict(f"{exc}; try again") from None
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
    if not caller.has_verb(Verb.READ):  # kinds are not namespaced: any reader may list them
        require(caller, Verb.READ)
    return {"items": [
        {"kind": k.kind, "plural": k.plural, "shortNames": list(k.short_names),          "description": k.description, "columns": [{"header": c.header, "path": c.path} for c in k.columns],
         "schema": k.spec.model_json_schema(by_alias=True)}
        for k in service(request).catalog
    ]}


def resume_point(from_revision: int | None, last_event_id: str | None, current: int) -> tuple[int, int]:
    """(first revision, events of it to skip). SSE ids are ``REVISION.INDEX``, so a client
    that lost its connection inside a multi-document revision resumes right after the last
    event it saw, not at the next revision."""
    if from_revision is not None:
        return from_revision, 0
    if last_event_id:
        revision, _, index = last_event_id.partition(".")
        if revision.isdigit() and (index.isdigit() or not index):
            return (int(revision), int(index) + 1) if index else (int(revision) + 1, 0)
    return current + 1, 0


@router.get("/resources/{kind}:watch", summary="Server-sent events for every change of a kind")
async def watch(
    request: Request, kind: KindPath, caller: Caller,
    namespace: OptionalNamespace = None,
    fromRevision: int | None = Query(None, ge=1, le=MAX_REVISION),
) -> StreamingResponse:
    # Without a namespace a scoped caller sees only its own namespaces' events.
    if namespace is None and not caller.has_verb(Verb.READ):
        require(caller, Verb.READ)
    elif namespace is not None:
        require(caller, Verb.READ, namespace)
    svc = service(request)
    with problems():
        svc.catalog.resolve(kind)
    current, compacted = await svc.store.revision()
    start, skip = resume_point(fromRevision, request.headers.get("last-event-id"), current)
    if start <= compacted:
        raise Problem(410, "Gone", str(CompactedError(start, compacted)), type="compacted",
                      compactRevision=compacted, currentRevision=current)
    tokens = request.app.state.node.service(TokenService)
    stream = _sse(svc, kind, namespace, start, skip, lambda ns: caller.can(Verb.READ, ns),
                  request.app.state.node.stopping, lambda: tokens.still_valid(caller))
    return StreamingResponse(stream, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _sse(
    svc: ResourceService, kind: str, namespace: str | None, start: int, skip: int,
    visible: Callable[[str], bool], stopping: asyncio.Event, authorized: Callable[[], bool],
) -> AsyncIterator[bytes]:
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=1000)

    async def pump() -> None:
        revision, index = start, -1
        try:
            async for event in svc.watch(kind, namespace, start):
                if not visible(event.resource.metadata.namespace):
                    continue
                revision, index = event.revision, index + 1 if event.revision == revision else 0
                if revision == start and index < skip:
                    continue
                data = dumps({"type": event.type, "revision": event.revision,
                              "object": event.resource.model_dump(mode="json")})
                await queue.put(b"id: %d.%d\nevent: %s\ndata: %s\n\n"
                                % (revision, index, event.type.encode(), data))
        except CompactedError as exc:
            await queue.put(problem_event(410, "Compacted", str(exc), compactRevision=exc.compact_revision))
        except Exception as exc:  # end the stream with a reason rather than leave it silent
            await queue.put(problem_event(503, "Watch failed", f"{type(exc).__name__}: {exc}; reconnect"))
        await queue.put(b"")

    task = asyncio.create_task(pump())
    stop = asyncio.create_task(stopping.wait())
    get: asyncio.Task[bytes] | None = None
    try:
        yield b": watching\n\n"
        while True:
            get = asyncio.create_task(queue.get())
            done, _ = await asyncio.wait({get, stop}, timeout=HEARTBEAT, return_when=asyncio.FIRST_COMPLETED)
            if get not in done:
                get.cancel()
                if stop in done:  # the node is shutting down: end the stream cleanly
                    return
                if not authorized():  # an idle watch ends too once its token is revoked or expired
                    yield revoked_event()
                    return
                yield b": heartbeat\n\n"
                continue
            chunk = get.result()
            if not chunk:
                return
            if not authorized():  # revoked or expired since the stream opened
                yield revoked_event()
                return
            yield chunk
    finally:
        for pending in (task, stop, get):
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pending


@router.get("/resources/{kind}", summary="List resources of a kind")
async def list_resources(
    request: Request, kind: KindPath, caller: Caller,
    namespace: OptionalNamespace = None, selector: str | None = None,
) -> dict[str, Any]:
    if namespace is None:
        if not caller.has_verb(Verb.READ):
            require(caller, Verb.READ)
    else:
        require(caller, Verb.READ, namespace)
    with problems():
        items, revision = await service(request).list(kind, namespace, parse_selector(selector))
    visible = [r for r in items if caller.can(Verb.READ, r.metadata.namespace)]
    return {"revision": revision, "items": [r.model_dump(mode="json") for r in visible]}


@router.post("/resources/{kind}/{name}:rollback", summary="Return a resource to an earlier version")
async def rollback(
    request: Request, kind: KindPath, name: NamePath, caller: Caller,
    namespace: Namespace = "default", to: int | None = Query(None, ge=1),
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
    request: Request, kind: KindPath, name: NamePath, caller: Caller, namespace: Namespace = "default"
) -> dict[str, list[HistoryEntry]]:
    require(caller, Verb.READ, namespace)
    with problems():
        entries = await service(request).history(kind, namespace, name)
    if not entries:
        raise not_found(f"{kind} {namespace}/{name}")
    return {"items": entries}


@router.get("/resources/{kind}/{name}", summary="One resource")
async def get_resource(
    request: Request, kind: KindPath, name: NamePath, caller: Caller, namespace: Namespace = "default"
) -> Resource:
    require(caller, Verb.READ, namespace)
    with problems():
        found = await service(request).get(kind, namespace, name)
    if found is None:
        raise not_found(f"{kind} {namespace}/{name}")
    return found


@router.delete("/resources/{kind}/{name}", summary="Delete a resource (its history stays)")
async def delete_resource(
    request: Request, kind: KindPath, name: NamePath, caller: Caller, namespace: Namespace = "default"
) -> ApplyResult:
    require(caller, Verb.WRITE, namespace)
    with problems():
        result = await service(request).delete(kind, namespace, name, caller.name)
    count_changes(request, [result])
    return result
