"""Which counter a request counts against, for the limit plugins: ``key`` and ``keyName`` as in limit-count."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from mezzo.gateway.plugins import Config

KeyType = Literal["remote_addr", "consumer", "route", "header", "arg", "cookie"]


class KeyedConfig(Config):
    key: KeyType = "remote_addr"
    key_name: str | None = Field(None, description="the header, argument or cookie for key header/arg/cookie")

    @model_validator(mode="after")
    def _key_name(self) -> Any:
        if self.key in ("header", "arg", "cookie") and not self.key_name:
            raise ValueError(f"key {self.key} needs keyName")
        return self


def request_key(ctx: Any, key: KeyType, key_name: str | None) -> str:
    """The value of the request's key: the client address, the consumer (else the address), the
    route (one counter per route), or a header, argument or cookie (empty when absent)."""
    request = ctx.request
    if key == "remote_addr":
        return request.client_ip  # type: ignore[no-any-return]
    if key == "consumer":
        return ctx.consumer.ref if ctx.consumer is not None else request.client_ip  # type: ignore[no-any-return]
    if key == "route":
        return ctx.route.ref if ctx.route is not None else ""  # type: ignore[no-any-return]
    assert key_name is not None
    if key == "header":
        return request.header(key_name.lower().encode("latin-1")) or ""  # type: ignore[no-any-return]
    if key == "arg":
        return request.args.get(key_name, "")  # type: ignore[no-any-return]
    return request.cookies.get(key_name, "")  # type: ignore[no-any-return]
