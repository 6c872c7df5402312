"""Namespace formats: parse what users import or publish, render what they export.

A ``properties`` namespace is a set of keys; ``yaml``, ``json`` and ``text`` namespaces hold one
document under the key ``content`` (as Apollo does), validated on publish so a release never
carries a document its clients cannot parse.
"""

from __future__ import annotations

import json
import re
from enum import StrEnum
from typing import Any

import yaml

CONTENT = "content"


class Format(StrEnum):
    PROPERTIES = "properties"
    YAML = "yaml"
    JSON = "json"
    TEXT = "text"


class FormatError(ValueError):
    """A document that does not parse, with where (1-based line and column)."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        where = f" at line {line}, column {column}" if line is not None else ""
        super().__init__(f"{message}{where}")
        self.reason, self.line, self.column = message, line, column


def format_of_file(name: str) -> Format:
    """The format a file name suggests: .yaml/.yml, .json, .properties; anything else is text."""
    lower = name.lower()
    if lower.endswith((".yaml", ".yml")):
        return Format.YAML
    if lower.endswith(".json"):
        return Format.JSON
    if lower.endswith(".properties"):
        return Format.PROPERTIES
    return Format.TEXT


def validate(fmt: Format, content: str) -> None:
    """Raise FormatError when ``content`` is not a valid document of ``fmt``."""
    if fmt is Format.YAML:
        try:
            list(yaml.safe_load_all(content))
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark
            raise FormatError(f"invalid yaml: {exc.problem}", mark.line + 1 if mark else None,
                              mark.column + 1 if mark else None) from None
        except yaml.YAMLError as exc:
            raise FormatError(f"invalid yaml: {exc}") from None
    elif fmt is Format.JSON:
        try:
            json.loads(content, parse_constant=_not_json)
        except json.JSONDecodeError as exc:
            raise FormatError(f"invalid json: {exc.msg}", exc.lineno, exc.colno) from None
        except _NotJson as exc:  # Python reads NaN and Infinity; JSON (and other clients' parsers) do not
            outside_strings = re.sub(r'"(?:\\.|[^"\\])*"', lambda m: " " * len(m.group()), content)
            at = outside_strings.index(exc.token)
            line = content.count("\n", 0, at) + 1
            raise FormatError(f"invalid json: {exc.token} is not a JSON value", line,
                              at - content.rfind("\n", 0, at)) from None


class _NotJson(ValueError):
    def __init__(self, token: str) -> None:
        super().__init__(token)
        self.token = token


def _not_json(token: str) -> Any:
    raise _NotJson(token)


_LINES = re.compile(r"\r\n|\r|\n")  # Java's line terminators only (str.splitlines() knows more)


def parse_properties(text: str) -> dict[str, str]:
    """Java ``.properties``: ``key=value``, ``key: value`` or ``key value``; ``#``/``!`` comments;
    a trailing backslash continues a line; ``\\n``, ``\\t``, ``\\uXXXX`` and escaped separators."""
    out: dict[str, str] = {}
    logical = ""
    lines = _LINES.split(text)
    if lines and lines[-1] == "":
        lines.pop()
    for number, raw in enumerate(lines, 1):
        line = raw.lstrip(" \t\f")  # Java's whitespace here; other characters belong to the key
        if not logical and (not line or line[0] in "#!"):
            continue
        if _continues(line):
            logical += line[:-1]
            continue
        logical += line
        key, value = _split(logical, number)
        out[key] = value
        logical = ""
    if logical:
        key, value = _split(logical, len(lines))
        out[key] = value
    return out


def render_properties(values: dict[str, str]) -> str:
    return "".join(f"{_escape(k, key=True)}={_escape(v)}\n" for k, v in sorted(values.items()))


def _continues(line: str) -> bool:
    backslashes = len(line) - len(line.rstrip("\\"))
    return backslashes % 2 == 1


def _split(line: str, number: int) -> tuple[str, str]:
    key_chars: list[str] = []
    i = 0
    while i < len(line):
        ch = line[i]
        if ch == "\\" and i + 1 < len(line):
            key_chars.append(line[i : i + 2])
            i += 2
            continue
        if ch in "=: \t":
            break
        key_chars.append(ch)
        i += 1
    rest = line[i:].lstrip(" \t")
    if rest[:1] in ("=", ":"):
        rest = rest[1:].lstrip(" \t")
    key = _unescape("".join(key_chars), number)
    if not key:
        raise FormatError("a property needs a key", number, 1)
    return key, _unescape(rest, number)


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f"}


def _unescape(text: str, number: int) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "\\" or i + 1 >= len(text):
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "u":
            code = text[i + 2 : i + 6]
            if len(code) != 4 or any(c not in "0123456789abcdefABCDEF" for c in code):
                raise FormatError("invalid \\u escape", number, i + 1)
            out.append(chr(int(code, 16)))
            i += 6
            continue
        out.append(_ESCAPES.get(nxt, nxt))
        i += 2
    return "".join(out)


def _escape(text: str, key: bool = False) -> str:
    out = (text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
           .replace("\f", "\\f"))
    if key:
        out = out.replace("=", "\\=").replace(":", "\\:").replace(" ", "\\ ")
        if out[:1] in ("#", "!"):  # else the line reads back as a comment (Java's store() escapes them too)
            out = "\\" + out
    elif out.startswith(" "):
        out = "\\" + out
    return out


def flatten(document: Any, prefix: str = "") -> dict[str, str]:
    """A yaml/json mapping as dotted properties (``db: {pool: 10}`` -> ``db.pool=10``), for import."""
    out: dict[str, str] = {}
    if isinstance(document, dict):
        for key, value in document.items():
            out.update(flatten(value, f"{prefix}{key}."))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            out.update(flatten(value, f"{prefix[:-1]}[{index}]."))
    elif prefix:
        text = "" if document is None else json.dumps(document) if isinstance(document, bool) else str(document)
        out[prefix[:-1]] = text
    return out
