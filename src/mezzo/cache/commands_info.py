"""``COMMAND`` and ``INFO`` over the command table, with redis-server 7's replies and error texts.

``COMMAND`` (and ``COMMAND INFO`` without names) describes every command: name, arity, flags and
the first key, last key and step (Redis 6's six fields; ``_KEY_POSITIONS``). ``COMMAND INFO name
...`` answers those names only, nil for a name the table does not have; ``COMMAND GETKEYS``
answers the keys of a full command line; ``COMMAND COUNT``, ``COMMAND LIST`` (``FILTERBY
PATTERN``/``ACLCAT``/``MODULE``) and ``COMMAND HELP`` as Redis. Not kept: per-subcommand entries
(``COMMAND INFO object|encoding`` is nil), ``GETKEYSANDFLAGS`` and docs (``COMMAND DOCS`` is empty).

``INFO section ...`` answers the named sections only (case-insensitive, in Mezzo's order, as Redis
orders them); ``all``, ``everything`` and ``default`` are every section (all of Mezzo's are in
Redis' default set), and a section Mezzo does not keep is left out (so alone it is empty).

Both register in ``commands.COMMANDS`` like the rest (``commands.py`` imports this module at its
end); the proxy answers them itself (``proxy.LOCAL``).
"""

from __future__ import annotations

from typing import Any

from mezzo.cache.commands import COMMANDS, SyntaxErr, command
from mezzo.cache.commands_more import _OBJECT_KEYED
from mezzo.cache.engine import CacheError
from mezzo.cache.glob import matcher
from mezzo.cache.resp import Reply, Session

# Where COMMAND says a command's keys are (first, last, step), as Redis says it; others take one key.
_KEY_POSITIONS = {
    **dict.fromkeys([b"ping", b"echo", b"quit", b"select", b"auth", b"hello", b"client", b"info", b"command",
                     b"config", b"dbsize", b"flushdb", b"flushall", b"keys", b"scan", b"object"], (0, 0, 0)),
    **dict.fromkeys([b"del", b"unlink", b"exists", b"mget"], (1, -1, 1)),
    b"mset": (1, -1, 2),
}

# ACL categories as redis-server 7 gives them, for COMMAND LIST FILTERBY ACLCAT. @read and @write
# follow the flags, @hash is the H commands, @string the other reads and writes outside @keyspace,
# @fast every command not in @slow; the rest are listed.
_LISTED_CATEGORIES = {
    "connection": {b"auth", b"command", b"echo", b"hello", b"ping", b"quit", b"select"},
    "dangerous": {b"flushall", b"flushdb", b"info", b"keys"},
    "keyspace": {b"dbsize", b"del", b"exists", b"expire", b"expireat", b"expiretime", b"flushall", b"flushdb",
                 b"keys", b"persist", b"pexpire", b"pexpireat", b"pexpiretime", b"pttl", b"scan", b"ttl", b"type",
                 b"unlink"},
    "slow": {b"client", b"command", b"config", b"del", b"flushall", b"flushdb", b"getrange", b"hgetall", b"hkeys",
             b"hvals", b"info", b"keys", b"mset", b"object", b"psetex", b"scan", b"set", b"setex", b"setrange",
             b"substr"},
}

_SUBCOMMAND_ARITY = {b"COUNT": 2, b"LIST": -2, b"INFO": -2, b"GETKEYS": -4, b"DOCS": -2, b"HELP": 2}
_HELP = [
    "COMMAND <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "(no subcommand)",
    "    Return details about all commands: name, arity, flags, first key, last key, key step.",
    "COUNT",
    "    Return the total number of commands.",
    "LIST [FILTERBY (MODULE <module-name>|ACLCAT <category>|PATTERN <pattern>)]",
    "    Return a list of all commands, optionally filtered.",
    "INFO [<command-name> ...]",
    "    Return details about the named commands (nil for an unknown name), or all of them.",
    "DOCS [<command-name> ...]",
    "    Not kept by Mezzo: an empty reply.",
    "GETKEYS <full-command>",
    "    Return the keys from a full command.",
    "HELP",
    "    Print this help.",
]

NO_KEYS = "The command has no key arguments"
BAD_COUNT = "Invalid number of arguments specified for command"
UNKNOWN = "Invalid command specified"


def key_positions(name: bytes) -> tuple[int, int, int]:
    return _KEY_POSITIONS.get(name, (1, 1, 1))


def categories(name: bytes) -> set[str]:
    """The ACL categories redis-server 7 puts ``name`` in (for a command in the table)."""
    flags = COMMANDS[name][2]
    found = {category for category, names in _LISTED_CATEGORIES.items() if name in names}
    if "readonly" in flags:
        found.add("read")
    if "write" in flags:
        found.add("write")
    if name[:1] == b"h" and name != b"hello":
        found.add("hash")
    elif flags and "keyspace" not in found:
        found.add("string")
    if "slow" not in found:
        found.add("fast")
    return found


def _row(s: Session, name: bytes) -> bytes:
    _, arity, flags = COMMANDS[name]
    first, last, step = key_positions(name)
    return s.raw_array([s.bulk(name), Reply.integer(arity), s.raw_array([Reply.simple(f) for f in flags.split(",") if f]),
                        Reply.integer(first), Reply.integer(last), Reply.integer(step)])


def command_keys(args: list[bytes]) -> list[bytes]:
    """``COMMAND GETKEYS``: the keys of the command line ``args``, refused as redis-server refuses:
    an unknown command (or OBJECT subcommand) first, then one without keys, then a wrong count."""
    name = args[0].lower()
    entry = COMMANDS.get(name)
    if entry is None:
        raise CacheError(UNKNOWN)
    if name == b"object":  # a container: its keyed subcommands take the key after them
        sub = args[1].upper()
        if sub == b"HELP":
            raise CacheError(NO_KEYS)
        if sub not in _OBJECT_KEYED:
            raise CacheError(UNKNOWN)
        if len(args) != 3:
            raise CacheError(BAD_COUNT)
        return [args[2]]
    first, last, step = key_positions(name)
    if first == 0:  # CLIENT, CONFIG and COMMAND too, whatever their subcommand
        raise CacheError(NO_KEYS)
    arity = entry[1]
    if (arity > 0 and len(args) != arity) or len(args) < -arity:
        raise CacheError(BAD_COUNT)
    stop = last if last >= 0 else len(args) + last
    return args[first:stop + 1:step]


def _listed(a: list[bytes]) -> list[bytes]:
    """``COMMAND LIST`` and its one ``FILTERBY`` (a pattern and a category match in any case)."""
    names = sorted(COMMANDS)
    if len(a) == 2:
        return names
    if len(a) != 5 or a[2].upper() != b"FILTERBY":
        raise SyntaxErr()
    kind, arg = a[3].upper(), a[4]
    if kind == b"MODULE":
        return []
    if kind == b"ACLCAT":
        category = arg.decode(errors="replace").lower()
        return [n for n in names if category in categories(n)]
    if kind == b"PATTERN":
        match = matcher(arg.lower())
        return [n for n in names if match.fullmatch(n)]
    raise SyntaxErr()


@command("command", -1)
def command_(server: Any, s: Session, a: list[bytes]) -> bytes:
    if len(a) == 1:
        return s.raw_array([_row(s, name) for name in sorted(COMMANDS)])
    sub = a[1].upper()
    arity = _SUBCOMMAND_ARITY.get(sub)
    if arity is None:
        raise CacheError(f"unknown subcommand '{a[1][:128].decode(errors='replace')}'. Try COMMAND HELP.")
    if (arity > 0 and len(a) != arity) or len(a) < -arity:
        raise CacheError(f"wrong number of arguments for 'command|{sub.lower().decode()}' command")
    if sub == b"COUNT":
        return Reply.integer(len(COMMANDS))
    if sub == b"INFO":
        if len(a) == 2:
            return s.raw_array([_row(s, name) for name in sorted(COMMANDS)])
        rows = []
        for raw in a[2:]:
            name = raw.lower()
            rows.append(_row(s, name) if name in COMMANDS else s.null())
        return s.raw_array(rows)
    if sub == b"GETKEYS":
        return s.array(command_keys(a[2:]))  # type: ignore[arg-type]
    if sub == b"LIST":
        return s.array(_listed(a))  # type: ignore[arg-type]
    if sub == b"DOCS":
        return s.map([])
    return s.raw_array([Reply.simple(line) for line in _HELP])  # HELP


_EVERY_SECTION = {b"all", b"everything", b"default"}


def info_sections(text: str, wanted: set[str]) -> str:
    """The sections of an INFO text (``# Name`` and its lines) whose lowercased name is in
    ``wanted``, in the text's order, separated by a blank line as Redis separates them."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for line in text.split("\r\n"):
        if line.startswith("# "):
            current = [line] if line[2:].lower() in wanted else None
            if current is not None:
                blocks.append(current)
        elif line and current is not None:
            current.append(line)
    return "\r\n".join("\r\n".join(block) + "\r\n" for block in blocks)


@command("info", -1)
def info(server: Any, s: Session, a: list[bytes]) -> bytes:
    wanted = {arg.lower() for arg in a[1:]}
    text = server.info()
    if wanted and not wanted & _EVERY_SECTION:
        text = info_sections(text, {w.decode(errors="replace") for w in wanted})
    return s.bulk(text.encode())
