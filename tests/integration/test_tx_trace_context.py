"""The trace context branch calls carry when the node makes no spans of them (``MEZZO_TRACING=none``, no span
processor): the transaction's own, as stored when it was created, with no span made per call; and once spans go
somewhere (a processor added), each call's span again."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mezzo.sdk.tx_handlers import BranchCall
from mezzo.telemetry.tracing import Tracing
from mezzo.testing.fixtures import RunningNode, wait_for
from mezzo.transactions.coordinator import Coordinator

FAST = {"retry_interval": 0.05, "request_timeout": 5, "wait_result": True}


@pytest.fixture
async def app(node: RunningNode) -> AsyncIterator[Any]:
    async with node.client() as client, client.tx.serve():
        yield client


@pytest.fixture
async def http(node: RunningNode) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=node.url, headers={"Authorization": f"Bearer {node.token}"},
                                 timeout=30) as client:
        yield client


async def test_without_spans_a_branch_gets_the_transactions_trace_context(
        node: RunningNode, http: httpx.AsyncClient, app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    received: list[str] = []

    @app.tx.handler("step")
    async def step(call: BranchCall) -> None:
        received.append(call.headers.get("traceparent", ""))

    @app.tx.handler("query")
    async def query(call: BranchCall) -> None:
        received.append(call.headers.get("traceparent", ""))

    spans_made: list[str] = []
    coordinator = node.node.service(Coordinator)
    assert coordinator.tracer is not None
    start = coordinator.tracer.start_as_current_span

    def counting(name: str, *args: Any, **kwargs: Any) -> Any:
        spans_made.append(name)
        return start(name, *args, **kwargs)

    monkeypatch.setattr(coordinator.tracer, "start_as_current_span", counting)

    sent = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
    saga = {"gid": "tc-w3c", "mode": "saga", "options": FAST, "steps": [{"action": step.url}, {"action": step.url}]}
    done = await http.post("/v1/tx/transactions", json=saga, headers={"traceparent": sent})
    assert done.status_code == 201 and done.json()["status"] == "succeed"
    assert received == [sent, sent]  # the caller's context itself: no span in between

    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    saga = {**saga, "gid": "tc-b3"}
    done = await http.post("/v1/tx/transactions", json=saga, headers={"b3": f"{trace_id}-{span_id}-0"})
    assert done.json()["traceparent"] == f"00-{trace_id}-{span_id}-00"
    assert received[2:] == [f"00-{trace_id}-{span_id}-00"] * 2  # not sampled stays not sampled

    saga = {**saga, "gid": "tc-none"}
    done = await http.post("/v1/tx/transactions", json=saga)
    assert received[4:] == [done.json()["traceparent"]] * 2  # a trace of its own, the same for every call

    message = {"gid": "tc-msg", "mode": "msg", "prepare": True, "query_prepared": query.url,
               "options": FAST, "steps": [{"action": step.url}]}
    done = await http.post("/v1/tx/transactions", json=message, headers={"traceparent": sent})
    assert done.status_code == 201
    await wait_for(lambda: len(received) == 8)  # the check-back, then the step
    assert received[6:] == [sent, sent]
    assert spans_made == []

    # once spans go somewhere, every call is a span of the transaction's trace, whose context it sends
    exporter = InMemorySpanExporter()
    node.node.service(Tracing).provider.add_span_processor(SimpleSpanProcessor(exporter))
    saga = {**saga, "gid": "tc-traced"}
    done = await http.post("/v1/tx/transactions", json=saga, headers={"traceparent": sent})
    assert done.json()["status"] == "succeed"
    calls = [s for s in exporter.get_finished_spans() if (s.attributes or {}).get("mezzo.tx.gid") == "tc-traced"]
    assert len(calls) == 2 and spans_made == ["tx saga action"] * 2
    assert received[8:] == [f"00-{s.context.trace_id:032x}-{s.context.span_id:016x}-01" for s in calls]
    assert all(f"{s.context.trace_id:032x}" == sent.split("-")[1] for s in calls)
