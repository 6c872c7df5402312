"""Redis commands over the embedded engine: strings, hashes, keys, connection and server commands."""

from __future__ import annotations

import re
from collections.abc import Callable
from fractions import Fraction
from typing import Any

from mezzo.cache.engine import OOM, WRONGTYPE, CacheError, Engine, Keyspace, now_ms
from mezzo.cache.numbers import (
    INT_MAX,
    INT_MIN,
    add_long_doubles,
    format_long_double,
    parse_int,
    parse_long_double,
)
from mezzo.cache.resp import NULL2, NULL3, OK, PONG, Reply, Session

PROTO_MAX_BULK_LEN = 512 * 1024 * 1024  # redis-server's proto-max-bulk-len: the longest string APPEND or SETRANGE makes

Cmd = Callable[[Any, Session, list[bytes]], bytes]
COMMANDS: dict[bytes, tuple[Cmd, int, str]] = {}  # name -> (handler, arity as Redis counts it, flags)
NO_AUTH = {b"auth", b"hello", b"quit", b"ping"}


def command(name: str, arity: int, flags: str = "") -> Callable[[Cmd], Cmd]:
    def register(fn: Cmd) -> Cmd:
        COMMANDS[name.encode()] = (fn, arity, flags)
        return fn
    return register


class SyntaxErr(CacheError):
    def __init__(self) -> None:
        super().__init__("syntax error")


def _int(raw: bytes, error: str = "value is not an integer or out of range") -> int:
    """An integer argument as Redis reads one (no spaces, signs, underscores or leading zeros; 64 bits)."""
    value = parse_int(raw)
    if value is None:
        raise CacheError(error)
    return value


def _ks(server: Any, s: Session) -> Keyspace:
    return server.space_for(s)  # type: ignore[no-any-return]


_TTL_OPTIONS = {b"EX", b"PX", b"EXAT", b"PXAT"}
_UNITS = {b"EX": (1000, False), b"PX": (1, False), b"EXAT": (1000, True), b"PXAT": (1, True)}


def _deadline(option: bytes, raw: bytes, command: str) -> int:
    """The deadline (ms since the epoch) an ``EX``/``PX``/``EXAT``/``PXAT`` value names, refused as
    Redis refuses it: not positive, or past what 64 bits of milliseconds hold."""
    unit, absolute = _UNITS[option]
    n = _int(raw)
    if n <= 0 or n > INT_MAX // unit:
        raise CacheError(f"invalid expire time in '{command}' command")
    deadline = n * unit + (0 if absolute else now_ms())
    if deadline > INT_MAX:
        raise CacheError(f"invalid expire time in '{command}' command")
    return deadline


def _expiry_options(a: list[bytes], start: int, command: bytes) -> tuple[tuple[bytes, bytes] | None, set[bytes]]:
    """``SET``'s and ``GETEX``'s options from ``a[start:]``, with Redis' rules: one kind of expiry
    (given twice, the last wins), ``KEEPTTL`` (SET) or ``PERSIST`` (GETEX) instead of one, NX or XX."""
    expiry: tuple[bytes, bytes] | None = None
    flags: set[bytes] = set()
    alone = b"KEEPTTL" if command == b"set" else b"PERSIST"
    i = start
    while i < len(a):
        opt = a[i].upper()
        if opt in _TTL_OPTIONS and alone not in flags and (expiry is None or expiry[0] == opt) and i + 1 < len(a):
            expiry = (opt, a[i + 1])
            i += 1
        elif opt == alone and expiry is None:
            flags.add(opt)
        elif command == b"set" and (opt == b"GET" or (opt == b"NX" and b"XX" not in flags)
                                     or (opt == b"XX" and b"NX" not in flags)):
            flags.add(opt)
        else:
            raise SyntaxErr()
        i += 1
    return expiry, flags


# --- strings ----------------------------------------------------------------------------------

@command("get", 2, "readonly")
def get(server: Any, s: Session, a: list[bytes]) -> bytes:
    value = server.space_for(s).string(a[1])
    if value is None:
        return NULL3 if s.resp3 else NULL2
    return b"$%d\r\n%s\r\n" % (len(value), value)  # Session.bulk, inlined for the hottest command


@command("set", -3, "write")
def set_(server: Any, s: Session, a: list[bytes]) -> bytes:
    ks = server.space_for(s)
    if len(a) == 3:  # plain SET, by far the most common
        ks.store(a[1], a[2])
        return OK
    expiry, flags = _expiry_options(a, 3, b"set")
    deadline = _deadline(*expiry, "set") if expiry is not None else None
    want_old = b"GET" in flags
    old = ks.string(a[1]) if want_old else None
    exists = ks.exists(a[1])
    if (b"NX" in flags and exists) or (b"XX" in flags and not exists):
        return s.bulk(old) if want_old else s.null()
    ks.store(a[1], a[2], at=deadline, keep_ttl=b"KEEPTTL" in flags)
    return s.bulk(old) if want_old else OK


@command("setnx", 3, "write")
def setnx(server: Any, s: Session, a: list[bytes]) -> bytes:
    ks = _ks(server, s)
    if ks.exists(a[1]):
        return Reply.integer(0)
    ks.store(a[1], a[2])
    return Reply.integer(1)


@command("setex", 4, "write")
def setex(server: Any, s: Session, a: list[bytes]) -> bytes:
    _ks(server, s).store(a[1], a[3], at=_deadline(b"EX", a[2], "setex"))
    return OK


@command("psetex", 4, "write")
def psetex(server: Any, s: Session, a: list[bytes]) -> bytes:
    _ks(server, s).store(a[1], a[3], at=_deadline(b"PX", a[2], "psetex"))
    return OK


@command("mget", -2, "readonly")
def mget(server: Any, s: Session, a: list[bytes]) -> bytes:
    ks = _ks(server, s)
    out = []
    for key in a[1:]:
        value = ks.lookup(key)
        out.append(value if isinstance(value, bytes) else None)
    return s.array(out)


@command("mset", -3, "write")
def mset(server: Any, s: Session, a: list[bytes]) -> bytes:
    if len(a) % 2 != 1:
        raise CacheError("wrong number of arguments for 'mset' command")
    ks = _ks(server, s)
    for i in range(1, len(a), 2):
        ks.store(a[i], a[i + 1])
    return OK


@command("getdel", 2, "write")
def getdel(server: Any, s: Session, a: list[bytes]) -> bytes:
    ks = _ks(server, s)
    value = ks.string(a[1])
    if value is not None:
        ks.delete(a[1])
    return s.bulk(value)


@command("getex", -2, "write")
def getex(server: Any, s: Session, a: list[bytes]) -> bytes:
    expiry, flags = _expiry_options(a, 2, b"getex")  # options first: a syntax error even for a missing key
    ks = _ks(server, s)
    value = ks.string(a[1])
    if value is None:
        return s.null()
    if expiry is not None:
        ks.expire_at(a[1], _deadline(*expiry, "getex"))  # a deadline already past deletes the key
    elif b"PERSIST" in flags:
        ks.expire(a[1], None)
    return s.bulk(value)


@command("append", 3, "write")
def append(server: Any, s: Session, a: list[bytes]) -> bytes:
    ks = _ks(server, s)
    current = ks.string(a[1]) or b""
    if len(current) + len(a[2]) > PROTO_MAX_BULK_LEN:  # checked before anything is written, as in Redis
        raise CacheError("string exceeds maximum allowed size (proto-max-bulk-len)")
    value = current + a[2]
    ks.store(a[1], value, keep_ttl=True)
    return Reply.integer(len(value))


@command("strlen", 2, "readonly")
def strlen(server: Any, s: Session, a: list[bytes]) -> bytes:
    return Reply.integer(len(_ks(server, s).string(a[1]) or b""))


def _incr(server: Any, s: Session, key: bytes, by: int) -> bytes:
    ks = _ks(server, s)
    current = ks.string(key)
    value = _int(current) if current is not None else 0
    value += by
    if not INT_MIN <= value <= INT_MAX:
        raise CacheError("increment or decrement would overflow")
    ks.store(key, b"%d" % value, keep_ttl=current is not None)
    return Reply.integer(value)


@command("incr", 2, "write")
def incr(server: Any, s: Session, a: list[bytes]) -> bytes:
    return _incr(server, s, a[1], 1)


@command("decr", 2, "write")
def decr(server: Any, s: Session, a: list[bytes]) -> bytes:
    return _incr(server, s, a[1], -1)


@command("incrby", 3, "write")
def incrby(server: Any, s: Session, a: list[bytes]) -> bytes:
    return _incr(server, s, a[1], _int(a[2]))


@command("decrby", 3, "write")
def decrby(server: Any, s: Session, a: list[bytes]) -> bytes:
    by = _int(a[2])
    if by == INT_MIN:  # its negation does not fit in 64 bits
        raise CacheError("decrement would overflow")
    return _incr(server, s, a[1], -by)


@command("incrbyfloat", 3, "write")
def incrbyfloat(server: Any, s: Session, a: list[bytes]) -> bytes:
    ks = _ks(server, s)
    current = ks.string(a[1])
    value = parse_long_double(current) if current is not None else Fraction(0)
    by = parse_long_double(a[2])
    if value is None or by is None:
        raise CacheError("value is not a valid float")
    total = add_long_doubles(value, by)
    if total is None:
        raise CacheError("increment would produce NaN or Infinity")
    text = format_long_double(total)  # as redis-server writes it: no exponent, 17 decimals at most
    ks.store(a[1], text, keep_ttl=current is not None)
    return s.bulk(text)


# --- keys -------------------------------------------------------------------------------------

@command("del", -2, "write")
def delete(server: Any, s: Session, a: list[bytes]) -> bytes:
    ks = _ks(server, s)
    return Reply.integer(sum(ks.delete(k) for k in a[1:]))


COMMANDS[b"unlink"] = (delete, -2, "write")


@command("exists", -2, "readonly")
def exists(server: Any, s: Session, a: list[bytes]) -> bytes:
    ks = _ks(server, s)
    return Reply.integer(sum(ks.exists(k) for k in a[1:]))


def _expire(server: Any, s: Session, a: list[bytes], unit: int, absolute: bool = False) -> bytes:
    """EXPIRE and PEXPIRE (and, ``absolute``, EXPIREAT and PEXPIREAT) with NX (no TTL yet), XX (has
    one), GT and LT (later or earlier than the current deadline; no TTL counts as forever), checked
    as Redis checks them. A deadline already past deletes the key (and answers 1)."""
    options = {opt.upper() for opt in a[3:]}
    for opt in a[3:]:
        if opt.upper() not in (b"NX", b"XX", b"GT", b"LT"):
            raise CacheError(f"Unsupported option {opt.decode(errors='replace')}")
    if b"NX" in options and options & {b"XX", b"GT", b"LT"}:
        raise CacheError("ERR NX and XX, GT or LT options at the same time are not compatible")
    if {b"GT", b"LT"} <= options:
        raise CacheError("ERR GT and LT options at the same time are not compatible")
    n = _int(a[2])
    base = 0 if absolute else now_ms()
    limit = INT_MAX // unit  # seconds that fit in 64 bits of milliseconds (C's division: both signs alike)
    if (unit > 1 and not -limit <= n <= limit) or n * unit > INT_MAX - base:
        raise CacheError(f"invalid expire time in '{a[0].decode(errors='replace').lower()}' command")
    deadline = n * unit + base
    ks = _ks(server, s)
    if not ks.exists(a[1]):
        return Reply.integer(0)
    if options:
        current = ks.expires.get(a[1])  # None: no TTL, as good as forever
        if ((b"NX" in options and current is not None) or (b"XX" in options and current is None)
                or (b"GT" in options and (current is None or deadline <= current))
                or (b"LT" in options and current is not None and deadline >= current)):
            return Reply.integer(0)
    return Reply.integer(int(ks.expire_at(a[1], deadline)))


@command("expire", -3, "write")
def expire(server: Any, s: Session, a: list[bytes]) -> bytes:
    return _expire(server, s, a, 1000)


@command("pexpire", -3, "write")
def pexpire(server: Any, s: Session, a: list[bytes]) -> bytes:
    return _expire(server, s, a, 1)


@command("persist", 2, "write")
def persist(server: Any, s: Session, a: list[bytes]) -> bytes:
    return Reply.integer(int(_ks(server, s).expire(a[1], None)))


@command("ttl", 2, "readonly")
def ttl(server: Any, s: Session, a: list[bytes]) -> bytes:
    ms = _ks(server, s).ttl_ms(a[1])
    return Reply.integer(ms if ms < 0 else (ms + 500) // 1000)


@command("pttl", 2, "readonly")
def pttl(server: Any, s: Session, a: list[bytes]) -> bytes:
    return Reply.integer(_ks(server, s).ttl_ms(a[1]))


@command("type", 2, "readonly")
def type_(server: Any, s: Session, a: list[bytes]) -> bytes:
    value = _ks(server, s).lookup(a[1], count=False)
    return Reply.simple("none" if value is None else "string" if isinstance(value, bytes) else "hash")


@command("keys", 2, "readonly")
def keys(server: Any, s: Session, a: list[bytes]) -> bytes:
    return s.array(_ks(server, s).keys(a[1]))  # type: ignore[arg-type]


_CURSOR = re.compile(rb"[+-]?[0-9]{1,20}")


@command("scan", -2, "readonly")
def scan(server: Any, s: Session, a: list[bytes]) -> bytes:
    if _CURSOR.fullmatch(a[1]) is None or abs(int(a[1])) >= 2**64:  # Redis reads it with strtoul
        raise CacheError("invalid cursor")
    cursor = int(a[1])
    match, count, kind = None, 10, None
    i = 2
    while i < len(a):
        opt = a[i].upper()
        if i + 1 >= len(a):
            raise SyntaxErr()
        if opt == b"MATCH":
            match = a[i + 1]
        elif opt == b"COUNT":
            count = _int(a[i + 1])
            if count < 1:
                raise SyntaxErr()
        elif opt == b"TYPE":
            kind = a[i + 1].decode().lower()
        else:
            raise SyntaxErr()
        i += 2
    nxt, found = _ks(server, s).scan(cursor, match, count, kind)
    return s.raw_array([s.bulk(b"%d" % nxt), s.array(found)])  # type: ignore[arg-type]


@command("dbsize", 1, "readonly")
def dbsize(server: Any, s: Session, a: list[bytes]) -> bytes:
    return Reply.integer(len(_ks(server, s).data))  # as Redis: expired keys not reclaimed yet count too


def _flush_mode(a: list[bytes]) -> None:
    """``FLUSHDB``/``FLUSHALL`` take ASYNC or SYNC (both empty at once here); anything else is refused
    before anything is emptied."""
    if len(a) > 2 or (len(a) == 2 and a[1].upper() not in (b"ASYNC", b"SYNC")):
        raise SyntaxErr()


@command("flushdb", -1, "write")
def flushdb(server: Any, s: Session, a: list[bytes]) -> bytes:
    _flush_mode(a)
    _ks(server, s).flush()
    return OK


@command("flushall", -1, "write")
def flushall(server: Any, s: Session, a: list[bytes]) -> bytes:
    _flush_mode(a)
    for ks in server.engine.spaces.values():
        ks.flush()
    return OK


# --- hashes -----------------------------------------------------------------------------------

def _hash_edit(server: Any, s: Session, key: bytes, grows: bool = True) -> tuple[Keyspace, dict[bytes, bytes], int, bool]:
    ks = _ks(server, s)
    h = ks.hash(key, create=True)
    assert h is not None
    if grows and ks.over_limit():  # noeviction: a hash edited in place is refused up front
        raise CacheError(OOM)
    from mezzo.cache.engine import _size

    fresh = key not in ks.data or not ks.exists(key)
    return ks, h, (_size(key, h) if not fresh else 0), fresh


def _hash_commit(ks: Keyspace, key: bytes, h: dict[bytes, bytes], before: int, fresh: bool) -> None:
    if fresh:
        if h:
            ks.store(key, h)
    elif not h:
        ks.delete(key)
    else:
        ks.resized(key, before)


@command("hset", -4, "write")
def hset(server: Any, s: Session, a: list[bytes]) -> bytes:
    if len(a) % 2 != 0:
        raise CacheError("wrong number of arguments for 'hset' command")
    ks, h, before, fresh = _hash_edit(server, s, a[1])
    added = 0
    for i in range(2, len(a), 2):
        added += a[i] not in h
        h[a[i]] = a[i + 1]
    _hash_commit(ks, a[1], h, before, fresh)
    return Reply.integer(added)


COMMANDS[b"hmset"] = (lambda server, s, a: (hset(server, s, a), OK)[1], -4, "write")


@command("hget", 3, "readonly")
def hget(server: Any, s: Session, a: list[bytes]) -> bytes:
    h = _ks(server, s).hash(a[1])
    return s.bulk(h.get(a[2]) if h else None)


@command("hmget", -3, "readonly")
def hmget(server: Any, s: Session, a: list[bytes]) -> bytes:
    h = _ks(server, s).hash(a[1]) or {}
    return s.array([h.get(f) for f in a[2:]])


@command("hdel", -3, "write")
def hdel(server: Any, s: Session, a: list[bytes]) -> bytes:
    ks = _ks(server, s)
    if ks.hash(a[1]) is None:
        return Reply.integer(0)
    ks, h, before, fresh = _hash_edit(server, s, a[1], grows=False)
    removed = sum(h.pop(f, None) is not None for f in a[2:])
    _hash_commit(ks, a[1], h, before, fresh)
    return Reply.integer(removed)


@command("hgetall", 2, "readonly")
def hgetall(server: Any, s: Session, a: list[bytes]) -> bytes:
    h = _ks(server, s).hash(a[1]) or {}
    return s.map(list(h.items()))


@command("hkeys", 2, "readonly")
def hkeys(server: Any, s: Session, a: list[bytes]) -> bytes:
    return s.array(list((_ks(server, s).hash(a[1]) or {}).keys()))  # type: ignore[arg-type]


@command("hvals", 2, "readonly")
def hvals(server: Any, s: Session, a: list[bytes]) -> bytes:
    return s.array(list((_ks(server, s).hash(a[1]) or {}).values()))  # type: ignore[arg-type]


@command("hexists", 3, "readonly")
def hexists(server: Any, s: Session, a: list[bytes]) -> bytes:
    return Reply.integer(int(a[2] in (_ks(server, s).hash(a[1]) or {})))


@command("hlen", 2, "readonly")
def hlen(server: Any, s: Session, a: list[bytes]) -> bytes:
    return Reply.integer(len(_ks(server, s).hash(a[1]) or {}))


@command("hincrby", 4, "write")
def hincrby(server: Any, s: Session, a: list[bytes]) -> bytes:
    by = _int(a[3])
    ks, h, before, fresh = _hash_edit(server, s, a[1])
    current = parse_int(h.get(a[2], b"0"))
    if current is None:
        raise CacheError("hash value is not an integer")
    value = current + by
    if not INT_MIN <= value <= INT_MAX:
        raise CacheError("increment or decrement would overflow")
    h[a[2]] = b"%d" % value
    _hash_commit(ks, a[1], h, before, fresh)
    return Reply.integer(value)


# --- connection and server --------------------------------------------------------------------

@command("ping", -1)
def ping(server: Any, s: Session, a: list[bytes]) -> bytes:
    if len(a) > 2:
        raise CacheError(arity_error(b"ping"))
    return s.bulk(a[1]) if len(a) > 1 else PONG


@command("echo", 2)
def echo(server: Any, s: Session, a: list[bytes]) -> bytes:
    return s.bulk(a[1])


@command("quit", -1)
def quit_(server: Any, s: Session, a: list[bytes]) -> bytes:
    s.closing = True
    return OK


@command("select", 2)
def select(server: Any, s: Session, a: list[bytes]) -> bytes:
    db = _int(a[1])
    if not 0 <= db < 16:
        raise CacheError("ERR DB index is out of range")  # "DB" is not an error code
    server.select(s, db)
    return OK


@command("auth", -2)
def auth(server: Any, s: Session, a: list[bytes]) -> bytes:
    if len(a) > 3:
        raise SyntaxErr()
    token = a[-1].decode("utf-8", "replace")  # AUTH token, or AUTH user token (the user is ignored)
    if not server.login(s, token):
        return Reply.error("WRONGPASS invalid username-password pair or user is disabled.")
    return OK


@command("hello", -1)
def hello(server: Any, s: Session, a: list[bytes]) -> bytes:
    i = 1
    if len(a) > 1:
        version = _int(a[1], "Protocol version is not an integer or out of range")
        if version not in (2, 3):
            return Reply.error("NOPROTO unsupported protocol version")
        i = 2
    else:
        version = 3 if s.resp3 else 2
    while i < len(a):
        opt = a[i].upper()
        if opt == b"AUTH" and i + 2 < len(a):
            if not server.login(s, a[i + 2].decode("utf-8", "replace")):
                return Reply.error("WRONGPASS invalid username-password pair or user is disabled.")
            i += 3
        elif opt == b"SETNAME" and i + 1 < len(a):
            s.name = a[i + 1]
            i += 2
        else:
            raise SyntaxErr()
    if not s.authed:
        return Reply.error("NOAUTH HELLO must be called with the client already authenticated, "
                           "otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate")
    s.resp3 = version == 3
    info = [(b"server", s.bulk(b"mezzo")), (b"version", s.bulk(b"7.0.0")), (b"proto", Reply.integer(version)),
            (b"id", Reply.integer(s.id)), (b"mode", s.bulk(b"standalone")), (b"role", s.bulk(b"master")),
            (b"modules", s.raw_array([]))]
    head = b"%%%d\r\n" % len(info) if s.resp3 else b"*%d\r\n" % (2 * len(info))
    return head + b"".join(s.bulk(k) + v for k, v in info)


@command("client", -2)
def client(server: Any, s: Session, a: list[bytes]) -> bytes:
    sub = a[1].upper()
    if sub == b"SETNAME" and len(a) == 3:
        if any(c < 0x21 or c > 0x7E for c in a[2]):  # as Redis: no spaces, newlines or special characters
            raise CacheError("Client names cannot contain spaces, newlines or special characters.")
        s.name = a[2] or None
        return OK
    if sub == b"GETNAME":
        return s.bulk(s.name)
    if sub == b"ID":
        return Reply.integer(s.id)
    if sub == b"SETINFO":
        return OK
    if sub == b"LIST":
        lines = [f"id={c.session.id} addr={c.session.peer} name={(c.session.name or b'').decode()} db={c.session.db}"
                 for c in server.clients.values() if c.session is not None]
        return s.bulk(("\n".join(lines) + "\n").encode())
    raise CacheError(f"unknown subcommand '{a[1].decode(errors='replace')}'")


@command("config", -2)
def config(server: Any, s: Session, a: list[bytes]) -> bytes:
    if a[1].upper() == b"GET" and len(a) >= 3:  # redis-benchmark asks for save and appendonly
        known = {b"save": b"", b"appendonly": b"no", b"maxmemory": b"%d" % (server.max_memory or 0),
                 b"databases": b"16"}
        pairs = [(k, v) for k, v in known.items() if any(_glob(p, k) for p in a[2:])]
        return s.map(pairs)
    raise CacheError("ERR CONFIG subcommands other than GET are not supported by Mezzo")


def _glob(pattern: bytes, name: bytes) -> bool:
    import fnmatch

    return fnmatch.fnmatchcase(name.decode(), pattern.decode().lower())


def arity_error(name: bytes) -> str:
    return f"wrong number of arguments for '{name.decode(errors='replace')}' command"


__all__ = ["COMMANDS", "NO_AUTH", "WRONGTYPE", "CacheError", "Cmd", "Engine", "arity_error"]

# More commands (absolute expiry, string ranges, HINCRBYFLOAT, OBJECT; then COMMAND and INFO) register
# themselves in the same table: imported last, so everything they take from here exists.
from mezzo.cache import commands_info, commands_more  # noqa: E402, F401
