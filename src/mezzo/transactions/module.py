"""The ``transactions`` module: the coordinator with its recovery loop, and the Mezzo and DTM routes."""

from __future__ import annotations

import functools
from datetime import UTC, datetime

import orjson
import structlog
from fastapi import APIRouter, FastAPI
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.types import ASGIApp

from mezzo.node.module import Health, Module
from mezzo.node.outbound import Outbound
from mezzo.resilience.policies import PolicyRegistry
from mezzo.storage.kv import KVStore
from mezzo.telemetry.metrics import Metrics
from mezzo.telemetry.tracing import Tracing
from mezzo.transactions.coordinator import Coordinator
from mezzo.transactions.metrics import TxMetrics
from mezzo.transactions.model import GlobalTx
from mezzo.transactions.service import TxService
from mezzo.transactions.store import TxLog

log = structlog.get_logger("mezzo.transactions")
EVENTS_TOPIC = "mezzo-tx-events"


class TxSettings(BaseSettings):
    """``MEZZO_TX_*``: how long a node's lease on a transaction lasts, how often to look for due ones."""

    model_config = SettingsConfigDict(env_prefix="MEZZO_TX_", extra="ignore")

    lease: float = 30.0  # seconds a crashed node's transactions wait before another node takes them
    poll: float = 1.0  # seconds between scans for due transactions (submits on this node start at once)
    stuck_after: float = 300.0  # an unfinished transaction older than this counts as stuck in metrics
    allow_hosts: str = ""  # comma-separated hosts, *.domains and IP networks branch calls may go to; "": any
    fast_path: bool = True  # answer POST /v1/tx/transactions in front of FastAPI (api.FastCreate); same answers


def exporting(tracing: Tracing) -> bool:
    """Whether spans of the node's tracer go anywhere: with ``MEZZO_TRACING=none`` its provider has no
    span processor (unless one was added since, as tests do), and a span made then is only work."""
    processors = getattr(getattr(tracing.provider, "_active_span_processor", None), "_span_processors", None)
    return processors is None or bool(processors)  # not known (another SDK version): as if it did


class TransactionsModule(Module):
    name = "transactions"
    fast_path = True

    async def start(self) -> None:
        settings = TxSettings()
        self.fast_path = settings.fast_path
        txlog = TxLog.on(self.node.service(KVStore))  # type: ignore[type-abstract]
        metrics = TxMetrics(self.node.service(Metrics), txlog, settings.stuck_after)
        tracing = self.node.service(Tracing) if self.node.has(Tracing) else None
        tracer = tracing.tracer("mezzo.transactions") if tracing is not None else None
        spans = functools.partial(exporting, tracing) if tracing is not None else None
        self.coordinator = Coordinator(txlog, metrics, tracer=tracer, spans=spans, publish=self._publish,
                                       notify=self._announce,
                                       listening=self._messaging, lease_ttl=settings.lease, poll=settings.poll,
                                       outbound=Outbound.parse(settings.allow_hosts),
                                       policies=self._policies())
        self.service = TxService(txlog, self.coordinator)
        self.node.provide(Coordinator, self.coordinator)
        self.node.provide(TxService, self.service)
        await self.coordinator.start()

    async def stop(self) -> None:
        await self.coordinator.stop()

    async def health(self) -> Health:
        if not self.coordinator.alive:
            return Health(False, "the recovery loop stopped")
        return Health(True, f"node {self.coordinator.node_id}, {len(self.coordinator.running)} running")

    def _policies(self) -> PolicyRegistry | None:
        """The Resiliency policies of ``targets.branches``, when the ``resilience`` module runs on this node
        (it starts before this one); without it, branch calls are made as they always were."""
        return self.node.service(PolicyRegistry) if self.node.has(PolicyRegistry) else None

    def _messaging(self) -> bool:
        """Whether state changes can become events (no task per change when they cannot)."""
        from mezzo.messaging.service import MessagingService

        return self.node.has(MessagingService)

    async def _publish(self, namespace: str, topic: str, payload: str, message_id: str) -> None:
        """A two-phase message's topic step: publish its payload (JSON when it parses) to a Mezzo topic;
        the id makes a repeated publish (after a crash) a duplicate the broker drops."""
        from mezzo.messaging.service import MessagingService, PublishMessage

        if not self.node.has(MessagingService):
            raise LookupError("messaging is not running on this node")
        try:
            data = orjson.loads(payload) if payload else None
        except orjson.JSONDecodeError:
            data = payload
        await self.node.service(MessagingService).publish(namespace, topic, [PublishMessage(id=message_id, data=data)],
                                                          "mezzo-transactions")

    async def _announce(self, tx: GlobalTx) -> None:
        """A state change as a CloudEvent on the topic ``mezzo-tx-events`` of the transaction's namespace,
        when messaging runs and that topic exists (create it to receive them)."""
        from mezzo.messaging.compat.cloudevents import from_structured
        from mezzo.messaging.service import MessagingService, TopicNotFound

        if not self.node.has(MessagingService):
            return
        event = {"specversion": "1.0", "id": f"{tx.gid}-{tx.status.value}", "source": "/mezzo/transactions",
                 "type": f"dev.mezzo.tx.{tx.status.value}", "subject": tx.gid,
                 "time": datetime.now(UTC).isoformat(), "datacontenttype": "application/json",
                 "data": {"gid": tx.gid, "mode": tx.mode.value, "status": tx.status.value,
                          "rollback_reason": tx.rollback_reason}}
        try:
            await self.node.service(MessagingService).publish(tx.namespace, EVENTS_TOPIC, [from_structured(event)],
                                                              None)
        except TopicNotFound:
            pass
        except Exception as exc:
            log.warning("transaction event not published", gid=tx.gid, error=f"{type(exc).__name__}: {exc}")

    def api_front(self, app: ASGIApp, api: FastAPI) -> ASGIApp:
        """What the API serves in front of its FastAPI app ``api`` (``app``: where the rest goes)."""
        from mezzo.transactions.api import FastCreate

        return FastCreate(app, api) if self.fast_path else app

    def routers(self) -> list[APIRouter]:
        from mezzo.transactions.api import router
        from mezzo.transactions.compat.dtm import router as dtm_router

        return [router, dtm_router]
