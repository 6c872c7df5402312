"""``mezzo trace``: search traces, show one as a waterfall, the service graph, export as OTLP/JSON."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.text import Text

from mezzo.cli.common import client, new_table, out, run

app = typer.Typer(help="Tracing: search, show, dependencies, export.", no_args_is_help=True)
WIDTH = 40


def _ms(us: int | float) -> str:
    return f"{us / 1000:.2f} ms"


@app.command("search")
@run
async def search(
    service: Annotated[str | None, typer.Option("--service", "-s")] = None,
    operation: Annotated[str | None, typer.Option("--operation", "-o")] = None,
    attr: Annotated[list[str] | None, typer.Option("--attr", "-a", help="KEY=VALUE, repeatable")] = None,
    errors: Annotated[bool, typer.Option("--errors", help="only traces with an error")] = False,
    min_duration: Annotated[str | None, typer.Option("--min-duration")] = None,
    max_duration: Annotated[str | None, typer.Option("--max-duration")] = None,
    limit: Annotated[int, typer.Option("--limit", "-l")] = 20,
) -> None:
    """Traces matching every condition given, newest first."""
    async with client() as mezzo:
        found = await mezzo.request("GET", "/v1/traces", params={
            "service": service, "operation": operation, "attr": attr or None, "errors": errors or None,
            "minDuration": min_duration, "maxDuration": max_duration, "limit": limit})
    table = new_table("TRACE", "START", "DURATION", "SPANS", "ERRORS", "SERVICES")
    for t in found["items"]:
        start = datetime.fromtimestamp(t["startUs"] / 1e6, UTC).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(t["traceId"], start, _ms(t["durationUs"]), str(t["spans"]), str(t["errors"]),
                      ", ".join(t["services"]))
    out.print(table)


@app.command("show")
@run
async def show(trace_id: str, limit: Annotated[int, typer.Option("--limit", help="spans to show")] = 500) -> None:
    """A trace as a waterfall: one line per span, indented by depth, with a bar for its time."""
    async with client() as mezzo:
        trace = await mezzo.request("GET", f"/v1/traces/{trace_id}", params={"limit": limit})
        path = await mezzo.request("GET", f"/v1/traces/{trace_id}:critical-path")
    critical = {p["spanId"] for p in path["items"]}
    spans = trace["items"]
    start, total = trace["startUs"], max(trace["durationUs"], 1)
    depth: dict[str, int] = {}
    for span in spans:
        depth[span["id"]] = depth.get(span.get("parentId", ""), -1) + 1
    out.print(f"trace {trace['traceId']}  {_ms(total)}  {trace['spans']} spans  {trace['errors']} errors  "
              f"services: {', '.join(trace['services'])}")
    for span in _tree_order(spans):
        offset = int((span["timestamp"] - start) / total * WIDTH)
        width = max(1, int(span["duration"] / total * WIDTH))
        bar = " " * offset + "█" * min(width, WIDTH - offset)
        label = "  " * depth.get(span["id"], 0) + f"{span['localEndpoint']['serviceName']}: {span['name']}"
        line = Text(f"{label[:48]:<48} {bar:<{WIDTH}} {_ms(span['duration']):>12}")
        if span.get("status") == 2:
            line.stylize("red")
        elif span["id"] in critical:
            line.stylize("bold")
        out.print(line)
    if trace.get("next") is not None:
        out.print(f"... {trace['spans'] - limit} more spans (--limit)")


def _tree_order(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    children: dict[str, list[dict[str, Any]]] = {}
    ids = {s["id"] for s in spans}
    roots = []
    for span in spans:
        parent = span.get("parentId", "")
        if parent and parent in ids:
            children.setdefault(parent, []).append(span)
        else:
            roots.append(span)
    ordered: list[dict[str, Any]] = []

    def visit(span: dict[str, Any]) -> None:
        ordered.append(span)
        for child in sorted(children.get(span["id"], []), key=lambda s: s["timestamp"]):
            visit(child)

    for root in sorted(roots, key=lambda s: s["timestamp"]):
        visit(root)
    return ordered


@app.command("deps")
@run
async def deps(window: Annotated[str, typer.Option("--window", "-w", help="e.g. 15m, 1h, 1d")] = "1h") -> None:
    """Calls between services over the window, with errors and latency percentiles."""
    async with client() as mezzo:
        edges = await mezzo.request("GET", "/v1/tracing/dependencies", params={"window": window})
    table = new_table("FROM", "TO", "CALLS", "ERRORS", "P50", "P95", "P99")
    for e in edges["items"]:
        table.add_row(e["parent"], e["child"], str(e["callCount"]), str(e["errorCount"]), _ms(e["p50Us"]),
                      _ms(e["p95Us"]), _ms(e["p99Us"]))
    out.print(table)


@app.command("export")
@run
async def export(trace_id: str,
                 output: Annotated[str | None, typer.Option("--output", "-o", help="file (default: stdout)")] = None
                 ) -> None:
    """A trace as an OTLP/JSON document (any OTLP receiver takes it back)."""
    async with client() as mezzo:
        doc = await mezzo.request("GET", f"/v1/traces/{trace_id}:export")
    data = orjson.dumps(doc, option=orjson.OPT_INDENT_2)
    if output:
        Path(output).write_bytes(data)  # noqa: ASYNC240 - a CLI, nothing else runs on this loop
    else:
        sys.stdout.write(data.decode() + "\n")
