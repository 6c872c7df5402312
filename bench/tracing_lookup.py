"""Trace lookup at scale: fill the embedded trace store with N spans, then time trace-by-id and search.

    .venv/bin/python bench/tracing_lookup.py [--spans 10000000] [--lookups 1000] [--searches 200] [--dir /tmp]

The fill goes through the store's schema and its own insert (``insert_rows``, many rows per
statement, 50,000 rows per commit), not HTTP, so that 10 million spans take minutes: traces of
10-30 spans over 3-6 of 30 services (10 operations each), parent links, 2% errors, spread over
the last 24 hours, each span with 20 attributes stored as OTLP/protobuf as ingest stores them.
Then ``mezzo up`` opens that data directory and, side by side in one run:

- trace by id through the Jaeger API ``GET /api/traces/{id}`` (HTTP, JSON of the whole trace) and
  straight at the store (``TraceStore.trace``) for random trace ids;
- search by service and time (``GET /api/traces?service=&lookback=1h&limit=20``, and the store's
  ``find`` + ``traces``) for random services.

It prints p50/p99 of each, the fill time and the size on disk, then deletes the directory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import machine  # bench/machine.py: the machine's speed around the measurement
import orjson
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanMessage
from tracing import cpu_seconds  # bench/tracing.py, beside this file

from mezzo.testing.fixtures import spawn_node, stop_process
from mezzo.tracing.store import SCHEMA, Query, TraceStore, connect, insert_rows

SERVICES = [f"svc-{i:02d}" for i in range(30)]
OPERATIONS = {s: [f"{verb} /{s}/{noun}" for verb, noun in zip(("GET", "POST", "PUT", "GET", "DELETE") * 2,
                                                              ("orders", "items", "users", "carts", "stock",
                                                               "prices", "tax", "ship", "pay", "search"),
                                                              strict=True)] for s in SERVICES}
COMMIT_ROWS = 50_000
HOUR_US = 3_600_000_000


def template(service: str, operation: str, variant: int) -> bytes:
    """A span message with 20 attributes, as an OTLP exporter sends them (ids live in the columns)."""
    message = SpanMessage(name=operation)
    values = {"http.method": operation.split()[0], "http.route": operation.split()[1], "http.status_code": 200,
              "net.peer.name": f"{service}.internal", "net.peer.port": 8080, "thread.name": f"worker-{variant}",
              "db.system": "postgresql", "db.statement": f"SELECT * FROM {service} WHERE id = $1",
              "user.tier": ("free", "pro", "enterprise")[variant % 3], "region": ("eu", "us", "ap")[variant % 3]}
    for k in range(10):
        values[f"app.attr.{k}"] = f"value-{k}-{variant}"
    for key, value in values.items():
        any_value = AnyValue(int_value=value) if isinstance(value, int) else AnyValue(string_value=value)
        message.attributes.append(KeyValue(key=key, value=any_value))
    return message.SerializeToString()


def fill(path: Path, total: int) -> tuple[float, list[str]]:
    """Write ``total`` spans; returns the seconds it took and a sample of trace ids."""
    conn = connect(path)  # as the store's writer connects
    conn.execute("PRAGMA cache_size=-262144")
    conn.executescript(SCHEMA)
    blobs = {(s, op): [template(s, op, v) for v in range(4)] for s in SERVICES for op in OPERATIONS[s]}
    resources = {s: orjson.dumps({"service.name": s, "host.name": f"host-{i % 7}", "telemetry.sdk.language": "python",
                                  "service.version": "1.4.2"}).decode() for i, s in enumerate(SERVICES)}
    conn.execute("BEGIN")
    conn.executemany("INSERT OR IGNORE INTO operations VALUES (?, ?, ?)",
                     [(s, op, kind) for s in SERVICES for op in OPERATIONS[s] for kind in (1, 2, 3)])
    conn.execute("COMMIT")
    rng = random.Random(7)
    now_us = int(time.time() * 1_000_000)
    sample: list[str] = []
    rows: list[tuple[object, ...]] = []
    written = 0
    started = time.perf_counter()
    while written < total:
        trace_id = os.urandom(16).hex()
        if rng.random() < 0.01 and len(sample) < 20_000:
            sample.append(trace_id)
        services = rng.sample(SERVICES, rng.randint(3, 6))
        begin = now_us - rng.randrange(24 * HOUR_US)
        span_ids: list[str] = []
        for i in range(min(rng.randint(10, 30), total - written)):
            span_id = os.urandom(8).hex()
            service = services[0] if i == 0 else rng.choice(services)
            operation = rng.choice(OPERATIONS[service])
            error = rng.random() < 0.02
            rows.append((trace_id, span_id, rng.choice(span_ids) if span_ids else "", service, operation,
                         2 if i == 0 else rng.choice((1, 2, 3)), begin + i * 1000, rng.randint(200, 400_000),
                         2 if error else 0, "boom" if error else "", rng.choice(blobs[(service, operation)]),
                         resources[service], "", "", "opentelemetry.instrumentation", ""))
            span_ids.append(span_id)
        written += len(span_ids)
        if len(rows) >= COMMIT_ROWS:
            _commit(conn, rows)
            rows = []
            if written % 1_000_000 < COMMIT_ROWS:
                print(f"  {written:,} spans, {written / (time.perf_counter() - started):,.0f}/s", flush=True)
    _commit(conn, rows)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.perf_counter() - started, sample


def _commit(conn: sqlite3.Connection, rows: list[tuple[object, ...]]) -> None:
    conn.execute("BEGIN")
    insert_rows(conn, rows)
    conn.execute("COMMIT")


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000


def line(name: str, values: list[float], node_cpu: float | None = None) -> str:
    cpu = f", node CPU {node_cpu / len(values) * 1000:.1f} ms/query" if node_cpu is not None else ""
    return (f"{name:42}{pct(values, 50):9.1f}{pct(values, 99):9.1f}{max(values) * 1000:9.1f}"
            f"   ({len(values)} queries{cpu})")


async def timed(coro_factory, items):  # type: ignore[no-untyped-def]
    times = []
    for item in items:
        started = time.perf_counter()
        await coro_factory(item)
        times.append(time.perf_counter() - started)
    return times


async def measure(data: Path, ids: list[str], lookups: int, searches: int) -> list[str]:
    rng = random.Random(11)
    by_id = rng.sample(ids, min(lookups, len(ids)))
    services = [rng.choice(SERVICES) for _ in range(searches)]
    out = []
    store = TraceStore(data / "traces.db")  # a reader beside the node, as the node's own readers are
    node = spawn_node(data, {"MEZZO_LOG_LEVEL": "warning"})
    try:
        async with httpx.AsyncClient(base_url=node.url, headers={"Authorization": f"Bearer {node.token}"},
                                     timeout=60) as http:
            async def api_trace(trace_id: str) -> None:
                r = await http.get(f"/api/traces/{trace_id}")
                assert r.status_code == 200 and len(r.json()["data"][0]["spans"]) >= 10, r.text[:200]

            async def api_search(service: str) -> None:
                r = await http.get("/api/traces", params={"service": service, "lookback": "1h", "limit": 20})
                assert r.status_code == 200 and r.json()["data"], r.text[:200]

            async def store_trace(trace_id: str) -> None:
                spans = await store.trace(trace_id)
                assert len(spans) >= 10 and all(s.attributes for s in spans)  # attributes decoded, as a reader needs

            async def store_search(service: str) -> None:
                start = int(time.time() * 1_000_000) - HOUR_US
                found = await store.traces(await store.find(Query(service=service, start_us=start, limit=20)))
                assert found

            assert node.process is not None
            pid = node.process.pid
            await api_trace(by_id[0])  # first contact (connection, reader threads), not counted
            before = cpu_seconds(pid)
            times = await timed(api_trace, by_id)
            out.append(line("trace by id, Jaeger API (HTTP)", times, cpu_seconds(pid) - before))
            out.append(line("trace by id, store", await timed(store_trace, rng.sample(ids, len(by_id)))))
            before = cpu_seconds(pid)
            times = await timed(api_search, services)
            out.append(line("search service+1h, limit 20, Jaeger API", times, cpu_seconds(pid) - before))
            out.append(line("search service+1h, limit 20, store", await timed(store_search, services)))
    finally:
        stop_process(node)
        await store.close()
    return out


def size_of(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spans", type=int, default=10_000_000)
    parser.add_argument("--lookups", type=int, default=1000)
    parser.add_argument("--searches", type=int, default=200)
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the temporary data directory goes")
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="mezzo-bench-lookup-", dir=args.dir)) / "node"
    data.mkdir()
    try:
        print(f"filling {args.spans:,} spans into {data / 'traces.db'}", flush=True)
        seconds, ids = fill(data / "traces.db", args.spans)
        size = size_of(data)
        print(f"filled in {seconds:.0f} s ({args.spans / seconds:,.0f} spans/s); {size / 2**30:.2f} GiB on disk "
              f"({size / args.spans:.0f} bytes/span)", flush=True)
        results = asyncio.run(measure(data, ids, args.lookups, args.searches))
        print(f"\n{'with ' + format(args.spans, ',') + ' spans stored':42}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
        for text in results:
            print(text)
    finally:
        shutil.rmtree(data.parent, ignore_errors=True)


if __name__ == "__main__":
    with machine.reported():
        main()
