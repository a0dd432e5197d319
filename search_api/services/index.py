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

from shared.index_store import Catalog, Snapshot, load_snapshot, read_current_snapshot_id

from search_api.metrics import ServiceMetrics

logger = logging.getLogger(__name__)

ResultT = TypeVar("ResultT")


class IndexModelMismatchError(RuntimeError):
    """Raised when the index was built with another model than the one the service loaded."""


@dataclass(frozen=True)
class IndexView:
    """One consistent view of the index: a snapshot and the video count that goes with it.

    Requests read ``IndexService.view`` once and use that object to the end, so a reload
    that swaps the reference never changes the snapshot under a running request.
    """

    snapshot: Snapshot | None
    snapshot_id: str | None
    vector_count: int
    total_videos: int


class IndexService:
    """Own the read-only catalog and the current snapshot of one index directory.

    Every catalog call runs on one dedicated thread, which also opens the catalog, so the
    SQLite connection is only ever used by the thread that created it.
    """

    def __init__(
        self,
        index_dir: Path,
        model_fingerprint: str,
        reload_interval_s: float,
        metrics: ServiceMetrics,
    ) -> None:
        self.index_dir = index_dir
        self.model_fingerprint = model_fingerprint
        self.reload_interval_s = reload_interval_s
        self._metrics = metrics
        self._catalog: Catalog | None = None
        self._catalog_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pig-catalog")
        self._reload_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pig-reload")
        self._view = IndexView(snapshot=None, snapshot_id=None, vector_count=0, total_videos=0)
        self._failed_snapshot_id: str | None = None
        self._reload_task: asyncio.Task[None] | None = None

    @property
    def view(self) -> IndexView:
        return self._view

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
                f"service loaded model {self.model_fingerprint}; leave PIG_CHECKPOINT unset "
                f"to load the model copy stored in {self.index_dir / 'model'}"
            )

        snapshot_id = read_current_snapshot_id(self.index_dir)
        if snapshot_id is None:
            logger.warning(
                "index %s has no published snapshot yet; searches return no results until "
                "`indexer ingest` publishes one",
                self.index_dir,
            )
            await self._set_view(None)
            return
        # At start-up there is nothing served yet, so a torn current snapshot falls back to the
        # newest older one that verifies; a reload instead keeps what is already served.
        await self._set_view(await self._load(snapshot_id, fallback=True))

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
        snapshot = await loop.run_in_executor(
            self._reload_executor,
            functools.partial(load_snapshot, self.index_dir, snapshot_id, fallback=fallback),
        )
        if snapshot.model_fingerprint != self.model_fingerprint:
            raise IndexModelMismatchError(
                f"snapshot {snapshot_id} in {self.index_dir} holds vectors of model "
                f"{snapshot.model_fingerprint}, but the service serves model "
                f"{self.model_fingerprint}"
            )
        return snapshot

    async def _set_view(self, snapshot: Snapshot | None) -> None:
        total_videos = await self.run_catalog(self.catalog.count_indexed_videos)
        view = IndexView(
            snapshot=snapshot,
            snapshot_id=None if snapshot is None else snapshot.snapshot_id,
            vector_count=0 if snapshot is None else int(snapshot.vector_count),
            total_videos=int(total_videos) if snapshot is not None else 0,
        )
        # A single reference assignment: requests that already read the old view keep it.
        self._view = view
        self._metrics.index_vectors.set(view.vector_count)
        self._metrics.index_videos.set(view.total_videos)
        logger.info(
            "serving snapshot %s of %s: %d vectors, %d videos",
            view.snapshot_id,
            self.index_dir,
            view.vector_count,
            view.total_videos,
        )

    async def reload_if_changed(self) -> bool:
        """Load and serve the snapshot CURRENT points to, when it differs from the served one.

        Returns True when a new snapshot is now served. A snapshot that fails to load is
        logged once and skipped until CURRENT changes again; the served one stays.
        """
        loop = asyncio.get_running_loop()
        snapshot_id = await loop.run_in_executor(
            self._reload_executor, read_current_snapshot_id, self.index_dir
        )
        if snapshot_id is None or snapshot_id == self._view.snapshot_id:
            return False
        if snapshot_id == self._failed_snapshot_id:
            return False
        try:
            snapshot = await self._load(snapshot_id)
            await self._set_view(snapshot)
        except Exception as error:  # noqa: BLE001 - any load failure keeps the served snapshot
            self._failed_snapshot_id = snapshot_id
            self._metrics.reloads.labels(result="failed").inc()
            self._metrics.errors.labels(kind="reload").inc()
            logger.error(
                "failed to load snapshot %s of %s, still serving snapshot %s: %s",
                snapshot_id,
                self.index_dir,
                self._view.snapshot_id,
                error,
                exc_info=error,
            )
            return False
        self._failed_snapshot_id = None
        self._metrics.reloads.labels(result="ok").inc()
        return True

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
