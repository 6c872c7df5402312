"""Looking inside traces: the critical path, and a comparison of two traces."""

from __future__ import annotations

from typing import Any

from mezzo.tracing.model import Span


def critical_path(spans: list[Span]) -> list[dict[str, Any]]:
    """The spans that set the trace's end-to-end time, root first, each with the time it holds the path.

    From a span's end, walk back: the child that finished last (before that point) is on the path;
    before that child started, the next child that finished last, and so on; what no child covers is
    the span's own time. A span's children in other processes count like any other.
    """
    by_id = {s.span_id: s for s in spans}
    children: dict[str, list[Span]] = {}
    roots = []
    for span in spans:
        if span.parent_id and span.parent_id in by_id:
            children.setdefault(span.parent_id, []).append(span)
        else:
            roots.append(span)
    if not roots:
        return []
    root = max(roots, key=lambda s: s.duration_us)
    path: list[dict[str, Any]] = []
    _walk(root, root.start_us + root.duration_us, children, path, depth=0)
    return path


def _walk(span: Span, until: int, children: dict[str, list[Span]], path: list[dict[str, Any]], depth: int) -> None:
    entry = {"spanId": span.span_id, "service": span.service, "name": span.name, "depth": depth, "selfUs": 0}
    path.append(entry)
    cursor = min(until, span.start_us + span.duration_us)
    own = 0
    for child in sorted(children.get(span.span_id, ()), key=lambda c: c.start_us + c.duration_us, reverse=True):
        end = child.start_us + child.duration_us
        if child.start_us >= cursor:
            continue  # started after what is left of the path
        own += max(cursor - min(end, cursor), 0)
        _walk(child, min(end, cursor), children, path, depth + 1)
        cursor = child.start_us
        if cursor <= span.start_us:
            break
    own += max(cursor - span.start_us, 0)
    entry["selfUs"] = own


def compare(a: list[Span], b: list[Span]) -> dict[str, Any]:
    """Per service and operation: span counts and total time in each trace, and the difference."""
    def totals(spans: list[Span]) -> dict[tuple[str, str], tuple[int, int]]:
        out: dict[tuple[str, str], tuple[int, int]] = {}
        for s in spans:
            count, total = out.get((s.service, s.name), (0, 0))
            out[(s.service, s.name)] = (count + 1, total + s.duration_us)
        return out

    ta, tb = totals(a), totals(b)
    rows = []
    for key in sorted(set(ta) | set(tb)):
        (ca, da), (cb, db) = ta.get(key, (0, 0)), tb.get(key, (0, 0))
        rows.append({"service": key[0], "operation": key[1], "countA": ca, "countB": cb,
                     "durationUsA": da, "durationUsB": db, "deltaUs": db - da,
                     "only": "a" if not cb else "b" if not ca else None})
    rows.sort(key=lambda r: abs(r["deltaUs"]), reverse=True)

    def span_of(spans: list[Span]) -> int:
        return (max(s.start_us + s.duration_us for s in spans) - min(s.start_us for s in spans)) if spans else 0

    return {"durationUsA": span_of(a), "durationUsB": span_of(b), "spansA": len(a), "spansB": len(b), "operations": rows}
