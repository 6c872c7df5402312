"""``mezzo mq``: publish, consume, seek, topics, groups and dead letters from a terminal."""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Annotated, Any

import orjson
import typer

from mezzo.cli.common import client, new_table, out, run

app = typer.Typer(help="Messaging: topics, consumer groups, dead letters.", no_args_is_help=True)
dlq = typer.Typer(help="Dead-letter topics.", no_args_is_help=True)
app.add_typer(dlq, name="dlq")
NamespaceOpt = Annotated[str, typer.Option("--namespace", "-n")]
GroupOpt = Annotated[str, typer.Option("--group", "-g", help="consumer group")]


def _data(text: str) -> Any:
    """JSON when it parses as JSON, else the text itself; ``-`` reads standard input."""
    if text == "-":
        text = sys.stdin.read()
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


@app.command("publish")
@run
async def publish(
    topic: str,
    data: Annotated[str, typer.Argument(help="JSON or text; - reads stdin")] = "",
    key: Annotated[str | None, typer.Option("--key", "-k")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", "-t", help="repeatable")] = None,
    attr: Annotated[list[str] | None, typer.Option("--attr", "-a", help="NAME=VALUE, repeatable")] = None,
    id: Annotated[str | None, typer.Option("--id", help="dedup id")] = None,
    delay: Annotated[str | None, typer.Option("--delay", help="e.g. 30s, 2h")] = None,
    ttl: Annotated[str | None, typer.Option("--ttl")] = None,
    namespace: NamespaceOpt = "default",
) -> None:
    """Publish one message."""
    bad = [a for a in attr or [] if "=" not in a]
    if bad:
        raise typer.BadParameter(f"{bad[0]!r} is not NAME=VALUE", param_hint="--attr")
    attributes = dict(a.split("=", 1) for a in attr or [])
    async with client() as mezzo:
        result = await mezzo.messaging.publish(topic, _data(data), key=key, tags=tag or [], attributes=attributes,
                                               id=id, delay=delay, ttl=ttl, namespace=namespace)
    if result.get("scheduledAt"):
        out.print(f"{result['id']} scheduled for {result['scheduledAt']}")
    else:
        dup = " (duplicate: already stored)" if result.get("duplicate") else ""
        out.print(f"{result['id']} partition {result['partition']} offset {result['offset']}{dup}")


@app.command("consume")
@run
async def consume(
    topic: str, group: GroupOpt,
    max: Annotated[int, typer.Option("--max", "-m", help="stop after this many (0: no limit)")] = 10,
    wait: Annotated[float, typer.Option("--wait", help="seconds to wait for messages")] = 2.0,
    no_ack: Annotated[bool, typer.Option("--no-ack", help="leave them for redelivery")] = False,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep consuming")] = False,
    namespace: NamespaceOpt = "default",
) -> None:
    """Print messages as JSON lines, acking each (unless --no-ack)."""
    count = 0
    async with client() as mezzo:
        sub = mezzo.messaging.subscribe(topic, group, namespace=namespace, wait=wait)
        while True:
            batch = await sub.pull(min(max - count, 100) if max else 100)
            for message in batch:
                sys.stdout.write(orjson.dumps(message.raw.model_dump(mode="json", by_alias=True, exclude_none=True)).decode() + "\n")
            sys.stdout.flush()
            if batch and not no_ack:
                await sub.ack(batch)
            count += len(batch)
            if (max and count >= max) or (not batch and not follow):
                break


@app.command("seek")
@run
async def seek(topic: str, group: GroupOpt,
               to: Annotated[str, typer.Option("--to", help="earliest, latest, an offset or an ISO time")],
               namespace: NamespaceOpt = "default") -> None:
    """Move a consumer group (replay or skip)."""
    target: Any = to
    if to.isdigit():
        target = int(to)
    elif to not in ("earliest", "latest"):
        try:
            target = datetime.fromisoformat(to)
        except ValueError:
            raise typer.BadParameter("use earliest, latest, an offset or an ISO time", param_hint="--to") from None
    async with client() as mezzo:
        positions = await mezzo.messaging.subscribe(topic, group, namespace=namespace).seek(target)
    out.print("  ".join(f"partition {p}: {o}" for p, o in positions.items()))


@app.command("topics")
@run
async def topics(namespace: NamespaceOpt = "default") -> None:
    async with client() as mezzo:
        items = await mezzo.messaging.topics(namespace)
    table = new_table("TOPIC", "PARTITIONS", "MESSAGES", "BYTES", "GROUPS")
    for t in items:
        table.add_row(t["name"], str(t["partitions"]), str(t["messages"]), str(t["bytes"]), ", ".join(t["groups"]))
    out.print(table)


@app.command("groups")
@run
async def groups(topic: str, namespace: NamespaceOpt = "default") -> None:
    """Consumer groups of a topic with their lag."""
    async with client() as mezzo:
        items = await mezzo.messaging.groups(topic, namespace)
    table = new_table("GROUP", "LAG", "IN FLIGHT")
    for g in items:
        table.add_row(g["group"], str(g["lag"]), str(g["inFlight"]))
    out.print(table)


@dlq.command("list")
@run
async def dlq_list(topic: Annotated[str, typer.Argument(help="the dead-letter topic")],
                   limit: int = 100, namespace: NamespaceOpt = "default") -> None:
    async with client() as mezzo:
        letters = await mezzo.messaging.read(topic, limit=limit, namespace=namespace)
    table = new_table("OFFSET", "ID", "FROM", "GROUP", "ATTEMPTS", "REASON")
    for m in letters:
        a = m.attributes
        table.add_row(str(m.offset), m.id, a.get("mezzo.dlq.topic", ""), a.get("mezzo.dlq.group", ""),
                      a.get("mezzo.dlq.attempts", ""), a.get("mezzo.dlq.reason", ""))
    out.print(table)


@dlq.command("replay")
@run
async def dlq_replay(topic: Annotated[str, typer.Argument(help="the dead-letter topic")],
                     limit: int = 1000, namespace: NamespaceOpt = "default") -> None:
    """Publish dead letters back to their topics (each once)."""
    async with client() as mezzo:
        count = await mezzo.messaging.replay(topic, limit=limit, namespace=namespace)
    out.print(f"replayed {count} messages")


@app.command("trace")
@run
async def trace(message_id: str, topic: Annotated[str | None, typer.Option("--topic", help="default: every traced topic")] = None,
                namespace: NamespaceOpt = "default") -> None:
    """When a message was published, delivered (to which group and consumer, which attempt), acked or dead-lettered."""
    from datetime import UTC, datetime

    async with client() as mezzo:
        events = await mezzo.messaging.trace(message_id, topic=topic, namespace=namespace)
    table = new_table("AT", "TOPIC", "EVENT", "GROUP", "CONSUMER", "ATTEMPT", "DETAIL")
    skip = {"at", "topic", "event", "group", "consumer", "attempt", "id"}
    for e in events:
        at = datetime.fromtimestamp(e["at"] / 1000, UTC).strftime("%H:%M:%S.%f")[:-3]
        detail = " ".join(f"{k}={v}" for k, v in e.items() if k not in skip and v is not None)
        table.add_row(at, e["topic"], e["event"], e.get("group") or "", e.get("consumer") or "",
                      str(e.get("attempt") or ""), detail)
    out.print(table)
