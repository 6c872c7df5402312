"""The ewma balancer: its averages fade while a node gets no traffic, so a node slow once is retried."""

from __future__ import annotations

import pytest

from mezzo.gateway import upstream
from mezzo.gateway.model import UpstreamSpec
from mezzo.gateway.upstream import Balancer, NodeState


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(upstream.time, "monotonic", fake)
    return fake


def balancer() -> tuple[Balancer, NodeState, NodeState]:
    a, b = NodeState("10.0.0.1", 80, 1, None, 8), NodeState("10.0.0.2", 80, 1, None, 8)
    spec = UpstreamSpec.model_validate({"nodes": [{"host": "10.0.0.1", "port": 80}, {"host": "10.0.0.2", "port": 80}],
                                        "loadBalancer": "ewma"})
    return Balancer("default/u", spec, [a, b]), a, b


def test_the_faster_node_gets_the_requests(clock: Clock) -> None:
    lb, a, b = balancer()
    lb.report(a, True, 0.050)
    lb.report(b, True, 0.005)
    assert all(lb.pick(None, None) is b for _ in range(10))


def test_back_to_back_samples_weigh_the_old_average_by_0_8(clock: Clock) -> None:
    lb, a, _ = balancer()
    lb.report(a, True, 0.100)
    assert a.ewma == pytest.approx(0.100)
    lb.report(a, True, 0.200)
    assert a.ewma == pytest.approx(0.100 * 0.8 + 0.200 * 0.2)


def test_a_node_slow_once_is_tried_again_after_a_while(clock: Clock) -> None:
    """Before, a node's average only changed when it served a request: one slow answer (2 s) left it
    out for good while the other node stayed under that."""
    lb, a, b = balancer()
    lb.report(a, True, 2.0)  # one hiccup
    lb.report(b, True, 0.050)
    picked = []
    for _ in range(60):  # a minute of one request a second, b answering in 50 ms
        clock.now += 1.0
        node = lb.pick(None, None)
        picked.append(node)
        lb.report(node, True, 0.050)
    assert picked[0] is b
    assert a in picked  # ~40 s on, a's 2 s had faded below b's 50 ms and a got a request again
    assert picked.index(a) > 30


def test_an_old_average_counts_for_little_against_a_new_sample(clock: Clock) -> None:
    lb, a, _ = balancer()
    lb.report(a, True, 2.0)
    clock.now += 300.0
    lb.report(a, True, 0.010)
    assert a.ewma == pytest.approx(0.010, rel=0.01)
