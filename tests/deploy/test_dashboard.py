"""deploy/grafana/reflex.json uses only metrics that exist: every metric name in every panel query
is one that a real registry exports, scraped over HTTP from a running gateway and rendered from
the model servers' own registry class (the embedder and the verifier build theirs the same way)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import aiohttp
from prometheus_client import generate_latest

from services.gateway.main import GatewayServer
from services.model_server.metrics import ModelMetrics
from reflex.settings import GatewaySettings

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "reflex.json"
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "gauge": ("",), "summary": ("_sum", "_count", "_created"), "info": ("_info",)}


def exported(exposition: str) -> set[str]:
    """Every sample name the exposition can carry: from its TYPE lines, so a labelled metric with
    no sample yet (no failure so far) still counts as exported."""
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", exposition, re.M):
        if kind == "counter":
            name = name.removesuffix("_total")  # newer clients put _total in the TYPE line, older do not
        names |= {name + s for s in SUFFIXES.get(kind, ("",))}
    return names


def dashboard_metrics() -> set[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in board["templating"]["list"] if "definition" in v]
    return set(re.findall(r"\breflex_[a-z0-9_]+", " ".join(exprs)))


async def test_every_metric_the_dashboard_uses_is_exported(tmp_path: Path) -> None:
    server = GatewayServer(GatewaySettings.build(port=0, semantic=False, redis_url=None, storage_path=tmp_path))
    await server.start()
    try:
        async with aiohttp.ClientSession() as session, session.get(server.url + "/metrics") as r:
            gateway = await r.text()
    finally:
        await server.stop()
    names = exported(gateway)
    for service in ("embedder", "verifier"):
        names |= exported(generate_latest(ModelMetrics(service, max_batch_size=64).registry).decode())
    used = dashboard_metrics()
    assert {"reflex_gateway_tenant_requests_total", "reflex_embedder_batch_size_bucket",
            "reflex_gateway_lookup_seconds_bucket", "reflex_gateway_tier_failures_total"} <= used
    assert used - names == set(), "the dashboard queries metrics nobody exports"


def test_the_dashboard_covers_what_the_issue_asks_and_is_well_formed() -> None:
    board = json.loads(DASHBOARD.read_text())
    titles = " | ".join(p["title"].lower() for p in board["panels"])
    for topic in ("hit rate by tier", "hit rate by tenant", "tokens saved", "lookup latency by stage",
                  "batch size", "queue", "tier failures"):
        assert topic in titles, topic
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    cells = set()
    for p in board["panels"]:
        g = p["gridPos"]
        assert p["datasource"]["uid"] == "${datasource}" and p["targets"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panel {p['title']} overlaps another"
                cells.add((x, y))
