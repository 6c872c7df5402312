"""``mezzo tx``: list, show, retry and abort distributed transactions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from mezzo.cli.common import Output, client, emit, new_table, out, run

app = typer.Typer(help="Distributed transactions: saga, TCC, XA, two-phase messages.", no_args_is_help=True)


def _when(moment: float | None) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M:%S") if moment else ""


@app.command("list")
@run
async def list_transactions(
    status: Annotated[str | None, typer.Option("--status", "-s", help="prepared, submitted, aborting, succeed, failed")] = None,
    mode: Annotated[str | None, typer.Option("--mode", "-m", help="saga, tcc, xa, msg")] = None,
    after: Annotated[str | None, typer.Option("--after", help="start after this gid")] = None,
    limit: Annotated[int, typer.Option("--limit", "-l")] = 100,
    output: Annotated[Output, typer.Option("--output", "-o")] = Output.table,
) -> None:
    """Transactions in gid order."""
    async with client() as mezzo:
        page = await mezzo.tx.list(status=status, mode=mode, after=after, limit=limit)
    if output is not Output.table:
        emit(page, output)
        return
    table = new_table("GID", "MODE", "STATUS", "STEPS", "CREATED", "REASON")
    for tx in page["items"]:
        table.add_row(tx["gid"], tx["mode"], tx["status"], str(len(tx["steps"])), _when(tx["created"]),
                      tx["rollback_reason"])
    out.print(table)
    if page.get("next"):
        out.print(f"more: --after {page['next']}")


@app.command("show")
@run
async def show(gid: str, output: Annotated[Output, typer.Option("--output", "-o")] = Output.table) -> None:
    """A transaction and its branches."""
    async with client() as mezzo:
        tx = await mezzo.tx.get(gid)
    if output is not Output.table:
        emit(tx, output)
        return
    out.print(f"{tx['gid']}  {tx['mode']}  {tx['status']}  created {_when(tx['created'])}"
              + (f"  finished {_when(tx['finished'])}" if tx.get("finished") else ""))
    if tx.get("rollback_reason"):
        out.print(f"reason: {tx['rollback_reason']}")
    table = new_table("BRANCH", "OP", "STATUS", "URL", "RESULT")
    for branch in tx["branches"]:
        table.add_row(branch["branch_id"], branch["op"], branch["status"], branch["url"], _short(branch["result"]))
    out.print(table)


def _short(text: Any) -> str:
    text = str(text or "")
    return text if len(text) <= 60 else text[:57] + "..."


@app.command("retry")
@run
async def retry(gid: str) -> None:
    """Run an unfinished transaction now instead of after its backoff."""
    async with client() as mezzo:
        tx = await mezzo.tx.retry(gid)
    out.print(f"{tx['gid']} {tx['status']}: due now")


@app.command("abort")
@run
async def abort(gid: str) -> None:
    """Roll back a prepared transaction, or (operators) a saga that is still running."""
    async with client() as mezzo:
        tx = await mezzo.tx.abort(gid)
    out.print(f"{tx['gid']} {tx['status']}")
