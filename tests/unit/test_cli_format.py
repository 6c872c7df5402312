"""How the CLI lays out what the server returns: times as times, tables that keep names whole."""

from __future__ import annotations

from rich.console import Console

from mezzo.cli import cache as cache_cli
from mezzo.cli.common import new_table, out


def test_rebalance_times_print_as_utc_times_not_floats() -> None:
    with out.capture() as captured:
        cache_cli._print_rebalance({"state": "done", "startedAt": 1_800_000_000.25, "moved": 12})
    text = captured.get()
    assert "startedAt=2027-01-15T08:00:00Z" in text and "moved=12" in text and "e+09" not in text


def test_tables_keep_every_column_but_the_last_on_one_line() -> None:
    table = new_table("NAME", "STATE", "CREATED", "ERRORS", "LASTERROR")
    table.add_row("127.0.0.1:27001-node-a", "healthy-and-serving", "2026-11-27 10:00:00", "0",
                  "connection refused by the peer at 10:00")
    console = Console(width=80, record=True)
    console.print(table)
    row = console.export_text().splitlines()[1]
    # whole on the row's first line (all columns wrapping: "127.0.0.1:27001…", the date over two lines)
    assert "127.0.0.1:27001-node-a" in row and "healthy-and-serving" in row and "2026-11-27 10:00:00" in row


def test_each_command_takes_the_width_of_its_own_environment(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Rich freezes a COLUMNS it finds when the console is made (at import): a process running several
    commands kept the first width, so a table could be cut at 80 columns under COLUMNS=200."""
    from typer.testing import CliRunner

    from mezzo.cli.main import app

    monkeypatch.setattr(out, "_width", 80)  # as if imported under COLUMNS=80
    result = CliRunner().invoke(app, ["version"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and out.width == 200
    CliRunner().invoke(app, ["version"], env={"COLUMNS": "100"})
    assert out.width == 100
