"""Messaging benchmark: Mezzo's embedded broker and NATS JetStream side by side, in one run.

    .venv/bin/python bench/messaging.py [--messages 50000] [--window 1000] [--batch 100] [--format frames|json]

Both get 128-byte messages, publishes that wait for the broker's acknowledgement,
and consumers that ack every message, with the same number of messages in flight
(``--window``). JetStream is driven with nats-py (``window`` publishes awaiting their
acks at once; ``fetch`` and one ack per message; file storage). Mezzo is driven over
HTTP (publish: batches of ``--batch`` messages, ``window / batch`` requests at once;
pull of up to ``window``, then one ack request) and over its WebSockets (the producer
socket with ``window / batch`` batches unanswered at once; the consumer socket with
``maxInFlight=window``). Then both run at a fixed rate (``--rate``) and report
end-to-end latency, publish call to consumer receipt; there the consumers send their
acks without waiting for an answer before pulling again, as nats-py's ``ack()`` does.
Each JetStream phase runs next to the Mezzo phases it is compared with. Needs
nats-server with JetStream on 127.0.0.1:4222 (the CI machine runs one).

Messages travel as raw bytes on both sides: nats-py sends them in NATS frames, and
Mezzo's side uses its binary message frames (``application/vnd.mezzo.frames``,
``mezzo/messaging/codec.py``); ``--format json`` drives Mezzo with JSON and base64
instead, as a browser would (and skips the producer socket, which takes frames only).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib.util
import os
import shutil
import statistics
import struct
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import nats
import orjson

if importlib.util.find_spec("sniffio") is None:
    # httpcore tries ``import sniffio`` on every request and, when it is not installed, pays a
    # failed search of sys.path each time (a quarter of this client's CPU): fail it at once.
    sys.modules["sniffio"] = None  # type: ignore[assignment]

import machine  # bench/machine.py: the machine's speed around the measurement

from mezzo.messaging.codec import FRAMES, decode_delivery_frames, encode_publish_frame
from mezzo.testing.fixtures import spawn_node, stop_process

PAYLOAD = 128


def body(seq: int) -> bytes:
    """128 bytes: a send timestamp, a sequence number, padding."""
    return struct.pack("<dQ", time.time(), seq) + b"x" * (PAYLOAD - 16)


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else (values[0] if values else 0.0)


# --- Mezzo -------------------------------------------------------------------------------

JSON_BODY = {"Content-Type": "application/json"}


def publish_request(seqs: range, fmt: str) -> dict[str, Any]:
    """httpx arguments of one publish of these messages."""
    if fmt == "frames":
        return {"content": b"".join([encode_publish_frame(body(i)) for i in seqs]), "headers": {"Content-Type": FRAMES}}
    msgs = [{"dataBase64": base64.b64encode(body(i)).decode()} for i in seqs]
    return {"content": orjson.dumps({"messages": msgs}), "headers": JSON_BODY}


async def pull_messages(http: httpx.AsyncClient, path: str, max_messages: int, wait: float,
                        fmt: str) -> list[tuple[str, bytes]]:
    """(receipt, data) of each message one pull returns."""
    headers = {**JSON_BODY, "Accept": FRAMES} if fmt == "frames" else JSON_BODY
    r = await http.post(path, content=orjson.dumps({"max": max_messages, "wait": wait}), headers=headers)
    r.raise_for_status()
    return received(r.content, fmt)


def received(content: bytes, fmt: str) -> list[tuple[str, bytes]]:
    if fmt == "frames":
        return [(f.receipt, f.data) for f in decode_delivery_frames(content)]
    # an octet-stream body that happens to be UTF-8 comes back as text
    return [(m["receipt"], base64.b64decode(m["dataBase64"]) if "dataBase64" in m else m["data"].encode())
            for m in orjson.loads(content)["messages"]]


async def ack(http: httpx.AsyncClient, path: str, receipts: list[str]) -> None:
    r = await http.post(path, content=orjson.dumps({"receipts": receipts}), headers=JSON_BODY)
    r.raise_for_status()


async def mezzo_publish(http: httpx.AsyncClient, topic: str, total: int, window: int, batch: int, fmt: str) -> float:
    sent = 0

    async def worker() -> None:
        nonlocal sent
        while sent < total:
            start, sent = sent, min(sent + batch, total)
            r = await http.post(f"/v1/topics/{topic}:publish", **publish_request(range(start, sent), fmt))
            r.raise_for_status()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(max(window // batch, 1))))
    return total / (time.perf_counter() - t0)


async def mezzo_publish_ws(url: str, token: str, topic: str, total: int, window: int, batch: int, fmt: str) -> float:
    """Publish over one WebSocket: ``window / batch`` batches awaiting their answers at once."""
    import websockets

    if fmt != "frames":
        raise ValueError("the WebSocket producer takes binary frames only")
    ws_url = url.replace("http", "ws", 1) + f"/v1/topics/{topic}:publish"
    sent = answered = 0
    t0 = time.perf_counter()
    async with websockets.connect(ws_url, additional_headers={"Authorization": f"Bearer {token}"},
                                  max_size=64 * 1024 * 1024, compression=None) as ws:

        async def send(number: int) -> None:
            nonlocal sent
            start, sent = sent, min(sent + batch, total)
            await ws.send(number.to_bytes(4, "little") + publish_request(range(start, sent), fmt)["content"])

        for number in range(max(window // batch, 1)):
            if sent < total:
                await send(number)
        async for answer in ws:
            result = orjson.loads(answer)
            if "error" in result:
                raise RuntimeError(result["error"])
            answered += len(result["messages"])
            if answered >= total:
                break
            if sent < total:
                await send(result["id"])
    return total / (time.perf_counter() - t0)


async def mezzo_consume(http: httpx.AsyncClient, topic: str, total: int, window: int, fmt: str) -> float:
    got = 0
    t0 = time.perf_counter()
    while got < total:
        messages = await pull_messages(http, f"/v1/topics/{topic}/groups/bench:pull", min(window, 1000), 1, fmt)
        if messages:
            await ack(http, f"/v1/topics/{topic}/groups/bench:ack", [receipt for receipt, _ in messages])
            got += len(messages)
    return total / (time.perf_counter() - t0)


async def mezzo_stream(url: str, token: str, topic: str, total: int, window: int, fmt: str) -> float:
    """Consume over the WebSocket consumer: batches flow while fewer than ``window`` are unacked."""
    import websockets

    ws_url = url.replace("http", "ws", 1) + f"/v1/topics/{topic}/groups/bench-ws:connect?maxInFlight={window}&format={fmt}"
    got = 0
    t0 = time.perf_counter()
    # no permessage-deflate: it would spend both sides' CPU on loopback (NATS compresses nothing either)
    async with websockets.connect(ws_url, additional_headers={"Authorization": f"Bearer {token}"},
                                  max_size=64 * 1024 * 1024, compression=None) as ws:
        async for frame in ws:
            messages = received(frame, fmt)  # type: ignore[arg-type]
            await ws.send(orjson.dumps({"ack": [receipt for receipt, _ in messages]}).decode())
            got += len(messages)
            if got >= total:
                break
    return total / (time.perf_counter() - t0)


async def mezzo_latency(http: httpx.AsyncClient, topic: str, rate: int, seconds: float, fmt: str) -> list[float]:
    latencies: list[float] = []
    done = asyncio.Event()
    acks: list[asyncio.Task[None]] = []

    async def consume() -> None:
        while not done.is_set() or latencies == []:
            messages = await pull_messages(http, f"/v1/topics/{topic}/groups/lat:pull", 500, 0.5, fmt)
            now = time.time()
            for _, data in messages:
                latencies.append(now - struct.unpack_from("<dQ", data)[0])
            if messages:  # sent, not awaited before the next pull: as nats-py's ack() (a publish) is not
                acks.append(asyncio.create_task(ack(http, f"/v1/topics/{topic}/groups/lat:ack", [r for r, _ in messages])))
        await asyncio.gather(*acks)

    async def produce() -> None:
        per_tick = max(rate // 100, 1)  # one batch every 10 ms
        t0 = time.perf_counter()
        n = 0
        while time.perf_counter() - t0 < seconds:
            await http.post(f"/v1/topics/{topic}:publish", **publish_request(range(n, n + per_tick), fmt))
            n += per_tick
            await asyncio.sleep(max(t0 + n / rate - time.perf_counter(), 0))
        done.set()

    r = await http.post(f"/v1/topics/{topic}:publish", **publish_request(range(2**62, 2**62 + 1), fmt))
    r.raise_for_status()  # creates the topic before the consumer asks for it
    await asyncio.gather(consume(), produce())
    return latencies


async def mezzo_latency_ws(url: str, token: str, topic: str, rate: int, seconds: float) -> list[float]:
    """``mezzo_latency`` with Mezzo's WebSocket producer and consumer (binary frames)."""
    import websockets

    latencies: list[float] = []
    done = asyncio.Event()
    headers = {"Authorization": f"Bearer {token}"}
    base = url.replace("http", "ws", 1) + f"/v1/topics/{topic}"
    async with websockets.connect(base + ":publish", additional_headers=headers, compression=None) as producer:
        await producer.send(b"\0\0\0\0" + publish_request(range(2**62, 2**62 + 1), "frames")["content"])
        await producer.recv()  # the topic exists before the consumer connects

        async def consume() -> None:
            async with websockets.connect(base + "/groups/lat:connect?format=frames&maxInFlight=1000",
                                          additional_headers=headers, compression=None,
                                          max_size=64 * 1024 * 1024) as ws:
                while not done.is_set() or latencies == []:
                    try:
                        frame = await asyncio.wait_for(ws.recv(), 0.5)
                    except TimeoutError:
                        continue
                    now = time.time()
                    messages = received(frame, "frames")  # type: ignore[arg-type]
                    for _, data in messages:
                        latencies.append(now - struct.unpack_from("<dQ", data)[0])
                    await ws.send(orjson.dumps({"ack": [receipt for receipt, _ in messages]}).decode())

        async def produce() -> None:
            per_tick = max(rate // 100, 1)  # one batch every 10 ms
            t0 = time.perf_counter()
            sent = 0
            while time.perf_counter() - t0 < seconds:
                await producer.send(b"\1\0\0\0" + publish_request(range(sent, sent + per_tick), "frames")["content"])
                await producer.recv()
                sent += per_tick
                await asyncio.sleep(max(t0 + sent / rate - time.perf_counter(), 0))
            done.set()

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
    parser.add_argument("--format", choices=("frames", "json"), default="frames", help="Mezzo's wire format")
    parser.add_argument("--nats", default=os.environ.get("MEZZO_TEST_NATS", "nats://127.0.0.1:4222"))
    args = parser.parse_args()
    n, window, batch, fmt = args.messages, args.window, args.batch, args.format

    data = Path(tempfile.mkdtemp(prefix="mezzo-bench-"))
    node = spawn_node(data, {"MEZZO_LOG_LEVEL": "warning"})
    nc = await nats.connect(args.nats)
    js = nc.jetstream()
    stream = f"BENCH{uuid.uuid4().hex[:6].upper()}"
    await js.add_stream(name=stream, subjects=[f"{stream}.>"], storage="file")
    m: dict[str, float] = {}
    j: dict[str, float] = {}
    try:
        async with httpx.AsyncClient(base_url=node.url, headers={"Authorization": f"Bearer {node.token}"},
                                     timeout=60, limits=httpx.Limits(max_connections=64)) as http:
            topic = f"bench-{uuid.uuid4().hex[:6]}"
            # each JetStream phase runs next to the Mezzo phases it is compared with: the machine's
            # load drifts over a run, and a ratio of neighbours drifts least
            m["publish"] = await mezzo_publish(http, topic, n, window, batch, fmt)
            j["publish"] = await js_publish(js, f"{stream}.a", n, window)
            if fmt == "frames":
                m["publish_ws"] = await mezzo_publish_ws(node.url, node.token, topic + "-ws", n, window, batch, fmt)
            m["consume"] = await mezzo_consume(http, topic, n, window, fmt)
            j["consume"] = await js_consume(js, f"{stream}.a", stream, n, window)
            m["stream"] = await mezzo_stream(node.url, node.token, topic, n, window, fmt)
            lat = await mezzo_latency(http, topic + "-lat", args.rate, args.seconds, fmt)
            m["p50"], m["p99"] = pct(lat, 50) * 1000, pct(lat, 99) * 1000
            jlat = await js_latency(js, f"{stream}.lat", stream, args.rate, args.seconds)
            j["p50"], j["p99"] = pct(jlat, 50) * 1000, pct(jlat, 99) * 1000
            if fmt == "frames":
                lat = await mezzo_latency_ws(node.url, node.token, topic + "-latws", args.rate, args.seconds)
                m["p50_ws"], m["p99_ws"] = pct(lat, 50) * 1000, pct(lat, 99) * 1000
    finally:
        stop_process(node)
        shutil.rmtree(data, ignore_errors=True)
        await js.delete_stream(stream)
        await nc.close()

    print(f"{'':33}{'mezzo':>10}{'jetstream':>11}{'ratio':>7}")
    rows = (("publish, HTTP", "publish", "publish"), ("publish, WebSocket", "publish_ws", "publish"),
            ("pull + ack, HTTP", "consume", "consume"), ("stream + ack, WebSocket", "stream", "consume"))
    for label, key, theirs in rows:  # JetStream has one client for each: publish, and fetch + ack
        if key in m:
            print(f"{label + ' (msg/s)':33}{m[key]:10.0f}{j[theirs]:11.0f}{m[key] / j[theirs]:7.2f}")
    for label, key, theirs in (("e2e p50, HTTP (ms)", "p50", "p50"), ("e2e p99, HTTP (ms)", "p99", "p99"),
                               ("e2e p50, WebSocket (ms)", "p50_ws", "p50"), ("e2e p99, WebSocket (ms)", "p99_ws", "p99")):
        if key in m:
            print(f"{label:33}{m[key]:10.2f}{j[theirs]:11.2f}{m[key] / j[theirs]:7.2f}")
    print(f"(end-to-end latency at {args.rate} msg/s for {args.seconds:g} s; {n} messages of {PAYLOAD} bytes, "
          f"{window} in flight, Mezzo format {fmt})")


if __name__ == "__main__":
    with machine.reported():
        asyncio.run(main())
