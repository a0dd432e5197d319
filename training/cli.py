"""`pig-train`: generate synthetic data, train PIG checkpoints and evaluate them.

    pig-train synth --out demo-data/synth --train 200 --test 96 --seed 0
    pig-train fit --config training/configs/demo.yaml
    pig-train evaluate --checkpoint checkpoints/demo --data demo-data/synth/test.jsonl --heads meanp,pig,xpool
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)


def _add_synth_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("synth", help="generate the seeded synthetic captioned-video benchmark")
    parser.add_argument("--out", type=Path, required=True, help="output folder for videos/, train.jsonl and test.jsonl")
    parser.add_argument("--train", type=int, default=200, help="number of training clips (default 200)")
    parser.add_argument("--test", type=int, default=96, help="number of test clips (default 96)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same clips")
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels (default 64)")
    parser.add_argument("--fps", type=int, default=8, help="frames per second (default 8)")
    parser.add_argument(
        "--trail", type=int, default=0,
        help="fading copies drawn behind each moving object, so that one frame shows the direction (default 0)",
    )
    parser.add_argument("--workers", type=int, default=2, help="encoding processes (default 2)")
    parser.set_defaults(handler=_run_synth)


def _run_synth(args: argparse.Namespace) -> int:
    from training.synthetic import SyntheticConfig, generate_dataset

    config = SyntheticConfig(
        num_train=args.train, num_test=args.test, seed=args.seed, size=args.size, fps=args.fps, trail=args.trail
    )
    paths = generate_dataset(args.out, config, workers=args.workers)
    print(f"wrote {args.train} training clips to {paths['train']} and {args.test} test clips to {paths['test']}")
    return 0


def _add_fit_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("fit", help="train a checkpoint from a YAML or JSON config")
    parser.add_argument("--config", type=Path, required=True, help="training config file (.yaml, .yml or .json)")
    parser.add_argument(
        "--resume",
        choices=("auto", "never"),
        default="auto",
        help="auto (default): continue from OUTPUT_DIR/last when it exists; never: start over",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set seed=3 --set optim.epochs=2 (VALUE is parsed as YAML)",
    )
    parser.set_defaults(handler=_run_fit)


def _run_fit(args: argparse.Namespace) -> int:
    from training.config import load_train_config
    from training.train import fit

    config = load_train_config(args.config, args.overrides)
    result = fit(config, resume=args.resume == "auto")
    if result.best_metrics is not None:
        print(f"best t2v R@1 {result.best_metrics['t2v']['R@1']:.2f} at step {result.best_step}; checkpoint {result.best_dir}")
    print(f"finished {result.global_step} steps; last state in {result.last_dir}")
    return 0


def _add_evaluate_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("evaluate", help="retrieval metrics of a checkpoint, one or more heads")
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint directory (config.json + model.safetensors)")
    parser.add_argument("--data", type=Path, required=True, help="annotation file of the test split")
    parser.add_argument(
        "--format",
        default="jsonl",
        help="annotation format: jsonl, msrvtt-1k-A, msrvtt-official, msrvtt-train, msvd, vatex or didemo",
    )
    parser.add_argument("--video-dir", type=Path, default=None, help="folder of the video files")
    parser.add_argument("--split", default=None, help="split name for msrvtt-official and msvd")
    parser.add_argument("--split-file", type=Path, default=None, help="split list for msrvtt-train and msvd")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N videos")
    parser.add_argument("--heads", default=None, help="comma-separated heads to compare, e.g. meanp,pig,xpool (default: the checkpoint's)")
    parser.add_argument("--dsl", action="store_true", help="also report metrics after dual-softmax (DSL) post-processing")
    parser.add_argument("--cost-videos", type=int, default=1000, help="gallery size N for the query-cost measurement (default 1000)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--batch-size", type=int, default=16, help="videos per encoding batch")
    parser.add_argument("--workers", type=int, default=2, help="decoding worker processes")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    parser.set_defaults(handler=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from training.datasets import DataSource
    from training.evaluate import evaluate_checkpoint

    source = DataSource(
        format=args.format,
        annotations=args.data,
        video_dir=args.video_dir,
        split=args.split,
        split_file=args.split_file,
        limit=args.limit,
    )
    heads = [head.strip() for head in args.heads.split(",")] if args.heads else None
    evaluate_checkpoint(
        checkpoint=args.checkpoint,
        source=source,
        heads=heads,
        dsl=args.dsl,
        cost_videos=args.cost_videos,
        device=args.device,
        batch_size=args.batch_size,
        workers=args.workers,
        json_path=args.json,
        print_results=True,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pig-train", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_synth_parser(subparsers)
    _add_fit_parser(subparsers)
    _add_evaluate_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # faiss logs at INFO which of its builds it loads, including the failed imports before that.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)

    from shared.device import DeviceUnavailableError
    from shared.model.errors import ModelError
    from training.config import ConfigError
    from training.datasets.base import DatasetFormatError, MissingVideosError
    from training.state import ResumeError

    try:
        return int(args.handler(args))
    except (ConfigError, DatasetFormatError, MissingVideosError, ModelError, ResumeError,
            DeviceUnavailableError) as error:
        # The product's own errors carry the value and the fix; a traceback would bury them.
        logging.getLogger(__name__).debug("%s failed", args.command, exc_info=True)
        print(f"pig-train {args.command}: {error}", file=sys.stderr)
        return 2 if isinstance(error, ConfigError) else 1


if __name__ == "__main__":
    sys.exit(main())
