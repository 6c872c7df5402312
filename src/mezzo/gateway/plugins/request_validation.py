"""request-validation: check the body (and optionally headers and query) against JSON Schemas.

A request that does not conform gets ``rejectedCode`` (400) as ``application/problem+json``
naming the failing place (``"/items/0/qty"`` in the body, ``"x-tenant"`` in the headers) and
why; up to ten failures are listed. Bodies are parsed as JSON, or as a form when sent as
``application/x-www-form-urlencoded``. Headers are validated as an object of lowercase names to
strings, query arguments as an object of names to strings.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import orjson
from jsonschema import exceptions as schema_errors
from jsonschema.validators import validator_for
from pydantic import Field, field_validator, model_validator

from mezzo.gateway.http import Reply, problem
from mezzo.gateway.plugins import Config, Ctx, Plugin, register
from mezzo.gateway.plugins.reject import reject

MAX_LISTED = 10


def _compile(schema: dict[str, Any]) -> Any:
    cls = validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


class RequestValidationConfig(Config):
    body_schema: dict[str, Any] | None = None
    header_schema: dict[str, Any] | None = None
    query_schema: dict[str, Any] | None = None
    rejected_code: int = Field(400, ge=200, le=599)
    rejected_msg: str | None = Field(None, description="replaces the detail (the failures are still listed)")

    @field_validator("body_schema", "header_schema", "query_schema")
    @classmethod
    def _valid(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            try:
                _compile(value)
            except schema_errors.SchemaError as exc:
                raise ValueError(f"invalid JSON Schema: {exc.message}") from None
        return value

    @model_validator(mode="after")
    def _some(self) -> RequestValidationConfig:
        if self.body_schema is None and self.header_schema is None and self.query_schema is None:
            raise ValueError("give bodySchema, headerSchema or querySchema")
        return self


@register
class RequestValidation(Plugin):
    name = "request-validation"
    priority = 2800
    schema = RequestValidationConfig

    def __init__(self, conf: RequestValidationConfig, runtime) -> None:  # type: ignore[no-untyped-def]
        super().__init__(conf, runtime)
        self.checks = [(where, _compile(schema)) for where, schema in
                       (("header", conf.header_schema), ("query", conf.query_schema), ("body", conf.body_schema))
                       if schema is not None]

    def access(self, ctx: Ctx) -> Reply | None:
        request = ctx.request
        for where, validator in self.checks:
            if where == "header":
                instance: Any = {}
                for name, value in request.headers:
                    instance.setdefault(name.decode("latin-1"), value.decode("latin-1"))
            elif where == "query":
                instance = request.args
            else:
                parsed = _body(request)
                if isinstance(parsed, Reply):
                    return parsed
                instance = parsed
            errors = sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.absolute_path)))
            if errors:
                return self._reject(where, errors)
        return None

    def _reject(self, where: str, errors: list[Any]) -> Reply:
        best = schema_errors.best_match(errors)
        listed = [{"in": where, "path": _path(where, e), "message": e.message} for e in errors[:MAX_LISTED]]
        detail = self.conf.rejected_msg or f"{where} {_path(where, best) or '(root)'}: {best.message}"
        return reject(self.conf.rejected_code, detail, errors=listed)


def _body(request: Any) -> Any:
    body = request.body
    if body is None:
        return problem(413, "request body too large to validate")
    if not body:
        return problem(400, "the request body is empty", errors=[{"in": "body", "path": "", "message": "required"}])
    content_type = (request.header(b"content-type") or "").lower()
    if content_type.startswith("application/x-www-form-urlencoded"):
        return dict(parse_qsl(body.decode("latin-1"), keep_blank_values=True))
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return problem(400, f"the request body is not valid JSON: {exc}",
                       errors=[{"in": "body", "path": "", "message": "invalid JSON"}])


def _path(where: str, error: Any) -> str:
    """Where the failure is: a JSON pointer into the body, a header or argument name. A missing
    required property is named itself, not its parent."""
    parts = [str(p) for p in error.absolute_path]
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [name for name in error.validator_value if name not in error.instance]
        named = [name for name in missing if error.message.startswith(repr(name))]
        if named or missing:
            parts.append(str((named or missing)[0]))
    if where == "body":
        return "/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts) if parts else ""
    return parts[0] if parts else ""
