"""The least a saga coordinator on raw asyncio can do per saga: the floor under any Python
coordinator, for ``bench/transactions.py --floor raw``.

    .venv/bin/python bench/transactions_floor.py --port PORT --dsn POSTGRES_URL

One process, uvloop. The submission is parsed by httptools and its body by orjson only as far as the
steps' action URLs and the payloads. Per saga: an INSERT of the transaction row (asyncpg pool, no
reset query on release; ``synchronous_commit`` as the server has it, on: as durable as Mezzo's log),
the steps' actions POSTed one after another (DTM's query parameters, JSON payload) over raw keep-alive
asyncio connections parsed by httptools (a small pool of idle connections per host), an UPDATE of
the row to its end, and the answer. No validation, no auth, no leases, no per-branch records, no
compensation, no recovery, no telemetry: if a throughput is out of reach here, it is out of reach for
any coordinator in Python on this machine. One request at a time per client connection (no
pipelining), as the benchmark's clients send.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httptools
import orjson
import uvloop

IDLE_PER_HOST = 16  # idle keep-alive connections kept per branch host; more are closed once answered
INSERT = "INSERT INTO floor_tx (gid, status, doc) VALUES ($1, 'submitted', $2)"
UPDATE = "UPDATE floor_tx SET status = $2 WHERE gid = $1"


# branch calls ----------------------------------------------------------------------------------------


class BranchConnection(asyncio.Protocol):
    """One keep-alive connection to a branch host; one request in flight at a time."""

    def __init__(self, host: BranchHost) -> None:
        self.host = host
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"bad answer: {exc}"))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        waiter, self.waiter = self.waiter, None
        body, self.body = b"".join(self.body), []
        if waiter is not None and not waiter.done():
            waiter.set_result((self.parser.get_status_code(), body))
        if self.parser.should_keep_alive() and len(self.host.idle) < IDLE_PER_HOST:
            self.host.idle.append(self)  # most recently used first
        elif self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.host.idle:
            self.host.idle.remove(self)
        self._fail(exc or ConnectionError("closed by the branch host"))

    def _fail(self, exc: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.close()


class BranchHost:
    """The idle connections to one ``host:port`` and the requests to it."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[BranchConnection] = []

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        reused = bool(self.idle)
        while True:
            if self.idle:
                conn = self.idle.pop()
            else:
                _, conn = await loop.create_connection(lambda: BranchConnection(self), self.host, self.port)
            conn.waiter = loop.create_future()
            assert conn.transport is not None
            conn.transport.write(raw)
            try:
                return await conn.waiter
            except ConnectionError:
                if not reused:
                    raise
                reused = False  # the host closed an idle connection meanwhile: once more on a new one


class Target:
    """A branch URL split once: its host's pool and the start of its request line."""

    __slots__ = ("host", "netloc", "path")

    def __init__(self, url: str, hosts: dict[tuple[str, int], BranchHost]) -> None:
        parts = urlsplit(url)
        key = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.host = hosts.get(key) or hosts.setdefault(key, BranchHost(*key))
        self.netloc = parts.netloc.encode()
        path = parts.path or "/"
        self.path = (path + ("?" + parts.query + "&" if parts.query else "?")).encode()


def branch_request(target: Target, gid: bytes, branch_id: bytes, payload: bytes) -> bytes:
    return b"".join((b"POST ", target.path, b"gid=", gid, b"&trans_type=saga&branch_id=", branch_id,
                     b"&op=action HTTP/1.1\r\nHost: ", target.netloc,
                     b"\r\nContent-Type: application/json\r\nContent-Length: ", b"%d" % len(payload), b"\r\n\r\n",
                     payload))


# the coordinator ----------------------------------------------------------------------------------------


class Floor:
    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.hosts: dict[tuple[str, int], BranchHost] = {}
        self.targets: dict[str, Target] = {}
        self.running: set[asyncio.Task[None]] = set()  # the sagas in flight (a task nobody holds may vanish)

    def target(self, url: str) -> Target:
        found = self.targets.get(url)
        if found is None:
            found = self.targets[url] = Target(url, self.hosts)
        return found

    async def saga(self, body: bytes) -> tuple[bytes, bytes]:
        """Run one saga; returns its gid and final status."""
        doc = orjson.loads(body)
        steps, payloads = doc["steps"], doc.get("payloads") or []
        gid = uuid.uuid4().hex
        await self.pool.execute(INSERT, gid, body)
        status = b"succeed"
        for index, step in enumerate(steps):
            payload = payloads[index] if index < len(payloads) else ""
            data = payload.encode() if isinstance(payload, str) else orjson.dumps(payload)
            target = self.target(step["action"])
            answer, said = await target.host.request(branch_request(target, gid.encode(), b"%02d" % (index + 1), data))
            if answer != 200 or b"FAILURE" in said:
                status = b"failed"  # the floor does not compensate
                break
        await self.pool.execute(UPDATE, gid, status.decode())
        return gid.encode(), status


class Submission(asyncio.Protocol):
    """A client connection to the coordinator: every complete request is a saga to run."""

    def __init__(self, floor: Floor) -> None:
        self.floor = floor
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._answer(400, b'{"error":"bad request"}', False)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        body, self.body = b"".join(self.body), []
        task = asyncio.get_running_loop().create_task(self._run(body, self.parser.should_keep_alive()))
        self.floor.running.add(task)
        task.add_done_callback(self.floor.running.discard)

    async def _run(self, body: bytes, keep_alive: bool) -> None:
        try:
            gid, status = await self.floor.saga(body)
        except Exception as exc:  # the answer says what went wrong; the floor keeps serving
            self._answer(500, orjson.dumps({"error": f"{type(exc).__name__}: {exc}"}), keep_alive)
            return
        self._answer(201, b'{"gid":"%s","status":"%s"}' % (gid, status), keep_alive)

    def _answer(self, status: int, body: bytes, keep_alive: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                             % (status, b"Created" if status == 201 else b"Error", len(body), body))
        if not keep_alive:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def _no_reset(conn: Any) -> None:
    """Connections go back to the pool as they are (as Mezzo's store does): no reset round trip."""


async def serve(port: int, dsn: str) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=10, reset=_no_reset)
    await pool.execute("CREATE TABLE IF NOT EXISTS floor_tx (gid text PRIMARY KEY, status text NOT NULL,"
                       " doc bytea NOT NULL)")
    floor = Floor(pool)
    server = await asyncio.get_running_loop().create_server(lambda: Submission(floor), "127.0.0.1", port,
                                                             backlog=1024)
    try:
        async with server:
            await server.serve_forever()
    finally:
        await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dsn", required=True)
    args = parser.parse_args()
    try:
        uvloop.run(serve(args.port, args.dsn))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
