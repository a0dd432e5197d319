"""The served index: the catalog, the current FAISS snapshot and its hot reload."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from shared.index_store import (
    MODEL_DIR,
    Catalog,
    Snapshot,
    load_snapshot,
    read_current_snapshot_id,
)

from search_api.metrics import ServiceMetrics
from search_api.services.encoder import ServedModel

logger = logging.getLogger(__name__)

ResultT = TypeVar("ResultT")


class IndexModelMismatchError(RuntimeError):
    """Raised when the index was built with another model than the one the service loaded."""

    def __init__(
        self,
        message: str,
        index_fingerprint: str | None = None,
        served_fingerprint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.index_fingerprint = index_fingerprint
        self.served_fingerprint = served_fingerprint


@dataclass(frozen=True)
class IndexView:
    """One consistent view of the index: a snapshot, the model whose vectors it contains and
    the video count that goes with it.

    Requests read ``IndexService.view`` once and use that object to the end, so a reload
    that swaps the reference never changes the snapshot or the model under a running request.
    """

    snapshot: Snapshot | None
    snapshot_id: str | None
    vector_count: int
    total_videos: int
    model: ServedModel


class IndexService:
    """Own the read-only catalog and the current snapshot of one index directory.

    Every catalog call runs on one dedicated thread, which also opens the catalog, so the
    SQLite connection is only ever used by the thread that created it.

    When a new snapshot contains vectors of another model (the index was rebuilt), the service
    either loads the index's new model copy with ``model_loader`` and swaps model and
    snapshot together, or, when ``model_loader`` is None (the model was given explicitly),
    keeps the served view and sets ``mismatch`` so that searches get 503.
    """

    def __init__(
        self,
        index_dir: Path,
        model: ServedModel,
        reload_interval_s: float,
        metrics: ServiceMetrics,
        model_loader: Callable[[], ServedModel] | None = None,
    ) -> None:
        self.index_dir = index_dir
        self.reload_interval_s = reload_interval_s
        self._metrics = metrics
        self._model_loader = model_loader
        self._catalog: Catalog | None = None
        self._catalog_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pig-catalog")
        self._reload_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pig-reload")
        self._view = IndexView(
            snapshot=None, snapshot_id=None, vector_count=0, total_videos=0, model=model
        )
        # (snapshot id, model copy stamp) of the last failed reload; it is retried only when
        # CURRENT or the model copy changes.
        self._failed: tuple[str, object] | None = None
        self.mismatch: str | None = None
        self._reload_task: asyncio.Task[None] | None = None

    @property
    def view(self) -> IndexView:
        return self._view

    @property
    def model_fingerprint(self) -> str:
        """Fingerprint of the served model."""
        return self._view.model.fingerprint

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            raise RuntimeError("the catalog is not open; call IndexService.open() first")
        return self._catalog

    async def run_catalog(self, function: Callable[..., ResultT], *args: Any) -> ResultT:
        """Run ``function(*args)`` on the catalog thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._catalog_executor, function, *args)

    async def open(self) -> None:
        """Open the catalog, check its model fingerprint and load the current snapshot.

        Raises IndexModelMismatchError when the catalog records another model, and the
        store's error when the current snapshot cannot be loaded.
        """
        catalog_path = self.index_dir / "catalog.sqlite"
        self._catalog = await self.run_catalog(lambda: Catalog(catalog_path, read_only=True))
        catalog_fingerprint = await self.run_catalog(self.catalog.model_fingerprint)
        if catalog_fingerprint is not None and catalog_fingerprint != self.model_fingerprint:
            raise IndexModelMismatchError(
                f"index {self.index_dir} was built with model {catalog_fingerprint} but the "
                f"service loaded model {self.model_fingerprint}; leave --checkpoint and "
                f"PIG_CHECKPOINT unset to load the model copy stored in "
                f"{self.index_dir / MODEL_DIR}",
                index_fingerprint=catalog_fingerprint,
                served_fingerprint=self.model_fingerprint,
            )

        snapshot_id = read_current_snapshot_id(self.index_dir)
        if snapshot_id is None:
            logger.warning(
                "index %s has no published snapshot yet; searches return no results until "
                "`indexer ingest` publishes one",
                self.index_dir,
            )
            await self._set_view(None, self._view.model)
            return
        # At start-up there is nothing served yet, so a torn current snapshot falls back to the
        # newest older one that verifies; a reload instead keeps what is already served.
        snapshot = await self._load(snapshot_id, fallback=True)
        self._check_fingerprint(snapshot, self._view.model)
        await self._set_view(snapshot, self._view.model)

    async def close(self) -> None:
        if self._reload_task is not None:
            self._reload_task.cancel()
            try:
                await self._reload_task
            except asyncio.CancelledError:
                pass
            self._reload_task = None
        if self._catalog is not None and hasattr(self._catalog, "close"):
            await self.run_catalog(self._catalog.close)
        self._catalog_executor.shutdown(wait=True, cancel_futures=True)
        self._reload_executor.shutdown(wait=False, cancel_futures=True)

    async def _load(self, snapshot_id: str, fallback: bool = False) -> Snapshot:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._reload_executor,
            functools.partial(load_snapshot, self.index_dir, snapshot_id, fallback=fallback),
        )

    def _check_fingerprint(self, snapshot: Snapshot, model: ServedModel) -> None:
        if snapshot.model_fingerprint != model.fingerprint:
            raise IndexModelMismatchError(
                f"snapshot {snapshot.snapshot_id} in {self.index_dir} contains vectors of model "
                f"{snapshot.model_fingerprint}, but the service serves model {model.fingerprint}"
            )

    async def _set_view(self, snapshot: Snapshot | None, model: ServedModel) -> None:
        total_videos = await self.run_catalog(self.catalog.count_indexed_videos)
        view = IndexView(
            snapshot=snapshot,
            snapshot_id=None if snapshot is None else snapshot.snapshot_id,
            vector_count=0 if snapshot is None else int(snapshot.vector_count),
            total_videos=int(total_videos) if snapshot is not None else 0,
            model=model,
        )
        # A single reference assignment: requests that already read the old view keep it.
        self._view = view
        self._metrics.index_vectors.set(view.vector_count)
        self._metrics.index_videos.set(view.total_videos)
        logger.info(
            "serving snapshot %s of %s: %d vectors, %d videos, model %s",
            view.snapshot_id,
            self.index_dir,
            view.vector_count,
            view.total_videos,
            model.fingerprint,
        )

    async def reload_if_changed(self) -> bool:
        """Load and serve the snapshot CURRENT points to, when it differs from the served one.

        Returns True when a new snapshot is now served. A snapshot of another model comes
        with a swap to the index's new model copy, or sets ``mismatch`` when the model was
        given explicitly. A snapshot that fails to load is logged once and skipped until
        CURRENT or the model copy changes; the served one stays.
        """
        loop = asyncio.get_running_loop()
        snapshot_id = await loop.run_in_executor(
            self._reload_executor, read_current_snapshot_id, self.index_dir
        )
        if snapshot_id is None or snapshot_id == self._view.snapshot_id:
            return False
        stamp = await loop.run_in_executor(self._reload_executor, self._model_copy_stamp)
        if self._failed == (snapshot_id, stamp):
            return False
        try:
            snapshot = await self._load(snapshot_id)
            model = self._view.model
            if snapshot.model_fingerprint != model.fingerprint:
                if self._model_loader is None:
                    self._report_mismatch(snapshot)
                    self._failed = (snapshot_id, stamp)
                    return False
                model = await self._load_model_for(snapshot)
            await self._set_view(snapshot, model)
        except Exception as error:  # noqa: BLE001 - any load failure keeps the served snapshot
            self._failed = (snapshot_id, stamp)
            self._metrics.reloads.labels(result="failed").inc()
            self._metrics.errors.labels(kind="reload").inc()
            logger.error(
                "failed to load snapshot %s of %s, still serving snapshot %s: %s",
                snapshot_id,
                self.index_dir,
                self._view.snapshot_id,
                error,
                exc_info=not isinstance(error, IndexModelMismatchError),
            )
            return False
        self._failed = None
        if self.mismatch is not None:
            logger.info("snapshot %s matches the served model again; searches resume", snapshot_id)
        self.mismatch = None
        self._metrics.reloads.labels(result="ok").inc()
        return True

    def _model_copy_stamp(self) -> object:
        # Size and modification time of the model copy's files: a changed stamp means the
        # indexer replaced the copy, so a failed model swap is worth another try.
        stamp = []
        for name in ("config.json", "model.safetensors"):
            try:
                info = (self.index_dir / MODEL_DIR / name).stat()
            except OSError:
                stamp.append(None)
            else:
                stamp.append((info.st_size, info.st_mtime_ns))
        return tuple(stamp)

    async def _load_model_for(self, snapshot: Snapshot) -> ServedModel:
        """Load the index's model copy off the event loop and check it made ``snapshot``."""
        assert self._model_loader is not None
        logger.info(
            "snapshot %s contains vectors of model %s; loading the new model copy from %s",
            snapshot.snapshot_id,
            snapshot.model_fingerprint,
            self.index_dir / MODEL_DIR,
        )
        loop = asyncio.get_running_loop()
        model = await loop.run_in_executor(self._reload_executor, self._model_loader)
        if model.fingerprint != snapshot.model_fingerprint:
            raise IndexModelMismatchError(
                f"the model copy in {self.index_dir / MODEL_DIR} has fingerprint "
                f"{model.fingerprint}, but snapshot {snapshot.snapshot_id} contains vectors of "
                f"model {snapshot.model_fingerprint}; retrying when the indexer replaces the "
                f"model copy or publishes another snapshot"
            )
        logger.info(
            "swapped to model %s (fingerprint %s) with snapshot %s",
            model.name,
            model.fingerprint,
            snapshot.snapshot_id,
        )
        return model

    def _report_mismatch(self, snapshot: Snapshot) -> None:
        served = self._view.model.fingerprint
        self.mismatch = (
            f"the index was rebuilt: snapshot {snapshot.snapshot_id} contains vectors of model "
            f"{snapshot.model_fingerprint}, but this service was started with --checkpoint "
            f"(PIG_CHECKPOINT) of model {served}; restart it with the checkpoint of model "
            f"{snapshot.model_fingerprint}, or without --checkpoint to use the index's model "
            f"copy"
        )
        self._metrics.reloads.labels(result="failed").inc()
        self._metrics.errors.labels(kind="model_mismatch").inc()
        logger.error("searches get 503 until restarted: %s", self.mismatch)

    def start_reload_loop(self) -> None:
        """Start polling CURRENT every ``reload_interval_s`` seconds."""
        if self._reload_task is None:
            self._reload_task = asyncio.get_running_loop().create_task(
                self._reload_loop(), name="snapshot-reload"
            )

    async def _reload_loop(self) -> None:
        while True:
            await asyncio.sleep(self.reload_interval_s)
            try:
                await self.reload_if_changed()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - the loop must outlive one bad poll
                self._metrics.errors.labels(kind="reload").inc()
                logger.error("snapshot reload poll of %s failed: %s", self.index_dir, error,
                             exc_info=error)
