"""``mezzo apply|get|delete|diff|history|rollback``: the declarative API from a terminal."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from mezzo.cli.common import Output, client, emit, err, new_table, out, run, run_with
from mezzo.resources.manifests import to_yaml
from mezzo.resources.model import ApplyResult, Resource
from mezzo.sdk.resources import manifest_files

FileOpt = Annotated[list[Path], typer.Option("--filename", "-f", help="manifest file or directory (repeatable); - reads standard input")]
NamespaceOpt = Annotated[str, typer.Option("--namespace", "-n", help="namespace")]


def _ref(result: ApplyResult) -> str:
    ns = "" if result.namespace == "default" else f"{result.namespace}/"
    return f"{result.kind}/{ns}{result.name}"


async def _sources(files: list[Path], error_code: int = 1) -> dict[str, Any]:
    manifests = []
    for path in files:
        if str(path) == "-":  # kubectl's way: `mezzo get ... -o yaml | mezzo apply -f -`
            manifests.append({"source": "stdin", "text": sys.stdin.read()})
            continue
        if not path.exists():
            err.print(f"[red]Error:[/red] {path}: no such file or directory", markup=True)
            raise typer.Exit(error_code)
        manifests += [{"source": str(p), "text": p.read_text()} for p in manifest_files(path)]
    if not manifests:
        err.print("[red]Error:[/red] no manifest files found", markup=True)
        raise typer.Exit(error_code)
    return {"manifests": manifests}


@run
async def apply(files: FileOpt, dry_run: Annotated[bool, typer.Option("--dry-run")] = False) -> None:
    """Create or update resources from manifests; all documents apply, or none."""
    body = await _sources(files)
    async with client() as mezzo:
        data = await mezzo.request("POST", "/v1/resources:apply", json=body,
                                   params={"dryRun": str(dry_run).lower()})
    suffix = " (dry run)" if dry_run else ""
    for item in data["items"]:
        out.print(f"{_ref(ApplyResult.model_validate(item))} {item['action']}{suffix}")


@run_with(error_code=2)
async def diff(files: FileOpt) -> None:
    """Show what apply would change. Exit code 0: none, 1: differences, 2: error (like kubectl diff)."""
    body = await _sources(files, error_code=2)
    async with client() as mezzo:
        data = await mezzo.request("POST", "/v1/resources:diff", json=body)
    changed = False
    for item in data["items"]:
        if item["action"] != "unchanged":
            changed = True
            out.print(item.get("diff") or f"{_ref(ApplyResult.model_validate(item))} {item['action']}", markup=False)
    if changed:
        raise typer.Exit(1)
    out.print("no differences")


def _dig(data: Any, path: str) -> Any:
    for part in path.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def _age(res: Resource) -> str:
    from datetime import UTC, datetime

    seconds = int((datetime.now(UTC) - res.metadata.updatedAt).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


@run
async def get(
    kind: str,
    name: Annotated[str | None, typer.Argument()] = None,
    namespace: NamespaceOpt = "default",
    all_namespaces: Annotated[bool, typer.Option("--all-namespaces", "-A")] = False,
    selector: Annotated[str | None, typer.Option("--selector", "-l", help="e.g. app=shop,tier!=db")] = None,
    output: Annotated[Output, typer.Option("--output", "-o")] = Output.table,
) -> None:
    """Show resources of a kind, or one resource."""
    async with client() as mezzo:
        kinds = {k["kind"]: k for k in await mezzo.resources.kinds()}
        if name:
            items = [await mezzo.resources.get(kind, name, namespace)]
        else:
            items = await mezzo.resources.list(kind, None if all_namespaces else namespace, selector)
    if output is Output.json:
        docs = [r.model_dump(mode="json") for r in items]
        emit(docs[0] if name else {"items": docs}, output)
        return
    if output is Output.yaml:  # one YAML document per resource: the output applies as it is
        out.print("---\n".join(to_yaml(r.model_dump(mode="json")) for r in items), markup=False, end="")
        return
    if not items:
        out.print(f"No resources found{'' if all_namespaces else f' in namespace {namespace}'}.")
        return
    columns = kinds.get(items[0].kind, {}).get("columns", [])
    table = new_table(*(["NAMESPACE"] if all_namespaces else []), "NAME",
                      *(c["header"] for c in columns), "GENERATION", "AGE")
    for res in items:
        cells = [res.metadata.name, *(str(_dig(res.spec, c["path"]) or "") for c in columns),
                 str(res.metadata.generation), _age(res)]
        table.add_row(*([res.metadata.namespace] if all_namespaces else []), *cells)
    out.print(table)


@run
async def delete(kind: str, name: str, namespace: NamespaceOpt = "default") -> None:
    """Delete a resource. Its history stays, so `mezzo rollback` can bring it back."""
    async with client() as mezzo:
        result = await mezzo.resources.delete(kind, name, namespace)
    out.print(f"{_ref(result)} deleted")


@run
async def history(
    kind: str, name: str, namespace: NamespaceOpt = "default",
    output: Annotated[Output, typer.Option("--output", "-o")] = Output.table,
) -> None:
    """Every version of a resource: who changed it, when, and how."""
    async with client() as mezzo:
        entries = await mezzo.resources.history(kind, name, namespace)
    if output is not Output.table:
        emit([e.model_dump(mode="json") for e in entries], output)
        return
    table = new_table("VERSION", "ACTION", "BY", "AT", "STORE REVISION", "NOTE")
    for e in entries:
        note = f"to version {e.rolledBackTo}" if e.rolledBackTo else ""
        table.add_row(str(e.generation), e.action, e.by, e.at.strftime("%Y-%m-%d %H:%M:%S"), str(e.revision), note)
    out.print(table)


@run
async def rollback(
    kind: str, name: str, namespace: NamespaceOpt = "default",
    to: Annotated[int | None, typer.Option("--to", help="version from `mezzo history` (default: the previous one)")] = None,
) -> None:
    """Return a resource to an earlier version (recorded as a new version)."""
    async with client() as mezzo:
        result = await mezzo.resources.rollback(kind, name, namespace, to)
    out.print(f"{_ref(result)} {result.action} (version {result.generation})")

