"""Redis commands as memcached meta requests, with the replies Redis clients expect.

``translate(args)`` turns one Redis command (as the proxy and the HTTP key API send it) into an
``Op``: a generator that yields the meta requests of a round and is sent their replies, and
finally returns the reply a Redis node would have given (bytes, int, None, or a ``ReplyError``).
Most commands are one round (``GET`` is ``mg k v``). Where memcached has no single request with
Redis' meaning, the op reads the item's CAS token first and writes with it, retrying when
another client got in between: ``GETDEL``, ``SET`` with ``GET`` or ``KEEPTTL``, and every counter
(``INCR``, ``INCRBY``, ``DECR``, ``DECRBY``). memcached's ``incr`` is unsigned: it clamps ``decr``
at 0, takes no negative number, wraps past 2**64-1, goes past 2**63-1, and reads ``007``, `` 7``,
``7 abc`` or ``-0`` as numbers, all of which Redis refuses; so the value is read and checked as
Redis checks it first, and only a sum Redis would store is written (``ma`` with ``C`` from a value
>= 0, which keeps the item's exact TTL; ``ms`` with ``C`` below zero).

Where the two differ and this cannot hide it: TTLs are whole seconds (rounded up), and values are
strings only.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any, NamedTuple

from mezzo.cache.distributed.meta import (
    FLUSH_ALL,
    STATS,
    MetaReply,
    ReplyError,
    at_flag,
    kept_ttl,
    ma,
    md,
    mg,
    ms,
    stat,
    ttl_flag,
)
from mezzo.cache.numbers import parse_int

Steps = Generator[list[bytes], list[MetaReply], Any]
ONE, MAYBE_MORE, MORE = 1, 2, 3  # rounds an op takes: one; more on some replies only; always more
CAS_ATTEMPTS = 50
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_EXPIRE_MS = 2**62  # beyond this Redis answers "invalid expire time" too

# The client commands served (the proxy answers PING, SELECT and the like itself).
SERVED = frozenset({
    b"get", b"set", b"setnx", b"setex", b"psetex", b"mget", b"mset", b"del", b"unlink", b"exists",
    b"expire", b"pexpire", b"ttl", b"pttl", b"persist", b"incr", b"decr", b"incrby", b"decrby",
    b"append", b"getdel", b"getex", b"strlen", b"dbsize", b"flushdb",
})
NOT_INTEGER = "ERR value is not an integer or out of range"
OVERFLOW = "ERR increment or decrement would overflow"


class Op(NamedTuple):
    steps: Steps
    key: bytes
    rounds: int = ONE
    command: bytes = b""  # set where rounds is MAYBE_MORE: ops of one command on one key keep their order


def translate(args: Sequence[bytes]) -> Op:
    name = bytes(args[0]).lower()
    key = bytes(args[1]) if len(args) > 1 else b""
    build = _BUILDERS.get(name)
    if build is None:
        if name == b"eval" and len(args) == 5 and args[1] == _delete_if_script():
            return Op(_delete_if(bytes(args[3]), bytes(args[4])), bytes(args[3]), MORE)
        return _answer(key, ReplyError(f"ERR '{name.decode(errors='replace').upper()[:64]}' "
                                       f"is not supported on memcached nodes"))
    try:
        return build(key, args)
    except IndexError:
        return _answer(key, ReplyError(f"ERR wrong number of arguments for '{name.decode()}' command"))
    except ReplyError as exc:
        return _answer(key, exc)


def _answer(key: bytes, value: Any) -> Op:
    """An op answered without asking the node (a syntax error, say)."""
    def steps() -> Steps:
        return value
        yield []  # a generator that returns at once

    return Op(steps(), key)


def _unexpected(reply: MetaReply) -> ReplyError:
    if reply.code == b"ER":
        return reply.error()
    return ReplyError(f"ERR unexpected memcached reply {reply.code.decode(errors='replace')}")


def _contended(key: bytes) -> ReplyError:
    return ReplyError(f"ERR {key[:64]!r} kept changing under this command ({CAS_ATTEMPTS} attempts)")


def _int(raw: bytes, error: str = NOT_INTEGER) -> int:
    """An integer as Redis reads one (``string2ll``: no sign but ``-``, no spaces, no leading zero,
    not ``-0``, 64 bits), for arguments and stored values alike."""
    value = parse_int(raw)
    if value is None:
        raise ReplyError(error)
    return value


def _expiry_ms(raw: bytes, unit_ms: int, command: str) -> int:
    value = _int(raw)
    if value <= 0 or value * unit_ms > MAX_EXPIRE_MS:
        raise ReplyError(f"ERR invalid expire time in '{command}' command")
    return value * unit_ms


def _ttl_option(option: bytes, raw: bytes, command: str) -> int:
    """The ``T`` flag of an EX/PX/EXAT/PXAT option."""
    if option in (b"EX", b"PX"):
        return ttl_flag(_expiry_ms(raw, 1000 if option == b"EX" else 1, command))
    return at_flag(_expiry_ms(raw, 1000 if option == b"EXAT" else 1, command))


# strings -------------------------------------------------------------------------------------------------


def _get(key: bytes, args: Sequence[bytes]) -> Op:
    return _get_with(key, b"v")


def _set(key: bytes, args: Sequence[bytes]) -> Op:
    value = bytes(args[2])
    nx = xx = get = keep = False
    ttl = 0
    given = False
    i = 3
    while i < len(args):
        option = bytes(args[i]).upper()
        if option == b"NX" and not xx:
            nx = True
        elif option == b"XX" and not nx:
            xx = True
        elif option == b"GET":
            get = True
        elif option == b"KEEPTTL" and not given:
            keep = True
        elif option in (b"EX", b"PX", b"EXAT", b"PXAT") and not given and not keep and i + 1 < len(args):
            ttl, given = _ttl_option(option, bytes(args[i + 1]), "set"), True
            i += 1
        else:
            raise ReplyError("ERR syntax error")
        i += 1
    if get or keep:
        return Op(_set_cas(key, value, ttl, nx, xx, get, keep), key, MORE)
    mode = b" ME" if nx else b" MR" if xx else b""
    return Op(_stored(key, [ms(key, value, b"T%d%s" % (ttl, mode))], b"OK", None), key)


def _stored(key: bytes, requests: list[bytes], ok: Any, refused: Any) -> Steps:
    (r,) = yield requests
    if r.code == b"HD":
        return ok
    return refused if r.code in (b"NS", b"NF") else _unexpected(r)  # not stored / not found


def _set_cas(key: bytes, value: bytes, ttl: int, nx: bool, xx: bool, get: bool, keep: bool) -> Steps:
    """SET with GET (answer the old value) or KEEPTTL: read the item, then write it if unchanged."""
    for _ in range(CAS_ATTEMPTS):
        (old,) = yield [mg(key, b"v c t" if get else b"c t")]
        if old.code == b"EN":
            if xx:
                return None
            (w,) = yield [ms(key, value, b"T%d ME" % ttl)]
            if w.code == b"HD":
                return None if get else b"OK"
            if w.code == b"NS":
                continue  # created meanwhile
            return _unexpected(w)
        if old.code not in (b"VA", b"HD"):
            return _unexpected(old)
        previous = old.value if get else None
        if nx:
            return previous
        (w,) = yield [ms(key, value, b"T%d C%s" % (kept_ttl(old) if keep else ttl, old.flag(b"c") or b"0"))]
        if w.code == b"HD":
            return previous if get else b"OK"
        if w.code not in (b"EX", b"NF"):
            return _unexpected(w)
    return _contended(key)


def _setnx(key: bytes, args: Sequence[bytes]) -> Op:
    return Op(_stored(key, [ms(key, bytes(args[2]), b"T0 ME")], 1, 0), key)


def _setex(key: bytes, args: Sequence[bytes]) -> Op:
    name = bytes(args[0]).lower().decode()
    ttl = ttl_flag(_expiry_ms(bytes(args[2]), 1000 if name == "setex" else 1, name))
    return Op(_stored(key, [ms(key, bytes(args[3]), b"T%d" % ttl)], b"OK", None), key)


def _getdel(key: bytes, args: Sequence[bytes]) -> Op:
    def steps() -> Steps:
        for _ in range(CAS_ATTEMPTS):
            (r,) = yield [mg(key, b"v c")]
            if r.code == b"EN":
                return None
            if r.code != b"VA":
                return _unexpected(r)
            (d,) = yield [md(key, b"C%s" % (r.flag(b"c") or b"0"))]
            if d.code == b"HD":
                return r.value
            if d.code == b"NF":
                return None  # another client deleted it first
            if d.code != b"EX":
                return _unexpected(d)
        return _contended(key)

    return Op(steps(), key, MORE)


def _getex(key: bytes, args: Sequence[bytes]) -> Op:
    flags = b"v"
    if len(args) > 2:
        option = bytes(args[2]).upper()
        if option == b"PERSIST" and len(args) == 3:
            flags = b"v T0"
        elif option in (b"EX", b"PX", b"EXAT", b"PXAT") and len(args) == 4:
            flags = b"v T%d" % _ttl_option(option, bytes(args[3]), "getex")
        else:
            raise ReplyError("ERR syntax error")
    return _get_with(key, flags)


def _get_with(key: bytes, flags: bytes) -> Op:
    def steps() -> Steps:
        (r,) = yield [mg(key, flags)]
        if r.code == b"VA":
            return r.value
        return None if r.code == b"EN" else _unexpected(r)

    return Op(steps(), key)


def _append(key: bytes, args: Sequence[bytes]) -> Op:
    value = bytes(args[2])

    def steps() -> Steps:
        for _ in range(CAS_ATTEMPTS):
            # the length is read right after the append, on the same connection
            appended, size = yield [ms(key, value, b"MA"), mg(key, b"s")]
            if appended.code == b"HD":
                return int(size.flag(b"s") or len(value))
            if appended.code != b"NS":
                return _unexpected(appended)
            (w,) = yield [ms(key, value, b"T0 ME")]  # no such key: Redis creates it
            if w.code == b"HD":
                return len(value)
            if w.code != b"NS":
                return _unexpected(w)
        return _contended(key)

    return Op(steps(), key, MAYBE_MORE, b"append")


def _strlen(key: bytes, args: Sequence[bytes]) -> Op:
    def steps() -> Steps:
        (r,) = yield [mg(key, b"s")]
        if r.code == b"HD":
            return int(r.flag(b"s") or 0)
        return 0 if r.code == b"EN" else _unexpected(r)

    return Op(steps(), key)


# counters ------------------------------------------------------------------------------------------------


def _counter(key: bytes, args: Sequence[bytes]) -> Op:
    name = bytes(args[0]).lower()
    delta = _int(bytes(args[2])) if name in (b"incrby", b"decrby") else 1
    if name.startswith(b"decr"):
        if delta == INT64_MIN:
            raise ReplyError("ERR decrement would overflow")
        delta = -delta
    if delta < 0:
        return Op(_cas_add(key, delta), key, MORE)
    # Two rounds too, but increments of one key may share a pipeline: each writes with the CAS token
    # it read, so one that read before another's write retries, and they answer in order.
    return Op(_cas_add(key, delta), key, MAYBE_MORE, b"incr")


def _cas_add(key: bytes, delta: int) -> Steps:
    """Read the value with its CAS token, refuse it as Redis would (not a 64-bit integer as Redis
    writes one, or a sum outside 64 bits) without writing anything, else write the sum with the
    token, retried when another client got in between. A missing key starts at 0."""
    for _ in range(CAS_ATTEMPTS):
        (r,) = yield [mg(key, b"v c t")]
        if r.code == b"EN":
            (w,) = yield [ms(key, b"%d" % delta, b"T0 ME")]
            if w.code == b"HD":
                return delta
            if w.code != b"NS":
                return _unexpected(w)
            continue
        if r.code != b"VA":
            return _unexpected(r)
        try:
            current = _int(r.value or b"")
        except ReplyError as exc:
            return exc
        value = current + delta
        if not INT64_MIN <= value <= INT64_MAX:
            return ReplyError(OVERFLOW)
        cas = r.flag(b"c") or b"0"
        if current >= 0 and delta >= 0:  # memcached's incr writes these same digits, and keeps the TTL as it is
            (w,) = yield [ma(key, b"C%s D%d v" % (cas, delta))]
            if w.code == b"VA":
                return value
        else:
            (w,) = yield [ms(key, b"%d" % value, b"T%d C%s" % (kept_ttl(r), cas))]
            if w.code == b"HD":
                return value
        if w.code not in (b"EX", b"NF"):
            return _unexpected(w)
    return _contended(key)


# keys and TTLs -------------------------------------------------------------------------------------------


def _delete(key: bytes, args: Sequence[bytes]) -> Op:
    return Op(_stored(key, [md(key)], 1, 0), key)


def _exists(key: bytes, args: Sequence[bytes]) -> Op:
    return Op(_hit(key, b""), key)


def _hit(key: bytes, flags: bytes) -> Steps:
    (r,) = yield [mg(key, flags)]
    if r.code == b"HD":
        return 1
    return 0 if r.code == b"EN" else _unexpected(r)


def _expire(key: bytes, args: Sequence[bytes]) -> Op:
    name = bytes(args[0]).lower()
    if len(args) > 3:
        raise ReplyError(f"ERR the NX, XX, GT and LT options of {name.decode().upper()} "
                         f"are not supported on memcached nodes")
    amount = _int(bytes(args[2]))
    ms_ = amount * (1000 if name == b"expire" else 1)
    if abs(ms_) > MAX_EXPIRE_MS:
        raise ReplyError(f"ERR invalid expire time in '{name.decode()}' command")
    if ms_ <= 0:  # as in Redis: a TTL in the past deletes the key
        return Op(_stored(key, [md(key)], 1, 0), key)
    return Op(_hit(key, b"T%d" % ttl_flag(ms_)), key)


def _ttl(key: bytes, args: Sequence[bytes]) -> Op:
    scale = 1000 if bytes(args[0]).lower() == b"pttl" else 1

    def steps() -> Steps:
        (r,) = yield [mg(key, b"t")]
        if r.code == b"EN":
            return -2
        if r.code != b"HD":
            return _unexpected(r)
        left = int(r.flag(b"t") or b"-1")
        return -1 if left < 0 else left * scale

    return Op(steps(), key)


def _persist(key: bytes, args: Sequence[bytes]) -> Op:
    def steps() -> Steps:
        (r,) = yield [mg(key, b"t T0")]  # t is the TTL before this touch
        if r.code == b"EN":
            return 0
        if r.code != b"HD":
            return _unexpected(r)
        return 0 if int(r.flag(b"t") or b"-1") < 0 else 1

    return Op(steps(), key)


def _delete_if(key: bytes, expected: bytes) -> Steps:
    """The HTTP API's compare-and-delete (a Lua script on Redis nodes): 1 deleted, 0 missing, -1 differs."""
    for _ in range(CAS_ATTEMPTS):
        (r,) = yield [mg(key, b"v c")]
        if r.code == b"EN":
            return 0
        if r.code != b"VA":
            return _unexpected(r)
        if r.value != expected:
            return -1
        (d,) = yield [md(key, b"C%s" % (r.flag(b"c") or b"0"))]
        if d.code in (b"HD", b"NF"):
            return int(d.code == b"HD")
        if d.code != b"EX":
            return _unexpected(d)
    return _contended(key)


def _delete_if_script() -> bytes:
    from mezzo.cache.remote_keys import _DELETE_IF

    return _DELETE_IF


# keyless (on every node) ---------------------------------------------------------------------------------


def _dbsize(key: bytes, args: Sequence[bytes]) -> Op:
    def steps() -> Steps:
        (r,) = yield [STATS]
        return stat(r.value or b"", b"curr_items") if r.code == b"ST" else _unexpected(r)

    return Op(steps(), b"")


def _flushdb(key: bytes, args: Sequence[bytes]) -> Op:
    if len(args) > 2 or (len(args) == 2 and bytes(args[1]).upper() not in (b"ASYNC", b"SYNC")):
        raise ReplyError("ERR syntax error")

    def steps() -> Steps:
        (r,) = yield [FLUSH_ALL]
        return b"OK" if r.code == b"OK" else _unexpected(r)

    return Op(steps(), b"")


_BUILDERS = {
    b"get": _get, b"set": _set, b"setnx": _setnx, b"setex": _setex, b"psetex": _setex, b"getdel": _getdel,
    b"getex": _getex, b"append": _append, b"strlen": _strlen, b"incr": _counter, b"decr": _counter,
    b"incrby": _counter, b"decrby": _counter, b"del": _delete, b"unlink": _delete, b"exists": _exists,
    b"expire": _expire, b"pexpire": _expire, b"ttl": _ttl, b"pttl": _ttl, b"persist": _persist,
    b"dbsize": _dbsize, b"flushdb": _flushdb,
}
