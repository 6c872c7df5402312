"""Transactional (half) messages, as in RocketMQ: prepare, run the local transaction, then commit or roll back.

A prepared batch waits in the node's store, invisible to consumers. Commit
publishes it; rollback discards it. A batch left unresolved past ``checkAfter``
makes Mezzo ask the producer: it POSTs ``{"transaction", "topic", "namespace",
"messages", "check"}`` to ``checkUrl`` and reads ``{"status": "COMMIT" | "ROLLBACK"
| "UNKNOWN"}``; after ``maxChecks`` answers that settle nothing, the batch is
rolled back and counted.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
import uuid
from typing import Any

import httpx
import orjson
import structlog
from pydantic import AnyHttpUrl, BaseModel, Field

from mezzo.messaging.codec import Envelope
from mezzo.messaging.service import MessagingService, Prepared, PublishMessage
from mezzo.node.outbound import Outbound
from mezzo.resources.types import Duration
from mezzo.storage.kv import Compare, Delete, KVStore, Put

log = structlog.get_logger("mezzo.messaging.half")
HALF = "/messaging/half/"  # + namespace/topic/transaction


class PrepareOptions(BaseModel):
    check_url: AnyHttpUrl | None = Field(None, alias="checkUrl", description="asked when unresolved")
    check_after: Duration = Field(10.0, gt=0, le=86400, alias="checkAfter")
    max_checks: int = Field(15, ge=1, le=1000, alias="maxChecks")

    model_config = {"populate_by_name": True}


class TransactionNotFound(LookupError):
    pass


class HalfMessages:
    def __init__(self, service: MessagingService, store: KVStore, http: httpx.AsyncClient,
                 outbound: Outbound | None = None) -> None:
        self.service = service
        self.store = store
        self.http = http
        self.outbound = outbound or Outbound()  # the hosts a check-back may go to
        self._wake = asyncio.Event()

    @staticmethod
    def key(namespace: str, topic: str, tx: str) -> str:
        return f"{HALF}{namespace}/{topic}/{tx}"

    async def prepare(
        self, namespace: str, topic: str, messages: list[PublishMessage], options: PrepareOptions, user: str
    ) -> dict[str, Any]:
        """Validate and store the batch, unpublished; returns the transaction id and message ids."""
        if options.check_url is not None and not self.outbound.allows(options.check_url.host or ""):
            raise ValueError(f"checkUrl: host {options.check_url.host!r} is not one messaging may call "
                             "(MEZZO_MESSAGING_ALLOW_HOSTS)")
        spec = await self.service.topic_spec(namespace, topic, user)
        now_ms = int(time.time() * 1000)
        prepared = await self.service.prepare_batch(spec, messages, now_ms)
        tx = uuid.uuid4().hex
        record = {
            "messages": [{"key": p.key, "due": p.due_ms, "payload": base64.b64encode(p.envelope.encode()).decode()}
                         for p in prepared],
            "checkUrl": str(options.check_url) if options.check_url else None,
            "checkAfter": options.check_after, "maxChecks": options.max_checks, "checks": 0,
            "nextCheckMs": now_ms + int(options.check_after * 1000), "createdMs": now_ms, "by": user,
        }
        await self.store.txn([Put(self.key(namespace, topic, tx), orjson.dumps(record))])
        self._wake.set()
        return {"transaction": tx, "messages": [p.envelope.id for p in prepared]}

    async def commit(self, namespace: str, topic: str, tx: str) -> list[str]:
        """Publish the batch, then forget it (a crash in between publishes again; ids dedupe it)."""
        key = self.key(namespace, topic, tx)
        kv = await self.store.get(key)
        if kv is None:
            raise TransactionNotFound(f"no prepared transaction {tx!r} on topic {topic!r}")
        record = orjson.loads(kv.value)
        now_ms = int(time.time() * 1000)
        prepared = [Prepared(Envelope.decode(base64.b64decode(m["payload"])), m["key"],
                             m["due"] if m["due"] and m["due"] > now_ms else None)
                    for m in record["messages"]]
        spec = await self.service.topic_spec(namespace, topic, None)
        await self.service.store_prepared(namespace, topic, spec, prepared, now_ms)
        with contextlib.suppress(Exception):  # already resolved by a concurrent commit: fine
            await self.store.txn([Delete(key)], [Compare(key, kv.mod_revision)])
        self.service.metrics.count("half_committed", namespace, topic)
        return [p.envelope.id for p in prepared]

    async def rollback(self, namespace: str, topic: str, tx: str) -> None:
        key = self.key(namespace, topic, tx)
        if await self.store.get(key) is None:
            raise TransactionNotFound(f"no prepared transaction {tx!r} on topic {topic!r}")
        await self.store.txn([Delete(key)])
        self.service.metrics.count("half_rolled_back", namespace, topic)

    async def pending(self, namespace: str, topic: str) -> list[dict[str, Any]]:
        page = await self.store.range(f"{HALF}{namespace}/{topic}/")
        out = []
        for kv in page.items:
            record = orjson.loads(kv.value)
            out.append({"transaction": kv.key.rsplit("/", 1)[1], "messages": len(record["messages"]),
                        "checks": record["checks"], "createdMs": record["createdMs"]})
        return out

    async def run_checker(self) -> None:
        """Ask producers about transactions left unresolved past their checkAfter."""
        while True:
            self._wake.clear()
            now_ms = int(time.time() * 1000)
            page = await self.store.range(HALF)
            soonest = None
            for kv in page.items:
                record = orjson.loads(kv.value)
                if record["nextCheckMs"] > now_ms:
                    soonest = min(soonest or record["nextCheckMs"], record["nextCheckMs"])
                    continue
                namespace, topic, tx = kv.key[len(HALF):].split("/", 2)
                await self._check(namespace, topic, tx, kv.mod_revision, record)
            wait = 1.0 if soonest is None else min(max((soonest - now_ms) / 1000, 0.01), 1.0)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def _check(self, namespace: str, topic: str, tx: str, revision: int, record: dict[str, Any]) -> None:
        status = "UNKNOWN"
        if record["checkUrl"]:
            body = {"transaction": tx, "topic": topic, "namespace": namespace, "check": record["checks"] + 1,
                    "messages": [Envelope.decode(base64.b64decode(m["payload"])).id for m in record["messages"]]}
            try:
                response = await self.http.post(record["checkUrl"], json=body, timeout=10)
                if response.status_code == 200:
                    status = str(orjson.loads(response.content).get("status", "UNKNOWN")).upper()
            except (httpx.HTTPError, orjson.JSONDecodeError, AttributeError) as exc:
                log.info("check-back failed", transaction=tx, error=str(exc))
        if status == "COMMIT":
            await self.commit(namespace, topic, tx)
            return
        checks = record["checks"] + 1
        if status == "ROLLBACK" or checks >= record["maxChecks"]:
            if status != "ROLLBACK":
                log.warning("transaction unresolved after its check-backs; rolled back", transaction=tx, topic=topic)
                self.service.metrics.count("half_abandoned", namespace, topic)
            with contextlib.suppress(Exception):
                await self.rollback(namespace, topic, tx)
            return
        record["checks"] = checks
        record["nextCheckMs"] = int(time.time() * 1000) + int(record["checkAfter"] * 1000)
        key = self.key(namespace, topic, tx)
        with contextlib.suppress(Exception):  # resolved meanwhile by the producer: fine
            await self.store.txn([Put(key, orjson.dumps(record))], [Compare(key, revision)])
