"""``mezzo config``: edit, publish, read, diff, roll back, gray-release and watch application config."""

from __future__ import annotations

import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from mezzo.cli.common import Output, client, emit, err, new_table, out, run
from mezzo.config.formats import format_of_file
from mezzo.sdk.configcenter import ConfigChange

app = typer.Typer(help="Config center: drafts, releases, rollback, gray releases, live watch.",
                  no_args_is_help=True)
gray = typer.Typer(help="Gray release: serve other values of some keys to the clients the rules pick.",
                   no_args_is_help=True)
app.add_typer(gray, name="gray")
access_key = typer.Typer(help="Apollo access keys: Apollo clients of an app sign their requests with one.",
                         no_args_is_help=True)
app.add_typer(access_key, name="access-key")

EnvOpt = Annotated[str, typer.Option("--env", "-e", help="environment")]
ClusterOpt = Annotated[str, typer.Option("--cluster", "-c", help="cluster")]
OutputOpt = Annotated[Output, typer.Option("--output", "-o")]
LabelOpt = Annotated[list[str] | None, typer.Option("--label", "-l", help="NAME=VALUE, repeatable")]
ClientIdOpt = Annotated[str | None, typer.Option("--client-id", help="the client id gray rules see")]


def _where(app: str, namespace: str, env: str, cluster: str) -> str:
    return f"{app}/{env}/{cluster}/{namespace}"


def _labels(items: list[str] | None) -> dict[str, str]:
    labels = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            err.print(f"[red]Error:[/red] label {item!r} is not NAME=VALUE", markup=True)
            raise typer.Exit(2)
        labels[name] = value
    return labels


def _value(text: str) -> str:
    return sys.stdin.read().rstrip("\n") if text == "-" else text


def _at(stamp: str | None) -> str:
    return datetime.fromisoformat(stamp).strftime("%Y-%m-%d %H:%M:%S") if stamp else ""


def _shown(value: str | None) -> Text:
    return Text("" if value is None else value)  # Text: values are never read as rich markup


# drafts ----------------------------------------------------------------------------------------

@app.command("set")
@run
async def set_(
    app: str, namespace: str, key: str,
    value: Annotated[str, typer.Argument(help="the value; - reads stdin (use -- before a value starting with -)")],
    secret: Annotated[bool, typer.Option("--secret", help="encrypt it; shown as ****** to readers")] = False,
    comment: Annotated[str, typer.Option("--comment")] = "",
    if_match: Annotated[str | None, typer.Option("--if-match", help="fail if the draft's ETag is not this")] = None,
    env: EnvOpt = "default", cluster: ClusterOpt = "default",
) -> None:
    """Set a key in the draft (creating the namespace if needed); publish to release it."""
    async with client() as mezzo:
        etag = await mezzo.config.set(app, namespace, key, _value(value), secret=secret or None, comment=comment,
                                      env=env, cluster=cluster, if_match=if_match)
    out.print(f"set {key} in the draft of {_where(app, namespace, env, cluster)} (ETag {etag})", markup=False)


@app.command("unset")
@run
async def unset(app: str, namespace: str, key: str, env: EnvOpt = "default", cluster: ClusterOpt = "default") -> None:
    """Remove a key from the draft; publish to release it."""
    async with client() as mezzo:
        etag = await mezzo.config.unset(app, namespace, key, env=env, cluster=cluster)
    out.print(f"removed {key} from the draft of {_where(app, namespace, env, cluster)} (ETag {etag})", markup=False)


@app.command("discard")
@run
async def discard(app: str, namespace: str, env: EnvOpt = "default", cluster: ClusterOpt = "default") -> None:
    """Reset the draft to the latest release."""
    async with client() as mezzo:
        await mezzo.config.discard(app, namespace, env=env, cluster=cluster)
    out.print(f"the draft of {_where(app, namespace, env, cluster)} equals its latest release again", markup=False)


@app.command("import")
@run
async def import_(
    app: str, namespace: str, file: Path,
    secret_key: Annotated[list[str] | None, typer.Option("--secret-key", help="a key to encrypt, repeatable")] = None,
    env: EnvOpt = "default", cluster: ClusterOpt = "default",
) -> None:
    """Load a .properties, .yaml or .json file into the draft (yaml/json mappings become dotted keys)."""
    if not file.is_file():  # noqa: ASYNC240 - a CLI, nothing else runs on this loop
        err.print(f"[red]Error:[/red] {file}: no such file", markup=True)
        raise typer.Exit(1)
    async with client() as mezzo:
        await mezzo.config.import_file(app, namespace, file, secret_keys=secret_key or [], env=env, cluster=cluster)
    out.print(f"imported {file} into the draft of {_where(app, namespace, env, cluster)}; "
              f"release it with `mezzo config publish {app} {namespace}`", markup=False)


@app.command("export")
@run
async def export(
    app: str, namespace: str,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="file (default: stdout)")] = None,
    format: Annotated[str | None, typer.Option("--format", "-f", help="properties, yaml or json "
                                               "(default: the file's extension, else the namespace's)")] = None,
    draft: Annotated[bool, typer.Option("--draft", help="the draft instead of the latest release")] = False,
    env: EnvOpt = "default", cluster: ClusterOpt = "default",
) -> None:
    """The latest release as a file: a properties namespace as .properties, .yaml or .json (by the
    file's extension or --format), any other namespace as its document."""
    if format is None and output is not None and output.suffix.lower() in (".properties", ".yaml", ".yml", ".json"):
        format = format_of_file(output.name).value
    async with client() as mezzo:
        text = await mezzo.config.export(app, namespace, draft=draft, format=format, env=env, cluster=cluster)
    if output is None:
        sys.stdout.write(text)
    else:
        _write_private(output, text)


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to a file only its owner can read (0600, an existing file too): an export holds
    secrets in clear for tokens with the ``use`` right."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        os.fchmod(fd, 0o600)  # an existing file keeps its mode through open(): restrict it before writing
        file.write(text)


# releases --------------------------------------------------------------------------------------

@app.command("publish")
@run
async def publish(
    app: str, namespace: str,
    message: Annotated[str, typer.Option("--message", "-m")] = "",
    title: Annotated[str, typer.Option("--title", "-t", help="default: release N")] = "",
    env: EnvOpt = "default", cluster: ClusterOpt = "default",
) -> None:
    """Release the draft: watching clients get it at once."""
    async with client() as mezzo:
        release = await mezzo.config.publish(app, namespace, title=title, message=message, env=env, cluster=cluster)
    out.print(f"published release {release['id']} of {_where(app, namespace, env, cluster)} "
              f"({release['keys']} keys)", markup=False)


@app.command("get")
@run
async def get(
    app: str, namespace: str, key: Annotated[str | None, typer.Argument()] = None,
    draft: Annotated[bool, typer.Option("--draft", help="the draft (secrets masked) instead of what clients get")] = False,
    client_id: ClientIdOpt = None, label: LabelOpt = None,
    env: EnvOpt = "default", cluster: ClusterOpt = "default", output: OutputOpt = Output.table,
) -> None:
    """The released values as clients get them (gray rules applied for --client-id/--label), or one value."""
    async with client() as mezzo:
        if draft:
            items = (await mezzo.config.items(app, namespace, env=env, cluster=cluster))["items"]
            doc: dict[str, Any] = {"draft": True, "configurations": {k: v["value"] for k, v in items.items()}}
        else:
            doc = await mezzo.config.read(app, namespace, env=env, cluster=cluster, client_id=client_id,
                                          labels=_labels(label))
    values: dict[str, str] = doc["configurations"]
    if key is not None:
        if key not in values:
            err.print(f"[red]Error:[/red] no key {key!r} in {'the draft of ' if draft else ''}"
                      f"{_where(app, namespace, env, cluster)}", markup=True)
            raise typer.Exit(1)
        if output is Output.table:
            sys.stdout.write(values[key] + "\n")
        else:
            emit({"key": key, "value": values[key]}, output)
        return
    if output is not Output.table:
        emit(doc, output)
        return
    table = new_table("KEY", "VALUE")
    for name in sorted(values):
        table.add_row(_shown(name), _shown(values[name]))
    table.caption = "the draft" if draft else f"release {doc['releaseKey']} (cluster {doc['cluster']})"
    out.print(table)


@app.command("history")
@run
async def history(
    app: str, namespace: str, limit: Annotated[int, typer.Option("--limit")] = 100,
    env: EnvOpt = "default", cluster: ClusterOpt = "default", output: OutputOpt = Output.table,
) -> None:
    """Releases, newest first: who released what, when, and rollbacks."""
    async with client() as mezzo:
        releases = await mezzo.config.releases(app, namespace, limit=limit, env=env, cluster=cluster)
    if output is not Output.table:
        emit(releases, output)
        return
    table = new_table("RELEASE", "TITLE", "KIND", "AUTHOR", "AT", "KEYS", "MESSAGE")
    for r in releases:
        kind = f"{r['kind']} to {r['rolledBackTo']}" if r.get("rolledBackTo") else r["kind"]
        table.add_row(str(r["id"]), _shown(r["title"]), kind, _shown(r["author"]), _at(r["at"]), str(r["keys"]),
                      _shown(r.get("message", "")))
    out.print(table)


@app.command("diff")
@run
async def diff(
    app: str, namespace: str,
    from_: Annotated[int | None, typer.Option("--from", help="release (default: the one before --to)")] = None,
    to: Annotated[int | None, typer.Option("--to", help="release (default: the latest)")] = None,
    draft: Annotated[bool, typer.Option("--draft", help="the draft against the latest release")] = False,
    env: EnvOpt = "default", cluster: ClusterOpt = "default", output: OutputOpt = Output.table,
) -> None:
    """What changed between two releases (default: the last two), or what publishing the draft would change."""
    async with client() as mezzo:
        if draft:
            result = await _draft_diff(mezzo, app, namespace, env, cluster)
        else:
            if to is None:
                latest = await mezzo.config.releases(app, namespace, limit=1, env=env, cluster=cluster)
                to = latest[0]["id"] if latest else 0
            start = from_ if from_ is not None else to - 1
            if start < 1 or to < 1:
                err.print(f"[red]Error:[/red] {_where(app, namespace, env, cluster)} has fewer than two releases; "
                          "compare the draft with --draft", markup=True)
                raise typer.Exit(1)
            result = await mezzo.config.diff(app, namespace, start, to, env=env, cluster=cluster)
    if output is not Output.table:
        emit(result, output)
        return
    out.print(f"release {result['from']} -> {result['to']}", markup=False)
    _diff_table(result)


async def _draft_diff(mezzo: Any, app: str, namespace: str, env: str, cluster: str) -> dict[str, Any]:
    meta = await mezzo.config.namespace(app, namespace, env=env, cluster=cluster)
    items = (await mezzo.config.items(app, namespace, env=env, cluster=cluster))["items"]
    released: dict[str, str] = {}
    if meta.get("release"):
        released = (await mezzo.config.release(app, namespace, meta["release"], env=env,
                                               cluster=cluster))["configurations"]
    pending = meta["pending"]
    keys = pending["added"] + pending["changed"] + pending["removed"]
    values = {k: {"from": released.get(k), "to": items[k]["value"] if k in items else None} for k in keys}
    return {"from": meta.get("release"), "to": "draft", **pending, "values": values}


def _diff_table(result: dict[str, Any]) -> None:
    keys = [(k, "added") for k in result["added"]] + [(k, "changed") for k in result["changed"]] + [
        (k, "removed") for k in result["removed"]]
    if not keys:
        out.print("no differences")
        return
    table = new_table("KEY", "CHANGE", "FROM", "TO")
    for name, change in sorted(keys):
        values = result["values"][name]
        table.add_row(_shown(name), change, _shown(values["from"]), _shown(values["to"]))
    out.print(table)


@app.command("rollback")
@run
async def rollback(
    app: str, namespace: str,
    to: Annotated[int | None, typer.Option("--to", help="release (default: the one before the latest)")] = None,
    force: Annotated[bool, typer.Option("--force", help="even if the draft has unpublished changes (they are lost)")] = False,
    env: EnvOpt = "default", cluster: ClusterOpt = "default",
) -> None:
    """Release an earlier release's configuration again, as a new release."""
    async with client() as mezzo:
        release = await mezzo.config.rollback(app, namespace, to=to, force=force, env=env, cluster=cluster)
    out.print(f"rolled {_where(app, namespace, env, cluster)} back to release {release['rolledBackTo']}: "
              f"release {release['id']}", markup=False)


# namespaces and audit --------------------------------------------------------------------------

@app.command("create")
@run
async def create(
    app: str, namespace: str,
    format: Annotated[str, typer.Option("--format", "-f", help="properties, yaml, json or text")] = "properties",
    public: Annotated[bool, typer.Option("--public", help="other apps inherit it by creating the same name")] = False,
    comment: Annotated[str, typer.Option("--comment")] = "",
    env: EnvOpt = "default", cluster: ClusterOpt = "default",
) -> None:
    """Create a namespace (`set` creates a private properties one by itself)."""
    async with client() as mezzo:
        await mezzo.config.create_namespace(app, namespace, format=format, public=public, comment=comment,
                                            env=env, cluster=cluster)
    out.print(f"created {format} namespace {_where(app, namespace, env, cluster)}", markup=False)


@app.command("namespaces")
@run
async def namespaces(app: str, env: Annotated[str | None, typer.Option("--env", "-e")] = None,
                     output: OutputOpt = Output.table) -> None:
    """Namespaces of an app in every environment and cluster."""
    async with client() as mezzo:
        items = await mezzo.config.namespaces(app, env)
    if output is not Output.table:
        emit(items, output)
        return
    table = new_table("ENV", "CLUSTER", "NAMESPACE", "FORMAT", "PUBLIC", "RELEASE", "GRAY")
    for n in items:
        table.add_row(n["env"], n["cluster"], n["namespace"], n["format"], "yes" if n["public"] else "",
                      str(n["release"] or ""), "yes" if n["gray"] else "")
    out.print(table)


@app.command("audit")
@run
async def audit(
    app: str, namespace: Annotated[str | None, typer.Option("--namespace", "-n")] = None,
    user: Annotated[str | None, typer.Option("--user", "-u")] = None,
    limit: Annotated[int, typer.Option("--limit")] = 100, output: OutputOpt = Output.table,
) -> None:
    """Who did what to an app's config, and when (oldest first)."""
    async with client() as mezzo:
        records = await mezzo.config.audit(app, namespace=namespace, user=user, limit=limit)
    if output is not Output.table:
        emit(records, output)
        return
    table = new_table("AT", "USER", "ACTION", "NAMESPACE")
    for r in records:
        table.add_row(_at(r["at"]), _shown(r["user"]), r["action"], _shown(r.get("name")))
    out.print(table)


# watching --------------------------------------------------------------------------------------

@app.command("watch")
def watch(
    app: str, namespace: str, client_id: ClientIdOpt = None, label: LabelOpt = None,
    env: EnvOpt = "default", cluster: ClusterOpt = "default", output: OutputOpt = Output.table,
) -> None:
    """Print each change of what clients get, as it is released, until Ctrl-C."""
    try:
        _watch(app, namespace, client_id, _labels(label), env, cluster, output)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


@run
async def _watch(app: str, namespace: str, client_id: str | None, labels: dict[str, str], env: str, cluster: str,
                 output: Output) -> None:
    async with client() as mezzo:
        view = await mezzo.config.watch(app, namespace, env=env, cluster=cluster, labels=labels,
                                        client_id=client_id, cache=False, missing_ok=True)
        where = _where(app, namespace, env, cluster)
        state = f"release {view.release_key}, {len(view.all())} keys" if view.release_key else "no release yet"
        err.print(f"watching {where} ({state}); Ctrl-C to stop", markup=False)
        async for change in view:
            if output is Output.table:
                _print_change(change)
            else:
                emit(change.out(), output)
            sys.stdout.flush()


def _print_change(change: ConfigChange) -> None:
    out.print(f"{datetime.now().strftime('%H:%M:%S')} release {change.release_key} (revision {change.revision})",
              markup=False)
    for name, key in change.keys.items():
        if key.old is None:
            out.print(f"  + {name} = {key.new}", markup=False)
        elif key.new is None:
            out.print(f"  - {name} (was {key.old})", markup=False)
        else:
            out.print(f"  ~ {name}: {key.old} -> {key.new}", markup=False)


# gray release ----------------------------------------------------------------------------------

def _print_gray(doc: dict[str, Any], output: Output) -> None:
    if output is not Output.table:
        emit(doc, output)
        return
    released = doc.get("release")
    out.print(f"published: gray release {released['id']}" if released else "not published", markup=False)
    table = new_table("KEY", "GRAY VALUE", "PUBLISHED")
    for name, item in sorted(doc.get("items", {}).items()):
        live = (released or {}).get("overrides", {}).get(name)
        table.add_row(_shown(name), _shown(item["value"]), _shown(live))
    out.print(table)
    rules = new_table("RULE", "LABELS", "IPS", "CLIENT IDS", "PERCENTAGE")
    for number, rule in enumerate(doc.get("rules", []), 1):
        rules.add_row(str(number), ", ".join(f"{k}={v}" for k, v in rule.get("labels", {}).items()),
                      ", ".join(rule.get("ips", [])), ", ".join(rule.get("clientIds", [])),
                      "" if rule.get("percentage") is None else f"{rule['percentage']}%")
    out.print(rules if doc.get("rules") else "no rules: no client gets the gray keys")


@gray.command("create")
@run
async def gray_create(app: str, namespace: str, env: EnvOpt = "default", cluster: ClusterOpt = "default") -> None:
    """Start a gray release of a namespace (it needs a release)."""
    async with client() as mezzo:
        await mezzo.config.gray_create(app, namespace, env=env, cluster=cluster)
    out.print(f"started a gray release of {_where(app, namespace, env, cluster)}; next: `gray set`, `gray rule`, "
              "`gray publish`", markup=False)


@gray.command("set")
@run
async def gray_set(
    app: str, namespace: str, key: str, value: Annotated[str, typer.Argument(help="- reads stdin")],
    secret: Annotated[bool, typer.Option("--secret")] = False,
    env: EnvOpt = "default", cluster: ClusterOpt = "default",
) -> None:
    """Set a key of the gray release (live for the chosen clients after `gray publish`)."""
    async with client() as mezzo:
        await mezzo.config.gray_set(app, namespace, key, _value(value), secret=secret or None, env=env, cluster=cluster)
    out.print(f"set {key} in the gray release of {_where(app, namespace, env, cluster)}", markup=False)


@gray.command("unset")
@run
async def gray_unset(app: str, namespace: str, key: str, env: EnvOpt = "default",
                     cluster: ClusterOpt = "default") -> None:
    """Remove a key from the gray release."""
    async with client() as mezzo:
        await mezzo.config.gray_unset(app, namespace, key, env=env, cluster=cluster)
    out.print(f"removed {key} from the gray release of {_where(app, namespace, env, cluster)}", markup=False)


@gray.command("rule")
@run
async def gray_rule(
    app: str, namespace: str, label: LabelOpt = None,
    ip: Annotated[list[str] | None, typer.Option("--ip", help="address or CIDR block, repeatable")] = None,
    client_id: Annotated[list[str] | None, typer.Option("--client-id", help="repeatable")] = None,
    percentage: Annotated[int | None, typer.Option("--percentage", min=0, max=100,
                                                   help="of client ids, sticky")] = None,
    replace: Annotated[bool, typer.Option("--replace", help="this rule replaces the existing ones")] = False,
    clear: Annotated[bool, typer.Option("--clear", help="remove every rule")] = False,
    env: EnvOpt = "default", cluster: ClusterOpt = "default", output: OutputOpt = Output.table,
) -> None:
    """Add a rule picking the clients that get the gray keys (effective at once). A rule matches when all
    it sets match (any of its --ip, any of its --client-id, every --label); a client matching any rule is in."""
    rule: dict[str, Any] = {"labels": _labels(label), "ips": ip or [], "clientIds": client_id or [],
                            "percentage": percentage}
    empty = not (label or ip or client_id or percentage is not None)
    if clear != empty:
        err.print("[red]Error:[/red] give a rule (--label, --ip, --client-id, --percentage) or --clear", markup=True)
        raise typer.Exit(2)
    async with client() as mezzo:
        rules = [] if clear or replace else (await mezzo.config.gray_get(app, namespace, env=env,
                                                                          cluster=cluster))["rules"]
        doc = await mezzo.config.gray_rules(app, namespace, rules + ([] if clear else [rule]), env=env,
                                            cluster=cluster)
    _print_gray(doc, output)


@gray.command("publish")
@run
async def gray_publish(app: str, namespace: str, env: EnvOpt = "default", cluster: ClusterOpt = "default") -> None:
    """Make the gray keys live for the clients the rules pick."""
    async with client() as mezzo:
        doc = await mezzo.config.gray_publish(app, namespace, env=env, cluster=cluster)
    out.print(f"published gray release {doc['release']['id']} of {_where(app, namespace, env, cluster)} "
              f"({len(doc['release']['overrides'])} keys, {len(doc['rules'])} rules)", markup=False)


@gray.command("promote")
@run
async def gray_promote(app: str, namespace: str, env: EnvOpt = "default", cluster: ClusterOpt = "default") -> None:
    """Merge the published gray keys into a new release for every client; the gray release ends."""
    async with client() as mezzo:
        release = await mezzo.config.gray_promote(app, namespace, env=env, cluster=cluster)
    out.print(f"promoted the gray release of {_where(app, namespace, env, cluster)}: release {release['id']}",
              markup=False)


@gray.command("abandon")
@run
async def gray_abandon(app: str, namespace: str, env: EnvOpt = "default", cluster: ClusterOpt = "default") -> None:
    """Drop the gray release: every client gets the main release again."""
    async with client() as mezzo:
        await mezzo.config.gray_abandon(app, namespace, env=env, cluster=cluster)
    out.print(f"abandoned the gray release of {_where(app, namespace, env, cluster)}", markup=False)


@gray.command("show")
@run
async def gray_show(app: str, namespace: str, env: EnvOpt = "default", cluster: ClusterOpt = "default",
                    output: OutputOpt = Output.table) -> None:
    """The gray release: its keys, what is published, its rules."""
    async with client() as mezzo:
        doc = await mezzo.config.gray_get(app, namespace, env=env, cluster=cluster)
    _print_gray(doc, output)


# Apollo access keys ----------------------------------------------------------------------------

@access_key.command("create")
@run
async def access_key_create(
    app: str, comment: Annotated[str, typer.Option("--comment", help="what the key is for")] = "",
    disabled: Annotated[bool, typer.Option("--disabled", help="create it disabled")] = False,
    output: OutputOpt = Output.table,
) -> None:
    """Create an access key; its secret is printed now and never again."""
    async with client() as mezzo:
        key = await mezzo.config.create_access_key(app, comment=comment, enabled=not disabled)
    if output is not Output.table:
        emit(key, output)
        return
    out.print(f"created access key {key['id']} of {app} ({'enabled' if key['enabled'] else 'disabled'})", markup=False)
    out.print(f"secret: {key['secret']}", markup=False)
    out.print("it is shown only now; Apollo's Java client takes it as apollo.access-key.secret", markup=False)


@access_key.command("list")
@run
async def access_key_list(app: str, output: OutputOpt = Output.table) -> None:
    """The app's access keys (never their secrets)."""
    async with client() as mezzo:
        items = await mezzo.config.access_keys(app)
    if output is not Output.table:
        emit(items, output)
        return
    table = new_table("ID", "ENABLED", "CREATED", "BY", "COMMENT")
    for key in items:
        table.add_row(key["id"], "yes" if key["enabled"] else "no", _at(key.get("createdAt")),
                      _shown(key.get("createdBy")), _shown(key.get("comment")))
    out.print(table if items else f"{app} has no access key", markup=False)


@access_key.command("enable")
@run
async def access_key_enable(app: str, key_id: str) -> None:
    """Accept the key's signatures."""
    async with client() as mezzo:
        await mezzo.config.enable_access_key(app, key_id)
    out.print(f"enabled access key {key_id} of {app}", markup=False)


@access_key.command("disable")
@run
async def access_key_disable(app: str, key_id: str) -> None:
    """Refuse the key's signatures until it is enabled again."""
    async with client() as mezzo:
        await mezzo.config.disable_access_key(app, key_id)
    out.print(f"disabled access key {key_id} of {app}", markup=False)


@access_key.command("delete")
@run
async def access_key_delete(app: str, key_id: str) -> None:
    """Delete the key: clients signing with it are refused at once."""
    async with client() as mezzo:
        await mezzo.config.delete_access_key(app, key_id)
    out.print(f"deleted access key {key_id} of {app}", markup=False)
