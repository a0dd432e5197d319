"""Benchmark the search service over loopback against direct in-process encode + search.

For each index size the script builds an index directory with the ViT-B-32 text tower
(random weights) and synthetic unit vectors (10 segments per video), starts `search-api` in a
subprocess on 127.0.0.1, and measures:

- p50 and p99 latency of single queries sent one after another;
- throughput (queries per second) at concurrency 1, 4 and 16;
- the direct path in this process (``embed_queries`` then ``Snapshot.search``), whose median
  is the bound the server's overhead is measured against.

Every query text is distinct and the server's query cache is off, so each request encodes.

    .venv/bin/python benchmarks/bench_search.py --sizes 10000,1000000 --output bench_search.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from shared.index_store import (
    CATALOG_FILE,
    MODEL_DIR,
    Catalog,
    IndexPolicy,
    ProbeFields,
    SegmentToWrite,
    WriterLock,
    load_snapshot,
    publish_snapshot,
)
from shared.model import load_checkpoint, load_model, model_fingerprint, save_checkpoint

SEGMENTS_PER_VIDEO = 10
SEGMENT_SECONDS = 10.0
WORDS = ("dog", "cat", "car", "street", "night", "rain", "people", "ball", "river", "city",
         "running", "jumping", "red", "blue", "child", "kitchen", "beach", "snow", "guitar", "bike")


def make_queries(count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [
        " ".join(rng.choice(WORDS, size=8)) + f" {seed}-{i}" for i in range(count)
    ]  # ~10 words, every text distinct


def build_index(index_dir: Path, model_name: str, vector_count: int) -> None:
    """Write the model copy and ``vector_count`` synthetic segment vectors, then publish."""
    model = load_model(model_name=model_name, head="meanp", device="cpu")
    save_checkpoint(model, index_dir / MODEL_DIR)
    dim = model.config.embed_dim
    catalog = Catalog(index_dir / CATALOG_FILE, read_only=False)
    catalog.set_model(model_fingerprint(model), model.config.to_dict(), dim)
    rng = np.random.default_rng(0)
    videos = vector_count // SEGMENTS_PER_VIDEO
    started = time.perf_counter()
    for first in range(0, videos, 1000):
        with catalog.transaction():
            for video in range(first, min(videos, first + 1000)):
                vectors = rng.standard_normal((SEGMENTS_PER_VIDEO, dim)).astype(np.float32)
                vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
                catalog.write_indexed(
                    f"/synthetic/video-{video:07d}.mp4", 1, 0, None,
                    ProbeFields(duration=SEGMENTS_PER_VIDEO * SEGMENT_SECONDS),
                    [
                        SegmentToWrite(i, i * SEGMENT_SECONDS, (i + 1) * SEGMENT_SECONDS, vectors[i])
                        for i in range(SEGMENTS_PER_VIDEO)
                    ],
                )
    with WriterLock(index_dir):
        publish_snapshot(index_dir, catalog, IndexPolicy(index_type="flat"))
    catalog.close()
    print(f"built {vector_count} vectors in {time.perf_counter() - started:.1f} s", file=sys.stderr)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def measure_direct(index_dir: Path, queries: list[str], top_k: int,
                   torch_threads: int) -> dict[str, float]:
    """Time encode + FAISS search in this process, one query at a time."""
    torch.set_num_threads(torch_threads)
    model = load_checkpoint(index_dir / MODEL_DIR, device="cpu")
    snapshot = load_snapshot(index_dir)
    k = max(32, top_k * 4)
    model.embed_queries(["warm up"])
    times = []
    for query in queries:
        started = time.perf_counter()
        vectors, _ = model.embed_queries([query])
        snapshot.search(vectors, k)
        times.append(time.perf_counter() - started)
    return {"p50_ms": percentile(times, 50) * 1e3, "p99_ms": percentile(times, 99) * 1e3}


async def measure_server(base_url: str, queries: list[str], top_k: int,
                         concurrency_levels: list[int]) -> dict[str, object]:
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=base_url, timeout=120.0, limits=limits) as client:
        async def one(query: str) -> float:
            started = time.perf_counter()
            response = await client.post("/search", json={"query": query, "top_k": top_k})
            response.raise_for_status()
            return time.perf_counter() - started

        await one("warm up")
        single = [await one(q) for q in queries]
        result: dict[str, object] = {
            "p50_ms": percentile(single, 50) * 1e3,
            "p99_ms": percentile(single, 99) * 1e3,
        }
        throughput = {}
        for level in concurrency_levels:
            pending = list(queries)

            async def worker() -> None:
                while pending:
                    await one(pending.pop())

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(level)))
            throughput[str(level)] = len(queries) / (time.perf_counter() - started)
        result["throughput_qps"] = throughput
        return result


def start_server(index_dir: Path, port: int, torch_threads: int, blas_threshold: int) -> subprocess.Popen:
    env = {**os.environ, "PIG_CACHE_SIZE": "0", "PIG_DEVICE": "cpu",
           "PIG_TORCH_THREADS": str(torch_threads), "PIG_FAISS_BLAS_THRESHOLD": str(blas_threshold)}
    command = [str(Path(sys.executable).parent / "search-api"), "--index-dir", str(index_dir),
               "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    process = subprocess.Popen(command, env=env)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"search-api exited with status {process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    process.terminate()
    raise RuntimeError("search-api did not become ready within 600 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,1000000",
                        help="comma-separated segment vector counts (default 10000,1000000)")
    parser.add_argument("--model", default="ViT-B-32", help="open_clip model name")
    parser.add_argument("--queries", type=int, default=200, help="queries per measurement")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch threads of both the server and the direct path")
    parser.add_argument(
        "--blas-thresholds", default="4",
        help="comma-separated PIG_FAISS_BLAS_THRESHOLD values, one server run each; a value above "
        "the largest micro-batch, such as 1000, scans the index once per query as FAISS does by "
        "default (default 4)",
    )
    parser.add_argument("--work-dir", help="where index directories go (default a temp dir)")
    parser.add_argument("--output", default="bench_search.json", help="JSON result file")
    args = parser.parse_args()
    levels = [int(value) for value in args.concurrency.split(",")]
    thresholds = [int(value) for value in args.blas_thresholds.split(",")]

    report: dict[str, object] = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "torch": torch.__version__},
        "model": args.model, "torch_threads": args.torch_threads, "queries": args.queries, "top_k": args.top_k, "sizes": {},
    }
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_search_"))
    for size in (int(value) for value in args.sizes.split(",")):
        index_dir = work / f"index-{size}"
        if not (index_dir / CATALOG_FILE).is_file():
            build_index(index_dir, args.model, size)
        direct = measure_direct(index_dir, make_queries(args.queries, seed=1), args.top_k,
                                args.torch_threads)
        for threshold in thresholds:
            process = start_server(index_dir, args.port, args.torch_threads, threshold)
            try:
                served = asyncio.run(measure_server(
                    f"http://127.0.0.1:{args.port}", make_queries(args.queries, seed=2),
                    args.top_k, levels,
                ))
            finally:
                process.terminate()
                process.wait(timeout=60)
            throughput = served["throughput_qps"]
            report["sizes"][f"{size}/blas{threshold}"] = {
                "vectors": size,
                "blas_threshold": threshold,
                "direct": direct,
                "server": served,
                "overhead_p50": served["p50_ms"] / direct["p50_ms"] - 1.0,
                "speedup_c16_over_c1": throughput.get("16", float("nan")) / throughput["1"],
            }

    print(f"{'vectors':>9} {'blas from':>10} {'direct p50':>11} {'server p50':>11} {'server p99':>11} "
          f"{'overhead':>9} " + " ".join(f"{'qps c=' + str(c):>9}" for c in levels))
    for row in report["sizes"].values():
        qps = row["server"]["throughput_qps"]
        print(f"{row['vectors']:>9} {row['blas_threshold']:>10} {row['direct']['p50_ms']:>9.1f}ms "
              f"{row['server']['p50_ms']:>9.1f}ms {row['server']['p99_ms']:>9.1f}ms {row['overhead_p50']:>8.1%} "
              + " ".join(f"{qps[str(c)]:>9.1f}" for c in levels))
    Path(args.output).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
