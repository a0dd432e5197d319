"""Command-line interface: ``indexer ingest | status | verify | remove``.

Exit status: 0 when the command completed (an ingest that recorded failed files included).
1 when nothing could be done: no such path or no video under it, the model cannot load, a
different model built the index, another writer has the index locked, the index directory
cannot be written, or verification found problems. 2 for invalid options. 130 after Ctrl-C
(SIGINT) and 143 after SIGTERM; an interrupted ingest keeps every video it committed.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from annotated_types import Ge, Gt, Le, Lt
from pydantic import ValidationError

from indexer.settings import IndexerSettings
from indexer.stats import RunStats
from shared.index_store import (
    CATALOG_FILE,
    SNAPSHOTS_DIR,
    Catalog,
    CatalogError,
    IndexLockedError,
    IndexStoreError,
    ModelMismatchError,
    RebuildInProgressError,
    RebuildState,
    SnapshotCorruptError,
    SnapshotNotFoundError,
    WriterLock,
    load_snapshot,
    publish_snapshot,
    read_current_snapshot_id,
)

logger = logging.getLogger("indexer")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_SIGINT = 128 + signal.SIGINT
EXIT_SIGTERM = 128 + signal.SIGTERM

# Options of `ingest` that map to IndexerSettings fields, with their argparse types.
_SETTING_TYPES: dict[str, Any] = {
    "index_dir": Path,
    "checkpoint": Path,
    "model": str,
    "pretrained": str,
    "head": str,
    "device": str,
    "precision": str,
    "frames": int,
    "segment_seconds": float,
    "workers": int,
    "batch_size": int,
    "decode_timeout": float,
    "snapshot_every": int,
    "index_type": str,
    "approx_threshold": int,
    "memory_budget_gb": float,
    "keep_snapshots": int,
}
_CHOICES = {
    "head": ["pig", "meanp"],
    "device": ["auto", "cuda", "cpu"],
    "precision": ["auto", "fp32", "bf16", "fp16"],
    "index_type": ["auto", "flat", "hnsw", "ivfpq"],
}
_METAVARS = {"index_dir": "DIR", "checkpoint": "DIR", "model": "NAME", "pretrained": "TAG|FILE"}


def _add_setting(parser: argparse.ArgumentParser, name: str) -> None:
    field = IndexerSettings.model_fields[name]
    env = f"PIG_{name.upper()}"
    default = field.get_default(call_default_factory=True)
    default_text = "" if default is None else f"; default {default}"
    parser.add_argument(
        f"--{name.replace('_', '-')}",
        dest=name,
        type=_SETTING_TYPES[name],
        choices=_CHOICES.get(name),
        metavar=_METAVARS.get(name, name.upper()) if name not in _CHOICES else None,
        default=None,
        help=f"{field.description} (env {env}{default_text})",
    )


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``indexer`` command."""
    parser = argparse.ArgumentParser(
        prog="indexer",
        description="Index a folder of videos for text-to-video search with a PIG model.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details to stderr")
    commands = parser.add_subparsers(dest="command", required=True)

    ingest = commands.add_parser(
        "ingest",
        help="index the videos under PATH (files or folders, recursively)",
        description="Discover, decode, encode and store the videos under each PATH; re-running "
        "skips unchanged files and resumes after an interruption.",
    )
    ingest.add_argument("paths", nargs="+", metavar="PATH", help="video file or folder")
    for name in IndexerSettings.model_fields:
        _add_setting(ingest, name)
    ingest.add_argument("--prune", action="store_true",
                        help="drop the vectors of catalog files under PATH that no longer exist")
    ingest.add_argument("--rebuild", action="store_true",
                        help="re-index every file with the given model, replacing the old vectors "
                             "when done; resume an unfinished rebuild with --rebuild --checkpoint "
                             "INDEX_DIR/model.rebuild (a model built by name with random weights "
                             "differs on every run, so repeating such a command starts over)")
    ingest.add_argument("--retry-failed", action="store_true",
                        help="decode files that failed in an earlier run even if unchanged")
    ingest.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    for name, text in (
        ("status", "print counts, the current snapshot and every failed file with its reason"),
        ("verify", "check that the snapshot and the catalog agree; exit 1 on any problem"),
    ):
        sub = commands.add_parser(name, help=text, description=text)
        _add_setting(sub, "index_dir")

    remove = commands.add_parser(
        "remove",
        help="drop the vectors of PATH (a file, or every file under a folder)",
        description="Mark PATH as removed in the catalog and publish a snapshot without its "
        "vectors; the file itself is not touched, so a later ingest of a folder that still holds "
        "it indexes it again.",
    )
    remove.add_argument("paths", nargs="+", metavar="PATH", help="video file or folder")
    _add_setting(remove, "index_dir")
    _add_setting(remove, "keep_snapshots")
    return parser


def _cli_values(args: argparse.Namespace) -> dict[str, Any]:
    return {
        name: getattr(args, name)
        for name in IndexerSettings.model_fields
        if getattr(args, name, None) is not None
    }


def _settings_from(args: argparse.Namespace) -> IndexerSettings:
    return IndexerSettings(**_cli_values(args))


def _option_source(name: str, cli_values: dict[str, Any]) -> str:
    """Return how the user set a setting: ``--some-option`` or ``PIG_SOME_OPTION``."""
    option = f"--{name.replace('_', '-')}"
    env = f"PIG_{name.upper()}"
    if name in cli_values:
        return option
    if any(key.upper() == env for key in os.environ):
        return env
    return f"{option} (or {env})"


def _expected_value(name: str) -> str:
    """Return the type and allowed range of a setting, e.g. ``a whole number of at least 1``."""
    field = IndexerSettings.model_fields[name]
    kind = {int: "whole number", float: "finite number", Path: "path"}.get(_SETTING_TYPES.get(name), "value")
    if name in _CHOICES:
        return f"one of {', '.join(_CHOICES[name])}"
    bounds = []
    for constraint in field.metadata:
        if isinstance(constraint, Ge):
            bounds.append(f"at least {constraint.ge:g}")
        elif isinstance(constraint, Gt):
            bounds.append(f"greater than {constraint.gt:g}")
        elif isinstance(constraint, Le):
            bounds.append(f"at most {constraint.le:g}")
        elif isinstance(constraint, Lt):
            bounds.append(f"less than {constraint.lt:g}")
    article = "an" if kind[0] in "aeiou" else "a"
    return f"{article} {kind}" + (f", {' and '.join(bounds)}" if bounds else "")


def describe_validation_error(error: ValidationError, cli_values: dict[str, Any]) -> list[str]:
    """Return one line per invalid setting, naming the option or variable, value and range."""
    lines = []
    for problem in error.errors():
        location = problem.get("loc") or ()
        name = str(location[0]) if location else ""
        if name not in IndexerSettings.model_fields:
            message = str(problem.get("msg", "")).removeprefix("Value error, ")
            lines.append(f"invalid settings: {message}")
            continue
        value = problem.get("input")
        shown = repr(value) if isinstance(value, str) else str(value)
        lines.append(f"invalid {_option_source(name, cli_values)} {shown}: expected {_expected_value(name)}")
    return lines


EXIT_BROKEN_PIPE = 128 + 13  # the shell's status for a process stopped by SIGPIPE


def main(argv: list[str] | None = None) -> int:
    """Run the ``indexer`` command and return its exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # faiss logs at INFO which of its builds it loads, including the failed imports before that.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        settings = _settings_from(args)
    except ValidationError as error:
        for line in describe_validation_error(error, _cli_values(args)):
            print(f"indexer: {line}", file=sys.stderr)
        return EXIT_USAGE

    command = {"ingest": _ingest, "status": _status, "verify": _verify, "remove": _remove}[args.command]
    try:
        return command(settings, args)
    except BrokenPipeError:
        # The reader of stdout went away (for example `| head`). Whatever the command wrote to
        # the index is already committed, so this is not a failure of the command: exit like a
        # process stopped by SIGPIPE, and keep Python from failing again when it flushes stdout.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except OSError as error:
        # A file-system error no check foresaw, such as a disk that fills up during the run.
        logger.debug("%s failed", args.command, exc_info=True)
        print(f"indexer: {args.command} failed: {error}", file=sys.stderr)
        return EXIT_FAILURE


def _ingest(settings: IndexerSettings, args: argparse.Namespace) -> int:
    from indexer.interrupts import Terminated, install
    from indexer.pipeline import IngestError, IngestOptions, run_ingest

    options = IngestOptions(
        prune=args.prune,
        rebuild=args.rebuild,
        retry_failed=args.retry_failed,
        progress=not args.no_progress,
    )
    stats = RunStats()
    try:
        with install():
            run_ingest(settings, args.paths, options, stats)
    except KeyboardInterrupt as error:
        name, status = ("SIGTERM", EXIT_SIGTERM) if isinstance(error, Terminated) else ("Ctrl-C", EXIT_SIGINT)
        print(
            f"indexer: interrupted by {name}: this run committed {plural(stats.indexed, 'video')}; run "
            f"the same command again to resume and to publish them for search",
            file=sys.stderr,
        )
        return status
    except ModelMismatchError as error:
        print(f"indexer: model mismatch: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except RebuildInProgressError as error:
        print(f"indexer: rebuild unfinished: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except (IngestError, IndexLockedError, CatalogError) as error:
        print(f"indexer: {error}", file=sys.stderr)
        return EXIT_FAILURE
    print(format_summary(stats))
    return EXIT_OK


def plural(count: int, noun: str) -> str:
    """Return the count and the noun, with an "s" unless the count is one."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def format_summary(stats: RunStats) -> str:
    """Return the closing summary of an ingest run."""
    lines = [
        f"indexed {plural(stats.indexed, 'video')} ({plural(stats.segments_written, 'segment')}), "
        f"skipped {stats.skipped_unchanged} unchanged, {plural(stats.duplicates, 'duplicate')}, "
        f"removed {stats.removed}, failed {stats.failed}",
    ]
    if stats.failed_by_kind:
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(stats.failed_by_kind.items()))
        lines.append(f"failed by kind: {kinds} (see `indexer status` for each file)")
    for path in stats.missing_paths:
        lines.append(f"not found: {path}")
    if stats.hidden_skipped:
        lines.append(f"skipped {stats.hidden_skipped} hidden files and folders (names starting with '.')")

    lines.append(f"{'stage':<11}{'busy s':>9}{'videos':>8}{'videos/s':>10}{'frames':>9}{'frames/s':>10}")
    for name, stage in stats.stages.items():
        rates = stage.throughput()
        lines.append(
            f"{name:<11}{stage.seconds:>9.2f}{stage.videos:>8}{_fmt(rates['videos_per_s']):>10}"
            f"{stage.frames:>9}{_fmt(rates['frames_per_s']):>10}"
        )
    record = stats.to_record()
    lines.append(
        f"decode+encode+write wall time {stats.pipeline_seconds:.2f} s: "
        f"{_fmt(record['pipeline_videos_per_s'])} videos/s, {_fmt(record['pipeline_frames_per_s'])} frames/s; "
        f"total {stats.wall_seconds:.2f} s"
    )
    if stats.decode_restarts:
        lines.append(f"decode workers restarted: {stats.decode_restarts}")
    if stats.snapshot_id:
        index = f", {stats.index_type} index" if stats.index_type else ""
        recall = f", recall@10 {stats.recall_at_10:.3f}" if stats.recall_at_10 is not None else ""
        lines.append(f"snapshot {stats.snapshot_id}: {plural(stats.vector_count or 0, 'vector')}{index}{recall}")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _open_catalog(settings: IndexerSettings) -> Catalog | None:
    try:
        return Catalog(settings.index_dir / CATALOG_FILE, read_only=True)
    except CatalogError as error:
        print(f"indexer: {error}", file=sys.stderr)
        return None


def _status(settings: IndexerSettings, args: argparse.Namespace) -> int:
    catalog = _open_catalog(settings)
    if catalog is None:
        return EXIT_FAILURE
    with catalog:
        counts = catalog.count_by_status()
        print(f"index directory: {settings.index_dir.resolve()}")
        print(f"model fingerprint: {catalog.model_fingerprint() or '-'}")
        print(
            "videos: "
            + ", ".join(f"{status} {counts.get(status, 0)}" for status in ("indexed", "duplicate", "failed", "removed"))
        )
        print(f"segments in catalog: {catalog.count_segments()}")
        rebuild = catalog.rebuild_state()
        if rebuild is not None:
            print(f"rebuild: {_describe_rebuild(rebuild)}")
        current = read_current_snapshot_id(settings.index_dir)
        vector_count = None if current is None else catalog.snapshot_vector_count(current)
        if current is None:
            print("current snapshot: none published")
        elif vector_count is None or not (settings.index_dir / SNAPSHOTS_DIR / current).is_dir():
            print(
                f"current snapshot: {current} is missing (CURRENT names a snapshot that is not in "
                f"{SNAPSHOTS_DIR}/); run `indexer ingest` on this index to publish a new one"
            )
        else:
            print(f"current snapshot: {current} ({vector_count} vectors)")
        writer_running = WriterLock(settings.index_dir).is_held_by_other()
        if writer_running:
            print("a writer is running on this index now")
        runs = catalog.list_runs(limit=1)
        if runs:
            print(f"last run: {_describe_run(runs[0], writer_running)}")
        failed = catalog.list_videos(status="failed")
        if failed:
            print(f"failed files ({len(failed)}):")
            for video in failed:
                print(f"  {video.path}\t{video.failure_kind}: {video.failure_reason}")
    return EXIT_OK


def _describe_rebuild(rebuild: RebuildState) -> str:
    return (
        f"unfinished, to model {rebuild.fingerprint}: {plural(rebuild.videos_done, 'video')} written; the "
        f"current snapshot keeps serving the old model until `indexer ingest --rebuild` with "
        f"that model finishes"
    )


def _describe_run(run: dict[str, Any], writer_running: bool) -> str:
    status = run["status"]
    if status == "running" and not writer_running:
        # The writer lock is released when its holder exits, even on SIGKILL, so a run still
        # marked running without a lock holder ended before it could record its status.
        pid = run.get("pid")
        holder = f"process {pid}" if pid else "its process"
        status = f"interrupted ({holder} ended without finishing, e.g. kill -9 or a crash)"
    return (
        f"{status}, started {run['started_at']}, indexed {run.get('indexed', 0)}, "
        f"failed {run.get('failed', 0)}"
    )


def _verify(settings: IndexerSettings, args: argparse.Namespace) -> int:
    catalog = _open_catalog(settings)
    if catalog is None:
        return EXIT_FAILURE
    problems: list[str] = []
    with catalog:
        integrity = catalog.integrity_check()
        if integrity != ["ok"]:
            problems.append(f"SQLite integrity check failed: {'; '.join(integrity[:5])}")
        try:
            snapshot = load_snapshot(settings.index_dir, fallback=False)
        except (SnapshotNotFoundError, SnapshotCorruptError) as error:
            problems.append(str(error))
            snapshot = None
        if snapshot is not None:
            catalog_ids = set(catalog.segment_ids().tolist())
            import faiss

            snapshot_ids = set(faiss.vector_to_array(snapshot.index.id_map).tolist())
            if snapshot_ids != catalog_ids:
                problems.append(
                    f"snapshot {snapshot.snapshot_id} has {len(snapshot_ids)} vectors, the catalog "
                    f"{len(catalog_ids)} segments ({len(catalog_ids - snapshot_ids)} not in the snapshot, "
                    f"{len(snapshot_ids - catalog_ids)} no longer in the catalog); run `indexer ingest` "
                    f"again to publish a current snapshot"
                )
            if snapshot.model_fingerprint != catalog.model_fingerprint():
                problems.append(
                    f"snapshot model fingerprint {snapshot.model_fingerprint} differs from the "
                    f"catalog's {catalog.model_fingerprint()}"
                )
            print(f"snapshot {snapshot.snapshot_id}: {snapshot.vector_count} vectors, checksum ok")
        for path in catalog.indexed_videos_without_segments():
            problems.append(f"indexed video {path} has no segments")
        rebuild = catalog.rebuild_state()
        if rebuild is not None:
            print(f"note: rebuild {_describe_rebuild(rebuild)}")
    if WriterLock(settings.index_dir).is_held_by_other():
        problems.append("a writer is running; counts may change until it finishes")
    for problem in problems:
        print(f"problem: {problem}")
    if problems:
        return EXIT_FAILURE
    print("ok: catalog and snapshot agree")
    return EXIT_OK


def _remove(settings: IndexerSettings, args: argparse.Namespace) -> int:
    catalog_path = settings.index_dir / CATALOG_FILE
    if not catalog_path.is_file():
        print(f"indexer: catalog {catalog_path} not found; nothing to remove", file=sys.stderr)
        return EXIT_FAILURE
    targets = [os.path.realpath(p) for p in args.paths]
    removed: list[str] = []
    try:
        with WriterLock(settings.index_dir):
            with Catalog(catalog_path, read_only=False) as catalog:
                with catalog.transaction():
                    for video in catalog.list_videos():
                        if video.status == "removed":
                            continue
                        if any(video.path == t or video.path.startswith(t.rstrip(os.sep) + os.sep) for t in targets):
                            catalog.mark_removed(video.path)
                            removed.append(video.path)
                if removed:
                    manifest = publish_snapshot(settings.index_dir, catalog, keep=settings.keep_snapshots)
    except IndexStoreError as error:
        print(f"indexer: {error}", file=sys.stderr)
        return EXIT_FAILURE
    if not removed:
        print(f"indexer: no indexed file matches {', '.join(args.paths)}", file=sys.stderr)
        return EXIT_FAILURE
    for path in removed:
        print(f"removed {path}")
    print(f"snapshot {manifest.snapshot_id}: {manifest.vector_count} vectors")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
