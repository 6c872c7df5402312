import asyncio
from typing import Any

import pytest

from mezzo.resilience import (
    NOOP_POLICY,
    CircuitOpenError,
    CircuitState,
    PolicyRegistry,
    ResiliencySpec,
    TimeoutExceeded,
)

from .fakes import FakeClock, FakeSleep, Flaky


def document(
    target: str = "shop",
    *,
    timeout: str | None = None,
    max_retries: int = 2,
    trip: str = "consecutiveFailures > 10",
    matching: dict[str, str] | None = None,
    uses: tuple[str, ...] = ("retry", "circuitBreaker"),
) -> ResiliencySpec:
    retry: dict[str, Any] = {"policy": "constant", "duration": "1s", "maxRetries": max_retries}
    if matching:
        retry["matching"] = matching
    policies: dict[str, Any] = {
        "timeouts": {"t": timeout or "1s"},
        "retries": {"r": retry},
        "circuitBreakers": {"cb": {"trip": trip, "timeout": "30s"}},
    }
    names = {"timeout": "t", "retry": "r", "circuitBreaker": "cb"}
    targets = {"upstreams": {target: {use: names[use] for use in uses}}}
    return ResiliencySpec.model_validate({"policies": policies, "targets": targets})


@pytest.fixture
def sleep() -> FakeSleep:
    return FakeSleep(FakeClock())


@pytest.fixture
def registry(sleep: FakeSleep) -> PolicyRegistry:
    return PolicyRegistry(sleep=sleep, clock=sleep.clock)


async def test_an_untargeted_name_gets_the_noop_policy(registry: PolicyRegistry) -> None:
    registry.apply("default", "doc", document())
    policy = registry.policy_for("upstreams", "other")
    assert policy is NOOP_POLICY and policy.is_noop
    assert await policy.execute(Flaky(result=5)) == 5
    assert registry.policy_for("upstreams", "shop", namespace="team-b") is NOOP_POLICY


async def test_retry_wraps_the_breaker_which_counts_every_attempt(
    registry: PolicyRegistry, sleep: FakeSleep
) -> None:
    registry.apply("default", "doc", document(max_retries=2))
    policy = registry.policy_for("upstreams", "shop")
    fn = Flaky(OSError(), OSError(), result="ok")
    assert await policy.execute(fn) == "ok"
    assert sleep.delays == [1.0, 1.0]
    assert policy.breaker is not None
    assert policy.breaker.stats().window_calls == 3  # each attempt passed the breaker


async def test_an_open_breaker_stops_the_retries(
    registry: PolicyRegistry, sleep: FakeSleep
) -> None:
    registry.apply("default", "doc", document(max_retries=-1, trip="consecutiveFailures > 1"))
    policy = registry.policy_for("upstreams", "shop")
    fn = Flaky(*(OSError() for _ in range(100)))
    with pytest.raises(CircuitOpenError):
        await policy.execute(fn)
    assert fn.calls == 2  # the third attempt met the open breaker and retrying stopped


async def test_the_timeout_applies_to_each_attempt_inside_the_retry(
    registry: PolicyRegistry,
) -> None:
    registry.apply(
        "default", "doc", document(timeout="5ms", uses=("timeout", "retry", "circuitBreaker"))
    )
    policy = registry.policy_for("upstreams", "shop")
    attempts = 0

    async def hangs_once() -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            await asyncio.Event().wait()
        return "second time lucky"

    assert await policy.execute(hangs_once) == "second time lucky"
    assert policy.breaker is not None
    assert policy.breaker.stats().window_failures == 1  # the timeout counted as a failure


async def test_a_timeout_alone_raises_timeout_exceeded(registry: PolicyRegistry) -> None:
    registry.apply("default", "doc", document(timeout="5ms", uses=("timeout",)))
    with pytest.raises(TimeoutExceeded):
        await registry.policy_for("upstreams", "shop").execute(asyncio.Event().wait)


class HttpError(Exception):
    def __init__(self, status_code: int) -> None:
        self.status_code = status_code


@pytest.mark.parametrize(
    ("error", "calls"), [(HttpError(503), 3), (HttpError(404), 1), (OSError(), 3)]
)
async def test_matching_status_codes_choose_what_is_retried(
    registry: PolicyRegistry, error: Exception, calls: int
) -> None:
    registry.apply("default", "doc", document(matching={"httpStatusCodes": "429,500-599"}))
    fn = Flaky(error, error, error, error)
    with pytest.raises(type(error)):
        await registry.policy_for("upstreams", "shop").execute(fn)
    assert fn.calls == calls


async def test_breaker_state_survives_lookups_until_the_document_changes(
    registry: PolicyRegistry,
) -> None:
    registry.apply("default", "doc", document(max_retries=0, trip="consecutiveFailures > 0"))
    with pytest.raises(OSError):
        await registry.policy_for("upstreams", "shop").execute(Flaky(OSError()))
    again = registry.policy_for("upstreams", "shop")
    assert again.breaker is not None and again.breaker.state is CircuitState.OPEN

    registry.apply("default", "doc", document(max_retries=0, trip="consecutiveFailures > 0"))
    assert registry.policy_for("upstreams", "shop").breaker is again.breaker  # identical: kept

    registry.apply("default", "doc", document(max_retries=0, trip="consecutiveFailures > 1"))
    fresh = registry.policy_for("upstreams", "shop")
    assert fresh.breaker is not again.breaker
    assert fresh.breaker is not None and fresh.breaker.state is CircuitState.CLOSED


async def test_removing_the_document_removes_the_policy(registry: PolicyRegistry) -> None:
    registry.apply("default", "doc", document())
    assert not registry.policy_for("upstreams", "shop").is_noop
    assert registry.remove("default", "doc")
    assert registry.policy_for("upstreams", "shop") is NOOP_POLICY
    assert not registry.remove("default", "doc")


@pytest.mark.parametrize("order", [("a", "b"), ("b", "a")])
async def test_the_first_document_by_name_wins_whatever_the_apply_order(
    registry: PolicyRegistry, order: tuple[str, str]
) -> None:
    specs = {"a": document(uses=("retry",)), "b": document(uses=("timeout",))}
    for name in order:
        registry.apply("default", name, specs[name])
    policy = registry.policy_for("upstreams", "shop")
    assert policy.retry is not None and policy.timeout is None


async def test_another_documents_change_leaves_the_winner_alone(registry: PolicyRegistry) -> None:
    registry.apply("default", "a", document())
    registry.apply("default", "b", document(uses=("timeout",)))
    winner = registry.policy_for("upstreams", "shop")
    registry.apply("default", "b", document(timeout="2s", uses=("timeout",)))
    assert registry.policy_for("upstreams", "shop") is winner
    registry.remove("default", "a")
    assert registry.policy_for("upstreams", "shop").timeout == 2.0


async def test_breakers_report_state_changes_and_are_listed() -> None:
    seen: list[tuple[str, CircuitState]] = []
    registry = PolicyRegistry(
        sleep=FakeSleep(), on_breaker_state_change=lambda cb, old, new: seen.append((cb.name, new))
    )
    registry.apply("default", "doc", document(max_retries=0, trip="consecutiveFailures > 0"))
    with pytest.raises(OSError):
        await registry.policy_for("upstreams", "shop").execute(Flaky(OSError()))
    assert seen == [("default/upstreams/shop", CircuitState.OPEN)]
    assert [cb.name for cb in registry.circuit_breakers()] == ["default/upstreams/shop"]


def test_unknown_target_types_are_rejected(registry: PolicyRegistry) -> None:
    with pytest.raises(ValueError, match="unknown target type 'apps'"):
        registry.policy_for("apps", "shop")
