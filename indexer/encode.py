"""Encode stage: batches of segment frames to video vectors, in a background thread.

The thread runs the model while the main thread keeps reading decoded frames from the workers,
so decoding and encoding overlap. PyTorch releases the GIL inside its kernels, which lets the
main thread make progress on the CPU as well as on the GPU. The input queue is bounded, so the
main thread blocks (and stops taking frames from the workers) when the encoder falls behind.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)


@dataclass
class EncodeBatch:
    """Frames of several segments, possibly from several videos."""

    keys: list[tuple[int, int]]  # (task_id, segment index) of each row
    frames: np.ndarray  # uint8 [B, T, S, S, 3]


@dataclass
class EncodedBatch:
    """The vectors of one ``EncodeBatch``, or the error that stopped encoding."""

    keys: list[tuple[int, int]]  # same order as the input batch
    vectors: np.ndarray | None  # float32 [B, D], L2-normalised
    seconds: float  # wall time of the encode call
    error: BaseException | None = None  # set when the model raised; the run stops


class EncoderThread:
    """Runs ``model.embed_videos`` on batches from a bounded queue."""

    def __init__(self, model: object, max_pending_batches: int = 2) -> None:
        self.model = model
        self.inbox: queue.Queue[EncodeBatch | None] = queue.Queue(maxsize=max_pending_batches)
        self.outbox: queue.Queue[EncodedBatch] = queue.Queue()
        self.busy_seconds = 0.0  # total encode wall time
        self.segments = 0  # segments encoded
        self.frames = 0  # frames encoded
        self.batches = 0  # batches encoded
        self._thread = threading.Thread(target=self._run, name="pig-encode", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            batch = self.inbox.get()
            if batch is None:
                return
            started = time.perf_counter()
            try:
                vectors = self.model.embed_videos(batch.frames)  # [B, D]
            except (RuntimeError, ValueError, MemoryError) as error:
                logger.error("encoding a batch of %d segments failed: %s", len(batch.keys), error)
                self.outbox.put(EncodedBatch(batch.keys, None, time.perf_counter() - started, error))
                continue
            seconds = time.perf_counter() - started
            self.busy_seconds += seconds
            self.segments += len(batch.keys)
            self.frames += int(batch.frames.shape[0] * batch.frames.shape[1])
            self.batches += 1
            vectors = np.ascontiguousarray(vectors, dtype=np.float32)
            self.outbox.put(EncodedBatch(batch.keys, vectors, seconds))

    def submit(self, batch: EncodeBatch, timeout_s: float) -> bool:
        """Queue a batch; return False when the queue stayed full for ``timeout_s``."""
        try:
            self.inbox.put(batch, timeout=timeout_s)
        except queue.Full:
            return False
        return True

    def results(self) -> list[EncodedBatch]:
        """Return every finished batch without waiting."""
        finished = []
        while True:
            try:
                finished.append(self.outbox.get_nowait())
            except queue.Empty:
                return finished

    def close(self) -> None:
        """Stop the thread after the queued batches."""
        self.inbox.put(None)
        self._thread.join()
