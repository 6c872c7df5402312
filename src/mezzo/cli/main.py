"""The ``mezzo`` command."""

from __future__ import annotations

import typer

from mezzo import __version__
from mezzo.cli import cache as cache_cli
from mezzo.cli import config, mq, registry, resources, server, tokens
from mezzo.cli import trace as trace_cli
from mezzo.cli import tx as tx_cli
from mezzo.cli.common import follow_terminal_width

app = typer.Typer(
    name="mezzo",
    help="Mezzo: cloud-native middleware in one runtime.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _every_command() -> None:
    follow_terminal_width()


app.command("up")(server.up)
app.command("run")(server.run_targets)
app.command("settings")(server.settings)
app.command("apply")(resources.apply)
app.command("diff")(resources.diff)
app.command("get")(resources.get)
app.command("delete")(resources.delete)
app.command("history")(resources.history)
app.command("rollback")(resources.rollback)
app.add_typer(tokens.app, name="token")
app.add_typer(mq.app, name="mq")
app.add_typer(registry.app, name="registry")
app.add_typer(trace_cli.app, name="trace")
app.add_typer(tx_cli.app, name="tx")
app.add_typer(config.app, name="config")
app.add_typer(cache_cli.app, name="cache")


@app.command("version")
def version() -> None:
    """Print Mezzo's version."""
    typer.echo(__version__)


def main() -> None:
    app()
