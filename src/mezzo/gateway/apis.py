"""API lifecycle: an ``Api`` resource holds an OpenAPI 3 document; the gateway serves one route per
operation, in the API's state.

States go draft → published → deprecated → retired (published may also be retired directly, and a
deprecated API may be published again). A draft API's routes answer 404, a deprecated one's carry
``Deprecation: true``, a retired one's answer 410. Published and deprecated APIs get a documentation
page generated from their document (a deprecated one's names its ``sunset``, when set).
"""

from __future__ import annotations

import html
import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from mezzo.gateway.model import METHODS, Plugins, RouteSpec, check_plugins, plugin_secrets
from mezzo.resources.kinds import Column, KindSpec
from mezzo.resources.model import SpecModel
from mezzo.resources.types import Name

State = Literal["draft", "published", "deprecated", "retired"]
TRANSITIONS: dict[str, set[str]] = {
    "draft": {"published", "retired"},
    "published": {"deprecated", "retired"},
    "deprecated": {"published", "retired"},
    "retired": set(),
}
_TEMPLATE = re.compile(r"\{[A-Za-z_][A-Za-z0-9_.-]*\}")


class ApiSpec(SpecModel):
    title: str = ""
    version: str = ""
    state: State = "draft"
    upstream: Name
    base_path: str = Field("", description='prefix of every operation path, e.g. "/shop"')
    hosts: list[str] = Field(default_factory=list)
    sunset: str | None = Field(None, description="when a deprecated API goes (an HTTP date), shown on its documentation page")
    plugins: Plugins = Field(default_factory=dict)
    document: dict[str, Any] = Field(description="the OpenAPI 3 document")

    @field_validator("base_path")
    @classmethod
    def _base(cls, value: str) -> str:
        if value and (not value.startswith("/") or value.endswith("/")):
            raise ValueError('basePath starts with "/" and does not end with one, e.g. "/shop"')
        return value

    @field_validator("plugins")
    @classmethod
    def _plugins(cls, value: Plugins) -> Plugins:
        return check_plugins(value)

    @model_validator(mode="after")
    def _openapi(self) -> ApiSpec:
        operations(self)  # raises ValueError with what is wrong
        if not self.title:
            self.title = str(self.document.get("info", {}).get("title", ""))
        if not self.version:
            self.version = str(self.document.get("info", {}).get("version", ""))
        return self


API_KIND = KindSpec(kind="Api", spec=ApiSpec, plural="apis", short_names=("api",),
                    columns=(Column("STATE", "state"), Column("VERSION", "version"), Column("UPSTREAM", "upstream")),
                    description="An OpenAPI 3 document served through the gateway, with a lifecycle state.",
                    secrets=plugin_secrets)


def operations(spec: ApiSpec) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, full path, operation) for every operation of the document."""
    doc = spec.document
    version = str(doc.get("openapi", ""))
    if not version.startswith("3."):
        raise ValueError(f"document.openapi must be 3.x (got {version or 'nothing'}); Swagger 2.0 is not supported")
    paths = doc.get("paths")
    if not isinstance(paths, dict) or not paths:
        raise ValueError("document.paths must list at least one path")
    out = []
    for path, item in paths.items():
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValueError(f"document.paths: {path!r} must start with /")
        if not isinstance(item, dict):
            raise ValueError(f"document.paths.{path} must be a mapping of operations")
        for method, op in item.items():
            if method.upper() not in METHODS:
                continue  # parameters, summary, servers, $ref ...
            if not isinstance(op, dict):
                raise ValueError(f"document.paths.{path}.{method} must be an operation object")
            out.append((method.upper(), spec.base_path + path, op))
    if not out:
        raise ValueError("document.paths has no operations")
    return out


def route_specs(name: str, spec: ApiSpec) -> list[tuple[str, RouteSpec]]:
    """The routes an API expands to, named ``API:METHOD:path``."""
    routes = []
    for method, path, op in operations(spec):
        routes.append((f"{name}:{op.get('operationId') or method + ':' + path}", RouteSpec(
            paths=[path], methods=[method], hosts=spec.hosts, upstream=spec.upstream, plugins=spec.plugins,
            status=spec.state, api=name, priority=1 if _TEMPLATE.search(path) is None else 0)))
    return routes


def docs_page(name: str, spec: ApiSpec, gateway_url: str | None) -> str:
    """A self-contained HTML page describing every operation (no scripts, no CDN)."""
    doc = spec.document
    info = doc.get("info", {})
    esc = html.escape
    rows = []
    for method, path, op in operations(spec):
        params = op.get("parameters", [])
        plist = "".join(
            f"<li><code>{esc(str(p.get('name', '?')))}</code> in {esc(str(p.get('in', '?')))}"
            f"{' (required)' if p.get('required') else ''} — {esc(str(p.get('description', '')))}</li>"
            for p in params if isinstance(p, dict))
        body = op.get("requestBody", {}).get("content", {}) if isinstance(op.get("requestBody"), dict) else {}
        responses = op.get("responses", {}) if isinstance(op.get("responses"), dict) else {}
        rlist = "".join(f"<li><code>{esc(str(code))}</code> {esc(str((r or {}).get('description', '')))}</li>"
                        for code, r in responses.items() if isinstance(r, dict | type(None)))
        rows.append(
            f"<section><h3><span class='m {method.lower()}'>{method}</span> <code>{esc(path)}</code></h3>"
            f"<p>{esc(str(op.get('summary', '')))}</p><p>{esc(str(op.get('description', '')))}</p>"
            + (f"<h4>Parameters</h4><ul>{plist}</ul>" if plist else "")
            + (f"<h4>Request body</h4><p>{esc(', '.join(body))}</p>" if body else "")
            + (f"<h4>Responses</h4><ul>{rlist}</ul>" if rlist else "") + "</section>")
    banner = ""
    if spec.state == "deprecated":
        banner = "<p class='warn'>This API is deprecated" + (f"; it will be retired after {esc(spec.sunset)}" if spec.sunset
                                                               else "") + ".</p>"
    base = f"<p>Base URL: <code>{esc((gateway_url or '') + spec.base_path)}</code></p>"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{esc(spec.title or name)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}}
section{{border-top:1px solid #ddd;padding:.5rem 0}}code{{background:#f4f4f4;padding:0 .2rem}}
.m{{font-weight:bold;padding:.1rem .4rem;border-radius:.2rem;color:#fff;background:#555}}
.get{{background:#2a7}}.post{{background:#27a}}.put{{background:#a72}}.delete{{background:#a22}}.patch{{background:#72a}}
.warn{{background:#fff3cd;padding:.5rem}}</style></head><body>
<h1>{esc(spec.title or name)} <small>{esc(spec.version)}</small></h1>{banner}
<p>{esc(str(info.get('description', '')))}</p>{base}{''.join(rows)}
<p><a href="openapi.json">OpenAPI document</a></p></body></html>"""
