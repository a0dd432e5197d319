"""Ingest throughput benchmark: encode-only bound vs. the product's ingest vs. a naive loop.

All three modes run in one process on the same videos and the same model, so their ratios are
comparable even on a noisy machine:

- ``encode_only``: ``model.embed_videos`` on frames decoded beforehand (the upper bound);
- ``ingest``: ``indexer.pipeline.run_ingest`` into a fresh index (decode workers overlapped
  with encoding, catalog writes, snapshot), timed over its decode+encode+write loop;
- ``naive``: for each video, decode all its segments, encode them, then go to the next.

The videos are made with ffmpeg (``testsrc2`` pattern, H.264) unless ``--videos-dir`` is given.
The model has random weights unless ``--pretrained`` is given. Prints a table, writes JSON.

Example: ``python benchmarks/bench_ingest.py --model ViT-B-32 --device cpu --videos 8``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def make_videos(directory: Path, count: int, seconds: float, size: str, rate: int) -> list[Path]:
    """Encode ``count`` H.264 test-pattern videos of ``seconds`` each; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = directory / f"bench_{index:03d}.mp4"
        # A different start offset per file gives every video distinct content (no duplicates).
        source = f"testsrc2=size={size}:rate={rate}"
        subprocess.run(
            ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", source,
             "-ss", str(index * 0.37), "-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast",
             "-pix_fmt", "yuv420p", str(path)],
            check=True,
        )
        paths.append(path)
    return paths


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode_all(paths: list[Path], segment_seconds: float, num_frames: int, size: int) -> list[np.ndarray]:
    """Decode every segment of every video: a list of uint8 [T, S, S, 3] arrays."""
    from shared.video.decode import decode_segments
    from shared.video.probe import probe
    from shared.video.sampling import segment_bounds

    segments = []
    for path in paths:
        info = probe(path)
        bounds = segment_bounds(info.duration_s, segment_seconds)
        segments.extend(decode_segments(path, bounds, num_frames, size, info=info))
    return segments


def bench_encode_only(model: Any, segments: list[np.ndarray], batch_size: int) -> float:
    """Return seconds to encode pre-decoded ``segments`` in batches (after one warm-up batch)."""
    frames = np.stack(segments)  # [N, T, S, S, 3]
    model.embed_videos(frames[:batch_size])
    synchronize(model.device)
    started = time.perf_counter()
    for start in range(0, len(frames), batch_size):
        model.embed_videos(frames[start : start + batch_size])
    synchronize(model.device)
    return time.perf_counter() - started


def bench_naive(model: Any, paths: list[Path], segment_seconds: float, batch_size: int) -> float:
    """Return seconds for decode-one-video-then-encode-it over all ``paths``."""
    from shared.video.decode import decode_segments
    from shared.video.probe import probe
    from shared.video.sampling import segment_bounds

    num_frames, size = model.config.num_frames, model.config.image_size
    started = time.perf_counter()
    for path in paths:
        info = probe(path)
        bounds = segment_bounds(info.duration_s, segment_seconds)
        frames = np.stack(decode_segments(path, bounds, num_frames, size, info=info))  # [n, T, S, S, 3]
        for start in range(0, len(frames), batch_size):
            model.embed_videos(frames[start : start + batch_size])
    synchronize(model.device)
    return time.perf_counter() - started


def bench_ingest(checkpoint: Path, paths_dir: Path, index_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Run the product's ingest into a fresh index and return its run record."""
    from indexer.pipeline import IngestOptions, run_ingest
    from indexer.settings import IndexerSettings

    settings = IndexerSettings(
        index_dir=index_dir,
        checkpoint=checkpoint,
        device=args.device,
        precision=args.precision,
        segment_seconds=args.segment_seconds,
        workers=args.workers,
        batch_size=args.batch_size,
    )
    stats = run_ingest(settings, [str(paths_dir)], IngestOptions(progress=False))
    return stats.to_record()


def machine_description() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"nproc": os.cpu_count(), "cpu": cpu, "gpu": gpu, "torch": torch.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B-32", help="open_clip model name (pig-tiny for a quick run)")
    parser.add_argument("--pretrained", default=None, help="open_clip pretrained tag or weights file; default random weights")
    parser.add_argument("--head", default="pig", choices=["pig", "meanp"], help="video head")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="device of the model")
    parser.add_argument("--precision", default="auto", help="auto, fp32, bf16 or fp16")
    parser.add_argument("--videos", type=int, default=8, help="number of generated videos")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each generated video, seconds")
    parser.add_argument("--size", default="640x360", help="frame size of the generated videos, WxH pixels")
    parser.add_argument("--rate", type=int, default=25, help="frame rate of the generated videos, frames/s")
    parser.add_argument("--videos-dir", type=Path, default=None, help="benchmark these videos instead of generated ones")
    parser.add_argument("--segment-seconds", type=float, default=10.0, help="segment length, seconds")
    parser.add_argument("--batch-size", type=int, default=16, help="segments per encode batch")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1), help="decode worker processes for ingest")
    parser.add_argument("--out", type=Path, default=Path("bench_ingest.json"), help="JSON result file")
    args = parser.parse_args()

    from shared.model import load_model, save_checkpoint

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="bench_ingest_") as scratch:
        scratch_dir = Path(scratch)
        if args.videos_dir is not None:
            videos_dir = args.videos_dir
            paths = sorted(p for p in videos_dir.rglob("*") if p.is_file())
        else:
            videos_dir = scratch_dir / "videos"
            paths = make_videos(videos_dir, args.videos, args.seconds, args.size, args.rate)

        model = load_model(model_name=args.model, pretrained=args.pretrained, head=args.head,
                           device=args.device, precision=args.precision)
        checkpoint = save_checkpoint(model, scratch_dir / "checkpoint")
        num_frames, size = model.config.num_frames, model.config.image_size

        segments = decode_all(paths, args.segment_seconds, num_frames, size)
        encode_s = bench_encode_only(model, segments, args.batch_size)
        naive_s = bench_naive(model, paths, args.segment_seconds, args.batch_size)
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        record = bench_ingest(checkpoint, videos_dir, scratch_dir / "index", args)

    count = len(segments)
    ingest_s = record["pipeline_seconds"]
    rows = {
        "encode_only": encode_s,
        "ingest": ingest_s,
        "naive": naive_s,
    }
    results = {
        name: {
            "seconds": seconds,
            "segments_per_s": count / seconds,
            "frames_per_s": count * num_frames / seconds,
            "videos_per_s": len(paths) / seconds,
        }
        for name, seconds in rows.items()
    }
    summary = {
        "config": {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                   "num_frames": num_frames, "image_size": size},
        "machine": machine_description(),
        "videos": len(paths),
        "segments": count,
        "results": results,
        "ingest_over_encode_only": encode_s / ingest_s,
        "ingest_over_naive": naive_s / ingest_s,
        "ingest_run_record": record,
    }

    print(f"{args.model} head={args.head} device={args.device} videos={len(paths)} segments={count} T={num_frames} S={size}")
    print(f"{'mode':<12}{'seconds':>9}{'segments/s':>12}{'frames/s':>10}{'videos/s':>10}")
    for name, result in results.items():
        print(f"{name:<12}{result['seconds']:>9.2f}{result['segments_per_s']:>12.2f}"
              f"{result['frames_per_s']:>10.1f}{result['videos_per_s']:>10.2f}")
    print(f"ingest / encode-only bound: {summary['ingest_over_encode_only']:.2f}; "
          f"ingest / naive: {summary['ingest_over_naive']:.2f}")
    args.out.write_text(json.dumps(summary, indent=2, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
