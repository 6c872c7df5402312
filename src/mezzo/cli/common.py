"""What every CLI command shares: the client, output formats, and turning errors into exit codes."""

from __future__ import annotations

import asyncio
import functools
import os
import sys
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from mezzo.jsonutil import dumps
from mezzo.resources.manifests import describe, to_yaml
from mezzo.sdk.client import Mezzo
from mezzo.sdk.errors import APIError, ConnectError

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def follow_terminal_width() -> None:
    """Take ``COLUMNS`` as it is when a command runs. Rich freezes a width it finds in ``COLUMNS`` when
    the console is made (at import), so a process that runs several commands (tests, a shell embedding
    the CLI) would keep the first width; without ``COLUMNS`` rich asks the terminal each time."""
    columns = os.environ.get("COLUMNS", "")
    for console in (out, err):
        if columns.isdigit():
            console._width = int(columns)  # rich keeps it there
        elif console.is_terminal:
            console._width = None  # ask the terminal
        else:  # a pipe or a file: whole rows, not rich's 80 columns with cells cut to "..."
            console._width = PIPE_WIDTH


PIPE_WIDTH = 1000
P = ParamSpec("P")
T = TypeVar("T")


class Output(StrEnum):
    table = "table"
    yaml = "yaml"
    json = "json"


def run(fn: Callable[P, Awaitable[T]]) -> Callable[P, T]:
    """Run an async command body; print a server problem or connection error and exit 1."""
    return run_with(error_code=1)(fn)


def run_with(error_code: int) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, T]]:
    return lambda fn: _runner(fn, error_code)


def _runner(fn: Callable[P, Awaitable[T]], error_code: int) -> Callable[P, T]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return asyncio.run(fn(*args, **kwargs))  # type: ignore[arg-type]
        except APIError as exc:
            err.print(f"[red]Error:[/red] {exc.title} ({exc.status})", markup=True)
            if exc.errors and all("reason" in e for e in exc.errors):
                for item in exc.errors:
                    err.print(f"  {describe(item) if 'document' in item else _field(item)}", markup=False)
            elif exc.detail:
                err.print(f"  {exc.detail}", markup=False)
            raise typer.Exit(error_code) from None
        except ConnectError as exc:
            err.print(f"[red]Error:[/red] {exc}", markup=True)
            err.print("  Is the server running (`mezzo up`)? Set MEZZO_URL to reach another one.")
            raise typer.Exit(error_code) from None

    return wrapper


def _field(item: dict[str, Any]) -> str:
    return f"{item.get('field') or ''}: {item['reason']}".lstrip(": ")


def new_table(*headers: str) -> Table:
    """A borderless table with bold headers, the one look of every listing. Only the last column
    (free text: a reason, a URL, a result) wraps; names, states, numbers and times stay on one line."""
    out_table = Table(box=None, header_style="bold")
    for index, header in enumerate(headers):
        out_table.add_column(header, no_wrap=index < len(headers) - 1)
    return out_table


def client() -> Mezzo:
    return Mezzo()


def emit(data: Any, output: Output) -> None:
    if output is Output.json:
        sys.stdout.write(dumps(data).decode() + "\n")
    else:
        sys.stdout.write(to_yaml(data))
