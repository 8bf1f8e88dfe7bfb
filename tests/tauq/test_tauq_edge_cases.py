"""Beyond the reference: values it loses, and the notation's corners, round-trip exactly."""

from __future__ import annotations

import math
import sys

import pytest

from reflex.tauq import MAX_DEPTH, TauqError, dumps, loads

from .conftest import read_jsonl, strict_equal

EDGE_CASES = read_jsonl("tauq_edge_cases.jsonl")


@pytest.mark.parametrize("value", EDGE_CASES, ids=[f"edge{i}" for i in range(len(EDGE_CASES))])
def test_edge_case_round_trips(value: object) -> None:
    text = dumps(value)
    assert strict_equal(loads(text), value), text


def test_objects_inside_mixed_arrays_keep_their_braces() -> None:
    # The reference writes `c [1 d e]`, which reads back as [1, "d", "e"].
    assert dumps({"c": [1, {"d": "e"}]}) == "c [1 { d e }]"


def test_any_string_is_a_key() -> None:
    keys = ["", " ", "a.b", "with space", "123", "-1", "true", "null", "inf", "NaN", "---", "!def", "#", ":",
            '"', "\\", "line\nbreak", "\x00", "日本語", "a-b", "_"]
    value = {k: i for i, k in enumerate(keys)}
    assert strict_equal(loads(dumps(value)), value)
    nested = {"outer": value, "list": [value, value]}
    assert strict_equal(loads(dumps(nested)), nested)


def test_top_level_keys_that_are_not_names_brace_the_object() -> None:
    # Top-level `key value` lines need bare-word keys; anything else goes in one `{ }`.
    assert dumps({"a.b": 1}) == '{\n  "a.b" 1\n}'
    assert dumps({}) == "{}"
    assert loads("{}") == {}


@pytest.mark.parametrize(
    "number",
    [0, -1, 2**63 - 1, -(2**63), 2**64 - 1, 2**64, 2**200, -(2**200), 10**300],
)
def test_integers_of_any_size_stay_exact_integers(number: int) -> None:
    assert strict_equal(loads(dumps({"n": number})), {"n": number})
    assert strict_equal(loads(dumps([number, number])), [number, number])


@pytest.mark.parametrize(
    "number",
    [1.0, -1.0, 0.0, 100.0, 600.0, 1e16, 1e17, 1.5e300, 1e-5, 1e-7, 5e-324, 1.7976931348623157e308,
     0.1, 123456.789, 2.0**53, -2.5e-10],
)
def test_floats_stay_floats_with_their_exact_value(number: float) -> None:
    text = dumps({"f": number})
    back = loads(text)["f"]
    assert type(back) is float and back == number, text


def test_negative_zero_keeps_its_sign() -> None:
    back = loads(dumps({"z": -0.0}))["z"]
    assert math.copysign(1.0, back) == -1.0


def test_booleans_are_not_integers() -> None:
    value = [True, 1, 1.0, False, 0, 0.0, None]
    assert strict_equal(loads(dumps({"v": value})), {"v": value})


@pytest.mark.parametrize("text", ["true", "null", "1", "-0", "1e5", ".5", "1.", "+1", "Infinity", "nan", "---",
                                  "!use", "#c", "a b", "a,b", "a:b", '"', "\\", "", "é"])
def test_strings_that_look_like_other_things_are_quoted(text: str) -> None:
    for value in ({"s": text}, [text, 1], {"rows": [{"a": text}, {"a": text}]}, text):
        assert strict_equal(loads(dumps(value)), value)


def test_records_are_written_as_schema_rows_in_their_key_order() -> None:
    value = {"users": [{"id": 1, "name": "Ann"}, {"id": 2, "name": "Bo"}]}
    text = dumps(value)
    assert text == "!def User id name\n---\nusers [\n  !use User\n  1 Ann\n  2 Bo\n]"
    # Same keys in another order: no schema (a schema would reorder them on the way back).
    shuffled = {"users": [{"id": 1, "name": "Ann"}, {"name": "Bo", "id": 2}]}
    assert strict_equal(loads(dumps(shuffled)), shuffled)
    assert "!def" not in dumps(shuffled)


def test_schema_names_never_collide() -> None:
    value = {
        "role": [{"a": 1}, {"a": 2}],
        "roles": [{"b": 1}, {"b": 2}],
        "role2": [{"c": 1}, {"c": 2}],
        "items": [{"d": 1}, {"d": 2}],
        "_": [{"e": 1}, {"e": 2}],
        "123": [{"f": 1}, {"f": 2}],
        "infs": [{"g": 1}, {"g": 2}],
    }
    text = dumps(value)
    names = [line.split()[1] for line in text.splitlines() if line.startswith("!def")]
    assert len(names) == len(set(names)) == len(value)
    assert strict_equal(loads(text), value)


def test_records_with_keys_that_cannot_be_fields_are_written_inline() -> None:
    value = [{"a.b": 1, "c": 2}, {"a.b": 3, "c": 4}]
    assert "!def" not in dumps(value)
    assert strict_equal(loads(dumps(value)), value)


def test_top_level_values() -> None:
    for value in ([], {}, "", "word", "two words", 0, -1.5, True, None, [1], [{"a": 1}], [[]], [{}], [{}, {}]):
        assert strict_equal(loads(dumps(value)), value), value


def test_reads_hand_written_documents() -> None:
    text = (
        "# a comment line\r\n"
        "name: Ann   # trailing comment\r\n"
        "tags [a, b, c]; size 3\n"
        "nested { k: v, n: [1 2] }\n"
    )
    assert strict_equal(
        loads(text), {"name": "Ann", "tags": ["a", "b", "c"], "size": 3, "nested": {"k": "v", "n": [1, 2]}}
    )


def test_reads_top_level_rows_use_and_short_rows() -> None:
    assert loads("!def P x y\n1 2\n3\n") == [{"x": 1, "y": 2}, {"x": 3}]
    assert loads("!def P x y\n---\nps [\n !use P\n 1 2 3 4\n]") == {"ps": [{"x": 1, "y": 2}, {"x": 3, "y": 4}]}
    assert loads("!def P x\n---\n!use P\n1\n2") == [{"x": 1}, {"x": 2}]


def test_reads_unknown_escapes_as_the_reference_does() -> None:
    assert loads(r'"a\qb\u0041"') == "a\\qb\\u0041"


def nested(kind: str, depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value] if kind == "list" else {"k": value}
    return value


@pytest.mark.parametrize("kind", ["list", "dict"])
def test_nesting_up_to_max_depth_round_trips(kind: str) -> None:
    value = nested(kind, MAX_DEPTH)
    assert strict_equal(loads(dumps(value)), value)
    inner = {"wrap": [1, nested(kind, MAX_DEPTH - 2)]}
    assert strict_equal(loads(dumps(inner)), inner)
    rows = {"rows": [{"a": nested(kind, MAX_DEPTH - 3)}, {"a": 1}]}
    assert strict_equal(loads(dumps(rows)), rows)


@pytest.mark.parametrize("kind", ["list", "dict"])
def test_nesting_beyond_max_depth_is_a_tauq_error_both_ways(kind: str) -> None:
    value = nested(kind, MAX_DEPTH + 1)
    with pytest.raises(TauqError):
        dumps(value)
    with pytest.raises(TauqError):
        dumps({"a": [1, value]})
    text = "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)
    with pytest.raises(TauqError):
        loads(text)


@pytest.mark.parametrize("top", ["object", "table"])
def test_encoder_and_decoder_agree_on_the_depth_limit_for_records(top: str) -> None:
    def build(depth: int) -> object:
        # records at nesting `depth` (the array holding them at depth - 1)
        value: object = [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
        for _ in range(depth - 2):
            value = {"k": value} if top == "object" else [value]
        return value

    fits = build(MAX_DEPTH)
    assert strict_equal(loads(dumps(fits)), fits)
    too_deep = build(MAX_DEPTH + 1)
    with pytest.raises(TauqError):
        dumps(too_deep)

    def by_hand(objects: int) -> str:
        # top-level entries (depth 1), `objects` nested objects, the array, then its records
        return "!def R a\n---\n" + "k {\n" * objects + "rows [\n!use R\n1\n2\n]" + "}" * objects

    assert loads(by_hand(MAX_DEPTH - 3))  # records at MAX_DEPTH
    with pytest.raises(TauqError, match="nesting"):
        loads(by_hand(MAX_DEPTH - 2))  # records at MAX_DEPTH + 1


def test_very_deep_input_is_a_tauq_error_not_a_recursion_error() -> None:
    deep = sys.getrecursionlimit() * 10
    for text in ("[" * deep, "{a " * deep, "a " + "[" * deep + "]" * deep, "!def R x\n" + "[" * deep):
        with pytest.raises(TauqError):
            loads(text)
    with pytest.raises(TauqError):
        dumps(nested("list", deep))
    with pytest.raises(TauqError):
        dumps({"x": [[1, nested("list", deep)]]})


@pytest.mark.parametrize(
    "value",
    [float("nan"), float("inf"), {"a": float("-inf")}, {1: 2}, {None: 1}, {"s": {1, 2}}, b"bytes", (1, 2), object()],
)
def test_values_json_cannot_hold_are_tauq_errors(value: object) -> None:
    with pytest.raises(TauqError):
        dumps(value)


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ("a [1 2", 1, 3),
        ('a "open', 1, 3),
        ("a 1\nb }", 2, 3),
        ("a {\n  k\n}", 2, 4),
        ("!use Nope\n", 1, 6),
        ("!frob x", 1, 1),
        ("!def R\n", 1, 1),
        ("x NaN", 1, 3),
        ("x 1e999", 1, 3),
        ("a : : 1", 1, 5),
    ],
)
def test_decode_errors_say_where(text: str, line: int, column: int) -> None:
    with pytest.raises(TauqError) as info:
        loads(text)
    assert (info.value.line, info.value.column) == (line, column), str(info.value)
    assert f"line {line}, column {column}" in str(info.value)
