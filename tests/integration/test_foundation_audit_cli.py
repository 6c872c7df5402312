"""Audit of issue 2 (foundation) from a new user's terminal: `mezzo up` with no settings at all,
settings from flags, environment and ./mezzo.yaml, bad settings files, `mezzo get -o json`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from mezzo.node.graph import MODULES
from mezzo.testing.fixtures import READY_TIMEOUT, RunningNode, free_port, output_tail

EXAMPLE = Path(__file__).parents[2] / "examples" / "resiliency.yaml"
PORTS = ("MEZZO_GATEWAY_PORT", "MEZZO_GATEWAY_TLS_PORT", "MEZZO_RESP_PORT", "MEZZO_OTLP_PORT", "MEZZO_ZIPKIN_PORT",
         "MEZZO_DAPR_GRPC_PORT", "MEZZO_OTLP_GRPC_PORT")


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without Mezzo's variables (the test sets what it means to)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEZZO_")}
    return {**env, "COLUMNS": "200", **extra}


def run(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mezzo", *args], cwd=cwd, env=clean_env(**env),
                          capture_output=True, text=True, timeout=60)


def test_up_with_no_settings_keeps_state_in_dot_mezzo_prints_urls_and_runs_every_module(tmp_path: Path) -> None:
    port = free_port()
    env = clean_env(MEZZO_API_PORT=str(port), MEZZO_TARGETS="api", **dict.fromkeys(PORTS, "0"))  # up ignores targets
    log_path = tmp_path / "up.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "mezzo", "up"], cwd=tmp_path, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + READY_TIMEOUT
        while process.poll() is None and time.monotonic() < deadline:
            try:
                ready = httpx.get(url + "/readyz", timeout=1)
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        assert process.poll() is None, output_tail(log_path)
        assert set(ready.json()["modules"]) == set(MODULES)  # target all
        assert httpx.get(url + "/healthz").json() == {"status": "ok"}
        data = tmp_path / ".mezzo"
        assert (data / "mezzo.db").is_file() and (data / "admin.token").stat().st_mode & 0o777 == 0o600
        token = (data / "admin.token").read_text().strip()
        shown = log_path.read_text()
        assert f"api          {url}" in shown and f"docs         {url}/docs" in shown
        assert "Admin token" in shown and token in shown
        assert httpx.get(url + "/v1/whoami", headers={"Authorization": f"Bearer {token}"}).json()["role"] == "admin"
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0


def test_flags_beat_the_environment_which_beats_mezzo_yaml(tmp_path: Path) -> None:
    (tmp_path / "mezzo.yaml").write_text("api_port: 7801\ngateway_port: 9001\ndata_dir: from-yaml\nlog_level: debug\n")
    result = run(tmp_path, "settings", "-o", "json", "--data-dir", "from-flag",
                 MEZZO_GATEWAY_PORT="9002", MEZZO_DATA_DIR="from-env")
    assert result.returncode == 0, result.stderr
    values = json.loads(result.stdout)
    assert (values["api_port"], values["gateway_port"], values["data_dir"], values["log_level"]) == (
        7801, 9002, "from-flag", "debug")
    assert values["resp_port"] == 6380  # a default


def test_an_unknown_key_of_mezzo_yaml_is_named_as_such(tmp_path: Path) -> None:
    (tmp_path / "mezzo.yaml").write_text("api_port: 7801\ncolour: blue\n")
    result = run(tmp_path, "settings")
    assert result.returncode == 2
    assert "colour: not a Mezzo setting (in mezzo.yaml)" in result.stderr
    assert "MEZZO_COLOUR" not in result.stderr  # no such variable: it said "colour (MEZZO_COLOUR)"


def test_a_mezzo_yaml_that_does_not_parse_exits_2_naming_the_file_and_line(tmp_path: Path) -> None:
    """A YAML syntax error in mezzo.yaml escaped as a traceback with exit status 1."""
    for text, reason, commands in [
        ("api_port: 7801\n\tlog_level: debug\n", "invalid YAML", [("settings",), ("up",), ("run", "-t", "api")]),
        ("api_port: [7801\n", "invalid YAML", [("settings",)]),
        ("- api_port\n- 7801\n", "expected a mapping", [("settings",)]),
    ]:
        (tmp_path / "mezzo.yaml").write_text(text)
        for command in commands:
            result = run(tmp_path, *command)
            assert result.returncode == 2, (text, command, result.stderr[-500:])
            assert "Traceback" not in result.stderr
            assert "Invalid settings" in result.stderr and "mezzo.yaml" in result.stderr and reason in result.stderr
        if "invalid YAML" in reason:
            assert "(line 2" in result.stderr


def test_run_with_no_targets_exits_2_naming_the_setting(tmp_path: Path) -> None:
    """`mezzo run --targets ""` started a node with no module at all and said it was up."""
    for args, env in [(("run", "--targets", ""), {}), (("run",), {"MEZZO_TARGETS": " , "})]:
        result = subprocess.run([sys.executable, "-m", "mezzo", *args], cwd=tmp_path,
                                env=clean_env(MEZZO_DATA_DIR=str(tmp_path / "d"), **env),
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 2, (args, env, result.stdout[-300:])
        assert "targets (MEZZO_TARGETS)" in result.stderr


def test_a_port_in_use_stops_the_start_in_one_line_with_status_1(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "mezzo", "run", "--targets", "api"], cwd=tmp_path,
                                env=clean_env(MEZZO_DATA_DIR=str(tmp_path / "d"), MEZZO_API_PORT=str(port)),
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout[-300:]
    assert f"Error: could not start: OSError: [Errno 98] cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_console_script_and_module_entry_point(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("mezzo")
    for command in ([str(script), "version"], [sys.executable, "-m", "mezzo", "version"]):
        result = subprocess.run(command, cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=30)
        assert (result.returncode, result.stdout.strip()) == (0, "0.1.0"), command


async def cli(node: RunningNode, *args: str) -> tuple[int, str, str]:
    """The CLI against an in-process node (asynchronously: the node serves from this loop)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mezzo", *args, env=clean_env(MEZZO_URL=node.url, MEZZO_TOKEN=node.token),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode or 0, out.decode(), err.decode()


async def test_get_prints_json_that_matches_the_api(node: RunningNode) -> None:
    code, _, err = await cli(node, "apply", "-f", str(EXAMPLE))
    assert code == 0, err
    async with node.client() as client:
        stored = (await client.resources.get("Resiliency", "shop")).model_dump(mode="json")
    code, out, err = await cli(node, "get", "resiliency", "shop", "-o", "json")
    assert code == 0, err
    assert json.loads(out) == stored
    code, out, err = await cli(node, "get", "resiliencies", "-o", "json")
    assert code == 0, err
    assert json.loads(out) == {"items": [stored]}
    code, out, err = await cli(node, "history", "resiliency", "shop", "-o", "json")
    assert code == 0, err
    assert [(h["generation"], h["action"], h["by"]) for h in json.loads(out)] == [(1, "created", "admin")]
