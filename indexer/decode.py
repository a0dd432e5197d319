"""Decode stage: worker processes that turn video files into segment frames.

Each worker is a ``spawn``-started process with its own pipe, and decodes one file at a time:
it probes the file, splits it into segments, samples ``num_frames`` frames per segment and sends
them back in chunks of a few segments. The main process reads the pipes only when it has room
for more frames, so a worker decodes at most one chunk ahead of what the encoder has taken.

A worker that exceeds the per-file timeout is killed and replaced, and its file is reported
with ``DecodeTimeoutError``; a worker that dies is replaced and its file reported with
``DecoderCrashError``. Either way one file is lost, not the run. The timeout clock runs only
while the main process waits on the workers, so time the main process spends encoding (when
workers are blocked sending frames) is not charged to the file being decoded.

This module imports neither torch nor the video library at import time, so spawning a worker
stays cheap; the worker imports ``shared.video`` itself.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

# Segments sent per message; a message carries CHUNK_SEGMENTS * T * S * S * 3 bytes of frames.
CHUNK_SEGMENTS = 4


@dataclass(frozen=True)
class DecodeJob:
    """A decode request for one file."""

    task_id: int  # the indexer's id for this file within the run
    path: str  # file to decode
    segment_seconds: float  # segment length, seconds
    num_frames: int  # T: frames sampled per segment
    image_size: int  # S: frame side in pixels


@dataclass
class DecodeEvent:
    """One message from the decode stage, for the main process."""

    kind: str  # "info", "frames", "done" or "error"
    task_id: int  # the file it concerns
    probe: dict[str, Any] | None = None  # "info": probe fields of the file
    bounds: list[tuple[float, float]] | None = None  # "info": (start_s, end_s) of each segment
    first_segment: int = 0  # "frames": index of the first segment in `frames`
    frames: np.ndarray | None = None  # "frames": uint8 [n, T, S, S, 3]
    decode_seconds: float = 0.0  # "done": worker time spent on the file
    error_kind: str | None = None  # "error": VideoError kind, e.g. "truncated"
    reason: str | None = None  # "error": one-line reason


def probe_to_dict(info: Any) -> dict[str, Any]:
    """Return the catalog's probe fields from a ``shared.video`` ``VideoInfo``."""
    return {
        "duration": info.duration_s,
        "fps": info.fps,
        "frame_count": info.frame_count,
        "width": info.width,
        "height": info.height,
        "codec": info.codec,
        "rotation": info.rotation,
    }


def _decode_file(job: DecodeJob, connection: Connection) -> None:
    from shared.video.decode import decode_segments
    from shared.video.errors import VideoError
    from shared.video.probe import probe
    from shared.video.sampling import segment_bounds

    started = time.process_time()
    info = None
    try:
        info = probe(job.path)
        bounds = [(float(s), float(e)) for s, e in segment_bounds(info.duration_s, job.segment_seconds)]
        connection.send(DecodeEvent("info", job.task_id, probe=probe_to_dict(info), bounds=bounds))
        # Decoding a few segments per call bounds the memory a long video takes in flight.
        for first in range(0, len(bounds), CHUNK_SEGMENTS):
            chunk = bounds[first : first + CHUNK_SEGMENTS]
            frames = decode_segments(job.path, chunk, job.num_frames, job.image_size, info=info)
            stacked = np.stack(frames)  # [n, T, S, S, 3]
            connection.send(DecodeEvent("frames", job.task_id, first_segment=first, frames=stacked))
    except VideoError as error:
        connection.send(
            DecodeEvent(
                "error",
                job.task_id,
                probe=None if info is None else probe_to_dict(info),
                error_kind=error.kind,
                reason=error.reason,
            )
        )
        return
    except (ValueError, RuntimeError, OSError, MemoryError) as error:
        # An error the video library did not classify; record it for this file and go on.
        connection.send(
            DecodeEvent(
                "error",
                job.task_id,
                probe=None if info is None else probe_to_dict(info),
                error_kind="decode_error",
                reason=f"{type(error).__name__}: {error}",
            )
        )
        return
    connection.send(DecodeEvent("done", job.task_id, decode_seconds=time.process_time() - started))


def worker_main(connection: Connection) -> None:
    """Run a decode worker: decode each job received until ``None`` or the pipe closes."""
    # Ctrl-C reaches the whole process group; the main process decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Import the decoders now, while the main process loads the model, not on the first file.
    import shared.video.decode  # noqa: F401
    import shared.video.probe  # noqa: F401

    while True:
        try:
            job = connection.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        try:
            _decode_file(job, connection)
        except (BrokenPipeError, EOFError):
            return


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess  # the worker process
    connection: Connection  # main process end of its pipe
    job: DecodeJob | None = None  # file being decoded, None when idle
    budget_left: float = 0.0  # seconds of waiting left before the job times out
    restarts: int = 0  # how many times this slot was restarted


@dataclass
class DecodeStats:
    """Counters of the decode stage."""

    files_done: int = 0  # files decoded to the end
    segments: int = 0  # segments received
    frames: int = 0  # frames received
    worker_seconds: float = 0.0  # CPU seconds the workers report for finished files
    timeouts: int = 0  # files whose worker was killed for exceeding the timeout
    crashes: int = 0  # files whose worker died
    restarts: list[str] = field(default_factory=list)  # one line per worker restart


class DecodePool:
    """A fixed number of decode worker processes with per-file timeouts."""

    def __init__(self, workers: int, timeout_s: float) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.timeout_s = timeout_s
        self._context = multiprocessing.get_context("spawn")
        self._workers = [self._start_worker() for _ in range(workers)]
        self.stats = DecodeStats()

    def _start_worker(self) -> _Worker:
        parent, child = self._context.Pipe(duplex=True)
        process = self._context.Process(target=worker_main, args=(child,), daemon=True, name="pig-decode")
        process.start()
        child.close()
        return _Worker(process=process, connection=parent)

    @property
    def idle_workers(self) -> int:
        """Number of workers without a job."""
        return sum(1 for worker in self._workers if worker.job is None)

    @property
    def busy_workers(self) -> int:
        """Number of workers decoding a file."""
        return len(self._workers) - self.idle_workers

    def worker_pids(self) -> list[int]:
        """Return the pids of the live workers."""
        return [w.process.pid for w in self._workers if w.process.pid is not None]

    def submit(self, job: DecodeJob) -> bool:
        """Give ``job`` to an idle worker; return False when every worker is busy."""
        for worker in self._workers:
            if worker.job is None:
                worker.job = job
                worker.budget_left = self.timeout_s
                try:
                    worker.connection.send(job)
                except (BrokenPipeError, OSError):
                    # The idle worker died; restart it and hand the job to the new process.
                    self._replace(worker, f"idle worker {worker.process.pid} was found dead")
                    worker.job = job
                    worker.budget_left = self.timeout_s
                    worker.connection.send(job)
                return True
        return False

    def poll(self, timeout_s: float) -> list[DecodeEvent]:
        """Wait up to ``timeout_s`` for messages; return at most one event per busy worker.

        Expired jobs are killed here and reported as ``decode_timeout`` errors, dead workers as
        ``decoder_crash`` errors; either way the worker slot is restarted.
        """
        busy = [w for w in self._workers if w.job is not None]
        if not busy:
            return []
        wait_s = max(0.0, min(timeout_s, min(w.budget_left for w in busy)))
        started = time.monotonic()
        ready = set(wait([w.connection for w in busy] + [w.process.sentinel for w in busy], wait_s))
        waited = time.monotonic() - started

        events: list[DecodeEvent] = []
        for worker in busy:
            worker.budget_left -= waited
            job = worker.job
            assert job is not None
            if worker.connection in ready or worker.connection.poll(0):
                try:
                    event = worker.connection.recv()
                except (EOFError, OSError):
                    events.append(self._crashed(worker, job))
                    continue
                events.append(event)
                self._account(event)
                if event.kind in ("done", "error"):
                    worker.job = None
            elif worker.process.sentinel in ready or not worker.process.is_alive():
                events.append(self._crashed(worker, job))
            elif worker.budget_left <= 0:
                events.append(self._timed_out(worker, job))
        return events

    def _account(self, event: DecodeEvent) -> None:
        if event.kind == "frames" and event.frames is not None:
            self.stats.segments += int(event.frames.shape[0])
            self.stats.frames += int(event.frames.shape[0] * event.frames.shape[1])
        elif event.kind == "done":
            self.stats.files_done += 1
            self.stats.worker_seconds += event.decode_seconds

    def _crashed(self, worker: _Worker, job: DecodeJob) -> DecodeEvent:
        worker.process.join(timeout=5)
        exit_code = worker.process.exitcode
        reason = f"the decoder process died with exit code {exit_code} while decoding this file"
        logger.warning("decode worker %s crashed on %s (exit code %s); restarting it",
                       worker.process.pid, job.path, exit_code)
        self.stats.crashes += 1
        self._replace(worker, f"worker crashed on {job.path}")
        return DecodeEvent("error", job.task_id, error_kind="decoder_crash", reason=reason)

    def _timed_out(self, worker: _Worker, job: DecodeJob) -> DecodeEvent:
        logger.warning("decoding %s exceeded the %g s timeout; killing worker %s and starting a new one",
                       job.path, self.timeout_s, worker.process.pid)
        self.stats.timeouts += 1
        self._replace(worker, f"worker timed out on {job.path}")
        reason = f"decoding took longer than the {self.timeout_s:g} s timeout (--decode-timeout)"
        return DecodeEvent("error", job.task_id, error_kind="decode_timeout", reason=reason)

    def _replace(self, worker: _Worker, cause: str) -> None:
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join(timeout=5)
        worker.connection.close()
        fresh = self._start_worker()
        worker.process, worker.connection = fresh.process, fresh.connection
        worker.job = None
        worker.restarts += 1
        self.stats.restarts.append(cause)

    def close(self) -> None:
        """Stop every worker: ask politely, then kill those still running after a second."""
        for worker in self._workers:
            try:
                worker.connection.send(None)
            except (BrokenPipeError, OSError):
                pass
        deadline = time.monotonic() + 1.0
        for worker in self._workers:
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=5)
            worker.connection.close()

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
