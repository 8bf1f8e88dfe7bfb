"""Embedding many texts fast: de-duplicated, batched into large Embed calls, cached on disk.

QQP's 56k pairs hold about 96k distinct questions; embedding them is most of a cosine run
on a CPU. Each distinct text is embedded once per run, and vectors are kept in an SQLite
file keyed by the embedding model's identity and the text's hash, so the second run on a
file (the baseline, then the verifier, then cache mode) embeds nothing.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from contextlib import closing
from pathlib import Path

import blake3
import numpy as np

from commands.eval.aio import map_bounded, retry_overloaded
from reflex.tiers import Embedder


class EmbeddingCache:
    """Vectors on disk, keyed by blake3(model identity, text).

    The model identity (name, dimension, dtype, token limit, as the embedder's Info reports
    them) is part of the key, so a different model or precision never reads stale vectors.
    """

    def __init__(self, path: Path, model_identity: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path)
        self._db.execute("CREATE TABLE IF NOT EXISTS vectors (key BLOB PRIMARY KEY, vector BLOB NOT NULL)")
        self._model = model_identity.encode()

    def key(self, text: str) -> bytes:
        return blake3.blake3(self._model + b"\0" + text.encode()).digest()

    def get_many(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        by_key = {self.key(t): t for t in texts}
        keys = list(by_key)
        # SQLite caps bound parameters (32766 by default); 500 per query stays far below it.
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            with closing(self._db.execute(f"SELECT key, vector FROM vectors WHERE key IN ({marks})", chunk)) as cur:
                for key, blob in cur:
                    found[by_key[key]] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put_many(self, items: Iterable[tuple[str, np.ndarray]]) -> None:
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO vectors (key, vector) VALUES (?, ?)",
                ((self.key(t), np.asarray(v, dtype=np.float32).tobytes()) for t, v in items),
            )

    def close(self) -> None:
        self._db.close()


async def embed_texts(
    embedder: Embedder,
    texts: Sequence[str],
    *,
    chunk_size: int,
    concurrency: int,
    timeout: float,
    cache: EmbeddingCache | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, np.ndarray], int]:
    """A float32 vector for every distinct text in ``texts``, and how many came from ``cache``.

    ``chunk_size`` texts go in one Embed call and ``concurrency`` calls are in flight, so the
    embedder's batcher always has full batches queued while the client decodes the last
    answer; ``chunk_size * concurrency`` should stay under the service's queue bound.
    ``on_progress`` gets the number of texts each finished call (or cache read) covered.
    """
    distinct = list(dict.fromkeys(texts))
    vectors = cache.get_many(distinct) if cache is not None else {}
    if on_progress is not None and vectors:
        on_progress(len(vectors))
    from_cache = len(vectors)
    # Sorted by length so each call holds texts of similar length: the service pads a batch
    # to its longest text, and on a CPU padding is most of the waste.
    missing = sorted((t for t in distinct if t not in vectors), key=len)
    chunks = [missing[i : i + chunk_size] for i in range(0, len(missing), chunk_size)]

    async def embed_chunk(chunk: list[str]) -> list[list[float]]:
        return await retry_overloaded(lambda: embedder.embed(chunk, timeout=timeout))

    def done(chunk: list[str], result: list[list[float]]) -> None:
        if len(result) != len(chunk):
            raise RuntimeError(f"embedder returned {len(result)} vectors for {len(chunk)} texts")
        fresh = [(t, np.asarray(v, dtype=np.float32)) for t, v in zip(chunk, result, strict=True)]
        vectors.update(fresh)
        if cache is not None:
            # Written per chunk, so an interrupted run keeps what it paid for.
            cache.put_many(fresh)
        if on_progress is not None:
            on_progress(len(chunk))

    await map_bounded(embed_chunk, chunks, concurrency=concurrency, on_done=done)
    return vectors, from_cache
