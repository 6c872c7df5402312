"""Subscription filters: a small expression language over a message's tags, key and attributes.

    tags has 'paid'                      attributes.region == 'eu'
    key != 'test' and not tags has 'x'   attributes.tier in ['gold', 'silver']
    (tags has 'a' or tags has 'b') and attributes.env exists

Operators: ``has`` (tags), ``==``, ``!=``, ``in [...]``, ``exists``; ``and``, ``or``, ``not``, parentheses.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

Predicate = Callable[[Sequence[str], str | None, Mapping[str, str]], bool]
_TOKEN = re.compile(r"\s*(?:(\()|(\))|(\[)|(\])|(,)|(==|!=)|'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"|([A-Za-z_][\w.-]*))")


class FilterError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str  # ( ) [ ] , op str word
    text: str
    pos: int


def _tokens(text: str) -> list[_Tok]:
    out, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise FilterError(f"unexpected character at position {pos + 1}: {text[pos:pos + 10]!r}")
        groups = match.groups()
        start = match.start() + len(match.group(0)) - len(match.group(0).lstrip())
        for kind, value in zip(("(", ")", "[", "]", ",", "op", "str", "str", "word"), groups, strict=True):
            if value is not None:
                if kind == "str":
                    value = re.sub(r"\\(.)", r"\1", value)
                out.append(_Tok(kind, value, start + 1))
                break
        pos = match.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> _Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, kind: str | None = None, word: str | None = None) -> _Tok:
        tok = self.peek()
        if tok is None or (kind and tok.kind != kind) or (word and tok.text.lower() != word):
            want = word or kind or "more"
            found = f"{tok.text!r} at position {tok.pos}" if tok else "the end"
            raise FilterError(f"expected {want}, found {found}")
        self.i += 1
        return tok

    def at_word(self, *words: str) -> bool:
        tok = self.peek()
        return tok is not None and tok.kind == "word" and tok.text.lower() in words

    def parse(self) -> Predicate:
        expr = self.or_()
        if self.peek() is not None:
            tok = self.peek()
            raise FilterError(f"unexpected {tok.text!r} at position {tok.pos}")  # type: ignore[union-attr]
        return expr

    def or_(self) -> Predicate:
        left = self.and_()
        while self.at_word("or"):
            self.take()
            right, prev = self.and_(), left
            left = lambda t, k, a, x=prev, y=right: x(t, k, a) or y(t, k, a)  # noqa: E731
        return left

    def and_(self) -> Predicate:
        left = self.not_()
        while self.at_word("and"):
            self.take()
            right, prev = self.not_(), left
            left = lambda t, k, a, x=prev, y=right: x(t, k, a) and y(t, k, a)  # noqa: E731
        return left

    def not_(self) -> Predicate:
        if self.at_word("not"):
            self.take()
            inner = self.not_()
            return lambda t, k, a: not inner(t, k, a)
        if self.peek() is not None and self.peek().kind == "(":  # type: ignore[union-attr]
            self.take("(")
            inner = self.or_()
            self.take(")")
            return inner
        return self.comparison()

    def comparison(self) -> Predicate:
        field = self.take("word").text
        if field == "tags":
            self.take("word", "has")
            tag = self.take("str").text
            return lambda t, k, a: tag in t
        if field == "key":
            get: Callable[[str | None, Mapping[str, str]], str | None] = lambda k, a: k  # noqa: E731
        elif field.startswith("attributes.") and len(field) > 11:
            name = field[11:]
            get = lambda k, a: a.get(name)  # noqa: E731
        else:
            raise FilterError(f"unknown field {field!r}: use tags, key or attributes.NAME")
        if self.at_word("exists"):
            self.take()
            return lambda t, k, a: get(k, a) is not None
        if self.at_word("in"):
            self.take()
            self.take("[")
            values = {self.take("str").text}
            while self.peek() is not None and self.peek().kind == ",":  # type: ignore[union-attr]
                self.take(",")
                values.add(self.take("str").text)
            self.take("]")
            return lambda t, k, a: get(k, a) in values
        op = self.take("op").text
        value = self.take("str").text
        if op == "==":
            return lambda t, k, a: get(k, a) == value
        return lambda t, k, a: get(k, a) != value


@lru_cache(maxsize=1024)
def compile_filter(text: str) -> Predicate:
    """Compile a filter; FilterError says what is wrong and where."""
    if not text.strip():
        raise FilterError("empty filter")
    return _Parser(text).parse()
