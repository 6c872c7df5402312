"""``mezzo registry services|instances|deregister``: what the service registry holds, from a shell."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from mezzo.cli.common import Output, client, emit, new_table, out, run

app = typer.Typer(help="The service registry: services, their instances and health.", no_args_is_help=True)

Namespace = Annotated[str, typer.Option("--namespace", "-n")]


def _ago(moment: datetime | None) -> str:
    if moment is None:
        return ""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    seconds = max(0, int((datetime.now(UTC) - moment).total_seconds()))
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@app.command("services")
@run
async def services(namespace: Namespace = "default",
                   output: Annotated[Output, typer.Option("--output", "-o")] = Output.table) -> None:
    """Every service with instances, and how many pass their checks."""
    async with client() as mezzo:
        items = await mezzo.registry.services(namespace=namespace)
    if output is not Output.table:
        emit(items, output)
        return
    table = new_table("SERVICE", "INSTANCES", "PASSING", "CRITICAL")
    for item in items:
        table.add_row(item["name"], str(item["instances"]), str(item["passing"]), str(item["critical"]))
    out.print(table)


@app.command("instances")
@run
async def instances(
    service: str,
    namespace: Namespace = "default",
    healthy: Annotated[bool, typer.Option("--healthy", help="only instances passing with a live TTL")] = False,
    zone: Annotated[str | None, typer.Option("--zone")] = None,
    tag: Annotated[str | None, typer.Option("--tag")] = None,
    output: Annotated[Output, typer.Option("--output", "-o")] = Output.table,
) -> None:
    """A service's instances: address, weight, zone, version, status and since when."""
    async with client() as mezzo:
        found = await mezzo.registry.instances(service, healthy=healthy, zone=zone, tag=tag, namespace=namespace)
    if output is not Output.table:
        emit([i.model_dump(mode="json", by_alias=True, exclude_none=True) for i in found], output)
        return
    table = new_table("ID", "ADDRESS", "WEIGHT", "ZONE", "VERSION", "STATUS", "SINCE", "OUTPUT")
    for i in found:
        table.add_row(i.id, i.address, f"{i.weight:g}", i.zone, i.version, i.status.value, _ago(i.status_since),
                      i.output)
    out.print(table)


@app.command("deregister")
@run
async def deregister(
    service: str,
    instance: Annotated[str, typer.Argument(help="the instance id (host:port by default)")],
    namespace: Namespace = "default",
) -> None:
    """Remove an instance now (as its own process does on a clean stop)."""
    async with client() as mezzo:
        await mezzo.registry.deregister(service, instance, namespace=namespace, missing_ok=False)
    out.print(f"{service}/{instance} deregistered")
