"""The ingest run: discover, plan, decode, encode and write, then publish a snapshot.

Decoding (worker processes), encoding (a background thread) and writing (the main thread)
overlap. The unit of durability is one video: its catalog row and all its segment vectors are
committed in the same SQLite transaction (several videos per transaction), so a run killed at
any moment leaves each video either fully indexed or untouched, and the next run finishes the
rest. Snapshots are rebuilt from the catalog, so they always match it once published.

``--rebuild`` re-encodes everything in place: the new model's rows go to the catalog's next
generation while the old snapshot, its rows and ``INDEX_DIR/model`` keep serving. The new
model's copy is staged in ``INDEX_DIR/model.rebuild`` when the rebuild starts. No snapshot is
published until every file has been written again. Then one commit makes the new rows live and
retires the old ones, the staged model copy replaces ``INDEX_DIR/model`` and ``CURRENT`` moves
to the new snapshot. The retired rows are deleted when the next writer opens the catalog.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from indexer.decode import DecodeEvent, DecodeJob, DecodePool
from indexer.discover import discover
from indexer.encode import EncodeBatch, EncoderThread
from indexer.interrupts import deferred
from indexer.plan import Plan, PlannedFile, plan_files
from indexer.settings import IndexerSettings
from indexer.stats import RunStats
from shared.index_store import (
    CATALOG_FILE,
    MODEL_DIR,
    REBUILD_MODEL_DIR,
    Catalog,
    IndexPolicy,
    ModelMismatchError,
    ProbeFields,
    RebuildInProgressError,
    SNAPSHOTS_DIR,
    SegmentToWrite,
    SnapshotCorruptError,
    SnapshotNotFoundError,
    WriterLock,
    collect_garbage,
    point_current,
    publish_snapshot,
    read_current_snapshot_id,
    read_manifest,
    write_snapshot,
)

logger = logging.getLogger(__name__)

# Segments the main thread buffers between the decoders and the encoder, in encode batches.
BUFFER_BATCHES = 4
POLL_SECONDS = 0.05


class IngestError(Exception):
    """Nothing could be done: no such path, the model cannot load, or the index is unusable."""


@dataclass
class IngestOptions:
    """Per-run switches of ``indexer ingest`` that are not settings."""

    prune: bool = False  # mark catalog files under the ingest paths that no longer exist as removed
    rebuild: bool = False  # re-index everything in place, e.g. after a model change
    retry_failed: bool = False  # decode files that failed before even if they did not change
    progress: bool = True  # show a progress bar (only on a terminal)


def check_device(settings: IndexerSettings) -> None:
    """Raise ``IngestError`` when this machine cannot run the requested device and precision.

    This runs before the decode workers start and before the index directory is touched, so a
    wrong ``--device cuda`` or ``--precision fp16`` on the CPU fails at once and leaves nothing.
    """
    from shared.device import DeviceUnavailableError, resolve_device, resolve_precision

    try:
        device = resolve_device(settings.device)
    except DeviceUnavailableError as error:
        raise IngestError(f"invalid --device {settings.device}: {error}") from error
    try:
        resolve_precision(device, settings.precision)
    except ValueError as error:
        raise IngestError(f"invalid --precision {settings.precision} on device {device}: {error}") from error


def check_index_dir(index_dir: Path) -> None:
    """Raise ``IngestError`` when ``index_dir`` is a file or cannot be created or written."""
    if index_dir.exists() and not index_dir.is_dir():
        raise IngestError(f"--index-dir {index_dir} is a file, not a directory; pass a directory path")
    existing = index_dir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise IngestError(f"cannot create --index-dir {index_dir}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        action = "write to" if existing == index_dir else f"create {index_dir} in"
        raise IngestError(
            f"cannot {action} {existing}: no write permission or a read-only file system; pass a "
            f"writable --index-dir"
        )


def load_indexer_model(settings: IndexerSettings) -> Any:
    """Load the model named by the settings, defaulting to the index's own model copy.

    Raises ``IngestError`` when the model cannot be loaded (unknown name, missing weights,
    unreadable checkpoint, CUDA requested on a machine without it).
    """
    from shared.device import DeviceUnavailableError
    from shared.model import load_model
    from shared.model.errors import ModelError

    checkpoint = settings.checkpoint
    model_copy = settings.index_dir / MODEL_DIR
    if checkpoint is None and settings.model is None:
        if not (model_copy / "config.json").is_file():
            raise IngestError(
                f"no model given and {model_copy} does not exist; pass --checkpoint DIR or "
                f"--model NAME (for example --model ViT-B-32 --pretrained openai)"
            )
        checkpoint = model_copy
    try:
        if checkpoint is not None:
            return load_model(
                checkpoint=str(checkpoint),
                device=settings.device,
                precision=settings.precision,
                num_frames=settings.frames,
            )
        return load_model(
            model_name=settings.model,
            pretrained=settings.pretrained,
            head=settings.head,
            device=settings.device,
            precision=settings.precision,
            num_frames=settings.frames,
        )
    except (ModelError, DeviceUnavailableError, ValueError) as error:
        raise IngestError(f"cannot load the model: {error}") from error


def _save_model_copy(model: Any, index_dir: Path, name: str = MODEL_DIR) -> None:
    """Save ``model`` as ``INDEX_DIR/<name>``, replacing an older copy in one rename."""
    from shared.model.checkpoint import save_checkpoint

    staging = index_dir / f".{name}-{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    save_checkpoint(model, staging, provenance={"saved_by": "indexer ingest"})
    _replace_directory(staging, index_dir / name)


def _replace_directory(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``, moving an existing ``target`` aside and deleting it."""
    if target.exists():
        old = target.parent / f".{target.name}-{os.getpid()}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(target, old)
        os.rename(source, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(source, target)


def _copy_fingerprint(directory: Path) -> str | None:
    """Return the fingerprint a saved model copy records, or None when it is missing or unreadable."""
    from shared.model.checkpoint import read_checkpoint_config
    from shared.model.errors import ModelError

    try:
        fingerprint = read_checkpoint_config(directory).get("fingerprint")
    except (ModelError, OSError):
        return None
    return None if fingerprint is None else str(fingerprint)


def check_model(catalog: Catalog, model: Any, fingerprint: str, index_dir: Path, rebuild: bool) -> bool:
    """Check the model against the index and return True when this run is an in-place rebuild.

    Raises ``ModelMismatchError`` when the index was built by another model and
    ``RebuildInProgressError`` when a rebuild is unfinished, unless ``rebuild`` is set. With
    ``rebuild`` the run resumes an unfinished rebuild to the same model, or starts a new one
    (discarding an unfinished rebuild to another model). An index without a model gets a
    plain first ingest. Outside a rebuild nothing about the model is stored here:
    ``record_model`` does that once it has produced a vector.
    """
    stored = catalog.model_fingerprint()
    pending = catalog.rebuild_state()
    if pending is not None and not rebuild:
        staged = index_dir / REBUILD_MODEL_DIR
        staged_copy = str(staged) if _copy_fingerprint(staged) == pending.fingerprint else None
        raise RebuildInProgressError(stored, pending.fingerprint, fingerprint, str(index_dir), staged_copy)
    if pending is not None and pending.fingerprint == fingerprint:
        stage_rebuild_model(model, fingerprint, index_dir)
        logger.warning(
            "resuming the rebuild of %s to model %s: %d videos already written, the old model %s "
            "is served until it finishes", index_dir, fingerprint, pending.videos_done, stored,
        )
        return True
    if stored is not None and stored != fingerprint and not rebuild:
        raise ModelMismatchError(stored, fingerprint, str(index_dir))
    if not rebuild or stored is None:
        return False
    if stored == fingerprint and _published_fingerprint(index_dir) not in (None, fingerprint):
        # A rebuild killed after its final commit: only the model swap (done by
        # finish_model_swap) and the move of CURRENT are missing, and this run publishes.
        logger.warning("completing the rebuild of %s to model %s: publishing its snapshot", index_dir, fingerprint)
        return False
    # The model copy is staged before the rebuild is recorded, so that an unfinished rebuild
    # can always be resumed with `--checkpoint INDEX_DIR/model.rebuild`.
    stage_rebuild_model(model, fingerprint, index_dir)
    generation = catalog.start_rebuild(fingerprint, model.config.to_dict(), int(model.config.embed_dim))
    logger.warning(
        "rebuilding %s with model %s (generation %d): the vectors of model %s are served until "
        "the rebuild publishes its snapshot", index_dir, fingerprint, generation, stored,
    )
    return True


def _published_fingerprint(index_dir: Path) -> str | None:
    """Return the model fingerprint of the snapshot ``CURRENT`` names, or None when unreadable."""
    current = read_current_snapshot_id(index_dir)
    if current is None:
        return None
    try:
        return read_manifest(index_dir, current).model_fingerprint
    except (SnapshotNotFoundError, SnapshotCorruptError):
        return None


def finish_model_swap(catalog: Catalog, index_dir: Path) -> None:
    """Complete or clear a staged rebuild model copy that no unfinished rebuild owns.

    A rebuild killed between its final catalog commit and the swap of the model copy leaves
    ``INDEX_DIR/model.rebuild`` with the catalog's model, and that copy replaces
    ``INDEX_DIR/model`` now. Any other leftover staged copy is deleted.
    """
    staged = index_dir / REBUILD_MODEL_DIR
    if not staged.exists() or catalog.rebuild_state() is not None:
        return
    if _copy_fingerprint(staged) == catalog.model_fingerprint():
        logger.warning("finishing the model swap of an interrupted rebuild of %s", index_dir)
        _replace_directory(staged, index_dir / MODEL_DIR)
    else:
        shutil.rmtree(staged, ignore_errors=True)


def stage_rebuild_model(model: Any, fingerprint: str, index_dir: Path) -> None:
    """Save the rebuild's model as ``INDEX_DIR/model.rebuild`` unless it is already there."""
    if _copy_fingerprint(index_dir / REBUILD_MODEL_DIR) != fingerprint:
        _save_model_copy(model, index_dir, REBUILD_MODEL_DIR)


def record_model(catalog: Catalog, model: Any, fingerprint: str, index_dir: Path) -> None:
    """Store the model's fingerprint in the catalog and its copy in ``INDEX_DIR/model``.

    Call it outside a catalog transaction, just before the model's first vectors are written.
    A run that fails earlier (at its first encode batch, say) then leaves a fresh index without
    a fingerprint, so the next ingest can use any model.
    """
    if catalog.model_fingerprint() != fingerprint:
        _save_model_copy(model, index_dir)
        catalog.set_model(fingerprint, model.config.to_dict(), int(model.config.embed_dim))
    elif not (index_dir / MODEL_DIR / "config.json").is_file():
        _save_model_copy(model, index_dir)


@dataclass
class _VideoState:
    planned: PlannedFile  # the file and its content hash
    probe: dict[str, Any] | None = None  # probe fields from the worker
    bounds: list[tuple[float, float]] | None = None  # segment (start_s, end_s)
    vectors: dict[int, np.ndarray] = field(default_factory=dict)  # segment index -> [D]
    decoded_all: bool = False  # the worker sent "done"
    error_kind: str | None = None  # set when the file failed
    reason: str | None = None  # one-line failure reason

    def complete(self) -> bool:
        return self.decoded_all and self.bounds is not None and len(self.vectors) == len(self.bounds)


class _IngestLoop:
    """The overlapped decode -> encode -> write loop over the planned files."""

    def __init__(
        self,
        settings: IndexerSettings,
        model: Any,
        catalog: Catalog,
        stats: RunStats,
        progress: tqdm,
        pool: DecodePool,
        before_first_vectors: Callable[[], None] | None = None,
        intermediate_snapshots: bool = True,
    ) -> None:
        self.settings = settings
        # Publish a snapshot every `snapshot_every` encode batches (off during a rebuild).
        self.intermediate_snapshots = intermediate_snapshots
        self.before_first_vectors = before_first_vectors  # called once, before vectors are written
        self.pool = pool
        self.model = model
        self.catalog = catalog
        self.stats = stats
        self.progress = progress
        self.num_frames = int(model.config.num_frames)
        self.image_size = int(model.config.image_size)
        self.states: dict[int, _VideoState] = {}
        self.buffer: deque[tuple[tuple[int, int], np.ndarray]] = deque()  # ((task, segment), [T, S, S, 3])
        self.ready: list[_VideoState] = []
        self.batches_since_snapshot = 0
        self.failed_paths: dict[str, tuple[str, str]] = {}  # path -> (kind, reason)

    def run(self, files: list[PlannedFile]) -> None:
        queue = deque(enumerate(files))
        batch_size = self.settings.batch_size
        max_buffer = batch_size * BUFFER_BATCHES
        pool = self.pool
        encoder = EncoderThread(self.model)
        try:
            # A failure moves its file from `states` to `ready`. The loop also runs until `ready`
            # is written, because otherwise the files that fail last would be lost from the run.
            while queue or self.states or self.ready:
                while queue and pool.idle_workers and len(self.buffer) < max_buffer:
                    task_id, planned = queue.popleft()
                    self.states[task_id] = _VideoState(planned)
                    pool.submit(
                        DecodeJob(task_id, planned.file.path, self.settings.segment_seconds,
                                  self.num_frames, self.image_size)
                    )

                self._collect_vectors(encoder)
                self._write_ready()

                decoding_done = not queue and pool.busy_workers == 0
                while len(self.buffer) >= batch_size or (self.buffer and decoding_done):
                    if not self._submit_batch(encoder, batch_size):
                        break

                if pool.busy_workers and len(self.buffer) < max_buffer:
                    for event in pool.poll(POLL_SECONDS):
                        self._handle_event(event)
                elif self.states:
                    time.sleep(POLL_SECONDS / 5)
        finally:
            encoder.close()
            self._record_encoder(encoder)
            self.stats.decode_restarts = len(pool.stats.restarts)
            decode = self.stats.stage("decode")
            decode.seconds += pool.stats.worker_seconds
            decode.videos += pool.stats.files_done
            decode.segments += pool.stats.segments
            decode.frames += pool.stats.frames

    def _record_encoder(self, encoder: EncoderThread) -> None:
        encode = self.stats.stage("encode")
        encode.seconds += encoder.busy_seconds
        encode.segments += encoder.segments
        encode.frames += encoder.frames

    def _submit_batch(self, encoder: EncoderThread, batch_size: int) -> bool:
        count = min(batch_size, len(self.buffer))
        items = [self.buffer.popleft() for _ in range(count)]
        batch = EncodeBatch(keys=[key for key, _ in items], frames=np.stack([f for _, f in items]))  # [B, T, S, S, 3]
        if encoder.submit(batch, timeout_s=POLL_SECONDS):
            return True
        self.buffer.extendleft(reversed(items))
        return False

    def _handle_event(self, event: DecodeEvent) -> None:
        state = self.states.get(event.task_id)
        if state is None or state.error_kind is not None:
            return
        if event.kind == "info":
            state.probe = event.probe
            state.bounds = event.bounds
            if not event.bounds:
                self._fail(event.task_id, "no_segments", "the video has no duration to split into segments")
        elif event.kind == "frames":
            assert event.frames is not None
            for offset in range(event.frames.shape[0]):
                self.buffer.append(((event.task_id, event.first_segment + offset), event.frames[offset]))
        elif event.kind == "done":
            state.decoded_all = True
            self._move_if_complete(event.task_id)
        elif event.kind == "error":
            state.probe = event.probe or state.probe
            self._fail(event.task_id, event.error_kind or "decode_error", event.reason or "unknown error")

    def _fail(self, task_id: int, kind: str, reason: str) -> None:
        state = self.states.pop(task_id)
        state.error_kind, state.reason = kind, reason
        logger.info("failed to index %s (%s): %s", state.planned.file.path, kind, reason)
        self.buffer = deque(item for item in self.buffer if item[0][0] != task_id)
        self.ready.append(state)

    def _move_if_complete(self, task_id: int) -> None:
        state = self.states.get(task_id)
        if state is not None and state.complete():
            self.ready.append(self.states.pop(task_id))

    def _collect_vectors(self, encoder: EncoderThread) -> None:
        for result in encoder.results():
            if result.error is not None:
                raise IngestError(f"the model failed to encode a batch: {result.error}") from result.error
            assert result.vectors is not None
            touched = set()
            for (task_id, segment), vector in zip(result.keys, result.vectors):
                state = self.states.get(task_id)
                if state is not None:
                    state.vectors[segment] = vector
                    touched.add(task_id)
            for task_id in touched:
                self._move_if_complete(task_id)
            self.batches_since_snapshot += 1

    def _write_ready(self) -> None:
        if not self.ready:
            return
        if self.before_first_vectors is not None and any(s.error_kind is None for s in self.ready):
            self.before_first_vectors()
            self.before_first_vectors = None
        # The commit and the counters change together, or not at all, under Ctrl-C or SIGTERM.
        with deferred():
            with self.stats.timed("write") as write, self.catalog.transaction():
                for state in self.ready:
                    file = state.planned.file
                    probe = ProbeFields(**state.probe) if state.probe else None
                    if state.error_kind is not None:
                        self.catalog.write_failed(file.path, file.size, file.mtime_ns, state.planned.content_hash,
                                                  state.error_kind, state.reason or "", probe)
                        continue
                    assert state.bounds is not None
                    segments = [
                        SegmentToWrite(index, start_s, end_s, state.vectors[index])
                        for index, (start_s, end_s) in enumerate(state.bounds)
                    ]
                    self.catalog.write_indexed(file.path, file.size, file.mtime_ns, state.planned.content_hash,
                                               probe or ProbeFields(), segments)
                    write.videos += 1
                    write.segments += len(segments)
            for state in self.ready:
                if state.error_kind is not None:
                    self.stats.failed_by_kind[state.error_kind] += 1
                    self.failed_paths[state.planned.file.path] = (state.error_kind, state.reason or "")
                else:
                    self.stats.indexed += 1
                    self.stats.segments_written += len(state.bounds or [])
            self.progress.update(len(self.ready))
            self.progress.set_postfix(failed=self.stats.failed, refresh=False)
            self.ready = []

        if self.intermediate_snapshots and self.batches_since_snapshot >= self.settings.snapshot_every:
            self.batches_since_snapshot = 0
            with self.stats.timed("snapshot"):
                publish_snapshot(self.settings.index_dir, self.catalog, policy_from(self.settings),
                                 keep=self.settings.keep_snapshots)


def policy_from(settings: IndexerSettings) -> IndexPolicy:
    """Return the snapshot index policy of the settings."""
    return IndexPolicy(
        index_type=settings.index_type,
        approx_threshold=settings.approx_threshold,
        memory_budget_bytes=int(settings.memory_budget_gb * 1024**3),
    )


def _write_plan_records(catalog: Catalog, plan: Plan, stats: RunStats) -> None:
    """Store touched files, duplicates of indexed content and unreadable files."""
    with stats.timed("write"), catalog.transaction():
        for planned in plan.touched:
            catalog.update_file_stat(planned.file.path, planned.file.size, planned.file.mtime_ns)
        for planned in plan.duplicates:
            if planned.duplicate_of_id is not None:
                catalog.write_duplicate(planned.file.path, planned.file.size, planned.file.mtime_ns,
                                        planned.content_hash or "", planned.duplicate_of_id)
                stats.duplicates += 1
        for planned in plan.unreadable:
            catalog.write_failed(planned.file.path, planned.file.size, planned.file.mtime_ns, None,
                                 "unreadable", planned.hash_error or "cannot read the file")
            stats.failed_by_kind["unreadable"] += 1


def _write_run_duplicates(catalog: Catalog, plan: Plan, stats: RunStats, failed: dict[str, tuple[str, str]]) -> None:
    """Store files whose content equals another file of this run, now that it is written."""
    pending = [p for p in plan.duplicates if p.duplicate_of_path is not None]
    if not pending:
        return
    with stats.timed("write"), catalog.transaction():
        for planned in pending:
            file = planned.file
            original = catalog.get_video_by_path(planned.duplicate_of_path or "")
            if original is not None and original.status == "indexed":
                catalog.write_duplicate(file.path, file.size, file.mtime_ns, planned.content_hash or "", original.id)
                stats.duplicates += 1
                continue
            kind, reason = failed.get(planned.duplicate_of_path or "", ("not_indexed", "it was not indexed"))
            catalog.write_failed(file.path, file.size, file.mtime_ns, planned.content_hash, kind,
                                 f"same content as {planned.duplicate_of_path}, which failed: {reason}")
            stats.failed_by_kind[kind] += 1


def _prune(catalog: Catalog, roots: list[str], stats: RunStats) -> None:
    """Mark catalog files under ``roots`` that no longer exist as removed."""
    prefixes = [root.rstrip(os.sep) + os.sep for root in roots]
    with stats.timed("write"), catalog.transaction():
        for video in catalog.list_videos():
            if video.status == "removed":
                continue
            under_root = video.path in roots or any(video.path.startswith(p) for p in prefixes)
            if under_root and not os.path.exists(video.path):
                catalog.mark_removed(video.path)
                stats.removed += 1
                logger.info("pruned %s: the file no longer exists", video.path)


def run_ingest(
    settings: IndexerSettings, paths: list[str], options: IngestOptions, stats: RunStats | None = None
) -> RunStats:
    """Run one ingest and return its statistics.

    Raises ``IngestError`` when nothing could be done, ``IndexLockedError`` when another writer
    runs, and ``ModelMismatchError`` when the index was built by another model. The settings,
    the paths, the device and the model are all checked before the index directory is created
    or changed. Pass ``stats`` to read the counts of a run that ends with an exception, such as
    ``KeyboardInterrupt``.
    """
    started = time.perf_counter()
    stats = stats if stats is not None else RunStats()
    index_dir = settings.index_dir.resolve()
    settings = settings.model_copy(update={"index_dir": index_dir})
    check_index_dir(index_dir)

    with stats.timed("discover") as discover_stage:
        found = discover(paths, exclude=[index_dir])
        discover_stage.videos = len(found.files)
    stats.discovered = len(found.files)
    stats.missing_paths = found.missing
    stats.hidden_skipped = found.hidden_skipped
    stats.ignored_files = found.ignored_files
    for missing in found.missing:
        logger.warning("path %s does not exist; skipping it", missing)
    if not found.roots:
        raise IngestError(f"none of the paths exist: {', '.join(map(str, paths))}")
    if found.hidden_skipped:
        logger.info("skipped %d hidden files and folders (names starting with '.')", found.hidden_skipped)
    if not found.files and not options.prune:
        raise IngestError(
            f"no video files found under {', '.join(found.roots)} ({found.ignored_files} non-video "
            f"files and {found.hidden_skipped} hidden files or folders skipped); nothing to index"
        )

    check_device(settings)
    with DecodePool(settings.workers, settings.decode_timeout) as pool:
        # The workers start (and import their decoders) while the model loads.
        with stats.timed("model_load"):
            model = load_indexer_model(settings)
        from shared.model.checkpoint import model_fingerprint

        fingerprint = model_fingerprint(model)
        index_dir.mkdir(parents=True, exist_ok=True)
        with WriterLock(index_dir):
            catalog = Catalog(index_dir / CATALOG_FILE, read_only=False)
            try:
                finish_model_swap(catalog, index_dir)
                rebuilding = check_model(catalog, model, fingerprint, index_dir, options.rebuild)
                options = replace(options, rebuild=rebuilding)
                _run_recorded(catalog, model, fingerprint, pool, settings, paths, found, options, stats, started)
            finally:
                catalog.close()
    return stats


def _run_recorded(
    catalog: Catalog,
    model: Any,
    fingerprint: str,
    pool: DecodePool,
    settings: IndexerSettings,
    paths: list[str],
    found: Any,
    options: IngestOptions,
    stats: RunStats,
    started: float,
) -> None:
    """Run the ingest between a ``running`` run record and its final status."""
    run_record = {"paths": [str(p) for p in paths], "settings": settings.model_dump(mode="json"), "pid": os.getpid()}
    run_id = catalog.start_run(run_record)
    status = "failed"
    try:
        _ingest_into(catalog, model, fingerprint, pool, settings, found.files, found.roots, options, stats)
        status = "completed"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        stats.wall_seconds = time.perf_counter() - started
        record = {**run_record, **stats.to_record()}
        catalog.finish_run(run_id, status, record)


def _ingest_into(
    catalog: Catalog,
    model: Any,
    fingerprint: str,
    pool: DecodePool,
    settings: IndexerSettings,
    files: list,
    roots: list[str],
    options: IngestOptions,
    stats: RunStats,
) -> None:
    if options.prune:
        _prune(catalog, roots, stats)

    with stats.timed("plan") as plan_stage:
        plan = plan_files(files, catalog, retry_failed=options.retry_failed)
        plan_stage.videos = len(files)
    stats.skipped_unchanged = plan.unchanged + len(plan.touched)
    _write_plan_records(catalog, plan, stats)

    show = options.progress and sys.stderr.isatty()
    progress = tqdm(total=len(plan.to_decode), unit="video", desc="ingest", disable=not show, dynamic_ncols=True)
    def before_first_vectors() -> None:
        if options.rebuild:
            stage_rebuild_model(model, fingerprint, settings.index_dir)
        else:
            record_model(catalog, model, fingerprint, settings.index_dir)

    loop = _IngestLoop(settings, model, catalog, stats, progress, pool, before_first_vectors,
                       intermediate_snapshots=not options.rebuild)
    pipeline_started = time.perf_counter()
    try:
        loop.run(plan.to_decode)
    finally:
        progress.close()
        stats.pipeline_seconds = time.perf_counter() - pipeline_started
    _write_run_duplicates(catalog, plan, stats, loop.failed_paths)
    if options.rebuild:
        stage_rebuild_model(model, fingerprint, settings.index_dir)
        _finish_rebuild(catalog, settings, stats)
        return
    # A run that indexed nothing still completed with this model, and a snapshot needs its D.
    record_model(catalog, model, fingerprint, settings.index_dir)

    changed = stats.indexed or stats.removed or stats.duplicates or loop.batches_since_snapshot
    if changed or _current_snapshot_is_stale(settings.index_dir, catalog):
        with stats.timed("snapshot"):
            manifest = publish_snapshot(settings.index_dir, catalog, policy_from(settings), keep=settings.keep_snapshots)
        stats.snapshot_id = manifest.snapshot_id
        stats.vector_count = manifest.vector_count
        stats.index_type = manifest.index_type
        stats.recall_at_10 = manifest.recall_at_10
    else:
        current = read_current_snapshot_id(settings.index_dir)
        stats.snapshot_id = current
        stats.vector_count = None if current is None else catalog.snapshot_vector_count(current)


def _current_snapshot_is_stale(index_dir: Path, catalog: Catalog) -> bool:
    """Return True when ``CURRENT`` names no snapshot that matches the catalog's live rows."""
    current = read_current_snapshot_id(index_dir)
    if current is None or not (index_dir / SNAPSHOTS_DIR / current).is_dir():
        return True
    if catalog.snapshot_vector_count(current) != catalog.count_segments():
        return True
    try:
        manifest = read_manifest(index_dir, current)
    except (SnapshotNotFoundError, SnapshotCorruptError):
        return True
    # A rebuild killed after its final commit leaves CURRENT on the old model's snapshot.
    return manifest.model_fingerprint != catalog.model_fingerprint()


def _finish_rebuild(catalog: Catalog, settings: IndexerSettings, stats: RunStats) -> None:
    """Publish the rebuild's one snapshot, swapping catalog rows and model copy with it.

    The snapshot is built first, while readers still serve the old one. Then one commit
    makes the new generation live, retires the old one and records the snapshot. The old rows
    stay, so the ids of the old snapshot still resolve. The staged model copy replaces
    ``INDEX_DIR/model`` and ``CURRENT`` moves. After a run killed before the commit, the next
    ``--rebuild`` run resumes the rebuild. After one killed later, the next ingest completes
    it (``finish_model_swap`` and ``_current_snapshot_is_stale``).
    """
    index_dir = settings.index_dir
    with stats.timed("snapshot"):
        manifest = write_snapshot(index_dir, catalog, policy_from(settings), rebuild=True)
        # A running service serves the old snapshot until it reloads (its reload interval plus
        # the model load), so the old rows are only retired here. The next writer deletes them.
        # NOTE: a writer started before that reload leaves the old snapshot's hits unresolved.
        with deferred():
            retired = catalog.finish_rebuild(manifest.snapshot_id, manifest.vector_count, manifest.index_type)
            _replace_directory(index_dir / REBUILD_MODEL_DIR, index_dir / MODEL_DIR)
            point_current(index_dir, manifest.snapshot_id)
        collect_garbage(index_dir, catalog, keep=settings.keep_snapshots)
    logger.info(
        "rebuild of %s finished: published snapshot %s (%d vectors) of model %s; retired %d "
        "videos that were not found again (the next writer deletes them)",
        index_dir, manifest.snapshot_id, manifest.vector_count, manifest.model_fingerprint, retired,
    )
    stats.snapshot_id = manifest.snapshot_id
    stats.vector_count = manifest.vector_count
    stats.index_type = manifest.index_type
    stats.recall_at_10 = manifest.recall_at_10
