"""What a saga's hot path skips: log calls below the level (unless logging is not Mezzo's), and looking up
metric children by their labels each time (kept at hand, without growing past a bound)."""

from __future__ import annotations

import io
import logging
import random

import httpx
import pytest
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from structlog.testing import capture_logs

from mezzo.telemetry import Metrics, TelemetryMiddleware, configure_logging
from mezzo.telemetry import http as telemetry_http
from mezzo.transactions import coordinator
from mezzo.transactions import metrics as tx_metrics
from mezzo.transactions.metrics import TxMetrics


def test_a_state_change_is_logged_only_at_a_level_that_writes_it(restored_logging: None) -> None:
    configure_logging("warning", "json", stream=io.StringIO())
    assert not coordinator._logs(logging.INFO)
    assert coordinator._logs(logging.WARNING)
    configure_logging("info", "json", stream=io.StringIO())
    assert coordinator._logs(logging.INFO)
    structlog.reset_defaults()  # structlog's own set-up writes everything: so is it logged
    logging.getLogger().setLevel(logging.ERROR)
    assert coordinator._logs(logging.INFO)
    with capture_logs():
        assert coordinator._logs(logging.DEBUG)


async def status(request: Request) -> Response:
    return PlainTextResponse("", status_code=int(request.path_params["code"]))


async def test_request_metrics_keep_few_children_and_count_right(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(telemetry_http, "_MAX_CHILDREN", 3)
    metrics = Metrics()
    app = TelemetryMiddleware(Starlette(routes=[Route("/s/{code}", status)]), metrics, None)
    codes = [200, 201, 200, 404, 409, 500, 200, 201, 503, 200]
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        for code in codes:
            assert (await http.get(f"/s/{code}")).status_code == code
            assert len(app._children) <= 3
    for code in set(codes):
        labels = {"method": "GET", "route": "/s/{code}", "status": str(code)}
        assert metrics.registry.get_sample_value("mezzo_api_requests_total", labels) == codes.count(code)
    duration = {"method": "GET", "route": "/s/{code}"}
    assert metrics.registry.get_sample_value("mezzo_api_request_duration_seconds_count", duration) == len(codes)


def test_transaction_metrics_keep_few_children_and_count_right(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tx_metrics, "MAX_CHILDREN", 2)
    metrics = Metrics()
    tx = TxMetrics(metrics, None, 300.0)  # type: ignore[arg-type]  # the store is read only at scrape time
    for mode in ("saga", "tcc", "saga", "msg", "saga"):
        tx.finished(mode, "succeed")
        tx.retry(mode)
        tx.branch(mode, "action", "success", 0.01)
        assert len(tx._children) <= 2
    sample = metrics.registry.get_sample_value
    assert sample("mezzo_tx_transactions_total", {"mode": "saga", "outcome": "succeed"}) == 3
    assert sample("mezzo_tx_retries_total", {"mode": "tcc"}) == 1
    assert sample("mezzo_tx_branch_duration_seconds_count", {"mode": "saga", "op": "action", "outcome": "success"}) == 3


async def test_a_branch_call_without_spans_sends_the_context_parsing_would_give() -> None:
    """Without spans a call sends the transaction's stored context: taken as it is when it is a W3C traceparent
    as written, else parsed and written again, else (not valid) a new trace, as a span would have started."""
    from types import SimpleNamespace

    from mezzo.telemetry.propagation import extract_context, inject_headers
    from mezzo.transactions.coordinator import Coordinator

    coord = Coordinator(None, None)  # type: ignore[arg-type]  # only its trace context handling is used
    rng = random.Random(5)

    def ids(n: int) -> str:
        return "0" * n if rng.random() < 0.03 else "".join(rng.choice("0123456789abcdef") for _ in range(n))

    for _ in range(3000):
        traceparent = f"00-{ids(32)}-{ids(16)}-{ids(2)}"
        if rng.random() < 0.1:
            traceparent = rng.choice([traceparent.upper(), traceparent + "-00", "01" + traceparent[2:],
                                      " " + traceparent, traceparent[:-1], ""])
        sent: dict[str, str] = {}
        coord._propagate(sent, SimpleNamespace(traceparent=traceparent))  # type: ignore[arg-type]
        parsed: dict[str, str] = {}
        inject_headers(parsed, extract_context({"traceparent": traceparent}))
        if parsed:
            assert sent == parsed, traceparent
        else:  # a trace of its own
            assert list(sent) == ["traceparent"] and sent["traceparent"] != traceparent
            assert extract_context(sent) != extract_context({})
    await coord.caller.aclose()
