"""Hypothesis: round trips over arbitrary JSON values, and a decoder that never hangs or
crashes. Hangs are caught by the per-test timeout (no timed assertions: every parser step
consumes a token, so a hang would be a bug, not slowness)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reflex.tauq import TauqError, dumps, loads

from .conftest import strict_equal
from .strategies import json_values

SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

pytestmark = pytest.mark.timeout(120)


@SETTINGS
@given(json_values())
def test_loads_dumps_round_trips_exactly(value: object) -> None:
    text = dumps(value)
    assert strict_equal(loads(text), value), text


@SETTINGS
@given(json_values())
def test_dumps_is_stable_through_a_round_trip(value: object) -> None:
    text = dumps(value)
    assert dumps(loads(text)) == text


def _decodes_or_raises_tauq_error(text: str) -> None:
    try:
        value = loads(text)
    except TauqError as exc:
        # one error type, always with a position
        assert exc.line is not None and exc.column is not None
        return
    # whatever decodes is a JSON value (no NaN/inf, no foreign types)
    json.dumps(value, allow_nan=False)


@settings(max_examples=1000, deadline=None)
@given(st.text())
def test_decoder_on_arbitrary_text(text: str) -> None:
    _decodes_or_raises_tauq_error(text)


# The characters the grammar cares about, so that random text reaches the parser's corners.
TAUQ_ALPHABET = st.sampled_from(
    list('{}[]:;,"#!\\\n\r\t -01.eE+') + ["---", "!def ", "!use ", "R ", "a ", "true ", "null "]
)


@settings(max_examples=1000, deadline=None)
@given(st.lists(TAUQ_ALPHABET, max_size=60).map("".join))
def test_decoder_on_grammar_soup(text: str) -> None:
    _decodes_or_raises_tauq_error(text)


@settings(max_examples=300, deadline=None)
@given(json_values(), st.data())
def test_decoder_on_damaged_documents(value: object, data: st.DataObject) -> None:
    text = dumps(value)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(text)))
        edit = data.draw(st.sampled_from(["delete", "insert", "replace"]))
        piece = data.draw(st.one_of(TAUQ_ALPHABET, st.text(max_size=2)))
        if edit == "delete":
            text = text[:at] + text[at + 1 :]
        elif edit == "insert":
            text = text[:at] + piece + text[at:]
        else:
            text = text[:at] + piece + text[at + len(piece) :]
    _decodes_or_raises_tauq_error(text)
