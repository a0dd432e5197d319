"""Planning stage: compare discovered files with the catalog and decide what to do with each.

- Unchanged (same size and mtime as the catalog row): skipped, whatever its status.
- Same size, new mtime: the content hash decides. An equal hash only refreshes the stored mtime
  (a ``touch`` re-indexes nothing); a different hash re-indexes the file.
- New or changed: the content hash is computed. When an indexed video (or an earlier file of
  this run) has the same hash, the file is recorded as a duplicate of it and not decoded: the
  content is indexed once and both paths are listed.
- Everything else is decoded and encoded.
- During a rebuild, a row that the rebuild has not written yet (an older generation) counts as
  new, so a resumed rebuild skips exactly the files it already wrote.

The content hash is BLAKE2b over the whole file, computed in a few threads (hashlib releases the
GIL on large buffers).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from indexer.discover import DiscoveredFile
from shared.index_store import STATUS_INDEXED, STATUS_REMOVED, Catalog

logger = logging.getLogger(__name__)

HASH_CHUNK_BYTES = 1 << 20


def content_hash(path: str) -> str:
    """Return the hex BLAKE2b-256 digest of a file's bytes."""
    digest = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class PlannedFile:
    """A discovered file with what the planner learned about it."""

    file: DiscoveredFile  # path, size, mtime
    content_hash: str | None = None  # None when the file could not be read
    duplicate_of_path: str | None = None  # an earlier new file of this run with the same content
    duplicate_of_id: int | None = None  # an indexed video with the same content
    hash_error: str | None = None  # why hashing failed


@dataclass
class Plan:
    """The planner's decisions for one run."""

    to_decode: list[PlannedFile] = field(default_factory=list)  # new or changed content
    duplicates: list[PlannedFile] = field(default_factory=list)  # content already indexed or planned
    unreadable: list[PlannedFile] = field(default_factory=list)  # could not be read for hashing
    unchanged: int = 0  # skipped: size and mtime equal
    touched: list[PlannedFile] = field(default_factory=list)  # new mtime, same content


def _hash_all(files: list[DiscoveredFile], threads: int) -> dict[str, str | OSError]:
    def one(file: DiscoveredFile) -> tuple[str, str | OSError]:
        try:
            return file.path, content_hash(file.path)
        except OSError as error:
            return file.path, error

    if not files:
        return {}
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="pig-hash") as pool:
        return dict(pool.map(one, files))


def plan_files(
    files: Iterable[DiscoveredFile], catalog: Catalog, retry_failed: bool = False, threads: int = 4
) -> Plan:
    """Sort discovered files into unchanged, touched, duplicates and files to decode."""
    plan = Plan()
    generation = catalog.write_generation()
    need_hash: list[tuple[DiscoveredFile, str | None]] = []  # (file, stored hash to compare)
    for file in files:
        record = catalog.get_video_by_path(file.path)
        if record is None or record.status == STATUS_REMOVED or record.generation != generation:
            need_hash.append((file, None))
            continue
        if record.size == file.size and record.mtime_ns == file.mtime_ns:
            if retry_failed and record.status != STATUS_INDEXED and record.status != "duplicate":
                need_hash.append((file, None))
            else:
                plan.unchanged += 1
            continue
        stored = record.content_hash if record.size == file.size else None
        need_hash.append((file, stored))

    hashes = _hash_all([file for file, _ in need_hash], threads)
    first_of_hash: dict[str, str] = {}
    for file, stored in need_hash:
        value = hashes[file.path]
        if isinstance(value, OSError):
            plan.unreadable.append(PlannedFile(file, hash_error=f"cannot read the file: {value}"))
            continue
        planned = PlannedFile(file, content_hash=value)
        if stored is not None and stored == value:
            plan.touched.append(planned)
            continue
        indexed = catalog.find_indexed_by_hash(value)
        if indexed is not None and indexed.path != file.path and os.path.exists(indexed.path):
            planned.duplicate_of_id = indexed.id
            plan.duplicates.append(planned)
        elif value in first_of_hash:
            planned.duplicate_of_path = first_of_hash[value]
            plan.duplicates.append(planned)
        else:
            first_of_hash[value] = file.path
            plan.to_decode.append(planned)
    return plan
