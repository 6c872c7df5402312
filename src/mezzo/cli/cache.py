"""``mezzo cache``: read and write keys, list them, statistics, hot and big keys, nodes and rebalancing."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from mezzo.cli.common import Output, client, emit, err, new_table, out, run

app = typer.Typer(help="Cache: keys, statistics, hot keys, distributed nodes.", no_args_is_help=True)
NamespaceOpt = Annotated[str, typer.Option("--namespace", "-n", help="cache namespace")]
OutputOpt = Annotated[Output, typer.Option("--output", "-o")]


@app.command("get")
@run
async def get(key: str, namespace: NamespaceOpt = "default") -> None:
    """Print a key's value (raw bytes when it is not text); exit 1 when there is no such key."""
    async with client() as mezzo:
        value = await mezzo.cache.get(key, namespace)
    if value is None:
        err.print(f"no key {key!r} in cache namespace {namespace!r}", markup=False)
        raise typer.Exit(1)
    try:
        out.print(value.decode(), markup=False)
    except UnicodeDecodeError:
        sys.stdout.buffer.write(value)
        sys.stdout.flush()


@app.command("set")
@run
async def set_(
    key: str,
    value: Annotated[str, typer.Argument(help="the value; - reads stdin (bytes as they are)")],
    ttl: Annotated[str | None, typer.Option("--ttl", help="e.g. 30s, 10m")] = None,
    nx: Annotated[bool, typer.Option("--nx", help="only when the key does not exist")] = False,
    tag: Annotated[list[str] | None, typer.Option("--tag", "-t", help="repeatable")] = None,
    namespace: NamespaceOpt = "default",
) -> None:
    """Store a value."""
    data: bytes | str = sys.stdin.buffer.read() if value == "-" else value
    async with client() as mezzo:
        stored = await mezzo.cache.set(key, data, ttl, namespace=namespace, nx=nx, tags=tag or ())
    if not stored:
        err.print(f"not stored: key {key!r} exists (--nx)", markup=False)
        raise typer.Exit(1)
    out.print("OK")


@app.command("del")
@run
async def delete(keys: Annotated[list[str], typer.Argument(help="one or more keys")],
                 tag: Annotated[bool, typer.Option("--tag", help="the arguments are tags: delete their keys")] = False,
                 namespace: NamespaceOpt = "default") -> None:
    """Delete keys (or every key with the given tags); prints how many went."""
    async with client() as mezzo:
        if tag:
            count = sum([await mezzo.cache.invalidate_tag(name, namespace) for name in keys])
        else:
            count = sum([await mezzo.cache.delete(key, namespace) for key in keys])
    out.print(str(count))


@app.command("keys")
@run
async def keys(pattern: Annotated[str | None, typer.Argument(help="glob, e.g. 'user:*'")] = None,
               namespace: NamespaceOpt = "default") -> None:
    """List keys (one a line)."""
    async with client() as mezzo:
        found = await mezzo.cache.keys(pattern, namespace)
    for key in found:
        out.print(key, markup=False)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


@app.command("stats")
@run
async def stats(namespace: Annotated[str | None, typer.Option("--namespace", "-n", help="default: every namespace")]
                = None, output: OutputOpt = Output.table) -> None:
    """Keys, memory, hits, misses, hit ratio, evictions and ops/s per namespace."""
    async with client() as mezzo:
        items = [await mezzo.cache.stats(namespace)] if namespace else await mezzo.cache.namespaces()
    if output is not Output.table:
        emit(items if namespace is None else items[0], output)
        return
    table = new_table("NAMESPACE", "KEYS", "MEMORY", "HITS", "MISSES", "HIT RATIO", "EVICTIONS", "EXPIRED", "OPS/S")
    for s in items:
        table.add_row(s["namespace"], f"{s['keys']:,}", _bytes(s["memoryBytes"]), f"{s['hits']:,}",
                      f"{s['misses']:,}", _ratio(s["hitRatio"]), f"{s['evictions']:,}", f"{s['expired']:,}",
                      _rate(s.get("opsPerSecond")))
    out.print(table)


def _bytes(n: int) -> str:
    if n < 1024:
        return f"{n:,} B"
    value = n / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:,.1f} {unit}"
        value /= 1024
    return f"{value:,.1f} GiB"


@app.command("hotkeys")
@run
async def hotkeys(namespace: NamespaceOpt = "default",
                  limit: Annotated[int, typer.Option("--limit", "-l", help="keys of each kind")] = 10,
                  output: OutputOpt = Output.table) -> None:
    """The hottest keys (estimated from sampled operations) and the biggest keys (sampled sizes)."""
    async with client() as mezzo:
        report = await mezzo.cache.hotkeys(namespace, limit)
    if output is not Output.table:
        emit(report, output)
        return
    out.print(f"hot keys of {namespace} (1 op in ~{report['sampleEvery']} sampled, "
              f"{report['sampledOps']:,} samples, halved every minute)", markup=False)
    table = new_table("KEY", "OPS (EST.)", "± ERROR")
    for h in report["hot"]:
        table.add_row(h["key"], f"{h['ops']:,}", f"{h['error']:,}")
    out.print(table)
    out.print(f"big keys of {namespace}", markup=False)
    table = new_table("KEY", "TYPE", "SIZE")
    for b in report["big"]:
        table.add_row(b["key"], b["type"], _bytes(b["bytes"]))
    out.print(table)


@app.command("nodes")
@run
async def nodes(namespace: NamespaceOpt = "default", output: OutputOpt = Output.table) -> None:
    """The nodes behind a distributed namespace with their health, and the last rebalance."""
    async with client() as mezzo:
        status = await mezzo.cache.nodes(namespace)
    if output is not Output.table:
        emit(status, output)
        return
    protocol = f" ({status['protocol']})" if status.get("protocol") else ""
    out.print(f"namespace {status.get('namespace', namespace)}: backend {status.get('backend', '?')}{protocol}",
              markup=False)
    members: list[dict[str, Any]] = status.get("nodes") or []
    if members:
        columns = list(dict.fromkeys(k for node in members for k in node))
        table = new_table(*(c.upper() for c in columns))
        for node in members:
            table.add_row(*(_cell(node.get(c)) for c in columns))
        out.print(table)
    _print_rebalance(status.get("rebalance"))


@app.command("rebalance")
@run
async def rebalance(namespace: NamespaceOpt = "default") -> None:
    """Move every key that is not on its owner node (runs in the background on the server)."""
    async with client() as mezzo:
        result = await mezzo.cache.rebalance(namespace)
    _print_rebalance(result.get("rebalance"))


def _print_rebalance(state: Any) -> None:
    if not state:
        out.print("rebalance: none", markup=False)
    elif isinstance(state, dict):
        out.print("rebalance: " + "  ".join(f"{k}={_moment(v) if k.endswith('At') else _cell(v)}"
                                            for k, v in state.items()), markup=False)
    else:
        out.print(f"rebalance: {state}", markup=False)


def _moment(value: Any) -> str:
    """A time the server gives as seconds since the epoch (``startedAt``, ``finishedAt``), in UTC."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return _cell(value)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
