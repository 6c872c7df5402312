"""Push subscriptions: deliver a group's messages to an HTTP endpoint as CloudEvents.

Replies follow Dapr's contract: 2xx acks, unless the body (read as JSON whatever
its content type, as Dapr does) says ``{"status": "RETRY"}`` (redeliver after the
subscription's backoff) or ``{"status": "DROP"}`` (dead-lettered when the
subscription names a dead-letter topic, else dropped); a status other than those
and ``SUCCESS`` retries, and a body that is not a JSON object with a string
``status`` counts as success. 404 drops; any other status or a network error retries.
"""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import orjson
import structlog
from opentelemetry import trace

from mezzo.jsonutil import dumps
from mezzo.messaging.compat.cloudevents import STRUCTURED, to_structured
from mezzo.messaging.model import SubscriptionSpec
from mezzo.messaging.service import Delivered, MessagingService, TopicNotFound
from mezzo.resilience.errors import ResilienceError
from mezzo.resilience.policies import NOOP_POLICY, ResiliencePolicy
from mezzo.telemetry.propagation import extract_from_attributes, inject_headers

log = structlog.get_logger("mezzo.messaging.push")
TRACE_HEADERS = ("traceparent", "tracestate")


def outcome(response: httpx.Response) -> str:
    """ack, retry or drop, from an endpoint's reply."""
    if response.status_code == 404:
        return "drop"
    if not 200 <= response.status_code < 300:
        return "retry"
    status = ""
    if response.content:
        with contextlib.suppress(orjson.JSONDecodeError):
            reply = orjson.loads(response.content)
            if isinstance(reply, dict) and isinstance(reply.get("status"), str):
                status = reply["status"].upper()
    return {"": "ack", "SUCCESS": "ack", "RETRY": "retry", "DROP": "drop"}.get(status, "retry")


class PushFailed(Exception):
    """The endpoint answered with a status worth retrying (5xx, 408, 429)."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"endpoint answered {response.status_code}")
        self.response = response
        self.status_code = response.status_code


class Pusher:
    def __init__(self, service: MessagingService, namespace: str, spec: SubscriptionSpec, http: httpx.AsyncClient,
                 policy: ResiliencePolicy = NOOP_POLICY, tracer: trace.Tracer | None = None) -> None:
        self.service = service
        self.namespace = namespace
        self.spec = spec
        self.http = http
        self.policy = policy  # the Resiliency policy targeting this subscription, if any
        self.tracer = tracer or trace.NoOpTracer()  # the node's own: a span per delivery, child of the publisher's
        self._tasks: set[asyncio.Task[None]] = set()
        self._slot_freed = asyncio.Event()

    async def run(self) -> None:
        spec = self.spec
        try:
            while True:
                free = spec.max_in_flight - len(self._tasks)
                if free <= 0:  # pull only what can be sent now, so no ack timer runs while waiting
                    self._slot_freed.clear()
                    await self._slot_freed.wait()
                    continue
                try:
                    messages = await self.service.pull(self.namespace, spec.topic, spec.group, free, 5.0)
                except TopicNotFound:
                    await asyncio.sleep(1)
                    continue
                for message in messages:
                    task = asyncio.create_task(self._deliver(message))
                    self._tasks.add(task)
                    task.add_done_callback(self._done)
        finally:
            for task in list(self._tasks):
                task.cancel()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slot_freed.set()

    async def _deliver(self, message: Delivered) -> None:
        spec = self.spec
        try:
            event = to_structured(message, f"mezzo/{self.namespace}/{spec.topic}")
            headers = {"content-type": STRUCTURED}
            body = dumps(event)

            async def post() -> httpx.Response:
                response = await self.http.post(str(spec.endpoint), content=body, headers=headers, timeout=spec.timeout)
                if response.status_code >= 500 or response.status_code in (408, 429):
                    raise PushFailed(response)  # lets a Resiliency retry or circuit breaker see it
                return response

            # the delivery continues the publisher's trace; the endpoint gets this span as its parent
            with self.tracer.start_as_current_span(
                    f"deliver {spec.topic}", context=extract_from_attributes(message.attributes),
                    kind=trace.SpanKind.PRODUCER,
                    attributes={"messaging.system": "mezzo", "messaging.operation.type": "deliver",
                                "messaging.destination.name": spec.topic,
                                "messaging.consumer.group.name": spec.group, "messaging.message.id": message.id,
                                "url.full": str(spec.endpoint)}) as span:
                headers.update({h: message.attributes[h] for h in TRACE_HEADERS if h in message.attributes})
                inject_headers(headers)  # nothing when not tracing: the publisher's own context goes on
                try:
                    result = outcome(await self.policy.execute(post))
                except (httpx.HTTPError, PushFailed, ResilienceError) as exc:
                    log.info("push failed; will retry", endpoint=str(spec.endpoint), error=str(exc))
                    span.set_status(trace.StatusCode.ERROR, str(exc)[:200])
                    result = "retry"
                span.set_attribute("mezzo.push.outcome", result)
            receipts = [message.receipt or ""]
            if result == "ack":
                await self.service.ack(self.namespace, spec.topic, spec.group, receipts)
            elif result == "retry":
                await self.service.nack(self.namespace, spec.topic, spec.group, receipts)
            else:
                await self.service.drop(self.namespace, spec.topic, spec.group, receipts, "dropped by the endpoint")
        except Exception:
            log.exception("push delivery failed", topic=spec.topic, group=spec.group, id=message.id)
