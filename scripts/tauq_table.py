#!/usr/bin/env python
"""Print the README's Tauq table: o200k_base tokens of raw answers against Tauq.

    python scripts/tauq_table.py [--data-dir ../shared/data]

Rows: each kind of answer alone (raw as a model writes it, minified JSON where the answer
is JSON, Tauq), then the whole hit envelope that `tauq` serves against the raw content that
`raw` serves. The answers are fixed, realistic examples written below, so the table is the
same on every run. Last, conformance with the reference formatter's 200 vectors.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reflex.tauq import dumps, loads  # noqa: E402
from reflex.tokens import count_tokens  # noqa: E402
from services.gateway.hit_format import envelope  # noqa: E402

QUESTION = "How should I structure retries for calls to a flaky HTTP API?"

PROSE = (
    "Retry only what is safe to repeat: idempotent requests (GET, PUT, DELETE) and POSTs that "
    "carry an idempotency key. Use exponential backoff with full jitter, starting around 100 ms "
    "and capping at a few seconds, so that many clients do not retry in lockstep. Bound the "
    "total time, not just the attempt count, and honour a Retry-After header when the server "
    "sends one. Treat 429 and 503 as retryable, 4xx errors like 400 or 404 as final, and "
    "timeouts as retryable only when the operation is idempotent. Finally, add a circuit "
    "breaker: after repeated failures, stop calling for a while and fail fast, which protects "
    "both your latency and the struggling service."
)

CODE = '''Here is a small helper:

```python
import random
import time

import requests


def get_with_retries(url: str, attempts: int = 5, base: float = 0.1, cap: float = 5.0) -> requests.Response:
    """GET with exponential backoff and full jitter."""
    for attempt in range(attempts):
        try:
            response = requests.get(url, timeout=10)
            if response.status_code not in (429, 502, 503, 504):
                return response
        except requests.ConnectionError:
            pass
        time.sleep(random.uniform(0, min(cap, base * 2 ** attempt)))
    raise RuntimeError(f"{url} still failing after {attempts} attempts")
```

Call it as `get_with_retries("https://api.example.com/items")`.'''

JSON_OBJECT = {
    "policy": "exponential_backoff",
    "retry_on": {"status": [429, 502, 503, 504], "exceptions": ["ConnectionError", "Timeout"]},
    "backoff": {"base_ms": 100, "cap_ms": 5000, "jitter": "full", "multiplier": 2.0},
    "limits": {"max_attempts": 5, "max_total_ms": 20000},
    "respect_retry_after": True,
    "circuit_breaker": {"failure_threshold": 5, "open_for_ms": 30000, "half_open_probes": 1},
    "notes": "Only idempotent requests, or POSTs with an Idempotency-Key header.",
}

_ROLES = ["admin", "editor", "viewer", "owner"]
_CITIES = ["Paris", "Berlin", "Lagos", "Lima", "Osaka", "Toronto", "Cairo"]


def records(n: int) -> list[dict[str, Any]]:
    return [
        {
            "id": 1000 + i,
            "name": f"user{i:03d}",
            "email": f"user{i:03d}@example.com",
            "role": _ROLES[i % len(_ROLES)],
            "city": _CITIES[i % len(_CITIES)],
            "active": i % 3 != 0,
            "score": round(50 + (i * 37 % 500) / 10, 1),
        }
        for i in range(n)
    ]


def articles(n: int) -> list[dict[str, Any]]:
    """Records whose values are sentences: the keys are a small share, so savings shrink."""
    return [
        {
            "id": i,
            "title": f"Retry budgets, part {i}",
            "summary": f"Part {i} explains why retries need a budget, how jitter spreads load, and when "
            f"to stop: after {i + 2} failures the breaker opens.",
        }
        for i in range(n)
    ]


def pretty(value: Any) -> str:
    # how models usually write JSON in an answer
    return json.dumps(value, indent=2, ensure_ascii=False)


def minified(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def pct(new: int, old: int) -> str:
    return f"{(new - old) / old:+.0%}"


def verdict(tauq: int, best_raw: int) -> str:
    if tauq <= best_raw * 0.95:
        return "helps"
    if tauq <= best_raw * 1.05:
        return "**no help** (about even)"
    return "**does not help** (costs more)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_data = Path(__file__).resolve().parents[2] / "shared" / "data"
    parser.add_argument("--data-dir", type=Path, default=default_data, help=f"default: {default_data}")
    args = parser.parse_args()

    json_cases: list[tuple[str, Any]] = [
        ("JSON object answer (nested config)", JSON_OBJECT),
        ("20 uniform records", records(20)),
        ("20 records of sentence-long text", articles(20)),
        ("200 uniform records (flat table)", records(200)),
    ]
    text_cases = [("prose answer", PROSE), ("code answer (Markdown + Python)", CODE)]

    print("### The answer alone (o200k_base tokens)\n")
    print("| answer | raw | minified JSON | Tauq | Tauq vs raw | Tauq vs minified JSON | Tauq |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, text in text_cases:
        raw, tauq = count_tokens(text), count_tokens(dumps(text))
        assert loads(dumps(text)) == text
        print(f"| {name} | {raw} | n/a | {tauq} | {pct(tauq, raw)} | n/a | {verdict(tauq, raw)} |")
    for name, value in json_cases:
        raw, mini, tauq = count_tokens(pretty(value)), count_tokens(minified(value)), count_tokens(dumps(value))
        assert loads(dumps(value)) == value
        print(f"| {name} | {raw} | {mini} | {tauq} | {pct(tauq, raw)} | {pct(tauq, mini)} | {verdict(tauq, mini)} |")
    print()
    print("raw = the content as a model writes it (JSON pretty-printed with 2-space indents); the verdict for")
    print("JSON answers compares with *minified* JSON, the fairest baseline.\n")

    question_tokens = count_tokens(QUESTION)
    print(f"### What a hit serves: `tauq` envelope (with the matched question, {question_tokens} tokens) vs `raw`\n")
    print("| cached answer | `raw` content | `tauq` envelope | X-Reflex-Format-Delta | |")
    print("|---|---:|---:|---:|---|")
    for name, content in [*text_cases, *((n, pretty(v)) for n, v in json_cases)]:
        raw, served = count_tokens(content), count_tokens(envelope(QUESTION, content))
        print(f"| {name} | {raw} | {served} | {served - raw:+d} ({pct(served, raw)}) | {verdict(served, raw)} |")
    print()
    print("Where Tauq does not help: prose and code. They stay one quoted string (newlines and quotes")
    print("escaped), and the envelope adds the matched question; such hits cost more tokens in `tauq` than")
    print("in `raw`. Tauq pays off only when the cached answer is JSON, above all runs of uniform records.")

    vectors_path = args.data_dir / "tauq_vectors.jsonl"
    if vectors_path.is_file():
        vectors = [json.loads(line) for line in vectors_path.open(encoding="utf-8") if line.strip()]
        same = sum(dumps(v["json"]) == v["tauq"] for v in vectors)
        read = sum(loads(v["tauq"]) == v["json"] for v in vectors)
        back = sum(loads(dumps(v["json"])) == v["json"] for v in vectors)
        n = len(vectors)
        print(f"\nReference conformance ({n} vectors of epistates/tauq 0.2.0): reads {read}/{n}, "
              f"round-trips {back}/{n}, byte-identical output {same}/{n} ({same / n:.0%}).")
    else:
        print(f"\n({vectors_path} not found: conformance line skipped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
