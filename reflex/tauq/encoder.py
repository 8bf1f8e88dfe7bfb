"""JSON value -> Tauq text.

The layout follows the reference formatter (epistates/tauq 0.2.0) wherever the reference
is lossless, so documents look the same to an agent that has seen Tauq before; it departs
from it exactly where the reference loses data (reflex/tauq/README.md, "Where we differ
from the reference").
"""

from __future__ import annotations

import math
from typing import Any

from reflex.tauq.errors import TauqError
from reflex.tauq.lexical import MAX_DEPTH, is_bare_key, is_bare_value, quote

INDENT = "  "

Fields = tuple[str, ...]


def dumps(value: Any) -> str:
    """Encode a JSON value (dict, list, str, int, float, bool, None) as a Tauq document.

    Raises TauqError for what JSON cannot hold: NaN and infinities, non-string keys, other
    types, nesting deeper than ``MAX_DEPTH``.
    """
    if isinstance(value, list):
        fields = _uniform_fields(value)
        if fields is not None:
            # A top-level table: `!def` then one row per record (the schema stays active).
            schemas = _Schemas()
            name = schemas.name_for(fields, None)
            rows = [_row(record, fields, 0) for record in value]
            return "\n".join([f"!def {name} {' '.join(fields)}", *rows])
        if not value:
            return "[]"
        items = [_inline(item, 1) for item in value]
        return "[\n" + "\n".join(items) + "\n]"
    if isinstance(value, dict):
        schemas = _Schemas()
        schemas.collect(value, 0)
        if value and all(isinstance(k, str) and is_bare_key(k) for k in value):
            body = "\n".join(_field(k, v, 0, schemas) for k, v in value.items())
        else:
            # Top-level keys must be bare words to be read as keys, so an object with any
            # other key (or none: the empty object) is written as one braced value.
            body = _block_object(value, 0, schemas)
        if not schemas.names:
            return body
        return "\n".join(schemas.definitions()) + "\n---\n" + body
    if isinstance(value, str):
        # Quoted even when it could be bare: a lone bare word is not a document the reference
        # parser accepts.
        return quote(value)
    return _scalar(value)


# ---------------------------------------------------------------------------- schemas


class _Schemas:
    """The `!def` schemas of one document: a name per record shape (ordered field names)."""

    def __init__(self) -> None:
        self.names: dict[Fields, str] = {}
        self._taken: set[str] = set()
        self._counters: dict[str, int] = {}

    def collect(self, value: Any, depth: int) -> None:
        """First pass: a schema for every uniform array held directly by an object key, named
        after that key (``users`` -> ``User``), as the reference does."""
        if isinstance(value, (dict, list)):
            _check_level(depth)
        if isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, list):
                    fields = _uniform_fields(item)
                    if fields is not None:
                        self.name_for(fields, key)
                self.collect(item, depth + 1)
        elif isinstance(value, list):
            for item in value:
                self.collect(item, depth + 1)

    def name_for(self, fields: Fields, context: str | None) -> str:
        if fields in self.names:
            return self.names[fields]
        base = _name_from_context(context) if context is not None else ""
        if not is_bare_key(base):
            base = _name_from_fields(fields)
        count = self._counters.get(base, 0)
        while True:
            count += 1
            # The reference numbers repeats (Role, Role2) but can then collide with a key that
            # is itself named like that; we skip names already taken.
            name = base if count == 1 else f"{base}{count}"
            if name not in self._taken:
                break
        self._counters[base] = count
        self._taken.add(name)
        self.names[fields] = name
        return name

    def definitions(self) -> list[str]:
        return [f"!def {name} {' '.join(fields)}" for fields, name in sorted(self.names.items(), key=lambda x: x[1])]


def _name_from_context(key: str) -> str:
    # singular, PascalCase: "user_names" -> "UserName", "entries" -> "Entry"
    if key.endswith("ies"):
        key = key[:-3] + "y"
    elif key.endswith("s") and not key.endswith("ss") and len(key) > 1:
        key = key[:-1]
    out = []
    cap_next = True
    for ch in key:
        if ch in "_-":
            cap_next = True
        elif cap_next:
            out.append(ch.upper() if ch.isascii() else ch)
            cap_next = False
        else:
            out.append(ch.lower() if ch.isascii() else ch)
    return "".join(out)


def _name_from_fields(fields: Fields) -> str:
    lowered = [f.lower() for f in fields]
    for f in lowered:
        if f in ("user_id", "userid"):
            return "User"
        if f in ("product_id", "productid"):
            return "Product"
    has_id = any(f == "id" or f.endswith("_id") for f in lowered)
    has_name = "name" in lowered
    if has_id and has_name:
        return "Record"
    if has_id:
        return "Item"
    if has_name:
        return "Entry"
    return "Row"


def _uniform_fields(items: list[Any]) -> Fields | None:
    """The shared field names when ``items`` is a run of records a schema can carry.

    Two or more objects with the same keys *in the same order* (so decoding restores the
    order too; the reference accepts any order and reorders), every key a bare name (a
    schema field cannot be quoted).
    """
    if len(items) < 2 or not isinstance(items[0], dict) or not items[0]:
        return None
    fields = tuple(items[0])
    if not all(isinstance(f, str) and is_bare_key(f) for f in fields):
        return None
    for item in items[1:]:
        if not isinstance(item, dict) or len(item) != len(fields) or tuple(item) != fields:
            return None
    return fields


# ---------------------------------------------------------------------------- layout
# Block layouts take ``indent`` (the indentation of their lines) and ``level`` (how deep the
# value is nested, for the MAX_DEPTH guard); they differ where an array sits in an array.


def _check_level(level: int) -> None:
    # ``level`` counts from 0 at the document's top container.
    if level >= MAX_DEPTH:
        raise TauqError(f"nesting deeper than {MAX_DEPTH} levels")


def _key(key: Any) -> str:
    if not isinstance(key, str):
        raise TauqError(f"object keys must be strings, not {type(key).__name__}")
    return key if is_bare_key(key) else quote(key)


def _field(key: str, value: Any, indent: int, schemas: _Schemas, level: int = 0) -> str:
    """One ``key value`` line of a block object."""
    if isinstance(value, dict):
        text = _block_object(value, indent, schemas, level + 1)
    elif isinstance(value, list):
        text = _block_array(value, indent + 1, schemas, level + 1)
    else:
        text = _scalar(value)
    return f"{INDENT * indent}{_key(key)} {text}"


def _block_object(obj: dict[str, Any], indent: int, schemas: _Schemas, level: int = 0) -> str:
    _check_level(level)
    if not obj:
        return "{}"
    lines = [_field(k, v, indent + 1, schemas, level) for k, v in obj.items()]
    return "{\n" + "\n".join(lines) + "\n" + INDENT * indent + "}"


def _block_array(items: list[Any], indent: int, schemas: _Schemas, level: int) -> str:
    """An array that is an object's value; ``indent`` is the indentation of its items."""
    _check_level(level)
    if not items:
        return "[]"
    fields = _uniform_fields(items)
    close = INDENT * (indent - 1)
    if fields is not None and fields in schemas.names:
        rows = [INDENT * indent + _row(item, fields, level) for item in items]
        return f"[\n{INDENT * indent}!use {schemas.names[fields]}\n" + "\n".join(rows) + f"\n{close}]"
    if all(isinstance(item, dict) for item in items):
        lines = [INDENT * indent + _inline(item, level + 1) for item in items]
        return "[\n" + "\n".join(lines) + f"\n{close}]"
    # Mixed or scalar items on one line. Objects keep their braces here: the reference
    # writes them as bare `key value` runs, which read back as other values.
    parts = []
    for item in items:
        if isinstance(item, list):
            parts.append(_block_array(item, indent, schemas, level + 1))
        else:
            parts.append(_inline(item, level + 1))
    return "[" + " ".join(parts) + "]"


def _row(record: dict[str, Any], fields: Fields, level: int) -> str:
    # Rows are one line each: the decoder ends a row at the line's end. ``level`` is the
    # array's, so the record is one level below it and its values two.
    _check_level(level + 1)
    return " ".join(_inline(record[f], level + 2) for f in fields)


def _inline(value: Any, level: int) -> str:
    """A value on one line: ``{ key value ... }``, ``[a b c]`` or a scalar."""
    if isinstance(value, dict):
        _check_level(level)
        if not value:
            return "{}"
        return "{ " + " ".join(f"{_key(k)} {_inline(v, level + 1)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        _check_level(level)
        return "[" + " ".join(_inline(v, level + 1) for v in value) + "]"
    return _scalar(value)


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return value if is_bare_value(value) else quote(value)
    if isinstance(value, int):
        try:
            return str(int(value))
        except ValueError as exc:  # beyond Python's int-to-str digit limit
            raise TauqError(f"integer too large to write: {exc}") from None
    if isinstance(value, float):
        return format_float(value)
    raise TauqError(f"{type(value).__name__} is not a JSON type")


def format_float(x: float) -> str:
    """A float as serde_json writes it (shortest round-trip digits, ryu's layout).

    Always carries a '.' or an exponent, so that 1.0 reads back as a float, never as 1.
    """
    if not math.isfinite(x):
        raise TauqError(f"{x!r} is not a JSON number")
    sign = "-" if math.copysign(1.0, x) < 0 else ""
    if x == 0.0:
        return sign + "0.0"
    # repr is the shortest string that reads back as x; take its digits and exponent.
    mantissa, _, exp_text = repr(abs(x)).partition("e")
    int_part, _, frac_part = mantissa.partition(".")
    digits = (int_part + frac_part).lstrip("0")
    k = (int(exp_text) if exp_text else 0) - len(frac_part)
    stripped = digits.rstrip("0")
    k += len(digits) - len(stripped)
    digits = stripped
    length = len(digits)
    kk = length + k  # 10^(kk-1) <= |x| < 10^kk
    if 0 <= k and kk <= 16:
        text = digits + "0" * k + ".0"
    elif 0 < kk <= 16:
        text = digits[:kk] + "." + digits[kk:]
    elif -5 < kk <= 0:
        text = "0." + "0" * (-kk) + digits
    else:
        exp10 = kk - 1
        text = digits[0] + ("." + digits[1:] if length > 1 else "") + f"e{'+' if exp10 >= 0 else '-'}{abs(exp10)}"
    return sign + text
