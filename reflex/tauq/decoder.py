"""Tauq text -> JSON value.

A tokenizer (one regular expression, linear in the text) and a recursive-descent parser
whose every step consumes at least one token, so any input either decodes or raises
TauqError in time proportional to its length; nesting is bounded by MAX_DEPTH.
"""

from __future__ import annotations

import re
from typing import Any

from reflex.tauq.errors import TauqError
from reflex.tauq.lexical import FLOAT_RE, INT_RE, KEYWORDS, MAX_DEPTH, NONFINITE_RE, WORD_RE, unquote

# Token kinds. Punctuation is its own kind ("{", "}", "[", "]", ":", ";", "---", "\n").
WORD = "word"  # a bare word that is a string (identifier, path, e-mail, ...)
STRING = "string"  # a quoted string
SCALAR = "scalar"  # a number, true, false or null
DIRECTIVE = "directive"  # !def, !use, ...
EOF = "end of input"

_TOKEN_RE = re.compile(
    r"""
    (?P<skip>(?:[^\S\n]|,)+|\#[^\n]*)          # blanks (not newlines), commas, comments
    |(?P<punct>[{}\[\]:;\n]|---)
    |(?P<string>"[^"\\]*(?:\\.[^"\\]*)*")       # unrolled: linear even when unterminated
    |(?P<directive>!\w*)
    |(?P<word>"""
    + WORD_RE.pattern
    + r""")
    """,
    re.VERBOSE | re.DOTALL,
)

# Tokens that may begin a value.
_VALUE_START = frozenset({WORD, STRING, SCALAR, "{", "["})
# Tokens that end a row or a line.
_LINE_END = frozenset({"\n", ";", EOF})


def loads(text: str) -> Any:
    """Decode a Tauq document into a JSON value (dict, list, str, int, float, bool, None).

    Raises TauqError, with the line and column, for anything that is not a Tauq document.
    """
    if not isinstance(text, str):
        raise TauqError(f"expected str, not {type(text).__name__}")
    return _Parser(text).document()


def _tokenize(text: str) -> list[tuple[str, Any, int]]:
    tokens: list[tuple[str, Any, int]] = []
    append = tokens.append
    pos, end = 0, len(text)
    match = _TOKEN_RE.match
    while pos < end:
        m = match(text, pos)
        if m is None:
            if text[pos] == '"':
                raise TauqError("unterminated string", text, pos)
            raise TauqError(f"unexpected character {text[pos]!r}", text, pos)  # pragma: no cover
        kind = m.lastgroup
        if kind == "punct":
            append((m.group(), None, pos))
        elif kind == "string":
            append((STRING, unquote(m.group()[1:-1]), pos))
        elif kind == "directive":
            append((DIRECTIVE, m.group()[1:], pos))
        elif kind == "word":
            append(_word(m.group(), text, pos))
        pos = m.end()
    append((EOF, None, end))
    return tokens


def _word(word: str, text: str, pos: int) -> tuple[str, Any, int]:
    if word in KEYWORDS:
        return (SCALAR, KEYWORDS[word], pos)
    if INT_RE.fullmatch(word):
        try:
            # Exact at any size, where the reference stops at 64 bits.
            return (SCALAR, int(word), pos)
        except ValueError:  # beyond Python's int-from-str digit limit (a DoS guard)
            raise TauqError("integer literal too long", text, pos) from None
    if FLOAT_RE.fullmatch(word):
        number = float(word)
        if number in (float("inf"), float("-inf")):
            raise TauqError(f"number {word} is out of range", text, pos)
        return (SCALAR, number, pos)
    if NONFINITE_RE.fullmatch(word):
        raise TauqError(f"{word} is not a JSON number (quote it to write a string)", text, pos)
    return (WORD, word, pos)


def _describe(kind: str, value: Any) -> str:
    if kind in (WORD, SCALAR):
        return repr(value)
    if kind == STRING:
        return "a quoted string"
    if kind == DIRECTIVE:
        return f"!{value}"
    if kind == "\n":
        return "the end of the line"
    return kind if kind == EOF else repr(kind)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0
        self.schemas: dict[str, tuple[str, ...]] = {}

    # ------------------------------------------------------------------ helpers
    def error(self, msg: str, index: int | None = None) -> TauqError:
        _, _, pos = self.tokens[self.i if index is None else index]
        return TauqError(msg, self.text, pos)

    def unexpected(self, expected: str) -> TauqError:
        kind, value, _ = self.tokens[self.i]
        return self.error(f"expected {expected}, found {_describe(kind, value)}")

    def kind(self, offset: int = 0) -> str:
        return self.tokens[min(self.i + offset, len(self.tokens) - 1)][0]

    # ------------------------------------------------------------------ document
    def document(self) -> Any:
        """The top level: `key value` entries make one object; lone values and table rows
        are items; one item is the document's value, several (or none) a list of them."""
        items: list[Any] = []
        entries: dict[str, Any] = {}
        active: tuple[str, ...] | None = None  # the schema of top-level rows after !def/!use

        def flush() -> None:
            if entries:
                items.append(dict(entries))
                entries.clear()

        while True:
            kind, value, _ = self.tokens[self.i]
            if kind == EOF:
                break
            if kind in ("\n", ";"):
                self.i += 1
            elif kind == DIRECTIVE:
                flush()
                active = self.directive()
            elif kind == "---":
                active = None  # ends the schema block / the implicit rows
                self.i += 1
            elif active is not None:
                flush()
                items.append(self.row(active, 2))
            elif kind == WORD and (self.kind(1) in _VALUE_START or self.kind(1) == ":"):
                self.i += 1
                if self.kind() == ":":
                    self.i += 1
                entries[value] = self.value(2, f"a value for key {value!r}")
            elif kind in _VALUE_START:
                flush()
                items.append(self.value(1, "a value"))
            else:
                raise self.unexpected("a key, a value or a directive")
        flush()
        return items[0] if len(items) == 1 else items

    def directive(self) -> tuple[str, ...]:
        """`!def Name f1 f2 ...` (defines and activates) or `!use Name` (activates)."""
        _, name, _ = self.tokens[self.i]
        at = self.i
        self.i += 1
        if name not in ("def", "use"):
            raise self.error(f"unsupported directive !{name}", at)
        if self.kind() != WORD:
            raise self.unexpected(f"a schema name after !{name}")
        schema = self.tokens[self.i][1]
        self.i += 1
        if name == "use":
            if schema not in self.schemas:
                raise self.error(f"!use of undefined schema {schema!r}", self.i - 1)
            return self.schemas[schema]
        fields: list[str] = []
        while self.kind() == WORD:
            field = self.tokens[self.i][1]
            if field in fields:
                raise self.error(f"field {field!r} appears twice in schema {schema!r}")
            fields.append(field)
            self.i += 1
        if self.kind() not in _LINE_END:
            raise self.unexpected(f"a bare field name or the end of the !def {schema} line")
        if not fields:
            raise self.error(f"schema {schema!r} has no fields", at)
        self.schemas[schema] = tuple(fields)
        return self.schemas[schema]

    # ------------------------------------------------------------------ values
    def value(self, depth: int, expected: str) -> Any:
        kind, value, _ = self.tokens[self.i]
        if kind in (WORD, STRING, SCALAR):
            self.i += 1
            return value
        if kind == "{":
            return self.obj(depth)
        if kind == "[":
            return self.array(depth)
        raise self.unexpected(expected)

    def enter(self, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise self.error(f"nesting deeper than {MAX_DEPTH} levels")

    def obj(self, depth: int) -> dict[str, Any]:
        self.enter(depth)
        opened = self.i
        self.i += 1
        out: dict[str, Any] = {}
        while True:
            kind, key, _ = self.tokens[self.i]
            if kind in ("\n", ";"):
                self.i += 1
            elif kind == "}":
                self.i += 1
                return out
            elif kind in (WORD, STRING):
                self.i += 1
                if self.kind() == ":":
                    self.i += 1
                out[key] = self.value(depth + 1, f"a value for key {key!r}")
            elif kind == EOF:
                raise self.error("'{' is never closed", opened)
            else:
                raise self.unexpected("a key or '}'")

    def array(self, depth: int) -> list[Any]:
        self.enter(depth)
        opened = self.i
        self.i += 1
        out: list[Any] = []
        schema: tuple[str, ...] | None = None  # set by `!use Name` inside the array
        while True:
            kind, value, _ = self.tokens[self.i]
            if kind in ("\n", ";"):
                self.i += 1
            elif kind == "]":
                self.i += 1
                return out
            elif kind == EOF:
                raise self.error("'[' is never closed", opened)
            elif kind == DIRECTIVE:
                if value != "use":
                    raise self.error(f"!{value} is not allowed inside an array")
                schema = self.directive()
            elif schema is not None:
                out.append(self.row(schema, depth + 1))
            else:
                out.append(self.value(depth + 1, "a value or ']'"))

    def row(self, fields: tuple[str, ...], depth: int) -> dict[str, Any]:
        """One record: up to len(fields) values, ending early at the line's end (a short row
        leaves its last fields out, as in the reference). Never empty, so it always advances."""
        self.enter(depth)
        out: dict[str, Any] = {}
        for field in fields:
            if self.kind() in _LINE_END or self.kind() in ("]", "}", DIRECTIVE):
                break
            out[field] = self.value(depth + 1, f"a value for field {field!r}")
        if not out:
            raise self.unexpected(f"a row of {' '.join(fields)}")
        return out
