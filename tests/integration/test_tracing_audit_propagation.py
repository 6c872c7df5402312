"""Audit: a publisher's trace context, W3C or B3 (single or multi header), reaches the message its
subscribers continue from — when the node traces itself (its publish span joins the caller's trace)
and when it does not (the caller's context is passed on)."""

from __future__ import annotations

from typing import Any

import httpx

from integration.test_trace_e2e import traced  # noqa: F401  (a node tracing itself)
from mezzo.testing.fixtures import RunningNode, wait_for

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
CONTEXTS = {"w3c": {"traceparent": f"00-{TRACE}-{PARENT}-01"}, "b3": {"b3": f"{TRACE}-{PARENT}-1"},
            "b3-multi": {"X-B3-TraceId": TRACE, "X-B3-SpanId": PARENT, "X-B3-Sampled": "1"}}


async def carried(node: RunningNode, topic: str, headers: dict[str, str]) -> dict[str, Any]:
    """The attributes of a message published to a new ``topic`` with ``headers``."""
    async with node.client() as client:
        await client.resources.apply({"apiVersion": "mezzo.dev/v1", "kind": "Topic", "metadata": {"name": topic},
                                      "spec": {}})
    bearer = {"Authorization": f"Bearer {node.token}"}
    async with httpx.AsyncClient(base_url=node.url, headers=bearer) as http:
        async def published() -> bool:
            answer = await http.post(f"/v1/topics/{topic}:publish", json={"data": 1}, headers=headers)
            return answer.status_code < 300

        await wait_for(published)
        [message] = (await http.get(f"/v1/topics/{topic}/messages")).json()["messages"]
    return message["attributes"]  # type: ignore[no-any-return]


async def test_a_node_tracing_itself_continues_w3c_and_b3(traced: RunningNode) -> None:  # noqa: F811
    for kind, headers in CONTEXTS.items():
        attributes = await carried(traced, kind, headers)
        assert attributes.get("traceparent", "").startswith(f"00-{TRACE}-"), (kind, attributes)


async def test_a_node_not_tracing_passes_w3c_on(node: RunningNode) -> None:
    attributes = await carried(node, "w3c", CONTEXTS["w3c"])
    assert attributes["traceparent"] == CONTEXTS["w3c"]["traceparent"]


async def test_a_node_not_tracing_passes_b3_on(node: RunningNode) -> None:
    for kind in ("b3", "b3-multi"):
        attributes = await carried(node, kind, CONTEXTS[kind])
        assert attributes.get("traceparent", "").startswith(f"00-{TRACE}-{PARENT}-"), (kind, attributes)


def test_a_transaction_joins_a_b3_callers_trace_on_a_node_not_tracing() -> None:
    """The trace a new transaction's branch calls join: the caller's W3C context, else its B3 one."""
    from starlette.requests import Request

    from mezzo.transactions.api import traceparent_of

    trace_id, span_id = "80f198ee56343ba864fe8b2a57d3eff7", "e457b5a2e4d86bd1"
    for headers in ({"b3": f"{trace_id}-{span_id}-1"},
                    {"x-b3-traceid": trace_id, "x-b3-spanid": span_id, "x-b3-sampled": "1"},
                    {"traceparent": f"00-{trace_id}-{span_id}-01"}):
        scope = {"type": "http", "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}
        assert traceparent_of(Request(scope)).split("-")[1] == trace_id, headers
