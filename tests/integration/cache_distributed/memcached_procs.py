"""Own memcached processes on free ports, for the memcached-node tests (never the system service)."""

from __future__ import annotations

import os
import pwd
import shutil
import socket

from mezzo.testing.fixtures import free_port

from .redis_procs import RedisProcess, ServerSet, _missing, spawn, wait_ready


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"mn\r\n")
            return sock.recv(16).startswith(b"MN")
    except OSError:
        return False


class MemcachedProcess(RedisProcess):
    @property
    def url(self) -> str:
        return f"memcached://127.0.0.1:{self.port}"

    @property
    def name(self) -> str:
        return f"127.0.0.1:{self.port}"


class MemcachedServers(ServerSet):
    """Starts ``memcached -U 0 -l 127.0.0.1`` on free ports and kills every one it started."""

    def start(self, port: int | None = None) -> MemcachedProcess:
        binary = shutil.which("memcached")
        if binary is None:
            _missing("memcached")
        port = port or free_port()
        args = [str(binary), "-p", str(port), "-U", "0", "-l", "127.0.0.1", "-m", "64"]
        if os.geteuid() == 0:  # memcached refuses to run as root without naming a user
            args += ["-u", pwd.getpwuid(0).pw_name]
        log = self.workdir / f"memcached-{port}.log"
        started = MemcachedProcess(port, spawn(args, log), args)
        self.started.append(started)
        wait_ready(started.process, port, _answers, log)
        return started

    def restart(self, old: MemcachedProcess) -> MemcachedProcess:
        """The same port again (after a kill), empty."""
        return self.start(port=old.port)
