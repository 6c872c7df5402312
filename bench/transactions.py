"""Transactions benchmark: sagas through Mezzo's coordinator on PostgreSQL beside ``pgbench -N``, in one run.

    .venv/bin/python bench/transactions.py [--clients 8] [--seconds 10] [--runs 1] [--floor [raw|uvicorn|both]]
                                           [--postgres URL]

Mezzo side: ``mezzo run --targets transactions,api`` keeps its transaction log in a database of its
own on the PostgreSQL server (created here, dropped at the end). Each of ``--clients`` connections
submits, one after another, a saga of two HTTP branches (action + compensation each) with
``wait_result``, so an answer means the saga has ended; it counts when it ended ``succeed``. The
branches are served by a minimal ASGI app under uvicorn in a process of its own (``branches``
subcommand), answering ``{"dtm_result":"SUCCESS"}``. The clients speak raw HTTP/1.1 over keep-alive
sockets, so the load generator costs as little CPU as pgbench's C client.

Peer: ``pgbench -N`` (TPC-B without the two hot-spot updates: three statements and a commit) with
the same ``-c`` and ``-T`` on its own database on the same server (``pgbench -i``, dropped at the
end); its p50/p99 come from its per-transaction log (``-l``).

Each run measures pgbench and Mezzo one right after the other and prints both rates, the ratio
(saga tx/s over pgbench TPS), the latency percentiles, the node's CPU time per saga (from /proc:
a figure a machine shared with other work spoils less than rates do) and the whole machine's busy CPU
time per transaction; with ``--runs`` > 1 the medians follow.

``--floor`` adds measurements to each run: the same sagas against the least a coordinator can do. Each
floor per saga INSERTs the transaction row, POSTs the two actions one after the other, UPDATEs the row
to its end and answers: no validation, no auth, no leases, no per-branch records, no compensation, no
recovery, no telemetry. They are bounds, not competitors:

- ``uvicorn``: the least on Mezzo's own stack (``floor`` subcommand: a bare ASGI app under uvicorn, as
  Mezzo's API runs, with aiohttp for the branch calls and an asyncpg pool with its default reset query);
- ``raw``: the least on raw asyncio (``bench/transactions_floor.py``: uvloop, an httptools server and
  raw keep-alive branch connections parsed by httptools, an asyncpg pool without the reset query);
  what any Python coordinator on this machine could reach at best.

A bare ``--floor`` measures both (uvicorn first). The floors' rows go in a table ``floor_tx`` of
Mezzo's database.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import machine  # bench/machine.py: the machine's speed around the measurement
import orjson

from mezzo.testing.fixtures import free_port, spawn_node, stop_process

SUCCESS = b'{"dtm_result":"SUCCESS"}'


# the branch application --------------------------------------------------------------------------


async def branch_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Every POST is a branch that succeeds (the body is read and ignored)."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(SUCCESS))]})
    await send({"type": "http.response.body", "body": SUCCESS})


def serve_branches(port: int) -> None:
    import uvicorn

    uvicorn.run(branch_app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                lifespan="off", http="httptools", loop="uvloop")


def start_branches() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, __file__, "branches", "--port", str(port)])
    wait_listening(process, port, "the branch app")
    return process, f"http://127.0.0.1:{port}"


def wait_listening(process: subprocess.Popen[bytes], port: int, what: str) -> None:
    import socket

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise TimeoutError(f"{what} did not start")


# the floor: the least a coordinator in this stack does per saga --------------------------------------


def serve_floor(port: int, dsn: str, branches: str) -> None:
    import aiohttp
    import asyncpg
    import uvicorn

    state: dict[str, Any] = {}
    answer = b'{"status":"succeed"}'

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    state["pool"] = await asyncpg.create_pool(dsn, min_size=2, max_size=10)
                    await state["pool"].execute("CREATE TABLE IF NOT EXISTS floor_tx"
                                                " (gid text PRIMARY KEY, status text NOT NULL, doc bytea NOT NULL)")
                    state["http"] = aiohttp.ClientSession()
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await state["http"].close()
                    await state["pool"].close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        gid = uuid.uuid4().hex
        pool, http = state["pool"], state["http"]
        await pool.execute("INSERT INTO floor_tx VALUES ($1, 'submitted', $2)", gid, body)
        for step, payload in (("out", b'{"account":1,"amount":30}'), ("in", b'{"account":2,"amount":30}')):
            async with http.post(f"{branches}/{step}", data=payload,
                                 params={"gid": gid, "trans_type": "saga", "branch_id": step, "op": "action"}) as r:
                await r.read()
        await pool.execute("UPDATE floor_tx SET status = 'succeed' WHERE gid = $1", gid)
        await send({"type": "http.response.start", "status": 201,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(answer))]})
        await send({"type": "http.response.body", "body": answer})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, http="httptools",
                loop="uvloop")


def start_floor(kind: str, dsn: str, branches: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    if kind == "raw":
        command = [sys.executable, str(Path(__file__).with_name("transactions_floor.py")), "--port", str(port),
                   "--dsn", dsn]
    else:
        command = [sys.executable, __file__, "floor", "--port", str(port), "--dsn", dsn, "--branches", branches]
    process = subprocess.Popen(command)
    wait_listening(process, port, f"the {kind} floor")
    return process, f"http://127.0.0.1:{port}"


FLOORS = {"uvicorn": ("uvicorn",), "raw": ("raw",), "both": ("uvicorn", "raw")}


# a minimal HTTP/1.1 client -------------------------------------------------------------------------


class RawClient:
    """One keep-alive connection; requests are prebuilt bytes, the answer is (status, body)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        match = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        body = await self.reader.readexactly(int(match.group(1))) if match else b""
        return status, body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def saga_request(host: str, token: str, branches: str) -> bytes:
    body = orjson.dumps({
        "mode": "saga",
        "steps": [{"action": f"{branches}/out", "compensate": f"{branches}/out-undo"},
                  {"action": f"{branches}/in", "compensate": f"{branches}/in-undo"}],
        "payloads": [{"account": 1, "amount": 30}, {"account": 2, "amount": 30}],
        "options": {"wait_result": True, "retry_interval": 1, "request_timeout": 10},
    })
    return (f"POST /v1/tx/transactions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


# measurements --------------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    tps: float
    p50_ms: float
    p99_ms: float
    count: int
    errors: int = 0
    cpu_ms: float = 0.0  # CPU time of the server process per transaction (a measure a busy machine spoils less)
    machine_ms: float = 0.0  # busy CPU time of the whole machine per transaction (every process, both sides)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> float:
    """Seconds of CPU time the whole machine spent busy so far (all cores; /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def drive_sagas(url: str, token: str, branches: str, clients: int, seconds: float,
                      pid: int | None = None, name: str = "mezzo saga") -> Result:
    """Sagas from ``clients`` connections for ``seconds`` after a short warm-up; ``pid``: the node's
    process, whose CPU time over the measured part is reported per saga."""
    parts = urlsplit(url)
    raw = saga_request(parts.netloc, token, branches)
    latencies: list[float] = []
    errors = 0

    async def client(deadline: float, record: bool) -> None:
        nonlocal errors
        conn = RawClient(parts.hostname or "127.0.0.1", parts.port or 80)
        try:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                status, body = await conn.request(raw)
                took = time.perf_counter() - started
                if not record:
                    continue
                if status == 201 and b'"status":"succeed"' in body:
                    latencies.append(took)
                else:
                    errors += 1
                    if errors <= 3:
                        print(f"  saga answer {status}: {body[:200]!r}", file=sys.stderr)
        finally:
            await conn.close()

    warm = time.monotonic() + min(2.0, seconds / 5)
    await asyncio.gather(*(client(warm, False) for _ in range(clients)))
    cpu = cpu_seconds(pid) if pid else 0.0
    busy = machine_busy()
    started = time.monotonic()
    await asyncio.gather(*(client(started + seconds, True) for _ in range(clients)))
    elapsed = time.monotonic() - started
    count = max(len(latencies), 1)
    cpu_ms = (cpu_seconds(pid) - cpu) * 1000 / count if pid else 0.0
    return Result(name, len(latencies) / elapsed, percentile(latencies, 0.5) * 1000,
                  percentile(latencies, 0.99) * 1000, len(latencies), errors, cpu_ms,
                  (machine_busy() - busy) * 1000 / count)


def run_pgbench(dsn: str, clients: int, seconds: float, logdir: Path) -> Result:
    parts = urlsplit(dsn)
    env = {**os.environ, "PGHOST": parts.hostname or "127.0.0.1", "PGPORT": str(parts.port or 5432),
           "PGUSER": parts.username or "postgres"}
    if parts.password:
        env["PGPASSWORD"] = parts.password
    database = parts.path.lstrip("/")
    prefix = logdir / f"pgbench-{uuid.uuid4().hex[:6]}"
    threads = min(clients, 2)
    busy = machine_busy()
    out = subprocess.run(["pgbench", "-N", "-c", str(clients), "-j", str(threads), "-T", str(int(seconds)),
                          "-l", "--log-prefix", str(prefix), database], env=env, capture_output=True, text=True,
                         check=True, cwd=logdir)
    tps = float(re.search(r"tps = ([\d.]+)", out.stdout).group(1))  # type: ignore[union-attr]
    latencies = [int(line.split()[2]) / 1000 for log in logdir.glob(prefix.name + ".*")
                 for line in log.read_text().splitlines() if line]
    machine_ms = (machine_busy() - busy) * 1000 / max(len(latencies), 1)  # includes pgbench's start and end
    return Result("pgbench -N", tps, percentile(latencies, 0.5), percentile(latencies, 0.99), len(latencies),
                  machine_ms=machine_ms)


# databases -----------------------------------------------------------------------------------------


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name, query=""))


def psql(admin_url: str, sql: str) -> None:
    subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", admin_url, "-c", sql], check=True, capture_output=True)


def pgbench_init(url: str) -> None:
    parts = urlsplit(url)
    env = {**os.environ, "PGHOST": parts.hostname or "127.0.0.1", "PGPORT": str(parts.port or 5432),
           "PGUSER": parts.username or "postgres"}
    subprocess.run(["pgbench", "-i", "-q", parts.path.lstrip("/")], env=env, check=True, capture_output=True)


# the run -------------------------------------------------------------------------------------------


def show(result: Result) -> None:
    extra = f", {result.errors} not succeed" if result.errors else ""
    if result.cpu_ms:
        extra += f"; server CPU {result.cpu_ms:.2f} ms per saga"
    if result.machine_ms:
        extra += f"; machine CPU {result.machine_ms:.2f} ms per tx"
    print(f"  {result.name:<13} {result.tps:9.1f} tx/s   p50 {result.p50_ms:7.2f} ms   "
          f"p99 {result.p99_ms:7.2f} ms   ({result.count} transactions{extra})")


async def bench(args: argparse.Namespace) -> int:
    suffix = uuid.uuid4().hex[:8]
    mezzo_db, pgbench_db = f"mezzo_txbench_{suffix}", f"pgbench_txbench_{suffix}"
    admin = args.postgres
    psql(admin, f"CREATE DATABASE {mezzo_db}")
    psql(admin, f"CREATE DATABASE {pgbench_db}")
    branches_proc, branches = start_branches()
    node = None
    floor_procs: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    rows: list[tuple[Result, Result]] = []
    floors: dict[str, list[Result]] = {}
    try:
        pgbench_init(with_database(admin, pgbench_db))
        with tempfile.TemporaryDirectory(prefix="mezzo-txbench-") as tmp:
            data = Path(tmp) / "data"
            data.mkdir()
            env = {"MEZZO_STORE": with_database(admin, mezzo_db), "MEZZO_LOG_LEVEL": args.log_level}
            node = await asyncio.to_thread(spawn_node, data, env, ("run", "--targets", "transactions,api"))
            for kind in FLOORS[args.floor] if args.floor else ():
                floor_procs[kind] = start_floor(kind, with_database(admin, mezzo_db), branches)
                floors[kind] = []
            print(f"clients {args.clients}, {args.seconds:g} s per side, PostgreSQL {urlsplit(admin).netloc}")
            for run in range(1, args.runs + 1):
                print(f"run {run}:")
                peer = await asyncio.to_thread(run_pgbench, with_database(admin, pgbench_db), args.clients,
                                               args.seconds, Path(tmp))
                show(peer)
                assert node.process is not None
                mine = await drive_sagas(node.url, node.token, branches, args.clients, args.seconds,
                                         node.process.pid)
                show(mine)
                print(f"  ratio (saga tx/s / pgbench tps): {mine.tps / peer.tps:.3f}")
                rows.append((mine, peer))
                for kind, (floor_proc, floor_url) in floor_procs.items():
                    floor = await drive_sagas(floor_url, "", branches, args.clients, args.seconds, floor_proc.pid,
                                              f"{kind} floor")
                    show(floor)
                    print(f"  {kind} floor ratio (floor sagas/s / pgbench tps): {floor.tps / peer.tps:.3f}; "
                          f"mezzo / floor: {mine.tps / floor.tps:.3f}")
                    floors[kind].append(floor)
    finally:
        if node is not None:
            stop_process(node)
        for floor_proc, _ in floor_procs.values():
            floor_proc.send_signal(signal.SIGTERM)
            floor_proc.wait(10)
        branches_proc.send_signal(signal.SIGTERM)
        branches_proc.wait(10)
        for db in (mezzo_db, pgbench_db):
            psql(admin, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    if len(rows) > 1:
        def med(values: list[float]) -> float:
            return statistics.median(values)

        print(f"median of {len(rows)} runs: saga {med([m.tps for m, _ in rows]):.1f} tx/s "
              f"(p50 {med([m.p50_ms for m, _ in rows]):.2f} ms, p99 {med([m.p99_ms for m, _ in rows]):.2f} ms), "
              f"pgbench {med([p.tps for _, p in rows]):.1f} tps "
              f"(p50 {med([p.p50_ms for _, p in rows]):.2f} ms, p99 {med([p.p99_ms for _, p in rows]):.2f} ms), "
              f"ratio {med([m.tps / p.tps for m, p in rows]):.3f}, node CPU {med([m.cpu_ms for m, _ in rows]):.2f} ms "
              f"per saga, machine CPU per tx: saga {med([m.machine_ms for m, _ in rows]):.2f} ms, "
              f"pgbench {med([p.machine_ms for _, p in rows]):.2f} ms")
        for kind, measured in floors.items():
            print(f"  {kind} floor: {med([f.tps for f in measured]):.1f} sagas/s, ratio to pgbench "
                  f"{med([f.tps / p.tps for f, (_, p) in zip(measured, rows, strict=True)]):.3f}, mezzo / floor "
                  f"{med([m.tps / f.tps for f, (m, _) in zip(measured, rows, strict=True)]):.3f}, server CPU "
                  f"{med([f.cpu_ms for f in measured]):.2f} ms, machine CPU {med([f.machine_ms for f in measured]):.2f}"
                  " ms per saga")
    return 0 if all(m.errors == 0 for m, _ in rows) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("branches", help="serve the branch app (used by the benchmark itself)")
    serve.add_argument("--port", type=int, required=True)
    floor = sub.add_parser("floor", help="serve the floor app (used by the benchmark itself)")
    floor.add_argument("--port", type=int, required=True)
    floor.add_argument("--dsn", required=True)
    floor.add_argument("--branches", required=True)
    parser.add_argument("--floor", nargs="?", const="both", choices=sorted(FLOORS),
                        help="also measure a floor (see above); alone: both")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--postgres", default=os.environ.get("MEZZO_TEST_POSTGRES_ADMIN",
                                                             "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--log-level", default="warning", help="the node's MEZZO_LOG_LEVEL")
    args = parser.parse_args()
    if args.command == "branches":
        serve_branches(args.port)
        return 0
    if args.command == "floor":
        serve_floor(args.port, args.dsn, args.branches)
        return 0
    if args.clients < 1 or args.seconds < 1 or args.runs < 1:
        parser.error("--clients, --seconds and --runs are at least 1")
    with machine.reported():
        return asyncio.run(bench(args))


if __name__ == "__main__":
    sys.exit(main())
