"""The web console: served at /console/ with strict headers, no path escapes its folder, and every API
path its scripts call exists on the node."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import fastapi.routing
import httpx
import pytest
from fastapi import FastAPI

from mezzo.console import SECURITY_HEADERS, STATIC
from mezzo.testing.fixtures import RunningNode

SCRIPTS = sorted(STATIC.rglob("*.js"))
# api("GET", "/v1/kinds") or api("POST", p`/v1/tx/transactions/${gid}:retry`): the one way the console calls the API
CALL = re.compile(r"""\bapi\(\s*"([A-Z]+)"\s*,\s*(p?)(["`])(.*?)\3""", re.S)
ANY_CALL = re.compile(r"\bapi\(")


def running_app(node: RunningNode) -> FastAPI:
    """The FastAPI app the node's API listener serves (unwrapped from its middleware)."""
    listener = next(x for x in node.node.listeners if x.name == "api")
    app: Any = listener.server.config.app
    while not isinstance(app, FastAPI):
        app = app.app
    return app


PARAM = "\x00"  # what a console ${...} becomes: only a route parameter can match it


def route_table(app: FastAPI) -> list[tuple[str, re.Pattern[str]]]:
    """(method, pattern) of every route: ``{param}`` matches one segment (not a ``:verb``), ``{param:path}`` more."""
    def pattern(path: str) -> re.Pattern[str]:
        parts = re.split(r"(\{[^}]*\})", path)
        return re.compile("".join(
            (".+" if part.endswith(":path}") else "[^/:]+") if part.startswith("{") else re.escape(part)
            for part in parts) + "$")

    # FastAPI >= 0.16x keeps included routers nested; iter_route_contexts flattens them with their prefixes
    flatten = getattr(fastapi.routing, "iter_route_contexts", None)
    table = []
    for route in flatten(app.routes) if flatten else app.routes:
        methods = getattr(route, "methods", None)
        if methods:  # mounts (the console itself) have none
            table += [(method, pattern(route.path)) for method in methods]
    return table


def served(routes: list[tuple[str, re.Pattern[str]]], method: str, path: str) -> bool:
    return any(m == method and rx.match(path) for m, rx in routes)


def console_calls() -> list[tuple[str, str, str]]:
    """(file, method, path) of every API call in the console's scripts, each ``${...}`` written as ``PARAM``."""
    calls = []
    for script in SCRIPTS:
        text = script.read_text()
        found = CALL.findall(text)
        sites = len(ANY_CALL.findall(text)) - len(re.findall(r"function api\(", text))
        assert len(found) == sites, f"{script.name}: every api(...) call needs a literal method and path template"
        for method, tagged, quote, path in found:
            if "${" in path:
                assert tagged and quote == "`", f"{script.name}: {path} interpolates without the p`` tag (unencoded)"
            calls.append((script.name, method, re.sub(r"\$\{[^}]*\}", PARAM, path)))
    return calls


async def raw_get(url: str, path: str) -> tuple[int, bytes]:
    """GET with the path exactly as written (HTTP clients would resolve the dot segments first)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    response = await reader.read()
    writer.close()
    status = int(response.split(b" ", 2)[1])
    return status, response


async def test_root_redirects_to_the_console(node: RunningNode) -> None:
    async with httpx.AsyncClient(base_url=node.url) as http:
        response = await http.get("/")
        assert response.status_code == 307
        assert response.headers["location"] == "/console/"
        bare = await http.get("/console")
        assert bare.status_code in (307, 308) and bare.headers["location"].endswith("/console/")
        assert bare.headers["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in \
            bare.headers["content-security-policy"]  # the router's own redirect had no security headers


async def test_console_page_is_served_with_strict_headers_and_no_token(node: RunningNode) -> None:
    async with httpx.AsyncClient(base_url=node.url) as http:
        response = await http.get("/console/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert '<script type="module" src="app.js"></script>' in response.text
    assert response.text == (STATIC / "index.html").read_text()


class _Inline(HTMLParser):
    """Collects what a strict CSP would block: inline scripts, style elements and attributes, handlers."""

    def __init__(self) -> None:
        super().__init__()
        self.blocked: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        if tag == "script":
            self._in_script = "src" not in names
        if tag == "style" or "style" in names or any(n.startswith("on") for n in names):
            self.blocked.append(f"<{tag} {sorted(names)}>")
        if tag == "link" and ("href", None) not in attrs:
            href = dict(attrs).get("href") or ""
            if href.startswith(("http:", "https:", "//")):
                self.blocked.append(f"external {href}")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.blocked.append("inline script")


def test_the_page_has_nothing_inline_or_external() -> None:
    parser = _Inline()
    parser.feed((STATIC / "index.html").read_text())
    assert parser.blocked == []
    for script in SCRIPTS:
        assert not re.search(r"https?://", script.read_text()), f"{script.name} refers to another origin"


def test_scripts_never_write_html() -> None:
    """API data reaches the page as text nodes only: no HTML parsing sinks, no eval."""
    sinks = re.compile(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function\(")
    for script in SCRIPTS:
        assert not sinks.search(script.read_text()), f"{script.name} uses an HTML or code sink"


async def test_scripts_and_styles_have_their_content_types(node: RunningNode) -> None:
    files = [*SCRIPTS, *STATIC.rglob("*.css")]
    assert len(files) >= 3
    async with httpx.AsyncClient(base_url=node.url) as http:
        for path in files:
            response = await http.get(f"/console/{path.relative_to(STATIC).as_posix()}")
            assert response.status_code == 200, path
            ctype = response.headers["content-type"]
            if path.suffix == ".js":
                assert ctype.startswith(("text/javascript", "application/javascript")), (path, ctype)
            else:
                assert ctype.startswith("text/css"), (path, ctype)
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["content-security-policy"] == SECURITY_HEADERS["Content-Security-Policy"]
            assert response.content == path.read_bytes()


async def test_missing_files_are_problems_with_the_headers(node: RunningNode) -> None:
    async with httpx.AsyncClient(base_url=node.url) as http:
        missing = await http.get("/console/nope.js")
        posted = await http.post("/console/")
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
    assert missing.headers["x-frame-options"] == "DENY"
    assert posted.status_code == 405 and posted.headers["x-frame-options"] == "DENY"


async def test_other_routes_keep_their_behaviour(node: RunningNode) -> None:
    async with httpx.AsyncClient(base_url=node.url) as http:
        probe = await http.get("/healthz")
        unauthorized = await http.get("/v1/kinds")
    assert probe.status_code == 200 and "content-security-policy" not in probe.headers
    assert unauthorized.status_code == 401 and "x-frame-options" not in unauthorized.headers


TRAVERSALS = [
    "/console/../pyproject.toml",
    "/console/../../../../pyproject.toml",
    "/console/%2e%2e/%2e%2e/%2e%2e/%2e%2e/pyproject.toml",
    "/console/%2E%2E%2F%2E%2E%2F%2E%2E%2F%2E%2E%2Fpyproject.toml",
    "/console/..%2f..%2f..%2f..%2fpyproject.toml",
    "/console/../__init__.py",
    "/console/%2e%2e/__init__.py",
    "/console/..%2F__init__.py",
    "/console/..%5c__init__.py",
    "/console/%252e%252e/__init__.py",
    "/console/pages/../../__init__.py",
    "/console/....//__init__.py",
    "/console//etc/passwd",
    "/console/%2fetc%2fpasswd",
]


async def test_paths_do_not_escape_the_static_folder(node: RunningNode) -> None:
    package_init = STATIC.parent / "__init__.py"
    assert package_init.exists()  # the file a traversal would reach
    secrets_in_reach = [b"def mount(", b"[project]", b"root:x:0:0"]
    for path in TRAVERSALS:
        status, response = await raw_get(node.url, path)
        assert status in (400, 404), (path, status)
        assert not any(marker in response for marker in secrets_in_reach), path


async def test_console_is_not_in_the_openapi_schema(node: RunningNode) -> None:
    async with httpx.AsyncClient(base_url=node.url) as http:
        paths = (await http.get("/openapi.json")).json()["paths"]
    assert "/" not in paths
    assert not [p for p in paths if p.startswith("/console")]


async def test_every_api_path_the_console_calls_exists(node: RunningNode) -> None:
    routes = route_table(running_app(node))
    calls = console_calls()
    assert len(calls) >= 30 and len({c[0] for c in calls}) >= 8  # the pages are all scanned
    # the check can fail: a path the API does not have, a verb it lacks, or a method it does not take
    assert not served(routes, "GET", "/v1/no-such-thing")
    assert not served(routes, "POST", f"/v1/tx/transactions/{PARAM}:no-such-verb")
    assert not served(routes, "DELETE", f"/v1/tx/transactions/{PARAM}")
    assert served(routes, "POST", f"/v1/tx/transactions/{PARAM}:retry")
    missing = sorted({(f, m, p.replace(PARAM, "${}")) for f, m, p in calls if not served(routes, m, p)})
    assert missing == [], f"the console calls routes the node does not serve: {missing}"
    wanted = {("POST", f"/v1/tx/transactions/{PARAM}:retry"), ("POST", f"/v1/tx/transactions/{PARAM}:abort"),
              ("GET", "/readyz"), ("GET", "/api/traces"), ("GET", f"/api/traces/{PARAM}"), ("GET", "/v1/kinds")}
    assert wanted <= {(m, p) for _, m, p in calls}


def test_module_imports_resolve() -> None:
    for script in SCRIPTS:
        for target in re.findall(r"""^import .* from "(\.{1,2}/[^"]+)";$""", script.read_text(), re.M):
            assert (script.parent / target).resolve().is_file(), f"{script.name} imports missing {target}"


@pytest.mark.skipif(shutil.which("node") is None, reason="node (a JavaScript runtime) is not installed")
def test_scripts_parse_as_modules(tmp_path: Path) -> None:
    for script in SCRIPTS:
        copy = tmp_path / (script.relative_to(STATIC).as_posix().replace("/", "__") + ".mjs")
        copy.write_bytes(script.read_bytes())  # .mjs: parsed as an ES module whatever package.json says
        result = subprocess.run(["node", "--check", str(copy)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{script.name}: {result.stderr}"


async def test_whoami_names_the_caller(node: RunningNode) -> None:
    async with httpx.AsyncClient(base_url=node.url, timeout=10) as http:
        admin = (await http.get("/v1/whoami", headers={"Authorization": f"Bearer {node.token}"})).json()
        assert admin["role"] == "admin" and admin["namespaces"] == ["*"]
        made = (await http.post("/v1/tokens", headers={"Authorization": f"Bearer {node.token}"},
                                json={"name": "reader", "role": "viewer", "namespaces": ["shop"]})).json()
        me = (await http.get("/v1/whoami", headers={"Authorization": f"Bearer {made['token']}"})).json()
        assert me == {"name": "reader", "role": "viewer", "namespaces": ["shop"], "tokenId": made["id"]}
        assert (await http.get("/v1/whoami")).status_code == 401
