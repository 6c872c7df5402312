"""Own redis-server processes (and Redis Clusters) on free ports, for the distributed-cache tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mezzo.testing.fixtures import free_port

REQUIRE_BACKENDS = os.environ.get("MEZZO_REQUIRE_BACKENDS") == "1"


def _missing(what: str) -> None:
    message = f"{what} is not installed"
    if REQUIRE_BACKENDS:
        pytest.fail(f"MEZZO_REQUIRE_BACKENDS=1 but {message}", pytrace=False)
    pytest.skip(message)


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64)[:1] in (b"+", b"-")  # PONG, or NOAUTH from a server with a password
    except OSError:
        return False


def spawn(args: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)


def wait_ready(process: subprocess.Popen[bytes], port: int, answers: Callable[[int], bool], log_path: Path) -> None:
    deadline = time.monotonic() + 10
    while not answers(port):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{Path(process.args[0]).name} on {port} did not start: "  # type: ignore[index]
                               f"{log_path.read_text()[-2000:]}")
        time.sleep(0.02)


@dataclass
class RedisProcess:
    port: int
    process: subprocess.Popen[bytes]
    args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(10)


class ServerSet:
    """Server processes a test started in ``workdir`` (their logs go there); ``stop_all`` kills them."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[RedisProcess] = []

    def stop_all(self) -> None:
        for started in self.started:
            try:
                started.kill()
            except subprocess.TimeoutExpired:
                started.process.kill()


class RedisServers(ServerSet):
    """Starts redis-server on free ports (no persistence) and kills every one it started."""

    def start(self, *extra: str, port: int | None = None) -> RedisProcess:
        binary = shutil.which("redis-server")
        if binary is None:
            _missing("redis-server")
        port = port or free_port()
        args = [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--dir", str(self.workdir), *extra]
        started = RedisProcess(port, spawn(args, self.workdir / f"redis-{port}.log"), args)
        self.started.append(started)
        wait_ready(started.process, port, _ping, self.workdir / f"redis-{port}.log")
        return started

    def restart(self, old: RedisProcess) -> RedisProcess:
        """The same port again (after a kill), as a fresh empty server."""
        extra = old.args[old.args.index(str(self.workdir)) + 1:]
        return self.start(*extra, port=old.port)

    def cluster(self, size: int = 3) -> list[RedisProcess]:
        cli = shutil.which("redis-cli")
        if cli is None:
            _missing("redis-cli")
        nodes = []
        for _ in range(size):
            port = free_port()
            nodes.append(self.start("--cluster-enabled", "yes", "--cluster-port", str(free_port()),
                                    "--cluster-config-file", str(self.workdir / f"nodes-{port}.conf"), port=port))
        create = subprocess.run([str(cli), "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in nodes],
                                 "--cluster-yes"], capture_output=True, timeout=60)
        if create.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {create.stdout!r} {create.stderr!r}")
        deadline = time.monotonic() + 20
        while True:
            info = subprocess.run([str(cli), "-p", str(nodes[0].port), "cluster", "info"], capture_output=True)
            if b"cluster_state:ok" in info.stdout:
                return nodes
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster did not become ok: {info.stdout!r}")
            time.sleep(0.05)


def start_nutcracker(workdir: Path, servers: list[RedisProcess], port: int) -> subprocess.Popen[bytes]:
    """twemproxy with ketama over ``servers`` (md5 keys, ``{}`` hash tags), listening on ``port``."""
    binary = shutil.which("nutcracker")
    if binary is None:
        pytest.skip("nutcracker (twemproxy) is not installed")
    listed = "".join(f"    - 127.0.0.1:{s.port}:1\n" for s in servers)
    config = workdir / f"nutcracker-{port}.yml"
    config.write_text(f"pool:\n  listen: 127.0.0.1:{port}\n  hash: md5\n  hash_tag: \"{{}}\"\n"
                      f"  distribution: ketama\n  redis: true\n  auto_eject_hosts: false\n  servers:\n{listed}")
    log = workdir / f"nutcracker-{port}.log"
    process = subprocess.Popen([binary, "-c", str(config), "-s", str(free_port()), "-a", "127.0.0.1", "-o", str(log)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while not _ping(port):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"nutcracker did not start: {(workdir / f'nutcracker-{port}.log').read_text()[-2000:]}")
        time.sleep(0.02)
    return process
