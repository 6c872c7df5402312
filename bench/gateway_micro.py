"""The gateway's own Python cost per request, with no sockets: a profiling aid, not a peer comparison.

    .venv/bin/python bench/gateway_micro.py [--requests 200000] [--plugins] [--profile]

Drives the data plane's objects directly, as the event loop would: a client connection's
``data_received`` gets wrk's request bytes, the pooled upstream connection it writes to gets the
answer nginx gives in ``bench/gateway.sh`` (a static 200 with a 3-byte body), and the client's
transport collects the response. Transports are stand-ins that only count bytes, so what is
measured is the gateway's Python alone: the part of ``CPU us/req`` in ``bench/gateway.sh`` that is
not the kernel's or the event loop's. ``--plugins`` uses the benchmark's key-auth + limit-count +
prometheus route; ``--profile`` prints cProfile's busiest functions and the calls per request.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from typing import Any

import machine  # bench/machine.py: the machine's speed around the measurement
import uvloop

from mezzo.gateway.client import ClientConnection, Limits
from mezzo.gateway.model import ConsumerSpec, RouteSpec, UpstreamSpec
from mezzo.gateway.runtime import Gateway
from mezzo.gateway.upstream import UpstreamConnection

RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 27 Nov 2026 16:40:00 GMT\r\n"
            b"Content-Type: text/plain\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nok\n")


class Transport:
    """Counts what is written; reading is a no-op (the bench feeds ``data_received`` itself)."""

    def __init__(self) -> None:
        self.written = 0
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)
        self.writes += 1

    def writelines(self, parts: Any) -> None:
        for part in parts:
            self.write(part)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...
    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


async def build(plugins: bool) -> tuple[Gateway, ClientConnection, UpstreamConnection, Transport, bytes]:
    gateway = Gateway(Limits())
    gateway.changed("Upstream", "ADDED", "default", "bench",
                    UpstreamSpec.model_validate({"nodes": [{"host": "127.0.0.1", "port": 9}]}), 1)
    route: dict[str, Any] = {"paths": ["/x/*"], "upstream": "bench"}
    if plugins:
        route["plugins"] = {"key-auth": {}, "limit-count": {"count": 10**12, "window": "60s", "key": "consumer"},
                            "prometheus": {}}
        gateway.changed("Consumer", "ADDED", "default", "bench",
                        ConsumerSpec.model_validate({"credentials": {"key-auth": {"key": "bench-key"}}}), 1)
    gateway.changed("Route", "ADDED", "default", "r", RouteSpec.model_validate(route), 1)
    gateway._apply()
    node = gateway.snapshot.upstreams["default/bench"].nodes[0]
    conn = UpstreamConnection(node)
    conn.connection_made(Transport())  # type: ignore[arg-type]
    node.idle.append(conn)
    client = ClientConnection(gateway)
    client_transport = Transport()
    client.connection_made(client_transport)  # type: ignore[arg-type]
    request = b"GET /x/y HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n" + (b"apikey: bench-key\r\n" if plugins else b"") + b"\r\n"
    return gateway, client, conn, client_transport, request


def once(client: ClientConnection, conn: UpstreamConnection, request: bytes) -> None:
    client.data_received(request)
    conn.data_received(RESPONSE)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--plugins", action="store_true")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    _, client, conn, out, request = await build(args.plugins)
    for _ in range(1000):  # warm up; also checks that every request is answered on the pooled connection
        once(client, conn, request)
    if out.written == 0 or not conn.node.idle:
        raise SystemExit("the gateway did not answer from the pooled connection")
    n = args.requests
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
    started = time.process_time()
    for _ in range(n):
        once(client, conn, request)
    spent = time.process_time() - started
    if args.profile:
        profiler.disable()
        stats = pstats.Stats(profiler)
        calls = sum(v[1] for v in stats.stats.values())  # type: ignore[attr-defined]
        print(f"{calls / n:.1f} Python-level calls per request")
        stats.sort_stats("tottime").print_stats(25)
    print(f"{'plugins' if args.plugins else 'plain'}: {spent / n * 1e6:.2f} us of Python per request"
          f" ({n} requests{', under cProfile' if args.profile else ''}); {out.writes / (n + 1000):.2f} writes each")


if __name__ == "__main__":
    with machine.reported():
        uvloop.run(main())  # the gateway's own loop
