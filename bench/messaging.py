"""Messaging benchmark: Mezzo's embedded broker and NATS JetStream side by side, in one run.

    .venv/bin/python bench/messaging.py [--messages 50000] [--window 1000]

Both get 128-byte messages, publishes that wait for the broker's acknowledgement,
and pull consumers that ack every message, with the same number of messages in
flight (``--window``). Mezzo is driven over its HTTP API (batches of ``--batch``
messages per request, ``window / batch`` requests at once); JetStream with nats-py
(``window`` publishes awaiting their acks at once; file storage). Then both run at
a fixed 5k msg/s and report end-to-end latency (publish call to consumer receipt).
Needs nats-server with JetStream on 127.0.0.1:4222 (the CI machine runs one).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import struct
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import nats

from mezzo.testing.fixtures import spawn_node, stop_process

PAYLOAD = 128


def body(seq: int) -> bytes:
    """128 bytes: a send timestamp, a sequence number, padding."""
    return struct.pack("<dQ", time.time(), seq) + b"x" * (PAYLOAD - 16)


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else (values[0] if values else 0.0)


# --- Mezzo -------------------------------------------------------------------------------


async def mezzo_publish(http: httpx.AsyncClient, topic: str, total: int, window: int, batch: int) -> float:
    import base64

    sent = 0
    lock = asyncio.Lock()

    async def worker() -> None:
        nonlocal sent
        while True:
            async with lock:
                if sent >= total:
                    return
                start, sent = sent, min(sent + batch, total)
            msgs = [{"dataBase64": base64.b64encode(body(i)).decode()} for i in range(start, sent)]
            r = await http.post(f"/v1/topics/{topic}:publish", json={"messages": msgs})
            r.raise_for_status()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(max(window // batch, 1))))
    return total / (time.perf_counter() - t0)


async def mezzo_consume(http: httpx.AsyncClient, topic: str, total: int, window: int) -> float:
    got = 0
    t0 = time.perf_counter()
    while got < total:
        r = await http.post(f"/v1/topics/{topic}/groups/bench:pull", json={"max": min(window, 1000), "wait": 1})
        messages = r.json()["messages"]
        if messages:
            a = await http.post(f"/v1/topics/{topic}/groups/bench:ack", json={"receipts": [m["receipt"] for m in messages]})
            a.raise_for_status()
            got += len(messages)
    return total / (time.perf_counter() - t0)


async def mezzo_stream(url: str, token: str, topic: str, total: int, window: int) -> float:
    """Consume over the WebSocket consumer: batches flow while fewer than ``window`` are unacked."""
    import orjson
    import websockets

    ws_url = url.replace("http", "ws", 1) + f"/v1/topics/{topic}/groups/bench-ws:connect?maxInFlight={window}"
    got = 0
    t0 = time.perf_counter()
    async with websockets.connect(ws_url, additional_headers={"Authorization": f"Bearer {token}"},
                                  max_size=64 * 1024 * 1024) as ws:
        async for frame in ws:
            messages = orjson.loads(frame).get("messages", [])
            await ws.send(orjson.dumps({"ack": [m["receipt"] for m in messages]}).decode())
            got += len(messages)
            if got >= total:
                break
    return total / (time.perf_counter() - t0)


async def mezzo_latency(http: httpx.AsyncClient, topic: str, rate: int, seconds: float) -> list[float]:
    import base64

    latencies: list[float] = []
    done = asyncio.Event()

    async def consume() -> None:
        while not done.is_set() or latencies == []:
            r = await http.post(f"/v1/topics/{topic}/groups/lat:pull", json={"max": 500, "wait": 0.5})
            messages = r.json()["messages"]
            now = time.time()
            for m in messages:
                sent, _ = struct.unpack_from("<dQ", base64.b64decode(m["dataBase64"]))
                latencies.append(now - sent)
            if messages:
                await http.post(f"/v1/topics/{topic}/groups/lat:ack", json={"receipts": [m["receipt"] for m in messages]})

    async def produce() -> None:
        per_tick = max(rate // 100, 1)  # one batch every 10 ms
        t0 = time.perf_counter()
        n = 0
        while time.perf_counter() - t0 < seconds:
            msgs = [{"dataBase64": base64.b64encode(body(n + i)).decode()} for i in range(per_tick)]
            await http.post(f"/v1/topics/{topic}:publish", json={"messages": msgs})
            n += per_tick
            await asyncio.sleep(max(t0 + n / rate - time.perf_counter(), 0))
        done.set()

    r = await http.post(f"/v1/topics/{topic}:publish", json={"dataBase64": base64.b64encode(body(-1 % 2**63)).decode()})
    r.raise_for_status()  # creates the topic before the consumer asks for it
    await asyncio.gather(consume(), produce())
    return latencies


# --- JetStream -----------------------------------------------------------------------------


async def js_publish(js, subject: str, total: int, window: int) -> float:  # type: ignore[no-untyped-def]
    sem = asyncio.Semaphore(window)

    async def one(i: int) -> None:
        try:
            await js.publish(subject, body(i))
        finally:
            sem.release()

    t0 = time.perf_counter()
    tasks = []
    for i in range(total):
        await sem.acquire()
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    return total / (time.perf_counter() - t0)


async def js_consume(js, subject: str, stream: str, total: int, window: int) -> float:  # type: ignore[no-untyped-def]
    sub = await js.pull_subscribe(subject, durable="bench", stream=stream)
    got = 0
    t0 = time.perf_counter()
    while got < total:
        try:
            msgs = await sub.fetch(min(window, 1000), timeout=1)
        except nats.errors.TimeoutError:
            continue
        await asyncio.gather(*(m.ack() for m in msgs))
        got += len(msgs)
    return total / (time.perf_counter() - t0)


async def js_latency(js, subject: str, stream: str, rate: int, seconds: float) -> list[float]:  # type: ignore[no-untyped-def]
    sub = await js.pull_subscribe(subject, durable="lat", stream=stream)
    latencies: list[float] = []
    done = asyncio.Event()

    async def consume() -> None:
        while not done.is_set() or latencies == []:
            try:
                msgs = await sub.fetch(500, timeout=0.5)
            except nats.errors.TimeoutError:
                continue
            now = time.time()
            for m in msgs:
                latencies.append(now - struct.unpack_from("<dQ", m.data)[0])
            await asyncio.gather(*(m.ack() for m in msgs))

    async def produce() -> None:
        tick_n = max(rate // 100, 1)
        t0 = time.perf_counter()
        n = 0
        while time.perf_counter() - t0 < seconds:
            await asyncio.gather(*(js.publish(subject, body(n + i)) for i in range(tick_n)))
            n += tick_n
            await asyncio.sleep(max(t0 + n / rate - time.perf_counter(), 0))
        done.set()

    await asyncio.gather(consume(), produce())
    return latencies


async def main() -> None:
    import gc

    gc.freeze()  # the client's own collections would show up as latency, on both sides alike
    gc.set_threshold(50_000, 50, 100)
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--nats", default=os.environ.get("MEZZO_TEST_NATS", "nats://127.0.0.1:4222"))
    args = parser.parse_args()

    data = Path(tempfile.mkdtemp(prefix="mezzo-bench-"))
    node = spawn_node(data, {"MEZZO_LOG_LEVEL": "warning"})
    results: dict[str, dict[str, float]] = {"mezzo": {}, "jetstream": {}}
    try:
        async with httpx.AsyncClient(base_url=node.url, headers={"Authorization": f"Bearer {node.token}"},
                                     timeout=60, limits=httpx.Limits(max_connections=64)) as http:
            topic = f"bench-{uuid.uuid4().hex[:6]}"
            results["mezzo"]["publish"] = await mezzo_publish(http, topic, args.messages, args.window, args.batch)
            results["mezzo"]["consume"] = await mezzo_consume(http, topic, args.messages, args.window)
            results["mezzo"]["stream"] = await mezzo_stream(node.url, node.token, topic, args.messages, args.window)
            lat = await mezzo_latency(http, topic + "-lat", args.rate, args.seconds)
            results["mezzo"]["p50"], results["mezzo"]["p99"] = pct(lat, 50) * 1000, pct(lat, 99) * 1000
    finally:
        stop_process(node)
        shutil.rmtree(data, ignore_errors=True)

    nc = await nats.connect(args.nats)
    js = nc.jetstream()
    stream = f"BENCH{uuid.uuid4().hex[:6].upper()}"
    await js.add_stream(name=stream, subjects=[f"{stream}.>"], storage="file")
    try:
        results["jetstream"]["publish"] = await js_publish(js, f"{stream}.a", args.messages, args.window)
        results["jetstream"]["consume"] = await js_consume(js, f"{stream}.a", stream, args.messages, args.window)
        lat = await js_latency(js, f"{stream}.lat", stream, args.rate, args.seconds)
        results["jetstream"]["p50"], results["jetstream"]["p99"] = pct(lat, 50) * 1000, pct(lat, 99) * 1000
    finally:
        await js.delete_stream(stream)
        await nc.close()

    m, j = results["mezzo"], results["jetstream"]
    print(f"{'':24}{'mezzo':>12}{'jetstream':>12}{'ratio':>8}")
    rows = (("publish", "publish"), ("pull + ack", "consume"), ("ws stream + ack", "stream"))
    for label, key in rows:
        theirs = j["consume"] if key == "stream" else j[key]  # JetStream's consumer is the same in both rows
        print(f"{label + ' (msg/s)':24}{m[key]:12.0f}{theirs:12.0f}{m[key] / theirs:8.2f}")
    for name in ("p50", "p99"):
        print(f"{'e2e ' + name + ' @' + str(args.rate) + '/s (ms)':24}{m[name]:12.2f}{j[name]:12.2f}{m[name] / j[name]:8.2f}")


if __name__ == "__main__":
    asyncio.run(main())
