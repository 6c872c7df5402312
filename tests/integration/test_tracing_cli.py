"""``mezzo trace``: search, show (waterfall), deps, export against a running node."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson

from mezzo.testing.fixtures import RunningNode

TRACE = "6bf92f3577b34da6a3ce929d0e0e4736"


def mezzo(node: RunningNode, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MEZZO_URL": node.url, "MEZZO_TOKEN": node.token, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "mezzo", *args], env=env, capture_output=True, text=True, timeout=60)


def _doc(service: str, spans: list[dict]) -> bytes:  # type: ignore[type-arg]
    return orjson.dumps({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
        "scopeSpans": [{"spans": [{"traceId": TRACE, **s} for s in spans]}]}]})


def _span(sid: str, name: str, start_ms: int, ms: int, parent: str = "", **extra) -> dict:  # type: ignore[no-untyped-def, type-arg]
    base = int(time.time() * 1000) - 10_000 + start_ms
    return {"spanId": sid, "parentSpanId": parent, "name": name, "kind": 2,
            "startTimeUnixNano": str(base * 1_000_000), "endTimeUnixNano": str((base + ms) * 1_000_000), **extra}


def test_trace_cli(node_process: RunningNode, tmp_path: Path) -> None:
    headers = {"Authorization": f"Bearer {node_process.token}", "content-type": "application/json"}
    with httpx.Client(base_url=node_process.url, headers=headers) as http:
        assert http.post("/v1/traces", content=_doc("web", [_span("1000000000000001", "GET /cart", 0, 80)])).status_code == 200
        assert http.post("/v1/traces", content=_doc("cart", [
            _span("1000000000000002", "load cart", 10, 60, parent="1000000000000001", status={"code": 2})])).status_code == 200
    found = mezzo(node_process, "trace", "search", "--service", "web")
    assert found.returncode == 0 and TRACE in found.stdout and "cart, web" in found.stdout
    assert TRACE in mezzo(node_process, "trace", "search", "--errors").stdout
    shown = mezzo(node_process, "trace", "show", TRACE)
    assert shown.returncode == 0 and "web: GET /cart" in shown.stdout and "  cart: load cart" in shown.stdout
    assert "█" in shown.stdout
    deps = mezzo(node_process, "trace", "deps")
    assert "web" in deps.stdout and "cart" in deps.stdout
    target = tmp_path / "trace.json"
    assert mezzo(node_process, "trace", "export", TRACE, "-o", str(target)).returncode == 0
    assert len(orjson.loads(target.read_bytes())["resourceSpans"]) == 2
    missing = mezzo(node_process, "trace", "show", "f" * 32)
    assert missing.returncode != 0 and "not found" in (missing.stderr + missing.stdout)
