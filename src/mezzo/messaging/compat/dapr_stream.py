"""Dapr's streaming subscription (``SubscribeTopicEventsAlpha1``) as a consumer of a Mezzo group.

The client's first message names the pub/sub, the topic, metadata and a dead-letter topic;
Mezzo answers with the initial response, then sends the group's messages as CloudEvents
(``TopicEventRequest``), at most the group's ``maxInFlight`` (default 16) unanswered, and takes
the client's answers by message id: SUCCESS acks, RETRY redelivers after the group's backoff,
DROP dead-letters (to the dead-letter topic if there is one, else the message is dropped), as
Dapr does since 1.13. An unanswered message is delivered again after the group's ack timeout;
one delivered ``maxDeliveries`` times (default 16) goes to the dead-letter topic (default
``<topic>.<group>.dlq``), as for every Mezzo group.

The group: ``consumerID`` (or ``consumerGroup``) in the subscription's metadata; else the name of
the caller's token, lowercased, in the way Dapr defaults a subscriber's group to its app id: the
replicas of an app, sharing its token, share the messages; apps with tokens of their own each get
every message. A Subscription resource for the topic and group, if there is one, sets the group's
settings; else the stream's dead-letter topic applies while the stream (or another of the group
naming it) is open. The topic is created if it does not exist, as a publish would.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable
from typing import Any

import grpc.aio
import structlog
from dapr.proto.runtime.v1 import appcallback_pb2, pubsub_pb2
from google.protobuf import struct_pb2

from mezzo.messaging.backend import StaleReceiptError, TooManyGroupsError
from mezzo.messaging.codec import split_envelope
from mezzo.messaging.compat.cloudevents import to_structured
from mezzo.messaging.compat.dapr_common import PUBSUB_NAME, DaprError, check, namespace_of
from mezzo.messaging.model import SubscriptionSpec
from mezzo.messaging.service import MessagingService, TopicNotFound, to_message, topic_ref
from mezzo.node.auth import Principal, TokenService
from mezzo.resources.types import NAME_PATTERN

log = structlog.get_logger("mezzo.messaging.dapr")
HEARTBEAT = 5.0  # the longest an idle stream waits before it checks its token again
GROUP_KEYS = ("consumerid", "consumergroup")  # Dapr's metadata names for a subscriber's group (any case)
SUCCESS, RETRY, DROP = (appcallback_pb2.TopicEventResponse.SUCCESS, appcallback_pb2.TopicEventResponse.RETRY,
                        appcallback_pb2.TopicEventResponse.DROP)
CORE = {"id", "source", "type", "specversion", "datacontenttype", "topic", "data", "data_base64"}
INITIAL = pubsub_pb2.SubscribeTopicEventsResponseAlpha1(
    initial_response=pubsub_pb2.SubscribeTopicEventsResponseInitialAlpha1())


def bad_request(message: str) -> DaprError:
    return DaprError(400, "ERR_BAD_REQUEST", "INVALID_ARGUMENT", "", message)


def group_of(metadata: dict[str, str], caller: Principal) -> str:
    """``consumerID``/``consumerGroup`` from the metadata, else the caller's token name as a group name."""
    for key, value in metadata.items():
        if key.lower() in GROUP_KEYS and value:
            if not re.match(NAME_PATTERN, value):
                raise bad_request(f"metadata.{key} {value!r} is not a group name (lowercase letters, digits, "
                                  "'-', '.' and '_', starting and ending with a letter or digit)")
            return value
    name = re.sub(r"[^a-z0-9._-]", "-", caller.name.lower())
    name = re.sub(r"^[^a-z0-9]+|[^a-z0-9]+$", "", name)[:253]
    return name or "dapr"


class Streams:
    """The open streaming subscriptions, and the dead-letter topics they lend their groups."""

    def __init__(self, service: MessagingService) -> None:
        self.service = service
        self.open: set[Stream] = set()
        self._leases: dict[tuple[str, str], list[Any]] = {}  # (topic ref, group) -> [spec, streams using it]
        self._idle = asyncio.Event()
        self._idle.set()

    def of(self, caller: str) -> list[Stream]:
        return [s for s in self.open if s.caller.name == caller]

    def add(self, stream: Stream) -> None:
        self.open.add(stream)
        self._idle.clear()
        if stream.dead_letter:
            self._lend(stream)

    def remove(self, stream: Stream) -> None:
        self.open.discard(stream)
        if stream.dead_letter:
            key = (topic_ref(stream.namespace, stream.topic), stream.group)
            lease = self._leases.get(key)
            if lease is not None:
                lease[1] -= 1
                if lease[1] <= 0:
                    del self._leases[key]
                    if self.service.subscriptions.get(key) is lease[0]:
                        del self.service.subscriptions[key]
        if not self.open:
            self._idle.set()

    def _lend(self, stream: Stream) -> None:
        """The stream's dead-letter topic for its group, unless a Subscription resource sets the group."""
        key = (topic_ref(stream.namespace, stream.topic), stream.group)
        current = self.service.subscriptions.get(key)
        lease = self._leases.get(key)
        if current is not None and (lease is None or current is not lease[0]):
            return  # a Subscription resource's settings win
        spec = SubscriptionSpec(topic=stream.topic, group=stream.group, dead_letter_topic=stream.dead_letter)
        self.service.subscriptions[key] = spec  # the latest stream's dead-letter topic, if they differ
        self._leases[key] = [spec, (lease[1] if lease else 0) + 1]

    async def closed(self, timeout: float) -> None:
        """Until every stream has ended (they end themselves when the node stops), at most ``timeout``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()


class Stream:
    def __init__(self, streams: Streams, node: Any, context: grpc.aio.ServicerContext, caller: Principal,
                 requests: Any, init: Any, namespace: str, group: str, dead_letter: str) -> None:
        self.streams, self.node, self.context, self.caller, self.requests = streams, node, context, caller, requests
        self.service = streams.service
        self.topic, self.namespace, self.group, self.dead_letter = init.topic, namespace, group, dead_letter
        self.metadata = dict(init.metadata)
        tokens: TokenService = node.service(TokenService)
        self.authorized: Callable[[], bool] = lambda: tokens.still_valid(caller)
        self.in_flight: dict[str, str] = {}  # message id -> receipt of its delivery on this stream
        self.credit = asyncio.Event()

    @classmethod
    async def open(cls, streams: Streams, node: Any, context: grpc.aio.ServicerContext, caller: Principal,
                   requests: Any) -> Stream | None:
        """Read and check the initial request, then answer it; None if the client left first."""
        requests = requests.__aiter__()
        try:
            first = await anext(requests)
        except StopAsyncIteration:
            return None
        if first.WhichOneof("subscribe_topic_events_request_type") != "initial_request":
            raise bad_request("a subscription starts with its initial_request (pubsub name, topic, metadata)")
        init = first.initial_request
        metadata = dict(init.metadata)
        namespace = namespace_of(metadata)
        check(init.pubsub_name, init.topic, namespace, caller)
        group = group_of(metadata, caller)
        dead_letter = init.dead_letter_topic if init.HasField("dead_letter_topic") else ""
        if dead_letter and (not re.match(NAME_PATTERN, dead_letter) or dead_letter == init.topic):
            raise bad_request(f"dead_letter_topic {dead_letter!r} must be a topic name other than the topic's")
        try:
            await streams.service.topic_spec(namespace, init.topic, caller.name)  # created if need be, as by a publish
        except Exception as exc:
            raise DaprError(500, "ERR_PUBSUB_SUBSCRIBE", "INTERNAL", "", f"cannot subscribe to {init.topic}: {exc}") from exc
        await context.write(INITIAL)
        return cls(streams, node, context, caller, requests, init, namespace, group, dead_letter)

    async def run(self) -> DaprError | None:
        """Deliver and take answers until the client ends (None), or how the stream must end."""
        self.streams.add(self)
        log.info("Dapr streaming subscription opened", topic=self.topic, namespace=self.namespace, group=self.group,
                 caller=self.caller.name)
        sender = asyncio.create_task(self._send(), name=f"mezzo-dapr-send-{self.topic}")
        receiver = asyncio.create_task(self._receive(), name=f"mezzo-dapr-receive-{self.topic}")
        stopping = asyncio.create_task(self.node.stopping.wait())
        tasks = (sender, receiver, stopping)
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            try:
                await self._release()
            finally:  # even if that failed or was cut short: the stream is not open any more
                self.streams.remove(self)
                log.info("Dapr streaming subscription closed", topic=self.topic, group=self.group)
        if stopping in done:
            return DaprError(503, "ERR_HEALTH_NOT_READY", "UNAVAILABLE", "", "Mezzo is stopping; subscribe again")
        for task in (sender, receiver):
            if task in done:
                exc = task.exception()
                if exc is not None:
                    return ending(exc)
        return None  # the client closed its side: it takes no more messages

    async def _send(self) -> None:
        service, topic = self.service, self.topic
        source = f"mezzo/{self.namespace}/{topic}"
        while True:
            room = service.subscription(self.namespace, topic, self.group).max_in_flight - len(self.in_flight)
            if room <= 0:  # pull only what may be sent now, so no ack timer runs while it waits here
                self.credit.clear()
                await self.credit.wait()
                continue
            kept = await service.pull_deliveries(self.namespace, topic, self.group, min(room, 100), HEARTBEAT,
                                                 self.caller.name)
            if not self.authorized():  # revoked or expired since the stream opened: this batch is not sent
                await self._release([d.receipt for d, _ in kept])
                raise DaprError(401, "ERR_UNAUTHENTICATED", "UNAUTHENTICATED", "", "token revoked or expired")
            # the whole batch is in flight before the first write: if the stream ends while a write
            # waits on a slow client, the messages not yet written go back to the group at once too
            batch = []
            for delivery, meta in kept:
                message = to_message(topic, delivery, meta)
                self.in_flight[message.id] = delivery.receipt
                batch.append((delivery, message))
            for delivery, message in batch:
                event = to_structured(message, source)
                extensions = struct_pb2.Struct()
                extensions.update({k: v for k, v in event.items() if k not in CORE})
                await self.context.write(pubsub_pb2.SubscribeTopicEventsResponseAlpha1(
                    event_message=appcallback_pb2.TopicEventRequest(
                        id=message.id, source=event["source"], type=event["type"], spec_version="1.0",
                        data_content_type=message.content_type or "", data=split_envelope(delivery.payload)[1],
                        topic=topic, pubsub_name=PUBSUB_NAME, extensions=extensions)))

    async def _receive(self) -> None:
        service, namespace, topic, group = self.service, self.namespace, self.topic, self.group
        async for request in self.requests:
            if not self.authorized():  # an answer with a revoked or expired token is not taken
                raise DaprError(401, "ERR_UNAUTHENTICATED", "UNAUTHENTICATED", "", "token revoked or expired")
            if request.WhichOneof("subscribe_topic_events_request_type") != "event_processed":
                raise bad_request("after the initial request, a subscription sends event_processed answers only")
            answer = request.event_processed
            receipt = self.in_flight.pop(answer.id, None)
            if receipt is None:
                log.debug("answer for a message not in flight on this stream", id=answer.id, topic=topic)
                continue
            self.credit.set()
            status = answer.status.status
            with contextlib.suppress(StaleReceiptError):  # timed out and delivered again meanwhile
                if status == SUCCESS:
                    await service.ack(namespace, topic, group, [receipt])
                elif status == DROP:
                    await service.drop(namespace, topic, group, [receipt], "dropped by the subscriber")
                else:  # RETRY, and any status Dapr does not know, as Dapr does
                    await service.nack(namespace, topic, group, [receipt])

    async def _release(self, receipts: list[str] | None = None) -> None:
        """Deliveries not answered when the stream ends go back to the group at once (not after
        the ack timeout): another consumer, or this app subscribing again, gets them."""
        if receipts is None:
            receipts, self.in_flight = list(self.in_flight.values()), {}
        if receipts:
            with contextlib.suppress(StaleReceiptError, LookupError, ConnectionError):
                await self.service.nack(self.namespace, self.topic, self.group, receipts, 0.0)


def ending(exc: BaseException) -> DaprError:
    """How a stream ends when delivering or answering failed."""
    if isinstance(exc, DaprError):
        return exc
    if isinstance(exc, TooManyGroupsError):
        return DaprError(429, "ERR_PUBSUB_SUBSCRIBE", "RESOURCE_EXHAUSTED", "", str(exc))
    if isinstance(exc, TopicNotFound | LookupError):  # the topic or group was deleted while the stream ran
        return DaprError(404, "ERR_PUBSUB_SUBSCRIBE", "NOT_FOUND", "", str(exc))
    if isinstance(exc, ConnectionError):  # the broker engine is unreachable: the SDK subscribes again
        return DaprError(503, "ERR_PUBSUB_SUBSCRIBE", "UNAVAILABLE", "", f"the broker is unreachable: {exc}")
    log.error("Dapr streaming subscription failed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
    return DaprError(500, "ERR_PUBSUB_SUBSCRIBE", "INTERNAL", "", "the server failed; the error is in its log")
