"""Dataset readers on small fixtures written in each dataset's real annotation format."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from training.datasets import (
    DatasetFormatError,
    DataSource,
    MissingVideosError,
    read_caption_jsonl,
    read_didemo,
    read_msrvtt_jsfusion_test,
    read_msrvtt_official,
    read_msrvtt_train,
    read_msvd,
    read_vatex,
)


@pytest.fixture(scope="module")
def sample_clip(tmp_path_factory) -> Path:
    """A real 0.25 s H.264 clip that the fixtures copy under each dataset's file names."""
    path = tmp_path_factory.mktemp("clip") / "sample.mp4"
    subprocess.run(
        [
            "ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi",
            "-i", "testsrc=size=32x32:rate=8:duration=0.25",
            "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path),
        ],
        check=True,
    )
    return path


def place_videos(sample_clip: Path, folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copyfile(sample_clip, folder / name)
    return folder


def write_msrvtt_json(path: Path, num_videos: int) -> None:
    splits = ["train"] * (num_videos - 2) + ["validate", "test"]
    data = {
        "info": {"year": "2016"},
        "videos": [
            {"category": 9, "url": "https://example.invalid", "video_id": f"video{i}",
             "start time": 0.0, "end time": 10.0, "split": splits[i], "id": i}
            for i in range(num_videos)
        ],
        "sentences": [
            {"caption": f"caption {k} of clip {i}", "video_id": f"video{i}", "sen_id": i * 3 + k}
            for i in range(num_videos)
            for k in range(3)
        ],
    }
    path.write_text(json.dumps(data))


def test_msrvtt_train_list(sample_clip, tmp_path):
    write_msrvtt_json(tmp_path / "MSRVTT_data.json", 6)
    (tmp_path / "MSRVTT_train.9k.csv").write_text("video_id\nvideo0\nvideo2\nvideo3\n")
    videos = place_videos(sample_clip, tmp_path / "videos", ["video0.mp4", "video2.mp4", "video3.mp4"])

    dataset = read_msrvtt_train(tmp_path / "MSRVTT_data.json", tmp_path / "MSRVTT_train.9k.csv", videos)

    assert [video.video_id for video in dataset.videos] == ["video0", "video2", "video3"]
    assert dataset.videos[1].captions == ("caption 0 of clip 2", "caption 1 of clip 2", "caption 2 of clip 2")
    assert dataset.videos[1].path == videos / "video2.mp4"


def test_msrvtt_official_split(sample_clip, tmp_path):
    write_msrvtt_json(tmp_path / "MSRVTT_data.json", 5)
    videos = place_videos(sample_clip, tmp_path / "videos", [f"video{i}.mp4" for i in range(5)])

    test = read_msrvtt_official(tmp_path / "MSRVTT_data.json", "test", videos)
    train = read_msrvtt_official(tmp_path / "MSRVTT_data.json", "train", videos)

    assert [video.video_id for video in test.videos] == ["video4"]
    assert len(train) == 3


def test_msrvtt_jsfusion_csv(sample_clip, tmp_path):
    rows = [
        ("ret0", "msr7579", "video7579", "a girl wearing red top is putting a sweater on a dog"),
        ("ret1", "msr7725", "video7725", "young people sit around the edges of a room clapping"),
    ]
    with (tmp_path / "MSRVTT_JSFUSION_test.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", "vid_key", "video_id", "sentence"])
        writer.writerows(rows)
    videos = place_videos(sample_clip, tmp_path / "videos", ["video7579.mp4", "video7725.mp4"])

    dataset = read_msrvtt_jsfusion_test(tmp_path / "MSRVTT_JSFUSION_test.csv", videos)
    captions, targets = dataset.caption_targets()

    assert captions == [rows[0][3], rows[1][3]]
    assert targets == [0, 1]


def test_jsonl_both_key_styles(sample_clip, tmp_path):
    lines = [
        {"video_id": "clip_a", "caption": "a red circle moves left"},
        {"clip_id": "clip_b", "text": "a blue square moves up"},
        {"video_id": "clip_a", "caption": "the red circle slides to the left"},
    ]
    (tmp_path / "test.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    place_videos(sample_clip, tmp_path / "videos", ["clip_a.mp4", "clip_b.webm"])

    dataset = read_caption_jsonl(tmp_path / "test.jsonl")

    assert [video.video_id for video in dataset.videos] == ["clip_a", "clip_b"]
    assert dataset.videos[0].captions == ("a red circle moves left", "the red circle slides to the left")
    assert dataset.videos[1].path.name == "clip_b.webm"
    assert dataset.caption_targets()[1] == [0, 0, 1]


def test_jsonl_bad_line_names_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"video_id": "a", "caption": "x"}\n{"video": "b"}\n')

    with pytest.raises(DatasetFormatError, match=r"bad.jsonl:2: expected 'video_id'"):
        read_caption_jsonl(tmp_path / "bad.jsonl", tmp_path)


def test_msvd_descriptions_and_splits(sample_clip, tmp_path):
    (tmp_path / "AllVideoDescriptions.txt").write_text(
        "# Microsoft Research Video Description Corpus\n"
        "# one line per description\n"
        "-4wsuPCjDBc_5_15 a squirrel is eating a peanut in it's shell.\n"
        "-4wsuPCjDBc_5_15 a chipmunk is eating.\n"
        "-7KMZQEsJW4_205_208 a woman is slicing a tomato.\n"
        "00jrXRMlZOY_0_10 a man is playing a guitar.\n"
    )
    (tmp_path / "test_list.txt").write_text("-7KMZQEsJW4_205_208\n00jrXRMlZOY_0_10\n")
    (tmp_path / "youtube_mapping.txt").write_text(
        "-4wsuPCjDBc_5_15 vid1\n-7KMZQEsJW4_205_208 vid1301\n00jrXRMlZOY_0_10 vid1970\n"
    )
    videos = place_videos(
        sample_clip, tmp_path / "YouTubeClips",
        ["-4wsuPCjDBc_5_15.avi", "-7KMZQEsJW4_205_208.avi", "00jrXRMlZOY_0_10.avi"],
    )

    from_list = read_msvd(tmp_path / "AllVideoDescriptions.txt", videos, "test", split_list=tmp_path / "test_list.txt")
    from_mapping = read_msvd(
        tmp_path / "AllVideoDescriptions.txt", videos, "train", mapping_txt=tmp_path / "youtube_mapping.txt"
    )
    test_from_mapping = read_msvd(
        tmp_path / "AllVideoDescriptions.txt", videos, "test", mapping_txt=tmp_path / "youtube_mapping.txt"
    )

    assert [video.video_id for video in from_list.videos] == ["-7KMZQEsJW4_205_208", "00jrXRMlZOY_0_10"]
    assert from_mapping.videos[0].captions == ("a squirrel is eating a peanut in it's shell.", "a chipmunk is eating.")
    assert len(from_mapping) == 1
    assert [video.video_id for video in test_from_mapping.videos] == ["-7KMZQEsJW4_205_208", "00jrXRMlZOY_0_10"]


def test_vatex_english_captions(sample_clip, tmp_path):
    records = [
        {"videoID": "Ptf_2VRj-V0_000122_000132", "enCap": [f"english {i}" for i in range(10)], "chCap": ["中文"] * 10},
        {"videoID": "aBcD_efgh12_000010_000020", "enCap": ["a person plays drums"] * 10, "chCap": []},
    ]
    (tmp_path / "vatex_validation_v1.0.json").write_text(json.dumps(records))
    videos = place_videos(sample_clip, tmp_path / "videos", [f"{r['videoID']}.mp4" for r in records])

    dataset = read_vatex(tmp_path / "vatex_validation_v1.0.json", videos)

    assert len(dataset.videos[0].captions) == 10
    assert dataset.videos[0].captions[3] == "english 3"
    assert dataset.videos[1].video_id == "aBcD_efgh12_000010_000020"


def test_didemo_paragraphs_joined(sample_clip, tmp_path):
    records = [
        {"annotation_id": 1, "description": "a dog runs in.", "video": "10015567@N08_3655084291.mov",
         "times": [[0, 0], [0, 1], [0, 0], [0, 0], [0, 0]], "dl_link": "https://example.invalid"},
        {"annotation_id": 2, "description": "the dog jumps.", "video": "10015567@N08_3655084291.mov",
         "times": [[2, 3], [2, 2], [2, 3], [2, 3], [2, 3]], "dl_link": "https://example.invalid"},
        {"annotation_id": 3, "description": "a car passes by.", "video": "12090392@N02_13482799053.mp4",
         "times": [[1, 1]] * 5, "dl_link": "https://example.invalid"},
    ]
    (tmp_path / "test_data.json").write_text(json.dumps(records))
    # The converted copy of the .mov has another extension: the reader matches it by stem.
    videos = place_videos(sample_clip, tmp_path / "videos", ["10015567@N08_3655084291.mp4", "12090392@N02_13482799053.mp4"])

    dataset = read_didemo(tmp_path / "test_data.json", videos)

    assert dataset.videos[0].captions == ("a dog runs in. the dog jumps.",)
    assert dataset.videos[0].path.name == "10015567@N08_3655084291.mp4"
    assert dataset.videos[1].captions == ("a car passes by.",)


def test_missing_videos_reported_together(sample_clip, tmp_path):
    names = [f"clip{i:02d}" for i in range(15)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"video_id": n, "caption": "x"}) + "\n" for n in names))
    videos = place_videos(sample_clip, tmp_path / "videos", ["clip00.mp4", "clip01.mp4"])

    with pytest.raises(MissingVideosError) as caught:
        read_caption_jsonl(tmp_path / "train.jsonl", videos)

    message = str(caught.value)
    assert len(caught.value.missing) == 13
    assert "13 of 15 videos not found" in message
    assert "clip02, clip03" in message
    assert "and 3 more" in message
    assert "clip14" not in message


def test_missing_videos_skipped_on_request(sample_clip, tmp_path):
    (tmp_path / "test_data.json").write_text(json.dumps([
        {"video": "present.mp4", "description": "a", "times": [[0, 0]]},
        {"video": "absent.mp4", "description": "b", "times": [[0, 0]]},
    ]))
    videos = place_videos(sample_clip, tmp_path / "videos", ["present.mp4"])

    dataset = read_didemo(tmp_path / "test_data.json", videos, on_missing="skip")

    assert [video.video_id for video in dataset.videos] == ["present.mp4"]


def test_data_source_validates_fields(sample_clip, tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"video_id": "v", "caption": "c"}) + "\n")
    place_videos(sample_clip, tmp_path, ["v.mp4"])

    with pytest.raises(ValueError, match="requires split_file"):
        DataSource(format="msrvtt-train", annotations=tmp_path / "x.json", video_dir=tmp_path)
    assert len(DataSource(annotations=tmp_path / "a.jsonl").load()) == 1
