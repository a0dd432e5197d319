"""VATEX reader (English captions).

Annotation files (``vatex_training_v1.0.json``, ``vatex_validation_v1.0.json``,
``vatex_public_test_english_v1.1.json``) are JSON lists of objects with ``"videoID"``
(``<youtube id>_<start:06d>_<end:06d>``, e.g. ``Ptf_2VRj-V0_000122_000132``) and ``"enCap"``
(ten English captions). ``"chCap"`` is ignored. Video files are ``<videoID>.<ext>``.

Many VATEX source videos are no longer on YouTube, so local copies are often incomplete. Pass
``on_missing="skip"`` to train on what is there (one warning lists the missing count).
"""

from __future__ import annotations

from pathlib import Path

from training.datasets.base import CaptionDataset, DatasetFormatError, OnMissing, build_dataset, load_json


def read_vatex(
    annotation_json: Path | str,
    video_dir: Path | str,
    on_missing: OnMissing = "raise",
) -> CaptionDataset:
    """Read one VATEX annotation file with every English caption of each video."""
    annotation_json = Path(annotation_json)
    records = load_json(annotation_json)
    if not isinstance(records, list):
        raise DatasetFormatError(f"{annotation_json}: expected a JSON list of videos (VATEX format)")

    entries: list[tuple[str, str, list[str]]] = []
    for position, record in enumerate(records):
        if not isinstance(record, dict) or "videoID" not in record or "enCap" not in record:
            raise DatasetFormatError(f"{annotation_json}: item {position} lacks 'videoID' or 'enCap'")
        captions = record["enCap"]
        if isinstance(captions, str):
            captions = [captions]
        video_id = str(record["videoID"])
        entries.append((video_id, video_id, [str(caption) for caption in captions]))
    return build_dataset(f"vatex-{annotation_json.stem}", video_dir, entries, on_missing)
