"""The one dynamic batching loop of a model process (after text-embeddings-inference's queue.rs).

Many gRPC calls, each carrying one or more items (texts for the embedder, (query, candidate)
pairs for the verifier), are gathered into few forward passes. Two stages run as a pipeline,
each on a worker thread of its own so the event loop only moves futures around:

    submit() -> queue -> [tokenize stage] -> one prepared batch -> [model stage] -> futures

* The tokenize stage waits for a free slot, then gathers up to ``max_batch_size`` items. While
  a forward pass runs, the next batch keeps filling until the model is free (it could not run
  sooner anyway), tokenizing what arrives as it comes; for an idle model a batch closes at
  once (after ``max_wait`` if that is set), so a lone request pays no wait. Items whose caller
  went away are dropped, and the batch is cut at the token budget (padded longest row x rows)
  and padded on the tokenizer thread; the rows over budget go back to the front of the
  queue, already tokenized.
* The model stage runs the forward pass. There is one slot between the stages: the next
  batch is gathered and tokenized while the current one runs, but no earlier, so a batch is
  formed as late as possible and is as full as the load allows.
* A failed batch fails every future in it; results are matched to requests with
  ``zip(..., strict=True)`` so a backend returning the wrong number of rows fails loudly.
* Admission is bounded (``max_queue`` items in flight): past it ``submit`` raises
  ``Overloaded`` at once, which the servicer answers with RESOURCE_EXHAUSTED.
* ``on_forward_pass(ok)`` is told, on the event loop, whether each model-stage batch succeeded
  (the model server turns its health NOT_SERVING after several failures in a row).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from services.model_server.errors import InferenceFailed, InvalidInput, NotServing, Overloaded
from services.model_server.metrics import ModelMetrics

log = logging.getLogger("reflex.batching")

ItemT = TypeVar("ItemT")
EncT = TypeVar("EncT")
ResultT = TypeVar("ResultT")
ItemT_contra = TypeVar("ItemT_contra", contravariant=True)
ResultT_co = TypeVar("ResultT_co", covariant=True)


class ModelBackend(Protocol[ItemT_contra, ResultT_co]):
    """What a model runner gives the batcher. ``tokenize`` and ``collate`` run on the tokenizer
    thread, ``forward`` on the model thread; none of them ever runs on the event loop."""

    def tokenize(self, items: Sequence[ItemT_contra]) -> Sequence[Any]:
        """One encoding per item, truncated, not padded."""

    def num_tokens(self, encoding: Any) -> int:
        """Length of one encoding (for the token budget)."""

    def collate(self, encodings: Sequence[Any]) -> Any:
        """Pad encodings into one model input."""

    def forward(self, batch: Any) -> Sequence[ResultT_co]:
        """Run the model; one result per row, in order."""


@dataclass(slots=True)
class Timing:
    """Where one call's time went (the maximum over its items, in nanoseconds)."""

    queue_ns: int = 0
    tokenize_ns: int = 0
    inference_ns: int = 0

    def merge(self, other: "Timing") -> None:
        self.queue_ns = max(self.queue_ns, other.queue_ns)
        self.tokenize_ns = max(self.tokenize_ns, other.tokenize_ns)
        self.inference_ns = max(self.inference_ns, other.inference_ns)


@dataclass(slots=True, eq=False)
class _Pending:
    item: Any
    future: asyncio.Future[Any]
    admitted_ns: int
    encoding: Any = None
    tokens: int = 0
    tokenized: bool = False
    timing: Timing = field(default_factory=Timing)


@dataclass(slots=True)
class _Prepared:
    requests: list[_Pending]
    batch: Any


class DynamicBatcher(Generic[ItemT, ResultT]):
    def __init__(
        self,
        backend: ModelBackend[ItemT, ResultT],
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_batch_tokens: int,
        max_queue: int,
        metrics: ModelMetrics,
        name: str = "model",
        on_forward_pass: Callable[[bool], None] | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_batch_tokens < 1:
            raise ValueError("max_batch_size, max_queue and max_batch_tokens must be >= 1")
        self._backend = backend
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_s
        self._max_batch_tokens = max_batch_tokens
        self._max_queue = max_queue
        self._metrics = metrics
        self._name = name
        self._on_forward_pass = on_forward_pass
        self._queue: deque[_Pending] = deque()
        self._inflight = 0
        self._closed = False
        self._tasks: list[asyncio.Task[None]] = []
        self._tokenizer_pool: ThreadPoolExecutor | None = None
        self._model_pool: ThreadPoolExecutor | None = None
        # Created in start(), on the loop that will run the batcher.
        self._wake: asyncio.Event | None = None
        # True from the moment the model stage takes a batch until its forward pass is over.
        self._model_busy = False
        self._slot: asyncio.Semaphore | None = None
        self._handoff: asyncio.Queue[_Prepared] | None = None
        self.forward_passes = 0  # read by tests and benchmarks

    # ------------------------------------------------------------------ public
    @property
    def inflight(self) -> int:
        """Items admitted and not yet answered (what max_queue bounds)."""
        return self._inflight

    async def start(self) -> None:
        if self._tasks:
            return
        self._wake = asyncio.Event()
        self._slot = asyncio.Semaphore(1)
        self._handoff = asyncio.Queue(maxsize=1)
        # One thread each: the tokenizer and torch parallelise internally; a second model
        # thread would only make two batches fight over the same cores.
        self._tokenizer_pool = ThreadPoolExecutor(1, thread_name_prefix=f"reflex-{self._name}-tokenize")
        self._model_pool = ThreadPoolExecutor(1, thread_name_prefix=f"reflex-{self._name}-model")
        self._tasks = [
            asyncio.create_task(self._tokenize_stage(), name=f"{self._name}-tokenize-stage"),
            asyncio.create_task(self._model_stage(), name=f"{self._name}-model-stage"),
        ]

    async def run_on_model_thread(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the model thread (a backend's warm-up: CUDA graphs are recorded per
        thread, so they must be recorded on the thread that replays them)."""
        if self._model_pool is None:
            raise NotServing(f"{self._name} batcher is not running")
        return await asyncio.get_running_loop().run_in_executor(self._model_pool, fn)

    async def submit(self, items: Sequence[ItemT]) -> tuple[list[ResultT], Timing]:
        """Queue the items, wait for their results (in order) and the call's timing."""
        if self._closed or not self._tasks:
            raise NotServing(f"{self._name} batcher is not running")
        if not items:
            raise InvalidInput("nothing to process")
        if len(items) > self._max_queue:
            # It could never be admitted, however idle the server is.
            raise InvalidInput(f"{len(items)} items in one call; at most {self._max_queue} fit the queue")
        if self._inflight + len(items) > self._max_queue:
            raise Overloaded(f"{self._name} queue full ({self._inflight} of {self._max_queue} in flight)")
        loop = asyncio.get_running_loop()
        now = time.perf_counter_ns()
        pending = [_Pending(item, loop.create_future(), now) for item in items]
        for p in pending:
            p.future.add_done_callback(self._release)
        self._inflight += len(pending)
        self._metrics.queue_size.set(self._inflight)
        self._queue.extend(pending)
        self._signal()
        try:
            results = await asyncio.gather(*(p.future for p in pending))
        except BaseException:
            # One item failed or the caller left: its other items are of no use to anyone.
            for p in pending:
                p.future.cancel()
            raise
        timing = Timing()
        for p in pending:
            timing.merge(p.timing)
        return list(results), timing

    async def close(self) -> None:
        """Stop both stages and fail whatever is still queued (after the server has drained)."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._tasks = []
        leftovers = list(self._queue)
        self._queue.clear()
        if self._handoff is not None:
            while not self._handoff.empty():
                leftovers.extend(self._handoff.get_nowait().requests)
        self._fail(leftovers, NotServing(f"{self._name} is shutting down"))
        for pool in (self._tokenizer_pool, self._model_pool):
            if pool is not None:
                # Not waiting: a forward pass still running finishes on its own and its
                # result is dropped; blocking here would block the event loop.
                pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ internals
    def _release(self, future: asyncio.Future[Any]) -> None:
        self._inflight -= 1
        self._metrics.queue_size.set(self._inflight)

    def _signal(self) -> None:
        assert self._wake is not None
        self._wake.set()

    def _report_forward_pass(self, ok: bool) -> None:
        if self._on_forward_pass is None:
            return
        try:
            self._on_forward_pass(ok)
        except Exception:  # a broken observer must not kill the model stage (every call would hang)
            log.exception("%s: on_forward_pass callback failed", self._name)

    def _fail(self, requests: Sequence[_Pending], exc: BaseException) -> None:
        for p in requests:
            if not p.future.done():
                p.future.set_exception(exc)

    def _take_live(self, limit: int) -> list[_Pending]:
        """Pop up to ``limit`` items, skipping those whose caller has gone."""
        taken: list[_Pending] = []
        while self._queue and len(taken) < limit:
            p = self._queue.popleft()
            if not p.future.done():
                taken.append(p)
        return taken

    def _tokenize(self, items: Sequence[_Pending]) -> None:
        """On the tokenizer thread: tokenize the items not tokenized yet (rows put back after
        a cut at the token budget keep their encodings). Only the tokenize stage touches these
        _Pending fields, and it awaits this call."""
        fresh = [p for p in items if not p.tokenized]
        if not fresh:
            return
        started = time.perf_counter_ns()
        encodings = self._backend.tokenize([p.item for p in fresh])
        took = time.perf_counter_ns() - started
        for p, enc in zip(fresh, encodings, strict=True):
            p.encoding, p.tokens, p.tokenized = enc, self._backend.num_tokens(enc), True
            p.timing.tokenize_ns = took

    async def _gather(self, taken: list[_Pending]) -> None:
        """Fill ``taken`` with the next batch. It closes when it is full, or when the model is
        idle: at once with max_wait 0, else once its oldest item has waited max_wait. While
        a forward pass runs it keeps filling (it could not run sooner anyway), and what arrives
        is tokenized as it comes, so the batch is ready the moment the model is free. ``taken``
        is filled in place, so that a failure fails what was already taken."""
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            fresh = self._take_live(self._max_batch_size - len(taken))
            taken.extend(fresh)
            idle = not self._model_busy
            if fresh and not (idle and self._max_wait_s <= 0):
                # Tokenized now, during the forward pass or the wait; a batch that closes at
                # once is tokenized together with its padding, in one hop (_prepare).
                await loop.run_in_executor(self._tokenizer_pool, self._tokenize, fresh)
                idle = not self._model_busy
            if len(taken) >= self._max_batch_size:
                return
            timeout: float | None = None
            if idle and taken:
                if self._max_wait_s <= 0:
                    return
                timeout = taken[0].admitted_ns / 1e9 + self._max_wait_s - time.perf_counter_ns() / 1e9
                if timeout <= 0:
                    return
            if self._queue:
                continue  # more arrived meanwhile
            # Woken by a new item, or by the model stage going idle.
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                return

    def _rows_within_budget(self, taken: Sequence[_Pending]) -> int:
        """Length of the longest prefix whose padded size fits the budget (at least one row)."""
        longest = 0
        for n, p in enumerate(taken):
            longest_with = max(longest, p.tokens)
            if n > 0 and longest_with * (n + 1) > self._max_batch_tokens:
                return n
            longest = longest_with
        return len(taken)

    def _prepare(self, taken: list[_Pending]) -> tuple[int, Any, int]:
        """On the tokenizer thread, in one hop: tokenize what is not tokenized yet, find the
        cut at the token budget, pad the rows before it. Returns (rows kept, model input,
        nanoseconds spent padding)."""
        self._tokenize(taken)
        kept = self._rows_within_budget(taken)
        started = time.perf_counter_ns()
        batch = self._backend.collate([p.encoding for p in taken[:kept]])
        return kept, batch, time.perf_counter_ns() - started

    async def _tokenize_stage(self) -> None:
        assert self._slot is not None and self._handoff is not None
        loop = asyncio.get_running_loop()
        while True:
            # Wait until the model stage has taken the previous batch: this one then fills
            # while that one runs, and is handed over the moment the model is free.
            await self._slot.acquire()
            taken: list[_Pending] = []
            try:
                await self._gather(taken)
                kept, batch, collate_ns = await loop.run_in_executor(self._tokenizer_pool, self._prepare, taken)
                batch_requests = taken[:kept]
                if kept < len(taken):
                    # Over the budget: back to the front of the queue, in order, keeping their encodings.
                    self._queue.extendleft(reversed(taken[kept:]))
                    self._signal()
                ready = time.perf_counter_ns()
                for p in batch_requests:
                    # Tokenizing (its own tokenizer call, plus padding the batch) is not queueing.
                    p.timing.tokenize_ns += collate_ns
                    p.timing.queue_ns = max(0, ready - p.admitted_ns - p.timing.tokenize_ns)
                    self._metrics.observe_stage("queue", p.timing.queue_ns / 1e9)
                self._metrics.observe_stage("tokenize", max(p.timing.tokenize_ns for p in batch_requests) / 1e9)
                await self._handoff.put(_Prepared(batch_requests, batch))
            except asyncio.CancelledError:
                self._fail(taken, NotServing(f"{self._name} is shutting down"))
                raise
            except Exception as exc:  # the tokenizer raised: this batch fails, the loop goes on
                log.exception("%s: tokenizing a batch of %d failed", self._name, len(taken))
                self._fail(taken, InferenceFailed(f"tokenizer failed: {type(exc).__name__}"))
                self._slot.release()

    async def _model_stage(self) -> None:
        assert self._slot is not None and self._handoff is not None
        loop = asyncio.get_running_loop()
        while True:
            prepared = await self._handoff.get()
            self._model_busy = True
            self._slot.release()
            requests = prepared.requests
            try:
                live = [p for p in requests if not p.future.done()]
                if not live:
                    continue  # every caller of this batch left: skip the forward pass
                if len(live) < len(requests):
                    batch = await loop.run_in_executor(
                        self._model_pool, self._backend.collate, [p.encoding for p in live]
                    )
                    requests = live
                else:
                    batch = prepared.batch
                self._metrics.batch_size.observe(len(requests))
                self._metrics.batch_tokens.observe(len(requests) * max(p.tokens for p in requests))
                start = time.perf_counter_ns()
                results = await loop.run_in_executor(self._model_pool, self._backend.forward, batch)
                inference_ns = time.perf_counter_ns() - start
                self.forward_passes += 1
                self._metrics.observe_stage("inference", inference_ns / 1e9)
                matched = list(zip(requests, results, strict=True))
            except asyncio.CancelledError:
                self._fail(requests, NotServing(f"{self._name} is shutting down"))
                raise
            except Exception as exc:  # the model raised (or returned the wrong rows): fail the batch
                log.exception("%s: forward pass over %d rows failed", self._name, len(requests))
                # Reported first, so the model server has counted this failure before any caller sees it.
                self._report_forward_pass(False)
                self._fail(requests, InferenceFailed(f"forward pass failed: {type(exc).__name__}"))
                continue
            finally:
                if self._handoff.empty():
                    # Idle now: the batch being gathered closes (see _gather) instead of the
                    # model waiting for it to fill.
                    self._model_busy = False
                    if self._wake is not None:
                        self._wake.set()
            self._report_forward_pass(True)
            for p, result in matched:
                p.timing.inference_ns = inference_ns
                if not p.future.done():
                    p.future.set_result(result)
