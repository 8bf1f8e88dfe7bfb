"""The verifier's data recipe: QQP split by question, plus generated pairs.

The QQP dev file is split into train and validation by *connected question groups*: two
questions linked by any pair (duplicate or not) end up in the same group, and a whole group
goes to one side. A question seen in training can therefore never reappear in validation,
where it would inflate the measured hit rate. The split depends only on the questions'
text (a hash per group), not on the seed or the file order, so every run, and `reflex eval`
reading the validation file, sees the same split.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from services.verifier.training.generate import generate_pairs

REPO_ROOT = Path(__file__).resolve().parents[3]
# The shared data sits beside the checkout (../shared/data); never copied into the repository.
DEFAULT_QQP_PATH = REPO_ROOT.parent / "shared" / "data" / "qqp_dev.jsonl.gz"
# Hand-written training pairs (ours): real rewordings the generator's templates cannot give.
# Kept apart from the development set (data/devset.jsonl), which is never trained on.
HANDWRITTEN_DIR = Path(__file__).resolve().parent / "data" / "handwritten"


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    duplicate: bool
    source: str = "qqp"  # "qqp", "qqp/transitive", "generated/<category>" or "handwritten/<category>"


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def read_pairs(path: Path) -> list[Pair]:
    """JSONL of {"a", "b", "duplicate"}; ``.gz`` allowed."""
    with _open_text(path) as f:
        return [Pair(str(r["a"]), str(r["b"]), bool(r["duplicate"])) for r in map(json.loads, f) if r]


def read_handwritten(directory: Path = HANDWRITTEN_DIR) -> list[Pair]:
    """Every ``*.jsonl`` under ``directory`` (name order): {"a", "b", "duplicate", "category", "group"}."""
    out = []
    for path in sorted(directory.glob("*.jsonl")):
        with open(path, encoding="utf-8") as f:
            out += [Pair(str(r["a"]), str(r["b"]), bool(r["duplicate"]), f"handwritten/{r['category']}")
                    for r in map(json.loads, f) if r]
    return out


def write_pairs(path: Path, pairs: Iterable[Pair]) -> int:
    """Write JSONL in the format ``reflex eval --pairs`` reads (gzip if the name ends in .gz)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    opener = gzip.open(path, "wt", encoding="utf-8") if path.suffix == ".gz" else open(path, "w", encoding="utf-8")
    with opener as f:
        for p in pairs:
            f.write(json.dumps({"a": p.a, "b": p.b, "duplicate": p.duplicate}, ensure_ascii=False) + "\n")
            n += 1
    return n


def _key(question: str) -> str:
    # Case and surrounding space do not make a different question.
    return " ".join(question.lower().split())


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:  # path compression keeps later finds flat
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, x: str, y: str) -> None:
        rx, ry = self.find(x), self.find(y)
        if rx != ry:
            # The smaller key becomes the root, so the root does not depend on pair order.
            lo, hi = sorted((rx, ry))
            self.parent[hi] = lo


def split_by_question(pairs: list[Pair], validation_fraction: float = 0.1) -> tuple[list[Pair], list[Pair]]:
    """(train, validation): every connected group of questions lands wholly on one side.

    A group goes to validation when the hash of its smallest question falls below
    ``validation_fraction``; with tens of thousands of groups the realised fraction of pairs is
    close to it, except that one giant group (QQP has a few) moves many pairs at once.
    """
    uf = _UnionFind()
    for p in pairs:
        uf.union(_key(p.a), _key(p.b))
    cutoff = int(validation_fraction * 2**64)
    train: list[Pair] = []
    validation: list[Pair] = []
    decided: dict[str, bool] = {}
    for p in pairs:
        root = uf.find(_key(p.a))
        if root not in decided:
            digest = hashlib.blake2b(root.encode(), digest_size=8).digest()
            decided[root] = int.from_bytes(digest, "big") < cutoff
        (validation if decided[root] else train).append(p)
    return train, validation


def questions(pairs: Iterable[Pair]) -> set[str]:
    return {_key(q) for p in pairs for q in (p.a, p.b)}


# A group of questions linked by duplicate labels larger than this is left out of
# ``transitive_duplicates``: one wrong label in a large group makes many wrong pairs.
TRANSITIVE_MAX_GROUP = 20


def transitive_duplicates(pairs: list[Pair], max_group: int = TRANSITIVE_MAX_GROUP) -> list[Pair]:
    """The duplicate pairs QQP implies but does not list: questions linked by duplicate labels
    (A = B, B = C) ask one thing, so A = C too. Real rewordings by different people, which the
    generator's templates cannot give. Only within ``pairs`` (call it on the train split: its
    groups never reach validation), in a deterministic order."""
    uf = _UnionFind()
    text: dict[str, str] = {}
    listed: set[tuple[str, str]] = set()
    for p in pairs:
        ka, kb = _key(p.a), _key(p.b)
        text.setdefault(ka, p.a)
        text.setdefault(kb, p.b)
        listed |= {(ka, kb), (kb, ka)}
        if p.duplicate:
            uf.union(ka, kb)
    groups: dict[str, list[str]] = {}
    for k in sorted(text):
        groups.setdefault(uf.find(k), []).append(k)
    out = []
    for members in groups.values():
        if 2 < len(members) <= max_group:
            out += [Pair(text[a], text[b], True, "qqp/transitive") for i, a in enumerate(members)
                    for b in members[i + 1:] if (a, b) not in listed]
    return out


def build_training_set(
    qqp_train: list[Pair], *, seed: int, generated: int, qqp_limit: int | None = None, transitive: bool = False,
    handwritten: Sequence[Pair] = (), handwritten_repeat: int = 1,
) -> list[Pair]:
    """QQP train (optionally a seeded subsample) plus ``generated`` synthetic pairs, shuffled;
    with ``transitive``, also the duplicates QQP train implies (``transitive_duplicates``);
    plus ``handwritten`` pairs, each ``handwritten_repeat`` times (a few thousand pairs in a pool
    of 80,000 would otherwise weigh too little to move the model)."""
    rng = random.Random(seed)
    qqp = list(qqp_train)
    if qqp_limit is not None and qqp_limit < len(qqp):
        qqp = rng.sample(qqp, qqp_limit)
    if transitive:
        qqp += transitive_duplicates(qqp)
    synthetic = [Pair(g.a, g.b, g.duplicate, f"generated/{g.category}") for g in generate_pairs(generated, seed)]
    out = qqp + synthetic + list(handwritten) * handwritten_repeat
    rng.shuffle(out)
    return out


def batches(pairs: list[Pair], batch_size: int, rng: random.Random, bucket: int = 64) -> Iterator[list[Pair]]:
    """One epoch of shuffled batches of similar length (the last short batch is kept).

    Batches pad to their longest pair, so on CPU mixing a 10-token and an 80-token pair wastes
    most of the compute. Pairs are shuffled, cut into windows of ``bucket`` batches, sorted by
    length inside each window, and the batches then shuffled again: near-uniform lengths per
    batch (about 1.5x faster steps here) while every batch still mixes sources and labels.
    """
    order = list(range(len(pairs)))
    rng.shuffle(order)
    window = batch_size * bucket
    chunks: list[list[int]] = []
    for w in range(0, len(order), window):
        part = sorted(order[w : w + window], key=lambda j: len(pairs[j].a) + len(pairs[j].b))
        chunks += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(chunks)
    for chunk in chunks:
        yield [pairs[j] for j in chunk]
