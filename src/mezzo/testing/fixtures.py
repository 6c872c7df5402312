"""pytest fixtures for Mezzo nodes, loaded by ``tests/conftest.py`` (``pytest_plugins``).

``node`` starts a node in this process on an ephemeral port with a fresh data dir;
``node_process`` starts ``python -m mezzo up`` as a subprocess, for signal and
crash tests. Both yield a handle with ``url`` and ``token``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

ADMIN = "mzo_testadmin_" + "x" * 32


@dataclass
class RunningNode:
    url: str
    token: str
    data_dir: Path
    node: Any = None  # the in-process Node
    process: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    def client(self, token: str | None = None) -> Any:
        from mezzo import Mezzo

        return Mezzo(self.url, token or self.token)


# every listener on a free port: tests run side by side and must not take the standard ones
FREE_PORTS = {"api_port": 0, "gateway_port": 0, "gateway_tls_port": 0, "resp_port": 0, "otlp_port": 0,
              "zipkin_port": 0, "dapr_grpc_port": 0, "otlp_grpc_port": 0}


async def start_node(data_dir: Path, **settings: Any) -> RunningNode:
    from mezzo.node.node import Node
    from mezzo.node.settings import Settings

    values: dict[str, Any] = {"data_dir": data_dir, **FREE_PORTS, "admin_token": ADMIN, **settings}
    node = Node(Settings(**values))
    await node.start()
    url = node.url("api")
    assert url is not None
    return RunningNode(url, ADMIN, data_dir, node=node)


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[RunningNode]:
    """A node with every module, in this process, on an ephemeral API port."""
    running = await start_node(tmp_path / "data")
    try:
        yield running
    finally:
        await running.node.stop()


_PORTS: list[int] = []  # this process's band of ports, in the order they are handed out


def free_port() -> int:
    """A port nothing listens on, for a server a test starts later.

    Not a kernel-chosen ephemeral port: between closing it here and the server's bind, any outgoing
    connection (to PostgreSQL, Redis, another node) may be given that same port. These come from
    below the ephemeral range, from a band of their own per pytest-xdist worker, starting at a point
    set by the process id (other suites on the machine), never twice in one process."""
    import random
    import socket

    if not _PORTS:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
        index = int(worker) % 8 if worker.isdigit() else 0
        low = 15000 + index * 2000  # 15000..30999: under Linux's default ephemeral range (32768-60999)
        band = list(range(low, low + 2000))
        start = random.Random(os.getpid()).randrange(len(band))
        _PORTS.extend(band[start:] + band[:start])
    for _ in range(len(_PORTS)):
        port = _PORTS.pop(0)
        _PORTS.append(port)  # handed out again only after the whole band
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in this test process's band")


READY_TIMEOUT = 90.0  # generous: a loaded machine (parallel suites, crash tests) can take long to start a node


def spawn_node(data_dir: Path, extra_env: dict[str, str] | None = None, args: tuple[str, ...] = ("up",),
               ready_timeout: float = READY_TIMEOUT) -> RunningNode:
    """``python -m mezzo up`` on a free port; returns once /readyz answers 200. A node that exits first
    fails at once, with the tail of its output."""
    port = free_port()
    env = {**os.environ, "MEZZO_DATA_DIR": str(data_dir), "MEZZO_API_PORT": str(port), "MEZZO_GATEWAY_PORT": "0",
           "MEZZO_RESP_PORT": "0", "MEZZO_OTLP_PORT": "0", "MEZZO_ZIPKIN_PORT": "0", "MEZZO_GATEWAY_TLS_PORT": "0",
           "MEZZO_DAPR_GRPC_PORT": "0", "MEZZO_OTLP_GRPC_PORT": "0", "MEZZO_LOG_FORMAT": "json", **(extra_env or {})}
    env.pop("MEZZO_URL", None)
    log_path = data_dir.parent / f"node-{port}.log"
    with open(log_path, "wb") as log:  # the child keeps its own copy of the fd
        process = subprocess.Popen([sys.executable, "-m", "mezzo", *args], env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_timeout
    while process.poll() is None:
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise TimeoutError(f"node did not become ready in {ready_timeout:g} s; its output ends:\n"
                               f"{output_tail(log_path)}")
        time.sleep(0.05)
    else:
        raise RuntimeError(f"node exited with {process.returncode} before it was ready; its output ends:\n"
                           f"{output_tail(log_path)}")
    token = env.get("MEZZO_ADMIN_TOKEN") or (data_dir / "admin.token").read_text().strip()
    return RunningNode(url, token, data_dir, process=process, env=env)


def output_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a node's log (all of it can be megabytes of JSON)."""
    try:
        text = path.read_bytes()[-64 * 1024:].decode(errors="replace")
    except OSError as exc:
        return f"(no output: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(no output)"


def stop_process(running: RunningNode, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
    assert running.process is not None
    if running.process.poll() is None:
        running.process.send_signal(sig)
    try:
        return running.process.wait(timeout)
    except subprocess.TimeoutExpired:
        running.process.kill()
        running.process.wait()
        raise


@pytest.fixture
def node_process(tmp_path: Path) -> Iterator[RunningNode]:
    """``mezzo up`` in a subprocess with a fresh data dir and a generated admin token."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    running = spawn_node(data_dir)
    try:
        yield running
    finally:
        if running.process is not None and running.process.poll() is None:
            stop_process(running, signal.SIGKILL)


async def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)
