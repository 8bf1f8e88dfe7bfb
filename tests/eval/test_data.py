"""Reading labelled pairs: formats, sampling and clear errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from commands.eval.data import FOW_CACHE, Pair, PairsError, load_pairs


def write(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_and_gzip_read_alike(tmp_path: Path) -> None:
    rows = [
        {"a": "q1", "b": "q2", "duplicate": True, "category": "c"},
        {"a": "q3", "b": "q4", "duplicate": 0},
    ]
    plain = write(tmp_path / "p.jsonl", rows)
    gz = tmp_path / "p.jsonl.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    expected = [Pair("q1", "q2", True, "c"), Pair("q3", "q4", False, None)]
    assert load_pairs(str(plain)) == expected
    assert load_pairs(str(gz)) == expected


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('\n{"a": "x", "b": "y", "duplicate": false}\n\n')
    assert len(load_pairs(str(path))) == 1


def test_limit_is_a_seeded_sample_in_file_order(tmp_path: Path) -> None:
    path = write(tmp_path / "p.jsonl", [{"a": f"a{i}", "b": f"b{i}", "duplicate": i % 2 == 0} for i in range(50)])
    first = load_pairs(str(path), limit=10)
    assert first == load_pairs(str(path), limit=10)
    assert len(first) == 10
    indices = [int(p.a[1:]) for p in first]
    assert indices == sorted(indices) and indices != list(range(10))
    assert load_pairs(str(path), limit=10, seed=1) != first
    assert len(load_pairs(str(path), limit=500)) == 50


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ('["a", "b"]', "expected a JSON object"),
        ('{"a": "x", "duplicate": true}', "'b' must be a non-empty string"),
        ('{"a": "", "b": "y", "duplicate": true}', "'a' must be a non-empty string"),
        ('{"a": "x", "b": "y", "duplicate": "yes"}', "'duplicate' must be true or false"),
        ('{"a": "x", "b": "y", "duplicate": 2}', "'duplicate' must be true or false"),
        ('{"a": "x", "b": "y", "duplicate": true, "category": 3}', "'category' must be a string"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": "x", "b": "y", "duplicate": true}\n' + line + "\n")
    with pytest.raises(PairsError) as err:
        load_pairs(str(path))
    assert f"{path}:2:" in str(err.value)
    assert message in str(err.value)


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(PairsError, match="no such file"):
        load_pairs(str(tmp_path / "nope.jsonl"))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(PairsError, match="no pairs"):
        load_pairs(str(tmp_path / "empty.jsonl"))


def test_corrupt_gzip(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl.gz"
    path.write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    with pytest.raises(PairsError, match="cannot read"):
        load_pairs(str(path))


def test_fow_cache_pairs() -> None:
    pairs = load_pairs(FOW_CACHE)
    assert len(pairs) == 600
    assert sum(p.duplicate for p in pairs) == 300
    cats = {p.category for p in pairs}
    assert {"paraphrase", "near_repeat", "negation", "entity_swap", "number_date", "scope"} == cats
    # The categories split cleanly into should-hit and traps.
    assert all(p.duplicate == (p.category in ("paraphrase", "near_repeat")) for p in pairs)


def test_qqp_validation_is_the_verifiers_held_out_split(tmp_path: Path) -> None:
    from services.verifier.training.data import read_pairs, split_by_question

    # A small QQP-like file: the split is by question group, computed by the training code.
    rows = [{"a": f"question {i}?", "b": f"question {i} again?", "duplicate": i % 3 == 0} for i in range(300)]
    path = write(tmp_path / "qqp.jsonl", rows)
    pairs = load_pairs("qqp-validation", qqp_path=path)
    _, expected = split_by_question(read_pairs(path))
    assert 0 < len(pairs) < 300
    assert [(p.a, p.b, p.duplicate) for p in pairs] == [(p.a, p.b, p.duplicate) for p in expected]
    with pytest.raises(PairsError, match="REFLEX_QQP_PATH"):
        load_pairs("qqp-validation", qqp_path=tmp_path / "missing.jsonl.gz")


def test_devset_parts_are_named_sources() -> None:
    every = load_pairs("devset")
    test, validation = load_pairs("devset-test"), load_pairs("devset-validation")
    assert len(test) + len(validation) == len(every) >= 400
    assert {(p.a, p.b) for p in test}.isdisjoint({(p.a, p.b) for p in validation})
    assert any(p.duplicate for p in test) and any(not p.duplicate for p in test)
    assert all(p.category for p in every)
    # The headline pair is a validation pair: calibration may see it, the reported test part may not.
    headline = ("How do I center a div in CSS?", "What's the CSS to center a div horizontally and vertically?")
    assert headline in {(p.a, p.b) for p in validation}
