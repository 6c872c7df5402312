"""basic-auth: HTTP Basic credentials checked against consumers' ``basic-auth: {username, password}``."""

from __future__ import annotations

import base64
import hmac

from pydantic import Field

from mezzo.gateway.http import Reply
from mezzo.gateway.plugins import Config, Ctx, Plugin, register
from mezzo.gateway.plugins.auth import find_consumer, unauthorized


class BasicAuthConfig(Config):
    hide_credentials: bool = Field(False, description="do not pass the Authorization header upstream")


@register
class BasicAuth(Plugin):
    name = "basic-auth"
    priority = 2520
    schema = BasicAuthConfig

    def access(self, ctx: Ctx) -> Reply | None:
        request = ctx.request
        header = request.header(b"authorization")
        challenge = 'Basic realm="mezzo"'
        if not header or not header[:6].lower() == "basic ":
            return unauthorized("Missing authorization in request", challenge)
        try:
            username, sep, password = base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")
        except ValueError:  # binascii.Error, UnicodeDecodeError, or non-ASCII text in the header
            return unauthorized("Invalid authorization in request", challenge)
        consumer = find_consumer(ctx, "basic-auth", username) if sep else None
        expected = consumer.spec.credentials["basic-auth"].get("password", "") if consumer else ""
        if not isinstance(expected, str) or not expected \
                or not hmac.compare_digest(expected.encode(), password.encode()):
            return unauthorized("Invalid user authorization", challenge)
        ctx.consumer = consumer
        if self.conf.hide_credentials:
            request.set_header(b"authorization", None)
        request.set_header(b"x-consumer-username", consumer.name)
        return None
