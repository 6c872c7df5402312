"""Helpers shared by the auth plugins."""

from __future__ import annotations

from mezzo.gateway.http import Reply, problem


def unauthorized(detail: str, scheme: str) -> Reply:
    reply = problem(401, detail)
    reply.headers["www-authenticate"] = scheme if scheme != "apikey" else 'ApiKey realm="mezzo"'
    return reply
