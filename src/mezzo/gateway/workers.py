"""Gateway worker processes: N processes accept on the gateway ports (SO_REUSEPORT), one core each.

The main process runs every module its targets name and serves the gateway too; it starts N-1
workers, ``mezzo run --targets gateway,apis`` with the same settings and store, and restarts any that
exits. A worker follows the resources with its own informers; it writes nothing but the store's
idempotent compaction, so with the embedded store the main process stays the one writer of the
SQLite file (WAL mode: readers in other processes never block it). A worker's store checks the
revision every ``WORKER_POLL`` seconds (a write in another process cannot wake it directly; one
query per check, however many watches); with PostgreSQL, LISTEN/NOTIFY wakes it at once. A worker stops when the main process asks
(SIGTERM, then it drains like any node) or when the main process is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

import structlog
from pydantic import SecretStr

log = structlog.get_logger("mezzo.gateway")
WORKER_POLL = 0.05  # how often a worker checks an SQLite store written by the main process for changes
RESTART_BACKOFF = (0.5, 1.0, 2.0, 5.0)


def worker_env(settings: Any, index: int, gateway_port: int, tls_port: int) -> dict[str, str]:
    """The main process's effective settings as MEZZO_* variables, for a worker serving the same ports."""
    env = dict(os.environ)
    for name in type(settings).model_fields:
        key = f"MEZZO_{name.upper()}"
        value = getattr(settings, name)
        if value is None:
            env.pop(key, None)
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, list):
            value = ",".join(value)
        elif isinstance(value, Path):
            value = value.absolute()
        env[key] = str(value)
    env.update(MEZZO_TARGETS="gateway,apis", MEZZO_GATEWAY_PORT=str(gateway_port), MEZZO_GATEWAY_TLS_PORT=str(tls_port),
               MEZZO_GATEWAY_WORKERS="1", MEZZO_GATEWAY_WORKER=str(index))
    return env


class WorkerPool:
    """Starts and supervises the worker processes of a main gateway process."""

    def __init__(self, settings: Any, count: int, gateway_port: int, tls_port: int) -> None:
        self.settings = settings
        self.count = count
        self.ports = (gateway_port, tls_port)
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    async def start(self) -> None:
        for index in range(1, self.count):
            self._tasks.append(asyncio.create_task(self._supervise(index), name=f"mezzo-gateway-worker-{index}"))

    @property
    def running(self) -> int:
        return sum(1 for p in self.processes.values() if p.returncode is None)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes.values() if p.returncode is None]

    async def _supervise(self, index: int) -> None:
        failures = 0
        while not self._stopping:
            env = worker_env(self.settings, index, *self.ports)
            # its own session: a terminal's Ctrl+C reaches the main process only, which stops the workers itself
            process = await asyncio.create_subprocess_exec(sys.executable, "-m", "mezzo", "run", env=env,
                                                           stdin=asyncio.subprocess.DEVNULL, start_new_session=True)
            self.processes[index] = process
            log.info("gateway worker started", worker=index, pid=process.pid)
            code = await process.wait()
            if self._stopping:
                return
            delay = RESTART_BACKOFF[min(failures, len(RESTART_BACKOFF) - 1)]
            failures += 1
            log.warning("gateway worker exited; restarting", worker=index, code=code, seconds=delay)
            await asyncio.sleep(delay)

    async def stop(self, timeout: float) -> None:
        """SIGTERM every worker (each drains like a node), SIGKILL what is left after ``timeout``."""
        self._stopping = True
        live = [p for p in self.processes.values() if p.returncode is None]
        for process in live:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in live)), timeout)
        except TimeoutError:
            for process in live:
                if process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
            await asyncio.gather(*(p.wait() for p in live))
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def follow_parent(stop: Any, interval: float = 0.5) -> None:
    """In a worker: stop the node once the main process is gone (we were re-parented)."""
    parent = os.getppid()
    while True:  # no event to wait on: the kernel re-parents us silently
        await asyncio.sleep(interval)
        if os.getppid() != parent:
            break
    log.warning("gateway worker: the main process is gone; stopping")
    stop()
