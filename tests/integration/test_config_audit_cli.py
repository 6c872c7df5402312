"""Audit of ``mezzo config`` against the issue: ``set --secret`` stores a secret, ``set`` creates a
private properties namespace, ``get`` shows published values only, and ``import``/``export`` work
with .properties, .yaml and .json files both ways."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from integration.test_config_cli import mezzo  # noqa: F401  (the mezzo fixture)


async def test_set_secret_in_a_new_namespace_and_get_published_values(mezzo) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    created = await mezzo("set", "shop", "application", "db.password", "s3cret", "--secret")
    assert created.exit_code == 0, created.output
    listed = json.loads((await mezzo("namespaces", "shop", "-o", "json")).stdout)
    assert [(n["namespace"], n["format"], n["public"], n["release"]) for n in listed] == [
        ("application", "properties", False, None)]
    draft = json.loads((await mezzo("get", "shop", "application", "--draft", "-o", "json")).stdout)
    assert draft["configurations"] == {"db.password": "******"}  # --secret: encrypted, masked to readers
    assert (await mezzo("publish", "shop", "application", "-m", "first")).exit_code == 0
    await mezzo("set", "shop", "application", "db.password", "changed")  # without --secret: stays secret
    await mezzo("set", "shop", "application", "extra", "1")
    draft = json.loads((await mezzo("get", "shop", "application", "--draft", "-o", "json")).stdout)
    assert draft["configurations"] == {"db.password": "******", "extra": "1"}
    published = json.loads((await mezzo("get", "shop", "application", "-o", "json")).stdout)
    assert published["configurations"] == {"db.password": "s3cret"}  # drafts are not what clients get
    assert (await mezzo("get", "shop", "application", "extra")).exit_code == 1


async def test_import_json_and_export_properties_yaml_and_json_files(mezzo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    source = tmp_path / "app.json"
    source.write_text(json.dumps({"db": {"pool": 10, "url": "pg://x"}, "debug": True, "hosts": ["a", "b"],
                                  "version": "1.10", "empty": None}))
    imported = await mezzo("import", "shop", "application", str(source))
    assert imported.exit_code == 0, imported.output
    await mezzo("publish", "shop", "application")
    expected = {"db.pool": "10", "db.url": "pg://x", "debug": "true", "hosts[0]": "a", "hosts[1]": "b",
                "version": "1.10", "empty": ""}
    assert json.loads((await mezzo("get", "shop", "application", "-o", "json")).stdout)["configurations"] == expected

    as_json, as_yaml, as_props = tmp_path / "out.json", tmp_path / "out.yaml", tmp_path / "out.properties"
    for target in (as_json, as_yaml, as_props):
        result = await mezzo("export", "shop", "application", "-o", str(target))
        assert result.exit_code == 0, result.output
    assert json.loads(as_json.read_text()) == expected  # the format follows the file's extension
    assert yaml.safe_load(as_yaml.read_text()) == expected  # every value stays a string
    assert as_props.read_text() == ("db.pool=10\ndb.url=pg://x\ndebug=true\nempty=\nhosts[0]=a\nhosts[1]=b\n"
                                    "version=1.10\n")
    stdout = await mezzo("export", "shop", "application", "--format", "yaml")
    assert yaml.safe_load(stdout.stdout) == expected

    for target, namespace in ((as_yaml, "from-yaml"), (as_json, "from-json"), (as_props, "from-props")):
        assert (await mezzo("import", "shop", namespace, str(target))).exit_code == 0
        await mezzo("publish", "shop", namespace)
        got = json.loads((await mezzo("get", "shop", namespace, "-o", "json")).stdout)["configurations"]
        assert got == expected, namespace  # an exported file imports back to the same keys and values

    await mezzo("create", "shop", "app.yaml", "--format", "yaml")
    await mezzo("set", "shop", "app.yaml", "content", "a: 1\n")
    await mezzo("publish", "shop", "app.yaml")
    assert (await mezzo("export", "shop", "app.yaml", "-o", str(tmp_path / "doc.yml"))).exit_code == 0
    assert (tmp_path / "doc.yml").read_text() == "a: 1\n"
    mismatch = await mezzo("export", "shop", "app.yaml", "-o", str(tmp_path / "doc.json"))
    assert mismatch.exit_code == 1 and "Bad Request (400)" in mismatch.stderr and "format" in mismatch.stderr
    assert not (tmp_path / "doc.json").exists()
