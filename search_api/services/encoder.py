"""Query encoding: one torch worker thread, micro-batching and an LRU cache of embeddings."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from search_api.metrics import ServiceMetrics
from search_api.services.batcher import MicroBatcher

logger = logging.getLogger(__name__)


class TextEncoderModel(Protocol):
    """The part of ``shared.model.PIGModel`` the service calls."""

    def embed_queries(self, texts: list[str]) -> tuple[np.ndarray, tuple[bool, ...]]: ...


@dataclass(frozen=True)
class EncodedQuery:
    """Embedding of one query text."""

    embedding: np.ndarray  # [D] float32, L2-normalised
    truncated: bool
    cached: bool


class EmbeddingCache:
    """A thread-safe LRU cache of query embeddings keyed by (model fingerprint, query text)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple[str, str], tuple[np.ndarray, bool]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, fingerprint: str, text: str) -> tuple[np.ndarray, bool] | None:
        if self.capacity == 0:
            return None
        with self._lock:
            entry = self._entries.get((fingerprint, text))
            if entry is not None:
                self._entries.move_to_end((fingerprint, text))
            return entry

    def put(self, fingerprint: str, text: str, embedding: np.ndarray, truncated: bool) -> None:
        if self.capacity == 0:
            return
        with self._lock:
            self._entries[(fingerprint, text)] = (embedding, truncated)
            self._entries.move_to_end((fingerprint, text))
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class QueryEncoder:
    """Encode query texts with the model's text tower on a single worker thread.

    The worker thread (see ``create_executor``) owns every torch call of the service, so the number of threads stays fixed whatever the request rate. Concurrent
    queries are grouped into one ``embed_queries`` call of at most ``max_batch_size`` texts.
    """

    def __init__(
        self,
        model: TextEncoderModel,
        fingerprint: str,
        executor: ThreadPoolExecutor,
        max_batch_size: int,
        batch_wait_ms: float,
        cache_size: int,
        metrics: ServiceMetrics,
    ) -> None:
        self.model = model
        self.fingerprint = fingerprint
        self.cache = EmbeddingCache(cache_size)
        self._metrics = metrics
        self.executor = executor
        self._batcher: MicroBatcher[str, tuple[np.ndarray, bool]] = MicroBatcher(
            "encode",
            self._encode_batch,
            self.executor,
            max_batch_size=max_batch_size,
            max_wait_ms=batch_wait_ms,
            on_batch=self._record_batch,
        )

    @staticmethod
    def create_executor(torch_threads: int) -> ThreadPoolExecutor:
        """Create the single encoding thread, with ``torch_threads`` intra-op threads."""
        return ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="pig-encode",
            initializer=torch.set_num_threads,
            initargs=(torch_threads,),
        )

    def start(self) -> None:
        self._batcher.start()

    async def stop(self) -> None:
        await self._batcher.stop()
        self.executor.shutdown(wait=True, cancel_futures=True)

    def _record_batch(self, size: int, seconds: float) -> None:
        self._metrics.encode_batch_size.observe(size)

    def _encode_batch(self, texts: list[str]) -> list[tuple[np.ndarray, bool]]:
        # Runs on the encoding thread. Duplicates in one batch are encoded once.
        unique = list(dict.fromkeys(texts))
        # [B, D] float32, L2-normalised, on the CPU; autocast applies on CUDA devices.
        embeddings, truncated = self.model.embed_queries(unique)
        by_text = {
            text: (embeddings[row], bool(truncated[row])) for row, text in enumerate(unique)
        }
        return [by_text[text] for text in texts]

    def encode_now(self, texts: list[str]) -> list[tuple[np.ndarray, bool]]:
        """Encode texts synchronously on the encoding thread, bypassing batching and cache."""
        return self.executor.submit(self._encode_batch, texts).result()

    async def encode(self, text: str) -> EncodedQuery:
        """Return the embedding of one query, from the cache or from a batched forward pass."""
        cached = self.cache.get(self.fingerprint, text)
        if cached is not None:
            self._metrics.query_cache.labels(result="hit").inc()
            return EncodedQuery(embedding=cached[0], truncated=cached[1], cached=True)
        self._metrics.query_cache.labels(result="miss").inc()

        embedding, truncated = await self._batcher.submit(text)
        self.cache.put(self.fingerprint, text, embedding, truncated)
        return EncodedQuery(embedding=embedding, truncated=truncated, cached=False)
