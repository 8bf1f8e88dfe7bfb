"""Layer 1: the dynamic batcher on a fake model (no torch, no gRPC).

The fake model records every batch it is given and can be held at a gate, which makes
"the model is busy right now" a deterministic state instead of a race.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from services.model_server.batching import DynamicBatcher
from services.model_server.errors import InferenceFailed, InvalidInput, NotServing, Overloaded
from services.model_server.metrics import ModelMetrics


@dataclass
class FakeEncoding:
    text: str
    tokens: int


class FakeModel:
    """Upper-cases texts. A text's token count is its number of words."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []  # texts of each forward pass
        self.padded_sizes: list[int] = []  # rows x longest row of each forward pass
        self.tokenized: list[str] = []
        self.threads: set[int] = set()
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()
        self.wrong_row_count = False

    def tokenize(self, items: Sequence[str]) -> list[FakeEncoding]:
        self.threads.add(threading.get_ident())
        if "untokenizable" in items:
            raise ValueError("tokenizer choked")
        self.tokenized.extend(items)
        return [FakeEncoding(t, len(t.split())) for t in items]

    def num_tokens(self, encoding: FakeEncoding) -> int:
        return encoding.tokens

    def collate(self, encodings: Sequence[FakeEncoding]) -> tuple[list[str], int]:
        return [e.text for e in encodings], max(e.tokens for e in encodings)

    def forward(self, batch: tuple[list[str], int]) -> list[str]:
        texts, width = batch
        self.threads.add(threading.get_ident())
        self.entered.set()
        assert self.gate.wait(30), "test never opened the gate"
        self.batches.append(texts)
        self.padded_sizes.append(len(texts) * width)
        if "boom" in texts:
            raise RuntimeError("model exploded")
        out = [t.upper() for t in texts]
        return out[:-1] if self.wrong_row_count else out

    def hold(self) -> None:
        self.entered.clear()
        self.gate.clear()


async def wait_until(predicate: Any, what: str) -> None:
    """Poll a condition the batcher reaches on its own (bounded so a bug fails, not hangs)."""
    for _ in range(3000):
        if predicate():
            return
        await asyncio.sleep(0.002)
    raise AssertionError(f"never happened: {what}")


async def wait_entered(model: FakeModel) -> None:
    await wait_until(model.entered.is_set, "a forward pass reached the gate")


@pytest.fixture
def model() -> FakeModel:
    return FakeModel()


def make_batcher(model: FakeModel, **overrides: Any) -> DynamicBatcher[str, str]:
    options: dict[str, Any] = {"max_batch_size": 8, "max_wait_s": 0.0, "max_batch_tokens": 10_000, "max_queue": 256}
    options.update(overrides)
    return DynamicBatcher(model, metrics=ModelMetrics("test", max_batch_size=options["max_batch_size"]),
                          name="test", **options)


@pytest.fixture
async def batcher(model: FakeModel) -> AsyncIterator[DynamicBatcher[str, str]]:
    b = make_batcher(model)
    await b.start()
    yield b
    model.gate.set()
    await b.close()


async def test_concurrent_callers_share_forward_passes_and_get_their_own_results(model: FakeModel) -> None:
    b = make_batcher(model, max_wait_s=0.05)
    await b.start()
    try:
        callers = [f"text number {i}" for i in range(40)]
        results = await asyncio.gather(*(b.submit([t]) for t in callers))
        assert [r[0] for r, _ in results] == [t.upper() for t in callers]
        assert len(model.batches) < len(callers)
        assert max(len(batch) for batch in model.batches) <= 8
        assert sorted(t for batch in model.batches for t in batch) == sorted(callers)
    finally:
        await b.close()


async def test_one_call_with_many_items_keeps_their_order(batcher: DynamicBatcher[str, str]) -> None:
    texts = [f"item {i}" for i in range(20)]  # more than one batch (max 8)
    results, timing = await batcher.submit(texts)
    assert results == [t.upper() for t in texts]
    assert timing.inference_ns > 0 and timing.tokenize_ns > 0


async def test_tokenizer_and_model_run_on_worker_threads(batcher: DynamicBatcher[str, str], model: FakeModel) -> None:
    await batcher.submit(["a b c"])
    assert model.threads and threading.get_ident() not in model.threads


async def test_next_batch_is_tokenized_while_the_model_runs(batcher: DynamicBatcher[str, str], model: FakeModel) -> None:
    model.hold()
    first = asyncio.create_task(batcher.submit(["first"]))
    await wait_entered(model)
    second = asyncio.create_task(batcher.submit(["second"]))
    # The model is still blocked inside the first forward pass, yet the second batch gets tokenized.
    await wait_until(lambda: "second" in model.tokenized, "second batch tokenized during the first forward")
    assert model.batches == []
    model.gate.set()
    assert (await first)[0] == ["FIRST"] and (await second)[0] == ["SECOND"]


async def test_cancelled_callers_are_dropped_before_the_forward_pass(
    batcher: DynamicBatcher[str, str], model: FakeModel
) -> None:
    model.hold()
    blocker = asyncio.create_task(batcher.submit(["blocker"]))
    await wait_entered(model)
    leaver = asyncio.create_task(batcher.submit(["leaver"]))
    stayer = asyncio.create_task(batcher.submit(["stayer"]))
    await wait_until(lambda: batcher.inflight == 3, "three items admitted")
    leaver.cancel()
    model.gate.set()
    assert (await stayer)[0] == ["STAYER"]
    await blocker
    with pytest.raises(asyncio.CancelledError):
        await leaver
    assert all("leaver" not in batch for batch in model.batches)
    assert batcher.inflight == 0


async def test_a_failed_batch_fails_every_caller_in_it_and_the_loop_goes_on(
    batcher: DynamicBatcher[str, str], model: FakeModel
) -> None:
    model.hold()
    blocker = asyncio.create_task(batcher.submit(["blocker"]))
    await wait_entered(model)
    victims = [asyncio.create_task(batcher.submit([t])) for t in ("a", "boom", "c")]
    await wait_until(lambda: batcher.inflight == 4, "all admitted")
    model.gate.set()
    assert (await blocker)[0] == ["BLOCKER"]
    outcomes = await asyncio.gather(*victims, return_exceptions=True)
    assert ["a", "boom", "c"] in model.batches  # the three rode in one batch
    assert all(isinstance(o, InferenceFailed) for o in outcomes)
    assert (await batcher.submit(["after"]))[0] == ["AFTER"]


async def test_tokenizer_failure_fails_its_batch_only(batcher: DynamicBatcher[str, str]) -> None:
    with pytest.raises(InferenceFailed):
        await batcher.submit(["untokenizable"])
    assert (await batcher.submit(["fine"]))[0] == ["FINE"]


async def test_each_forward_pass_is_reported_and_a_raising_observer_is_survived(model: FakeModel) -> None:
    seen: list[bool] = []

    def observe(ok: bool) -> None:
        seen.append(ok)
        raise RuntimeError("observer bug")  # must not take the model stage down with it

    b = make_batcher(model, on_forward_pass=observe)
    await b.start()
    try:
        await b.submit(["ok"])
        with pytest.raises(InferenceFailed):
            await b.submit(["boom"])
        with pytest.raises(InferenceFailed):
            await b.submit(["untokenizable"])  # the tokenizer, not the model: no forward pass
        model.wrong_row_count = True
        with pytest.raises(InferenceFailed):
            await b.submit(["x", "y"])  # the backend answered wrongly: a failed pass too
        model.wrong_row_count = False
        assert (await b.submit(["still running"]))[0] == ["STILL RUNNING"]
        assert seen == [True, False, False, True]
    finally:
        await b.close()


async def test_wrong_number_of_results_fails_the_batch(batcher: DynamicBatcher[str, str], model: FakeModel) -> None:
    model.wrong_row_count = True
    with pytest.raises(InferenceFailed):
        await batcher.submit(["x", "y"])


async def test_full_queue_fails_fast_then_recovers(model: FakeModel) -> None:
    b = make_batcher(model, max_queue=4)
    await b.start()
    try:
        model.hold()
        admitted = asyncio.create_task(b.submit(["a", "b", "c", "d"]))
        await wait_entered(model)
        with pytest.raises(Overloaded):
            await b.submit(["one too many"])
        model.gate.set()
        assert (await admitted)[0] == ["A", "B", "C", "D"]
        assert b.inflight == 0
        assert (await b.submit(["again"]))[0] == ["AGAIN"]
    finally:
        await b.close()


async def test_bad_calls_are_invalid_input(model: FakeModel) -> None:
    b = make_batcher(model, max_queue=4)
    await b.start()
    try:
        with pytest.raises(InvalidInput):
            await b.submit([])
        with pytest.raises(InvalidInput):
            await b.submit(["x"] * 5)  # could never fit the queue
    finally:
        await b.close()


async def test_token_budget_bounds_padded_batch_size(model: FakeModel) -> None:
    b = make_batcher(model, max_batch_size=64, max_batch_tokens=12, max_wait_s=0.05)
    await b.start()
    try:
        texts = [" ".join(["w"] * (1 + i % 4)) + f" {i}" for i in range(30)]  # 2..5 tokens each
        results = await asyncio.gather(*(b.submit([t]) for t in texts))
        assert [r[0] for r, _ in results] == [t.upper() for t in texts]
        assert max(model.padded_sizes) <= 12
        assert len(model.batches) >= 30 * 2 // 12  # the budget, not max_batch_size, cut the batches
        # A single row longer than the budget still runs (alone).
        long_text = " ".join(["w"] * 20)
        assert (await b.submit([long_text]))[0] == [long_text.upper()]
        assert model.batches[-1] == [long_text]
    finally:
        await b.close()


async def test_close_fails_queued_callers_and_refuses_new_ones(model: FakeModel) -> None:
    b = make_batcher(model)
    await b.start()
    model.hold()
    running = asyncio.create_task(b.submit(["running"]))
    await wait_entered(model)
    queued = asyncio.create_task(b.submit(["queued"]))
    await wait_until(lambda: b.inflight == 2, "both admitted")
    await b.close()
    model.gate.set()
    for task in (running, queued):
        with pytest.raises(NotServing):
            await task
    with pytest.raises(NotServing):
        await b.submit(["late"])


async def test_a_lone_call_to_an_idle_model_does_not_wait_to_fill_a_batch(batcher: DynamicBatcher[str, str],
                                                                        model: FakeModel) -> None:
    # max_wait 0 (the default): dispatched the moment it is queued.
    assert (await asyncio.wait_for(batcher.submit(["alone"]), 30))[0] == ["ALONE"]
    assert model.batches == [["alone"]]


async def test_with_max_wait_an_idle_model_waits_for_more(model: FakeModel) -> None:
    # The wait is far longer than the test may take; the second call fills the batch.
    b = make_batcher(model, max_wait_s=600.0, max_batch_size=2)
    await b.start()
    try:
        first = asyncio.create_task(b.submit(["first"]))
        await wait_until(lambda: b.inflight == 1, "the first call is queued")
        await asyncio.sleep(0.05)
        assert model.batches == []  # still waiting for company
        second = asyncio.create_task(b.submit(["second"]))
        await asyncio.wait_for(asyncio.gather(first, second), 30)
        assert model.batches == [["first", "second"]]
    finally:
        await b.close()


async def test_while_the_model_is_busy_the_next_batch_fills_until_it_goes_idle(model: FakeModel) -> None:
    b = make_batcher(model)
    await b.start()
    try:
        model.hold()
        first = asyncio.create_task(b.submit(["first"]))
        await wait_entered(model)
        later = [asyncio.create_task(b.submit([f"later {i}"])) for i in range(3)]
        await wait_until(lambda: b.inflight == 4 and len(model.tokenized) == 4, "the later calls are tokenized")
        await asyncio.sleep(0.05)
        model.gate.set()  # the model goes idle: the batch that filled meanwhile runs next
        await asyncio.wait_for(asyncio.gather(first, *later), 30)
        assert model.batches == [["first"], ["later 0", "later 1", "later 2"]]
    finally:
        model.gate.set()
        await b.close()


async def test_a_backend_warm_up_runs_on_the_model_thread(batcher: DynamicBatcher[str, str]) -> None:
    # CUDA graphs are recorded per thread: a warm-up must run where the forward passes will.
    def names() -> str:
        return threading.current_thread().name

    warm_up_thread = await batcher.run_on_model_thread(names)
    assert warm_up_thread.startswith("reflex-test-model")
