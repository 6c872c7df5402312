"""``COMMAND`` and ``INFO`` over the command table, with redis-server 7's replies and error texts.

``COMMAND`` (and ``COMMAND INFO`` without names) describes every command in Redis 7's ten fields:
name, arity, flags, first key, last key, step (``_KEY_POSITIONS``), ACL categories, tips, key
specifications (one per keyed command: ``begin_search`` the first key's index, ``find_keys`` the
range to the last key, flags such as ``RO access`` or ``OW update``) and subcommands (rows of
their own for ``CLIENT``, ``COMMAND``, ``CONFIG`` and ``OBJECT``: the ones Mezzo answers). Flags are
only ``readonly`` and ``write`` (Redis' others, ``fast``, ``denyoom``, ``loading``..., are not
kept). ``COMMAND INFO name ...`` answers those names only (``object|encoding`` too), nil for a name
the table does not have; ``COMMAND DOCS [name ...]`` their summary, since, group, complexity and
arguments (``commands_docs``); ``COMMAND GETKEYS`` and ``GETKEYSANDFLAGS`` the keys of a full
command line (and their access flags); ``COMMAND COUNT``, ``COMMAND LIST`` (subcommands included;
``FILTERBY PATTERN``/``ACLCAT``/``MODULE``) and ``COMMAND HELP`` as Redis. The tips and key
specification flags are redis-server 7.0's; the ``since`` of arguments and the history of commands
are not kept.

``INFO section ...`` answers the named sections only (case-insensitive, in Mezzo's order, as Redis
orders them); ``all``, ``everything`` and ``default`` are every section (all of Mezzo's are in
Redis' default set), and a section Mezzo does not keep is left out (so alone it is empty).

Both register in ``commands.COMMANDS`` like the rest (``commands.py`` imports this module at its
end); the proxy answers them itself (``proxy.LOCAL``).
"""

from __future__ import annotations

from typing import Any

from mezzo.cache.commands import COMMANDS, SyntaxErr, command
from mezzo.cache.commands_docs import (
    KEY_SPEC_FLAGS,
    KEY_SPEC_NOTES,
    SUBCOMMANDS,
    TIPS,
    docs_reply,
    raw_map,
    status_set,
)
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

# redis-server's order of ACL categories (a row lists them in it)
_ACL_ORDER = ["keyspace", "read", "write", "set", "sortedset", "list", "hash", "string", "bitmap", "hyperloglog",
              "geo", "stream", "pubsub", "admin", "fast", "slow", "blocking", "dangerous", "connection",
              "transaction", "scripting"]

_SUBCOMMAND_ARITY = {sub.upper(): arity for sub, (arity, _) in SUBCOMMANDS[b"command"].items()}
_HELP = [
    "COMMAND <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "(no subcommand)",
    "    Return details about all commands: name, arity, flags, first key, last key, key step, ACL categories,",
    "    tips, key specifications and subcommands.",
    "COUNT",
    "    Return the total number of commands.",
    "LIST [FILTERBY (MODULE <module-name>|ACLCAT <category>|PATTERN <pattern>)]",
    "    Return a list of all commands and subcommands (<container>|<name>), optionally filtered.",
    "INFO [<command-name> ...]",
    "    Return details about the named commands (nil for an unknown name), or all of them.",
    "DOCS [<command-name> ...]",
    "    Return documentation details about the named commands (unknown names left out), or all of them.",
    "GETKEYS <full-command>",
    "    Return the keys from a full command.",
    "GETKEYSANDFLAGS <full-command>",
    "    Return the keys and the access flags from a full command.",
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


def _sub_categories(full: bytes) -> set[str]:
    container, _, sub = full.partition(b"|")
    return set(SUBCOMMANDS[container][sub][1].split())


def _subcommand(full: bytes) -> tuple[bytes, bytes] | None:
    """``(container, subcommand)`` for a ``container|name`` Mezzo answers, else None."""
    container, _, sub = full.partition(b"|")
    return (container, sub) if sub in SUBCOMMANDS.get(container, {}) else None


def _bulk_set(s: Session, items: list[str]) -> bytes:
    """A set of bulk strings (tips): a RESP3 set, or an array in RESP2."""
    return (b"~%d\r\n" if s.resp3 else b"*%d\r\n") % len(items) + b"".join(s.bulk(i.encode()) for i in items)


def key_spec_flags(name: str, readonly: bool) -> list[str]:
    """The flags of the key specification of ``name`` (a keyed command or ``container|name``)."""
    return KEY_SPEC_FLAGS.get(name, "RO access" if readonly else "RW update").split()


def _key_specs(s: Session, name: str, readonly: bool, first: int, last: int, step: int) -> bytes:
    """The one key specification of a keyed command (none for a keyless one): its keys begin at
    index ``first`` and run to ``last`` (counted from ``first``; negative from the end) by ``step``."""
    if first <= 0:
        return _bulk_set(s, [])
    pairs = [(b"notes", s.bulk(KEY_SPEC_NOTES[name].encode()))] if name in KEY_SPEC_NOTES else []
    pairs += [(b"flags", status_set(s, key_spec_flags(name, readonly))),
              (b"begin_search", raw_map(s, [(b"type", s.bulk(b"index")),
                                            (b"spec", raw_map(s, [(b"index", Reply.integer(first))]))])),
              (b"find_keys", raw_map(s, [(b"type", s.bulk(b"range")), (b"spec", raw_map(s, [
                  (b"lastkey", Reply.integer(last - first if last >= 0 else last)), (b"keystep", Reply.integer(step)),
                  (b"limit", Reply.integer(0))]))]))]
    return (b"~1\r\n" if s.resp3 else b"*1\r\n") + raw_map(s, pairs)


def _fields(s: Session, name: bytes, arity: int, flags: list[str], keys: tuple[int, int, int], found: set[str],
            subcommands: bytes) -> bytes:
    text = name.decode()
    ordered = [f"@{c}" for c in _ACL_ORDER if c in found]
    return s.raw_array([s.bulk(name), Reply.integer(arity), status_set(s, flags), *map(Reply.integer, keys),
                        status_set(s, ordered), _bulk_set(s, TIPS.get(text, "").split()),
                        _key_specs(s, text, "readonly" in flags, *keys), subcommands])


def _row(s: Session, name: bytes) -> bytes:
    """The ten fields of a command, or of a subcommand (``container|name``)."""
    found = _subcommand(name)
    if found is not None:
        keyed = name.decode() in KEY_SPEC_FLAGS  # OBJECT's: the key after the subcommand
        arity, _ = SUBCOMMANDS[found[0]][found[1]]
        return _fields(s, name, arity, ["readonly"] if keyed else [], (2, 2, 1) if keyed else (0, 0, 0),
                       _sub_categories(name), _bulk_set(s, []))
    _, arity, flags = COMMANDS[name]
    subs = SUBCOMMANDS.get(name)
    # subcommands are an array, none an empty set (in RESP3), as redis-server 7.0 sends them
    nested = s.raw_array([_row(s, b"%s|%s" % (name, sub)) for sub in sorted(subs)]) if subs else _bulk_set(s, [])
    return _fields(s, name, arity, [f for f in flags.split(",") if f], key_positions(name), categories(name), nested)


def _known(name: bytes) -> bool:
    return name in COMMANDS or _subcommand(name) is not None


def _keys_and_flags(args: list[bytes]) -> tuple[list[bytes], list[str]]:
    """The keys of the command line ``args`` and the access flags of each, refused as redis-server
    refuses: an unknown command (or subcommand) first, then one without keys, then a wrong count."""
    name = args[0].lower()
    entry = COMMANDS.get(name)
    if entry is None:
        raise CacheError(UNKNOWN)
    arity, readonly, text = entry[1], "readonly" in entry[2], name.decode()
    first, last, step = key_positions(name)
    if name in SUBCOMMANDS:  # a container: its subcommand says the keys
        found = _subcommand(b"%s|%s" % (name, args[1].lower()))
        if found is None:
            raise CacheError(UNKNOWN)
        text = f"{text}|{found[1].decode()}"
        if text not in KEY_SPEC_FLAGS:
            raise CacheError(NO_KEYS)
        arity, readonly, (first, last, step) = SUBCOMMANDS[found[0]][found[1]][0], True, (2, 2, 1)
    if first == 0:
        raise CacheError(NO_KEYS)
    if (arity > 0 and len(args) != arity) or len(args) < -arity:
        raise CacheError(BAD_COUNT)
    stop = last if last >= 0 else len(args) + last
    flags = [f for f in key_spec_flags(text, readonly) if f != "variable_flags"]
    if name == b"set":  # as redis-server's setGetKeys: GET anywhere after the value reads the old one
        flags = ["RW", "access", "update"] if any(a.upper() == b"GET" for a in args[3:]) else ["OW", "update"]
    return args[first:stop + 1:step], flags


def command_keys(args: list[bytes]) -> list[bytes]:
    """``COMMAND GETKEYS``: the keys of the command line ``args`` (refused as ``_keys_and_flags``)."""
    return _keys_and_flags(args)[0]


def _every_name() -> list[bytes]:
    """Every command and subcommand (``container|name``), as ``COMMAND LIST`` gives them."""
    subs = [b"%s|%s" % (c, sub) for c, names in SUBCOMMANDS.items() if c in COMMANDS for sub in names]
    return sorted([*COMMANDS, *subs])


def _listed(a: list[bytes]) -> list[bytes]:
    """``COMMAND LIST`` and its one ``FILTERBY`` (a pattern and a category match in any case)."""
    names = _every_name()
    if len(a) == 2:
        return names
    if len(a) != 5 or a[2].upper() != b"FILTERBY":
        raise SyntaxErr()
    kind, arg = a[3].upper(), a[4]
    if kind == b"MODULE":
        return []
    if kind == b"ACLCAT":
        category = arg.decode(errors="replace").lower()
        return [n for n in names if category in (_sub_categories(n) if b"|" in n else categories(n))]
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
            rows.append(_row(s, name) if _known(name) else s.null())
        return s.raw_array(rows)
    if sub == b"GETKEYS":
        return s.array(command_keys(a[2:]))  # type: ignore[arg-type]
    if sub == b"GETKEYSANDFLAGS":
        keys, flags = _keys_and_flags(a[2:])
        each = status_set(s, flags)
        return s.raw_array([b"*2\r\n" + s.bulk(key) + each for key in keys])
    if sub == b"LIST":
        return s.array(_listed(a))  # type: ignore[arg-type]
    if sub == b"DOCS":
        return docs_reply(s, a[2:] or sorted(COMMANDS))
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
