"""Micro-batching of concurrent requests into one call on a dedicated worker thread."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


class BatcherClosedError(RuntimeError):
    """Raised when an item is submitted to a batcher that was stopped."""


class MicroBatcher(Generic[ItemT, ResultT]):
    """Collect items from concurrent coroutines and process them in batches.

    The first item of a batch waits at most ``max_wait_ms`` for others, and a batch contains at
    most ``max_batch_size`` items. ``process_batch`` runs on ``executor`` and must return one
    result per item, in order. Only one batch runs at a time, so items that arrive while the
    executor is busy queue up and form the next, larger batch.
    """

    def __init__(
        self,
        name: str,
        process_batch: Callable[[list[ItemT]], Sequence[ResultT]],
        executor: ThreadPoolExecutor,
        max_batch_size: int,
        max_wait_ms: float,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self.name = name
        self._process_batch = process_batch
        self._executor = executor
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_ms / 1000.0
        self._on_batch = on_batch
        # Bounded so that a flood of requests waits in `submit` instead of growing memory.
        self._queue: asyncio.Queue[tuple[ItemT, asyncio.Future[ResultT]]] = asyncio.Queue(
            maxsize=max_batch_size * 64
        )
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"micro-batcher-{self.name}"
            )

    async def stop(self) -> None:
        """Stop the loop and fail every item still queued."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(BatcherClosedError(f"{self.name} batcher stopped"))

    async def submit(self, item: ItemT) -> ResultT:
        """Queue one item and wait for its result."""
        if self._closed:
            raise BatcherClosedError(f"{self.name} batcher is stopped")
        future: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        await self._queue.put((item, future))
        return await future

    async def _collect_batch(self) -> list[tuple[ItemT, asyncio.Future[ResultT]]]:
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self._max_wait_s
        while len(batch) < self._max_batch_size:
            # Drain what is already queued without waiting, then wait out the deadline.
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect_batch()
            # Requests whose client went away cancel their future; skip their work.
            live = [(item, future) for item, future in batch if not future.cancelled()]
            if not live:
                continue
            items = [item for item, _ in live]
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self._process_batch, items)
                if len(results) != len(items):
                    raise RuntimeError(
                        f"{self.name} batch returned {len(results)} results for {len(items)} items"
                    )
            except asyncio.CancelledError:
                for _, future in live:
                    if not future.done():
                        future.set_exception(BatcherClosedError(f"{self.name} batcher stopped"))
                raise
            except Exception as error:  # noqa: BLE001 - every waiting request gets the error
                logger.exception("%s batch of %d items failed: %s", self.name, len(items), error)
                for _, future in live:
                    if not future.done():
                        future.set_exception(error)
                continue
            if self._on_batch is not None:
                self._on_batch(len(items), time.perf_counter() - started)
            for (_, future), result in zip(live, results):
                if not future.done():
                    future.set_result(result)
