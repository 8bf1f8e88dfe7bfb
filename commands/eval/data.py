"""Reading labelled pairs: JSONL files (optionally gzipped) or the bundled fow-cache set."""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

# `--pairs fow-cache` reads the 600 single-question pairs shipped in the fow-cache package
# (300 should-hit, 300 traps). It is an external check the verifier is never trained on.
FOW_CACHE = "fow-cache"
# `--pairs qqp-validation` is the validation side of the verifier's own train/validation
# split of the QQP dev file (REFLEX_QQP_PATH), computed by the training code itself so the
# two can never disagree about which questions were held out.
QQP_VALIDATION = "qqp-validation"
# `--pairs devset-test` / `devset-validation` / `devset`: the hand-written development set
# (services/verifier/training/data/devset.jsonl, 747 pairs of coding-agent and chat prompts)
# split once by pair group. The decision model is calibrated and its threshold picked on the
# validation part; the test part is never read by training, so it is the one to report.
DEVSET = "devset"
DEVSET_TEST = "devset-test"
DEVSET_VALIDATION = "devset-validation"
DEVSET_SOURCES = {DEVSET: None, DEVSET_TEST: "test", DEVSET_VALIDATION: "validation"}
NAMED_SOURCES = (FOW_CACHE, QQP_VALIDATION, *DEVSET_SOURCES)


@dataclass(frozen=True, slots=True)
class Pair:
    a: str  # the question stored in the cache
    b: str  # the new question asked
    duplicate: bool  # True: the answer cached for `a` is right for `b`
    category: str | None = None


class PairsError(ValueError):
    """The pairs cannot be read; the message names the file and line."""


def load_pairs(source: str, *, limit: int | None = None, seed: int = 0, qqp_path: Path | None = None) -> list[Pair]:
    """All pairs from ``source`` (a path, or one of NAMED_SOURCES: ``fow-cache``,
    ``qqp-validation``, ``devset``, ``devset-test``, ``devset-validation``).

    With ``limit``, a seeded random sample of that many pairs, kept in file order. A sample
    rather than the first N because labelled files are often grouped or sorted (by label,
    by source), and the head of such a file would not be representative; the seed keeps
    the same sample from run to run so results stay comparable.
    """
    if source == FOW_CACHE:
        pairs = _load_fow_cache()
    elif source == QQP_VALIDATION:
        pairs = _load_qqp_validation(qqp_path)
    elif source in DEVSET_SOURCES:
        pairs = _load_devset(DEVSET_SOURCES[source])
    else:
        pairs = list(_read_jsonl(Path(source)))
    if not pairs:
        raise PairsError(f"{source}: no pairs")
    if limit is not None and limit < len(pairs):
        keep = sorted(random.Random(seed).sample(range(len(pairs)), limit))
        pairs = [pairs[i] for i in keep]
    return pairs


def _open_text(path: Path) -> IO[str]:
    # gzip is detected by its magic bytes, not the name, so a renamed file still reads.
    with path.open("rb") as raw:
        magic = raw.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open("r", encoding="utf-8")


def _read_jsonl(path: Path) -> Iterator[Pair]:
    if not path.is_file():
        raise PairsError(f"{path}: no such file")
    try:
        with _open_text(path) as lines:
            for lineno, line in enumerate(lines, 1):
                if line.strip():
                    yield parse_pair(line, where=f"{path}:{lineno}")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise PairsError(f"{path}: cannot read ({exc})") from exc


def parse_pair(line: str, *, where: str) -> Pair:
    """One JSONL line ``{"a", "b", "duplicate"[, "category"]}``; raise PairsError naming ``where``."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise PairsError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise PairsError(f"{where}: expected a JSON object with keys a, b, duplicate")
    for key in ("a", "b"):
        if not isinstance(obj.get(key), str) or not obj[key].strip():
            raise PairsError(f"{where}: {key!r} must be a non-empty string")
    duplicate = obj.get("duplicate")
    # 0/1 is accepted because many exports of QQP-style data label with integers.
    if isinstance(duplicate, bool):
        pass
    elif isinstance(duplicate, int) and duplicate in (0, 1):
        duplicate = bool(duplicate)
    else:
        raise PairsError(f"{where}: 'duplicate' must be true or false (got {duplicate!r})")
    category = obj.get("category")
    if category is not None and not isinstance(category, str):
        raise PairsError(f"{where}: 'category' must be a string when present")
    return Pair(a=obj["a"], b=obj["b"], duplicate=duplicate, category=category or None)


def _load_fow_cache() -> list[Pair]:
    try:
        from fow_cache.data import load_questions
    except ImportError:
        raise PairsError("fow-cache: the fow-cache package is not installed (pip install fow-cache)") from None
    return [
        Pair(a=q["a"], b=q["b"], duplicate=bool(q["same_answer"]), category=q.get("category"))
        for q in load_questions()
    ]


def _load_qqp_validation(qqp_path: Path | None) -> list[Pair]:
    from services.verifier.training.data import (
        DEFAULT_QQP_PATH,
        read_pairs,
        split_by_question,
    )

    path = qqp_path or DEFAULT_QQP_PATH
    if not path.is_file():
        raise PairsError(f"qqp-validation: no QQP file at {path} (set REFLEX_QQP_PATH)")
    try:
        _, validation = split_by_question(read_pairs(path))
    except (OSError, EOFError, ValueError, KeyError) as exc:
        raise PairsError(f"qqp-validation: cannot read {path} ({exc})") from exc
    return [Pair(a=p.a, b=p.b, duplicate=p.duplicate) for p in validation]


def _load_devset(split: str | None) -> list[Pair]:
    """The development set (or one part of it), read by the training code's own loader, which
    also checks that every group sits on the side its hash puts it."""
    from services.verifier.training.combiner import DEVSET_PATH, load_devset

    try:
        dev = load_devset(split)
    except (OSError, ValueError, KeyError) as exc:
        raise PairsError(f"devset: cannot read {DEVSET_PATH} ({exc})") from exc
    return [Pair(a=a, b=b, duplicate=bool(y), category=c or None)
            for a, b, y, c in zip(dev.a, dev.b, dev.y.tolist(), dev.tag, strict=True)]
