"""DiDeMo reader for paragraph-to-video retrieval.

Annotation files (``train_data.json``, ``val_data.json``, ``test_data.json``) are JSON lists of
moment annotations with ``"video"`` (the Flickr file name, e.g. ``10015567@N08_3655084291.mov``),
``"description"`` and ``"times"`` (five annotators' [start, end] segment indices, 5 s each);
``"annotation_id"``, ``"dl_link"`` and other fields are ignored. For paragraph retrieval the
descriptions of a video are joined, in file order, into one caption. Video files are looked up by
the exact name, then by its stem with any extension in ``base.VIDEO_EXTENSIONS`` (converted
copies are often ``.mp4``).
"""

from __future__ import annotations

from pathlib import Path

from training.datasets.base import CaptionDataset, DatasetFormatError, OnMissing, build_dataset, load_json


def read_didemo(
    annotation_json: Path | str,
    video_dir: Path | str,
    on_missing: OnMissing = "raise",
) -> CaptionDataset:
    """Read one DiDeMo split; each video gets one caption, its descriptions joined by spaces."""
    annotation_json = Path(annotation_json)
    records = load_json(annotation_json)
    if not isinstance(records, list):
        raise DatasetFormatError(f"{annotation_json}: expected a JSON list of annotations (DiDeMo format)")

    descriptions: dict[str, list[str]] = {}
    for position, record in enumerate(records):
        if not isinstance(record, dict) or "video" not in record or "description" not in record:
            raise DatasetFormatError(f"{annotation_json}: item {position} lacks 'video' or 'description'")
        sentence = str(record["description"]).strip()
        if sentence:
            descriptions.setdefault(str(record["video"]), []).append(sentence)

    entries = [(video, video, [" ".join(sentences)]) for video, sentences in descriptions.items()]
    return build_dataset(f"didemo-{annotation_json.stem}", video_dir, entries, on_missing)
