"""Glob patterns as Redis matches keys (``KEYS``, ``SCAN ... MATCH``), over raw bytes.

Redis' rules (``stringmatchlen``), which differ from ``fnmatch``'s: ``*`` is any run, ``?`` any one
byte, ``[...]`` a set where ``^`` (not ``!``) first negates, ``a-z`` is a range (``z-a`` too),
``\\`` quotes the next byte inside a set and out of it, and a set left open takes the rest of the
pattern as its members. A pattern is translated once into a regular expression (cached); as in
``fnmatch``, every ``*`` but the last becomes an atomic lazy group, so no pattern backtracks
exponentially.
"""

from __future__ import annotations

import functools
import re

_STAR = None  # a token: any run of bytes


@functools.lru_cache(maxsize=256)
def matcher(pattern: bytes) -> re.Pattern[bytes]:
    """The compiled form of ``pattern``: ``matcher(p).fullmatch(key)`` is Redis' match."""
    tokens = _tokens(pattern)
    parts: list[bytes] = []
    i = 0
    while i < len(tokens) and tokens[i] is not _STAR:  # the fixed head
        parts.append(tokens[i])  # type: ignore[arg-type]
        i += 1
    while i < len(tokens):  # STAR fixed STAR fixed ... as fnmatch.translate builds it
        i += 1  # the star
        fixed: list[bytes] = []
        while i < len(tokens) and tokens[i] is not _STAR:
            fixed.append(tokens[i])  # type: ignore[arg-type]
            i += 1
        if i < len(tokens):  # another star follows: the earliest place for ``fixed`` is always best
            parts.append(b"(?>.*?" + b"".join(fixed) + b")")
        else:
            parts.append(b".*" + b"".join(fixed))
    return re.compile(b"".join(parts), re.DOTALL)


def _tokens(p: bytes) -> list[bytes | None]:
    """The pattern as regex pieces matching one byte each, and ``_STAR`` for a run of ``*``."""
    out: list[bytes | None] = []
    i, n = 0, len(p)
    while i < n:
        c = p[i]
        if c == 0x2A:  # '*'
            if not out or out[-1] is not _STAR:
                out.append(_STAR)
            i += 1
        elif c == 0x3F:  # '?'
            out.append(b".")
            i += 1
        elif c == 0x5B:  # '['
            piece, i = _set(p, i + 1)
            out.append(piece)
        else:
            if c == 0x5C and n - i >= 2:  # '\': the next byte as it is
                i += 1
            out.append(_byte(p[i]))
            i += 1
    return out


def _set(p: bytes, i: int) -> tuple[bytes, int]:
    """A ``[...]`` starting after its ``[`` at ``i``: its regex piece and where the pattern goes on."""
    n = len(p)
    negate = i < n and p[i] == 0x5E  # '^'
    if negate:
        i += 1
    ranges: list[tuple[int, int]] = []
    while i < n:
        c = p[i]
        if c == 0x5C and n - i >= 2:  # '\' quotes the next byte
            i += 1
            ranges.append((p[i], p[i]))
        elif c == 0x5D:  # ']' closes the set
            break
        elif n - i >= 3 and p[i + 1] == 0x2D:  # 'a-z' (as Redis reads it, even 'a-]')
            low, high = sorted((c, p[i + 2]))
            ranges.append((low, high))
            i += 2
        else:
            ranges.append((c, c))
        i += 1
    i += 1  # past the ']' (or past the end: an open set takes the rest of the pattern)
    if not ranges:
        return (b"." if negate else b"(?!)"), i  # '[^]' is any byte, '[]' none
    members = b"".join(_byte(low) if low == high else _byte(low) + b"-" + _byte(high) for low, high in ranges)
    return b"[" + (b"^" if negate else b"") + members + b"]", i


def _byte(value: int) -> bytes:
    """One byte as a regex literal (``\\xNN`` is literal inside a set and out of it)."""
    return b"\\x%02x" % value
