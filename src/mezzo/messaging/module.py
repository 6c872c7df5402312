"""The ``messaging`` module: a broker engine, the messaging service, and the resources that drive it."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import time
from typing import Any

import httpx
import structlog
from fastapi import APIRouter

from mezzo.messaging.backend import Broker
from mezzo.messaging.half import HalfMessages
from mezzo.messaging.model import SUBSCRIPTION_KIND, TOPIC_KIND, SubscriptionSpec, TopicSpec
from mezzo.messaging.push import Pusher
from mezzo.messaging.service import MessagingService, topic_ref
from mezzo.node.module import Health, Listener, Module
from mezzo.node.outbound import Outbound
from mezzo.node.settings import Settings
from mezzo.resilience.policies import NOOP_POLICY, PolicyRegistry, ResiliencePolicy
from mezzo.resources.informer import Informer
from mezzo.resources.manifests import from_objects
from mezzo.resources.model import Resource
from mezzo.resources.service import ResourceService
from mezzo.storage.kv import KVStore
from mezzo.telemetry.metrics import Metrics
from mezzo.telemetry.tracing import Tracing

log = structlog.get_logger("mezzo.messaging")
RETENTION_EVERY = 30.0


# URL scheme -> package under mezzo.messaging.backends; each has ``broker.open_broker(url, settings)``
ENGINES = {"nats": "nats", "redis": "redis", "rediss": "redis", "postgresql": "postgres", "postgres": "postgres"}


def open_broker(settings: Settings) -> Broker:
    if settings.broker == "embedded":
        from mezzo.messaging.backends.embedded.broker import EmbeddedBroker

        return EmbeddedBroker(settings.data_dir / "broker", fsync=settings.broker_fsync)
    scheme = settings.broker.split("://", 1)[0]
    if scheme not in ENGINES:
        raise ValueError(f"MEZZO_BROKER: no engine for {scheme}://; use embedded, nats://, redis:// or postgresql://")
    engine = importlib.import_module(f"mezzo.messaging.backends.{ENGINES[scheme]}.broker")
    return engine.open_broker(settings.broker, settings)  # type: ignore[no-any-return]


def dapr_listener(node: Any, service: MessagingService) -> Listener | None:
    """Dapr's gRPC API on ``MEZZO_DAPR_GRPC_PORT``, when it is not ``off`` and grpcio and dapr are installed
    (imported only here: a node without it, and the CLI, never load gRPC)."""
    settings = node.settings
    if settings.dapr_grpc_port is None:
        return None
    try:
        from mezzo.messaging.compat.dapr_grpc import DaprGrpcListener
    except Exception as exc:  # not installed, or a grpcio/protobuf that does not fit: the node runs without it
        log.info("Dapr gRPC API not served: install mezzo[dapr] to serve it (or set MEZZO_DAPR_GRPC_PORT=off)",
                 error=f"{type(exc).__name__}: {exc}")
        return None
    return DaprGrpcListener(node, service, settings.host, settings.dapr_grpc_port, settings.drain_timeout)


class MessagingModule(Module):
    name = "messaging"
    kinds = (TOPIC_KIND, SUBSCRIPTION_KIND)
    dapr: Listener | None = None  # Dapr's gRPC API, once started

    async def start(self) -> None:
        settings = self.node.settings
        self.broker = open_broker(settings)
        await self.broker.open()
        resources = self.node.service(ResourceService)
        self.service = MessagingService(self.broker, self.node.service(KVStore),  # type: ignore[type-abstract]
                                        metrics=self.node.service(Metrics))
        self.service.create_topic = lambda ns, topic, user: self._create_topic(resources, ns, topic, user)
        self.node.provide(MessagingService, self.service)
        self.topics = Informer(resources, TOPIC_KIND.kind, self._on_topic)
        self.subscriptions = Informer(resources, SUBSCRIPTION_KIND.kind, self._on_subscription)
        self.outbound = Outbound.parse(settings.messaging_allow_hosts)
        self.http = httpx.AsyncClient(limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200),
                                      event_hooks={"request": [self._allowed]})
        self.tracer = self.node.service(Tracing).tracer("mezzo.messaging") if self.node.has(Tracing) else None
        self.pushers: dict[str, asyncio.Task[None]] = {}  # resource ref -> delivery loop
        self._sub_keys: dict[str, tuple[str, str]] = {}  # resource ref -> (topic ref, group)
        await self.topics.start()
        await self.subscriptions.start()
        self.half = HalfMessages(self.service, self.node.service(KVStore), self.http,  # type: ignore[type-abstract]
                                 self.outbound)
        self.node.provide(HalfMessages, self.half)
        self._tasks = [
            asyncio.create_task(self._forever(self.service.run_scheduler), name="mezzo-mq-scheduler"),
            asyncio.create_task(self._forever(self.half.run_checker), name="mezzo-mq-half-checker"),
            asyncio.create_task(self._retention(), name="mezzo-mq-retention"),
        ]
        try:
            self.dapr = dapr_listener(self.node, self.service)
        except BaseException:  # e.g. its port is taken: the node does not start, and stops only started modules
            await self.stop()
            raise

    async def _allowed(self, request: httpx.Request) -> None:
        """Every request this module makes (push deliveries, check-backs) goes only to an allowed host:
        another fails like an unreachable endpoint (retried, then dead-lettered or rolled back)."""
        if not self.outbound.allows(request.url.host):
            raise httpx.ConnectError(f"host {request.url.host!r} is not one messaging may call "
                                     "(MEZZO_MESSAGING_ALLOW_HOSTS)", request=request)

    async def stop(self) -> None:
        dapr = self.dapr
        if dapr is not None:  # closed by the node already, unless the node failed to start
            await dapr.close()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.subscriptions.stop()
        for task in self.pushers.values():
            task.cancel()
        for task in self.pushers.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.http.aclose()
        await self.topics.stop()
        await self.broker.close()

    async def health(self) -> Health:
        ok = await self.broker.ready() and all(not t.done() for t in self._tasks)
        return Health(ok, f"{self.broker.engine} broker, {len(self.broker.topics())} topics")

    def listeners(self) -> list[Listener]:
        return [self.dapr] if self.dapr is not None else []

    def routers(self) -> list[APIRouter]:
        from mezzo.messaging.api import router, trace_router
        from mezzo.messaging.compat.dapr import router as dapr

        return [router, trace_router, dapr]

    async def _on_topic(self, event: str, resource: Resource) -> None:
        meta = resource.metadata
        spec = None if event == "DELETED" else TopicSpec.model_validate(resource.spec)
        await self.service.topic_changed(meta.namespace, meta.name, spec)

    def _on_subscription(self, event: str, resource: Resource) -> None:
        spec = SubscriptionSpec.model_validate(resource.spec)
        key = (topic_ref(resource.metadata.namespace, spec.topic), spec.group)
        old = self.pushers.pop(resource.ref, None)
        if old is not None:
            old.cancel()  # the loop restarts below with the new settings
        previous = self._sub_keys.pop(resource.ref, None)
        if previous is not None:  # the resource may have moved to another topic or group
            self.service.subscriptions.pop(previous, None)
        if event == "DELETED":
            return
        self._sub_keys[resource.ref] = key
        self.service.subscriptions[key] = spec
        if spec.endpoint is not None:
            pusher = Pusher(self.service, resource.metadata.namespace, spec, self.http,
                            self._policy(resource.metadata.namespace, resource.metadata.name), self.tracer)
            self.pushers[resource.ref] = asyncio.create_task(
                self._forever(pusher.run), name=f"mezzo-push-{resource.ref}")

    def _policy(self, namespace: str, name: str) -> ResiliencePolicy:
        """What a Resiliency resource says for ``targets.subscriptions.<name>`` (looked up per delivery)."""
        if not self.node.has(PolicyRegistry):
            return NOOP_POLICY
        registry = self.node.service(PolicyRegistry)
        return _LivePolicy(registry, namespace, name)  # type: ignore[return-value]

    @staticmethod
    async def _create_topic(resources: ResourceService, namespace: str, topic: str, user: str) -> None:
        """Publishing to a topic that does not exist creates it (as Kafka, RocketMQ and Dapr do), as a resource."""
        doc = {"apiVersion": "mezzo.dev/v1", "kind": "Topic",
               "metadata": {"name": topic, "namespace": namespace, "labels": {"mezzo.dev/auto-created": "true"}},
               "spec": {}}
        desired = resources.validate(from_objects([doc], "auto-create"))
        if await resources.get("Topic", namespace, topic) is None:
            with contextlib.suppress(Exception):  # a concurrent publish may create it first
                await resources.apply(desired, user)

    @staticmethod
    async def _forever(fn) -> None:  # type: ignore[no-untyped-def]
        while True:
            try:
                await fn()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("messaging task failed; restarting")
                await asyncio.sleep(1)

    async def _retention(self) -> None:
        while True:
            await asyncio.sleep(RETENTION_EVERY)
            try:
                await self.broker.enforce_retention(int(time.time() * 1000))
            except Exception:
                log.exception("retention failed")


class _LivePolicy:
    """Resolves the subscription's policy at each call, so a changed Resiliency applies at once."""

    def __init__(self, registry: PolicyRegistry, namespace: str, name: str) -> None:
        self.registry, self.namespace, self.name = registry, namespace, name

    async def execute(self, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        policy = self.registry.policy_for("subscriptions", self.name, self.namespace)
        return await policy.execute(fn, *args, **kwargs)
