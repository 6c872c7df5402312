"""Exceptions raised by the resilience primitives, all under ``ResilienceError``."""

from __future__ import annotations


class ResilienceError(Exception):
    """Base class: a resilience primitive refused or cut short a call."""


class TimeoutExceeded(ResilienceError, TimeoutError):
    """The call ran longer than its limit; ``seconds`` is that limit."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"timed out after {seconds:g}s")
        self.seconds = seconds


class CircuitOpenError(ResilienceError):
    """The circuit breaker rejected the call; try again after ``retry_after`` seconds."""

    def __init__(self, name: str, retry_after: float) -> None:
        super().__init__(f"circuit {name!r} is open; retry after {retry_after:.3f}s")
        self.name = name
        self.retry_after = retry_after


class BulkheadFullError(ResilienceError):
    """The bulkhead had no free slot: all slots busy and the queue full, or the wait timed out."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"bulkhead {name!r} is full: {reason}")
        self.name = name
        self.reason = reason
