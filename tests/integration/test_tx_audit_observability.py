"""Audit: what an operator sees of transactions — one trace per global transaction with a span per
branch call (check-backs included) whose context the branch receives, every metric with its values,
the CloudEvents of each state change, and the message id of a topic step."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from integration.test_tx_cli import busi  # noqa: F401  (the scripted branch application)
from mezzo.sdk.tx_handlers import BranchCall
from mezzo.telemetry.tracing import Tracing
from mezzo.testing.fixtures import RunningNode, wait_for
from mezzo.transactions.testing import Busi

FAST = {"retry_interval": 0.05, "request_timeout": 5}


@pytest.fixture(autouse=True)
def settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEZZO_TX_POLL", "0.05")
    monkeypatch.setenv("MEZZO_TX_STUCK_AFTER", "0")  # every unfinished transaction counts as stuck


@pytest.fixture
def spans(node: RunningNode) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    node.node.service(Tracing).provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


@pytest.fixture
async def app(node: RunningNode) -> AsyncIterator[Any]:
    """A client whose in-process handlers (which see the headers of each call) are served on a free port."""
    async with node.client() as client, client.tx.serve():
        yield client


@pytest.fixture
async def http(node: RunningNode) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=node.url, headers={"Authorization": f"Bearer {node.token}"},
                                 timeout=30) as client:
        yield client


async def ended(http: httpx.AsyncClient, gid: str) -> dict[str, Any]:
    async def final() -> dict[str, Any] | None:
        tx = (await http.get(f"/v1/tx/transactions/{gid}")).json()
        return tx if tx["status"] in ("succeed", "failed") else None

    return await wait_for(final, 20)  # type: ignore[no-any-return]


def of(exporter: InMemorySpanExporter, gid: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if (s.attributes or {}).get("mezzo.tx.gid") == gid]


def parent_of(traceparent: str) -> tuple[int, int]:
    """(trace id, parent span id) of a W3C traceparent header."""
    _, trace_id, span_id, _ = traceparent.split("-")
    return int(trace_id, 16), int(span_id, 16)


async def test_one_trace_with_a_span_per_branch_call(http: httpx.AsyncClient, app: Any,
                                                     spans: InMemorySpanExporter) -> None:
    received: list[tuple[str, str]] = []
    failed_once: list[bool] = []

    @app.tx.handler("a")
    async def a(call: BranchCall) -> None:
        received.append(("a", call.headers.get("traceparent", "")))

    @app.tx.handler("b")
    async def b(call: BranchCall) -> None:
        received.append(("b", call.headers.get("traceparent", "")))
        if not failed_once:
            failed_once.append(True)
            raise RuntimeError("the database is restarting")  # an error: retried in a later round

    trace_id = secrets.token_hex(16)
    body = {"gid": "traced-saga", "mode": "saga", "options": FAST,
            "steps": [{"action": a.url}, {"action": b.url}]}
    created = await http.post("/v1/tx/transactions", json=body,
                              headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"})
    assert created.status_code == 201
    assert (await ended(http, "traced-saga"))["status"] == "succeed"

    calls = await wait_for(lambda: len(of(spans, "traced-saga")) == 3 and of(spans, "traced-saga"))
    assert [s.name for s in calls] == ["tx saga action"] * 3
    assert {s.context.trace_id for s in calls} == {int(trace_id, 16)}  # the trace of the creating request
    assert all(s.kind is SpanKind.CLIENT for s in calls)
    assert [(s.attributes or {})["mezzo.tx.branch_id"] for s in calls] == ["01", "02", "02"]
    assert [(s.attributes or {})["mezzo.tx.outcome"] for s in calls] == ["success", "error", "success"]
    assert calls[1].status.status_code is StatusCode.ERROR
    # each call carried its own span's context to the branch
    assert [name for name, _ in received] == ["a", "b", "b"]
    assert [parent_of(header) for _, header in received] == [(s.context.trace_id, s.context.span_id)
                                                              for s in calls]


async def test_a_message_check_back_is_a_span_of_the_transaction_too(http: httpx.AsyncClient, app: Any,
                                                                     spans: InMemorySpanExporter) -> None:
    received: dict[str, str] = {}

    @app.tx.handler("query")
    async def query(call: BranchCall) -> None:
        received["query"] = call.headers.get("traceparent", "")

    @app.tx.handler("notify")
    async def notify(call: BranchCall) -> None:
        received["notify"] = call.headers.get("traceparent", "")

    trace_id = secrets.token_hex(16)
    body = {"gid": "traced-msg", "mode": "msg", "prepare": True, "query_prepared": query.url, "options": FAST,
            "steps": [{"action": notify.url}]}
    created = await http.post("/v1/tx/transactions", json=body,
                              headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"})
    assert created.status_code == 201
    assert (await ended(http, "traced-msg"))["status"] == "succeed"  # after asking the app (no submit)
    calls = await wait_for(lambda: len(of(spans, "traced-msg")) == 2 and of(spans, "traced-msg"))
    assert [s.name for s in calls] == ["tx msg check-back", "tx msg action"]
    assert {s.context.trace_id for s in calls} == {int(trace_id, 16)}
    assert (calls[0].attributes or {})["mezzo.tx.branch_id"] == "00"
    assert (calls[0].attributes or {})["url.full"] == query.url
    assert parent_of(received["query"]) == (calls[0].context.trace_id, calls[0].context.span_id)
    assert parent_of(received["notify"]) == (calls[1].context.trace_id, calls[1].context.span_id)


async def test_a_call_is_cut_at_the_transactions_request_timeout(http: httpx.AsyncClient, app: Any,
                                                                 spans: InMemorySpanExporter) -> None:
    release = asyncio.Event()

    @app.tx.handler("slow")
    async def slow(call: BranchCall) -> None:
        await release.wait()

    try:
        body = {"gid": "timed-out", "mode": "saga", "steps": [{"action": slow.url}],
                "options": {"retry_interval": 1000, "request_timeout": 0.3}}
        assert (await http.post("/v1/tx/transactions", json=body)).status_code == 201
        cut = await wait_for(lambda: of(spans, "timed-out"), 20)
        assert cut[0].status.status_code is StatusCode.ERROR
        assert cut[0].status.description == "timed out after 0.3 s"
        tx = (await http.get("/v1/tx/transactions/timed-out")).json()
        assert tx["status"] == "submitted" and tx["attempts"] == 1
    finally:
        release.set()


def sample(metrics: str, name: str) -> float | None:
    """The value of one sample line (``name`` with its labels) of a Prometheus text exposition."""
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_every_metric_counts_what_it_names(http: httpx.AsyncClient, busi: Busi) -> None:  # noqa: F811
    busi.on("b", 500)  # one error, then success: one retry
    busi.on("y", 409)  # a failed action: the saga rolls back
    sagas = {"metric-ok": "ab", "metric-failed": "xy"}
    for gid, names in sagas.items():
        steps = [{"action": f"{busi.url}/{n}", "compensate": f"{busi.url}/{n}-undo"} for n in names]
        assert (await http.post("/v1/tx/transactions", json={"gid": gid, "mode": "saga", "steps": steps,
                                                             "options": FAST})).status_code == 201
    assert (await ended(http, "metric-ok"))["status"] == "succeed"
    assert (await ended(http, "metric-failed"))["status"] == "failed"
    pending = {"gid": "metric-pending", "mode": "tcc", "prepare": True, "options": FAST}
    assert (await http.post("/v1/tx/transactions", json=pending)).status_code == 201

    metrics = (await http.get("/metrics")).text
    expected = {
        'mezzo_tx_transactions_total{mode="saga",outcome="succeed"}': 1.0,
        'mezzo_tx_transactions_total{mode="saga",outcome="failed"}': 1.0,
        'mezzo_tx_retries_total{mode="saga"}': 1.0,
        'mezzo_tx_branch_duration_seconds_count{mode="saga",op="action",outcome="success"}': 3.0,  # a, b, x
        'mezzo_tx_branch_duration_seconds_count{mode="saga",op="action",outcome="error"}': 1.0,  # b's 500
        'mezzo_tx_branch_duration_seconds_count{mode="saga",op="action",outcome="failure"}': 1.0,  # y
        'mezzo_tx_branch_duration_seconds_count{mode="saga",op="compensate",outcome="success"}': 2.0,
        'mezzo_tx_stuck_transactions{mode="tcc"}': 1.0,  # unfinished, older than MEZZO_TX_STUCK_AFTER (0)
    }
    assert {name: sample(metrics, name) for name in expected} == expected
    assert sample(metrics, 'mezzo_tx_stuck_transactions{mode="saga"}') is None  # the finished ones are not
    assert sample(metrics, 'mezzo_tx_branch_duration_seconds_sum{mode="saga",op="action",outcome="success"}') > 0

    assert (await http.post("/v1/tx/transactions/metric-pending:abort")).status_code == 200
    await ended(http, "metric-pending")
    metrics = (await http.get("/metrics")).text
    assert sample(metrics, 'mezzo_tx_stuck_transactions{mode="tcc"}') is None
    assert sample(metrics, 'mezzo_tx_transactions_total{mode="tcc",outcome="failed"}') == 1.0


async def test_state_changes_are_cloudevents_and_topic_steps_keep_their_id(node: RunningNode,
                                                                           busi: Busi) -> None:  # noqa: F811
    async with node.client() as client, httpx.AsyncClient(
            base_url=node.url, headers={"Authorization": f"Bearer {node.token}"}, timeout=30) as http:
        await client.messaging.publish("mezzo-tx-events", {"hello": 1})  # the topic exists: events flow
        busi.on("b", 409)
        steps = [{"action": f"{busi.url}/{n}", "compensate": f"{busi.url}/{n}-undo"} for n in "ab"]
        assert (await http.post("/v1/tx/transactions", json={"gid": "events-1", "mode": "saga", "steps": steps,
                                                             "options": FAST})).status_code == 201
        assert (await ended(http, "events-1"))["status"] == "failed"
        message = {"gid": "events-msg", "mode": "msg", "steps": [{"action": "topic://orders"}],
                   "payloads": [{"order": 7}], "options": FAST}
        assert (await http.post("/v1/tx/transactions", json=message)).status_code == 201
        assert (await ended(http, "events-msg"))["status"] == "succeed"

        events = client.messaging.subscribe("mezzo-tx-events", "audit", wait=0.2)
        seen: list[Any] = []

        async def all_states() -> bool:
            seen.extend(m for m in await events.pull() if m.attributes.get("ce.subject") == "events-1")
            return any(m.attributes.get("ce.type") == "dev.mezzo.tx.failed" for m in seen)

        await wait_for(all_states)
        assert [m.attributes["ce.type"] for m in seen] == [
            "dev.mezzo.tx.submitted", "dev.mezzo.tx.aborting", "dev.mezzo.tx.failed"]
        for m, status in zip(seen, ("submitted", "aborting", "failed"), strict=True):
            assert m.id == f"events-1-{status}"
            assert m.attributes["ce.source"] == "/mezzo/transactions"
            assert m.data["gid"] == "events-1" and m.data["mode"] == "saga" and m.data["status"] == status

        orders = client.messaging.subscribe("orders", "audit", wait=5)
        published = await wait_for(lambda: orders.pull())
        assert [(m.id, m.data) for m in published] == [("events-msg-01", {"order": 7})]


async def test_no_events_topic_no_events_and_nothing_breaks(node: RunningNode, busi: Busi) -> None:  # noqa: F811
    async with node.client() as client, httpx.AsyncClient(
            base_url=node.url, headers={"Authorization": f"Bearer {node.token}"}, timeout=30) as http:
        steps = [{"action": f"{busi.url}/a"}]
        assert (await http.post("/v1/tx/transactions", json={"gid": "quiet-1", "mode": "saga", "steps": steps,
                                                             "options": FAST})).status_code == 201
        assert (await ended(http, "quiet-1"))["status"] == "succeed"
        topics = await client.request("GET", "/v1/topics")
        names = [t.get("name") for t in (topics.get("items", topics) if isinstance(topics, dict) else topics)]
        assert "mezzo-tx-events" not in names  # opting in is creating the topic; Mezzo does not create it


async def test_a_transaction_is_counted_once_when_its_last_write_is_fenced_off(
        http: httpx.AsyncClient, busi: Busi) -> None:  # noqa: F811
    """A round whose final write is refused (an operator's retry reset the lease meanwhile) did not end
    the transaction: the round that does end it counts it, once."""
    busi.gates["held"] = asyncio.Event()
    body = {"gid": "counted-once", "mode": "saga", "steps": [{"action": f"{busi.url}/held"}], "options": FAST}
    assert (await http.post("/v1/tx/transactions", json=body)).status_code == 201
    await wait_for(lambda: busi.names("counted-once") == ["held"])
    assert (await http.post("/v1/tx/transactions/counted-once:retry")).status_code == 200  # fences the round off
    busi.gates["held"].set()
    assert (await ended(http, "counted-once"))["status"] == "succeed"
    assert busi.names("counted-once") == ["held", "held"]  # the fenced round's result was not recorded
    metrics = (await http.get("/metrics")).text
    assert sample(metrics, 'mezzo_tx_transactions_total{mode="saga",outcome="succeed"}') == 1.0
