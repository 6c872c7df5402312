"""Resiliency policies on branch calls: a ``Resiliency`` document's ``spec.targets.branches.<host>``
bounds, retries and breaks the coordinator's calls to that host, in the transaction's namespace.

Busi serves every branch at 127.0.0.1, so the target is ``127.0.0.1``. Whether a round retried at once
or the coordinator's backoff did is told apart by a ``retry_interval`` so long that no second round runs
during the test: what happened happened within the first round."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mezzo.resilience.breaker import CircuitState
from mezzo.resilience.policies import PolicyRegistry
from mezzo.telemetry.tracing import Tracing
from mezzo.testing.fixtures import RunningNode, wait_for
from mezzo.transactions.coordinator import Coordinator, branch_target

from .conftest import Busi, final_status, start_tx_node

TARGET = "127.0.0.1"
SLOW = {"retry_interval": 1000, "request_timeout": 5}  # one round per test: a second would come in 1000 s


@pytest.fixture
async def txnode(store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[RunningNode]:
    """A node that runs the resilience module, with a lease long enough for a round's retries (they end
    before the lease would run out)."""
    monkeypatch.setenv("MEZZO_TX_LEASE", "30")
    running = await start_tx_node(tmp_path / "data", store_url, ["transactions", "resilience", "api"])
    try:
        yield running
    finally:
        await running.node.stop()


@pytest.fixture
def spans(txnode: RunningNode) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    txnode.node.service(Tracing).provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def branch_spans(spans: InMemorySpanExporter, gid: str) -> list[ReadableSpan]:
    return [s for s in spans.get_finished_spans()
            if s.name.startswith("tx ") and (s.attributes or {}).get("mezzo.tx.gid") == gid]


def resiliency(name: str, policies: dict[str, Any], uses: dict[str, str], namespace: str = "default",
               target: str = TARGET) -> dict[str, Any]:
    return {"apiVersion": "mezzo.dev/v1", "kind": "Resiliency", "metadata": {"name": name, "namespace": namespace},
            "spec": {"policies": policies, "targets": {"branches": {target: uses}}}}


async def apply(txnode: RunningNode, doc: dict[str, Any]) -> None:
    async with txnode.client() as client:
        await client.resources.apply(doc)
    registry = txnode.node.service(PolicyRegistry)
    namespace = doc["metadata"]["namespace"]
    await wait_for(lambda: not registry.policy_for("branches", TARGET, namespace).is_noop)


async def saga(http: httpx.AsyncClient, gid: str, busi: Busi, *steps: tuple[str, str],
               namespace: str = "default", options: dict[str, Any] = SLOW) -> None:
    body = {"gid": gid, "mode": "saga", "namespace": namespace, "options": options,
            "steps": [{"action": f"{busi.url}/{a}", "compensate": f"{busi.url}/{c}" if c else ""} for a, c in steps]}
    created = await http.post("/v1/tx/transactions", json=body)
    assert created.status_code == 201, created.text


async def handed_back(txnode: RunningNode, http: httpx.AsyncClient, gid: str, attempts: int = 1) -> dict[str, Any]:
    """Wait until a round of ``gid`` ended unfinished and gave the transaction back with ``attempts``
    failed rounds; returns the transaction."""
    log = txnode.node.service(Coordinator).log

    async def back() -> dict[str, Any] | None:
        tx = (await http.get(f"/v1/tx/transactions/{gid}")).json()
        active, _ = await log.active(gid)
        return tx if active is not None and not active.owner and tx["attempts"] >= attempts else None

    return await wait_for(back, 20)  # type: ignore[no-any-return]


def test_a_branch_is_targeted_by_the_host_of_its_url_and_a_topic_step_by_its_topic() -> None:
    assert branch_target("http://stock:8000/reserve") == "stock"
    assert branch_target("https://Orders.shop.svc/mezzo-tx/transfer-out?x=1") == "orders.shop.svc"
    assert branch_target("topic://orders") == "topic:orders"


async def test_a_timeout_policy_cuts_a_slow_branch_and_a_later_round_calls_it_again(
        txnode: RunningNode, http: httpx.AsyncClient, busi: Busi) -> None:
    await apply(txnode, resiliency("quick", {"timeouts": {"quick": "200ms"}}, {"timeout": "quick"}))
    busi.gates["slow"] = gate = asyncio.Event()  # answers only once the test opens it
    # without the policy the call would wait for request_timeout (60 s) and the round would not end
    await saga(http, "rz-timeout", busi, ("slow", ""), options={"retry_interval": 0.05, "request_timeout": 60})
    tx = await handed_back(txnode, http, "rz-timeout")
    assert tx["status"] == "submitted"
    gate.set()
    assert (await final_status(http, "rz-timeout"))["status"] == "succeed"
    assert busi.names("rz-timeout").count("slow") >= 2  # cut, then called again by a later round


async def test_a_retry_policy_retries_errors_within_the_round_but_never_a_failure(
        txnode: RunningNode, http: httpx.AsyncClient, busi: Busi, spans: InMemorySpanExporter) -> None:
    retries = {"retries": {"now": {"policy": "constant", "duration": "10ms", "maxRetries": 3,
                                   "matching": {"httpStatusCodes": "500-503"}}}}
    await apply(txnode, resiliency("retry", retries, {"retry": "now"}))

    busi.on("flaky", 500, 503)  # then success: retried at once, so the first round ends the saga
    await saga(http, "rz-retry", busi, ("flaky", ""))
    tx = await final_status(http, "rz-retry")
    assert tx["status"] == "succeed" and tx["attempts"] == 0
    assert busi.names("rz-retry") == ["flaky"] * 3
    [span] = branch_spans(spans, "rz-retry")  # one span per branch call, its attempts counted
    assert (span.attributes or {}).get("mezzo.tx.attempts") == 3

    busi.on("refuse", 409)  # a business answer: the saga rolls back, the action is not called again
    await saga(http, "rz-failure", busi, ("refuse", "refuse-undo"))
    assert (await final_status(http, "rz-failure"))["status"] == "failed"
    assert busi.names("rz-failure") == ["refuse", "refuse-undo"]

    busi.on("busy", 425)  # ongoing: asked again after the interval, by the next round
    await saga(http, "rz-ongoing", busi, ("busy", ""))
    await handed_back(txnode, http, "rz-ongoing", attempts=0)
    assert busi.names("rz-ongoing") == ["busy"]

    busi.on("gateway", 504)  # an error whose status httpStatusCodes leaves out: the coordinator's backoff
    await saga(http, "rz-unmatched", busi, ("gateway", ""))
    await handed_back(txnode, http, "rz-unmatched")
    assert busi.names("rz-unmatched") == ["gateway"]


async def test_an_open_breaker_stops_the_calls_and_business_failures_do_not_open_it(
        txnode: RunningNode, http: httpx.AsyncClient, busi: Busi, spans: InMemorySpanExporter) -> None:
    breakers = {"circuitBreakers": {"stock": {"trip": "consecutiveFailures > 1", "timeout": "1h"}}}
    await apply(txnode, resiliency("breaker", breakers, {"circuitBreaker": "stock"}))
    breaker = txnode.node.service(PolicyRegistry).policy_for("branches", TARGET).breaker
    assert breaker is not None

    for i in range(3):  # failures are answers of a working service
        busi.on("refuse", 409)
        await saga(http, f"rz-answers-{i}", busi, ("refuse", ""))
        assert (await final_status(http, f"rz-answers-{i}"))["status"] == "failed"
    assert breaker.state is CircuitState.CLOSED

    busi.on("down", *[500] * 50)
    await saga(http, "rz-open", busi, ("down", ""), options={"retry_interval": 0.05, "request_timeout": 5})
    await handed_back(txnode, http, "rz-open", attempts=5)  # rounds go on with backoff...
    assert breaker.state is CircuitState.OPEN
    assert breaker.stats().rejected >= 3
    assert busi.names("rz-open") == ["down", "down"]  # ...but only the two that opened it called busi
    refused = [s.status.description or "" for s in branch_spans(spans, "rz-open")[2:]]
    assert refused and all(d.startswith(f"not called: circuit 'default/branches/{TARGET}' is open")
                           for d in refused), refused


async def test_a_policy_of_another_namespace_does_not_apply(txnode: RunningNode, http: httpx.AsyncClient,
                                                            busi: Busi) -> None:
    retries = {"retries": {"now": {"policy": "constant", "duration": "10ms", "maxRetries": 3}}}
    await apply(txnode, resiliency("retry", retries, {"retry": "now"}, namespace="other"))

    busi.on("flaky", 500)
    await saga(http, "rz-default", busi, ("flaky", ""))
    await handed_back(txnode, http, "rz-default")
    assert busi.names("rz-default") == ["flaky"]

    busi.on("flaky", 500)
    await saga(http, "rz-other", busi, ("flaky", ""), namespace="other")
    assert (await final_status(http, "rz-other"))["status"] == "succeed"
    assert busi.names("rz-other") == ["flaky", "flaky"]


async def test_removing_the_resiliency_restores_the_default_calls(txnode: RunningNode, http: httpx.AsyncClient,
                                                                  busi: Busi) -> None:
    retries = {"retries": {"now": {"policy": "constant", "duration": "10ms", "maxRetries": 3}}}
    await apply(txnode, resiliency("retry", retries, {"retry": "now"}))
    busi.on("flaky", 500)
    await saga(http, "rz-before", busi, ("flaky", ""))
    assert (await final_status(http, "rz-before"))["status"] == "succeed"
    assert busi.names("rz-before") == ["flaky", "flaky"]

    async with txnode.client() as client:
        await client.resources.delete("Resiliency", "retry")
    registry = txnode.node.service(PolicyRegistry)
    await wait_for(lambda: registry.policy_for("branches", TARGET).is_noop)
    busi.on("flaky", 500)
    await saga(http, "rz-after", busi, ("flaky", ""))
    await handed_back(txnode, http, "rz-after")
    assert busi.names("rz-after") == ["flaky"]


async def test_a_timeout_policy_bounds_a_message_check_back(txnode: RunningNode, http: httpx.AsyncClient,
                                                            busi: Busi) -> None:
    await apply(txnode, resiliency("quick", {"timeouts": {"quick": "200ms"}}, {"timeout": "quick"}))
    busi.gates["query"] = gate = asyncio.Event()
    body = {"gid": "rz-check", "mode": "msg", "prepare": True, "query_prepared": f"{busi.url}/query",
            "steps": [{"action": f"{busi.url}/notify"}], "options": {"retry_interval": 0.05, "request_timeout": 60}}
    assert (await http.post("/v1/tx/transactions", json=body)).status_code == 201
    await handed_back(txnode, http, "rz-check")  # the check-back was cut: an error, asked again later
    gate.set()
    assert (await final_status(http, "rz-check"))["status"] == "succeed"
    assert "notify" in busi.names("rz-check")


async def test_retries_within_a_round_end_before_the_lease_would_run_out(
        store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, busi: Busi) -> None:
    monkeypatch.setenv("MEZZO_TX_LEASE", "2")  # the round must write within 2 s, or another node may take over
    running = await start_tx_node(tmp_path / "lease", store_url, ["transactions", "resilience", "api"])
    try:
        forever = {"retries": {"forever": {"policy": "constant", "duration": "50ms"}}}  # maxRetries -1
        await apply(running, resiliency("forever", forever, {"retry": "forever"}))
        busi.on("down", *[500] * 100_000)
        async with httpx.AsyncClient(base_url=running.url, headers={"Authorization": f"Bearer {running.token}"},
                                     timeout=30) as http:
            await saga(http, "rz-lease", busi, ("down", ""), options={"retry_interval": 1000, "request_timeout": 0.5})
            await handed_back(running, http, "rz-lease")  # the round ended: its retries stopped in time
        assert len(busi.names("rz-lease")) > 1
    finally:
        await running.node.stop()
