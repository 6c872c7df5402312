"""``mezzo tx`` against a running node, the transaction metrics, and one trace per transaction."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator

import httpx
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mezzo.telemetry.tracing import Tracing
from mezzo.testing.fixtures import RunningNode, wait_for
from mezzo.transactions.testing import Busi, serve_busi


@pytest.fixture
async def busi() -> AsyncIterator[Busi]:
    async with serve_busi() as app:
        yield app


async def mezzo(node: RunningNode, *args: str) -> tuple[int, str]:
    env = {**os.environ, "MEZZO_URL": node.url, "MEZZO_TOKEN": node.token, "COLUMNS": "200"}
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "mezzo", *args, env=env,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await process.communicate()
    return process.returncode or 0, output.decode()


async def test_cli_metrics_and_trace(node: RunningNode, busi: Busi) -> None:
    exporter = InMemorySpanExporter()
    node.node.service(Tracing).provider.add_span_processor(SimpleSpanProcessor(exporter))
    busi.on("b", *([500] * 10_000))
    async with httpx.AsyncClient(base_url=node.url, headers={"Authorization": f"Bearer {node.token}"}) as http:
        steps = [{"action": f"{busi.url}/{n}", "compensate": f"{busi.url}/{n}-undo"} for n in "ab"]
        ok = {"gid": "cli-ok", "mode": "saga", "steps": steps[:1], "options": {"retry_interval": 0.05}}
        stuck = {"gid": "cli-stuck", "mode": "saga", "steps": steps, "options": {"retry_interval": 30}}
        assert (await http.post("/v1/tx/transactions", json=ok)).status_code == 201
        assert (await http.post("/v1/tx/transactions", json=stuck)).status_code == 201
        await wait_for(lambda: "b" in busi.names("cli-stuck") and "a" in busi.names("cli-ok"))

        code, listing = await mezzo(node, "tx", "list")
        assert code == 0 and "cli-ok" in listing and "cli-stuck" in listing
        code, shown = await mezzo(node, "tx", "show", "cli-stuck")
        assert code == 0 and "submitted" in shown and "HTTP 500" not in shown and "action" in shown
        busi.script["b"] = []  # b recovers; retry skips the 30 s backoff
        code, retried = await mezzo(node, "tx", "retry", "cli-stuck")
        assert code == 0 and "due now" in retried

        async def done() -> bool:
            return (await http.get("/v1/tx/transactions/cli-stuck")).json()["status"] == "succeed"

        await wait_for(done)
        code, missing = await mezzo(node, "tx", "abort", "cli-ok")
        assert code == 1 and "409" in missing

        metrics = (await http.get("/metrics")).text
        assert 'mezzo_tx_transactions_total{mode="saga",outcome="succeed"} 2.0' in metrics
        assert "mezzo_tx_branch_duration_seconds_bucket" in metrics and "mezzo_tx_retries_total" in metrics
        assert "mezzo_tx_stuck_transactions" in metrics

    spans = [s for s in exporter.get_finished_spans() if s.name.startswith("tx saga")]
    by_gid: dict[str, set[int]] = {}
    for span in spans:
        by_gid.setdefault(str(span.attributes["mezzo.tx.gid"]), set()).add(span.context.trace_id)
    assert len(by_gid["cli-stuck"]) == 1  # every branch call of one transaction is in one trace
    assert by_gid["cli-stuck"] != by_gid["cli-ok"]
