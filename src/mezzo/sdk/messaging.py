"""``client.messaging``: publish, subscribe (pull with ack/nack), seek, topics and groups, dead letters."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

from mezzo.messaging.codec import encode_publish_frame
from mezzo.messaging.model import OutMessage
from mezzo.sdk.errors import ConnectError, api_error

if TYPE_CHECKING:
    from mezzo.sdk.client import Mezzo



def message_body(
    data: Any, *, key: str | None = None, tags: Iterable[str] = (), attributes: dict[str, str] | None = None,
    id: str | None = None, delay: float | str | None = None, deliver_at: datetime | None = None,
    ttl: float | str | None = None, content_type: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"key": key, "tags": list(tags), "attributes": attributes or {}, "id": id,
                            "delay": delay, "ttl": ttl, "contentType": content_type,
                            "deliverAt": deliver_at.isoformat() if deliver_at else None}
    if isinstance(data, bytes | bytearray | memoryview):
        body["dataBase64"] = base64.b64encode(bytes(data)).decode()
        body["contentType"] = content_type or "application/octet-stream"
    elif isinstance(data, str) and content_type is None:
        body["data"], body["contentType"] = data, "text/plain; charset=utf-8"
    else:
        body["data"] = data
    return {k: v for k, v in body.items() if v not in (None, [], {})}


class Received:
    """What every received message offers: ``data`` (bytes for binary payloads) and the fields of ``raw``."""

    raw: OutMessage

    @property
    def data(self) -> Any:
        if self.raw.data_base64 is not None:
            return base64.b64decode(self.raw.data_base64)
        return self.raw.data

    def __getattr__(self, name: str) -> Any:  # id, key, tags, attributes, attempt, offset, ...
        return getattr(self.raw, name)


@dataclass
class Message(Received):
    """A pulled message; ``await msg.ack()`` when done, ``await msg.nack(delay)`` to retry."""

    raw: OutMessage
    _sub: Subscription = field(repr=False)

    async def ack(self) -> None:
        await self._sub.ack([self])

    async def nack(self, delay: float | str | None = None) -> None:
        await self._sub.nack([self], delay)


@dataclass
class StreamMessage(Received):
    """A message received over ``MessagingClient.stream``."""

    raw: OutMessage
    _ws: Any = field(repr=False)

    async def ack(self) -> None:
        await self._ws.send(orjson.dumps({"ack": [self.raw.receipt]}).decode())

    async def nack(self, delay: float | str | None = None) -> None:
        await self._ws.send(orjson.dumps({"nack": [self.raw.receipt], "delay": delay}).decode())


class Subscription:
    """Pull-based consumption by one member of a consumer group (``async for msg in sub``)."""

    def __init__(self, api: MessagingClient, topic: str, group: str, namespace: str, batch: int, wait: float,
                 consumer: str | None = None) -> None:
        self._api, self.topic, self.group, self.namespace = api, topic, group, namespace
        self.consumer = consumer
        self.batch, self.wait = batch, wait
        self._buffer: list[Message] = []
        self._closed = False

    def _path(self, verb: str) -> str:
        return f"/v1/topics/{self.topic}/groups/{self.group}:{verb}"

    async def pull(self, max_messages: int | None = None, wait: float | None = None) -> list[Message]:
        data = await self._api._client.request(
            "POST", self._path("pull"),
            json={"max": max_messages or self.batch, "wait": self.wait if wait is None else wait, "consumer": self.consumer},
            params={"namespace": self.namespace})
        return [Message(OutMessage.model_validate(m), self) for m in data["messages"]]

    async def ack(self, messages: Iterable[Message]) -> None:
        receipts = [m.raw.receipt for m in messages if m.raw.receipt]
        if receipts:
            await self._api._client.request("POST", self._path("ack"), json={"receipts": receipts},
                                            params={"namespace": self.namespace})

    async def nack(self, messages: Iterable[Message], delay: float | str | None = None) -> None:
        receipts = [m.raw.receipt for m in messages if m.raw.receipt]
        if receipts:
            body: dict[str, Any] = {"receipts": receipts}
            if delay is not None:
                body["delay"] = delay
            await self._api._client.request("POST", self._path("nack"), json=body, params={"namespace": self.namespace})

    async def seek(self, to: str | int | dict[int, int] | datetime) -> dict[str, int]:
        value = to.isoformat() if isinstance(to, datetime) else to
        data = await self._api._client.request("POST", self._path("seek"), json={"to": value},
                                               params={"namespace": self.namespace})
        return data["positions"]  # type: ignore[no-any-return]

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message]:
        while not self._closed:
            if not self._buffer:
                self._buffer = await self.pull()
                continue
            yield self._buffer.pop(0)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closed = True
        if self._buffer:  # hand back what was fetched but not handed out
            await self.nack(self._buffer, 0)
            self._buffer = []


Handler = Callable[[Message], Awaitable[Any]]


class MessagingClient:
    def __init__(self, client: Mezzo) -> None:
        self._client = client
        self._handlers: list[tuple[str, str, str, Handler]] = []

    async def publish(self, topic: str, data: Any = None, *, namespace: str = "default", **options: Any) -> dict[str, Any]:
        """Publish one message; options: key, tags, attributes, id, delay, deliver_at, ttl, content_type."""
        data_out = await self._client.request(
            "POST", f"/v1/topics/{topic}:publish", json=message_body(data, **options), params={"namespace": namespace})
        return data_out["messages"][0]  # type: ignore[no-any-return]

    async def publish_batch(self, topic: str, messages: Iterable[dict[str, Any]], *, namespace: str = "default") -> list[dict[str, Any]]:
        """Publish many at once: each item is ``{"data": ..., "key": ..., ...}`` as for ``publish``."""
        body = {"messages": [message_body(m.get("data"), **{k: v for k, v in m.items() if k != "data"}) for m in messages]}
        data = await self._client.request("POST", f"/v1/topics/{topic}:publish", json=body, params={"namespace": namespace})
        return data["messages"]  # type: ignore[no-any-return]

    def producer(self, topic: str, *, namespace: str = "default") -> Producer:
        """A producer over one WebSocket, for raw payloads at high rates:
        ``async with client.messaging.producer("orders") as p: await p.publish_batch([b"...", ...])``."""
        return Producer(self, topic, namespace)

    def subscribe(self, topic: str, group: str, *, namespace: str = "default", batch: int = 10, wait: float = 20.0,
                  consumer: str | None = None) -> Subscription:
        """``consumer`` names this member of the group in message traces (default: none)."""
        return Subscription(self, topic, group, namespace, batch, wait, consumer)

    async def stream(
        self, topic: str, group: str, *, namespace: str = "default", max_in_flight: int = 100
    ) -> AsyncIterator[StreamMessage]:
        """Consume over one WebSocket: messages arrive as the broker has them, up to
        ``max_in_flight`` unacked; ``await msg.ack()`` / ``await msg.nack(delay)`` on each."""
        import websockets

        url = self._client.url.replace("http", "ws", 1) + f"/v1/topics/{topic}/groups/{group}:connect"
        query = f"?namespace={namespace}&maxInFlight={max_in_flight}"
        headers = {"Authorization": f"Bearer {self._client.token}"} if self._client.token else {}
        async with websockets.connect(url + query, additional_headers=headers) as ws:
            async for frame in ws:
                data = orjson.loads(frame)
                if "error" in data:
                    continue  # a stale ack: the message comes back anyway
                for item in data["messages"]:
                    yield StreamMessage(OutMessage.model_validate(item), ws)

    def handler(self, topic: str, group: str, *, namespace: str = "default") -> Callable[[Handler], Handler]:
        """Decorator: ``@client.messaging.handler("orders", "billing")``; run them with ``run_handlers()``.
        Returning normally acks; raising nacks (redelivered with the subscription's backoff)."""
        def register(fn: Handler) -> Handler:
            self._handlers.append((topic, group, namespace, fn))
            return fn
        return register

    async def run_handlers(self) -> None:
        async def consume(topic: str, group: str, namespace: str, fn: Handler) -> None:
            async with self.subscribe(topic, group, namespace=namespace) as sub:
                async for message in sub:
                    try:
                        await fn(message)
                    except Exception:
                        await message.nack()
                    else:
                        await message.ack()

        await asyncio.gather(*(consume(*h) for h in self._handlers))

    def transaction(
        self, topic: str, messages: list[dict[str, Any]], *, namespace: str = "default",
        check_url: str | None = None, check_after: float | str | None = None, max_checks: int | None = None,
    ) -> Transaction:
        """Half messages for the outbox pattern; see ``Transaction``."""
        return Transaction(self, topic, messages, namespace,
                           {"checkUrl": check_url, "checkAfter": check_after, "maxChecks": max_checks})

    async def topics(self, namespace: str = "default") -> list[dict[str, Any]]:
        return (await self._client.request("GET", "/v1/topics", params={"namespace": namespace}))["items"]  # type: ignore[no-any-return]

    async def groups(self, topic: str, namespace: str = "default") -> list[dict[str, Any]]:
        return (await self._client.request("GET", f"/v1/topics/{topic}/groups", params={"namespace": namespace}))["items"]  # type: ignore[no-any-return]

    async def delete_group(self, topic: str, group: str, *, namespace: str = "default") -> None:
        """Forget a consumer group's progress (it starts from the beginning if it consumes again)."""
        await self._client.request("DELETE", f"/v1/topics/{topic}/groups/{group}", params={"namespace": namespace})

    async def read(self, topic: str, *, partition: int = 0, offset: int = 0, limit: int = 100, namespace: str = "default") -> list[OutMessage]:
        data = await self._client.request("GET", f"/v1/topics/{topic}/messages", params={
            "namespace": namespace, "partition": partition, "offset": offset, "limit": limit})
        return [OutMessage.model_validate(m) for m in data["messages"]]

    async def trace(self, message_id: str, *, topic: str | None = None, namespace: str = "default") -> list[dict[str, Any]]:
        """The recorded steps of a message (its topic needs ``trace: true``)."""
        data = await self._client.request("GET", f"/v1/messages/{message_id}:trace",
                                          params={"namespace": namespace, "topic": topic})
        return data["events"]  # type: ignore[no-any-return]

    async def replay(self, dlq_topic: str, *, limit: int = 1000, namespace: str = "default") -> int:
        data = await self._client.request("POST", f"/v1/topics/{dlq_topic}:replay", params={"namespace": namespace, "limit": limit})
        return int(data["replayed"])


class Producer:
    """Publishes batches of binary frames over one WebSocket (``/v1/topics/{topic}:publish``).

    Each ``publish_batch`` returns once its messages are durable, with what ``publish_batch`` of
    ``MessagingClient`` returns. Batches awaited concurrently are in flight together, like
    concurrent requests: each is stored in order, two of them in either order."""

    def __init__(self, api: MessagingClient, topic: str, namespace: str) -> None:
        self._api, self.topic, self.namespace = api, topic, namespace
        self._ws: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._waiting: dict[int, asyncio.Future[list[dict[str, Any]]]] = {}
        self._next = 0

    async def __aenter__(self) -> Producer:
        import websockets

        client = self._api._client
        url = client.url.replace("http", "ws", 1) + f"/v1/topics/{self.topic}:publish?namespace={self.namespace}"
        headers = {"Authorization": f"Bearer {client.token}"} if client.token else {}
        try:
            self._ws = await websockets.connect(url, additional_headers=headers, max_size=64 * 1024 * 1024,
                                                compression=None)
        except OSError as exc:
            raise ConnectError(f"cannot reach Mezzo at {client.url}: {exc}") from exc
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)

    async def publish_batch(self, messages: Iterable[bytes | tuple[bytes, dict[str, Any]]]) -> list[dict[str, Any]]:
        """Each message is its bytes, or ``(bytes, options)`` with the JSON API's message fields
        (``id``, ``key``, ``tags``, ``attributes``, ``contentType``, ``delay``, ``deliverAt``, ``ttl``)."""
        if self._ws is None:
            raise RuntimeError("use the producer in 'async with'")
        frames = [encode_publish_frame(m) if isinstance(m, bytes | bytearray) else encode_publish_frame(*m)
                  for m in messages]
        number, self._next = self._next, (self._next + 1) % 2**32
        answer = self._waiting[number] = asyncio.get_running_loop().create_future()
        await self._ws.send(number.to_bytes(4, "little") + b"".join(frames))
        return await answer

    async def _read(self) -> None:
        try:
            async for raw in self._ws:
                answer = orjson.loads(raw)
                waiting = self._waiting.pop(answer["id"], None) if answer.get("id") is not None else None
                if waiting is None or waiting.done():
                    continue
                if "error" in answer:
                    waiting.set_exception(api_error(int(answer["error"].get("status", 500)), answer["error"]))
                else:
                    waiting.set_result(answer["messages"])
        finally:
            for waiting in self._waiting.values():
                if not waiting.done():
                    waiting.set_exception(ConnectError("the producer's connection closed before Mezzo answered"))
            self._waiting.clear()


class Transaction:
    """Half messages: prepared (invisible), then committed or rolled back.

    ``async with client.messaging.transaction("orders", [...], check_url=...) as tx:``
    prepares on entry, commits when the block ends normally, rolls back on an exception.
    """

    def __init__(self, api: MessagingClient, topic: str, messages: list[dict[str, Any]], namespace: str,
                 options: dict[str, Any]) -> None:
        self._api, self.topic, self.namespace = api, topic, namespace
        self._body = {"messages": [message_body(m.get("data"), **{k: v for k, v in m.items() if k != "data"})
                                   for m in messages], **{k: v for k, v in options.items() if v is not None}}
        self.id: str | None = None
        self.message_ids: list[str] = []

    async def prepare(self) -> Transaction:
        data = await self._api._client.request("POST", f"/v1/topics/{self.topic}:prepare", json=self._body,
                                               params={"namespace": self.namespace})
        self.id, self.message_ids = data["transaction"], data["messages"]
        return self

    async def commit(self) -> list[str]:
        data = await self._api._client.request(
            "POST", f"/v1/topics/{self.topic}/transactions/{self.id}:commit", params={"namespace": self.namespace})
        return data["committed"]  # type: ignore[no-any-return]

    async def rollback(self) -> None:
        await self._api._client.request(
            "POST", f"/v1/topics/{self.topic}/transactions/{self.id}:rollback", params={"namespace": self.namespace})

    async def __aenter__(self) -> Transaction:
        return await self.prepare()

    async def __aexit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            await self.commit()
        else:
            await self.rollback()
