"""Numbers as redis-server reads and writes them, so counters answer what Redis answers byte for byte.

- Integers (``string2ll``): an optional ``-`` and digits, no sign, space, underscore or leading
  zero (all of which Python's ``int()`` takes), within 64 bits.
- ``INCRBYFLOAT`` works in long doubles (x87, 64-bit significand, as redis-server on x86-64):
  each operand is read as ``strtold`` rounds it, the sum is rounded once more, and the result is
  written as ``printf("%.17Lf")`` with trailing zeros cut, so ``0.1 + 0.2`` is ``0.3`` and
  ``1e-05`` is ``0.00001``. Exact arithmetic on fractions stands in for the FPU.
"""

from __future__ import annotations

import re
from decimal import Decimal
from fractions import Fraction

INT_MIN, INT_MAX = -(2**63), 2**63 - 1
_INTEGER = re.compile(rb"-?[1-9][0-9]{0,18}|0")

SIGNIFICAND_BITS = 64  # x87 extended precision
MIN_EXPONENT = -16382  # below this a long double is subnormal: fewer significant bits
OVERFLOW = Fraction(2) ** 16384  # the smallest magnitude that is infinite
MAX_CHARS = 5 * 1024  # Redis' MAX_LONG_DOUBLE_CHARS: a longer argument is not a float
_DECIMAL = re.compile(rb"[+-]?(?:([0-9]+)(?:\.([0-9]*))?|\.([0-9]+))(?:[eE]([+-]?[0-9]+))?")
_HEX = re.compile(rb"[+-]?0[xX](?:([0-9a-fA-F]+)(?:\.([0-9a-fA-F]*))?|\.([0-9a-fA-F]+))(?:[pP]([+-]?[0-9]+))?")
_INFINITY = re.compile(rb"[+-]?inf(?:inity)?", re.IGNORECASE)
_KEPT_DIGITS = 60  # digits of a decimal worth reading: more only decide a rounding, as a sticky digit


def parse_int(raw: bytes) -> int | None:
    """``raw`` as Redis reads an integer, or None when it is not one."""
    if _INTEGER.fullmatch(raw) is None:
        return None
    value = int(raw)
    return value if INT_MIN <= value <= INT_MAX else None


def parse_long_double(raw: bytes) -> Fraction | float | None:
    """``raw`` as redis-server reads a long double: the exact value of the nearest long double,
    ``±inf`` for an infinity, or None when Redis refuses it (not a number, NaN, a space, a
    decimal too large for a long double or so small it reads as zero)."""
    if not raw or len(raw) >= MAX_CHARS:
        return None
    found = _DECIMAL.fullmatch(raw)
    if found is None:
        if _INFINITY.fullmatch(raw) is not None:
            return float("-inf") if raw[:1] == b"-" else float("inf")
        hexadecimal = _HEX.fullmatch(raw)
        return _hex(raw, *hexadecimal.groups()) if hexadecimal is not None else None
    whole, fraction, only_fraction, exponent_text = found.groups()
    decimals = fraction or only_fraction or b""
    digits = ((whole or b"") + decimals).lstrip(b"0")
    if not digits:
        return Fraction(0)  # zero in any spelling (Redis writes -0 as 0)
    if exponent_text is not None and len(exponent_text.lstrip(b"+-")) > 9:
        return None  # 1e999999999999: out of range one way or the other
    exponent = int(exponent_text or 0) - len(decimals)
    magnitude = len(digits) + exponent  # the value lies in [10**(magnitude-1), 10**magnitude)
    if magnitude > 4933 or magnitude < -4950:
        return None  # strtold overflows (or underflows to zero) with ERANGE: refused
    if len(digits) > _KEPT_DIGITS:
        dropped = digits[_KEPT_DIGITS:]
        sticky = b"1" if dropped.strip(b"0") else b"0"
        exponent += len(dropped) - 1
        digits = digits[:_KEPT_DIGITS] + sticky
    value = Fraction(int(digits)) * Fraction(10) ** exponent
    return _rounded(-value if raw[:1] == b"-" else value)


def _hex(raw: bytes, whole: bytes | None, fraction: bytes | None, only_fraction: bytes | None,
         exponent_text: bytes | None) -> Fraction | float | None:
    """A C99 hexadecimal float (``0x1.8p3``), which strtold reads too."""
    decimals = fraction or only_fraction or b""
    digits = ((whole or b"") + decimals).lstrip(b"0")
    if not digits:
        return Fraction(0)
    if exponent_text is not None and len(exponent_text.lstrip(b"+-")) > 9:
        return None
    exponent = int(exponent_text or 0) - 4 * len(decimals)
    bits = 4 * len(digits) + exponent
    if bits > 16384 or bits < -16445:
        return None  # overflows, or underflows to zero: refused
    value = Fraction(int(digits, 16)) * Fraction(2) ** exponent
    return _rounded(-value if raw[:1] == b"-" else value)


def add_long_doubles(a: Fraction | float, b: Fraction | float) -> Fraction | None:
    """``a + b`` in long doubles, or None when it is infinite or NaN (Redis refuses to store it)."""
    if isinstance(a, float) or isinstance(b, float):  # an infinity: inf, or inf - inf = NaN
        return None
    total = _rounded(a + b)
    return None if isinstance(total, float) else total


def format_long_double(value: Fraction) -> bytes:
    """``printf("%.17Lf")`` of the long double ``value``, trailing zeros and point cut, ``-0`` as ``0``."""
    scaled = round(value * 10**17)  # glibc prints the exact binary value, rounded half to even
    if scaled == 0:
        return b"0"
    digits = format(Decimal(abs(scaled)), "f").rjust(18, "0")  # Decimal: no limit on an int's digits
    whole, decimals = digits[:-17], digits[-17:].rstrip("0")
    return (("-" if scaled < 0 else "") + whole + ("." + decimals if decimals else "")).encode()


def _rounded(value: Fraction) -> Fraction | float:
    """``value`` rounded to the nearest long double (ties to even), or ``±inf`` past the largest."""
    if value == 0:
        return Fraction(0)
    magnitude = abs(value)
    top, bottom = magnitude.numerator, magnitude.denominator
    exponent = top.bit_length() - bottom.bit_length()  # 2**exponent <= magnitude < 2**(exponent + 1)
    if (top < bottom << exponent) if exponent >= 0 else (top << -exponent < bottom):
        exponent -= 1
    shift = SIGNIFICAND_BITS - 1 - max(exponent, MIN_EXPONENT)
    significand = round(magnitude * Fraction(2) ** shift)
    result = significand / Fraction(2) ** shift
    if result >= OVERFLOW:
        return float("-inf") if value < 0 else float("inf")
    return -result if value < 0 else result
