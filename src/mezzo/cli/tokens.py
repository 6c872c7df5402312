"""``mezzo token create|list|revoke``."""

from __future__ import annotations

from typing import Annotated

import typer

from mezzo.cli.common import client, new_table, out, run

app = typer.Typer(help="API tokens with roles and namespace scopes.", no_args_is_help=True)


@app.command("create")
@run
async def create(
    name: str,
    role: Annotated[str, typer.Option("--role", "-r", help="viewer | developer | operator | admin")] = "viewer",
    namespace: Annotated[list[str] | None, typer.Option("--namespace", "-n", help="repeatable; default all")] = None,
    ttl: Annotated[str | None, typer.Option("--ttl", help="lifetime, e.g. 30d")] = None,
) -> None:
    """Create a token. It is printed once; only its hash is stored."""
    async with client() as mezzo:
        record = await mezzo.tokens.create(name, role, namespace or ["*"], ttl)
    out.print(f"token {record['name']} ({record['id']}, role {record['role']}) created:")
    out.print(record["token"], markup=False)


@app.command("list")
@run
async def list_tokens() -> None:
    async with client() as mezzo:
        records = await mezzo.tokens.list()
    table = new_table("ID", "NAME", "ROLE", "NAMESPACES", "CREATED", "EXPIRES")
    for r in records:
        table.add_row(r["id"], r["name"], r["role"], ",".join(r["namespaces"]),
                      r["created_at"][:19], (r.get("expires_at") or "never")[:19])
    out.print(table)


@app.command("revoke")
@run
async def revoke(token: Annotated[str, typer.Argument(help="id or name")]) -> None:
    async with client() as mezzo:
        record = await mezzo.tokens.revoke(token)
    out.print(f"token {record['name']} ({record['id']}) revoked")
