"""Lexical rules shared by the encoder and the decoder.

One table, so that whatever the encoder writes bare, the decoder reads back as the same
string, and whatever could be read as something else (a number, a keyword, a delimiter) is
quoted. The word boundaries and number forms follow the reference lexer (epistates/tauq
0.2.0), so its documents read the same here.
"""

from __future__ import annotations

import re

# Deepest nesting of objects and arrays either direction accepts. The codec recurses once
# per level (two Python frames): 200 levels stays far inside the interpreter's recursion
# limit even when called from deep in a server's stack, and is far beyond any LLM answer.
MAX_DEPTH = 200

# A bare word runs until whitespace or one of these (the reference lexer's delimiter set).
WORD_RE = re.compile(r'[^\s{}\[\],:;"#]+')

# Numbers as the reference lexer reads them (Rust's i64/u64/f64 parsers): ASCII digits, an
# optional sign, '1.', '.5' and exponents allowed. Integers are read exactly at any size.
INT_RE = re.compile(r"[+-]?[0-9]+")
FLOAT_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# Rust's f64 parser also takes these; JSON has no such numbers, so they are errors when
# bare and must be quoted when they are strings.
NONFINITE_RE = re.compile(r"[+-]?(?:inf|infinity|nan)", re.IGNORECASE)

KEYWORDS: dict[str, bool | None] = {"true": True, "false": False, "null": None}

# Bare values may hold the characters of e-mail addresses, paths and dotted names; bare keys
# only identifier characters. Both must start with a letter or '_', so they never look like
# numbers, directives ('!'), the '---' separator or a sign.
_BARE_VALUE_BODY_RE = re.compile(r"[\w.@/+-]+")
_BARE_KEY_BODY_RE = re.compile(r"[\w-]+")


def _starts_like_a_name(s: str) -> bool:
    return bool(s) and (s[0].isalpha() or s[0] == "_")


def is_bare_value(s: str) -> bool:
    """May ``s`` be written without quotes in a value position?"""
    return (
        _starts_like_a_name(s)
        and _BARE_VALUE_BODY_RE.fullmatch(s) is not None
        and s not in KEYWORDS
        and NONFINITE_RE.fullmatch(s) is None
    )


def is_bare_key(s: str) -> bool:
    """May ``s`` be written without quotes as a key, a schema name or a schema field?"""
    return (
        _starts_like_a_name(s)
        and _BARE_KEY_BODY_RE.fullmatch(s) is not None
        and s not in KEYWORDS
        and NONFINITE_RE.fullmatch(s) is None
    )


_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "r": "\r", "t": "\t"}
_ESCAPE_RE = re.compile(r"\\(.)", re.DOTALL)
_NEEDS_ESCAPE_RE = re.compile(r'["\\\n\r\t]')
_ESCAPED = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def quote(s: str) -> str:
    """A quoted string. Only the five escapes the reference knows; every other character,
    control characters included, stands for itself between the quotes."""
    return '"' + _NEEDS_ESCAPE_RE.sub(lambda m: _ESCAPED[m.group()], s) + '"'


def unquote(body: str) -> str:
    """The inverse of ``quote`` for the text between the quotes. An unknown escape keeps its
    backslash, as in the reference."""
    if "\\" not in body:
        return body
    return _ESCAPE_RE.sub(lambda m: _ESCAPES.get(m.group(1), m.group()), body)
