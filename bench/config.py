"""Config push benchmark: Mezzo's config center and etcd side by side, in one run.

    .venv/bin/python bench/config.py [--watchers 1000] [--publishes 50]

One Mezzo node (``mezzo up``, embedded SQLite store) and one etcd server (Debian's
``etcd-server``, started here on free ports, default durability) each get ``--watchers``
concurrent watchers from this process: Mezzo's over its server-sent event stream
(``GET /v1/config/stream``), etcd's over its v3 JSON gateway (``POST /v3/watch``), both
read by the same minimal asyncio client (so the client's cost is small and equal). Then ``--publishes`` times: Mezzo publishes
a new release of the watched namespace, etcd puts the watched key; the time from the
publish call to the moment the last watcher has the change is one sample. Prints p50/p99
of both and the ratio. Needs ``etcd`` on the PATH (``apt-get install etcd-server``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import machine  # bench/machine.py: the machine's speed around the measurement

from mezzo.testing.fixtures import spawn_node, stop_process

NS = "/v1/config/apps/bench/envs/default/clusters/default/namespaces/application"


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Fanout:
    """Counts which watchers have seen each version; records when the last one did."""

    def __init__(self, watchers: int) -> None:
        self.watchers = watchers
        self.seen: dict[int, int] = {}
        self.done: dict[int, asyncio.Future[float]] = {}
        self.ready = 0

    def expect(self, version: int) -> asyncio.Future[float]:
        fut = self.done[version] = asyncio.get_running_loop().create_future()
        return fut

    def got(self, version: int) -> None:
        count = self.seen[version] = self.seen.get(version, 0) + 1
        fut = self.done.get(version)
        if count == self.watchers and fut is not None and not fut.done():
            fut.set_result(time.perf_counter())


async def measure(fanout: Fanout, publishes: int, publish: Callable[[int], Awaitable[None]],
                  prepare: Callable[[int], Awaitable[None]] | None = None) -> list[float]:
    samples = []
    for version in range(2, publishes + 2):
        if prepare is not None:
            await prepare(version)  # untimed: editing the draft is not part of the push
        done = fanout.expect(version)
        started = time.perf_counter()
        await publish(version)
        finished = await asyncio.wait_for(done, 60)
        samples.append(finished - started)
        await asyncio.sleep(0.05)
    return samples


# --- Mezzo -------------------------------------------------------------------------------

async def raw_watch(url: str, request: bytes, marker: bytes, fanout: Fanout, decode: Callable[[bytes], int]) -> None:
    """Send one HTTP request and scan the streamed answer for ``marker"..."``: the cheapest client
    Python allows, so the numbers show the servers, not the client (the same code for both)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    fanout.ready += 1
    tail = b""
    try:
        while chunk := await reader.read(65536):
            data = tail + chunk
            start = data.find(marker)
            last = 0
            while start >= 0:
                end = data.find(b'"', start + len(marker))
                if end < 0:
                    break
                fanout.got(decode(data[start + len(marker):end]))
                last = end
                start = data.find(marker, end)
            tail = data[max(last, len(data) - 256):]
    finally:
        writer.close()


def http_request(method: str, url: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    host = url.removeprefix("http://")
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}",
             *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def run_mezzo(watchers: int, publishes: int) -> list[float]:
    data = Path(tempfile.mkdtemp(prefix="mezzo-bench-"))
    node = spawn_node(data, {"MEZZO_LOG_LEVEL": "warning"})
    tasks: list[asyncio.Task[None]] = []
    try:
        headers = {"Authorization": f"Bearer {node.token}"}
        limits = httpx.Limits(max_connections=watchers + 10, max_keepalive_connections=watchers + 10)
        async with httpx.AsyncClient(base_url=node.url, headers=headers, timeout=None, limits=limits) as http:
            await http.put(f"{NS}/items/value", json={"value": "1"})
            await http.post(f"{NS}:publish", json={})
            fanout = Fanout(watchers)
            request = http_request("GET", node.url, "/v1/config/stream?app=bench&namespace=application",
                                   {**headers, "Accept": "text/event-stream"})
            tasks = [asyncio.create_task(raw_watch(node.url, request, b'"releaseKey":"bench-', fanout,
                                                   lambda v: int(v.split(b"-")[0])))
                     for _ in range(watchers)]
            while fanout.seen.get(1, 0) < watchers:  # every watcher has the first release
                await asyncio.sleep(0.05)

            async def edit(version: int) -> None:
                await http.put(f"{NS}/items/value", json={"value": str(version)})

            async def publish(version: int) -> None:
                r = await http.post(f"{NS}:publish", json={})
                assert r.status_code == 200, r.text

            return await measure(fanout, publishes, publish, edit)
    finally:
        for task in tasks:
            task.cancel()
        stop_process(node)
        shutil.rmtree(data, ignore_errors=True)


# --- etcd --------------------------------------------------------------------------------

def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def run_etcd(watchers: int, publishes: int) -> list[float]:
    data = Path(tempfile.mkdtemp(prefix="etcd-bench-"))
    client, peer = free_port(), free_port()
    process = subprocess.Popen(
        ["etcd", "--data-dir", str(data), "--listen-client-urls", f"http://127.0.0.1:{client}",
         "--advertise-client-urls", f"http://127.0.0.1:{client}", "--listen-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-cluster", f"default=http://127.0.0.1:{peer}", "--log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tasks: list[asyncio.Task[None]] = []
    try:
        limits = httpx.Limits(max_connections=watchers + 10, max_keepalive_connections=watchers + 10)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{client}", timeout=None, limits=limits) as http:
            for _ in range(200):
                try:
                    await http.post("/v3/kv/put", json={"key": b64("bench/value"), "value": b64("1")})
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            fanout = Fanout(watchers)
            body = json.dumps({"create_request": {"key": b64("bench/value")}}).encode()
            request = http_request("POST", f"http://127.0.0.1:{client}", "/v3/watch",
                                   {"Content-Type": "application/json"}, body)
            tasks = [asyncio.create_task(raw_watch(f"http://127.0.0.1:{client}", request, b'"value":"', fanout,
                                                   lambda v: int(base64.b64decode(v))))
                     for _ in range(watchers)]
            while fanout.ready < watchers:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # watch creation is acknowledged asynchronously

            async def publish(version: int) -> None:
                r = await http.post("/v3/kv/put", json={"key": b64("bench/value"), "value": b64(str(version))})
                assert r.status_code == 200, r.text

            return await measure(fanout, publishes, publish)
    finally:
        for task in tasks:
            task.cancel()
        process.terminate()
        process.wait(10)
        shutil.rmtree(data, ignore_errors=True)


async def main() -> None:
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    parser = argparse.ArgumentParser()
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--publishes", type=int, default=50)
    args = parser.parse_args()
    if shutil.which("etcd") is None:
        raise SystemExit("etcd is not installed: apt-get install etcd-server")
    mezzo = await run_mezzo(args.watchers, args.publishes)
    etcd = await run_etcd(args.watchers, args.publishes)
    print(f"{args.watchers} watchers, {args.publishes} publishes; publish -> last watcher notified")
    print(f"{'':12}{'mezzo':>10}{'etcd':>10}{'ratio':>8}")
    for q in (50, 99):
        m, e = pct(mezzo, q) * 1000, pct(etcd, q) * 1000
        print(f"{'p' + str(q) + ' (ms)':12}{m:10.1f}{e:10.1f}{m / e:8.2f}")


if __name__ == "__main__":
    with machine.reported():
        asyncio.run(main())
