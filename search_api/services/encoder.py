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


@dataclass(frozen=True, eq=False)
class ServedModel:
    """A loaded text model with the fingerprint of its weights.

    The index view pairs it with the snapshot whose vectors it made, so a model swap after
    a rebuild replaces both with one assignment.
    """

    model: TextEncoderModel
    fingerprint: str
    name: str
    device: str


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
    """Encode query texts with a model's text tower on a single worker thread.

    The worker thread (see ``create_executor``) runs every forward pass of the service, so
    the number of threads stays fixed whatever the request rate. Concurrent queries are
    grouped into one ``embed_queries`` call per model of at most ``max_batch_size`` texts.
    Each query names its model, so queries that started before a model swap finish on the
    old model.
    """

    def __init__(
        self,
        executor: ThreadPoolExecutor,
        max_batch_size: int,
        batch_wait_ms: float,
        cache_size: int,
        metrics: ServiceMetrics,
    ) -> None:
        self.cache = EmbeddingCache(cache_size)
        self._metrics = metrics
        self.executor = executor
        self._batcher: MicroBatcher[tuple[ServedModel, str], tuple[np.ndarray, bool]] = MicroBatcher(
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

    def _encode_batch(
        self, items: list[tuple[ServedModel, str]]
    ) -> list[tuple[np.ndarray, bool]]:
        # Runs on the encoding thread: one forward pass per model in the batch, and
        # duplicates of one model are encoded once.
        texts_by_model: dict[str, tuple[ServedModel, dict[str, None]]] = {}
        for served, text in items:
            texts_by_model.setdefault(served.fingerprint, (served, {}))[1][text] = None
        encoded: dict[tuple[str, str], tuple[np.ndarray, bool]] = {}
        for fingerprint, (served, texts) in texts_by_model.items():
            unique = list(texts)
            # [B, D] float32, L2-normalised, on the CPU; autocast applies on CUDA devices.
            embeddings, truncated = served.model.embed_queries(unique)
            for row, text in enumerate(unique):
                encoded[(fingerprint, text)] = (embeddings[row], bool(truncated[row]))
        return [encoded[(served.fingerprint, text)] for served, text in items]

    def encode_now(self, served: ServedModel, texts: list[str]) -> list[tuple[np.ndarray, bool]]:
        """Encode texts synchronously on the encoding thread, bypassing batching and cache."""
        items = [(served, text) for text in texts]
        return self.executor.submit(self._encode_batch, items).result()

    async def encode(self, text: str, served: ServedModel) -> EncodedQuery:
        """Return the embedding of one query by ``served``, from the cache or a forward pass."""
        cached = self.cache.get(served.fingerprint, text)
        if cached is not None:
            self._metrics.query_cache.labels(result="hit").inc()
            return EncodedQuery(embedding=cached[0], truncated=cached[1], cached=True)
        self._metrics.query_cache.labels(result="miss").inc()

        embedding, truncated = await self._batcher.submit((served, text))
        self.cache.put(served.fingerprint, text, embedding, truncated)
        return EncodedQuery(embedding=embedding, truncated=truncated, cached=False)
