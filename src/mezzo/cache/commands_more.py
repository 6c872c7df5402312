"""More Redis commands over the embedded engine: absolute expiry (``EXPIREAT``, ``PEXPIREAT``,
``EXPIRETIME``, ``PEXPIRETIME``), string ranges (``GETRANGE``, ``SUBSTR``, ``SETRANGE``),
``HINCRBYFLOAT`` and ``OBJECT``, each with redis-server 7's replies and error texts.

They register in ``commands.COMMANDS`` like the rest (``commands.py`` imports this module at its
end), so dispatch, ``COMMAND`` and the proxy's planning see them. Writes go through the engine's
``store``/``expire_at``/``resized``, which count the op, tell near caches and keep the memory limit,
as every other write does.

``OBJECT`` answers what the engine knows: ``ENCODING`` names the encoding redis-server gives a
value of that type and size when it is written whole (see ``encoding``); ``FREQ`` is the key's LFU
counter, Redis' logarithmic 0-255 one decayed to now (namespaces that evict by LFU only, as in
Redis; see ``engine.lfu_touched``); ``REFCOUNT`` is 1, since
the engine shares no value between keys; ``IDLETIME`` is an error, since the engine keeps keys in
LRU order but no access time per key.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from mezzo.cache.commands import (
    PROTO_MAX_BULK_LEN,
    _expire,
    _hash_commit,
    _hash_edit,
    _int,
    _ks,
    command,
)
from mezzo.cache.engine import WRONGTYPE, CacheError, Value
from mezzo.cache.numbers import add_long_doubles, format_long_double, parse_int, parse_long_double
from mezzo.cache.resp import Reply, Session

EMBSTR_SIZE_LIMIT = 44  # OBJ_ENCODING_EMBSTR_SIZE_LIMIT
INT_ENCODING_CHARS = 20  # a string of at most this many characters that reads as a 64-bit integer is "int"
HASH_LISTPACK_ENTRIES = 128  # hash-max-listpack-entries (Redis 7's default)
HASH_LISTPACK_VALUE = 64  # hash-max-listpack-value: the longest field or value a listpack holds

# --- absolute expiry ------------------------------------------------------------------------


@command("expireat", -3, "write")
def expireat(server: Any, s: Session, a: list[bytes]) -> bytes:
    return _expire(server, s, a, 1000, absolute=True)


@command("pexpireat", -3, "write")
def pexpireat(server: Any, s: Session, a: list[bytes]) -> bytes:
    return _expire(server, s, a, 1, absolute=True)


def _expire_time(server: Any, s: Session, key: bytes, unit: int) -> bytes:
    """-2: no such key; -1: no TTL; else the deadline, in seconds rounded to the nearest (as Redis
    rounds TTL) or in milliseconds. The key is not touched."""
    ks = _ks(server, s)
    if not ks.exists(key):
        return Reply.integer(-2)
    deadline = ks.expires.get(key)
    if deadline is None:
        return Reply.integer(-1)
    return Reply.integer(deadline if unit == 1 else (deadline + unit // 2) // unit)


@command("expiretime", 2, "readonly")
def expiretime(server: Any, s: Session, a: list[bytes]) -> bytes:
    return _expire_time(server, s, a[1], 1000)


@command("pexpiretime", 2, "readonly")
def pexpiretime(server: Any, s: Session, a: list[bytes]) -> bytes:
    return _expire_time(server, s, a[1], 1)


# --- string ranges --------------------------------------------------------------------------


def string_range(value: bytes, start: int, end: int) -> bytes:
    """``GETRANGE``'s bytes: both ends inclusive, negative ones counted from the end, clamped to the
    string; a negative range that runs backwards is empty."""
    n = len(value)
    if start < 0 and end < 0 and start > end:
        return b""
    start = max(start + n if start < 0 else start, 0)
    end = min(max(end + n if end < 0 else end, 0), n - 1)
    return value[start:end + 1] if n and start <= end else b""


@command("getrange", 4, "readonly")
def getrange(server: Any, s: Session, a: list[bytes]) -> bytes:
    start, end = _int(a[2]), _int(a[3])  # checked before the key, as Redis does
    value = _ks(server, s).string(a[1])
    return s.bulk(string_range(value, start, end) if value is not None else b"")  # a missing key: ""


@command("substr", 4, "readonly")
def substr(server: Any, s: Session, a: list[bytes]) -> bytes:
    return getrange(server, s, a)


@command("setrange", 4, "write")
def setrange(server: Any, s: Session, a: list[bytes]) -> bytes:
    offset = _int(a[2])
    if offset < 0:
        raise CacheError("offset is out of range")
    ks, value = _ks(server, s), a[3]
    old = ks.lookup(a[1], count=False)  # a write's lookup: not a hit or a miss
    if old is not None and not isinstance(old, bytes):
        raise CacheError(WRONGTYPE)
    if not value:  # nothing to write: the length as it is, and a missing key stays missing
        return Reply.integer(len(old) if old is not None else 0)
    if offset + len(value) > PROTO_MAX_BULK_LEN:
        raise CacheError("string exceeds maximum allowed size (proto-max-bulk-len)")
    buf = bytearray(old or b"")
    if len(buf) < offset:
        buf.extend(bytes(offset - len(buf)))  # zero bytes up to the offset
    buf[offset:offset + len(value)] = value
    ks.store(a[1], bytes(buf), keep_ttl=old is not None)
    return Reply.integer(len(buf))


# --- hashes ---------------------------------------------------------------------------------


@command("hincrbyfloat", 4, "write")
def hincrbyfloat(server: Any, s: Session, a: list[bytes]) -> bytes:
    by = parse_long_double(a[3])
    if by is None:
        raise CacheError("value is not a valid float")
    if isinstance(by, float):  # an infinity (NaN is not read at all): refused before the key is looked at
        raise CacheError("value is NaN or Infinity")
    ks, h, before, fresh = _hash_edit(server, s, a[1])
    raw = h.get(a[2])
    current: Fraction | float | None = Fraction(0) if raw is None else parse_long_double(raw)
    if current is None:
        raise CacheError("hash value is not a float")
    total = add_long_doubles(current, by)
    if total is None:
        raise CacheError("increment would produce NaN or Infinity")
    text = format_long_double(total)  # as INCRBYFLOAT writes it
    h[a[2]] = text
    _hash_commit(ks, a[1], h, before, fresh)
    return s.bulk(text)


# --- OBJECT ---------------------------------------------------------------------------------

_OBJECT_KEYED = (b"ENCODING", b"FREQ", b"IDLETIME", b"REFCOUNT")
_OBJECT_HELP = [
    "OBJECT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "ENCODING <key>",
    "    Return the encoding Redis gives a value of the type and size of the one at <key>.",
    "FREQ <key>",
    "    Return the logarithmic access frequency counter of <key> (namespaces that evict by LFU only).",
    "IDLETIME <key>",
    "    Not tracked: Mezzo keeps keys in LRU order, not the time each was last read.",
    "REFCOUNT <key>",
    "    Return the number of references to the value of <key>: 1, values are not shared.",
    "HELP",
    "    Print this help.",
]
LFU_NOT_SELECTED = ("An LFU maxmemory policy is not selected, access frequency not tracked. Please note that when "
                    "switching between policies at runtime LRU and LFU data will take some time to adjust.")
LFU_SELECTED = ("An LFU maxmemory policy is selected, idle time not tracked. Please note that when switching "
                "between policies at runtime LRU and LFU data will take some time to adjust.")
NO_IDLE_TIME = "ERR idle time not tracked: Mezzo's cache keeps no last-access time per key."


def object_key(args: list[bytes]) -> bytes | None:
    """The key an ``OBJECT`` command reads, None for ``HELP`` and for a malformed one (answered locally)."""
    if len(args) == 3 and args[1].upper() in _OBJECT_KEYED:
        return args[2]
    return None


def encoding(value: Value) -> bytes:
    """The encoding redis-server 7 (default settings) gives this value when it is written whole:
    a string is ``int`` when it reads as a 64-bit integer in at most 20 characters, else ``embstr``
    up to 44 bytes, else ``raw``; a hash is ``listpack`` up to 128 fields with no field or value
    longer than 64 bytes, else ``hashtable``."""
    if isinstance(value, bytes):
        if len(value) <= INT_ENCODING_CHARS and parse_int(value) is not None:
            return b"int"
        return b"embstr" if len(value) <= EMBSTR_SIZE_LIMIT else b"raw"
    small = len(value) <= HASH_LISTPACK_ENTRIES and all(
        len(f) <= HASH_LISTPACK_VALUE and len(v) <= HASH_LISTPACK_VALUE for f, v in value.items())
    return b"listpack" if small else b"hashtable"


@command("object", -2)
def object_(server: Any, s: Session, a: list[bytes]) -> bytes:
    sub = a[1].upper()
    if sub != b"HELP" and sub not in _OBJECT_KEYED:
        raise CacheError(f"unknown subcommand '{a[1][:128].decode(errors='replace')}'. Try OBJECT HELP.")
    if len(a) != (2 if sub == b"HELP" else 3):
        raise CacheError(f"wrong number of arguments for 'object|{sub.lower().decode()}' command")
    if sub == b"HELP":
        return s.raw_array([Reply.simple(line) for line in _OBJECT_HELP])
    ks = _ks(server, s)
    value = ks.peek(a[2])
    if value is None:
        return s.null()
    if sub == b"ENCODING":
        return s.bulk(encoding(value))
    if sub == b"REFCOUNT":
        return Reply.integer(1)
    if sub == b"FREQ":
        if ks.policy != "lfu":
            raise CacheError(LFU_NOT_SELECTED)
        return Reply.integer(ks.frequency(a[2]))
    raise CacheError(LFU_SELECTED if ks.policy == "lfu" else NO_IDLE_TIME)  # IDLETIME
