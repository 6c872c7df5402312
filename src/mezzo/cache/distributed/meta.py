"""memcached's meta protocol (memcached >= 1.6) on the wire: requests, keys, TTLs and a reply reader.

Every meta request (``mg``, ``ms``, ``md``, ``ma``, ``mn``) gets exactly one reply, so replies
match requests first-in first-out as RESP replies do (no ``q`` flag is ever sent). A reply is a
``MetaReply``: its two-letter code (``VA``, ``HD``, ``EN``, ``NF``, ``NS``, ``EX``, ``MN``), its
flags as sent (``t100 c42``) and, for ``VA``, the value. ``CLIENT_ERROR``/``SERVER_ERROR``/``ERROR``
lines are replies too (code ``ER``). Requests are only ever built here, well formed (keys that
memcached would split are sent base64), because memcached cannot skip the value of an ``ms`` whose
line it cannot parse: the value would be read as a command, and the stream would be off by one.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import time
from typing import NamedTuple

MAX_KEY = 250  # memcached's KEY_MAX_LENGTH, for the key as sent (base64 text included)
MAX_RELATIVE_TTL = 30 * 24 * 3600  # memcached reads a larger exptime as a Unix time
EXPIRED = -1  # a T flag that makes the item expire at once
# A key memcached cannot take as is (too long even in base64, or empty) is stored under this prefix
# and its SHA-256: binary, so only a key made of these very bytes could meet it.
LONG_KEY_PREFIX = b"\x00mezzo:sha256\x00"
_UNSAFE = re.compile(rb"[\x00-\x20\x7f]")  # memcached splits a request line on these


class ReplyError(Exception):
    """A command's error reply, in Redis' words (``ERR ...``): answered to the client, not a node failure."""


class MetaReply(NamedTuple):
    code: bytes
    flags: bytes = b""
    value: bytes | None = None

    def flag(self, name: bytes) -> bytes | None:
        """The token after flag letter ``name`` (``t`` of ``HD t100`` is ``b"100"``), None when absent."""
        for token in self.flags.split():
            if token[:1] == name:
                return token[1:]
        return None

    def error(self) -> ReplyError:
        return ReplyError(f"ERR memcached: {self.flags.decode(errors='replace') or 'ERROR'}")


def wire_key(key: bytes) -> bytes:
    """``key`` as a request token, with `` b`` (base64 key mode) when memcached cannot take it raw:
    spaces or control characters, more than 250 bytes, or empty. The flag goes right after the key,
    which is fine for every meta command but ``ms`` (see there)."""
    if 0 < len(key) <= MAX_KEY and _UNSAFE.search(key) is None:
        return key
    encoded = base64.b64encode(key)
    if not key or len(encoded) > MAX_KEY:
        encoded = base64.b64encode(LONG_KEY_PREFIX + hashlib.sha256(key).digest())
    return encoded + b" b"


def ttl_flag(ms: int) -> int:
    """memcached's ``T`` for a TTL of ``ms`` milliseconds (> 0): whole seconds, rounded up (its clock
    ticks in seconds), as a Unix time past 30 days."""
    seconds = math.ceil(ms / 1000)
    return seconds if seconds <= MAX_RELATIVE_TTL else int(time.time()) + seconds


def at_flag(unix_ms: int) -> int:
    """``T`` for an absolute expiry in Unix milliseconds; EXPIRED when it is not in the future."""
    remaining = unix_ms - int(time.time() * 1000)
    return ttl_flag(remaining) if remaining > 0 else EXPIRED


def kept_ttl(reply: MetaReply) -> int:
    """``T`` that keeps the remaining TTL an ``mg ... t`` reply reported (0: none)."""
    left = int(reply.flag(b"t") or b"-1")
    return 0 if left < 0 else ttl_flag(max(left, 1) * 1000)


# requests ------------------------------------------------------------------------------------------------


def mg(key: bytes, flags: bytes = b"") -> bytes:
    return b"mg %s %s\r\n" % (wire_key(key), flags) if flags else b"mg %s\r\n" % wire_key(key)


def ms(key: bytes, value: bytes, flags: bytes = b"") -> bytes:
    token = wire_key(key)
    if token.endswith(b" b"):  # the value's length must be the token after the key
        token, flags = token[:-2], flags + b" b" if flags else b"b"
    return b"ms %s %d %s\r\n%s\r\n" % (token, len(value), flags, value)


def md(key: bytes, flags: bytes = b"") -> bytes:
    return b"md %s %s\r\n" % (wire_key(key), flags) if flags else b"md %s\r\n" % wire_key(key)


def ma(key: bytes, flags: bytes) -> bytes:
    return b"ma %s %s\r\n" % (wire_key(key), flags)


NOOP = b"mn\r\n"
STATS = b"stats\r\n"
FLUSH_ALL = b"flush_all\r\n"


# replies -------------------------------------------------------------------------------------------------

_ERRORS = (b"CLIENT_ERROR", b"SERVER_ERROR", b"ERROR")


class MetaReader:
    """Replies out of the byte stream, with hiredis.Reader's interface: ``feed`` bytes, then ``gets``
    a reply at a time until it answers False (incomplete)."""

    __slots__ = ("buffer", "pos", "stats")

    def __init__(self) -> None:
        self.buffer = b""
        self.pos = 0
        self.stats: list[bytes] | None = None  # lines of a ``stats`` reply until its END

    def feed(self, data: bytes) -> None:
        self.buffer = self.buffer[self.pos:] + data if self.pos < len(self.buffer) else data
        self.pos = 0

    def gets(self) -> MetaReply | bool:
        while True:
            buffer, pos = self.buffer, self.pos
            end = buffer.find(b"\r\n", pos)
            if end < 0:
                if len(buffer) - pos > 64 * 1024:
                    raise ValueError("a reply line longer than 64 KiB")
                return False
            code = buffer[pos:pos + 2]
            if code == b"VA":
                space = buffer.find(b" ", pos + 3, end)
                size = int(buffer[pos + 3:end if space < 0 else space])
                stop = end + 2 + size
                if len(buffer) < stop + 2:
                    return False
                if buffer[stop:stop + 2] != b"\r\n":
                    raise ValueError("a value without its CRLF")
                self.pos = stop + 2
                return MetaReply(b"VA", b"" if space < 0 else buffer[space + 1:end], buffer[end + 2:stop])
            line = buffer[pos:end]
            self.pos = end + 2
            if self.stats is not None or line.startswith(b"STAT "):
                if line == b"END":
                    block, self.stats = self.stats or [], None
                    return MetaReply(b"ST", b"", b"\n".join(block))
                if self.stats is None:
                    self.stats = []
                self.stats.append(line)
                continue
            if line.startswith(_ERRORS):
                word, _, text = line.partition(b" ")
                return MetaReply(b"ER", text or word)
            return MetaReply(code, line[3:])


def stat(block: bytes, name: bytes) -> int:
    """A counter out of a ``stats`` reply's lines (``STAT curr_items 12``)."""
    for line in block.split(b"\n"):
        parts = line.split(b" ")
        if len(parts) == 3 and parts[1] == name:
            return int(parts[2])
    raise ValueError(f"memcached stats have no {name.decode()}")
