"""Median latency of encoding one 10-word query: the product's text tower versus open_clip.

Both paths run in one process on the same weights, alternating, so machine noise hits both.
The product path trims the context to the query's length and runs under inference mode; the
plain path is `open_clip`'s `encode_text` on the full 77-token context under `torch.no_grad`.

    .venv/bin/python benchmarks/bench_text_encode.py --model ViT-B-32 --repeats 200
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import open_clip
import torch

from shared.model import load_model

QUERY = "a man in a red jacket rides his bicycle home"  # 10 words


def measure(function, repeats: int) -> list[float]:
    """Call `function` `repeats` times and return each call's latency in milliseconds."""
    latencies = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        latencies.append((time.perf_counter() - start) * 1000.0)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32", help="open_clip architecture (random weights)")
    parser.add_argument("--repeats", type=int, default=200, help="timed calls per path, after warm-up")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads, as the search service uses")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/text_encode.json"), help="JSON result file")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = load_model(model_name=args.model, head="meanp", device="cpu")
    clip = open_clip.create_model(args.model, pretrained=None)
    clip.load_state_dict(
        {
            **{f"visual.{k}": v for k, v in model.frame_encoder.visual.state_dict().items()},
            **{k: v for k, v in model.text_tower.state_dict().items() if not k.startswith("tokenizer")},
            "logit_scale": clip.logit_scale.detach(),
        },
        strict=True,
    )
    clip.eval()
    tokenizer = open_clip.get_tokenizer(args.model)

    def product() -> None:
        model.embed_queries([QUERY])

    def plain() -> None:
        with torch.no_grad():
            clip.encode_text(tokenizer([QUERY]), normalize=True)

    # Same weights, so the two paths must agree before their speed means anything.
    with torch.no_grad():
        reference = clip.encode_text(tokenizer([QUERY]), normalize=True).numpy()
    ours, _ = model.embed_queries([QUERY])
    max_difference = float(abs(reference - ours).max())

    for function in (product, plain):
        measure(function, 10)
    product_ms: list[float] = []
    plain_ms: list[float] = []
    for _ in range(args.repeats // 10):
        product_ms += measure(product, 10)
        plain_ms += measure(plain, 10)

    result = {
        "model": args.model,
        "query_words": len(QUERY.split()),
        "torch_threads": args.threads,
        "repeats": len(product_ms),
        "product_median_ms": statistics.median(product_ms),
        "open_clip_median_ms": statistics.median(plain_ms),
        "ratio": statistics.median(product_ms) / statistics.median(plain_ms),
        "max_abs_difference": max_difference,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
    }
    print(f"{'path':<28}{'median ms':>12}")
    print(f"{'product text tower':<28}{result['product_median_ms']:>12.2f}")
    print(f"{'open_clip encode_text':<28}{result['open_clip_median_ms']:>12.2f}")
    print(f"ratio product / open_clip: {result['ratio']:.3f}  (goal: at most 0.5)")
    print(f"max |difference| between the two embeddings: {max_difference:.2e}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
