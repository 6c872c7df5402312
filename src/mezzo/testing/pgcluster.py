"""A private, throw-away PostgreSQL cluster for tests that need server settings the shared server lacks
(``max_prepared_transactions`` for XA): initdb into a temp dir, start on a free port, remove at the end.

As root, initdb refuses to run, so the cluster then belongs to the ``postgres`` OS user (``runuser``).
It is tuned for speed, not durability (``--no-sync``, ``fsync=off``).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mezzo.testing.fixtures import free_port

DIR_PREFIX = "mezzo-pg-"
DEFAULTS = {"max_prepared_transactions": "20", "fsync": "off", "synchronous_commit": "off",
            "full_page_writes": "off", "max_connections": "50"}


class ClusterUnavailable(Exception):
    """No PostgreSQL server binaries here, or no user that may run them."""


@dataclass(frozen=True)
class PgCluster:
    directory: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"


def find_bin() -> Path | None:
    """The newest installed server's bin dir (``MEZZO_PG_BIN`` overrides)."""
    candidates = [os.environ.get("MEZZO_PG_BIN", ""), *sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                                                               key=_version, reverse=True)]
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").is_file() and (Path(candidate) / "pg_ctl").is_file():
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


def _version(path: str) -> int:
    part = Path(path).parent.name
    return int(part) if part.isdigit() else 0


def _runner() -> tuple[list[str], int | None]:
    """The command prefix that runs the server binaries, and the uid that must own the data dir."""
    if os.geteuid() != 0:
        return [], None
    try:
        uid = pwd.getpwnam("postgres").pw_uid
    except KeyError as exc:
        raise ClusterUnavailable("running as root and there is no postgres OS user to run initdb") from exc
    if shutil.which("runuser") is None:
        raise ClusterUnavailable("running as root and runuser is missing")
    return ["runuser", "-u", "postgres", "--"], uid


def _run(prefix: list[str], *args: str) -> None:
    done = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{Path(args[0]).name} failed ({done.returncode}): {done.stderr.strip() or done.stdout}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_orphans(bindir: Path, prefix: list[str]) -> None:
    """Stop and remove the clusters of test processes that died without tearing them down (SIGKILL)."""
    for directory in Path(tempfile.gettempdir()).glob(f"{DIR_PREFIX}*"):
        owner_file = directory / "owner.pid"
        try:
            owner = int(owner_file.read_text())
        except (OSError, ValueError):
            continue
        if _alive(owner):
            continue
        if (directory / "data" / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                _run(prefix, str(bindir / "pg_ctl"), "stop", "-w", "-m", "immediate", "-D", str(directory / "data"))
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def private_cluster(**settings: str) -> Iterator[PgCluster]:
    """A running cluster (user ``postgres``, trust auth, on 127.0.0.1) until the block ends."""
    bindir = find_bin()
    if bindir is None:
        raise ClusterUnavailable("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    prefix, owner = _runner()
    reap_orphans(bindir, prefix)
    directory = Path(tempfile.mkdtemp(prefix=DIR_PREFIX))
    (directory / "owner.pid").write_text(str(os.getpid()))
    if owner is not None:
        os.chown(directory, owner, -1)
    data = directory / "data"
    options = {**DEFAULTS, **settings}
    started = False
    try:
        _run(prefix, str(bindir / "initdb"), "-D", str(data), "--no-sync", "-A", "trust", "-U", "postgres",
             "-E", "UTF8")
        for attempt in range(3):  # a free port may be taken between the probe and the bind
            port = free_port()
            flags = " ".join([f"-p {port}", f"-k {directory}", "-c listen_addresses=127.0.0.1",
                              *(f"-c {k}={v}" for k, v in options.items())])
            try:
                _run(prefix, str(bindir / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(data),
                     "-l", str(directory / "server.log"), "-o", flags)
                started = True
                break
            except RuntimeError:
                if attempt == 2:
                    raise
        yield PgCluster(directory, port)
    finally:
        if started:
            with contextlib.suppress(Exception):
                _run(prefix, str(bindir / "pg_ctl"), "stop", "-w", "-m", "immediate", "-D", str(data))
        shutil.rmtree(directory, ignore_errors=True)


def cluster_for_tests(**settings: str) -> Iterator[PgCluster]:
    """The body of a pytest fixture: ``yield from cluster_for_tests()``; skips when no cluster can run,
    fails instead under ``MEZZO_REQUIRE_BACKENDS=1``."""
    import pytest

    cluster = private_cluster(**settings)
    try:
        running = cluster.__enter__()
    except ClusterUnavailable as exc:
        if os.environ.get("MEZZO_REQUIRE_BACKENDS") == "1":
            pytest.fail(f"MEZZO_REQUIRE_BACKENDS=1 but no private PostgreSQL cluster can run ({exc})", pytrace=False)
        pytest.skip(f"no private PostgreSQL cluster can run ({exc})")
    try:
        yield running
    finally:
        cluster.__exit__(None, None, None)
