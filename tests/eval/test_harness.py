"""``reflex eval`` end to end: real embedder and verifier servers, a real Qdrant Edge store.

The labelled file is built so that its answers are certain whatever the verifier's quality:

* every stored question is unrelated to every other (all-MiniLM-L6-v2 cosine < 0.35 between
  any two, far under the 0.5 L2 floor), so each query has at most one candidate;
* "same" pairs ask the identical question (cosine 1): they must hit, on their own entry
  (in cache mode as L1 exact hits, which never reach L2 or the verifier);
* "unrelated" pairs have no candidate above the floor: a miss at every threshold;
* "trap" is a deliberately mislabelled non-duplicate whose ``b`` differs from ``a`` only by a
  doubled space (tokenizers split on whitespace, so both models see identical tokens): it must
  be a false hit;
* "collide" is a duplicate pair whose ``b`` is, up to a doubled space, *another pair's* ``a``:
  in cache mode it hits that other entry, a wrong-entry hit; in pairwise mode it is a miss.

Runs with the verifier use ``--threshold 0`` so that every candidate that passes the L2 floor is
served: the outcome then depends only on which entry is served, which the file fixes, while
the verifier is still called for every candidate. The one check that depends on the verifier's
judgement (identical questions pass the configured threshold) needs the shipped model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reflex.settings import EvalSettings
from commands.eval.cli import main
from services.verifier.cross_encoder import default_model_path as shipped_verifier_path
from tests.support.models import RunningServer

REVERSE = "How do I reverse a list in Python?"
CANCEL = "Cancel my subscription"
PAIRS: list[dict[str, Any]] = [
    {"a": REVERSE, "b": REVERSE, "duplicate": True, "category": "same"},
    {"a": "What is the boiling point of water at sea level?", "b": "What is the boiling point of water at sea level?",
     "duplicate": True, "category": "same"},
    {"a": "How can I improve my credit score quickly?", "b": "How can I improve my credit score quickly?",
     "duplicate": True, "category": "same"},
    {"a": "What is the best way to learn the guitar as an adult?",
     "b": "What is the best way to learn the guitar as an adult?", "duplicate": True, "category": "same"},
    # the same stored question again: one entry in cache mode
    {"a": REVERSE, "b": REVERSE, "duplicate": True, "category": "same"},
    {"a": "Who painted the Mona Lisa?", "b": REVERSE.replace("list in", "list  in"), "duplicate": True,
     "category": "collide"},
    {"a": "What is the capital of Australia?", "b": "How do I change a flat tyre on a bicycle?", "duplicate": False,
     "category": "unrelated"},
    {"a": "Recommend a good recipe for banana bread", "b": "What time zone is Tokyo in?", "duplicate": False,
     "category": "unrelated"},
    {"a": "How many moons does Jupiter have?", "b": "How do I configure nginx as a reverse proxy?",
     "duplicate": False, "category": "unrelated"},
    {"a": CANCEL, "b": CANCEL.replace("my", " my"), "duplicate": False, "category": "trap"},
]
REQUIRED_KEYS = {"pairs", "hit_rate", "false_hit_rate", "precision", "mode", "threshold", "sweep", "per_category",
                 "operating_points", "timings"}


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pairs") / "known.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    return path


def eval_settings(**overrides: Any) -> EvalSettings:
    """Settings for ``reflex eval`` with its model services in process; two torch threads."""
    return EvalSettings.build(**{"torch_threads": 2, **overrides})


@pytest.fixture(scope="module")
def served(embedder_server: RunningServer, verifier_server: RunningServer) -> EvalSettings:
    """Settings pointing ``reflex eval`` at the session's model servers (no model load per run)."""
    return eval_settings(embedder_url=embedder_server.target, verifier_url=verifier_server.target)


@pytest.fixture
def run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Any]:
    def run_eval(settings: EvalSettings, *args: str) -> tuple[int, dict[str, Any] | str, str]:
        rc = main([*args, "--cache-dir", str(tmp_path / "embeddings")], settings)
        out, err = capsys.readouterr()
        if "--json" in args and rc == 0:
            return rc, json.loads(out), err
        return rc, out, err

    yield run_eval


def check_sweep(result: dict[str, Any]) -> None:
    thresholds = [m["threshold"] for m in result["sweep"]]
    assert thresholds == sorted(thresholds) and thresholds[0] == 0.0 and thresholds[-1] == 1.0
    for key in ("hit_rate", "false_hit_rate", "wrong_entry_rate"):
        values = [m[key] for m in result["sweep"]]
        assert all(a >= b for a, b in zip(values, values[1:])), key


@pytest.mark.parametrize("verifier", ["service", "none"])
def test_pairwise_known_answers(run: Any, served: EvalSettings, pairs_file: Path, verifier: str) -> None:
    threshold = "0" if verifier == "service" else "0.9"
    rc, result, _ = run(served, "--pairs", str(pairs_file), "--mode", "pairwise", "--json",
                        "--verifier", verifier, "--threshold", threshold)
    assert rc == 0
    assert REQUIRED_KEYS <= set(result)
    assert all(isinstance(result[k], (int, float)) for k in ("pairs", "hit_rate", "false_hit_rate", "precision"))
    assert result["mode"] == "pairwise" and result["threshold"] == float(threshold)
    assert result["scorer"] == ("verifier" if verifier == "service" else "cosine")
    assert (result["pairs"], result["duplicates"], result["non_duplicates"]) == (10, 6, 4)
    # 5 "same" pairs hit; the trap is a false hit; "collide" and "unrelated" pairs are misses.
    assert (result["hits"], result["duplicate_hits"], result["false_hits"], result["wrong_entry_hits"]) == (6, 5, 1, 0)
    assert result["hit_rate"] == pytest.approx(5 / 6)
    assert result["false_hit_rate"] == pytest.approx(1 / 4)
    assert result["precision"] == pytest.approx(5 / 6)
    cats = result["per_category"]
    assert set(cats) == {"same", "collide", "unrelated", "trap"}
    assert (cats["same"]["pairs"], cats["same"]["hit_rate"], cats["same"]["false_hit_rate"]) == (5, 1.0, None)
    unrelated = cats["unrelated"]
    assert (unrelated["hits"], unrelated["false_hit_rate"], unrelated["hit_rate"]) == (0, 0.0, None)
    assert (cats["collide"]["hits"], cats["trap"]["false_hit_rate"]) == (0, 1.0)
    check_sweep(result)
    if verifier == "service":
        # Only the 6 pairs above the floor reach the verifier; the repeated pair is scored once.
        assert result["timings"]["score_calls"] == 5
        assert "baseline_cosine" in result and result["models"]["verifier"]["model_name"]
    else:
        assert "baseline_cosine" not in result and "verifier" not in result["models"]


@pytest.mark.parametrize("verifier", ["service", "none"])
def test_cache_mode_counts_the_wrong_entry(run: Any, served: EvalSettings, pairs_file: Path, verifier: str) -> None:
    threshold = "0" if verifier == "service" else "0.9"
    rc, result, _ = run(served, "--pairs", str(pairs_file), "--json", "--verifier", verifier, "--threshold", threshold)
    assert rc == 0
    assert result["mode"] == "cache"
    # 9 distinct stored questions (the repeated one is one entry); 5 queries ask one verbatim.
    assert (result["entries"], result["exact_repeats"]) == (9, 5)
    # "collide" now finds the reverse-a-list entry: served, and wrong although labelled duplicate.
    assert (result["hits"], result["right_hits"], result["wrong_entry_hits"], result["false_hits"]) == (7, 5, 1, 1)
    assert result["hit_rate"] == pytest.approx(5 / 6)
    assert result["false_hit_rate"] == pytest.approx(1 / 4)
    assert result["precision"] == pytest.approx(5 / 7)
    assert result["wrong_entry_rate"] == pytest.approx(1 / 6)
    # The "same" queries are stored verbatim: L1 exact hits, served at every threshold.
    top = result["sweep"][-1]
    assert top["threshold"] == 1.0 and top["duplicate_hits"] == 5
    collide = result["per_category"]["collide"]
    assert (collide["hits"], collide["wrong_entry_hits"], collide["hit_rate"], collide["precision"]) == (1, 1, 0.0, 0.0)
    check_sweep(result)
    if verifier == "service":
        # The "same" queries are L1 exact hits and never reach the verifier; "collide" and
        # "trap" each have one candidate.
        assert (result["timings"]["score_calls"], result["timings"]["candidates_scored"]) == (2, 2)
    # No stored question is joined to another by the labels here, so both views agree.
    by_groups = result["by_duplicate_groups"][0]
    assert by_groups["threshold"] == result["threshold"] and by_groups["right_hits"] == result["right_hits"]


def test_cache_mode_duplicate_groups_view(run: Any, served: EvalSettings, tmp_path: Path) -> None:
    # Both pairs ask "Who is the author of Hamlet?"; the second stores it (up to a doubled
    # space), so the first pair is served the second's entry: wrong by the strict rule, right
    # by the labels (a1 ~ b ~ a2).
    b = "Who is the author of Hamlet?"
    rows = [{"a": "Who wrote the play Hamlet?", "b": b, "duplicate": True},
            {"a": b.replace("of", "of "), "b": b, "duplicate": True}]
    path = tmp_path / "groups.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc, result, _ = run(served, "--pairs", str(path), "--json", "--verifier", "none", "--threshold", "0.9")
    assert rc == 0
    assert (result["hits"], result["right_hits"], result["wrong_entry_hits"]) == (2, 1, 1)
    by_groups = result["by_duplicate_groups"][0]
    assert (by_groups["hits"], by_groups["right_hits"], by_groups["wrong_entry_hits"]) == (2, 2, 0)
    assert by_groups["precision"] == 1.0 and result["precision"] == 0.5


def test_the_threshold_for_a_target_false_hit_rate(run: Any, served: EvalSettings, pairs_file: Path) -> None:
    rc, result, _ = run(served, "--pairs", str(pairs_file), "--json", "--verifier", "none",
                        "--target-fhr", "0", "--target-fhr", "0.25")
    assert rc == 0
    strict, loose = result["operating_points"]
    # At 0% the trap (cosine 1) must miss, and so must the identical questions scoring the same.
    assert strict["target_false_hit_rate"] == 0 and strict["false_hit_rate"] == 0.0 and strict["threshold"] > 0.99
    # At 25% the one trap may hit: everything above the floor is served.
    assert loose["false_hit_rate"] == pytest.approx(0.25) and loose["hit_rate"] == pytest.approx(5 / 6)
    # With --verifier none and no --threshold, the headline sits at the first target.
    assert result["threshold"] == strict["threshold"] and result["threshold_source"] == "--target-fhr 0"


def test_text_report_and_plot(run: Any, served: EvalSettings, pairs_file: Path, tmp_path: Path) -> None:
    png = tmp_path / "sweep.png"
    rc, out, _ = run(served, "--pairs", str(pairs_file), "--plot", str(png), "--threshold", "0")
    assert rc == 0
    for fragment in ("10 pairs (6 duplicates, 4 non-duplicates), mode cache", "hit rate", "false-hit rate",
                     "precision", "wrong-entry", "per category", "collide (1)", "operating points",
                     "threshold sweep", "cosine ≤2%", "timings:"):
        assert fragment in out, fragment
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_embeddings_are_cached_between_runs(run: Any, served: EvalSettings, pairs_file: Path) -> None:
    args = ("--pairs", str(pairs_file), "--json", "--verifier", "none", "--mode", "pairwise")
    _, first, _ = run(served, *args)
    _, second, _ = run(served, *args)
    assert first["timings"]["texts_embedded"] == 14  # 9 stored questions + 5 distinct new ones
    assert first["timings"]["texts_from_cache"] == 0
    assert second["timings"]["texts_from_cache"] == 14
    assert second["hit_rate"] == first["hit_rate"] and second["sweep"] == first["sweep"]


@pytest.mark.skipif(
    not (shipped_verifier_path() / "config.json").is_file(),
    reason="needs the trained verifier (services/verifier/model)",
)
def test_shipped_verifier_says_yes_to_identical_questions(run: Any, served: EvalSettings, pairs_file: Path) -> None:
    # Pairwise, so identical questions go through the verifier rather than L1. At 0.5 ("more
    # likely the same than not"), not the configured threshold: the shipped model scores
    # identical questions 0.85-0.91, under the 0.92 default for some of them (see the report).
    rc, result, _ = run(served, "--pairs", str(pairs_file), "--json", "--mode", "pairwise", "--threshold", "0.5")
    assert rc == 0
    assert result["per_category"]["same"]["hit_rate"] == 1.0
    assert result["per_category"]["unrelated"]["hits"] == 0


def test_default_starts_the_embedder_in_process(run: Any, pairs_file: Path) -> None:
    # No REFLEX_EMBEDDER_URL: the harness starts its own embedder on loopback, as a user's run would.
    rc, result, _ = run(eval_settings(), "--pairs", str(pairs_file), "--json", "--verifier", "none",
                        "--threshold", "0.9", "--mode", "pairwise", "--no-embedding-cache")
    assert rc == 0 and result["duplicate_hits"] == 5 and result["models"]["embedder"]["dimension"] == 384


def test_missing_file(run: Any, tmp_path: Path) -> None:
    rc, out, err = run(eval_settings(), "--pairs", str(tmp_path / "nope.jsonl"), "--json")
    assert rc == 2 and out == ""
    assert "reflex eval:" in err and "nope.jsonl: no such file" in err


def test_malformed_line(run: Any, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(PAIRS[0]) + "\n" + '{"a": "x", "b": "y"}\n')
    rc, out, err = run(eval_settings(), "--pairs", str(bad))
    assert rc == 2 and out == ""
    assert f"{bad}:2: 'duplicate' must be true or false" in err


def test_unreachable_service_is_a_clear_error(run: Any, pairs_file: Path) -> None:
    # A port nothing listens on (port 1 needs root to bind, and nothing here serves gRPC on it).
    rc, _, err = run(eval_settings(embedder_url="127.0.0.1:1"), "--pairs", str(pairs_file), "--verifier", "none")
    assert rc == 1 and "embedder unavailable" in err


@pytest.mark.parametrize("args", [["--threshold", "1.5"], ["--target-fhr", "-0.1"], ["--limit", "0"], ["--mode", "x"]])
def test_bad_arguments(run: Any, pairs_file: Path, args: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run(eval_settings(), "--pairs", str(pairs_file), *args)
    assert exit_info.value.code == 2


@pytest.mark.skipif(
    not (shipped_verifier_path() / "decision.json").is_file(),
    reason="needs the trained verifier and its decision model (services/verifier/model)",
)
def test_cache_mode_never_does_worse_than_cosine_top1(run: Any, served: EvalSettings) -> None:
    # A small fixed set (the devset's test part, 366 pairs, every a stored, every b queried):
    # at the shipped threshold, the gateway's decision rule serves at least as precisely as
    # the nearest entry would at the same number of hits, from the same run.
    rc, result, _ = run(served, "--pairs", "devset-test", "--json")
    assert rc == 0
    assert result["threshold"] == 0.96 and result["models"]["verifier"]["decision_model"]
    same = result["baseline_cosine_at_same_hits"]
    assert result["hits"] > result["exact_repeats"] and same["hits"] <= result["hits"]
    assert result["precision"] >= same["precision"]
    assert result["precision"] >= 0.95 and result["hit_rate"] > 0.3
