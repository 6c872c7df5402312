"""Tracing ingest benchmark: spans/s stored by one Mezzo process, beside the raw insert rate of its store.

    .venv/bin/python bench/tracing.py [--seconds 20] [--concurrency 8] [--batch 512] [--lookups 200]

Spans carry 20 attributes and are encoded by the official OpenTelemetry SDK's OTLP encoder
(``opentelemetry-exporter-otlp-proto-common``, what ``OTLPSpanExporter`` sends: protobuf) in
batches of ``--batch``; ``--concurrency`` requests are in flight against ``mezzo up``'s OTLP port,
each answered only after its spans are committed. Every batch has fresh trace ids. In the same
run, the same rows go straight into the same SQLite schema with the store's own insert, as many rows
per commit as the requests in flight hold (the store's ceiling, with no HTTP and no decoding).
Then ``--lookups`` random trace-by-id queries through the Jaeger API give p50/p99 with everything
that was stored. It also prints the CPU the node and this client spent per span, which a machine
shared with other work does not change as much as the rate.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import machine  # bench/machine.py: the machine's speed around the measurement
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mezzo.testing.fixtures import free_port, spawn_node, stop_process
from mezzo.tracing.model import from_otlp_proto
from mezzo.tracing.store import SCHEMA, connect, encode_rows, insert_rows


def make_spans(count: int) -> list:  # type: ignore[type-arg]
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "bench", "host.name": "h1"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("bench")
    for i in range(count):
        attrs = {f"attr.{k}": f"value-{k}-{i % 97}" for k in range(20)}
        with tracer.start_as_current_span(f"operation-{i % 50}", attributes=attrs):
            pass
    return list(memory.get_finished_spans())


def bodies(spans: list, batch: int, copies: int) -> list[bytes]:  # type: ignore[type-arg]
    """``copies`` request bodies of ``batch`` spans, each with its own trace ids."""
    out = []
    base = encode_spans(spans[:batch])
    for _ in range(copies):
        for rs in base.resource_spans:
            for ss in rs.scope_spans:
                for s in ss.spans:
                    s.trace_id = os.urandom(16)
        out.append(base.SerializeToString())
    return out


async def ingest(url: str, payloads: list[bytes], seconds: float, concurrency: int,
                 batch: int) -> tuple[float, list[str], int]:
    sent = 0
    ids: list[str] = []
    deadline = time.perf_counter() + seconds
    headers = {"content-type": "application/x-protobuf"}

    async def worker(n: int) -> None:
        nonlocal sent
        i = n
        async with httpx.AsyncClient(timeout=60) as http:
            while time.perf_counter() < deadline:
                body = payloads[i % len(payloads)]
                i += concurrency
                r = await http.post(url, content=body, headers=headers)
                if r.status_code == 200:
                    sent += batch
                    if len(ids) < 5000:
                        ids.append(first_ids[body])
                elif r.status_code == 429:
                    await asyncio.sleep(0.05)
                else:
                    raise RuntimeError(f"{r.status_code}: {r.text[:200]}")

    first_ids = {body: from_otlp_proto(body)[0].trace_id for body in payloads}  # not decoded in the timed loop
    started = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return sent / (time.perf_counter() - started), ids, sent


def raw_rate(payloads: list[bytes], seconds: float, group: int) -> float:
    """The same rows into the same schema with the store's own insert (many rows per statement), ``group``
    rows per commit, with no HTTP and no decoding: what SQLite alone does with this shape here."""
    directory = Path(tempfile.mkdtemp(prefix="mezzo-bench-raw-"))
    conn = connect(directory / "raw.db")
    conn.executescript(SCHEMA)
    rows = [row for body in payloads for row in encode_rows(from_otlp_proto(body))]
    written = 0
    started = time.perf_counter()
    i = 0
    while time.perf_counter() - started < seconds:
        batch = rows[i:i + group] or rows[:group]
        i = (i + group) % len(rows)
        conn.execute("BEGIN")
        insert_rows(conn, batch)
        conn.execute("COMMIT")
        written += len(batch)
    rate = written / (time.perf_counter() - started)
    conn.close()
    shutil.rmtree(directory, ignore_errors=True)
    return rate


async def lookups(api: str, token: str, ids: list[str], count: int) -> list[float]:
    times = []
    async with httpx.AsyncClient(base_url=api, headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
        for trace_id in random.sample(ids, min(count, len(ids))):
            started = time.perf_counter()
            r = await http.get(f"/api/traces/{trace_id}")
            times.append(time.perf_counter() - started)
            assert r.status_code == 200, r.text
    return times


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--lookups", type=int, default=200)
    args = parser.parse_args()
    spans = make_spans(args.batch)
    payloads = bodies(spans, args.batch, 64)
    data = Path(tempfile.mkdtemp(prefix="mezzo-bench-"))
    (data / "node").mkdir()
    port = free_port()
    try:
        node = spawn_node(data / "node", {"MEZZO_LOG_LEVEL": "warning", "MEZZO_OTLP_PORT": str(port)})
    except BaseException:
        shutil.rmtree(data, ignore_errors=True)
        raise
    try:
        otlp = f"http://127.0.0.1:{port}"
        assert node.process is not None
        cpu_before, own_before = cpu_seconds(node.process.pid), time.process_time()
        rate, ids, spans_sent = await ingest(f"{otlp}/v1/traces", payloads, args.seconds, args.concurrency, args.batch)
        node_cpu, client_cpu = cpu_seconds(node.process.pid) - cpu_before, time.process_time() - own_before
        times = await lookups(node.url, node.token, ids, args.lookups)
        stored = await _stored(node.url, node.token)
    finally:
        stop_process(node)
        shutil.rmtree(data, ignore_errors=True)
    raw = raw_rate(payloads, min(args.seconds, 10), args.batch * args.concurrency)
    print(f"{'':28}{'mezzo':>12}{'raw sqlite':>12}{'ratio':>8}")
    print(f"{'spans/s stored':28}{rate:12.0f}{raw:12.0f}{rate / raw:8.2f}")
    print(f"CPU per span stored: node {node_cpu / spans_sent * 1e6:.1f} us (all threads), this client "
          f"{client_cpu / spans_sent * 1e6:.1f} us; the node alone on one free core: "
          f"{spans_sent / node_cpu:,.0f} spans/s")
    print(f"trace by id ({stored} spans stored): p50 {pct(times, 50) * 1000:.1f} ms, p99 {pct(times, 99) * 1000:.1f} ms")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (Linux), to tell the node's cost from a busy machine's."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _stored(api: str, token: str) -> str:
    async with httpx.AsyncClient(base_url=api, headers={"Authorization": f"Bearer {token}"}) as http:
        health = (await http.get("/readyz")).json()
    return str(health["modules"]["tracing"]["detail"].split(" ")[0])


if __name__ == "__main__":
    with machine.reported():
        asyncio.run(main())
