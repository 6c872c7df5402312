"""A new user's path: `mezzo up` as a process, the CLI against it, SIGTERM, restart."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from mezzo.testing.fixtures import RunningNode, spawn_node, stop_process

EXAMPLE = Path(__file__).parents[2] / "examples" / "resiliency.yaml"


def mezzo(node: RunningNode, *args: str, token: str | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MEZZO_URL": node.url, "MEZZO_TOKEN": token or node.token, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "mezzo", *args], env=env, capture_output=True, text=True, timeout=60,
                          input=stdin)


def test_cli_apply_get_diff_history_rollback(node_process: RunningNode, tmp_path: Path) -> None:
    manifest = tmp_path / "shop.yaml"
    shutil.copy(EXAMPLE, manifest)

    first = mezzo(node_process, "apply", "-f", str(manifest))
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "Resiliency/shop created"
    again = mezzo(node_process, "apply", "-f", str(manifest))
    assert again.stdout.strip() == "Resiliency/shop unchanged"

    table = mezzo(node_process, "get", "resiliencies")
    assert "shop" in table.stdout and "GENERATION" in table.stdout
    as_yaml = mezzo(node_process, "get", "resiliency", "shop", "-o", "yaml")
    assert "general: 5s" in as_yaml.stdout and "generation: 1" in as_yaml.stdout

    manifest.write_text(manifest.read_text().replace("general: 5s", "general: 8s"))
    diff = mezzo(node_process, "diff", "-f", str(manifest))
    assert diff.returncode == 1 and "+      general: 8s" in diff.stdout
    assert mezzo(node_process, "apply", "-f", str(tmp_path)).stdout.strip() == "Resiliency/shop configured"
    assert mezzo(node_process, "diff", "-f", str(manifest)).returncode == 0

    history = mezzo(node_process, "history", "Resiliency", "shop")
    assert "created" in history.stdout and "configured" in history.stdout
    rolled = mezzo(node_process, "rollback", "Resiliency", "shop", "--to", "1")
    assert rolled.stdout.strip() == "Resiliency/shop rolled-back (version 3)"
    assert "general: 5s" in mezzo(node_process, "get", "resiliency", "shop", "-o", "yaml").stdout

    # `-f -` reads standard input, so `get -o yaml | apply -f -` round-trips
    exported = mezzo(node_process, "get", "resiliency", "shop", "-o", "yaml").stdout
    piped = mezzo(node_process, "apply", "-f", "-", stdin=exported)
    assert piped.returncode == 0 and piped.stdout.strip() == "Resiliency/shop unchanged", piped.stderr
    piped = mezzo(node_process, "diff", "-f", "-", stdin=exported.replace("general: 5s", "general: 9s"))
    assert piped.returncode == 1 and "+      general: 9s" in piped.stdout
    bad = mezzo(node_process, "apply", "-f", "-", stdin="kind: Resiliency\nmetadata: {name: x}\n")
    assert bad.returncode == 1 and "stdin document 1" in bad.stderr, bad.stderr

    deleted = mezzo(node_process, "delete", "resiliency", "shop")
    assert deleted.stdout.strip() == "Resiliency/shop deleted"
    missing = mezzo(node_process, "get", "resiliency", "shop")
    assert missing.returncode == 1 and "Not Found" in missing.stderr


def test_cli_reports_manifest_errors_with_line(node_process: RunningNode, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE.read_text().replace("maxRetries: 3", "maxRetries: lots"))
    result = mezzo(node_process, "apply", "-f", str(bad))
    assert result.returncode == 1
    assert f"{bad} document 1 (Resiliency shop): spec.policies.retries.std.maxRetries" in result.stderr
    assert "(line 17)" in result.stderr


def test_cli_tokens_and_viewer_cannot_apply(node_process: RunningNode) -> None:
    created = mezzo(node_process, "token", "create", "reader", "--role", "viewer")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1]
    assert token.startswith("mzo_")
    listed = mezzo(node_process, "token", "list")
    assert "reader" in listed.stdout and "viewer" in listed.stdout
    denied = mezzo(node_process, "apply", "-f", str(EXAMPLE), token=token)
    assert denied.returncode == 1 and "Forbidden (403)" in denied.stderr
    assert mezzo(node_process, "token", "revoke", "reader").returncode == 0
    assert "Unauthorized" in mezzo(node_process, "get", "resiliency", token=token).stderr


def test_sigterm_exits_zero_and_restart_keeps_everything(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    running = spawn_node(data)
    log = next(tmp_path.glob("node-*.log"))
    assert "Admin token" in log.read_text()
    token_file = data / "admin.token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert mezzo(running, "apply", "-f", str(EXAMPLE)).returncode == 0
    assert stop_process(running, signal.SIGTERM, timeout=5) == 0

    restarted = spawn_node(data)
    try:
        assert restarted.token == running.token
        logs = sorted(tmp_path.glob("node-*.log"), key=lambda p: p.stat().st_mtime)
        assert "Admin token" not in logs[-1].read_text()  # printed on the first start only
        assert "Resiliency/shop unchanged" in mezzo(restarted, "apply", "-f", str(EXAMPLE)).stdout
        assert httpx.get(restarted.url + "/readyz").status_code == 200
    finally:
        assert stop_process(restarted, signal.SIGINT, timeout=5) == 0


def test_invalid_setting_exits_2_naming_the_field(tmp_path: Path) -> None:
    env = {**os.environ, "MEZZO_API_PORT": "99999", "MEZZO_DATA_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "mezzo", "up"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "api_port (MEZZO_API_PORT)" in result.stderr and "between 0 and 65535" in result.stderr
    env = {**os.environ, "MEZZO_TARGETS": "api,nonsense", "MEZZO_DATA_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "mezzo", "run"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "unknown target 'nonsense'" in result.stderr


def test_settings_command_masks_secrets(tmp_path: Path) -> None:
    env = {**os.environ, "MEZZO_ADMIN_TOKEN": "supersecret", "MEZZO_DATA_DIR": str(tmp_path),
           "MEZZO_STORE": "postgresql://mezzo:hunter2@db:5432/mezzo", "COLUMNS": "200"}
    result = subprocess.run([sys.executable, "-m", "mezzo", "settings", "-o", "json"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "supersecret" not in result.stdout and "hunter2" not in result.stdout
    assert '"admin_token":"********"' in result.stdout and "mezzo:****@db:5432" in result.stdout


def test_run_with_a_subset_of_targets(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    running = spawn_node(data, args=("run", "--targets", "api"))
    try:
        modules = httpx.get(running.url + "/readyz").json()["modules"]
        assert set(modules) == {"telemetry", "store", "auth", "resources", "api"}  # api and what it needs
    finally:
        assert stop_process(running) == 0


def test_get_yaml_output_applies_unchanged(node_process: RunningNode, tmp_path: Path) -> None:
    second = tmp_path / "two.yaml"
    second.write_text(EXAMPLE.read_text().replace("name: shop", "name: shop-two"))
    assert mezzo(node_process, "apply", "-f", str(EXAMPLE), "-f", str(second)).returncode == 0
    exported = tmp_path / "exported.yaml"
    exported.write_text(mezzo(node_process, "get", "resiliencies", "-o", "yaml").stdout)
    again = mezzo(node_process, "apply", "-f", str(exported))
    assert again.returncode == 0, again.stderr
    assert again.stdout.split("\n")[:2] == ["Resiliency/shop unchanged", "Resiliency/shop-two unchanged"]


def test_diff_exit_codes(node_process: RunningNode, tmp_path: Path) -> None:
    assert mezzo(node_process, "diff", "-f", str(EXAMPLE)).returncode == 1  # would create
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: [\n")
    assert mezzo(node_process, "diff", "-f", str(bad)).returncode == 2  # an error, not a difference


def test_open_watch_ends_cleanly_on_sigterm(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    running = spawn_node(data)
    lines: list[str] = []
    with httpx.stream("GET", running.url + "/v1/resources/resiliency:watch",
                      headers={"Authorization": f"Bearer {running.token}"}, timeout=30) as response:
        assert response.status_code == 200
        stream = response.iter_lines()
        lines.append(next(stream))
        running.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        lines.extend(stream)  # the server ends the stream itself: no transport error here
    assert lines[0] == ": watching"
    assert running.process.wait(15) == 0  # type: ignore[union-attr]
    log = next(tmp_path.glob("node-*.log")).read_text()
    assert "Exception in ASGI application" not in log and "Traceback" not in log


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    env = {**os.environ, "MEZZO_CONFIG": str(tmp_path / "nope.yaml"), "MEZZO_DATA_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "mezzo", "up"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "nope.yaml" in result.stderr


def test_cli_mq_publish_consume_topics_groups(node_process: RunningNode) -> None:
    first = mezzo(node_process, "mq", "publish", "orders", '{"n": 1}', "--key", "o-1", "--tag", "paid")
    assert first.returncode == 0, first.stderr
    assert "partition 0 offset 0" in first.stdout
    assert "duplicate" in mezzo(node_process, "mq", "publish", "orders", "x", "--id",
                                first.stdout.split()[0]).stdout
    assert "scheduled for" in mezzo(node_process, "mq", "publish", "orders", "later", "--delay", "1h").stdout
    consumed = mezzo(node_process, "mq", "consume", "orders", "--group", "cli", "--wait", "0.5")
    lines = [json.loads(line) for line in consumed.stdout.splitlines()]
    assert [(m["data"], m["key"], m["tags"]) for m in lines] == [({"n": 1}, "o-1", ["paid"])]
    assert "orders" in mezzo(node_process, "mq", "topics").stdout
    groups = mezzo(node_process, "mq", "groups", "orders").stdout
    assert "cli" in groups and "LAG" in groups
    assert "partition 0: 0" in mezzo(node_process, "mq", "seek", "orders", "--group", "cli", "--to", "earliest").stdout
    assert mezzo(node_process, "mq", "consume", "orders", "-g", "cli", "--wait", "0.5").stdout.count("\n") == 1


def test_tables_are_not_cut_when_piped(tmp_path: Path) -> None:
    """Without a terminal or COLUMNS, rich would cut rows at 80 columns ("gateway_tls_po…")."""
    deep = tmp_path / ("a-rather-long-directory-name-" * 4) / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEZZO_") and k != "COLUMNS"}
    env["MEZZO_DATA_DIR"] = str(deep)
    result = subprocess.run([sys.executable, "-m", "mezzo", "settings"], env=env, capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert str(deep) in result.stdout and "gateway_tls_port" in result.stdout and "…" not in result.stdout


def test_the_banner_names_mezzo_admin_token_when_it_is_set(tmp_path: Path) -> None:
    """With MEZZO_ADMIN_TOKEN set, an admin.token file from an earlier run may hold a revoked token:
    the banner must not send the user there."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "admin.token").write_text("mzo_old_revoked\n")
    running = spawn_node(data, {"MEZZO_ADMIN_TOKEN": "mzo_test_admin_token_0123456789abcdef"}, args=("run", "-t", "api"))
    try:
        port = running.url.rsplit(":", 1)[1]
        banner = (tmp_path / f"node-{port}.log").read_text()
        assert "token        MEZZO_ADMIN_TOKEN (the CLI reads it from there too)" in banner
        assert "(the CLI reads it from there)" not in banner
    finally:
        stop_process(running)
