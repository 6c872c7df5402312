"""Helpers shared by the auth plugins."""

from __future__ import annotations

from typing import Any

from mezzo.gateway.http import Reply, problem


def find_consumer(ctx: Any, plugin: str, ident: str) -> Any:
    """The consumer of the route's namespace whose ``plugin`` credential is ``ident``, or None:
    a consumer of another namespace never authenticates here."""
    return ctx.runtime.snapshot.credentials.get((ctx.route.namespace, plugin, ident))


def unauthorized(detail: str, scheme: str) -> Reply:
    reply = problem(401, detail)
    reply.headers["www-authenticate"] = scheme if scheme != "apikey" else 'ApiKey realm="mezzo"'
    return reply
