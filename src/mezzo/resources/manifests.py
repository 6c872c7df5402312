"""YAML manifests to documents, keeping line numbers so errors can point at the field."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml


class ManifestError(Exception):
    """A manifest that cannot be used; ``errors`` name source, document, field, line and reason."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        super().__init__("; ".join(describe(e) for e in errors))


def describe(error: dict[str, Any]) -> str:
    where = f"{error.get('source') or 'input'} document {error.get('document', '?')}"
    if error.get("kind") or error.get("name"):
        where += f" ({error.get('kind') or '?'} {error.get('name') or '?'})"
    field = f" {error['field']}:" if error.get("field") else ""
    line = f" (line {error['line']})" if error.get("line") else ""
    return f"{where}:{field} {error['reason']}{line}"


@dataclass(slots=True)
class SourceDocument:
    source: str
    index: int  # 1-based position in its source
    data: Any
    line: int | None = None  # 1-based line where the document starts
    node: yaml.Node | None = None

    def line_of(self, path: tuple[str | int, ...]) -> int | None:
        """The line of the deepest node of ``path`` that exists (the document start if none)."""
        node, line = self.node, self.line
        for part in path:
            if isinstance(node, yaml.MappingNode):
                pair = next((kv for kv in node.value if getattr(kv[0], "value", None) == str(part)), None)
                if pair is None:
                    break
                line, node = pair[0].start_mark.line + 1, pair[1]  # the key's line
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                break
        return line

    def error(self, reason: str, path: tuple[str | int, ...] = (), **extra: Any) -> dict[str, Any]:
        meta = self.data.get("metadata") if isinstance(self.data, dict) else None
        return {
            "source": self.source,
            "document": self.index,
            "kind": self.data.get("kind") if isinstance(self.data, dict) else None,
            "name": meta.get("name") if isinstance(meta, dict) else None,
            "field": ".".join(str(p) for p in path) or None,
            "line": self.line_of(path),
            "reason": reason,
            **extra,
        }


def parse_yaml(text: str, source: str = "input") -> list[SourceDocument]:
    """Every non-empty document of a YAML stream; raise ManifestError on bad YAML."""
    loader = yaml.SafeLoader(text)
    docs: list[SourceDocument] = []
    index = 0
    try:
        while loader.check_node():
            node = loader.get_node()
            index += 1
            if node is None:
                continue
            data = loader.construct_document(node)
            if data is None:
                continue
            docs.append(SourceDocument(source, index, data, node.start_mark.line + 1, node))
    except RecursionError:
        raise ManifestError(
            [{"source": source, "document": index + 1, "field": None, "line": None,
              "reason": "invalid YAML: nested too deeply"}]
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        reason = getattr(exc, "problem", None) or str(exc)
        if getattr(exc, "context", None):
            reason = f"{exc.context}, {reason}"  # type: ignore[attr-defined]
        raise ManifestError(
            [{
                "source": source, "document": index + 1, "field": None,
                "line": mark.line + 1 if mark else None,
                "column": mark.column + 1 if mark else None,
                "reason": f"invalid YAML: {reason}",
            }]
        ) from None
    finally:
        loader.dispose()
    return docs


def from_objects(objects: list[Any], source: str = "request") -> list[SourceDocument]:
    return [SourceDocument(source, i + 1, obj) for i, obj in enumerate(objects)]


def to_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)
