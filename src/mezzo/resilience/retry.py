"""Retry policies: how many attempts, how long to back off between them, and which errors qualify."""

from __future__ import annotations

import asyncio
import math
import random as _random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

SleepFn = Callable[[float], Awaitable[None]]
RetryOn = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]
Jitter = Literal["none", "full", "proportional"]
OnRetry = Callable[[int, BaseException, float], None]


def as_predicate(match: RetryOn) -> Callable[[BaseException], bool]:
    """Turn exception types, or a predicate, into a predicate on an exception."""
    if isinstance(match, type) or isinstance(match, tuple):
        types = match
        return lambda exc: isinstance(exc, types)
    return match


@dataclass(frozen=True, slots=True)
class Retry:
    """A retry policy. ``await policy.call(fn, *args)`` runs ``fn`` until it succeeds or gives up.

    Giving up re-raises the last error. The delay before retry ``n`` (1-based) is
    ``min(initial_delay * multiplier ** (n - 1), max_delay)``, then jittered:

    - ``"none"``: exactly that delay;
    - ``"full"``: uniform in ``[0, delay)`` (spreads a thundering herd the most);
    - ``"proportional"``: uniform in ``delay * (1 ± jitter_ratio)``, capped at ``max_delay``.

    ``max_attempts`` counts the first call (``None`` = unlimited). ``max_duration`` caps the
    whole operation: a retry whose delay would end past it is not made.
    ``sleep``, ``random`` and ``clock`` are injectable so tests never sleep for real.
    """

    max_attempts: int | None = 3
    initial_delay: float = 0.1
    max_delay: float = 30.0
    multiplier: float = 2.0
    jitter: Jitter = "none"
    jitter_ratio: float = 0.5
    max_duration: float | None = None
    retry_on: RetryOn = Exception
    on_retry: OnRetry | None = None  # (failed attempt number, error, delay) before each sleep
    sleep: SleepFn = asyncio.sleep
    random: Callable[[], float] = _random.random
    clock: Callable[[], float] = time.monotonic
    _should_retry: Callable[[BaseException], bool] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1 (or None for unlimited)")
        if self.initial_delay < 0 or self.max_delay < 0:
            raise ValueError("delays cannot be negative")
        if self.multiplier < 1:
            raise ValueError("multiplier must be at least 1")
        if not 0 <= self.jitter_ratio <= 1:
            raise ValueError("jitter_ratio must be within [0, 1]")
        object.__setattr__(self, "_should_retry", as_predicate(self.retry_on))

    @classmethod
    def constant(cls, delay: float, max_retries: int = -1, **options: object) -> Retry:
        """Dapr's ``constant`` policy: the same ``delay`` before every retry; ``-1`` retries forever."""
        return cls(
            max_attempts=_attempts(max_retries),
            initial_delay=delay,
            max_delay=delay,
            multiplier=1.0,
            **options,  # type: ignore[arg-type]
        )

    @classmethod
    def exponential(
        cls,
        initial_delay: float = 0.5,
        max_delay: float = 60.0,
        max_retries: int = -1,
        **options: object,
    ) -> Retry:
        """Dapr's ``exponential`` policy: x1.5 per retry, ±50% jitter, capped at ``max_delay``."""
        defaults: dict[str, object] = {
            "multiplier": 1.5,
            "jitter": "proportional",
            "jitter_ratio": 0.5,
        }
        return cls(
            max_attempts=_attempts(max_retries),
            initial_delay=initial_delay,
            max_delay=max_delay,
            **(defaults | options),  # type: ignore[arg-type]
        )

    def backoff(self, retry_number: int) -> float:
        """The delay before retry ``retry_number`` (1 = the first retry), jitter included."""
        base = min(self.initial_delay, self.max_delay)
        if 0 < base < self.max_delay and self.multiplier > 1:
            # Compare exponents first: endless retries must not overflow a float.
            grows = retry_number - 1
            if grows * math.log(self.multiplier) >= math.log(self.max_delay) - math.log(base):
                base = self.max_delay
            else:
                try:
                    base = min(base * self.multiplier**grows, self.max_delay)
                except OverflowError:  # only with absurdly small initial delays
                    base = min(
                        math.exp(math.log(base) + grows * math.log(self.multiplier)), self.max_delay
                    )
        if self.jitter == "full":
            return base * self.random()
        if self.jitter == "proportional":
            spread = self.jitter_ratio * (2 * self.random() - 1)
            return min(base * (1 + spread), self.max_delay)
        return base

    def should_retry(self, error: BaseException) -> bool:
        return self._should_retry(error)

    def next_delay(self, failures: int, error: BaseException, started: float) -> float | None:
        """Delay before the next attempt after ``failures`` failed ones, or ``None`` to give up."""
        if not self._should_retry(error):
            return None
        if self.max_attempts is not None and failures >= self.max_attempts:
            return None
        delay = self.backoff(failures)
        if self.max_duration is not None and self.clock() - started + delay > self.max_duration:
            return None
        if self.on_retry is not None:
            self.on_retry(failures, error, delay)
        return delay

    async def call(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """``await fn(*args, **kwargs)``, retrying per this policy; re-raises the last error."""
        started = self.clock()
        failures = 0
        while True:
            try:
                return await fn(*args, **kwargs)
            except Exception as exc:
                failures += 1
                delay = self.next_delay(failures, exc, started)
                if delay is None:
                    raise
            await self.sleep(delay)

    def attempts(self) -> Attempts:
        """Loop form, for code that cannot be wrapped in a function::

        async for attempt in policy.attempts():
            with attempt:
                await do_something()
        """
        return Attempts(self)


class Attempt:
    """One pass of ``Retry.attempts()``; ``with attempt:`` records how it ended."""

    __slots__ = ("_policy", "error", "number")

    def __init__(self, policy: Retry, number: int) -> None:
        self._policy = policy
        self.number = number
        self.error: Exception | None = None

    def __enter__(self) -> Attempt:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if isinstance(exc, Exception) and self._policy.should_retry(exc):
            self.error = exc
            return True  # swallowed here; the iterator re-raises it if we give up
        return False


class Attempts:
    """Async iterator behind ``Retry.attempts()``: yields attempts until one ends without error."""

    def __init__(self, policy: Retry) -> None:
        self._policy = policy
        self._started = policy.clock()
        self._last: Attempt | None = None

    def __aiter__(self) -> Attempts:
        return self

    async def __anext__(self) -> Attempt:
        last = self._last
        if last is not None:
            if last.error is None:
                raise StopAsyncIteration
            delay = self._policy.next_delay(last.number, last.error, self._started)
            if delay is None:
                raise last.error
            await self._policy.sleep(delay)
        self._last = Attempt(self._policy, 1 if last is None else last.number + 1)
        return self._last


def _attempts(max_retries: int) -> int | None:
    if max_retries < -1:
        raise ValueError("max_retries must be -1 (unlimited) or at least 0")
    return None if max_retries == -1 else max_retries + 1
