"""MSR-VTT readers: the official ``MSRVTT_data.json``, the 9k/7k train lists, the JSFusion 1k-A
test CSV, and the JSON-lines form (one caption per line).

Video files are looked up in ``video_dir`` as ``<video_id>.<ext>`` (e.g. ``video7010.mp4``), with
the extensions in ``base.VIDEO_EXTENSIONS`` tried in order.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from training.datasets.base import (
    CaptionDataset,
    DatasetFormatError,
    OnMissing,
    build_dataset,
    load_json,
)

OFFICIAL_SPLITS = ("train", "validate", "test")


def read_msrvtt_sentences(data_json: Path | str) -> dict[str, list[str]]:
    """Read the captions of every video from ``MSRVTT_data.json``.

    Expected fields: a top-level ``"sentences"`` list whose items have ``"video_id"`` (e.g.
    ``"video0"``) and ``"caption"``; ``"sen_id"`` and other fields are ignored. Captions keep
    file order.
    """
    data = load_json(data_json)
    if not isinstance(data, dict) or not isinstance(data.get("sentences"), list):
        raise DatasetFormatError(f"{data_json}: expected an object with a 'sentences' list (MSRVTT_data.json)")
    captions: dict[str, list[str]] = {}
    for position, sentence in enumerate(data["sentences"]):
        try:
            video_id = str(sentence["video_id"])
            caption = str(sentence["caption"])
        except (KeyError, TypeError) as error:
            raise DatasetFormatError(
                f"{data_json}: sentence {position} lacks 'video_id' or 'caption': {sentence!r}"
            ) from error
        captions.setdefault(video_id, []).append(caption)
    return captions


def read_video_id_list(list_csv: Path | str) -> list[str]:
    """Read a train list such as ``MSRVTT_train.9k.csv`` or ``MSRVTT_train.7k.csv``.

    The CLIP4Clip release has a header row ``video_id`` and one id per row. A file without that
    header is read as one id per line in the first column.
    """
    with Path(list_csv).open(encoding="utf-8", newline="") as handle:
        rows = [row for row in csv.reader(handle) if row and row[0].strip()]
    if not rows:
        raise DatasetFormatError(f"{list_csv}: empty video id list")
    header = [cell.strip() for cell in rows[0]]
    if "video_id" in header:
        column = header.index("video_id")
        return [row[column].strip() for row in rows[1:]]
    return [row[0].strip() for row in rows]


def read_msrvtt_train(
    data_json: Path | str,
    train_list: Path | str,
    video_dir: Path | str,
    on_missing: OnMissing = "raise",
) -> CaptionDataset:
    """Read the 9k or 7k training split: the ids of ``train_list`` with all their captions
    (20 per video) from ``data_json``."""
    captions = read_msrvtt_sentences(data_json)
    video_ids = read_video_id_list(train_list)
    unknown = [video_id for video_id in video_ids if video_id not in captions]
    if unknown:
        raise DatasetFormatError(
            f"{train_list}: {len(unknown)} video ids have no captions in {data_json}, "
            f"e.g. {unknown[:5]}; check that both files come from the same MSR-VTT release"
        )
    entries = [(video_id, video_id, captions[video_id]) for video_id in video_ids]
    name = f"msrvtt-train-{len(video_ids)}"
    return build_dataset(name, video_dir, entries, on_missing)


def read_msrvtt_official(
    data_json: Path | str,
    split: str,
    video_dir: Path | str,
    on_missing: OnMissing = "raise",
) -> CaptionDataset:
    """Read an official split (``train`` 6,513, ``validate`` 497 or ``test`` 2,990 videos, the
    "3k" test) from ``MSRVTT_data.json``.

    Expected fields: ``"videos"`` items with ``"video_id"`` and ``"split"``, plus the
    ``"sentences"`` described in ``read_msrvtt_sentences``.
    """
    if split not in OFFICIAL_SPLITS:
        raise ValueError(f"split must be one of {OFFICIAL_SPLITS}, got {split!r}")
    data = load_json(data_json)
    if not isinstance(data, dict) or not isinstance(data.get("videos"), list):
        raise DatasetFormatError(f"{data_json}: expected an object with a 'videos' list (MSRVTT_data.json)")
    captions = read_msrvtt_sentences(data_json)
    video_ids = [str(video["video_id"]) for video in data["videos"] if video.get("split") == split]
    entries = [(video_id, video_id, captions.get(video_id, [])) for video_id in video_ids]
    return build_dataset(f"msrvtt-official-{split}", video_dir, entries, on_missing)


def read_msrvtt_jsfusion_test(
    test_csv: Path | str,
    video_dir: Path | str,
    on_missing: OnMissing = "raise",
) -> CaptionDataset:
    """Read the JSFusion 1k-A test split, ``MSRVTT_JSFUSION_test.csv``: 1,000 videos, one caption each.

    Expected columns (header row): ``key``, ``vid_key``, ``video_id`` and ``sentence``, e.g.
    ``ret0,msr7579,video7579,a girl wearing red top and black trouser is putting a sweater on a dog``.
    Only ``video_id`` and ``sentence`` are read; an unnamed leading index column is tolerated.
    """
    with Path(test_csv).open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames or []
        if "video_id" not in fields or "sentence" not in fields:
            raise DatasetFormatError(
                f"{test_csv}: expected columns 'video_id' and 'sentence' (MSRVTT_JSFUSION_test.csv), got {fields}"
            )
        entries = [(row["video_id"].strip(), row["video_id"].strip(), [row["sentence"].strip()]) for row in reader]
    return build_dataset("msrvtt-1k-A-test", video_dir, entries, on_missing)


def read_caption_jsonl(
    path: Path | str,
    video_dir: Path | str | None = None,
    on_missing: OnMissing = "raise",
) -> CaptionDataset:
    """Read captions in JSON-lines form, one caption per line.

    Each line is ``{"video_id": ..., "caption": ...}`` or ``{"clip_id": ..., "text": ...}``; an
    optional ``"path"`` names the file relative to ``video_dir`` when it is not ``<id>.<ext>``.
    Lines of the same video merge, in file order. Blank lines are skipped. ``video_dir`` defaults
    to a ``videos/`` folder beside the file when there is one, else the file's own folder.
    """
    path = Path(path)
    if video_dir is None:
        video_dir = path.parent / "videos" if (path.parent / "videos").is_dir() else path.parent

    entries: list[tuple[str, str, list[str]]] = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DatasetFormatError(f"{path}:{line_number}: invalid JSON: {error}") from error
            if not isinstance(record, dict):
                raise DatasetFormatError(f"{path}:{line_number}: expected a JSON object, got {record!r}")
            video_id = record.get("video_id", record.get("clip_id"))
            caption = record.get("caption", record.get("text"))
            if video_id is None or caption is None:
                raise DatasetFormatError(
                    f"{path}:{line_number}: expected 'video_id' and 'caption' (or 'clip_id' and 'text'), "
                    f"got keys {sorted(record)}"
                )
            file_name = str(record.get("path", video_id))
            entries.append((str(video_id), file_name, [str(caption)]))
    if not entries:
        raise DatasetFormatError(f"{path}: no captions found")
    return build_dataset(path.stem, video_dir, entries, on_missing)
