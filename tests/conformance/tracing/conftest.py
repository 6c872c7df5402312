"""Tracing conformance: every test runs on a node whose trace store is SQLite, then PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from mezzo.testing.fixtures import RunningNode, start_node


@pytest.fixture(params=["sqlite", "postgres"])
def trace_store_url(request: pytest.FixtureRequest) -> str:
    """"" for the embedded SQLite store, else a PostgreSQL URL with a fresh schema."""
    if request.param == "sqlite":
        return ""
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def traces(trace_store_url: str, tmp_path: Path) -> AsyncIterator[RunningNode]:
    settings: dict[str, Any] = {"otlp_port": 0, "zipkin_port": 0}
    if trace_store_url:
        settings["trace_store"] = trace_store_url
    running = await start_node(tmp_path / "data", **settings)
    try:
        yield running
    finally:
        await running.node.stop()


@pytest.fixture
async def trace_store(trace_store_url: str, tmp_path: Path) -> AsyncIterator[Any]:
    """The store alone, opened on the engine of this run."""
    from mezzo.tracing.store import TraceStore
    from mezzo.tracing.store_postgres import PostgresTraceStore

    store: Any = PostgresTraceStore(trace_store_url) if trace_store_url else TraceStore(tmp_path / "traces.db")
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def value(v: Any) -> dict[str, Any]:
    """An OTLP/JSON AnyValue."""
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    return {"stringValue": v}


def otlp_span(trace: str, span_id: str, name: str, start_us: int, duration_us: int, parent: str = "",
              kind: int = 2, error: bool = False, **attributes: Any) -> dict[str, Any]:
    return {"traceId": trace, "spanId": span_id, "parentSpanId": parent, "name": name, "kind": kind,
            "startTimeUnixNano": str(start_us * 1000), "endTimeUnixNano": str((start_us + duration_us) * 1000),
            "attributes": [{"key": k, "value": value(v)} for k, v in attributes.items()],
            "status": {"code": 2 if error else 0}}


async def ingest(node: RunningNode, service: str, spans: list[dict[str, Any]], **resource: Any) -> None:
    doc = {"resourceSpans": [{
        "resource": {"attributes": [{"key": k, "value": value(v)}
                                    for k, v in {"service.name": service, **resource}.items()]},
        "scopeSpans": [{"scope": {"name": "audit"}, "spans": spans}]}]}
    async with httpx.AsyncClient() as http:
        answer = await http.post(node.node.url("otlp") + "/v1/traces", content=orjson.dumps(doc),
                                 headers={"content-type": "application/json"})
    assert answer.status_code == 200, answer.text


def now_us() -> int:
    return int(time.time() * 1_000_000)
