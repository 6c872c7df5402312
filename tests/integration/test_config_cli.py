"""``mezzo config``: set, publish, get, history, diff, rollback, import/export, gray and watch
against a node in this process (the CLI runs in a thread, or as a process for Ctrl-C)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from mezzo.cli.main import app
from mezzo.testing.fixtures import RunningNode, wait_for

RUNNER = CliRunner()


@pytest.fixture
def mezzo(node: RunningNode):  # type: ignore[no-untyped-def]
    """``await mezzo(*args, input=None)``: run the CLI against the node, off the node's event loop."""
    env = {"MEZZO_URL": node.url, "MEZZO_TOKEN": node.token, "COLUMNS": "200"}

    async def invoke(*args: str, input: str | None = None) -> Result:
        return await asyncio.to_thread(RUNNER.invoke, app, ["config", *args], env=env, input=input)

    return invoke


async def test_set_publish_get_history_diff_rollback(mezzo) -> None:  # type: ignore[no-untyped-def]
    first = await mezzo("set", "shop", "application", "db.pool", "10")
    assert first.exit_code == 0, first.output
    assert first.stdout.startswith("set db.pool in the draft of shop/default/default/application (ETag ")
    assert (await mezzo("set", "shop", "application", "db.password", "s3cret", "--secret")).exit_code == 0
    assert (await mezzo("set", "shop", "application", "greeting", "-", input="[b]hello[/b]\n")).exit_code == 0
    published = await mezzo("publish", "shop", "application", "-m", "first cut", "--title", "initial")
    assert published.stdout.strip() == "published release 1 of shop/default/default/application (3 keys)"

    table = (await mezzo("get", "shop", "application")).stdout
    assert "KEY" in table and "db.pool" in table and "[b]hello[/b]" in table  # values are not rich markup
    assert (await mezzo("get", "shop", "application", "db.pool")).stdout == "10\n"
    as_json = json.loads((await mezzo("get", "shop", "application", "-o", "json")).stdout)
    assert as_json["configurations"] == {"db.pool": "10", "db.password": "s3cret", "greeting": "[b]hello[/b]"}
    assert as_json["releaseKey"] == "shop-1"
    assert json.loads((await mezzo("get", "shop", "application", "db.pool", "-o", "json")).stdout) == {
        "key": "db.pool", "value": "10"}

    await mezzo("set", "shop", "application", "db.pool", "20")
    await mezzo("unset", "shop", "application", "greeting")
    pending = await mezzo("diff", "shop", "application", "--draft", "-o", "json")
    assert json.loads(pending.stdout) == {"from": 1, "to": "draft", "added": [], "changed": ["db.pool"],
                                          "removed": ["greeting"], "values": {
                                              "db.pool": {"from": "10", "to": "20"},
                                              "greeting": {"from": "[b]hello[/b]", "to": None}}}
    assert "db.pool" in (await mezzo("get", "shop", "application", "--draft")).stdout
    await mezzo("publish", "shop", "application", "-m", "bigger pool")

    diff = await mezzo("diff", "shop", "application")
    assert diff.exit_code == 0 and "release 1 -> 2" in diff.stdout
    assert "changed" in diff.stdout and "removed" in diff.stdout and "20" in diff.stdout
    assert json.loads((await mezzo("diff", "shop", "application", "--from", "1", "--to", "2", "-o", "json")).stdout)[
        "changed"] == ["db.pool"]
    history = (await mezzo("history", "shop", "application")).stdout
    assert "initial" in history and "first cut" in history and "bigger pool" in history
    assert [r["id"] for r in json.loads((await mezzo("history", "shop", "application", "-o", "json")).stdout)] == [2, 1]

    await mezzo("set", "shop", "application", "late", "1")
    refused = await mezzo("rollback", "shop", "application")
    assert refused.exit_code == 1 and "Conflict (409)" in refused.stderr and "unpublished" in refused.stderr
    rolled = await mezzo("rollback", "shop", "application", "--to", "1", "--force")
    assert rolled.stdout.strip() == "rolled shop/default/default/application back to release 1: release 3"
    assert (await mezzo("get", "shop", "application", "db.pool")).stdout == "10\n"
    assert "rollback to 1" in (await mezzo("history", "shop", "application")).stdout

    missing_key = await mezzo("get", "shop", "application", "nope")
    assert missing_key.exit_code == 1 and "no key 'nope'" in missing_key.stderr
    missing = await mezzo("get", "shop", "nothing")
    assert missing.exit_code == 1 and "Not Found (404)" in missing.stderr and "does not exist" in missing.stderr
    too_few = await mezzo("diff", "shop", "other")
    assert too_few.exit_code == 1 and "Not Found" in too_few.stderr


async def test_env_and_cluster_are_separate(mezzo) -> None:  # type: ignore[no-untyped-def]
    await mezzo("set", "shop", "application", "mode", "prod", "--env", "prod", "--cluster", "east")
    await mezzo("publish", "shop", "application", "-e", "prod", "-c", "east")
    assert (await mezzo("get", "shop", "application", "mode", "--env", "prod", "--cluster", "east")).stdout == "prod\n"
    assert (await mezzo("get", "shop", "application", "mode", "--env", "prod")).exit_code == 1  # not in default
    listed = (await mezzo("namespaces", "shop")).stdout
    assert "prod" in listed and "east" in listed
    audit = await mezzo("audit", "shop")
    assert "config.publish" in audit.stdout and "shop/prod/east/application" in audit.stdout


async def test_import_export_and_namespaces(mezzo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    props = tmp_path / "app.properties"
    props.write_text("db.pool=10\n# a comment\ndb.url: pg://x\n")
    yml = tmp_path / "more.yaml"
    yml.write_text("cache:\n  ttl: 30\n")
    imported = await mezzo("import", "shop", "application", str(props))
    assert imported.exit_code == 0 and "imported" in imported.stdout
    assert (await mezzo("import", "shop", "application", str(yml), "--secret-key", "cache.ttl")).exit_code == 0
    await mezzo("publish", "shop", "application")
    assert (await mezzo("export", "shop", "application")).stdout == "cache.ttl=30\ndb.pool=10\ndb.url=pg://x\n"
    target = tmp_path / "out.properties"
    assert (await mezzo("export", "shop", "application", "-o", str(target))).exit_code == 0
    assert target.read_text() == "cache.ttl=30\ndb.pool=10\ndb.url=pg://x\n"

    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1\n")
    failed = await mezzo("import", "shop", "application", str(bad))
    assert failed.exit_code == 1 and "Bad Request (400)" in failed.stderr and "content: invalid yaml" in failed.stderr
    absent = await mezzo("import", "shop", "application", str(tmp_path / "nope.yaml"))
    assert absent.exit_code == 1 and "no such file" in absent.stderr

    created = await mezzo("create", "shop", "app.yaml", "--format", "yaml")
    assert created.stdout.strip() == "created yaml namespace shop/default/default/app.yaml"
    assert "Conflict (409)" in (await mezzo("create", "shop", "app.yaml", "--format", "yaml")).stderr
    await mezzo("set", "shop", "app.yaml", "content", "a: 1\n")
    await mezzo("publish", "shop", "app.yaml")
    assert (await mezzo("export", "shop", "app.yaml")).stdout == "a: 1\n"
    rows = json.loads((await mezzo("namespaces", "shop", "-o", "json")).stdout)
    assert {(n["namespace"], n["format"]) for n in rows} == {("application", "properties"), ("app.yaml", "yaml")}
    await mezzo("set", "shop", "application", "x", "1")
    assert (await mezzo("discard", "shop", "application")).exit_code == 0
    assert (await mezzo("diff", "shop", "application", "--draft")).stdout.strip() == "release 1 -> draft\nno differences"


async def test_gray_create_rule_publish_promote_abandon(mezzo) -> None:  # type: ignore[no-untyped-def]
    await mezzo("set", "shop", "application", "db.pool", "10")
    await mezzo("publish", "shop", "application")
    assert (await mezzo("gray", "create", "shop", "application")).exit_code == 0
    assert (await mezzo("gray", "set", "shop", "application", "db.pool", "20")).exit_code == 0
    rule = await mezzo("gray", "rule", "shop", "application", "--label", "canary=true", "--label", "zone=a")
    assert rule.exit_code == 0 and "canary=true, zone=a" in rule.stdout
    both = await mezzo("gray", "rule", "shop", "application", "--ip", "10.0.0.0/8", "--percentage", "50", "-o", "json")
    rules = json.loads(both.stdout)["rules"]
    assert rules == [{"labels": {"canary": "true", "zone": "a"}, "clientIds": [], "ips": []},
                     {"labels": {}, "clientIds": [], "ips": ["10.0.0.0/8"], "percentage": 50}]
    bad = await mezzo("gray", "rule", "shop", "application", "--ip", "nonsense")
    assert bad.exit_code == 1 and "not an IP address or CIDR block" in bad.stderr
    assert (await mezzo("gray", "rule", "shop", "application")).exit_code == 2  # no criteria and no --clear

    published = await mezzo("gray", "publish", "shop", "application")
    assert published.stdout.strip() == ("published gray release 1 of shop/default/default/application "
                                        "(1 keys, 2 rules)")
    canary = ["--label", "canary=true", "--label", "zone=a"]
    assert (await mezzo("get", "shop", "application", "db.pool", *canary)).stdout == "20\n"
    assert (await mezzo("get", "shop", "application", "db.pool")).stdout == "10\n"
    shown = (await mezzo("gray", "show", "shop", "application")).stdout
    assert "published: gray release 1" in shown and "10.0.0.0/8" in shown and "50%" in shown

    promoted = await mezzo("gray", "promote", "shop", "application")
    assert promoted.stdout.strip() == "promoted the gray release of shop/default/default/application: release 2"
    assert (await mezzo("get", "shop", "application", "db.pool")).stdout == "20\n"
    await mezzo("gray", "create", "shop", "application")
    assert "no rules" in (await mezzo("gray", "rule", "shop", "application", "--clear")).stdout
    assert (await mezzo("gray", "unset", "shop", "application", "db.pool")).exit_code == 1  # never set here
    assert (await mezzo("gray", "abandon", "shop", "application")).exit_code == 0
    assert "Not Found" in (await mezzo("gray", "show", "shop", "application")).stderr


async def test_watch_prints_each_change_until_ctrl_c(node: RunningNode, mezzo) -> None:  # type: ignore[no-untyped-def]
    await mezzo("set", "shop", "application", "db.pool", "10")
    await mezzo("publish", "shop", "application")
    env = {**os.environ, "MEZZO_URL": node.url, "MEZZO_TOKEN": node.token}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mezzo", "config", "watch", "shop", "application", "-o", "json", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert process.stderr is not None and process.stdout is not None
        started = await asyncio.wait_for(process.stderr.readline(), 60)
        assert started.decode().startswith("watching shop/default/default/application (release shop-1, 1 keys)")
        await mezzo("set", "shop", "application", "db.pool", "20")
        await mezzo("set", "shop", "application", "feature.x", "on")
        await mezzo("publish", "shop", "application")
        line = json.loads(await asyncio.wait_for(process.stdout.readline(), 60))
        assert line["releaseKey"] == "shop-2" and line["added"] == {"feature.x": "on"}
        assert line["changed"] == {"db.pool": {"from": "10", "to": "20"}} and line["removed"] == {}
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert await wait_for(lambda: process.returncode is not None)
