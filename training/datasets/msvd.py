"""MSVD (Microsoft Research Video Description) reader.

Captions come from ``AllVideoDescriptions.txt``: lines starting with ``#`` are comments, every
other line is ``<clip> <caption>`` where ``<clip>`` is ``<youtube id>_<start>_<end>``, e.g.
``-4wsuPCjDBc_5_15 a squirrel is eating a peanut in it's shell``. Video files are
``<clip>.avi`` (the YouTubeClips release) or the same stem with another extension.

The split comes from either a list file with one clip name per line (the CLIP4Clip
``train_list.txt``, ``val_list.txt``, ``test_list.txt``), or ``youtube_mapping.txt`` (lines
``<clip> vid<N>``) with the standard ranges: vid1-vid1200 train, vid1201-vid1300 val,
vid1301-vid1970 test. The pickled ``raw-captions.pkl`` of CLIP4Clip is not read, because loading
a pickle runs arbitrary code.
"""

from __future__ import annotations

from pathlib import Path

from training.datasets.base import CaptionDataset, DatasetFormatError, OnMissing, build_dataset

# Standard MSVD split over the vid<N> numbering of youtube_mapping.txt, inclusive ranges.
MAPPING_SPLITS = {"train": (1, 1200), "val": (1201, 1300), "test": (1301, 1970)}


def read_msvd_descriptions(descriptions_txt: Path | str) -> dict[str, list[str]]:
    """Read ``AllVideoDescriptions.txt`` into clip name -> captions, in file order."""
    captions: dict[str, list[str]] = {}
    with Path(descriptions_txt).open(encoding="utf-8", errors="replace") as handle:
        for line_number, line in enumerate(handle, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            clip, _, caption = line.partition(" ")
            if not caption.strip():
                raise DatasetFormatError(
                    f"{descriptions_txt}:{line_number}: expected '<clip> <caption>', got {line!r}"
                )
            captions.setdefault(clip, []).append(caption.strip())
    return captions


def _clips_from_mapping(mapping_txt: Path | str, split: str) -> list[str]:
    if split not in MAPPING_SPLITS:
        raise ValueError(f"split must be one of {sorted(MAPPING_SPLITS)}, got {split!r}")
    first, last = MAPPING_SPLITS[split]
    numbered: list[tuple[int, str]] = []
    with Path(mapping_txt).open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or not parts[1].startswith("vid") or not parts[1][3:].isdigit():
                raise DatasetFormatError(f"{mapping_txt}:{line_number}: expected '<clip> vid<N>', got {line.strip()!r}")
            numbered.append((int(parts[1][3:]), parts[0]))
    return [clip for number, clip in sorted(numbered) if first <= number <= last]


def read_msvd(
    descriptions_txt: Path | str,
    video_dir: Path | str,
    split: str,
    split_list: Path | str | None = None,
    mapping_txt: Path | str | None = None,
    on_missing: OnMissing = "raise",
) -> CaptionDataset:
    """Read one MSVD split (``train``, ``val`` or ``test``), every caption of each clip.

    Give ``split_list`` (one clip per line) or ``mapping_txt`` (``youtube_mapping.txt``).
    """
    if (split_list is None) == (mapping_txt is None):
        raise ValueError("pass exactly one of split_list (e.g. test_list.txt) or mapping_txt (youtube_mapping.txt)")
    captions = read_msvd_descriptions(descriptions_txt)
    if split_list is not None:
        with Path(split_list).open(encoding="utf-8") as handle:
            clips = [line.strip() for line in handle if line.strip()]
    else:
        clips = _clips_from_mapping(mapping_txt, split)

    uncaptioned = [clip for clip in clips if clip not in captions]
    if uncaptioned:
        raise DatasetFormatError(
            f"{len(uncaptioned)} MSVD clips of the {split} split have no captions in {descriptions_txt}, "
            f"e.g. {uncaptioned[:5]}"
        )
    entries = [(clip, clip, captions[clip]) for clip in clips]
    return build_dataset(f"msvd-{split}", video_dir, entries, on_missing)
