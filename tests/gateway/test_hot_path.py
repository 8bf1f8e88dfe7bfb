"""The L1-hit path's shortcuts: parsed bodies, entries and exact hits' bodies kept for exact
repeats, and the event loop's metrics. Each must change nothing but the cost."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.gateway.errors import ErrorKind, GatewayError
from services.gateway.metrics import GatewayMetrics
from services.gateway.protocols.openai_chat import ChatCompletions
from services.gateway.repeats import ParseOnce
from tests.gateway.conftest import RunningGateway

BODY = b'{"model": "m", "messages": [{"role": "user", "content": "What is the capital of France?"}]}'


def test_a_repeated_body_is_parsed_once_and_gives_the_same_request() -> None:
    calls: list[bytes] = []
    chat = ChatCompletions()

    def parse(body: bytes):  # type: ignore[no-untyped-def]
        calls.append(body)
        return chat.parse(body)

    kept = ParseOnce()
    first = kept.get(("chat", BODY), len(BODY), lambda: parse(BODY))
    again = kept.get(("chat", BODY), len(BODY), lambda: parse(BODY))
    assert again is first and calls == [BODY]
    assert first.canonical == chat.parse(BODY).canonical and first.question == "What is the capital of France?"


def test_parse_errors_are_not_kept() -> None:
    kept, calls = ParseOnce(), []

    def bad() -> None:
        calls.append(1)
        raise GatewayError(ErrorKind.INVALID_JSON, "not JSON")

    for _ in range(2):
        with pytest.raises(GatewayError):
            kept.get("bad", 3, bad)
    assert calls == [1, 1] and len(kept) == 0


def test_large_inputs_are_parsed_every_time_and_the_budget_evicts_the_oldest() -> None:
    kept = ParseOnce(max_input_bytes=100, budget_bytes=250)
    assert kept.get("big", 101, lambda: object()) is not kept.get("big", 101, lambda: object())
    assert len(kept) == 0
    values = {k: kept.get(k, 100, object) for k in ("a", "b")}
    kept.get("c", 100, object)  # 300 bytes > 250: "a", the least recently used, goes
    assert kept.get("b", 100, object) is values["b"]
    assert kept.get("a", 100, object) is not values["a"]


def _hit(gateway: RunningGateway, content: str, **headers: str) -> tuple[str, bytes]:
    raw = gateway.sync_client().chat.completions.with_raw_response.create(
        model="fake-model", messages=[{"role": "user", "content": content}], extra_headers=headers)
    return raw.headers["x-reflex-status"], raw.content


def test_an_exact_hits_kept_body_follows_its_entry(gateway: RunningGateway) -> None:
    _hit(gateway, "seed")
    gateway.flush()
    first, again = _hit(gateway, "seed"), _hit(gateway, "seed")
    assert first[0] == again[0] == "hit-l1-exact" and again[1] == first[1] and b"Answer #1 to: seed" in first[1]
    assert len(gateway.state.hit_bodies) == 1
    # another format is another head: its own body, presented for it
    tauq = _hit(gateway, "seed", **{"X-Reflex-Format": "tauq"})
    assert tauq[0] == "hit-l1-exact" and tauq[1] != first[1]
    # the entry is replaced: the same request now gets the new entry's body, never the kept one
    _hit(gateway, "seed", **{"X-Reflex-Cache": "refresh"})
    gateway.flush()
    status, body = _hit(gateway, "seed")
    assert status == "hit-l1-exact" and b"Answer #2 to: seed" in body and b"Answer #1" not in body


def _families(metrics: GatewayMetrics) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}


def test_the_loop_metrics_expose_what_prometheus_client_would() -> None:
    m = GatewayMetrics()
    m.requests.labels("hit-l1-exact", "200").inc()
    m.requests.labels("hit-l1-exact", "200").inc(2)
    for seconds in (0.0004, 0.0005, 0.003, 7.0):
        m.lookup_seconds.labels("l1").observe(seconds)
    m.verifier_scores.observe(0.97)
    registry = m.registry
    assert registry.get_sample_value("reflex_gateway_requests_total", {"status": "hit-l1-exact", "code": "200"}) == 3
    # cumulative buckets; a value equal to a bound is counted in it (le)
    bucket = lambda le: registry.get_sample_value("reflex_gateway_lookup_seconds_bucket", {"stage": "l1", "le": le})  # noqa: E731
    assert (bucket("0.0005"), bucket("0.001"), bucket("0.005"), bucket("2.5"), bucket("+Inf")) == (2, 2, 3, 3, 4)
    assert registry.get_sample_value("reflex_gateway_lookup_seconds_count", {"stage": "l1"}) == 4
    assert registry.get_sample_value("reflex_gateway_lookup_seconds_sum", {"stage": "l1"}) == pytest.approx(7.0039)
    assert registry.get_sample_value("reflex_gateway_verifier_best_score_count") == 1
    families = _families(m)
    assert families["reflex_gateway_requests"].type == "counter"  # type: ignore[attr-defined]
    assert families["reflex_gateway_lookup_seconds"].type == "histogram"  # type: ignore[attr-defined]


def test_an_unlabelled_metric_is_zero_before_its_first_update_and_labels_are_checked() -> None:
    m = GatewayMetrics()
    assert m.registry.get_sample_value("reflex_gateway_verifier_best_score_count") == 0
    with pytest.raises(ValueError, match="takes labels"):
        m.requests.labels("only-one")
    with pytest.raises(ValueError):
        m.requests.labels("a", "200").inc(-1)
