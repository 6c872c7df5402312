"""Circuit breaker trip conditions, and the small expression language manifests use for them."""

from __future__ import annotations

import re
from dataclasses import dataclass

_CLAUSE = re.compile(r"^(consecutiveFailures|errorRatio|slowCallRatio)\s*>\s*(\d+(?:\.\d+)?)$")
_OR = re.compile(r"\s*\|\|\s*|\s+or\s+")
_TRIP_HELP = (
    "use 'consecutiveFailures > N', 'errorRatio > X' or 'slowCallRatio > X' (X between 0 and 1),"
    " joined by '||' or 'or'"
)


@dataclass(frozen=True, slots=True)
class TripCondition:
    """When a closed circuit opens: as soon as any threshold that is set is exceeded (strictly)."""

    consecutive_failures: int | None = 5
    error_ratio: float | None = None
    slow_call_ratio: float | None = None

    def __post_init__(self) -> None:
        if (
            self.consecutive_failures is None
            and self.error_ratio is None
            and self.slow_call_ratio is None
        ):
            raise ValueError("a trip condition needs at least one threshold")
        if self.consecutive_failures is not None and self.consecutive_failures < 0:
            raise ValueError("consecutiveFailures must be at least 0")
        for ratio in (self.error_ratio, self.slow_call_ratio):
            if ratio is not None and not 0 <= ratio <= 1:
                raise ValueError("ratios must be between 0 and 1")

    @classmethod
    def parse(cls, expression: str) -> TripCondition:
        """Parse e.g. ``"consecutiveFailures > 5 || errorRatio > 0.5"``; raises ``ValueError``."""
        found: dict[str, str] = {}
        for clause in _OR.split(expression.strip()):
            match = _CLAUSE.match(clause.strip())
            if match is None:
                raise ValueError(f"unsupported trip expression {expression!r}: {_TRIP_HELP}")
            metric, value = match.groups()
            if metric in found:
                raise ValueError(f"trip expression {expression!r} names {metric} twice")
            found[metric] = value
        failures = found.get("consecutiveFailures")
        if failures is not None and not failures.isdigit():
            raise ValueError(f"consecutiveFailures must be a whole number in {expression!r}")
        errors, slow = found.get("errorRatio"), found.get("slowCallRatio")
        return cls(
            consecutive_failures=None if failures is None else int(failures),
            error_ratio=None if errors is None else float(errors),
            slow_call_ratio=None if slow is None else float(slow),
        )
