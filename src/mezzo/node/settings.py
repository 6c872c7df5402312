"""The node's settings: defaults < mezzo.yaml < MEZZO_* environment < command-line flags."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from mezzo.resources.types import ByteSize, Duration

Port = int
OFF = ("off", "none", "false", "")  # what turns an optional listener off


def _port(value: int) -> int:
    if not 0 <= value <= 65535:
        raise ValueError("a port is between 0 and 65535 (0 picks a free port)")
    return value


def config_file() -> Path | None:
    """``MEZZO_CONFIG`` if set (it must exist), else ``./mezzo.yaml`` if present."""
    explicit = os.environ.get("MEZZO_CONFIG")
    if explicit:
        if not Path(explicit).is_file():
            raise ValueError(f"MEZZO_CONFIG names {explicit!r}, which is not a readable file")
        return Path(explicit)
    default = Path("mezzo.yaml")
    return default if default.is_file() else None


def check_yaml(path: Path) -> None:
    """A settings file must parse and be a mapping; say where it does not (ValueError), rather than
    let a YAML error escape as a traceback."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ValueError(f"{path}: invalid YAML: {getattr(exc, 'problem', None) or exc}{line}") from None
    if data is not None and not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of setting names to values, not a {type(data).__name__}")


class Settings(BaseSettings):
    """Every setting a node reads. Names map to ``MEZZO_<NAME>`` and to keys of ``mezzo.yaml``."""

    model_config = SettingsConfigDict(
        env_prefix="MEZZO_", extra="forbid", validate_default=True, case_sensitive=False
    )

    data_dir: Path = Field(Path(".mezzo"), description="where embedded state lives")
    host: str = Field("127.0.0.1", description="address every listener binds to")
    api_port: Port = Field(7700, description="HTTP API and console")
    gateway_port: Port = Field(8080, description="gateway data plane")
    gateway_tls_port: Port = Field(8443, description="gateway data plane over TLS (certificates from resources)")
    resp_port: Port = Field(6380, description="Redis protocol")
    otlp_port: Port = Field(4318, description="OTLP/HTTP ingest")
    otlp_grpc_port: Port | None = Field(
        4317, description="OTLP/gRPC ingest (the OpenTelemetry gRPC exporters' default); off: not served "
        "(needs mezzo[grpc])")
    zipkin_port: Port = Field(9411, description="Zipkin ingest and query")
    dapr_grpc_port: Port | None = Field(
        50001, description="Dapr's gRPC API (pub/sub) for Dapr SDKs; off: not served (needs mezzo[dapr])")
    admin_token: SecretStr | None = Field(None, description="admin token; generated when unset")
    store: str | None = Field(
        None, description="sqlite:///PATH (default: DATA_DIR/mezzo.db) or postgresql://..."
    )
    broker: str = Field("embedded", description="embedded | nats://... | redis://... | postgresql://...")
    messaging_allow_hosts: str = Field(
        "", description="hosts push endpoints and half-message check-backs may go to: comma-separated names, "
        "*.domains and IP networks (empty: any)")
    broker_fsync: Literal["always", "batch", "os"] = Field(
        "batch", description="embedded broker durability: fsync each write, group commit, or leave it to the OS")
    secret_keys: SecretStr | None = Field(
        None, description="secrets at rest (config secrets, gateway credentials and certificate keys): "
        "comma-separated base64 AES-256 keys, the first encrypts "
        "(default: a key file generated in the data dir; set this when nodes share a store)")
    cache_auth: bool = Field(True, description="Redis-protocol clients must AUTH with a Mezzo token (use right)")
    cache_snapshot: bool = Field(True, description="save the embedded cache on shutdown and load it on start")
    cache: str = Field("memory", description="memory | redis://...")
    targets: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["all"], description="modules to run")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    tracing: Literal["none", "otlp", "console"] = Field(
        "none", description="where Mezzo's own spans go"
    )
    tracing_endpoint: str | None = Field(
        None, description="OTLP/HTTP traces endpoint (default: this node's own collector)"
    )
    drain_timeout: Duration = Field(3.0, description="how long shutdown waits for in-flight work")
    trace_store: str | None = Field(
        None, description="sqlite (DATA_DIR/traces.db) or postgresql://...; default: PostgreSQL when MEZZO_STORE is")
    trace_retention: Duration = Field(7 * 86400.0, description="spans older than this are deleted")
    trace_max_spans: int | None = Field(None, ge=1, description="keep at most this many spans (oldest go first)")
    trace_max_bytes: ByteSize | None = Field(None, description="keep the trace store's data under this size "
                                                                "(oldest spans go first), e.g. 10GiB")
    gateway_max_body: ByteSize = Field(16 * 1024 * 1024, description="largest request body the gateway takes (413 above)")
    gateway_max_header_bytes: ByteSize = Field(16 * 1024, description="request line and headers (431 above)")
    gateway_header_timeout: Duration = Field(10.0, description="a client must send its headers within this")
    gateway_body_timeout: Duration = Field(60.0, description="longest pause between pieces of a request body")
    gateway_keepalive_timeout: Duration = Field(75.0, description="idle client connections close after this")
    gateway_workers: int = Field(
        1, ge=1, le=64, description="processes serving the gateway ports (SO_REUSEPORT): this one and N-1 workers "
        "that run only the gateway module against the same store")
    gateway_worker: int = Field(0, ge=0, description="set by the node on the worker processes it starts (1..N-1)")
    store_history: int = Field(
        100_000, ge=100, description="store revisions kept for watch before compaction"
    )

    @field_validator("api_port", "gateway_port", "gateway_tls_port", "resp_port", "otlp_port", "zipkin_port")
    @classmethod
    def _check_port(cls, value: int) -> int:
        return _port(value)

    @field_validator("dapr_grpc_port", "otlp_grpc_port", mode="before")
    @classmethod
    def _port_or_off(cls, value: Any) -> Any:
        """``off`` (also YAML's ``off``/``false``, ``none``, empty) turns the listener off."""
        if value is None or value is False or (isinstance(value, str) and value.strip().lower() in OFF):
            return None
        if value is True or (isinstance(value, str) and not (value.strip().isascii() and value.strip().isdigit())):
            raise ValueError("a port number (0 picks a free port) or off")  # True: YAML's on/yes, not port 1
        return value

    @field_validator("dapr_grpc_port", "otlp_grpc_port")
    @classmethod
    def _check_optional_port(cls, value: int | None) -> int | None:
        return None if value is None else _port(value)

    @field_validator("targets", mode="before")
    @classmethod
    def _split_targets(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [t.strip() for t in value.split(",") if t.strip()]
        return value

    @field_validator("targets")
    @classmethod
    def _some_targets(cls, value: list[str]) -> list[str]:
        if not value:  # a node with no module would start, serve nothing and say it is up
            raise ValueError("name at least one module or target, e.g. all or api,messaging")
        return value

    @field_validator("store")
    @classmethod
    def _check_store(cls, value: str | None) -> str | None:
        if value is not None and value.split(":", 1)[0] not in ("sqlite", "postgresql", "postgres"):
            raise ValueError("use sqlite:///PATH or postgresql://USER@HOST:PORT/DB")
        return value

    @field_validator("broker")
    @classmethod
    def _check_broker(cls, value: str) -> str:
        if value != "embedded" and value.split(":", 1)[0] not in ("nats", "redis", "rediss", "postgresql", "postgres"):
            raise ValueError("use embedded, nats://..., redis://... (rediss://...) or postgresql://...")
        return value

    @field_validator("cache")
    @classmethod
    def _check_cache(cls, value: str) -> str:
        if value != "memory" and value.split(":", 1)[0] not in ("redis", "rediss"):
            raise ValueError("use memory or redis://...")
        return value

    @model_validator(mode="after")
    def _default_store(self) -> Settings:
        if self.store is None:
            self.store = f"sqlite:///{(self.data_dir / 'mezzo.db').absolute()}"
        return self

    @property
    def store_url(self) -> str:
        assert self.store is not None
        return self.store

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = config_file()
        if path is not None:
            check_yaml(path)
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)

    def masked(self) -> dict[str, Any]:
        """The effective values for display, with secrets and URL passwords hidden."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = "********"
            elif isinstance(value, str) and "://" in value:
                value = mask_url(value)
            elif isinstance(value, Path):
                value = str(value)
            out[name] = value
        return out


def mask_url(url: str) -> str:
    """Hide the password of ``scheme://user:password@host`` and of a ``password=`` query parameter
    (asyncpg, like libpq, takes it from there too)."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    changed = False
    if parts.password is not None:
        host = parts.netloc.rpartition("@")[2]  # as written: an IPv6 address keeps its brackets
        parts = parts._replace(netloc=f"{parts.username or ''}:****@{host}")
        changed = True
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(key.lower() == "password" for key, _ in query):
        hidden = [(key, "****" if key.lower() == "password" else value) for key, value in query]
        parts = parts._replace(query=urlencode(hidden, safe="*"))
        changed = True
    return urlunsplit(parts) if changed else url  # urlunsplit drops sqlite:////PATH's empty authority
