"""The verifier rules: each lowers only what it should, never raises, and has its own switch."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reflex.settings import RuleSettings
from services.verifier.rules import (
    PENALTY,
    RULES,
    antonyms_differ,
    entities_differ,
    apply_rules,
    enabled_rules,
    negation_differs,
    numbers,
    numbers_differ,
)

ALL_ON = RuleSettings(**{r.name: True for r in RULES})
ALL_OFF = RuleSettings(**{r.name: False for r in RULES})

# (rule name, query, candidate that the rule must catch)
CAUGHT = [
    ("numbers", "How do I install Python 3.8 on Ubuntu?", "How do I install Python 3.12 on Ubuntu?"),
    ("numbers", "Convert 5 km to miles", "Convert 50 km to miles"),
    ("numbers", "undo the last two commits", "undo the last 3 commits"),
    ("negation", "Should I eat before a run?", "Should I not eat before a run?"),
    ("negation", "Why does my build pass?", "Why doesn't my build pass?"),
    ("antonyms", "How to sort ascending?", "How to sort descending?"),
    ("antonyms", "How do I enable 2FA?", "How do I disable 2FA?"),
    ("antonyms", "undo the commit and keep the changes", "undo the commit and discard the changes"),
    ("entities", "Python quicksort", "Rust quicksort"),
    ("entities", "How do I install Docker on Windows?", "How do I install Docker on macOS?"),
]
# Pairs no rule may touch: the same question in other words.
UNTOUCHED = [
    ("How do I center a div in CSS?", "What's the CSS to center a div horizontally and vertically?"),
    ("Convert a string to an integer in JavaScript", "How do I parse a string into an int in JS?"),
    ("Convert 5 km to miles", "how many miles is five km"),
    ("Sort a list in Python 3", "How do I sort a list in Python?"),
    ("How do I add and remove items in a list?", "remove and add list items"),
    ("Why can't I log in?", "Why can't I sign in?"),
    ("How do I read a file in JS?", "javascript: read a file"),
]


@pytest.mark.parametrize(("rule", "query", "candidate"), CAUGHT)
def test_each_rule_lowers_what_it_targets_and_its_setting_turns_it_off(rule, query, candidate):
    only_this = RuleSettings(**{r.name: r.name == rule for r in RULES})
    assert apply_rules(query, [candidate], [0.9], only_this)[0] == pytest.approx(0.9 * PENALTY)
    assert apply_rules(query, [candidate], [0.9], ALL_OFF) == [0.9]
    # Symmetric: which side is the cached one does not matter.
    assert apply_rules(candidate, [query], [0.9], only_this)[0] < 0.9


@pytest.mark.parametrize(("query", "candidate"), UNTOUCHED)
def test_rules_leave_paraphrases_alone(query, candidate):
    assert apply_rules(query, [candidate], [0.9], ALL_ON) == [0.9]


def test_rules_act_per_candidate():
    scores = apply_rules("How do I enable 2FA?", ["How do I disable 2FA?", "How can I turn on 2FA?"], [0.9, 0.8], ALL_ON)
    assert scores[0] < 0.9 * PENALTY + 1e-9
    assert scores[1] == 0.8


def test_enabled_rules_follows_settings():
    assert enabled_rules(ALL_OFF) == []
    assert enabled_rules(ALL_ON) == [r.name for r in RULES]
    only_negation = RuleSettings(**{r.name: r.name == "negation" for r in RULES})
    assert enabled_rules(only_negation) == ["negation"]


def test_number_words_and_versions_are_normalised():
    assert numbers("wait five seconds") == numbers("wait 5 seconds") == frozenset({"5"})
    assert numbers("Node 18 vs Python 3.12") == frozenset({"18", "3.12"})
    assert not numbers_differ("sort a list in Python 3", "sort a list in Python")
    assert not negation_differs("Why can't I log in?", "Why can't I sign in?")
    assert not antonyms_differ("add then remove", "remove then add")
    assert not entities_differ("C++ vs C#", "C# or C++?")
    assert not entities_differ("sort a list in Python", "how do I sort a list")


@given(st.text(max_size=60), st.lists(st.tuples(st.text(max_size=60), st.floats(0, 1)), max_size=5))
def test_rules_never_raise_a_score(query, cands):
    candidates = [c for c, _ in cands]
    scores = [s for _, s in cands]
    out = apply_rules(query, candidates, scores, ALL_ON)
    assert len(out) == len(scores)
    assert all(0 <= new <= old for new, old in zip(out, scores, strict=True))
