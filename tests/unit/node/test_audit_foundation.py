"""Audit of issue 2 (foundation), the parts a unit test can prove: the package, settings, how clients
find the server and the token, the event loop and HTTP parser the node runs on, and logs in a terminal."""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.resources
import io
from pathlib import Path

import pytest
from pydantic import ValidationError

from mezzo.node.settings import Settings, mask_url
from mezzo.sdk.config import default_token, default_url

# package ----------------------------------------------------------------------------------------


def test_package_metadata_has_the_extras_the_console_script_and_python_311() -> None:
    meta = importlib.metadata.metadata("mezzo")
    assert {"postgres", "redis", "nats", "all", "dev"} <= set(meta.get_all("Provides-Extra") or [])
    assert meta["Requires-Python"] == ">=3.11"
    [script] = [e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == "mezzo"]
    assert script.value == "mezzo.cli.main:main"
    assert importlib.resources.files("mezzo").joinpath("py.typed").is_file()  # the SDK is typed
    assert importlib.resources.files("mezzo").joinpath("__main__.py").is_file()  # python -m mezzo


def test_the_sdk_is_importable_from_the_package_root() -> None:
    from mezzo import Mezzo, MezzoSync
    from mezzo.sdk.client import Mezzo as AsyncClient
    from mezzo.sdk.client import MezzoSync as SyncClient

    assert (Mezzo, MezzoSync) == (AsyncClient, SyncClient)


# settings ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("targets", ["", " , ", []])
def test_no_targets_at_all_is_an_invalid_setting(targets: object) -> None:
    """A node told to run nothing started, printed "Mezzo is up: modules " and served nothing."""
    with pytest.raises(ValidationError) as info:
        Settings(targets=targets)
    assert info.value.errors()[0]["loc"] == ("targets",)


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://u:secret@h:5432/db", "postgresql://u:****@h:5432/db"),
    ("postgresql://u@h/db?password=secret&sslmode=require", "postgresql://u@h/db?password=****&sslmode=require"),
    ("postgresql://u:secret@[::1]:5432/db?schema=shop", "postgresql://u:****@[::1]:5432/db?schema=shop"),
    ("redis://:secret@h:6379/0", "redis://:****@h:6379/0"),
    ("nats://h:4222", "nats://h:4222"),
])
def test_mask_url_hides_every_password(url: str, shown: str) -> None:
    """asyncpg (like libpq) takes the password from the query string too: `mezzo settings` and the
    start banner printed it. An IPv6 host lost its brackets."""
    assert mask_url(url) == shown
    assert "secret" not in mask_url(url)


def test_masked_settings_hide_secret_keys_and_the_admin_token(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, admin_token="tok-secret", secret_keys="a2V5LXNlY3JldA==",
                        cache="redis://:pw-secret@h:6379", trace_store="postgresql://u:pg-secret@h/db")
    shown = str(settings.masked())
    for secret in ("tok-secret", "a2V5LXNlY3JldA==", "pw-secret", "pg-secret"):
        assert secret not in shown


# where clients find the server and the token ----------------------------------------------------

CLIENT_VARIABLES = ("MEZZO_URL", "MEZZO_HOST", "MEZZO_API_PORT", "MEZZO_TOKEN", "MEZZO_ADMIN_TOKEN", "MEZZO_DATA_DIR")


@pytest.fixture
def client_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in CLIENT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # the default data dir ./.mezzo is this test's own
    return monkeypatch


def test_the_url_comes_from_mezzo_url_else_host_and_port(client_env: pytest.MonkeyPatch) -> None:
    assert default_url() == "http://127.0.0.1:7700"
    client_env.setenv("MEZZO_HOST", "10.1.2.3")
    client_env.setenv("MEZZO_API_PORT", "7811")
    assert default_url() == "http://10.1.2.3:7811"
    client_env.setenv("MEZZO_HOST", "0.0.0.0")  # a listen-everywhere address is reached on loopback
    assert default_url() == "http://127.0.0.1:7811"
    client_env.setenv("MEZZO_HOST", "::1")
    assert default_url() == "http://[::1]:7811"
    client_env.setenv("MEZZO_URL", "https://mezzo.example:9000/")
    assert default_url() == "https://mezzo.example:9000"


def test_the_token_comes_from_mezzo_token_then_admin_token_then_the_data_dir(client_env: pytest.MonkeyPatch,
                                                                            tmp_path: Path) -> None:
    assert default_token() is None
    (tmp_path / ".mezzo").mkdir()
    (tmp_path / ".mezzo" / "admin.token").write_text("from-default-dir\n")
    assert default_token() == "from-default-dir"
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "admin.token").write_text("from-data-dir\n")
    client_env.setenv("MEZZO_DATA_DIR", str(other))
    assert default_token() == "from-data-dir"
    client_env.setenv("MEZZO_ADMIN_TOKEN", "from-admin-variable")
    assert default_token() == "from-admin-variable"
    client_env.setenv("MEZZO_TOKEN", "from-token-variable")
    assert default_token() == "from-token-variable"


async def test_sdk_and_cli_clients_use_those_defaults(client_env: pytest.MonkeyPatch) -> None:
    from mezzo import Mezzo
    from mezzo.cli.common import client

    client_env.setenv("MEZZO_API_PORT", "7812")
    client_env.setenv("MEZZO_ADMIN_TOKEN", "the-admin")
    for made in (Mezzo(), client()):
        async with made:
            assert (made.url, made.token) == ("http://127.0.0.1:7812", "the-admin")
            assert made._http.headers["authorization"] == "Bearer the-admin"
    async with Mezzo("http://other:1/", "explicit") as given:
        assert (given.url, given.token) == ("http://other:1", "explicit")


# the server's event loop ------------------------------------------------------------------------


def test_the_node_runs_on_uvloop() -> None:
    from mezzo.cli.server import _run_loop

    loops: list[type] = []

    async def probe() -> None:
        loops.append(type(asyncio.get_running_loop()))

    _run_loop(probe())
    assert loops[0].__module__.startswith("uvloop")


# logs -------------------------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True



def test_logs_are_readable_lines_in_a_terminal_and_json_elsewhere(restored_logging: None) -> None:
    from mezzo.telemetry.logging import configure_logging, get_logger

    terminal, pipe = Terminal(), io.StringIO()
    configure_logging("info", "auto", stream=terminal)
    get_logger("mezzo.audit").info("for people", token_id="t1")
    configure_logging("info", "auto", stream=pipe)
    get_logger("mezzo.audit").info("for machines", token_id="t2")
    text = terminal.getvalue()
    assert "for people" in text and "token_id" in text and not text.lstrip().startswith("{")
    assert pipe.getvalue().startswith("{") and '"message": "for machines"' in pipe.getvalue()

