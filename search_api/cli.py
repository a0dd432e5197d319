"""``search-api``: run the search service with uvicorn."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from pydantic import ValidationError
from pydantic_settings import SettingsError

from search_api.settings import ApiSettings, describe_settings_error, settings_help

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="search-api",
        description=(
            "Serve text-to-video search over an index built by `indexer ingest`. Every option "
            "left unset falls back to its PIG_* environment variable, then to its default."
        ),
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--index-dir", help="index directory (PIG_INDEX_DIR)")
    parser.add_argument(
        "--checkpoint",
        help="checkpoint directory of the text model (PIG_CHECKPOINT); default INDEX_DIR/model",
    )
    parser.add_argument("--host", help="address to listen on (PIG_HOST); default 127.0.0.1")
    parser.add_argument("--port", type=int, help="TCP port (PIG_PORT); default 8000")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (PIG_DEVICE); default auto")
    parser.add_argument(
        "--torch-threads", type=int, help="torch threads of the encoding thread (PIG_TORCH_THREADS)"
    )
    parser.add_argument(
        "--max-batch-size", type=int, help="queries per forward pass (PIG_MAX_BATCH_SIZE)"
    )
    parser.add_argument(
        "--batch-wait-ms",
        type=float,
        help="milliseconds a query waits for others to join its batch (PIG_BATCH_WAIT_MS)",
    )
    parser.add_argument(
        "--cache-size", type=int, help="query embeddings kept in the LRU cache (PIG_CACHE_SIZE)"
    )
    parser.add_argument(
        "--reload-interval-s",
        type=float,
        help="seconds between checks for a new snapshot (PIG_RELOAD_INTERVAL_S)",
    )
    parser.add_argument(
        "--public-base-url", help="base URL of links in responses (PIG_PUBLIC_BASE_URL)"
    )
    parser.add_argument(
        "--log-level", help="critical, error, warning, info or debug (PIG_LOG_LEVEL)"
    )
    return parser


def settings_from_args(args: argparse.Namespace) -> ApiSettings:
    """Build settings from the environment, overridden by the options given on the command line."""
    overrides: dict[str, Any] = {
        name: value for name, value in vars(args).items() if value is not None
    }
    return ApiSettings(**overrides)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ValidationError as error:
        options = {
            action.dest: action.option_strings[0]
            for action in parser._actions
            if action.option_strings and action.dest != "help"
        }
        for line in describe_settings_error(error, options):
            print(f"search-api: {line}", file=sys.stderr)
        return 2
    except SettingsError as error:
        print(f"search-api: invalid settings: {error}", file=sys.stderr)
        return 2

    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # faiss logs at INFO which of its builds it loads, including the failed imports before that.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    import uvicorn

    from search_api.app import create_app

    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # Logging is configured above; uvicorn keeps its own access log format.
        log_config=None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
