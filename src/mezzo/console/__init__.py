"""The web console: static files under ``/console/``, served with strict security headers; ``/`` leads there."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mezzo.node.errors import Problem

STATIC = Path(__file__).parent / "static"
PREFIX = "/console"

# The console's files hold no data, so they need no token; these headers keep them from being framed,
# sniffed, leaking the URL, or running anything but their own scripts and styles.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # revalidate (ETag) on every load, so a node upgrade never serves a stale script next to new HTML
    "Cache-Control": "no-cache",
}


class Secured:
    """Wrap an ASGI app so every response it sends, errors included, carries ``SECURITY_HEADERS``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
            await send(message)

        try:
            await self.app(scope, receive, send_secured)
        except HTTPException as exc:  # StaticFiles' 404 and 405: answer them here, with the headers
            title = {404: "Not Found", 405: "Method Not Allowed"}.get(exc.status_code, "Error")
            detail = "no such console file" if exc.status_code == 404 else None
            problem = Problem(exc.status_code, title, detail, headers=dict(exc.headers or {}))
            await problem.response(scope.get("path"))(scope, receive, send_secured)


def mount(app: FastAPI) -> None:
    """Serve the console at ``/console/`` and send ``GET /`` there; neither appears in the OpenAPI schema."""
    files = StaticFiles(directory=STATIC, html=True, follow_symlink=False)
    app.mount(PREFIX, Secured(files), name="console")

    async def to_console() -> RedirectResponse:
        return RedirectResponse(PREFIX + "/", status_code=307, headers=SECURITY_HEADERS)

    app.add_api_route("/", to_console, methods=["GET"], include_in_schema=False)
    # /console without its slash: the same redirect with the headers (the router's own had none)
    app.add_api_route(PREFIX, to_console, methods=["GET"], include_in_schema=False)
