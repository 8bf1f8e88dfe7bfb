"""The data recipe: the QQP split by question, and the seeded generator."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

from services.verifier.training.data import (
    HANDWRITTEN_DIR,
    Pair,
    build_training_set,
    questions,
    read_handwritten,
    read_pairs,
    split_by_question,
    transitive_duplicates,
    write_pairs,
)
from services.verifier.training.generate import generate_pairs

# The examples the model tests assert on (and the issue's): they must be learned, not memorised.
SEED_EXAMPLES = [
    "How to sort ascending?", "How to sort descending?", "Python quicksort", "Rust quicksort",
    "How do I enable 2FA?", "How do I disable 2FA?", "How do I center a div in CSS?",
    "What's the CSS to center a div horizontally and vertically?", "Convert a string to an integer in JavaScript",
    "How do I parse a string into an int in JS?",
]


def test_split_puts_no_question_on_both_sides(qqp_pairs):
    pairs = qqp_pairs
    train, val = split_by_question(pairs, validation_fraction=0.3)
    assert train and val
    assert len(train) + len(val) == len(pairs)
    assert not questions(train) & questions(val)


def test_split_is_deterministic_and_independent_of_order(tmp_path: Path, qqp_pairs):
    pairs = qqp_pairs
    train, val = split_by_question(pairs, 0.3)
    shuffled = list(pairs)
    random.Random(7).shuffle(shuffled)
    train2, val2 = split_by_question(shuffled, 0.3)
    assert set(val) == set(val2) and set(train) == set(train2)
    # Round trip through the JSONL format `reflex eval --pairs` reads.
    path = tmp_path / "val.jsonl.gz"
    assert write_pairs(path, val) == len(val)
    assert read_pairs(path) == val


def test_generator_is_deterministic_for_a_seed():
    a = generate_pairs(400, seed=3)
    assert a == generate_pairs(400, seed=3)
    assert a != generate_pairs(400, seed=4)


def test_generator_mixes_labels_and_hard_negative_kinds():
    pairs = generate_pairs(3000, seed=1)
    labels = Counter(p.duplicate for p in pairs)
    assert 0.35 < labels[True] / len(pairs) < 0.65
    kinds = Counter(p.category for p in pairs if not p.duplicate)
    for kind in ("antonym", "negation", "entity", "number", "scope", "swap"):
        assert kinds[kind] > 0, kind
    assert all(p.a != p.b for p in pairs)
    assert all("{" not in p.a + p.b and "|" not in p.a + p.b for p in pairs)


def test_seed_examples_are_never_generated_verbatim():
    texts = {t.lower().strip() for p in generate_pairs(30000, seed=13) for t in (p.a, p.b)}
    assert not texts & {s.lower() for s in SEED_EXAMPLES}


def test_training_set_is_seeded_and_adds_generated_pairs(qqp_pairs):
    qqp = qqp_pairs
    a = build_training_set(qqp, seed=5, generated=50, qqp_limit=20)
    assert a == build_training_set(qqp, seed=5, generated=50, qqp_limit=20)
    assert Counter(p.source == "qqp" for p in a) == {True: 20, False: 50}


def test_hand_written_pairs_are_repeated_in_the_pool(qqp_pairs):
    hand = [Pair("How do I learn Go?", "best way to pick up golang", True, "handwritten/terse")]
    pool = build_training_set(qqp_pairs, seed=5, generated=10, qqp_limit=20, handwritten=hand, handwritten_repeat=3)
    assert Counter(p.source for p in pool)["handwritten/terse"] == 3
    assert len(pool) == 33


def test_hand_written_pairs_share_no_question_with_the_held_out_sets():
    from fow_cache.data import load_questions

    pairs = read_handwritten()
    assert len(pairs) > 1000 and {p.duplicate for p in pairs} == {True, False}
    assert all(p.a.strip() and p.b.strip() and p.a != p.b for p in pairs)
    # One schema for every part; the category names the kind of paraphrase or trap.
    for path in sorted(HANDWRITTEN_DIR.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            assert set(json.loads(line)) == {"a", "b", "duplicate", "category", "group"}, path.name
    # The development set and fow-cache are what the verifier is measured on: none of their
    # questions (nor the seed examples the model tests assert on) may be trained on.
    devset = [json.loads(line) for line in (HANDWRITTEN_DIR.parent / "devset.jsonl").read_text().splitlines()]
    held_out = questions(Pair(r["a"], r["b"], r["duplicate"]) for r in devset)
    held_out |= questions(Pair(q["a"], q["b"], bool(q["same_answer"])) for q in load_questions())
    held_out |= {" ".join(s.lower().split()) for s in SEED_EXAMPLES}
    assert not questions(pairs) & held_out


def test_transitive_duplicates_are_the_pairs_the_labels_imply():
    P = Pair
    pairs = [P("How do I learn Go?", "What's the best way to learn Go?", True),
             P("what's the best way to learn go?", "How should a beginner learn Golang?", True),
             P("How do I learn Go?", "How do I learn Rust?", False),
             # a group linked only by a non-duplicate label implies nothing
             P("How do I learn Rust?", "How do I learn Zig?", False)]
    implied = transitive_duplicates(pairs)
    assert [(p.a, p.b, p.duplicate, p.source) for p in implied] == [
        ("How do I learn Go?", "How should a beginner learn Golang?", True, "qqp/transitive")]
    # a listed pair, in either order, is never repeated; a group over the size limit adds nothing
    assert transitive_duplicates(pairs + [P(implied[0].b, implied[0].a, False)]) == []
    assert transitive_duplicates(pairs, max_group=2) == []
    assert Counter(p.source for p in build_training_set(pairs, seed=1, generated=0, transitive=True)) == {
        "qqp": 4, "qqp/transitive": 1}


def test_the_combiner_fit_can_weigh_the_hand_written_pairs_as_one_source():
    from services.verifier.training.combiner import (
        SOURCE_WEIGHTS,
        _weights_by_source,
        load_handwritten,
    )

    hand = load_handwritten()
    assert len(hand.a) == len(read_handwritten()) and hand.y.dtype == bool
    assert {t.split("/")[0] for t in hand.tag} == {"handwritten"}
    # each source's weights add up to its total, whatever its size
    w = _weights_by_source([9000, 12000, 6000, len(hand.a)], (*SOURCE_WEIGHTS, 4.0))
    assert abs(w[-len(hand.a):].sum() - 4.0) < 1e-9 and abs(w.sum() - sum(SOURCE_WEIGHTS) - 4.0) < 1e-9
