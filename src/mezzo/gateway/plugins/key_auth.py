"""key-auth: the caller presents a consumer's key in a header (default ``apikey``) or query argument."""

from __future__ import annotations

from pydantic import Field

from mezzo.gateway.http import Reply, drop_argument
from mezzo.gateway.plugins import Config, Ctx, Plugin, register
from mezzo.gateway.plugins.auth import unauthorized


class KeyAuthConfig(Config):
    header: str = Field("apikey", min_length=1)
    query: str = Field("apikey", min_length=1)
    hide_credentials: bool = Field(False, description="do not pass the key on to the upstream")


@register
class KeyAuth(Plugin):
    name = "key-auth"
    priority = 2500
    schema = KeyAuthConfig

    def __init__(self, conf: KeyAuthConfig, runtime) -> None:  # type: ignore[no-untyped-def]
        super().__init__(conf, runtime)
        self.header = conf.header.lower().encode("latin-1")
        self.query = conf.query
        self.hide = conf.hide_credentials

    def access(self, ctx: Ctx) -> Reply | None:
        request = ctx.request
        key = request.header(self.header)
        from_query = False
        if key is None:
            key = request.args.get(self.query)
            from_query = key is not None
        elif not key.isascii():  # header bytes arrive as Latin-1; keys are UTF-8 text
            try:
                key = key.encode("latin-1").decode()
            except UnicodeError:
                return unauthorized("Invalid API key in request", "apikey")
        if not key:
            return unauthorized("Missing API key in request", "apikey")
        # the consumer of the route's namespace whose key-auth key is ``key`` (auth.find_consumer,
        # inlined): the index is keyed by that very key, so a hit needs no second comparison
        consumer = ctx.runtime.snapshot.credentials.get((ctx.route.namespace, "key-auth", key))
        if consumer is None:
            return unauthorized("Invalid API key in request", "apikey")
        ctx.consumer = consumer
        if self.hide:
            if from_query:
                request.query = drop_argument(request.query, self.query)
                request._args = None
            else:
                request.set_header(self.header, None)
        request.set_header(b"x-consumer-username", consumer.name)
        return None
