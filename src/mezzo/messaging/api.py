"""HTTP routes of messaging: publish (JSON, CloudEvents, binary frames; also over a WebSocket),
pull/ack/nack/seek, streaming consume (server-sent events or a WebSocket), inspection."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Annotated, Any, Literal

import structlog
from fastapi import APIRouter, Depends, Path, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import Response, StreamingResponse
from pydantic import AfterValidator, BaseModel, Field, ValidationError, WithJsonSchema
from starlette.requests import HTTPConnection

from mezzo.jsonutil import dumps, loads
from mezzo.messaging.backend import Delivery, StaleReceiptError, TooManyGroupsError
from mezzo.messaging.codec import FRAMES, FrameError, decode_publish_frames, encode_delivery_frame
from mezzo.messaging.compat.cloudevents import (
    BATCH,
    STRUCTURED,
    CloudEventError,
    from_binary,
    from_structured,
)
from mezzo.messaging.half import HalfMessages, PrepareOptions, TransactionNotFound
from mezzo.messaging.service import (
    SEEK_TO,
    MessageTooLarge,
    MessagingService,
    PublishMessage,
    TopicNotFound,
    checked_receipts,
    to_message,
)
from mezzo.messaging.tracecontext import carry_trace, trace_context
from mezzo.node.auth import Principal, TokenService, Verb
from mezzo.node.auth_module import Caller, authenticate, bearer_token, principal_of, require
from mezzo.node.errors import Problem, bad_request, not_found, revoked_event
from mezzo.resources.types import NAME_PATTERN, Duration, parse_duration

log = structlog.get_logger("mezzo.messaging")
router = APIRouter(prefix="/v1/topics", tags=["messaging"])
MAX_BODY = 64 * 1024 * 1024
TopicPath = Annotated[str, Path(pattern=NAME_PATTERN, max_length=253)]
GroupPath = Annotated[str, Path(pattern=NAME_PATTERN, max_length=253)]
Namespace = Annotated[str, Query(pattern=NAME_PATTERN, max_length=253)]
TransactionPath = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")]
HEARTBEAT = 5.0  # the longest a stream or socket goes without re-checking its token (and, idle, a heartbeat)


def service(request: HTTPConnection) -> MessagingService:
    return request.app.state.node.service(MessagingService)


async def _principal(request: Request) -> Principal:
    """``Caller``'s check on the event loop (a sync dependency costs a thread hop per request);
    a refusal goes through ``principal_of``, which counts it and answers 401."""
    token = bearer_token(request)
    found = authenticate(request, token) if token is not None else None
    return found if found is not None else principal_of(request)


FastCaller = Annotated[Principal, Depends(_principal)]


def token_check(conn: HTTPConnection, caller: Principal) -> Callable[[], bool]:
    """Is the token that opened this stream or socket still valid (not revoked, not expired)?"""
    tokens: TokenService = conn.app.state.node.service(TokenService)
    return lambda: tokens.still_valid(caller)


async def _release(svc: MessagingService, namespace: str, topic: str, group: str, receipts: list[str]) -> None:
    """Deliveries taken for a stream whose token has gone, back at once (else after the ack timeout)."""
    if receipts:
        with contextlib.suppress(StaleReceiptError, LookupError, ConnectionError):
            await svc.nack(namespace, topic, group, receipts, 0.0)


def _json_response(content: Any) -> Response:
    """JSON without FastAPI's response validation: these bodies are built here, not user data."""
    return Response(dumps(content), media_type="application/json")


def delivery_frames(deliveries: list[Delivery]) -> bytes:
    return b"".join([encode_delivery_frame(d.partition, d.offset, d.attempt, d.receipt, d.payload) for d in deliveries])


def wants_frames(request: Request) -> bool:
    return FRAMES in request.headers.get("accept", "")


@contextlib.contextmanager
def problems() -> Iterator[None]:
    try:
        yield
    except TopicNotFound as exc:
        raise Problem(404, "Not Found", str(exc), type="not-found") from None
    except MessageTooLarge as exc:
        raise Problem(413, "Content Too Large", str(exc), type="message-too-large",
                      errors=[{"field": f"messages[{exc.index}]", "reason": str(exc)}]) from None
    except StaleReceiptError as exc:
        raise Problem(409, "Conflict", str(exc), type="stale-receipt") from None
    except TooManyGroupsError as exc:
        raise Problem(409, "Conflict", str(exc), type="too-many-groups") from None
    except LookupError as exc:  # e.g. the topic or group was deleted while a pull waited
        raise Problem(404, "Not Found", str(exc), type="not-found") from None
    except ConnectionError as exc:  # the broker engine (NATS, Redis, PostgreSQL) is unreachable
        raise Problem(503, "Service Unavailable", str(exc), type="broker-unavailable",
                      headers={"Retry-After": "1"}) from None


def _validation(exc: ValidationError, prefix: str) -> Problem:
    errors = [{"field": prefix + ".".join(map(str, e["loc"])), "reason": e["msg"].removeprefix("Value error, ")} for e in exc.errors()]
    return Problem(400, "Bad Request", "; ".join(f"{e['field']}: {e['reason']}" for e in errors),
                   type="invalid-request", errors=errors)


async def read_messages(request: Request) -> list[PublishMessage]:
    """Messages from JSON (one, or ``{"messages": [...]}``), CloudEvents (binary, structured, batch) or a raw body."""
    body = await request.body()
    if len(body) > MAX_BODY:
        raise Problem(413, "Content Too Large", f"a publish request is limited to {MAX_BODY} bytes", type="too-large")
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if request.headers.get("ce-specversion") is not None:
            return [from_binary(request.headers, body)]
        if ctype in (STRUCTURED, BATCH):
            payload = _json(body)
            if ctype == BATCH:
                if not isinstance(payload, list):
                    raise bad_request("a CloudEvents batch is a JSON array", field="body")
                return [_structured(e, f"[{i}].") for i, e in enumerate(payload)]
            return [_structured(payload)]
        if ctype == "application/json":
            payload = _json(body)
            if isinstance(payload, dict) and isinstance(payload.get("messages"), list):
                if not payload["messages"]:
                    raise bad_request("no messages to publish", field="messages")
                out = []
                for i, item in enumerate(payload["messages"]):
                    try:
                        out.append(PublishMessage.model_validate(item))
                    except ValidationError as exc:
                        raise _validation(exc, f"messages[{i}].") from None
                return out
            try:
                return [PublishMessage.model_validate(payload)]
            except ValidationError as exc:
                raise _validation(exc, "") from None
        params = request.query_params
        raw: dict[str, Any] = {"contentType": ctype or "application/octet-stream",
                               "dataBase64": base64.b64encode(body).decode()}
        for name in ("id", "key", "delay", "ttl", "deliverAt"):
            if params.get(name):
                raw[name] = params[name]
        if params.get("tags"):
            raw["tags"] = [t for t in params["tags"].split(",") if t]
        try:
            return [PublishMessage.model_validate(raw)]
        except ValidationError as exc:
            raise _validation(exc, "") from None
    except CloudEventError as exc:
        raise bad_request(exc.reason, field=exc.field) from None
    except ValidationError as exc:  # a CloudEvent whose attributes do not fit a message
        raise _validation(exc, "") from None


def _structured(event: Any, prefix: str = "") -> PublishMessage:
    if isinstance(event, dict) and "specversion" not in event:  # else "must be 1.0" would not say it is missing
        raise CloudEventError(f"{prefix}specversion", 'is required (the CloudEvents version, "1.0")')
    return from_structured(event, prefix)


async def read_frames(request: Request) -> list[tuple[PublishMessage | None, bytes]]:
    """Messages from a body of binary publish frames (``codec.py``)."""
    body = await request.body()
    if len(body) > MAX_BODY:
        raise Problem(413, "Content Too Large", f"a publish request is limited to {MAX_BODY} bytes", type="too-large")
    return parse_frames(body)


def parse_frames(body: bytes) -> list[tuple[PublishMessage | None, bytes]]:
    out: list[tuple[PublishMessage | None, bytes]] = []
    try:
        for index, (head, data) in enumerate(decode_publish_frames(body)):
            if head is None:
                out.append((None, data))
                continue
            try:
                out.append((PublishMessage.options(head), data))
            except ValidationError as exc:
                raise _validation(exc, f"frames[{index}].") from None
            except ValueError as exc:
                raise bad_request(str(exc), field=f"frames[{index}]") from None
    except FrameError as exc:
        raise bad_request(str(exc), field=f"frames[{exc.index}]") from None
    if not out:
        raise bad_request("no messages to publish", field="body")
    return out


def _json(body: bytes) -> Any:
    try:
        return loads(body)
    except ValueError as exc:
        raise bad_request(f"body is not valid JSON: {exc}", field="body") from None


@router.post("/{topic}:publish", summary="Publish one or more messages")
async def publish(request: Request, topic: TopicPath, caller: FastCaller, namespace: Namespace = "default") -> Response:
    """JSON (one message, or ``{"messages": [...]}``), CloudEvents, a raw body, or binary frames
    (``Content-Type: application/vnd.mezzo.frames``, see ``codec.py``)."""
    require(caller, Verb.USE, namespace)
    svc = service(request)
    if request.headers.get("content-type", "").split(";")[0].strip().lower() == FRAMES:
        frames = await read_frames(request)
        with problems():
            results = await svc.publish_frames(namespace, topic, frames, trace_context(request), caller.name)
        return _json_response({"messages": [r.to_json() for r in results]})
    messages = await read_messages(request)
    carry_trace(request, messages)
    with problems():
        try:
            results = await svc.publish(namespace, topic, messages, caller.name)
        except ValueError as exc:  # e.g. invalid base64
            raise bad_request(str(exc)) from None
    return _json_response({"messages": [r.to_json() for r in results]})


class PullRequest(BaseModel):
    max: int = Field(10, ge=1, le=1000)
    consumer: str | None = Field(None, max_length=200, description="who pulls; recorded in message traces")
    wait: Duration = Field(0.0, le=60, description="long-poll up to this long for the first message")


class Receipts(BaseModel):
    receipts: Annotated[list[str], AfterValidator(checked_receipts)] = Field(min_length=1, max_length=10_000)


class NackRequest(Receipts):
    delay: Duration | None = Field(None, le=7 * 86400, description="default: the subscription's backoff")


class SeekRequest(BaseModel):  # ``to`` is checked by seek(): one error for it, not one per kind it may be
    to: Annotated[Any, WithJsonSchema(SEEK_TO.json_schema())] = Field(
        description="earliest, latest, an offset, {partition: offset}, or an RFC 3339 time")


def _group(caller: Principal, namespace: str) -> None:
    require(caller, Verb.USE, namespace)


@router.post("/{topic}/groups/{group}:pull", summary="Receive messages for a consumer group")
async def pull(request: Request, topic: TopicPath, group: GroupPath, caller: FastCaller,
               body: PullRequest | None = None, namespace: Namespace = "default") -> Response:
    """``{"messages": [...]}``, or binary delivery frames with ``Accept: application/vnd.mezzo.frames``."""
    _group(caller, namespace)
    body = body or PullRequest()
    svc = service(request)
    with problems():
        if wants_frames(request):
            kept = await svc.pull_deliveries(namespace, topic, group, body.max, body.wait, body.consumer)
            return Response(delivery_frames([d for d, _ in kept]), media_type=FRAMES)
        messages = await svc.pull(namespace, topic, group, body.max, body.wait, body.consumer)
    return _json_response({"messages": [m.to_json() for m in messages]})


@router.post("/{topic}/groups/{group}:ack", summary="Acknowledge deliveries")
async def ack(request: Request, topic: TopicPath, group: GroupPath, body: Receipts, caller: FastCaller,
              namespace: Namespace = "default") -> dict[str, int]:
    _group(caller, namespace)
    with problems():
        await service(request).ack(namespace, topic, group, body.receipts)
    return {"acked": len(body.receipts)}


@router.post("/{topic}/groups/{group}:nack", summary="Ask for redelivery (after a delay)")
async def nack(request: Request, topic: TopicPath, group: GroupPath, body: NackRequest, caller: FastCaller,
               namespace: Namespace = "default") -> dict[str, int]:
    _group(caller, namespace)
    with problems():
        await service(request).nack(namespace, topic, group, body.receipts, body.delay)
    return {"nacked": len(body.receipts)}


@router.post("/{topic}/groups/{group}:seek", summary="Move a group to earliest, latest, offsets or a time")
async def seek(request: Request, topic: TopicPath, group: GroupPath, body: SeekRequest, caller: Caller,
               namespace: Namespace = "default") -> dict[str, Any]:
    require(caller, Verb.WRITE, namespace)
    with problems():
        try:
            positions = await service(request).seek(namespace, topic, group, body.to)
        except ValueError as exc:
            raise bad_request(str(exc), field="to") from None
    return {"positions": {str(p): o for p, o in positions.items()}}


@router.get("/{topic}/groups/{group}:stream", summary="Server-sent events of messages; ack with :ack")
async def stream(request: Request, topic: TopicPath, group: GroupPath, caller: Caller,
                 namespace: Namespace = "default", max: int = Query(10, ge=1, le=1000)) -> StreamingResponse:
    _group(caller, namespace)
    svc = service(request)
    if not svc.broker.has_topic(f"{namespace}/{topic}"):  # type: ignore[attr-defined]
        raise not_found(f"topic {topic!r} in namespace {namespace!r}")
    stream = _messages(svc, namespace, topic, group, max, request.app.state.node.stopping,
                       token_check(request, caller))
    return StreamingResponse(stream, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _messages(svc: MessagingService, namespace: str, topic: str, group: str, batch: int,
                    stopping: asyncio.Event, authorized: Callable[[], bool]) -> AsyncIterator[bytes]:
    yield b": consuming\n\n"
    while not stopping.is_set():
        messages = await svc.pull(namespace, topic, group, batch, HEARTBEAT)
        if not authorized():  # revoked or expired since the stream opened: this batch is not sent
            await _release(svc, namespace, topic, group, [m.receipt for m in messages if m.receipt])
            yield revoked_event()
            return
        if not messages:
            yield b": heartbeat\n\n"
            continue
        for message in messages:
            data = dumps(message.to_json())
            yield b"id: %s\nevent: message\ndata: %s\n\n" % (message.receipt.encode() if message.receipt else b"", data)


@router.get("", summary="Topics with their sizes")
async def list_topics(request: Request, caller: Caller, namespace: Namespace = "default") -> dict[str, Any]:
    require(caller, Verb.READ, namespace)
    svc = service(request)
    prefix = f"{namespace}/"
    items = []
    for ref in svc.broker.topics():
        if ref.startswith(prefix) and not ref[len(prefix):].startswith("_"):  # _trace.* are internal
            stats = await svc.broker.topic_stats(ref)
            items.append({"name": ref[len(prefix):], "partitions": stats.partitions, "messages": stats.messages,
                          "bytes": stats.bytes, "groups": [g for g in await svc.broker.groups(ref) if not g.startswith("_")]})
    return {"items": items}


@router.delete("/{topic}/groups/{group}", summary="Delete a consumer group and its progress")
async def delete_group(request: Request, topic: TopicPath, group: GroupPath, caller: Caller,
                       namespace: Namespace = "default") -> dict[str, bool]:
    require(caller, Verb.WRITE, namespace)
    svc = service(request)
    ref = f"{namespace}/{topic}"
    if not svc.broker.has_topic(ref) or not await svc.broker.delete_group(ref, group):
        raise not_found(f"group {group!r} of topic {topic!r}")
    return {"deleted": True}


@router.get("/{topic}/groups", summary="Consumer groups of a topic, with lag")
async def list_groups(request: Request, topic: TopicPath, caller: Caller, namespace: Namespace = "default") -> dict[str, Any]:
    require(caller, Verb.READ, namespace)
    svc = service(request)
    ref = f"{namespace}/{topic}"
    if not svc.broker.has_topic(ref):  # type: ignore[attr-defined]
        raise not_found(f"topic {topic!r} in namespace {namespace!r}")
    out = []
    for group in await svc.broker.groups(ref):
        if group.startswith("_"):  # Mezzo's own (dead-letter replay)
            continue
        stats = await svc.broker.group_stats(ref, group)
        out.append({"group": group, "lag": stats.lag, "inFlight": stats.in_flight,
                    "partitions": {str(p): v for p, v in stats.partitions.items()}})
    return {"items": out}


@router.get("/{topic}/messages", summary="Read messages without a group (e.g. dead letters)")
async def read_messages_route(request: Request, topic: TopicPath, caller: Caller, namespace: Namespace = "default",
                              partition: int = Query(0, ge=0), offset: int = Query(0, ge=0),
                              limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
    require(caller, Verb.READ, namespace)
    svc = service(request)
    ref = f"{namespace}/{topic}"
    if not svc.broker.has_topic(ref):  # type: ignore[attr-defined]
        raise not_found(f"topic {topic!r} in namespace {namespace!r}")
    try:
        deliveries = await svc.broker.read(ref, partition, offset, limit)
    except LookupError as exc:
        raise bad_request(str(exc), field="partition") from None
    return {"messages": [_inspected(to_message(topic, d)) for d in deliveries]}


def _inspected(message: Any) -> dict[str, Any]:
    out = message.to_json()
    out.pop("attempt", None)  # read without a group: there is no delivery
    return out


@router.post("/{topic}:replay", summary="Publish dead letters back to where they came from")
async def replay(request: Request, topic: TopicPath, caller: Caller, namespace: Namespace = "default",
                 limit: int = Query(1000, ge=1, le=100_000)) -> dict[str, int]:
    require(caller, Verb.WRITE, namespace)
    with problems():
        count = await service(request).replay_dead_letters(namespace, topic, limit)
    return {"replayed": count}


class PrepareRequest(PrepareOptions):
    messages: list[PublishMessage] = Field(min_length=1, max_length=10_000)


def half(request: Request) -> HalfMessages:
    return request.app.state.node.service(HalfMessages)


@router.post("/{topic}:prepare", summary="Prepare half messages: stored, invisible until committed")
async def prepare(request: Request, topic: TopicPath, body: PrepareRequest, caller: Caller,
                  namespace: Namespace = "default") -> dict[str, Any]:
    require(caller, Verb.USE, namespace)
    carry_trace(request, body.messages)
    with problems():
        try:
            return await half(request).prepare(namespace, topic, body.messages, body, caller.name)
        except ValueError as exc:
            raise bad_request(str(exc)) from None


@router.post("/{topic}/transactions/{transaction}:commit", summary="Publish a prepared batch")
async def commit(request: Request, topic: TopicPath, transaction: TransactionPath, caller: Caller,
                 namespace: Namespace = "default") -> dict[str, Any]:
    require(caller, Verb.USE, namespace)
    with problems():
        try:
            ids = await half(request).commit(namespace, topic, transaction)
        except TransactionNotFound as exc:
            raise Problem(404, "Not Found", str(exc), type="not-found") from None
    return {"committed": ids}


@router.post("/{topic}/transactions/{transaction}:rollback", summary="Discard a prepared batch")
async def rollback(request: Request, topic: TopicPath, transaction: TransactionPath, caller: Caller,
                   namespace: Namespace = "default") -> dict[str, bool]:
    require(caller, Verb.USE, namespace)
    try:
        await half(request).rollback(namespace, topic, transaction)
    except TransactionNotFound as exc:
        raise Problem(404, "Not Found", str(exc), type="not-found") from None
    return {"rolledBack": True}


@router.get("/{topic}/transactions", summary="Prepared transactions not yet resolved")
async def pending(request: Request, topic: TopicPath, caller: Caller, namespace: Namespace = "default") -> dict[str, Any]:
    require(caller, Verb.READ, namespace)
    return {"items": await half(request).pending(namespace, topic)}


trace_router = APIRouter(prefix="/v1/messages", tags=["messaging"])


@trace_router.get("/{message_id}:trace", summary="Every step of a message on topics with trace enabled")
async def message_trace(request: Request, message_id: Annotated[str, Path(min_length=1, max_length=200)],
                        caller: Caller, namespace: Namespace = "default",
                        topic: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None) -> dict[str, Any]:
    require(caller, Verb.READ, namespace)
    svc = service(request)
    prefix = f"{namespace}/"
    topics = [topic] if topic else sorted(
        ref[len(prefix):] for ref, spec in svc.topics.items() if ref.startswith(prefix) and spec.trace)
    found = []
    for name in topics:
        found += [{"topic": name, **event} for event in await svc.trace.find(namespace, name, message_id)]
    if not found:
        raise Problem(404, "Not Found", f"no trace of message {message_id!r}: only topics with trace on record one",
                      type="not-found")
    return {"id": message_id, "events": sorted(found, key=lambda e: e["at"])}


@router.websocket("/{topic}/groups/{group}:connect")
async def connect(websocket: WebSocket, topic: str, group: str, namespace: str = "default",
                  max_in_flight: int = Query(100, alias="maxInFlight", ge=1, le=10_000),
                  format: Literal["json", "frames"] = "json") -> None:
    """A consumer over one WebSocket: Mezzo sends ``{"messages": [...]}`` (with ``?format=frames``:
    binary delivery frames, see ``codec.py``) while fewer than ``maxInFlight`` are unacked; the
    client sends ``{"ack": [receipts]}`` or ``{"nack": [receipts], "delay": "5s"}``. Browsers may
    pass the token as ``?access_token=``."""
    caller = await _socket_caller(websocket, namespace, (topic, group, namespace))
    if caller is None:
        return
    svc = service(websocket)
    if not svc.broker.has_topic(f"{namespace}/{topic}"):
        await websocket.close(code=4404, reason=f"topic {topic!r} does not exist")
        return
    await websocket.accept()
    session = _StreamSession(svc, websocket, namespace, topic, group, max_in_flight, caller.name,
                             token_check(websocket, caller), format == "frames")
    await session.run()


async def _socket_caller(websocket: WebSocket, namespace: str, names: tuple[str, ...]) -> Principal | None:
    """The caller of a WebSocket, allowed to use ``namespace``; else the socket is closed (4400/4401/4403)."""
    caller = authenticate(websocket, bearer_token(websocket) or websocket.query_params.get("access_token"))
    names_ok = all(re.match(NAME_PATTERN, n) for n in names)
    if caller is None or not names_ok or not caller.can(Verb.USE, namespace):
        reason = "invalid names" if not names_ok else "unauthorized" if caller is None else "forbidden"
        await websocket.close(code=4400 if not names_ok else 4401 if caller is None else 4403, reason=reason)
        return None
    return caller


async def _close_revoked(websocket: WebSocket) -> None:
    """End a socket whose token was revoked or has expired since it opened: 4401, as a bad token at the start."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):  # gone already, or closed by the other half
        await websocket.close(code=4401, reason="token revoked or expired")


async def _close_when_revoked(websocket: WebSocket, authorized: Callable[[], bool]) -> None:
    """Run beside a socket's session: an idle socket's token is checked every ``HEARTBEAT`` too."""
    while authorized():  # noqa: ASYNC110  (a revocation sets no event to wait on: poll, as a heartbeat)
        await asyncio.sleep(HEARTBEAT)
    await _close_revoked(websocket)


@contextlib.asynccontextmanager
async def _token_watch(websocket: WebSocket, authorized: Callable[[], bool]) -> AsyncIterator[None]:
    watch = asyncio.create_task(_close_when_revoked(websocket, authorized))
    try:
        yield
    finally:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch


@router.websocket("/{topic}:publish")
async def publish_socket(websocket: WebSocket, topic: str, namespace: str = "default") -> None:
    """A producer over one WebSocket. Each binary message is a batch: a ``u32`` batch number chosen by
    the client, then publish frames (``codec.py``); Mezzo answers each batch, once it is durable, with
    a text message ``{"id": n, "messages": [...]}`` as ``:publish`` answers a request, or
    ``{"id": n, "error": {...}}`` with the problem it would answer. Batches sent without waiting
    for answers are handled like concurrent requests: each is stored in order, two of them in
    either order. Trace context goes in each message's attributes."""
    caller = await _socket_caller(websocket, namespace, (topic, namespace))
    if caller is None:
        return
    await websocket.accept()
    await _PublishSession(service(websocket), websocket, namespace, topic, caller.name,
                          token_check(websocket, caller)).run()


class _PublishSession:
    MAX_BATCHES = 64  # answered-or-not batches per socket; beyond it Mezzo stops reading

    def __init__(self, svc: MessagingService, ws: WebSocket, namespace: str, topic: str, user: str,
                 authorized: Callable[[], bool]) -> None:
        self.svc, self.ws, self.namespace, self.topic, self.user = svc, ws, namespace, topic, user
        self.authorized = authorized
        self.room = asyncio.Semaphore(self.MAX_BATCHES)
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        try:
            async with _token_watch(self.ws, self.authorized):
                await self._read()
        finally:
            if self.tasks:  # what was received is stored even if its answer cannot be sent any more
                await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _read(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                break
            if not self.authorized():  # revoked or expired: a batch sent since is not published
                await _close_revoked(self.ws)
                break
            data = message.get("bytes")
            if data is None:
                await self._answer(None, {"error": bad_request("send binary messages: a u32 batch number, "
                                                               "then publish frames").body()})
                continue
            await self.room.acquire()
            task = asyncio.create_task(self._publish(data))
            self.tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.room.release()

    async def _publish(self, data: bytes) -> None:
        batch = int.from_bytes(data[:4], "little") if len(data) >= 4 else None
        try:
            if batch is None:
                raise bad_request("a batch starts with its u32 number", field="id")
            if len(data) > MAX_BODY:
                raise Problem(413, "Content Too Large", f"a batch is limited to {MAX_BODY} bytes", type="too-large")
            frames = parse_frames(data[4:])
            with problems():
                results = await self.svc.publish_frames(self.namespace, self.topic, frames, {}, self.user)
            answer: dict[str, Any] = {"messages": [r.to_json() for r in results]}
        except Problem as exc:
            answer = {"error": exc.body()}
        except Exception as exc:  # a bug, not bad input: say so, keep the socket
            log.error("publish over a WebSocket failed", topic=self.topic, error=f"{type(exc).__name__}: {exc}")
            answer = {"error": Problem(500, "Internal Server Error", "the server failed; the error is in its log",
                                       type="internal").body()}
        await self._answer(batch, answer)

    async def _answer(self, batch: int | None, answer: dict[str, Any]) -> None:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):  # the client left: it gets no answer
            await self.ws.send_text(dumps({"id": batch, **answer}).decode())


class _StreamSession:
    def __init__(self, svc: MessagingService, ws: WebSocket, namespace: str, topic: str, group: str,
                 max_in_flight: int, consumer: str, authorized: Callable[[], bool], frames: bool = False) -> None:
        self.svc, self.ws, self.namespace, self.topic, self.group = svc, ws, namespace, topic, group
        self.max_in_flight, self.consumer, self.frames = max_in_flight, consumer, frames
        self.authorized = authorized
        self.in_flight: set[str] = set()
        self.credit = asyncio.Event()
        self.credit.set()

    async def run(self) -> None:
        sender = asyncio.create_task(self._send())
        try:
            async with _token_watch(self.ws, self.authorized):
                await self._receive()
        except WebSocketDisconnect:
            pass  # what was not acked is delivered again after the ack timeout
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
                await sender

    async def _send(self) -> None:
        while True:
            room = self.max_in_flight - len(self.in_flight)
            if room <= 0:
                self.credit.clear()
                await self.credit.wait()
                continue
            # frames of a quarter window keep acks and new batches overlapping (no ping-pong)
            batch = min(room, max(self.max_in_flight // 4, 1), 1000)
            if self.frames:
                kept = await self.svc.pull_deliveries(self.namespace, self.topic, self.group, batch, HEARTBEAT,
                                                      self.consumer)
                receipts = [d.receipt for d, _ in kept]
                payload = delivery_frames([d for d, _ in kept]) if kept else b""
            else:
                messages = await self.svc.pull(self.namespace, self.topic, self.group, batch, HEARTBEAT,
                                               self.consumer)
                receipts = [m.receipt for m in messages if m.receipt]
                payload = dumps({"messages": [m.to_json() for m in messages]}) if messages else b""
            if not self.authorized():  # revoked or expired while this batch was awaited: it is not sent
                await _release(self.svc, self.namespace, self.topic, self.group, receipts)
                await _close_revoked(self.ws)
                return
            if payload:
                self.in_flight.update(receipts)
                await self.ws.send_bytes(payload)

    async def _receive(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", 1000))
            # a command sent as a binary message is JSON in UTF-8 all the same
            raw = message.get("text") or (message.get("bytes") or b"").decode("utf-8", "replace")
            if not self.authorized():  # an ack or nack with a revoked or expired token is not taken
                await _close_revoked(self.ws)
                return
            try:
                command = None
                with contextlib.suppress(ValueError):  # not JSON: say what a command is, not where parsing failed
                    command = loads(raw)
                if not isinstance(command, dict):
                    raise ValueError('a command is a JSON object: {"ack": [receipts]} or {"nack": [receipts], "delay": "5s"}')
                if "ack" in command:
                    receipts = _receipts(command["ack"])
                    await self.svc.ack(self.namespace, self.topic, self.group, receipts)
                elif "nack" in command:
                    receipts = _receipts(command["nack"])
                    delay = command.get("delay")
                    await self.svc.nack(self.namespace, self.topic, self.group, receipts,
                                        None if delay is None else parse_duration(delay))
                else:
                    raise ValueError("unknown command: use ack or nack")
            except (ValueError, StaleReceiptError) as exc:
                await self.ws.send_bytes(dumps({"error": {"status": 409 if isinstance(exc, StaleReceiptError) else 400,
                                                          "detail": str(exc)}}))
                if isinstance(exc, StaleReceiptError):
                    self.in_flight.difference_update(_receipts(command.get("ack") or command.get("nack") or []))
                continue
            self.in_flight.difference_update(receipts)
            self.credit.set()


def _receipts(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(r, str) for r in value) or not value:
        raise ValueError("receipts are a non-empty list of strings")
    return checked_receipts(value)
