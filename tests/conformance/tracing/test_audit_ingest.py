"""Audit: on every trace store, a writer that is behind answers 429 and a commit that fails answers
503, both with Retry-After (what OTLP exporters retry), and neither stores half a request."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from mezzo.testing.fixtures import RunningNode
from mezzo.tracing import store as store_module
from mezzo.tracing import store_postgres
from mezzo.tracing.store import TraceStore

from .conftest import now_us, otlp_span

TRACE = "f1" * 16


def body(span_id: str) -> bytes:
    return orjson.dumps({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "shop"}}]},
        "scopeSpans": [{"spans": [otlp_span(TRACE, span_id, "op", now_us() - 1_000_000, 5)]}]}]})


async def post(node: RunningNode, span_id: str) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.post(node.node.url("otlp") + "/v1/traces", content=body(span_id),
                               headers={"content-type": "application/json"})


async def test_a_writer_behind_is_a_429(traces: RunningNode, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "MAX_PENDING", 0)
    monkeypatch.setattr(store_postgres, "MAX_PENDING", 0)
    refused = await post(traces, "1" * 16)
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    monkeypatch.undo()
    assert (await post(traces, "1" * 16)).status_code == 200
    store = traces.node.service(TraceStore)
    assert [s.span_id for s in await store.trace(TRACE)] == ["1" * 16] and store.pending == 0


async def test_a_failed_commit_is_a_503(traces: RunningNode, trace_store_url: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    store: Any = traces.node.service(TraceStore)
    if trace_store_url:
        async with store._pool.acquire() as conn:
            await conn.execute("ALTER TABLE spans RENAME TO spans_away")
    else:
        def broken(conn: Any, rows: Any) -> None:
            raise OSError("disk I/O error")

        monkeypatch.setattr(store_module, "insert_rows", broken)
    failed = await post(traces, "2" * 16)
    assert failed.status_code == 503 and failed.headers["retry-after"] == "5", failed.text
    if trace_store_url:
        async with store._pool.acquire() as conn:
            await conn.execute("ALTER TABLE spans_away RENAME TO spans")
    monkeypatch.undo()
    assert (await post(traces, "2" * 16)).status_code == 200  # the exporter's retry
    assert [s.span_id for s in await store.trace(TRACE)] == ["2" * 16] and store.pending == 0
