"""Small pieces of the foundation: module graph, settings, manifests, field types, selectors."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from mezzo.node.graph import MODULES, TargetError, resolve
from mezzo.node.settings import Settings, mask_url
from mezzo.resources.manifests import ManifestError, parse_yaml
from mezzo.resources.service import matches, parse_selector
from mezzo.resources.types import format_duration, parse_byte_size, parse_duration


def test_resolve_adds_dependencies_in_start_order() -> None:
    order = resolve(["api"])
    assert order == ["telemetry", "store", "auth", "resources", "api"]
    for name in order:
        for need in MODULES[name].needs:
            assert order.index(need) < order.index(name)
    assert resolve(["all"]) == resolve(list(MODULES))
    with pytest.raises(TargetError, match="unknown target 'nope'"):
        resolve(["nope"])


def test_settings_precedence_env_yaml_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "mezzo.yaml"
    config.write_text("api_port: 7800\ngateway_port: 9000\nlog_level: debug\n")
    monkeypatch.setenv("MEZZO_CONFIG", str(config))
    monkeypatch.setenv("MEZZO_GATEWAY_PORT", "9100")
    settings = Settings(log_level="warning")
    assert (settings.api_port, settings.gateway_port, settings.log_level) == (7800, 9100, "warning")
    monkeypatch.setenv("MEZZO_TARGETS", "api, resilience")
    assert Settings().targets == ["api", "resilience"]


def test_settings_defaults_and_validation(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    assert (settings.api_port, settings.gateway_port, settings.resp_port, settings.otlp_port, settings.zipkin_port) == (
        7700, 8080, 6380, 4318, 9411)
    assert (settings.otlp_grpc_port, settings.dapr_grpc_port) == (4317, 50001)  # OTLP/gRPC's and Dapr's own
    assert settings.host == "127.0.0.1" and settings.data_dir == Path(".mezzo")
    assert settings.store_url == f"sqlite:///{(tmp_path / '.mezzo' / 'mezzo.db')}"
    for field, value in [("api_port", 70000), ("store", "mysql://x"), ("broker", "kafka://x"),
                         ("cache", "memcached://x"), ("drain_timeout", "soon")]:
        with pytest.raises(ValidationError) as info:
            Settings(**{field: value})
        assert info.value.errors()[0]["loc"] == (field,)


def test_mask_url() -> None:
    assert mask_url("postgresql://u:secret@h:5432/db") == "postgresql://u:****@h:5432/db"
    assert mask_url("redis://h:6379") == "redis://h:6379"
    # nothing to hide: the URL as written (urlunsplit would turn sqlite:////abs into sqlite://abs)
    assert mask_url("sqlite:////tmp/x/.mezzo/mezzo.db") == "sqlite:////tmp/x/.mezzo/mezzo.db"
    assert mask_url("sqlite:///rel.db") == "sqlite:///rel.db"
    assert mask_url("postgresql://h/db?password=sekrit") == "postgresql://h/db?password=****"


async def test_the_tracing_module_runs_alone(tmp_path: Path) -> None:
    from mezzo.node.node import Node
    from mezzo.testing.fixtures import FREE_PORTS

    node = Node(Settings(data_dir=tmp_path / "data", **FREE_PORTS, targets=["tracing"]))
    await node.start()  # failed: it uses ResourceService, which its dependencies did not list
    try:
        assert "resources" in node.order and node.url("otlp") is not None
    finally:
        await node.stop()


def test_manifest_lines_and_errors() -> None:
    docs = parse_yaml("---\na: 1\n---\n\n---\nkind: X\nspec:\n  items:\n    - x: 1\n    - y: 2\n", "f.yaml")
    assert [d.index for d in docs] == [1, 3]
    assert docs[1].line_of(("spec", "items", 1, "y")) == 10
    assert docs[1].line_of(("spec", "missing")) == 7  # deepest existing node
    with pytest.raises(ManifestError) as info:
        parse_yaml("a: 1\nb: [\n", "bad.yaml")
    assert info.value.errors[0]["source"] == "bad.yaml" and info.value.errors[0]["line"] == 3


@pytest.mark.parametrize(("text", "seconds"), [
    ("100ms", 0.1), ("5s", 5), ("1h30m", 5400), ("7d", 604800), (2.5, 2.5), ("1.5", 1.5), ("250us", 0.00025),
])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "soon", "5 parsecs", -1, True, "1h-3m"])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


@given(st.integers(min_value=0, max_value=10**9))
def test_duration_format_round_trips(ms: int) -> None:
    assert parse_duration(format_duration(ms / 1000)) == pytest.approx(ms / 1000)


def test_byte_sizes() -> None:
    assert parse_byte_size("1MiB") == 1024**2
    assert parse_byte_size("512kb") == 512_000
    assert parse_byte_size(10) == 10
    with pytest.raises(ValueError):
        parse_byte_size("lots")


def test_label_selectors() -> None:
    labels = {"app": "shop", "tier": "web"}
    assert matches(labels, parse_selector("app=shop"))
    assert matches(labels, parse_selector("app=shop,tier!=db,tier,!legacy"))
    assert not matches(labels, parse_selector("app==web"))
    assert not matches(labels, parse_selector("!tier"))
    assert not matches(labels, parse_selector("tier!=web"))


def test_logged_errors_never_include_local_variables() -> None:
    import io

    import orjson

    from mezzo.telemetry.logging import configure_logging, get_logger

    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    try:
        secret_token = "mzo_abc_supersecret"  # noqa: F841 - a local the traceback must not show
        raise RuntimeError("boom")
    except RuntimeError:
        get_logger("test").exception("failed")
    line = stream.getvalue().strip().splitlines()[-1]
    assert "supersecret" not in line
    assert orjson.loads(line)["exception"]


def test_the_otlp_grpc_port_is_a_port_or_off(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for value, expected in [("off", None), ("none", None), ("0", 0), ("14317", 14317)]:
        monkeypatch.setenv("MEZZO_OTLP_GRPC_PORT", value)
        assert Settings().otlp_grpc_port == expected, value
    monkeypatch.delenv("MEZZO_OTLP_GRPC_PORT")
    (tmp_path / "mezzo.yaml").write_text("otlp_grpc_port: off\n")  # YAML reads off as false
    assert Settings().otlp_grpc_port is None
    for bad in ("soon", "70000", True):
        with pytest.raises(ValidationError) as info:
            Settings(otlp_grpc_port=bad)
        assert info.value.errors()[0]["loc"] == ("otlp_grpc_port",)


def test_a_body_that_is_not_json_is_named_as_the_body() -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from mezzo.node import errors

    app = FastAPI()
    errors.install(app)

    @app.post("/x")
    async def x(payload: dict) -> dict:  # type: ignore[type-arg]  # a JSON body (names resolvable at module level)
        return payload

    answer = TestClient(app).post("/x", content=b'{"mode": saga', headers={"content-type": "application/json"})
    assert answer.status_code == 400 and answer.headers["content-type"] == "application/problem+json"
    [error] = answer.json()["errors"]
    assert error["field"] == "body" and error["reason"].startswith("not valid JSON: ")  # was field "0"
    assert "(at character 9)" in error["reason"]
