"""`reflex bench` runs end to end and reports what it promises: every figure a positive ratio
to a baseline from the same run. No timing is asserted here (speed targets are read from the
command's figures, never checked by timed assertions)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

EXPECTED = {
    "l1": {"l1_hit_latency", "miss_latency", "l1_hit_throughput"},
    "semantic": {"l3_hit_latency", "miss_with_candidates_latency", "miss_no_candidate_latency",
                 "miss_populated_no_candidate_latency", "l3_hit_vs_raw_models",
                 # the same series with the machine idle before each request
                 "l3_hit_latency_idle", "miss_with_candidates_latency_idle", "miss_no_candidate_latency_idle",
                 "miss_populated_no_candidate_latency_idle"},
    # score_verified_latency: Score of the REFLEX_RERANKER_CANDIDATES (default 1) one lookup sends;
    # embedder_throughput_per_text_calls: one text per Embed call (REFLEX_EMBEDDER_COALESCE_MAX is 8)
    "models": {"embedder_throughput", "embedder_throughput_per_text_calls", "embed_latency", "verifier_throughput", "score_latency",
               "score_verified_latency", "score_vs_embed"},
}


@pytest.mark.slow
def test_quick_bench_reports_every_figure_as_a_positive_ratio(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFLEX_")}
    env["HOME"] = str(Path.home())  # the ONNX export cache, shared with the other model tests
    result = subprocess.run([sys.executable, "-m", "commands.cli", "bench", "--quick", "--json"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout)
    assert report["quick"] is True and report["sections"] == ["l1", "semantic", "models"]
    assert set(report["settings"]) >= {"embedder_backend", "verifier_backend", "device"}
    figures = report["figures"]
    by_section: dict[str, set[str]] = {}
    for f in figures:
        assert set(f) >= {"key", "section", "what", "value", "unit", "baseline", "baseline_value", "better", "ratio"}
        assert f["better"] in ("lower", "higher")
        for number in (f["value"], f["baseline_value"], f["ratio"]):
            assert isinstance(number, float) and math.isfinite(number) and number > 0, f
        assert f["ratio"] == pytest.approx(f["value"] / f["baseline_value"])
        by_section.setdefault(f["section"], set()).add(f["key"])
    assert by_section == EXPECTED
    assert "[" in result.stderr  # progress lines went to stderr, not into the JSON
    l3_baseline = next(f["baseline"] for f in figures if f["key"] == "l3_hit_vs_raw_models")
    assert "Score(1)" in l3_baseline  # what a default lookup runs, not the five of the Score figure


def test_the_load_process_reports_its_clients_failures_in_the_parent() -> None:
    """The saturating clients run in a process of their own: a failed call there must fail the
    bench with the reason, not hang it or count the failure as throughput."""
    import asyncio

    from commands.bench_common import free_port
    from commands.bench_models import LoadProcess

    async def run() -> None:
        load = LoadProcess("embed", f"127.0.0.1:{free_port()}", concurrency=2)  # nothing listens there
        try:
            with pytest.raises(RuntimeError, match="load process: "):
                await asyncio.wait_for(load.run(["a question"]), 120)
        finally:
            await load.close()

    asyncio.run(run())


def test_the_table_and_the_markdown_give_a_throughput_figure_s_round_range() -> None:
    from commands.bench import markdown, table

    def figure(key: str, ratios: list[float] | None) -> dict:
        detail = {"round_ratios": ratios} if ratios is not None else {}
        return {"key": key, "what": key, "value": 40.0, "unit": "req/s", "baseline": "bare aiohttp handler",
                "baseline_value": 100.0, "better": "higher", "ratio": 0.4, "detail": detail}

    report = {"figures": [figure("three_rounds", [0.35, 0.4, 0.43]), figure("one_round", [0.4]),
                          figure("latency", None)],
              "settings": {"embedder_backend": "torch", "verifier_backend": "torch", "device": "cpu"},
              "machine": {"usable_cores": 2}, "quick": False}
    md = markdown(report).splitlines()
    assert md[2].endswith("| **0.40×** (rounds 0.35-0.43×) |")
    assert md[3].endswith("| **0.40×** |") and md[4].endswith("| **0.40×** |")  # nothing to show for one round
    text = table(report).splitlines()
    assert text[2].endswith("0.40x (higher is better) (rounds 0.35-0.43x)")
    assert text[3].endswith("0.40x (higher is better)")


def test_semantic_rounds_wait_until_the_gateway_has_no_write_pending() -> None:
    """The semantic rounds start once the gateway's reflex_gateway_pending_cache_writes reads
    0 (a miss's store after its response would otherwise be paid by the next series); a
    gateway whose /metrics lacks the gauge fails the bench instead of being taken as quiet."""
    import asyncio

    import aiohttp
    from aiohttp import web

    from commands.bench_common import free_port
    from commands.bench_gateway import _until_no_pending_writes

    pending: list[int | None] = [2, 1, 0]
    scraped: list[int | None] = []

    async def metrics(request: web.Request) -> web.Response:
        value = pending.pop(0) if len(pending) > 1 else pending[0]
        scraped.append(value)
        gauge = "" if value is None else ("# TYPE reflex_gateway_pending_cache_writes gauge\n"
                                          f"reflex_gateway_pending_cache_writes {value:.1f}\n")
        return web.Response(text=f"reflex_gateway_requests_total 3.0\n{gauge}reflex_gateway_hits_total 1.0\n")

    async def run() -> None:
        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            async with aiohttp.ClientSession() as session:
                await _until_no_pending_writes(session, port)
                assert scraped == [2, 1, 0]
                pending[:] = [5]
                with pytest.raises(RuntimeError, match="still had 5 cache writes pending"):
                    await _until_no_pending_writes(session, port, timeout=0.05)
                pending[:] = [None]
                with pytest.raises(RuntimeError, match="no reflex_gateway_pending_cache_writes"):
                    await _until_no_pending_writes(session, port)
        finally:
            await runner.cleanup()

    asyncio.run(run())
