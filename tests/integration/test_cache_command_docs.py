"""``COMMAND`` in Redis 7's shape against redis-server: the ten fields of each row (ACL categories,
tips, key specifications, subcommands), ``COMMAND DOCS`` and ``COMMAND GETKEYSANDFLAGS``, in RESP2
and RESP3; redis-py reads them (its cluster key lookup too), and ``redis-cli`` (when installed)
shows argument hints and ``help`` from them.

Only keyless ``COMMAND`` calls go to the shared redis-server.
"""

from __future__ import annotations

import asyncio
import os
import re
import select
import shutil
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis._parsers.commands import AsyncCommandsParser

from mezzo.cache.commands import COMMANDS
from mezzo.cache.commands_docs import DOCS, SUBCOMMANDS
from mezzo.testing.fixtures import RunningNode

from .test_cache_audit_redis_compat import answer, raw
from .test_cache_sdk import cache, resp_port  # noqa: F401  (the cache fixture: a node without snapshots)

Clients = dict[int, tuple[aioredis.Redis, aioredis.Redis]]  # protocol -> (redis-server, mezzo)

NEWER_THAN_7_0 = {"client|setinfo"}  # Mezzo answers it (Redis 7.2's); redis-server 7.0 has no entry
NEWER = {name.encode() for name in NEWER_THAN_7_0}
UNDOCUMENTED_ARGUMENTS = {"client|list"}  # Mezzo takes no TYPE or ID filter: it lists every connection


@pytest.fixture
async def protocols(cache: RunningNode, redis_url: str) -> AsyncIterator[Clients]:  # noqa: F811
    clients: Clients = {}
    try:
        for protocol in (2, 3):
            real = raw(aioredis.Redis.from_url(redis_url, protocol=protocol))
            mezzo = raw(aioredis.Redis(port=resp_port(cache), password=cache.token, protocol=protocol))
            clients[protocol] = (real, mezzo)
        yield clients
    finally:
        for real, mezzo in clients.values():
            await real.aclose()
            await mezzo.aclose()


def _names() -> list[str]:
    return [name for name in DOCS if name not in NEWER_THAN_7_0]


def _without_flags(row: Any, ours: set[bytes] | None = None) -> Any:
    """A row without its flags (Mezzo lists only readonly and write), with its subcommands sorted
    and, when ``ours`` is given, only the subcommands Mezzo has."""
    if not isinstance(row, list):
        return row
    subcommands = sorted((_without_flags(sub) for sub in row[9] if ours is None or bytes(sub[0]) in ours),
                         key=lambda sub: sub[0])
    return [*row[:2], None, *row[3:9], subcommands]


async def test_command_rows_are_redis_servers_but_for_the_flags(protocols: Clients) -> None:
    differences = []
    for protocol, (real, mezzo) in protocols.items():
        names = _names()
        ours = await mezzo.execute_command("COMMAND", "INFO", *names)
        theirs = await real.execute_command("COMMAND", "INFO", *names)
        for name, row, expected in zip(names, ours, theirs, strict=True):
            assert len(row) == 10 and set(row[2]) <= set(expected[2]), (name, row[2], expected[2])
            mine = {bytes(sub[0]) for sub in row[9]} - NEWER
            if _without_flags(row, mine) != _without_flags(expected, mine):
                differences.append(f"RESP{protocol} {name}:\n  redis-server {expected}\n  mezzo        {row}")
    assert not differences, "\n".join(differences)
    _, mezzo = protocols[3]
    every = await mezzo.execute_command("COMMAND")
    assert len(every) == len(COMMANDS) == await mezzo.execute_command("COMMAND", "COUNT")
    assert await mezzo.execute_command("COMMAND", "INFO", "get|x", "object|nosuch") == [None, None]


def _doc(doc: dict[bytes, Any], name: str, ours: set[bytes] | None = None) -> dict[bytes, Any]:
    """A RESP3 doc without what Mezzo does not keep: the history, the since of arguments, past the
    first sentence of the complexity (checked apart); ``ours``: only Mezzo's subcommands."""
    def argument(arg: dict[bytes, Any]) -> dict[bytes, Any]:
        kept = {k: v for k, v in arg.items() if k != b"since"}
        if b"arguments" in kept:
            kept[b"arguments"] = [argument(a) for a in kept[b"arguments"]]
        return kept

    kept = {k: v for k, v in doc.items() if k not in (b"history", b"complexity")}
    if b"arguments" in kept:
        kept[b"arguments"] = [argument(a) for a in kept[b"arguments"]]
    if name in UNDOCUMENTED_ARGUMENTS:
        kept.pop(b"arguments", None)
    if b"subcommands" in kept:
        kept[b"subcommands"] = {sub: _doc(d, bytes(sub).decode()) for sub, d in kept[b"subcommands"].items()
                                if ours is None or sub in ours}
    return kept


async def test_command_docs_are_redis_servers(protocols: Clients) -> None:
    real, mezzo = protocols[3]
    names = _names()
    ours = await mezzo.execute_command("COMMAND", "DOCS", *names, "nosuch")
    theirs = await real.execute_command("COMMAND", "DOCS", *names, "nosuch")
    assert set(ours) == set(theirs) == {n.encode() for n in names}
    differences = []
    for name in names:
        doc, expected = ours[name.encode()], theirs[name.encode()]
        assert expected[b"complexity"].startswith(doc[b"complexity"]), name  # Redis' first sentence
        mine = set(doc.get(b"subcommands", {})) - NEWER
        if _doc(doc, name, mine) != _doc(expected, name, mine):
            differences.append(f"{name}:\n  redis-server {expected}\n  mezzo        {doc}")
    assert not differences, "\n".join(differences)
    real2, mezzo2 = protocols[2]  # RESP2: the same, as flat arrays
    for names2 in (["get", "mset", "nosuch", "GET"], ["hmset", "object|encoding", "getex", "hincrbyfloat"]):
        assert await mezzo2.execute_command("COMMAND", "DOCS", *names2) == \
            await real2.execute_command("COMMAND", "DOCS", *names2), names2
    assert len(await mezzo.execute_command("COMMAND", "DOCS")) == len(COMMANDS)


GETKEYSANDFLAGS_CASES = [
    ("GET", "k"), ("MSET", "a", "1", "b", "2"), ("MSET", "a", "1", "b"), ("SET", "k", "v"), ("SET", "k", "v", "EX", "1", "get"),
    ("set", "k", "v", "GET", "PX", "1"), ("SET", "k", "get"), ("GETEX", "k", "PERSIST"), ("DEL", "a", "b"), ("UNLINK", "a"),
    ("EXISTS", "a", "b"), ("HSET", "h", "f", "v"), ("HDEL", "h", "f"), ("APPEND", "k", "v"), ("SETNX", "k", "v"),
    ("SETEX", "k", "1", "v"), ("PSETEX", "k", "1", "v"), ("GETDEL", "k"), ("INCR", "k"), ("HLEN", "h"), ("TYPE", "k"),
    ("EXPIRE", "k", "1"), ("HGETALL", "h"), ("MGET", "a", "b"), ("SUBSTR", "k", "0", "1"), ("HINCRBYFLOAT", "h", "f", "1"),
    ("PERSIST", "k"), ("STRLEN", "k"), ("HMSET", "h", "f", "v"), ("OBJECT", "ENCODING", "k"), ("object", "freq", "k"),
    # refused: an unknown command or subcommand, no key arguments, a wrong count
    ("nosuch", "a"), ("OBJECT", "nosuch", "k"), ("CLIENT", "bogus", "x"), ("OBJECT", "HELP"), ("CLIENT", "SETNAME", "x"),
    ("CONFIG", "GET", "x"), ("PING", "x"), ("KEYS", "*"), ("SCAN", "0"), ("OBJECT", "ENCODING"), ("GET", "a", "b"),
    ("HSET", "h", "f"), ("GET",), (),
]


async def test_command_getkeysandflags_answers_as_redis_server(protocols: Clients) -> None:
    differences = []
    for protocol, (real, mezzo) in protocols.items():
        for case in GETKEYSANDFLAGS_CASES:
            for sub in ("GETKEYSANDFLAGS", "GETKEYS"):
                args = ("COMMAND", sub, *case)
                ours, theirs = await answer(mezzo, args), await answer(real, args)
                if ours != theirs:
                    differences.append(f"RESP{protocol} {args}: redis-server {theirs!r}, mezzo {ours!r}")
    assert not differences, "\n".join(differences)


async def test_command_list_names_the_subcommands_as_redis_server(protocols: Clients) -> None:
    real, mezzo = protocols[2]
    ours = set(await mezzo.execute_command("COMMAND", "LIST"))
    assert {b"object|encoding", b"command|getkeysandflags", b"config|get"} <= ours
    assert ours - set(await real.execute_command("COMMAND", "LIST")) == {n.encode() for n in NEWER_THAN_7_0}
    for kind, arg in [("ACLCAT", "keyspace"), ("ACLCAT", "connection"), ("ACLCAT", "admin"), ("ACLCAT", "read"),
                      ("PATTERN", "object*"), ("PATTERN", "*|*")]:
        args = ("COMMAND", "LIST", "FILTERBY", kind, arg)
        theirs = set(await real.execute_command(*args)) & ours
        assert set(await mezzo.execute_command(*args)) - {n.encode() for n in NEWER_THAN_7_0} == theirs, args


async def test_redis_py_reads_the_rows_and_finds_keys_with_them(cache: RunningNode) -> None:  # noqa: F811
    for protocol in (2, 3):
        client = aioredis.Redis(port=resp_port(cache), password=cache.token, protocol=protocol)
        try:
            commands = await client.command()
            assert set(commands) == {n.decode() for n in COMMANDS}
            get = commands["get"]
            assert [bytes(c) if isinstance(c, bytes) else c.encode() for c in get["acl_categories"]] == \
                [b"@read", b"@string", b"@fast"]
            assert len(get["key_specifications"]) == 1 and get["subcommands"] == []
            assert len(commands["object"]["subcommands"]) == len(SUBCOMMANDS[b"object"])
            parser = AsyncCommandsParser()
            await parser.initialize(client)  # type: ignore[arg-type]  (what a cluster client does with a node)
            assert await parser.get_keys("MSET", "a", "1", "b", "2") == ["a", "b"]
            assert await parser.get_keys("OBJECT", "ENCODING", "k") == ["k"]  # from the subcommand's row
            assert await parser.get_keys("DEL", "a", "b", "c") == ["a", "b", "c"]
            assert await parser.get_keys("PING", "x") is None
            policies = (await parser.get_command_policies())["core"]
            assert policies["mset"].request_policy.value == "multi_shard"
            assert policies["object encoding"].request_policy.value == "default_keyed"
            assert await client.command_getkeysandflags("set", "k", "v", "get") == [[b"k", [b"RW", b"access", b"update"]]]
        finally:
            await client.aclose()


def _terminal(port: int, token: str, typed: list[tuple[str, str]]) -> list[str]:
    """What an interactive redis-cli shows after each of ``typed`` (on a pseudo-terminal: hints
    and help are only for a terminal), its escape sequences taken out."""
    import fcntl
    import pty
    import struct
    import subprocess
    import termios

    terminal, child_side = pty.openpty()
    fcntl.ioctl(child_side, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 250, 0, 0))
    cli = subprocess.Popen(["redis-cli", "-p", str(port), "-a", token, "--no-auth-warning"],
                           stdin=child_side, stdout=child_side, stderr=child_side, start_new_session=True,
                           env={**os.environ, "TERM": "xterm"})
    os.close(child_side)
    fd = terminal

    def read(until: bytes, timeout: float) -> str:
        out, end = b"", time.monotonic() + timeout
        while time.monotonic() < end and until not in re.sub(rb"\x1b\[[0-9;]*[A-Za-z]", b"", out):
            if select.select([fd], [], [], 0.1)[0]:
                try:
                    out += os.read(fd, 65536)
                except OSError:
                    break
        return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", out.decode(errors="replace")).replace("\r", "\n")

    screens = []
    try:
        read(b"> ", 10)
        for text, until in typed:
            os.write(fd, text.encode())
            screens.append(read(until.encode(), 5))
            os.write(fd, b"\x15")  # ctrl-U: an empty line for the next one
            read(b"> ", 1)
        os.write(fd, b"quit\r")
        cli.wait(5)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
        os.close(fd)
    return screens


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli is not installed")
async def test_redis_cli_shows_argument_hints_and_help_from_the_docs(cache: RunningNode) -> None:  # noqa: F811
    hint = "key value [NX|XX] [GET] [EX seconds|PX milliseconds|EXAT unix-time-seconds|PXAT unix-time-milliseconds|KEEPTTL]"
    typed = [("SET ", hint), ("object encoding ", "encoding key"), ("scan 0 ", "scan 0 [MATCH pattern] [COUNT count] [TYPE type]"),
             ("help hset\r", "group: hash"), ("help @hash\r", "HVALS key")]
    screens = await asyncio.to_thread(_terminal, resp_port(cache), cache.token, typed)
    last = [screen.strip().split("\n")[-1] for screen in screens]
    assert last[0].endswith(f"> SET {hint}")
    assert last[1].endswith("> object encoding key")
    assert last[2].endswith("> scan 0 [MATCH pattern] [COUNT count] [TYPE type]")
    assert "HSET key field value [field value ...]" in screens[3] and "summary: Set the string value of a hash field" in screens[3]
    assert all(f"{name.upper()} key" in screens[4] for name in ("hget", "hgetall", "hlen", "hvals"))
