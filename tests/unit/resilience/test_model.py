import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from mezzo.resilience import RESILIENCY_KIND, ResiliencySpec, TripCondition

DOCS = Path(__file__).resolve().parents[3] / "docs" / "resilience.md"


def spec(**targets: Any) -> dict[str, Any]:
    return {
        "policies": {
            "timeouts": {"general": "5s"},
            "retries": {"std": {"policy": "exponential", "maxRetries": 3}},
            "circuitBreakers": {"cb": {"trip": "consecutiveFailures > 3"}},
        },
        "targets": targets,
    }


def error_text(document: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as caught:
        ResiliencySpec.model_validate(document)
    return str(caught.value)


def test_the_documented_manifest_is_valid() -> None:
    block = re.search(r"```yaml\n(apiVersion: mezzo\.dev/v1\n.*?)```", DOCS.read_text(), re.S)
    assert block is not None
    manifest = yaml.safe_load(block.group(1))
    assert manifest["kind"] == RESILIENCY_KIND.kind
    parsed = RESILIENCY_KIND.spec.model_validate(manifest["spec"])
    assert isinstance(parsed, ResiliencySpec)
    breaker = parsed.policies.circuit_breakers["upstream"]
    assert breaker.condition() == TripCondition(5, 0.5, 0.8)
    assert (breaker.max_requests, breaker.interval, breaker.timeout) == (2, 30.0, 45.0)
    assert parsed.policies.timeouts["fast"] == pytest.approx(0.3)
    assert parsed.targets.branches["reserve-stock"].timeout == "fast"


def test_defaults_follow_dapr() -> None:
    parsed = ResiliencySpec.model_validate(
        {
            "policies": {
                "retries": {"c": {}, "e": {"policy": "exponential"}},
                "circuitBreakers": {"b": {}},
            }
        }
    )
    constant, exponential = parsed.policies.retries["c"], parsed.policies.retries["e"]
    assert (constant.policy, constant.delay(), constant.max_retries) == ("constant", 5.0, -1)
    assert (exponential.delay(), exponential.max_interval) == (0.5, 60.0)
    breaker = parsed.policies.circuit_breakers["b"]
    assert (breaker.max_requests, breaker.interval, breaker.timeout) == (1, 0.0, 60.0)
    assert breaker.condition() == TripCondition(5)


@pytest.mark.parametrize(
    ("uses", "message"),
    [
        ({"retry": "std2"}, "spec.targets.upstreams.shop.retry: unknown retry policy 'std2'"),
        ({"timeout": "slow"}, "spec.targets.upstreams.shop.timeout: unknown timeout policy 'slow'"),
        (
            {"circuitBreaker": "cb9"},
            "spec.targets.upstreams.shop.circuitBreaker: unknown circuitBreaker policy 'cb9'",
        ),
    ],
)
def test_targets_must_name_defined_policies(uses: dict[str, str], message: str) -> None:
    assert message in error_text(spec(upstreams={"shop": uses}))


def test_every_bad_reference_is_reported_at_once() -> None:
    text = error_text(spec(branches={"pay": {"retry": "x"}}, subscriptions={"orders": {"timeout": "y"}}))
    assert "spec.targets.branches.pay.retry" in text
    assert "spec.targets.subscriptions.orders.timeout" in text


def test_backends_are_refused_because_nothing_would_apply_them() -> None:
    """``backends`` was accepted and stored, and no service ever consulted it: a stub. Refused now,
    naming the field and saying what to target instead."""
    text = error_text(spec(backends={"redis": {"timeout": "general"}}))
    assert "spec.targets.backends" in text and "upstreams, subscriptions or branches" in text


def test_a_bad_trip_expression_names_the_field() -> None:
    document = spec()
    document["policies"]["circuitBreakers"]["cb"]["trip"] = "failures > 3"
    text = error_text(document)
    assert "policies.circuitBreakers.cb.trip" in text
    assert "unsupported trip expression" in text


def test_slow_call_ratio_needs_slow_call_duration() -> None:
    document = spec()
    document["policies"]["circuitBreakers"]["cb"]["trip"] = "slowCallRatio > 0.5"
    assert "slowCallDuration is required" in error_text(document)
    document["policies"]["circuitBreakers"]["cb"]["slowCallDuration"] = "1s"
    ResiliencySpec.model_validate(document)


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("timeouts", "general"), "0s", "policies.timeouts.general"),
        (("timeouts", "general"), "soon", "policies.timeouts.general"),
        (("retries", "std", "maxRetries"), -2, "policies.retries.std.maxRetries"),
        (("retries", "std", "policy"), "linear", "policies.retries.std.policy"),
        (("retries", "std", "matching"), {"httpStatusCodes": "5xx"}, "matching.httpStatusCodes"),
        (("circuitBreakers", "cb", "maxRequests"), 0, "policies.circuitBreakers.cb.maxRequests"),
        (("circuitBreakers", "cb", "tripp"), "x", "policies.circuitBreakers.cb.tripp"),
    ],
)
def test_bad_values_name_their_field(path: tuple[str, ...], value: Any, field: str) -> None:
    document = spec()
    node = document["policies"]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert field in error_text(document)


def test_status_code_matching() -> None:
    document = spec()
    document["policies"]["retries"]["std"]["matching"] = {"httpStatusCodes": "429, 500-502"}
    matching = ResiliencySpec.model_validate(document).policies.retries["std"].matching
    assert matching is not None
    assert matching.status_codes() == {429, 500, 501, 502}


def test_unknown_target_types_are_rejected() -> None:
    assert "apps" in error_text(spec(apps={"shop": {"retry": "std"}}))


def test_python_names_work_and_yaml_names_round_trip() -> None:
    parsed = ResiliencySpec.model_validate(
        {
            "policies": {"circuit_breakers": {"cb": {"max_requests": 3}}},
            "targets": {"upstreams": {"pg": {"circuit_breaker": "cb"}}},
        }
    )
    dumped = parsed.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    assert dumped == {
        "policies": {"circuitBreakers": {"cb": {"maxRequests": 3}}},
        "targets": {"upstreams": {"pg": {"circuitBreaker": "cb"}}},
    }
    assert ResiliencySpec.model_validate(dumped) == parsed


def test_the_kind_declaration() -> None:
    assert RESILIENCY_KIND.kind == "Resiliency"
    assert RESILIENCY_KIND.plural == "resiliencies"
    assert {"resiliency", "resiliencies"} <= RESILIENCY_KIND.names
    assert RESILIENCY_KIND.spec is ResiliencySpec
