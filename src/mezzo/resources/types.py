"""Field types shared by every kind's schema: durations, byte sizes, names."""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, StringConstraints

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|s|m|h|d|w)")
_DURATION_UNITS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3,
    "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0,
}


def parse_duration(value: Any) -> float:
    """Seconds from ``"100ms"``, ``"1h30m"``, ``"7d"``, or a number of seconds."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '100ms', '5s', '7d'")
    if isinstance(value, int | float):
        return _finite(float(value))
    if not isinstance(value, str):
        raise ValueError("a duration is a number of seconds or a string like '100ms', '5s', '7d'")
    text = value.strip()
    if not text:
        raise ValueError("empty duration")
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text):
        try:
            total = float(text)
        except ValueError:
            raise ValueError(
                f"invalid duration {value!r}: use a number with a unit (ns, us, ms, s, m, h, d, w), e.g. '250ms' or '1h30m'"
            ) from None
    return _finite(total)


def _finite(seconds: float) -> float:
    if not math.isfinite(seconds) or seconds > 10**11:  # ~3000 years: beyond any sensible setting
        raise ValueError("a duration must be a finite number of seconds below 1e11")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def format_duration(seconds: float) -> str:
    if seconds == 0:
        return "0s"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and float(seconds / size).is_integer():
            return f"{int(seconds // size)}{unit}"
    if (seconds * 1000).is_integer():
        return f"{int(seconds * 1000)}ms"
    return f"{seconds}s"


# Seconds as float in Python; accepts "250ms" etc. on input; serialises back to text.
Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]i?[bB]?|[bB])?\s*$")
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "ki": 1024, "kib": 1024,
    "m": 1000**2, "mb": 1000**2, "mi": 1024**2, "mib": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gi": 1024**3, "gib": 1024**3,
    "t": 1000**4, "tb": 1000**4, "ti": 1024**4, "tib": 1024**4,
}


def parse_byte_size(value: Any) -> int:
    """Bytes from ``1048576``, ``"1MiB"``, ``"512kb"``, ``"2Gi"``."""
    if isinstance(value, bool):
        raise ValueError("a size is a number of bytes or a string like '1MiB'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            unit = (match.group(2) or "").lower()
            return int(float(match.group(1)) * _SIZE_UNITS[unit])
    raise ValueError(f"invalid size {value!r}: use bytes or a unit (KiB, MiB, GiB, kB, MB, GB)")


ByteSize = Annotated[int, BeforeValidator(parse_byte_size)]

# Resource names: lowercase DNS-1123 labels with dots allowed, like Kubernetes object names.
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9._]{0,251}[a-z0-9])?$"
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN, max_length=253)]
