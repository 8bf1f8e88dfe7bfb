"""The verifier's decision model: one calibrated probability from every signal L2 and L3 have.

The cross-encoder alone is a weak judge of the rewordings real users send, and the cosine
that L2 already computed carries information it misses. This module combines, for each
(query, candidate) pair:

- the cross-encoder's logit for (query, candidate). The other order (candidate, query) is
  supported as a feature too, but the shipped model does not use it: on validation it bought
  nothing (41.4% of the devset's validation paraphrases at the threshold with one order, 41.9%
  with both: one pair) and it doubles the cross-encoder's cost;
- the embedder's cosine (the gateway has it already; nothing is recomputed);
- lexical overlap: token Jaccard and containment (what share of the shorter side's tokens the
  other side has), which separate near repeats from rewordings;
- the flags of ``services.verifier.rules`` (numbers, negation, antonyms, entities differ),
  as 0/1 inputs instead of a fixed penalty, so that their weight is learned.

into a logistic regression (weights in ``model/decision.json``, trained and calibrated by
``services/verifier/training/combiner.py``), then a temperature/bias (Platt) calibration
fitted on validation data, so that ``threshold`` reads as a probability of "same question".

Runtime cost is a dot product of ~12 numbers and a few regexes per pair: negligible next to
the cross-encoder. numpy and the standard library only; nothing here imports torch.

Cache mode (several stored questions close to one query) is handled by ``choose``: see there.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reflex import decision_rule

ARTIFACT_NAME = "decision.json"
ARTIFACT_VERSION = 1

# Logits are clipped before use: the service sees sigmoid(logit) in fp16/fp32, which
# saturates near |logit| = 9 to 16, so anything past this is "certain" either way.
LOGIT_CLIP = 9.0

_TOKEN = re.compile(r"[a-z0-9]+(?:[.+#'’][a-z0-9]+)*[+#]*")

# Rule flags in the order they appear as features; names are those of services.verifier.rules.RULES.
RULE_NAMES = ("numbers", "negation", "antonyms", "entities")

# Every feature the extractor can produce. An artifact names the ones it uses, in its order.
ALL_FEATURES = (
    "ce_qc",         # logit(query, candidate), clipped
    "ce_mean",       # (logit(q, c) + logit(c, q)) / 2
    "ce_min",        # min of the two orders: the more sceptical reading
    "cosine",        # embedder cosine
    "jaccard",       # |A ∩ B| / |A ∪ B| over word tokens
    "containment",   # |A ∩ B| / min(|A|, |B|)
    "rule_numbers",
    "rule_negation",
    "rule_antonyms",
    "rule_entities",
    "any_rule",      # 1 when any rule fired
)


def default_artifact_path() -> Path:
    return Path(__file__).resolve().parent / "model" / ARTIFACT_NAME


def logit_from_probability(p: float | np.ndarray) -> np.ndarray:
    """Inverse sigmoid, clipped: for callers that only have the cross-encoder's probability."""
    q = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.clip(np.log(q) - np.log1p(-q), -LOGIT_CLIP, LOGIT_CLIP)


def _tokens(text: str) -> set[str]:
    return set(_TOKEN.findall(text.lower().replace("’", "'")))


# Spellings of one question that "the same question" treats as one (_normalised): contractions
# (the tokenizers split "what's" into "what ' s"), and the how-to frames of a first person
# ("how do I", "how can we", "how does one", "how to"). Not "you" ("how do you handle long
# contexts?" may ask the assistant about itself) and not "would"/"should" (they ask for an
# opinion or advice). On QQP's dev file these made 150 duplicate pairs identical, and the 9
# labelled non-duplicates among them are its label noise ("How do I invest my money wisely?" /
# "How can I invest my money wisely?"); no trap of the devset or of 30,000 generated pairs.
_CONTRACTIONS = (
    (re.compile(r"\b(what|how|where|who|when|why|it|that|there|here)'s\b"), r"\1 is"),
    (re.compile(r"n't\b"), " not"),
    (re.compile(r"'re\b"), " are"),
    (re.compile(r"'m\b"), " am"),
    (re.compile(r"'ve\b"), " have"),
    (re.compile(r"'ll\b"), " will"),
)
_HOW_TO = re.compile(r"^how (?:(?:do|can) (?:i|we|one)|does one|to)\b")


def _normalised(text: str) -> str:
    """What "the same question" compares (``DecisionModel.prepare``): whitespace collapsed,
    lower case, one final "?" or "." dropped, contractions spelt out and the how-to frame made
    one. Both models read lower-cased text (their tokenizers are uncased), so case carries
    nothing they could tell apart; a final "?" or "." is sentence punctuation. Anything else
    stays: "!" (Swift's and Kotlin's force-unwrap, a factorial), articles ("an A record" is not
    "a record"), operators and inner punctuation ("a -= b" is not "a = -b")."""
    folded = " ".join(text.split()).lower().replace("’", "'")
    if folded.endswith(("?", ".")):
        folded = folded[:-1].rstrip()
    for pattern, spelt in _CONTRACTIONS:
        folded = pattern.sub(spelt, folded)
    return " ".join(_HOW_TO.sub("how to", folded).split())


def lexical_overlap(query: str, candidate: str) -> tuple[float, float]:
    """(Jaccard, containment) of the two texts' word-token sets."""
    a, b = _tokens(query), _tokens(candidate)
    if not a or not b:
        return 0.0, 0.0
    inter = len(a & b)
    return inter / len(a | b), inter / min(len(a), len(b))


def rule_flags(query: str, candidate: str) -> dict[str, bool]:
    """Which of the verifier's rules fire on this pair (each a pure function of the texts)."""
    # Imported here, not at module load: rules.py pulls in the settings module, which callers
    # that only score cached features (training, notebooks) should not need.
    from services.verifier import rules

    by_name = {r.name: r.fires for r in rules.RULES}
    return {name: bool(by_name[name](query, candidate)) for name in RULE_NAMES}


def pair_features(query: str, candidate: str, ce_qc: float, cosine: float, ce_cq: float | None = None
                  ) -> dict[str, float]:
    """Every feature in ALL_FEATURES for one pair. ``ce_qc`` is the cross-encoder logit for
    (query, candidate), ``ce_cq`` the one for (candidate, query) when the caller has it (the
    two-order features then use it; without it they read the one order twice); ``cosine`` is
    the embedder's."""
    lq = float(np.clip(ce_qc, -LOGIT_CLIP, LOGIT_CLIP))
    lc = lq if ce_cq is None else float(np.clip(ce_cq, -LOGIT_CLIP, LOGIT_CLIP))
    jac, cont = lexical_overlap(query, candidate)
    flags = rule_flags(query, candidate)
    out = {"ce_qc": lq, "ce_mean": (lq + lc) / 2, "ce_min": min(lq, lc), "cosine": float(cosine), "jaccard": jac,
           "containment": cont}
    out.update({f"rule_{k}": float(v) for k, v in flags.items()})
    out["any_rule"] = float(any(flags.values()))
    return out


@dataclass(frozen=True)
class DecisionModel:
    """A calibrated logistic regression over named features, as stored in decision.json.

    p = sigmoid(a * (w · (x - mean) / scale + bias) + b), where (a, b) is the Platt calibration.
    """

    features: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float
    calibration_a: float
    calibration_b: float
    threshold: float
    margin: float
    meta: dict

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_dict(cls, d: dict) -> DecisionModel:
        if d.get("version") != ARTIFACT_VERSION:
            raise ValueError(f"decision model: artifact version {d.get('version')!r}, expected {ARTIFACT_VERSION}")
        feats = tuple(d["features"])
        unknown = set(feats) - set(ALL_FEATURES)
        if unknown:
            raise ValueError(f"decision model: unknown features {sorted(unknown)}")
        n = len(feats)
        arrays = [np.asarray(d[k], dtype=np.float64) for k in ("mean", "scale", "weights")]
        if any(a.shape != (n,) for a in arrays):
            raise ValueError("decision model: mean/scale/weights must each have one value per feature")
        return cls(feats, *arrays, float(d["bias"]), float(d["calibration"]["a"]), float(d["calibration"]["b"]),
                   float(d["threshold"]), float(d.get("margin", 0.0)), dict(d.get("meta", {})))

    @classmethod
    def load(cls, path: Path | None = None) -> DecisionModel:
        path = path or default_artifact_path()
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def to_dict(self) -> dict:
        return {"version": ARTIFACT_VERSION, "features": list(self.features), "mean": self.mean.tolist(),
                "scale": self.scale.tolist(), "weights": self.weights.tolist(), "bias": self.bias,
                "calibration": {"a": self.calibration_a, "b": self.calibration_b}, "threshold": self.threshold,
                "margin": self.margin, "meta": self.meta}

    # ------------------------------------------------------------------ scoring
    def matrix(self, rows: Sequence[dict[str, float]]) -> np.ndarray:
        return np.array([[r[f] for f in self.features] for r in rows], dtype=np.float64).reshape(-1, len(self.features))

    def raw_logit(self, x: np.ndarray) -> np.ndarray:
        """The regression's own logit (before calibration) for a feature matrix."""
        return ((x - self.mean) / self.scale) @ self.weights + self.bias

    def probability_from_matrix(self, x: np.ndarray) -> np.ndarray:
        z = self.calibration_a * self.raw_logit(x) + self.calibration_b
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))

    @property
    def needs_both_orders(self) -> bool:
        """Whether the cross-encoder must also score (candidate, query)."""
        return any(f in ("ce_mean", "ce_min") for f in self.features)

    def prepare(self, query: str, candidates: Sequence[str], cosines: Sequence[float]) -> PreparedPairs:
        """The half of the decision that needs only the texts and the cosines (the regexes of the
        overlap and rule features: the costly part), computed once per Score call; both
        ``PreparedPairs.upper_bounds`` and ``PreparedPairs.probabilities`` then only do arithmetic."""
        if len(candidates) != len(cosines):
            raise ValueError("decision model: one cosine per candidate is needed")
        rows = [pair_features(query, c, 0.0, s) for c, s in zip(candidates, cosines)]
        # The same text (up to whitespace, case, a final "?" or ".", contractions and the how-to
        # frame) is the same question by definition (_normalised). The regression
        # never saw such pairs, and extrapolates them below the threshold (the cross-encoder
        # gives exact repeats only 0.85-0.95 and the overlap features weigh against full
        # overlap: 0.85-0.92 measured), which would turn an L1 miss of an exact repeat (after
        # a restart, or an eviction) into an L3 miss too.
        q = _normalised(query)
        same = np.array([_normalised(c) == q for c in candidates], dtype=bool)
        return PreparedPairs(self, rows, same)

    def score(self, query: str, candidates: Sequence[str], ce_qc: Sequence[float], cosines: Sequence[float],
              ce_cq: Sequence[float] | None = None) -> np.ndarray:
        """Calibrated P(same question) for each candidate of one query.

        ``ce_qc[i]``: the cross-encoder logit of (query, candidates[i]) (``logit_from_probability``
        turns the service's probability back into it); ``cosines[i]``: the embedder cosine that
        L2 found the candidate by; ``ce_cq[i]``: the (candidates[i], query) logit, needed only
        when ``needs_both_orders``."""
        if not (len(candidates) == len(ce_qc) == len(cosines)) or (ce_cq is not None and len(ce_cq) != len(ce_qc)):
            raise ValueError("decision model: one logit and one cosine per candidate are needed")
        return self.prepare(query, candidates, cosines).probabilities(ce_qc, ce_cq)

    def upper_bounds(self, query: str, candidates: Sequence[str], cosines: Sequence[float]) -> np.ndarray:
        """For each candidate, the highest probability ``score`` could give it whatever the
        cross-encoder says (see ``PreparedPairs.upper_bounds``)."""
        return self.prepare(query, candidates, cosines).upper_bounds()

    def choose(self, probabilities: Sequence[float]) -> int | None:
        """Cache mode: the index of the candidate to serve, or None for a miss, by the one
        rule the gateway and ``reflex eval`` also use (``reflex.decision_rule.choose``) at this
        artifact's threshold and margin."""
        return decision_rule.choose([float(p) for p in probabilities], self.threshold, self.margin)

    def describe(self) -> str:
        """One line for logs and InfoResponse.decision_model."""
        return (f"{self.meta.get('name', ARTIFACT_NAME)}: logistic regression over {len(self.features)} features "
                f"({', '.join(self.features)}), Platt-calibrated, for cross-encoder "
                f"{self.meta.get('cross_encoder_sha', '?')}")


@dataclass(frozen=True, slots=True)
class PreparedPairs:
    """One query's candidates with their text features computed (``DecisionModel.prepare``)."""

    model: DecisionModel
    rows: list[dict[str, float]]
    same: np.ndarray  # the same question (_normalised): always 1

    def subset(self, kept: Sequence[int]) -> PreparedPairs:
        return PreparedPairs(self.model, [self.rows[i] for i in kept], self.same[list(kept)])

    def _with_logits(self, ce_qc: Sequence[float], ce_cq: Sequence[float] | None) -> np.ndarray:
        other = ce_cq if ce_cq is not None else [None] * len(self.rows)
        rows = []
        for row, a, b in zip(self.rows, ce_qc, other, strict=True):
            lq = float(np.clip(a, -LOGIT_CLIP, LOGIT_CLIP))
            lc = lq if b is None else float(np.clip(b, -LOGIT_CLIP, LOGIT_CLIP))
            rows.append({**row, "ce_qc": lq, "ce_mean": (lq + lc) / 2, "ce_min": min(lq, lc)})
        return self.model.probability_from_matrix(self.model.matrix(rows))

    def probabilities(self, ce_qc: Sequence[float], ce_cq: Sequence[float] | None = None) -> np.ndarray:
        """Calibrated P(same question) per candidate, from the cross-encoder logits (see
        ``DecisionModel.score``)."""
        if len(ce_qc) != len(self.rows) or (ce_cq is not None and len(ce_cq) != len(ce_qc)):
            raise ValueError("decision model: one logit per candidate is needed")
        if ce_cq is None and self.model.needs_both_orders:
            raise ValueError("decision model: this artifact uses both cross-encoder orders; pass ce_cq")
        return np.where(self.same, 1.0, self._with_logits(ce_qc, ce_cq))

    def upper_bounds(self) -> np.ndarray:
        """For each candidate, the highest probability ``probabilities`` could give it whatever
        the cross-encoder says: its logits range over [-LOGIT_CLIP, LOGIT_CLIP] (they are clipped
        before use), and the regression is linear in them, so the maximum is at a corner of
        that range. A candidate whose bound is below what the caller can use need not be run
        through the cross-encoder at all (ScoreRequest.min_score)."""
        corners = [(a, b) for a in (-LOGIT_CLIP, LOGIT_CLIP)
                   for b in ((-LOGIT_CLIP, LOGIT_CLIP) if self.model.needs_both_orders else (a,))]
        best = np.full(len(self.rows), -np.inf)
        for lq, lc in corners:
            best = np.maximum(best, self._with_logits([lq] * len(self.rows), [lc] * len(self.rows)))
        return np.where(self.same, 1.0, best)  # an exact repeat scores 1


# ---------------------------------------------------------------------- the service's choice
def checkpoint_sha(checkpoint_dir: Path) -> str:
    """What ``meta.cross_encoder_sha`` identifies a checkpoint by: blake2b-64 of its
    model.safetensors (what services/verifier/training/combiner.py records at fit time)."""
    weights = Path(checkpoint_dir) / "model.safetensors"
    if not weights.is_file():
        raise DecisionModelMismatch(f"verifier: {checkpoint_dir} has no model.safetensors, so the decision model "
                                    "cannot be checked against it")
    h = hashlib.blake2b(digest_size=8)
    with weights.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class DecisionModelMismatch(ValueError):
    """The decision model was fitted for another cross-encoder checkpoint: its inputs (that
    checkpoint's logits) would mean something else, and its threshold would not hold."""


def artifact_name(backend: str) -> str:
    """The decision model fitted for ``backend``'s scores: ``decision.onnx-int8.json`` for
    int8 (it moves logits and cosines), ``decision.json`` for the fp32 backends (torch and
    onnx agree to 1e-5)."""
    return ARTIFACT_NAME if backend in ("torch", "onnx") else f"decision.{backend}.json"


def resolve(checkpoint_dir: Path, setting: str, backend: str = "torch") -> tuple[DecisionModel | None, str]:
    """The decision model the verifier serves with for ``checkpoint_dir``, and why.

    ``setting`` is REFLEX_VERIFIER_DECISION: ``auto`` (next to the checkpoint, the one fitted
    for ``backend`` if there is one (``artifact_name``), else decision.json; with neither,
    None: the cross-encoder's probability is served), ``off`` (None) or the path of a
    decision.json. A model whose ``meta.cross_encoder_sha`` is not the checkpoint's raises
    DecisionModelMismatch: the service refuses to start."""
    value = setting.strip()
    if value.lower() == "off":
        return None, "REFLEX_VERIFIER_DECISION=off: the cross-encoder's probability is served"
    if value.lower() == "auto":
        path = Path(checkpoint_dir) / artifact_name(backend)
        if not path.is_file():
            path = Path(checkpoint_dir) / ARTIFACT_NAME
        if not path.is_file():
            return None, (f"no {ARTIFACT_NAME} next to the checkpoint {checkpoint_dir}: the cross-encoder's "
                          "probability is served (fit one with `python -m services.verifier.training.combiner fit "
                          "--ce DIR --out DIR/decision.json`)")
    else:
        path = Path(value).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"verifier: REFLEX_VERIFIER_DECISION={value}: no such file")
    try:
        model = DecisionModel.load(path)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"verifier: decision model {path} is not a valid artifact: {exc}") from exc
    wanted = model.meta.get("cross_encoder_sha")
    actual = checkpoint_sha(checkpoint_dir)
    if wanted != actual:
        raise DecisionModelMismatch(
            f"verifier: the decision model {path} was fitted for cross-encoder {wanted}, but {checkpoint_dir} is "
            f"{actual}; refit it for this checkpoint (python -m services.verifier.training.combiner fit --ce "
            f"{checkpoint_dir} --out {path}) or set REFLEX_VERIFIER_DECISION=off to serve the cross-encoder's "
            "probability alone")
    return model, f"decision model {path} ({model.describe()}; threshold {model.threshold:g}, margin {model.margin:g})"


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))
